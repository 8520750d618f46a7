"""The first step of a repair on a filesystem with duplicated metadata
(dup), before the salvage: mend each node's bad copy from its good one, as a mount does, before
anything is salvaged or rebuilt.

Every node the walk reaches is looked at with its twin (BTree.walk reads
a node's second copy when its first cannot be read or verified):

* a first copy that is poisoned or fails verification while its twin
  verifies is stored over from the twin;
* a twin that is poisoned or holds other bytes while the first copy
  verifies is stored over from the first copy (the node a mount reads).

Only where the pair is sound: the twin is in range, not block 0, not the
node itself, and no other node or twin of any tree claims either block.
Both are whole-block recovery writes (Volume.heal_block: they clear the
poison), each one idempotent, so a crash midway leaves the image as it
was or better.  What cannot be healed this way -- a node without a usable
twin, both copies bad -- is left to the salvage and the rebuild.  The
log's two copies need nothing here: replaying at open took the newest
valid one, and write.py rewrites poisoned log blocks.
"""

from __future__ import annotations

from collections import Counter


def run(st) -> None:
    vol = st.vol
    if not vol.dup:
        return
    pm = vol.pmem
    pairs = []
    claims: Counter = Counter()
    for name, tree in vol.trees.items():
        for v in tree.walk():
            if v.dangling:
                continue
            claims[v.bno] += 1
            if v.twin:
                claims[v.twin] += 1
            if not v.error:
                pairs.append((name, v.bno, v.twin, v.copy_error))
    for name, bno, twin, copy_error in pairs:
        if not twin or twin == bno or twin >= st.total or claims[bno] > 1 or claims[twin] > 1:
            continue
        if copy_error:
            if vol.heal_block(bno, twin, f"{name} btree node"):
                st.fix(f"{name} tree: {copy_error}; healed from its copy at block {twin}")
        elif pm.bad.first_bad(twin, 1) is not None:
            if vol.heal_block(twin, bno, f"{name} btree node copy"):
                st.fix(f"{name} tree: the copy at block {twin} of node {bno} is poisoned;"
                       " rewritten from the node")
        elif vol.twin_problem(bno, twin):
            if vol.heal_block(twin, bno, f"{name} btree node copy"):
                st.fix(f"{name} tree: the copy at block {twin} of node {bno} differed;"
                       " rewritten from the node")
