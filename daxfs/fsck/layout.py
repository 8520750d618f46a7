"""Phase 5 of a repair, first half: which trees are written anew, and where.

A tree is rebuilt when it was damaged or its records changed; then the
free-space tree and the rmap are rebuilt too (their records depend on
where nodes go).  Trees that were intact and whose records did not change
keep their nodes.  Rebuilt trees go into *fresh* blocks: blocks that the
old, committed image does not use for anything -- not as a node of any
tree (found by the walk, the rmap or the scan), not in the pool, not on a
bad range, and when they can be read, not taken by the old rmap or
free-space tree -- so that until the commit point the old image is
unchanged, and a crash during a repair leaves the image as it was.

The sizes of the free-space and rmap trees depend on where the nodes go
(every node is one rmap record and no longer free), so blocks are taken
until they cover what the trees then need; blocks taken in excess join
the reserve pool.  Every record about to be written passes its tree's
record check (engine/trees.py): repair never writes what check rejects.

With duplicated metadata (dup) every node is a pair, the node and its
twin: the node from the low end of the fresh blocks, its twin from the
high end (as far apart as the free space allows: one bad range rarely
takes both), and the pool holds pairs too.  Each copy is one rmap record
naming the other as its offset.

Fills `state.rebuild`, `nodes` (tree -> [(block, twin or 0)]), `pool`
(superblock order: with dup, a block then its twin), `recs`; raises
NoSpace when the free space cannot hold the rebuilt trees (nothing is
written then).
"""

from __future__ import annotations

import numpy as np

from daxfs.engine.alloc import POOL_HIGH, POOL_TARGET
from daxfs.engine.errors import NoSpace
from daxfs.engine.format import OWN_AG, SB_POOL_MAX, own_tree
from daxfs.engine.trees import RmapRec


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of every run of True in a boolean array."""
    if not mask.size:
        return []
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts = np.nonzero(d == 1)[0]
    ends = np.nonzero(d == -1)[0]
    return [(int(s), int(e - s)) for s, e in zip(starts, ends)]


def _old_pool(st) -> list[int]:
    sb = st.sb
    return [int(b) for b in sb["pool"][:min(int(sb["pool_count"]), SB_POOL_MAX)]]


def _usable_pool(st, old_pool: list[int]) -> list[int]:
    """The old pool's blocks that can stay: in range, not owned, not bad
    (with dup, whole pairs only)."""
    def ok(b):
        return 0 < b < st.total and not st.used_base[b] and not st.meta[b] \
            and not st.pmem.bad.first_bad(b, 1)
    out, seen = [], set()
    step = 2 if st.vol.dup else 1
    for i in range(0, len(old_pool) - step + 1, step):
        group = old_pool[i:i + step]
        if all(ok(b) and b not in seen for b in group) and len(set(group)) == step:
            out += group
            seen.update(group)
    return out


def _pool_records(st, pool: list[int]) -> list[tuple]:
    if st.vol.dup:
        return [(b, OWN_AG, pool[i ^ 1], 1, 0) for i, b in enumerate(pool)]
    return [(b, OWN_AG, 0, 1, 0) for b in pool]


def _flat(pairs) -> list[int]:
    """Pool entries of (block, twin) pairs: the block, then its twin if any."""
    return [b for pair in pairs for b in pair if b]


def final_records(st) -> dict[str, list]:
    """The primary and refcount records as they will be written."""
    recs = {
        "inode": [tuple(st.inodes[i]) for i in sorted(st.inodes)],
        "dir": [tuple(e) for e in sorted(st.dirents, key=lambda e: (e.parent, e.pos))],
        "bmap": list(map(tuple, st.extents)),
        "refcount": st.refc,
        "xattr": list(map(tuple, st.xattrs)),
        "orphan": [(i,) for i in sorted(st.orphans)],
    }
    return {name: _checked(st, name, r) for name, r in recs.items()}


def _checked(st, name: str, records: list) -> list:
    """The records the tree's record check accepts (all of them, unless a
    phase of the repair let one through: then it is dropped and said)."""
    spec = st.vol.trees[name].spec
    out = []
    for r in records:
        why = spec.check(spec.record._make(r), st.total)
        if why:
            st.fix(f"{name} tree: {why}: dropped (repair could not mend it)")
            continue
        out.append(r)
    return out


def layout_records(st, nodes: dict[str, list[tuple[int, int]]], pool: list[int]):
    """rmap and free-space records given every tree's nodes, (block, twin
    or 0), and the pool."""
    rm = list(st.rmap_base)
    rm += _pool_records(st, pool)
    used = st.used_base.copy()
    if pool:
        used[np.array(pool, dtype=np.int64)] = True
    total = st.total
    for name, pairs in nodes.items():
        owner = own_tree(st.vol.trees[name].tid)
        blocks = []
        for b, t in pairs:
            rm.append((b, owner, t, 1, 0))
            blocks.append(b)
            if 0 < t < total:
                rm.append((t, owner, b, 1, 0))
                blocks.append(t)
        if blocks:
            used[np.array(blocks, dtype=np.int64)] = True
    rm.sort(key=lambda r: r[:3])
    return rm, _runs(~used)


def _pairs(s, blocks) -> list[tuple[int, int]]:
    """A salvaged tree's blocks with their twins."""
    return [(b, s.twin_of.get(b, 0)) for b in blocks]


