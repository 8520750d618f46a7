"""Phase 5 of a repair, second half: writing the result.

Each tree being rebuilt is bulk-loaded (BTree.bulk_load) into the fresh
blocks layout.py chose (with dup metadata, both copies of every node): sealed node images stored straight into the
blocks and flushed like file data.  Then one journal transaction switches
both superblocks to the new roots, record counts, counters and reserve
pool: the commit point.  Until then the old image is unchanged.

Metadata the repair rewrote whole is no longer bad: a poisoned superblock
copy (the commit writes both) and poisoned blocks of the log or of its
twin (stored over with zeros first: the log was replayed when the image
was opened) leave
the device's bad-block list.  A poisoned block that is free after the
repair (an old node of a rebuilt tree) is cleared by the next mount, as
any poisoned free space is.
"""

from __future__ import annotations

from daxfs.engine.format import EXT_UNWRITTEN, FEAT_UNWRITTEN, STATE_NEEDS_CHECK
from daxfs.engine.superblock import secondary_bno


def run(st) -> None:
    vol, sb = st.vol, st.sb
    for name in sorted(st.rebuild):
        tree = vol.trees[name]
        blocks = [b for b, _ in st.nodes[name]]
        twins = [t for _, t in st.nodes[name]] if vol.dup else None
        root, height = tree.bulk_load(st.records[name], blocks, twins)
        sb["roots"][tree.tid] = root
        sb["roots2"][tree.tid] = twins[-1] if twins else 0
        sb["heights"][tree.tid] = height
        s = st.salv[name]
        if s.damaged:
            st.fix(f"{name} tree: rebuilt from the {len(s.records)} records still readable"
                   f" ({s.describe()}); now {len(st.records[name])} records")
    for name, tree in vol.trees.items():
        n = len(st.records[name])
        if int(sb["nrecs"][tree.tid]) != n:
            if name not in st.rebuild:
                st.fix(f"{name} tree: record count {int(sb['nrecs'][tree.tid])} set to {n}")
            sb["nrecs"][tree.tid] = n
    pool = st.pool
    if list(sb["pool"][:int(sb["pool_count"])]) != pool:
        sb["pool"][:] = 0
        sb["pool"][:len(pool)] = pool
        sb["pool_count"] = len(pool)
    sb["free_blocks"] = sum(n for _, n in st.records["free"])
    sb["next_ino"] = st.next_ino
    sb["inode_count"] = len(st.inodes)
    sb["state"] = int(sb["state"]) & ~STATE_NEEDS_CHECK
    if any(e.flags & EXT_UNWRITTEN for e in st.extents):
        sb["features"] = int(sb["features"]) | FEAT_UNWRITTEN
    log_blocks = int(sb["log_blocks"])
    bad_log = [b for start in (int(sb["log_start"]), int(sb["log2_start"])) if start
               for b in range(start, start + log_blocks)
               if st.pmem.bad.first_bad(b, 1) is not None]
    for b in bad_log:
        st.pmem.blocks(b, 1)[:] = 0
    if bad_log:
        st.pmem.flush([(b, 1) for b in bad_log])
    vol.verified.clear()
    vol.drop_node_caches()
    vol.mark_dirty_sb()
    vol.commit()
    for b in (0, secondary_bno(st.total)):
        if st.pmem.bad.first_bad(b, 1) is not None:
            st.pmem.bad.clear(b, 1)
            st.fix(f"superblock copy at block {b}: rewritten whole, no longer bad")
    for b in bad_log:
        st.pmem.bad.clear(b, 1)
    if bad_log:
        st.fix(f"log: {len(bad_log)} poisoned block(s) rewritten whole, no longer bad")
