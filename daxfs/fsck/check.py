"""`daxfs check`: prove that an image is consistent.

A fixed list of named invariant checks, run in order (as S3QL's fsck):

  superblocks   both copies present, valid and agreeing; the log and the
                reserve pool not on a bad range
  trees         every node of every tree (BTree.walk): magic, checksum,
                self block number, level, record order, keys inside the
                parent's bounds, overlap high keys, record counts; and every
                record's own fields (the trees' record checks, trees.py:
                extents inside the device, names, sizes, file types)
  inodes        block counts, extents that overlap, data only in files and
                symlinks, orphans, the superblock's counters
  directories   every entry names a live inode; link counts equal the
                entries; every directory has one parent; no lost inodes
  directory sizes  a directory's size is the bytes of its entries
                (dirs.dir_sizes)
  space         every block is exactly one of free, metadata or file data;
                free space is the complement of everything owned; the
                superblock's free count agrees
  refcount      every shared range has the number of owners the extent maps
                give it, and unshared ranges have no record
  rmap          the rmap holds exactly one record per extent-map record, per
                metadata block and per attribute value, and nothing else

Each problem is one line naming the inode (and path where known) and the
block.  Nothing here changes the image (the log is replayed on open, as
e2fsck replays the journal).
"""

import logging
import stat
import sys

import numpy as np

from daxfs.engine.dirs import DIR_HEAD_BYTES, dir_sizes
from daxfs.engine.format import (BLOCK_SIZE, DT_OF_FMT, EXT_KNOWN, EXT_UNWRITTEN, FEAT_UNWRITTEN,
                                 OWN_LOG, OWN_MAX_INO, RMAP_ATTR, RMAP_UNWRITTEN, ROOT_INO,
                                 own_tree, owner_name)
from daxfs.engine.superblock import secondary_bno, static_owners, verify_copy
from daxfs.engine.trees import RmapRec

log = logging.getLogger(__name__)

MAX_LINES = 20          # record-check lines per tree before "N more"


