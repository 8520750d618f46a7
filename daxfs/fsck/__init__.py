"""`daxfs check` and `daxfs check --repair`: proving an image consistent
and mending it.  Uses the engine below it (BTree.walk, bulk_load,
find_nodes, the trees' record checks); nothing in the engine imports this
package.

  check.py      `daxfs check`: a fixed list of named invariant checks
  repair.py     `daxfs check --repair`: runs the phases below, in order
  state.py      what a repair knows while it runs, handed from phase to phase
  salvage.py    2. read every tree; find the leaves a lost node hid (rmap, device scan)
  primary.py    3. inodes, extent maps, extended attributes; lost inodes made again
  namespace.py  3. directory entries, /lost+found, link counts, the orphan list
  derive.py     4. refcount, the rmap's data records, the blocks owned for certain
  layout.py     5. which trees are rebuilt, into which fresh blocks
  write.py      5. bulk-load them and switch both superblocks in one commit
  report.py     one line per fix, what became of each inode, the closing summary
"""
