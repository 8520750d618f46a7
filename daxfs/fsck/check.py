"""`daxfs check`: prove that an image is consistent.

A fixed list of named invariant checks, run in order (as S3QL's fsck):

  superblocks   both copies present, valid and agreeing
  trees         every node of every tree: magic, checksum, self block
                number, level, record order, keys inside the parent's bounds,
                overlap high keys, record counts
  inodes        modes, block counts, sizes of symlinks, orphans
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

from daxfs.engine.dirs import DIR_HEAD_BYTES, dir_sizes, valid_name
from daxfs.engine.errors import Corrupted, MediaError
from daxfs.engine.format import (BLOCK_SIZE, DT_DIR, EXT_KNOWN, EXT_UNWRITTEN, FEAT_UNWRITTEN,
                                 MAX_FILE_BYTES, OWN_AG, OWN_FS, OWN_LOG, RMAP_ATTR,
                                 RMAP_UNWRITTEN, ROOT_INO, SYMLINK_MAX, own_tree)
from daxfs.engine.journal import sealed_ok
from daxfs.engine.superblock import secondary_bno, verify_copy

log = logging.getLogger(__name__)


class Checker:
    CHECKS = ("superblocks", "trees", "inodes", "directories", "directory_sizes", "space",
              "refcount", "rmap")

    def __init__(self, vol, *, progress: bool = False):
        self.vol = vol
        self.problems: list[str] = []
        self.progress = progress and sys.stderr.isatty()
        self.nodes: dict[str, list[int]] = {}
        self.bad_trees: set[str] = set()
        self.inodes: dict[int, tuple] = {}
        self.paths: dict[int, str] = {ROOT_INO: "/"}
        self.extents: list[tuple] = []

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
        pm = self.vol.pmem
        for bno in (0, secondary_bno(pm.nblocks)):
            why = verify_copy(pm, bno)
            if why:
                self.problem(f"superblock copy: {why}")
        if self.vol.note:
            self.problem(f"superblock: {self.vol.note}")

    # ---- trees --------------------------------------------------------------
    def check_trees(self) -> None:
        for name, tree in self.vol.trees.items():
            self.nodes[name] = self._walk(name, tree)
            if not tree.height and tree.count:
                self.problem(f"{name} tree: empty but the superblock counts {tree.count} records")

    def _walk(self, name: str, tree) -> list[int]:
        spec = tree.spec
        blocks = []
        if not tree.height:
            return blocks
        nrecs = 0
        seen = set()
        stack = [(tree.root, tree.height - 1, None, None, None)]
        while stack:
            bno, level, low, high, hi = stack.pop()
            if bno in seen or bno == 0 or bno >= self.vol.total_blocks:
                self.problem(f"{name} tree: block {bno} referenced twice or out of range")
                self.bad_trees.add(name)
                continue
            seen.add(bno)
            blocks.append(bno)
            try:
                self.vol.pmem.check_load(bno)
                node = tree._node(bno, level)
                if bno not in self.vol.journal.dirty and not sealed_ok(self.vol.pmem.block(bno)):
                    raise Corrupted(bno, f"{name} btree node checksum mismatch")
            except MediaError:
                self.problem(f"{name} tree: node block {bno} is on a poisoned (bad) range")
                self.bad_trees.add(name)
                continue
            except Corrupted as e:
                self.problem(f"{name} tree: {e}")
                self.bad_trees.add(name)
                continue
            n = node.n
            if n == 0 and not (bno == tree.root and level == 0):
                self.problem(f"{name} tree: block {bno}: empty node")
            rows = node.recs[:n].tolist()
            keys = [r[:spec.nkey] for r in rows]
            if any(keys[i] >= keys[i + 1] for i in range(n - 1)):
                self.problem(f"{name} tree: block {bno}: records out of order")
                self.bad_trees.add(name)
            if n and low is not None and keys[0] < low:
                self.problem(f"{name} tree: block {bno}: first key {keys[0]} below the parent's {low}")
                self.bad_trees.add(name)
            if n and high is not None and keys[-1] >= high:
                self.problem(f"{name} tree: block {bno}: last key {keys[-1]} not below the next"
                             f" sibling's {high}")
                self.bad_trees.add(name)
            if spec.overlap and hi is not None and n and tree._node_hi(node) > hi:
                self.problem(f"{name} tree: block {bno}: high key {tree._node_hi(node)} above"
                             f" the parent's {hi}")
                self.bad_trees.add(name)
            if level:
                for i in range(n - 1, -1, -1):
                    e = rows[i]
                    nxt = keys[i + 1] if i + 1 < n else high
                    lo_i = keys[i] if (i or low is not None) else None
                    stack.append((e[-1], level - 1, lo_i, nxt,
                                  e[-2] if spec.overlap else None))
            else:
                nrecs += n
        if nrecs != tree.count and name not in self.bad_trees:
            self.problem(f"{name} tree: {nrecs} records, superblock says {tree.count}")
        return blocks

    def _records(self, name: str):
        tree = self.vol.trees.get(name)
        if tree is None or name in self.bad_trees:
            return []
        try:
            return list(tree.scan())
        except (Corrupted, MediaError) as e:
            self.problem(f"{name} tree: {e}")
            self.bad_trees.add(name)
            return []

    # ---- inodes -------------------------------------------------------------
    def check_inodes(self) -> None:
        for rec in self._records("inode"):
            self.inodes[rec[0]] = rec
        if ROOT_INO not in self.inodes and "inode" not in self.bad_trees:
            self.problem("root directory (inode 1) is missing")
        self.extents = self._records("bmap")
        blocks = {}
        last_end = {}
        for ino, foff, pblk, n, flags in self.extents:
            if n == 0:
                self.problem(f"{self._where(ino)}: zero-length extent at file block {foff}")
            if ino in last_end and foff < last_end[ino]:
                self.problem(f"{self._where(ino)}: extents overlap at file block {foff}")
            last_end[ino] = foff + n
            blocks[ino] = blocks.get(ino, 0) + n
            if pblk + n > self.vol.total_blocks or pblk == 0:
                self.problem(f"{self._where(ino)}: extent at file block {foff} points outside"
                             f" the device (block {pblk}+{n})")
            if flags & ~EXT_KNOWN:
                self.problem(f"{self._where(ino)}: extent at file block {foff} has unknown"
                             f" flags {flags & ~EXT_KNOWN:#x}")
            elif flags & EXT_UNWRITTEN and not int(self.vol.sb["features"]) & FEAT_UNWRITTEN:
                self.problem(f"{self._where(ino)}: unwritten extent at file block {foff}, but"
                             " the superblock lacks the unwritten-extent feature")
        for ino in blocks:
            if ino not in self.inodes and "inode" not in self.bad_trees:
                self.problem(f"inode {ino}: has extents but no inode record")
        orphans = {r[0] for r in self._records("orphan")}
        for ino, rec in self.inodes.items():
            mode, nlink, size, nblocks = rec[1], rec[2], rec[5], rec[6]
            if size > MAX_FILE_BYTES:
                self.problem(f"inode {ino}: size {size} is beyond the maximum file size")
            elif stat.S_ISLNK(mode) and size > SYMLINK_MAX:
                self.problem(f"inode {ino}: symbolic link of {size} bytes (at most"
                             f" {SYMLINK_MAX})")
            if stat.S_IFMT(mode) not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO,
                                         stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
                self.problem(f"inode {ino}: bad file type in mode {mode:o}")
            if nblocks != blocks.get(ino, 0) and "bmap" not in self.bad_trees:
                self.problem(f"inode {ino}: block count {nblocks} but its extents hold"
                             f" {blocks.get(ino, 0)}")
            if blocks.get(ino) and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                self.problem(f"inode {ino}: a {stat.filemode(mode)[0]} inode has data extents")
            if nlink == 0 and ino not in orphans:
                self.problem(f"inode {ino}: link count 0 but not on the orphan list")
        for ino in orphans:
            if ino not in self.inodes:
                self.problem(f"orphan list names inode {ino}, which does not exist")
            elif self.inodes[ino][2] != 0:
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
        for parent, pos, ino, ftype, namelen, name in ents:
            if not valid_name(name, namelen):
                self.problem(f"directory inode {parent}: entry {name!r} is not a valid name")
            children.setdefault(parent, []).append((name, ino))
            if parent not in self.inodes:
                self.problem(f"directory entry {name!r} in missing directory inode {parent}")
                continue
            if not stat.S_ISDIR(self.inodes[parent][1]):
                self.problem(f"{self._where(parent)} is not a directory but holds {name!r}")
            if ino not in self.inodes:
                self.problem(f"{self._where(parent)}: entry {name!r} names missing inode {ino}")
                continue
            links[ino] = links.get(ino, 0) + 1
            if stat.S_ISDIR(self.inodes[ino][1]):
                subdirs[parent] = subdirs.get(parent, 0) + 1
                if ino in dir_parent:
                    self.problem(f"directory inode {ino} has two parents")
                dir_parent[ino] = parent
            if (ftype == DT_DIR) != stat.S_ISDIR(self.inodes[ino][1]):
                self.problem(f"{self._where(parent)}: entry {name!r} has the wrong file type")
        # paths, for messages
        stack = [ROOT_INO]
        while stack:
            d = stack.pop()
            for name, ino in children.get(d, []):
                if ino not in self.paths:
                    self.paths[ino] = self.paths[d].rstrip("/") + "/" + name.decode(errors="replace")
                    if ino in self.inodes and stat.S_ISDIR(self.inodes[ino][1]):
                        stack.append(ino)
        for ino, rec in self.inodes.items():
            mode, nlink, parent = rec[1], rec[2], rec[12]
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
        sizes = dir_sizes((rec[0], rec[5]) for rec in self._records("dir"))
        for ino, rec in self.inodes.items():
            mode, nlink, size = rec[1], rec[2], rec[5]
            if stat.S_ISDIR(mode) and nlink and size != sizes.get(ino, DIR_HEAD_BYTES):
                self.problem(f"{self._where(ino)}: directory size {size}, its entries make"
                             f" {sizes.get(ino, DIR_HEAD_BYTES)}")

    # ---- space ----------------------------------------------------------------
    def _meta_ranges(self) -> list[tuple[int, int, int, int, int]]:
        """Every expected metadata rmap record (bno, owner, offset, len, flags)."""
        vol = self.vol
        sb = vol.sb
        out = [(0, OWN_FS, 0, 1, 0), (secondary_bno(vol.total_blocks), OWN_FS, 0, 1, 0),
               (int(sb["log_start"]), OWN_LOG, 0, int(sb["log_blocks"]), 0)]
        for b in vol.alloc.pool_blocks():
            out.append((b, OWN_AG, 0, 1, 0))
        for name, blocks in self.nodes.items():
            owner = own_tree(vol.trees[name].tid)
            out.extend((b, owner, 0, 1, 0) for b in blocks)
        for rec in self._records("xattr"):
            if rec[5]:
                out.append((rec[5], rec[0], rec[1], -(-rec[4] // BLOCK_SIZE), RMAP_ATTR))
        return out

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

        metac = counts([(r[0], r[3]) for r in self.meta])
        freec = counts([(s, n) for s, n in free])
        datac = counts([(p, n) for _, _, p, n, _ in self.extents])
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
        nfree = int(sum(n for _, n in free))
        if nfree != int(vol.sb["free_blocks"]):
            self.problem(f"space: superblock counts {int(vol.sb['free_blocks'])} free blocks,"
                         f" free-space tree holds {nfree}")
        for i in range(len(free) - 1):
            if free[i][0] + free[i][1] == free[i + 1][0]:
                self.problem(f"free space: extents at {free[i][0]} and {free[i + 1][0]}"
                             " touch but are not merged")
                break

    def _data_owner(self, b: int) -> str:
        for ino, foff, p, n, _ in self.extents:
            if p <= b < p + n:
                return f"; file data of {self._where(ino)} at file block {foff + b - p}"
        return ""

    # ---- refcount -------------------------------------------------------------
    def check_refcount(self) -> None:
        if not hasattr(self, "datac") or "refcount" in self.bad_trees:
            return
        total = self.vol.total_blocks
        recs = self._records("refcount")
        d = np.zeros(total + 1, dtype=np.int64)
        for i, (s, n, c) in enumerate(recs):
            if c < 2:
                self.problem(f"refcount: record at block {s} has count {c} (< 2)")
            if i and recs[i - 1][0] + recs[i - 1][1] > s:
                self.problem(f"refcount: records at blocks {recs[i - 1][0]} and {s} overlap")
            if s + n <= total:
                d[s] += c
                d[s + n] -= c
        refc = np.cumsum(d[:-1])
        for ino, foff, p, n, flags in self.extents:
            if flags & EXT_UNWRITTEN and p + n <= total and int(self.datac[p:p + n].max()) > 1:
                self.problem(f"{self._where(ino)}: unwritten extent at file block {foff}"
                             f" is shared (block {p}+{n})")
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
        want += [(p, ino, foff, n, RMAP_UNWRITTEN if fl & EXT_UNWRITTEN else 0)
                 for ino, foff, p, n, fl in self.extents]
        hs, ws = set(have), set(want)
        missing = sorted(ws - hs)
        extra = sorted(hs - ws)
        for rec in missing[:5]:
            self.problem(f"rmap: no record for block {rec[0]}+{rec[3]} owned by"
                         f" {self._owner(rec[1])} at offset {rec[2]}")
        if len(missing) > 5:
            self.problem(f"rmap: {len(missing) - 5} more records missing")
        for rec in extra[:5]:
            self.problem(f"rmap: stray record for block {rec[0]}+{rec[3]} owned by"
                         f" {self._owner(rec[1])} at offset {rec[2]}")
        if len(extra) > 5:
            self.problem(f"rmap: {len(extra) - 5} more stray records")

    def _owner(self, owner: int) -> str:
        from daxfs.engine.format import owner_name
        if owner < (1 << 62):
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