class Checker:
    CHECKS = ("superblocks", "trees", "inodes", "directories", "directory_sizes", "space",
              "refcount", "rmap")

    def __init__(self, vol, *, progress: bool = False):
        self.twins: dict[int, int] = {}      # node -> its twin (dup), from the parent
        self.vol = vol
        self.problems: list[str] = []
        self.progress = progress and sys.stderr.isatty()
        self.nodes: dict[str, list[int]] = {}       # tree -> its node blocks
        self.records: dict[str, list[tuple]] = {}   # tree -> its records, as the walk read them
        self.bad_trees: set[str] = set()
        self.inodes: dict[int, tuple] = {}          # ino -> InodeRec
        self.paths: dict[int, str] = {ROOT_INO: "/"}
        self.extents: list[tuple] = []              # BmapRec

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def run(self) -> list[str]:
        for i, name in enumerate(self.CHECKS):
            if self.progress:
                bar = "#" * (i * 20 // len(self.CHECKS))
                print(f"\rchecking [{bar:<20}] {name:<12}", end="", file=sys.stderr, flush=True)
            getattr(self, f"check_{name}")()
        if self.progress:
            print(f"\rchecking [{'#' * 20}] done        ", file=sys.stderr)
        return self.problems

    def _where(self, ino: int) -> str:
        p = self.paths.get(ino)
        return f"inode {ino} ({p})" if p else f"inode {ino}"

    # ---- superblocks ------------------------------------------------------
    def check_superblocks(self) -> None:
        """Both superblock copies valid; no block of the log or the pool on
        a bad (poisoned) range."""
        vol = self.vol
        pm = vol.pmem
        for bno in (0, secondary_bno(pm.nblocks)):
            why = verify_copy(pm, bno)
            if why:
                self.problem(f"superblock copy: {why}")
        if vol.note:
            self.problem(f"superblock: {vol.note}")
        if pm.bad:
            for bno, owner, _, n, _ in static_owners(vol.sb)[2:]:
                bad = pm.bad.first_bad(bno, n)
                if bad is not None:
                    what = "log" if owner == OWN_LOG else "reserve pool"
                    self.problem(f"{what}: block {bad} is on a poisoned (bad) range")

    # ---- trees --------------------------------------------------------------
    def check_trees(self) -> None:
        """Every node of every tree (BTree.walk verifies each, checks its
        shape and runs the tree's record check on every leaf record)."""
        for name, tree in self.vol.trees.items():
            blocks, records, nrecs, rejected = [], [], 0, []
            for v in tree.walk():
                if not v.dangling:
                    blocks.append(v.bno)
                    self.twins[v.bno] = v.twin
                if v.copy_error:
                    self.problem(f"{name} tree: {v.copy_error}; its copy at block {v.twin} is"
                                 " good (a mount heals it, so does check --repair)")
                if v.error:
                    if v.poisoned:
                        self.problem(f"{name} tree: node block {v.bno} is on a poisoned (bad) range")
                    else:
                        self.problem(f"{name} tree: {v.error}")
                    self.bad_trees.add(name)
                    continue
                for text in v.problems:
                    self.problem(f"{name} tree: {text}")
                    self.bad_trees.add(name)
                rejected += [why for _, why in v.bad]
                if v.level == 0:
                    nrecs += v.n
                    records += v.records
            for why in rejected[:MAX_LINES]:
                self.problem(f"{name} tree: {why}")
            if len(rejected) > MAX_LINES:
                self.problem(f"{name} tree: {len(rejected) - MAX_LINES} more bad records")
            self.nodes[name] = blocks
            self.records[name] = records
            self._check_twins(name, blocks)
            if not tree.height and tree.count:
                self.problem(f"{name} tree: empty but the superblock counts {tree.count} records")
            elif nrecs != tree.count and name not in self.bad_trees:
                self.problem(f"{name} tree: {nrecs} records, superblock says {tree.count}")

    def _records(self, name: str) -> list:
        """The records of a tree the walk read whole, as named tuples (none
        of a damaged tree: what it holds is not cross-checked)."""
        tree = self.vol.trees.get(name)
        if tree is None or name in self.bad_trees:
            return []
        return list(map(tree.spec.record._make, self.records.get(name, ())))

    # ---- inodes -------------------------------------------------------------
    def check_inodes(self) -> None:
        """What each inode's record must agree with: its extents, its
        file type, the orphan list, the superblock's counters.  (Sizes,
        modes and extents taken alone are the record checks of check_trees.)"""
        for rec in self._records("inode"):
            self.inodes[rec.ino] = rec
        if ROOT_INO not in self.inodes and "inode" not in self.bad_trees:
            self.problem("root directory (inode 1) is missing")
        self.extents = self._records("bmap")
        blocks = {}
        last_end = {}
        unwritten_ok = bool(int(self.vol.sb["features"]) & FEAT_UNWRITTEN)
        for e in self.extents:
            if e.ino in last_end and e.foff < last_end[e.ino]:
                self.problem(f"{self._where(e.ino)}: extents overlap at file block {e.foff}")
            last_end[e.ino] = e.foff + e.len
            blocks[e.ino] = blocks.get(e.ino, 0) + e.len
            if e.flags & ~EXT_KNOWN:
                self.problem(f"{self._where(e.ino)}: extent at file block {e.foff} has unknown"
                             f" flags {e.flags & ~EXT_KNOWN:#x}")
            elif e.flags & EXT_UNWRITTEN and not unwritten_ok:
                self.problem(f"{self._where(e.ino)}: unwritten extent at file block {e.foff},"
                             " but the superblock lacks the unwritten-extent feature")
        for ino in blocks:
            if ino not in self.inodes and "inode" not in self.bad_trees:
                self.problem(f"inode {ino}: has extents but no inode record")
        orphans = {r.ino for r in self._records("orphan")}
        for ino, rec in self.inodes.items():
            if rec.blocks != blocks.get(ino, 0) and "bmap" not in self.bad_trees:
                self.problem(f"inode {ino}: block count {rec.blocks} but its extents hold"
                             f" {blocks.get(ino, 0)}")
            if blocks.get(ino) and not (stat.S_ISREG(rec.mode) or stat.S_ISLNK(rec.mode)):
                self.problem(f"inode {ino}: a {stat.filemode(rec.mode)[0]} inode has data extents")
            if rec.nlink == 0 and ino not in orphans:
                self.problem(f"inode {ino}: link count 0 but not on the orphan list")
        for ino in orphans:
            if ino not in self.inodes:
                self.problem(f"orphan list names inode {ino}, which does not exist")
            elif self.inodes[ino].nlink != 0:
                self.problem(f"orphan list names inode {ino}, which still has links")
        sb = self.vol.sb
        if self.inodes and int(sb["next_ino"]) <= max(self.inodes):
            self.problem(f"superblock: next inode number {int(sb['next_ino'])} is not above"
                         f" the largest in use ({max(self.inodes)})")
        if "inode" not in self.bad_trees and int(sb["inode_count"]) != len(self.inodes):
            self.problem(f"superblock: inode count {int(sb['inode_count'])}, tree holds"
                         f" {len(self.inodes)}")

    # ---- directories --------------------------------------------------------
    def check_directories(self) -> None:
        if "dir" in self.bad_trees or "inode" in self.bad_trees:
            return
        links: dict[int, int] = {}
        subdirs: dict[int, int] = {}
        dir_parent: dict[int, int] = {}
        ents = self._records("dir")
        children: dict[int, list] = {}
        for e in ents:
            parent, ino, name = e.parent, e.ino, e.name
            children.setdefault(parent, []).append((name, ino))
            if parent not in self.inodes:
                self.problem(f"directory entry {name!r} in missing directory inode {parent}")
                continue
            if not stat.S_ISDIR(self.inodes[parent].mode):
                self.problem(f"{self._where(parent)} is not a directory but holds {name!r}")
            if ino not in self.inodes:
                self.problem(f"{self._where(parent)}: entry {name!r} names missing inode {ino}")
                continue
            links[ino] = links.get(ino, 0) + 1
            if stat.S_ISDIR(self.inodes[ino].mode):
                subdirs[parent] = subdirs.get(parent, 0) + 1
                if ino in dir_parent:
                    self.problem(f"directory inode {ino} has two parents")
                dir_parent[ino] = parent
            if e.ftype != DT_OF_FMT.get(stat.S_IFMT(self.inodes[ino].mode)):
                self.problem(f"{self._where(parent)}: entry {name!r} has the wrong file type")
        # paths, for messages
        stack = [ROOT_INO]
        while stack:
            d = stack.pop()
            for name, ino in children.get(d, []):
                if ino not in self.paths:
                    self.paths[ino] = self.paths[d].rstrip("/") + "/" + name.decode(errors="replace")
                    if ino in self.inodes and stat.S_ISDIR(self.inodes[ino].mode):
                        stack.append(ino)
        for ino, rec in self.inodes.items():
            mode, nlink, parent = rec.mode, rec.nlink, rec.parent
            if stat.S_ISDIR(mode):
                if nlink == 0:
                    continue
                want = 2 + subdirs.get(ino, 0)
                if ino != ROOT_INO and ino not in dir_parent:
                    self.problem(f"directory inode {ino} is in no directory (lost)")
                    continue
                if ino != ROOT_INO and parent != dir_parent[ino]:
                    self.problem(f"{self._where(ino)}: parent pointer {parent}, but it is in"
                                 f" directory {dir_parent[ino]}")
            else:
                want = links.get(ino, 0)
                if nlink == 0:
                    if want:
                        self.problem(f"{self._where(ino)}: link count 0 but {want} entries")
                    continue
                if want == 0:
                    self.problem(f"inode {ino}: link count {nlink} but no directory entry (lost)")
                    continue
            if nlink != want:
                self.problem(f"{self._where(ino)}: link count {nlink}, should be {want}")

    def check_directory_sizes(self) -> None:
        """A live directory's size is the bytes of its entries (dirs.py)."""
        if "dir" in self.bad_trees or "inode" in self.bad_trees:
            return
        sizes = dir_sizes((e.parent, e.name) for e in self._records("dir"))
        for ino, rec in self.inodes.items():
            want = sizes.get(ino, DIR_HEAD_BYTES)
            if stat.S_ISDIR(rec.mode) and rec.nlink and rec.size != want:
                self.problem(f"{self._where(ino)}: directory size {rec.size}, its entries make"
                             f" {want}")

    # ---- space ----------------------------------------------------------------
    def _check_twins(self, name: str, blocks: list[int]) -> None:
        """Every node of a dup filesystem has a twin elsewhere holding the
        same bytes; a single one has none (Volume.twin_problem)."""
        bad = self.vol.pmem.bad
        for bno in blocks:
            twin = self.twins.get(bno, 0)
            why = self.vol.twin_problem(bno, twin)
            if why:
                self.problem(f"{name} tree: {why}")
            elif twin and bad and bad.first_bad(twin, 1) is not None \
                    and bad.first_bad(bno, 1) is None:
                self.problem(f"{name} tree: the copy at block {twin} of node {bno} is on a"
                             " poisoned (bad) range (a mount heals it, so does check --repair)")

    def _meta_ranges(self) -> list[RmapRec]:
        """Every expected metadata rmap record (a node of a dup filesystem
        and its twin each name the other as the record's offset)."""
        vol = self.vol
        out = static_owners(vol.sb)
        for name, blocks in self.nodes.items():
            owner = own_tree(vol.trees[name].tid)
            for b in blocks:
                twin = self.twins.get(b, 0)
                out.append((b, owner, twin, 1, 0))
                if twin:
                    out.append((twin, owner, b, 1, 0))
        for x in self._records("xattr"):
            if x.vblk:
                out.append((x.vblk, x.ino, x.pos, -(-x.vlen // BLOCK_SIZE), RMAP_ATTR))
        return list(map(RmapRec._make, out))

    def check_space(self) -> None:
        vol = self.vol
        total = vol.total_blocks
        self.meta = self._meta_ranges()
        free = self._records("free")

        def counts(ranges, weights=None):
            d = np.zeros(total + 1, dtype=np.int64)
            if ranges:
                # u64 on disk: clip before adding, so that no sum overflows
                arr = np.minimum(np.array(ranges, dtype=np.uint64).reshape(-1, 2),
                                 np.uint64(total)).astype(np.int64)
                s = arr[:, 0]
                e = np.minimum(arr[:, 0] + arr[:, 1], total)
                w = np.ones(len(arr), np.int64) if weights is None else np.array(weights, np.int64)
                np.add.at(d, s, w)
                np.add.at(d, e, -w)
            return np.cumsum(d[:-1])

        metac = counts([(r.bno, r.len) for r in self.meta])
        freec = counts([(f.start, f.len) for f in free])
        datac = counts([(e.pblk, e.len) for e in self.extents])
        self.datac = datac
        skip = self.bad_trees & {"bmap", "free", "xattr"} or any(
            t in self.bad_trees for t in self.nodes)
        if skip:
            self.problem("space: not cross-checked because a tree is damaged")
            return
        for what, arr in (("metadata", metac), ("free space", freec)):
            dup = np.nonzero(arr > 1)[0]
            if dup.size:
                self.problem(f"space: block {int(dup[0])} is claimed twice as {what}"
                             f" ({dup.size} such blocks)")
        kinds = (metac > 0).astype(np.int8) + (freec > 0) + (datac > 0)
        lost = np.nonzero(kinds == 0)[0]
        if lost.size:
            self.problem(f"space: block {int(lost[0])} is neither free nor owned"
                         f" ({lost.size} such blocks leaked)")
        both = np.nonzero(kinds > 1)[0]
        if both.size:
            b = int(both[0])
            what = [k for k, a in (("metadata", metac), ("free", freec), ("file data", datac))
                    if a[b]]
            self.problem(f"space: block {b} is both {' and '.join(what)}"
                         f" ({both.size} such blocks){self._data_owner(b)}")
        nfree = int(sum(f.len for f in free))
        if nfree != int(vol.sb["free_blocks"]):
            self.problem(f"space: superblock counts {int(vol.sb['free_blocks'])} free blocks,"
                         f" free-space tree holds {nfree}")
        for a, b in zip(free, free[1:]):
            if a.start + a.len == b.start:
                self.problem(f"free space: extents at {a.start} and {b.start}"
                             " touch but are not merged")
                break

    def _data_owner(self, b: int) -> str:
        for e in self.extents:
            if e.pblk <= b < e.pblk + e.len:
                return f"; file data of {self._where(e.ino)} at file block {e.foff + b - e.pblk}"
        return ""

    # ---- refcount -------------------------------------------------------------
    def check_refcount(self) -> None:
        if not hasattr(self, "datac") or "refcount" in self.bad_trees:
            return
        total = self.vol.total_blocks
        recs = self._records("refcount")
        d = np.zeros(total + 1, dtype=np.int64)
        for i, r in enumerate(recs):
            if i and recs[i - 1].start + recs[i - 1].len > r.start:
                self.problem(f"refcount: records at blocks {recs[i - 1].start} and {r.start}"
                             " overlap")
            if r.start + r.len <= total:
                d[r.start] += r.refcount
                d[r.start + r.len] -= r.refcount
        refc = np.cumsum(d[:-1])
        for e in self.extents:
            if e.flags & EXT_UNWRITTEN and e.pblk + e.len <= total and \
                    int(self.datac[e.pblk:e.pblk + e.len].max()) > 1:
                self.problem(f"{self._where(e.ino)}: unwritten extent at file block {e.foff}"
                             f" is shared (block {e.pblk}+{e.len})")
                break
        want = np.where(self.datac >= 2, self.datac, 0)
        bad = np.nonzero(refc != want)[0]
        if bad.size:
            b = int(bad[0])
            self.problem(f"refcount: block {b} has {int(self.datac[b])} owners but refcount"
                         f" {int(refc[b])} ({bad.size} such blocks){self._data_owner(b)}")

    # ---- rmap -------------------------------------------------------------
    def check_rmap(self) -> None:
        if not self.vol.has_rmap or "rmap" in self.bad_trees:
            return
        have = self._records("rmap")
        want = list(self.meta) if hasattr(self, "meta") else []
        want += [(e.pblk, e.ino, e.foff, e.len, RMAP_UNWRITTEN if e.flags & EXT_UNWRITTEN else 0)
                 for e in self.extents]
        hs, ws = set(map(tuple, have)), set(want)
        missing = sorted(map(RmapRec._make, ws - hs))
        extra = sorted(map(RmapRec._make, hs - ws))
        for rec in missing[:5]:
            self.problem(f"rmap: no record for block {rec.bno}+{rec.len} owned by"
                         f" {self._owner(rec.owner)} at offset {rec.offset}")
        if len(missing) > 5:
            self.problem(f"rmap: {len(missing) - 5} more records missing")
        for rec in extra[:5]:
            self.problem(f"rmap: stray record for block {rec.bno}+{rec.len} owned by"
                         f" {self._owner(rec.owner)} at offset {rec.offset}")
        if len(extra) > 5:
            self.problem(f"rmap: {len(extra) - 5} more stray records")

    def _owner(self, owner: int) -> str:
        if owner <= OWN_MAX_INO:
            return self._where(owner)
        return owner_name(owner)


def check_image(path: str, *, progress: bool = False) -> list[str]:
    """Open the image, run every check, return the problems found."""
    from daxfs.engine.volume import Volume
    vol = Volume.open(path)
    try:
        return Checker(vol, progress=progress).run()
    finally:
        vol.pmem.close()
