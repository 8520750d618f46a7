"""Phase 2 of a repair: read everything the image still holds of every tree.

Each tree is walked from its root (BTree.walk: every node verified; an
unreadable node -- poisoned, bad checksum, magic, self block number, level,
capacity -- is skipped with its subtree, the walk goes on with the rest).
A tree whose walk met an unreadable node, keys out of order or outside
the parent's bounds, or an empty node is marked for rebuilding.

A lost node is not the end of what its subtree held.  For every tree that
lost nodes, the blocks it owned are looked for as xfs_repair looks for
them:

* the rmap: its records with the tree's owner (engine format.own_tree)
  name every node of the tree; the free-space and rmap trees share the
  pool's owner, and the node header's magic tells them apart;
* a scan of the device (btree.find_nodes) for blocks whose node header
  names the tree: magic, tree id, its own block number, a good checksum.

Every leaf found that way is read (and verified on its own), and its
records are kept where the lost subtrees stood: a record whose key lies
in the bounds of a leaf the walk read is an old copy and is not kept.
When the rmap is intact it is the truth about which blocks are the
tree's: a block the scan finds that the rmap does not name is an old node,
freed since, and is ignored.  Without an intact rmap a scanned block is
used only if nothing readable says it is something else (free space, the
reserve pool, file data, an attribute value, a superblock or the log);
where two leaves give the same key, a leaf the walk reached wins over one
the rmap names, which wins over one only the scan found.

What this phase leaves for the others: per tree a `Salvaged` (its records,
sorted with unique keys; the blocks of its old nodes; what was lost), in
`state.salv`.  It changes nothing on the image.
"""

from __future__ import annotations

import numpy as np

from daxfs.engine.btree import find_nodes
from daxfs.engine.format import OWN_AG, OWN_MAX_INO, BLOCK_SIZE as BS, own_tree
from daxfs.engine.superblock import static_owners
from daxfs.engine.trees import RmapRec, SPECS

# where a leaf's records came from, most trusted first
REACHED, NAMED, SCANNED = 0, 1, 2
_HOW = {NAMED: "the rmap", SCANNED: "a scan of the device"}


class Salvaged:
    """What could be read of one tree."""

    def __init__(self, name: str):
        self.name = name
        self.records: list[tuple] = []     # sorted by key, unique keys (plain tuples)
        self.rows: list[tuple] = []        # while salvaging: (record, REACHED/NAMED/SCANNED)
        self.good: list[int] = []          # verified nodes reachable from the root
        self.seen: set[int] = set()        # every in-range block of the old tree
        self.twin_of: dict[int, int] = {}  # dup: node block -> its twin (from the parent)
        self.found: dict[int, int] = {}    # leaves read beyond the walk: block -> NAMED/SCANNED
        self.lost = 0                      # unreadable nodes (with their subtrees)
        self.lost_ranges: list[tuple] = [] # (low, high) key bounds of the unreadable subtrees
        self.gaps: list[tuple] = []        # (low, high): where records may be gone for good
        self.damaged = False               # needs a rebuild
        self.why: list[str] = []

    def bad(self, why: str) -> None:
        self.damaged = True
        if len(self.why) < 3:
            self.why.append(why)

    def describe(self) -> str:
        """What was wrong with the tree and what was found of it, for the
        line that says it was rebuilt."""
        text = f"{self.lost} unreadable node(s)" if self.lost else "damaged"
        if self.why:
            text += ": " + "; ".join(self.why)
        if self.found:
            how = sorted({_HOW[h] for h in self.found.values()})
            text += f"; {len(self.found)} leaves found through {' and '.join(how)}"
        return text

    def may_lack(self, key: tuple) -> bool:
        """Could a record with this key (or with keys starting with this
        prefix) have been lost?"""
        n = len(key)
        for low, high in self.gaps:
            if low is not None and key < low[:n]:
                continue
            if high is not None and (key > high[:n] or n == len(high) and key == high):
                continue
            return True
        return False


def _in_ranges(key: tuple, ranges: list[tuple]) -> bool:
    for low, high in ranges:
        if (low is None or key >= low) and (high is None or key < high):
            return True
    return False


def run(st) -> None:
    vol = st.vol
    for name, tree in vol.trees.items():
        st.salv[name] = _walk(vol, name, tree)
    _shared_blocks(st)
    hurt = [n for n, s in st.salv.items() if s.lost]
    if hurt:
        _recover(st, hurt)
    for s in st.salv.values():
        s.records = _unique(vol.trees[s.name].spec.nkey, s.rows)
        s.rows = []


def _walk(vol, name: str, tree) -> Salvaged:
    """The tree from its root: every record of every readable leaf.  A
    node whose copies disagree or that lacks a usable twin (heal.py mended
    what it could) makes the tree one to rebuild, into fresh pairs."""
    s = Salvaged(name)
    bad = vol.pmem.bad
    for v in tree.walk():
        if not v.dangling:
            s.seen.add(v.bno)
            if v.twin:
                s.twin_of[v.bno] = v.twin
        if v.copy_error:
            s.bad(f"{v.copy_error} (its copy at block {v.twin} was read)")
        elif not v.error and not v.dangling:
            why = vol.twin_problem(v.bno, v.twin)
            if why is None and v.twin and bad and bad.first_bad(v.twin, 1) is not None:
                why = f"the copy at block {v.twin} of node {v.bno} is poisoned"
            if why:
                s.bad(why)
        if v.error:
            s.bad(v.error)
            s.lost += 1
            s.lost_ranges.append((v.low, v.high))
            if v.level == 0 or v.dangling:
                s.gaps.append((v.low, v.high))
            continue
        s.good.append(v.bno)
        for text in v.problems:
            s.bad(text)
        if v.level == 0:
            s.rows += [(r, REACHED) for r in v.records]
    return s