def plan(st) -> None:
    vol = st.vol
    recs = final_records(st)
    old_pool = _old_pool(st)
    pool = _usable_pool(st, old_pool)
    if len(pool) != len(old_pool):
        st.fix(f"reserve pool: {len(old_pool) - len(pool)} unusable block(s) dropped")
    st.rebuild = {name for name, s in st.salv.items()
                  if name in recs and (s.damaged or recs[name] != s.records)}
    kept_nodes = {n: _pairs(s, s.good) for n, s in st.salv.items() if n not in st.rebuild}
    # would the derived trees be right with every node where it is now?
    rm, free = layout_records(st, {n: _pairs(s, s.good) for n, s in st.salv.items()}, pool)
    recs["free"] = free
    if "rmap" in vol.trees:
        recs["rmap"] = rm
    for name in ("free", "rmap"):
        s = st.salv.get(name)
        if s is not None and (s.damaged or recs[name] != s.records):
            st.rebuild.add(name)
    # for the messages: every old node (read, unreadable or found) where it was
    rm_seen, free_seen = layout_records(
        st, {n: _pairs(s, sorted(s.seen)) for n, s in st.salv.items()}, pool)
    _explain_derived(st, {"rmap": rm_seen, "free": free_seen, "refcount": recs["refcount"]})
    if st.rebuild:
        st.rebuild.add("free")
        if "rmap" in vol.trees:
            st.rebuild.add("rmap")
        if len(pool) > POOL_HIGH:
            pool = pool[:POOL_TARGET]
        _place(st, recs, pool)
    else:
        st.nodes, st.pool, st.records = kept_nodes, pool, recs


def _explain_derived(st, recs: dict) -> None:
    """One line per derived tree whose records were wrong (not merely
    moved along with rebuilt nodes)."""
    s = st.salv.get("rmap")
    if s is not None and not s.damaged and recs["rmap"] != s.records:
        old, new = set(s.records), set(recs["rmap"])
        st.fix(f"rmap tree: {len(new - old)} record(s) missing, {len(old - new)}"
               " stray: rebuilt from the extent maps and metadata")
    s = st.salv["free"]
    if not s.damaged and recs["free"] != s.records:
        old = np.zeros(st.total, dtype=bool)
        for a, n in s.records:
            old[a:a + n] = True
        new = np.zeros(st.total, dtype=bool)
        for a, n in recs["free"]:
            new[a:a + n] = True
        given = new & ~old
        pool = [b for b in _old_pool(st) if 0 <= b < st.total]
        given[pool] = False             # (pool blocks dropped as unusable were not leaked)
        owned = np.zeros(st.total, dtype=bool)     # what the old rmap gave an owner
        if st.salv.get("rmap") is not None:
            for r in map(RmapRec._make, st.salv["rmap"].records):
                owned[r.bno:r.bno + r.len] = True
        leaked, orphaned = int((given & ~owned).sum()), int((given & owned).sum())
        wrong = int((old & ~new).sum())
        if leaked or wrong or orphaned:
            lost = f", {orphaned} block(s) freed whose owner's record is lost" if orphaned else ""
            st.fix(f"free tree: {leaked} leaked block(s) given back, {wrong} used"
                   f" block(s) no longer listed free{lost}: rebuilt")
    s = st.salv["refcount"]
    if not s.damaged and recs["refcount"] != s.records:
        st.fix(f"refcount tree: share counts wrong ({len(s.records)} records, should"
               f" be {len(recs['refcount'])}): rebuilt from the extent maps")


