"""How daxfs's long-running processes set up Python's cyclic garbage
collector.

The engine keeps many small objects alive for long: cached B+tree nodes
(views of their blocks, tens of thousands of leaves per tree), inode and
name caches, records decoded for the API.  With CPython's default
thresholds (700, 10, 10) a young collection runs every 700 container
allocations and examines every young object that is still alive, so
long-lived caches are walked again and again while they age into the old
generation; when nodes were still decoded into key tuples, on a tree
bigger than the leaf cache collections took about as long as the lookups
themselves (scripts/bench_engine.py --only btree, with DAXFS_GC=default
for the comparison).  The engine makes little cyclic garbage, so
collecting far less often costs little memory:

* `tune()` moves what exists at that point (modules, the opened
  filesystem's first caches) to the permanent generation (`gc.freeze`),
  and raises the young threshold to YOUNG_THRESHOLD, so most short-lived
  objects die by reference count before any collection sees them.

Processes that call it: the mount daemon (daxfs/fuse/mount.py), `daxfs check`,
and the engine benchmarks (which measure the engine as the daemon runs
it).  The library itself never changes the collector: a program that
imports daxfs keeps its own settings.  DAXFS_GC=default leaves Python's
defaults, for measuring the difference.
"""

import gc
import os

YOUNG_THRESHOLD = 50_000
OLDER_THRESHOLDS = (20, 20)


def tune() -> bool:
    """Set the collector up for a long-running daxfs process; False when
    DAXFS_GC=default asks to keep Python's defaults."""
    if os.environ.get("DAXFS_GC") == "default":
        return False
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    return True