def _shared_blocks(st) -> None:
    """A block that two nodes (or a node and a twin) of any trees claim
    makes every tree claiming it one to rebuild."""
    claims: dict[int, list[str]] = {}
    for s in st.salv.values():
        for b in s.seen:
            claims.setdefault(b, []).append(s.name)
        for t in s.twin_of.values():
            claims.setdefault(t, []).append(s.name)
    for b, names in claims.items():
        if len(names) > 1:
            for n in set(names):
                st.salv[n].bad(f"block {b} is claimed by {len(names)} nodes or copies")


def _recover(st, names: list[str]) -> None:
    """Find the leaves of the trees in `names` that their walks could not
    reach: through the rmap, and a scan of the device."""
    vol = st.vol
    rmap = st.salv.get("rmap")
    trusted = rmap is not None and not rmap.damaged
    named = _named_by_rmap(st, rmap) if rmap is not None else {}
    elsewhere = _used_elsewhere(st)
    scanned = find_nodes(st.pmem, [vol.trees[n].spec for n in names])
    for name in names:
        s, tree = st.salv[name], vol.trees[name]
        # the rmap names every node of a tree with an owner of its own
        complete = trusted and own_tree(tree.tid) != OWN_AG
        partners = named.get(tree.tid, {})
        cands = {b: NAMED for b in partners}
        for b, _ in scanned[tree.tid]:
            if b not in cands and not complete and not elsewhere[b]:
                cands[b] = SCANNED
        _read_found(s, tree, cands, partners if vol.dup else {})
        if not complete:
            s.gaps = list(s.lost_ranges)


def _read_found(s: Salvaged, tree, cands: dict[int, int], partners: dict[int, int]) -> None:
    """Read the candidate blocks the walk did not meet: every one that
    verifies as the tree's node is one of its old blocks; a leaf gives the
    records that lie where the lost subtrees stood.  With dup metadata the
    rmap names both copies of a node, each with the other as its partner:
    the pair is read once, as the node its headers name, from whichever
    copy is good."""
    nkey = tree.spec.nkey
    twins = set(s.twin_of.values())
    done: set[int] = set()
    for b in sorted(cands):
        first, twin = _pair(tree, b, partners.get(b, 0))
        if first in s.seen or first in twins or first in done:
            continue
        done.add(first)
        v = next(tree.walk(start=[(first, None, twin)]))   # (the node alone, not its subtree)
        if v.error:
            if cands[b] == NAMED:                     # the rmap's word: a lost node of ours
                s.lost += 1
                s.gaps = list(s.lost_ranges)
            continue
        s.seen.add(first)
        if twin:
            s.twin_of[first] = twin
        if v.level == 0:
            s.found[b] = cands[b]
            s.rows += [(r, cands[b]) for r in v.records if _in_ranges(r[:nkey], s.lost_ranges)]


def _named_by_rmap(st, rmap: Salvaged) -> dict[int, dict[int, int]]:
    """tree id -> {block: its partner} for the blocks the readable part of
    the rmap names as that tree's nodes (not the free-space and rmap
    trees: their owner is the pool's)."""
    owners = {own_tree(t.tid): t.tid for t in st.vol.trees.values()
              if own_tree(t.tid) != OWN_AG}
    out: dict[int, dict[int, int]] = {}
    for r in _named(rmap):
        tid = owners.get(r.owner)
        if tid is not None:
            out.setdefault(tid, {})[r.bno] = r.offset     # (dup: the other copy)
    return out


def _pair(tree, b: int, partner: int) -> tuple[int, int]:
    """(the node, its twin) of a block and the partner the rmap gives it:
    the copy whose header names itself is the node (the other copy's
    header names the node too); (b, 0) without a partner."""
    if not partner:
        return b, 0
    first = tree.header_blkno(b)
    if first is None:
        first = tree.header_blkno(partner)
    return (partner, b) if first == partner else (b, partner)


def _used_elsewhere(st) -> np.ndarray:
    """Blocks that something readable says are not a tree node: the
    superblocks, the log and the pool, free space (when its tree is whole),
    file data and attribute values."""
    total = st.total
    mask = np.zeros(total + 1, dtype=bool)

    def mark(b, n):
        if 0 <= b < total:
            mask[b:min(b + n, total)] = True

    for r in map(RmapRec._make, static_owners(st.sb)):
        mark(r.bno, r.len)
    salv = st.salv
    if "free" in salv and not salv["free"].damaged:
        for r in _named(salv["free"]):
            mark(r.start, r.len)
    for r in _named(salv["bmap"]):
        mark(r.pblk, r.len)
    if "rmap" in salv:
        for r in _named(salv["rmap"]):
            if 0 < r.owner <= OWN_MAX_INO:
                mark(r.bno, r.len)
    for r in _named(salv["xattr"]):
        if r.vblk:
            mark(r.vblk, -(-r.vlen // BS))
    return mask


def _named(s: Salvaged):
    """The records salvaged so far of a tree, as its named tuples."""
    make = SPECS[s.name].record._make
    return (make(r) for r, _ in s.rows)


def _unique(nkey: int, rows: list) -> list[tuple]:
    """Records sorted by key, one per key: the most trusted source wins."""
    rows.sort(key=lambda rw: (rw[0][:nkey], rw[1]))
    out: list[tuple] = []
    for r, _ in rows:
        if out and out[-1][:nkey] == r[:nkey]:
            continue
        out.append(r)
    return out