def _candidates(st, strict: bool) -> list[tuple[int, int]]:
    """Free extents safe to write new nodes into: nothing in the old,
    committed image uses them (strict: nor does the old rmap or
    free-space tree say they are taken)."""
    avoid = st.used_base | st.meta
    for s in st.salv.values():
        old = sorted(s.seen) + [t for t in s.twin_of.values() if 0 < t < st.total]
        if old:
            avoid[np.array(old, dtype=np.int64)] = True
    old_pool = [b for b in _old_pool(st) if 0 <= b < st.total]
    if old_pool:
        avoid[np.array(old_pool, dtype=np.int64)] = True
    for b, n in st.pmem.bad.ranges():
        avoid[b:b + n] = True
    if strict:
        rm = st.salv.get("rmap")
        if rm is not None:
            for r in map(RmapRec._make, rm.records):
                if r.bno < st.total:
                    avoid[r.bno:r.bno + r.len] = True
        fr = st.salv["free"]
        if not fr.lost:
            free = np.zeros(st.total, dtype=bool)
            for s, n in fr.records:
                free[s:s + n] = True
            avoid |= ~free
    return _runs(~avoid)


def _supply(cands: list[tuple[int, int]], dup: bool):
    """Fresh node places from the candidate extents: blocks in address
    order, or with dup pairs (a block from the low end, its twin from the
    high end) until the two ends meet."""
    fwd = (b for s, n in cands for b in range(s, s + n))
    if not dup:
        yield from ((b, 0) for b in fwd)
        return
    bwd = (b for s, n in reversed(cands) for b in range(s + n - 1, s - 1, -1))
    for a, z in zip(fwd, bwd):
        if a >= z:
            return
        yield a, z


def _place(st, recs: dict, pool: list[int]) -> None:
    """Choose fresh blocks (pairs, with dup) for the nodes of every tree
    being rebuilt."""
    vol = st.vol
    dup = vol.dup
    sizes = {n: sum(vol.trees[n].level_sizes(len(recs[n])))
             for n in st.rebuild if n not in ("free", "rmap")}
    kept = {n: _pairs(s, s.good) for n, s in st.salv.items() if n not in st.rebuild}
    want_extra = max(0, POOL_TARGET - len(pool))
    if dup:
        want_extra = -(-want_extra // 2)          # in pairs
    has_rmap = "rmap" in vol.trees
    for strict in (True, False):
        supply = _supply(_candidates(st, strict), dup)
        taken: list[tuple[int, int]] = []
        while True:
            # counting: each taken place is owned once, as a node or in the pool
            rm, free = layout_records(st, kept, pool + _flat(taken))
            sizes["free"] = sum(vol.trees["free"].level_sizes(len(free)))
            if has_rmap:
                sizes["rmap"] = sum(vol.trees["rmap"].level_sizes(len(rm)))
            short = sum(sizes.values()) + want_extra - len(taken)
            if short <= 0:
                break
            more = [p for _, p in zip(range(short), supply)]
            taken += more
            if len(more) < short:
                taken = None
                break
        if taken is not None:
            break
    else:
        raise NoSpace("not enough free space to write the rebuilt trees")
    nodes = dict(kept)
    pos = 0
    for name in sorted(sizes):
        nodes[name] = taken[pos:pos + sizes[name]]
        pos += sizes[name]
    st.pool = pool + _flat(taken[pos:])
    if len(st.pool) > SB_POOL_MAX:
        raise NoSpace("reserve pool overflow while rebuilding")
    rm, free = layout_records(st, nodes, st.pool)
    recs["free"] = free
    if has_rmap:
        recs["rmap"] = rm
    st.nodes, st.records = nodes, recs
