"""Phase 4 of a repair: what the primary records determine -- the
refcount tree (ranges two or more extents map), the rmap records of file
data and attribute values, and the blocks owned for certain.

The rmap records of tree nodes and the pool, and the free-space tree (the
complement of everything owned), depend on where the rebuilt trees go:
layout.py adds them.  Reads `state.extents`, `xattrs`, `data`, `fixed_meta`;
fills `state.refc`, `used_base`, `rmap_base`.
"""

from __future__ import annotations

import numpy as np

from daxfs.engine.format import BLOCK_SIZE as BS, EXT_UNWRITTEN, RMAP_ATTR, RMAP_UNWRITTEN
from daxfs.engine.superblock import static_owners


def run(st) -> None:
    refc = _refcounts(st.data, st.total)
    old = st.salv["refcount"]
    if not old.damaged and old.records != refc and _same_counts(st.total, old.records, refc):
        refc = list(old.records)      # the same counts, cut differently: keep
    st.refc = refc
    # every block owned for certain once the new trees exist (nodes aside)
    used = st.fixed_meta.copy()
    used |= st.data > 0
    values = []
    for x in st.xattrs:
        if x.vblk:
            n = -(-x.vlen // BS)
            used[x.vblk:x.vblk + n] = True
            values.append((x.vblk, x.ino, x.pos, n, RMAP_ATTR))
    st.used_base = used
    # rmap records that do not depend on where nodes go
    base = static_owners(st.sb, pool=[])
    base += [(e.pblk, e.ino, e.foff, e.len, RMAP_UNWRITTEN if e.flags & EXT_UNWRITTEN else 0)
             for e in st.extents]
    st.rmap_base = base + values


def _refcounts(data: np.ndarray, total: int) -> list[tuple[int, int, int]]:
    """(start, len, count) of every run of blocks mapped two or more times."""
    out = []
    if (data >= 2).any():
        change = np.nonzero(np.diff(np.concatenate(([0], data, [0]))))[0]
        for a, b in zip(change[:-1], change[1:]):
            c = int(data[a]) if a < total else 0
            if c >= 2:
                out.append((int(a), int(b - a), c))
    return out


def _same_counts(total: int, a: list, b: list) -> bool:
    """Do two lists of refcount records give every block the same count?"""
    def counts(recs):
        d = np.zeros(total + 1, dtype=np.int64)
        for s, n, c in recs:
            if s + n > total or c < 2:
                return None
            d[s] += c
            d[s + n] -= c
        return np.cumsum(d)
    ca, cb = counts(a), counts(b)
    if ca is None or cb is None:
        return False
    if any(a[i][0] + a[i][1] > a[i + 1][0] for i in range(len(a) - 1)):
        return False
    return bool(np.array_equal(ca, cb))
