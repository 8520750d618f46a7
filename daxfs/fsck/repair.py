"""`daxfs check --repair`: rebuild what can be derived, as xfs_repair
rebuilds its btrees.

What this module owns
---------------------
Turning a damaged image into a consistent one, in five phases:

1. **check** (check.py): a clean image is left untouched.
2. **salvage**: every tree is walked with the engine's own node verifier;
   a node that fails (checksum, magic, self block number, level, capacity,
   poisoned) is skipped with its whole subtree, every record of every
   readable leaf is kept.  A tree whose walk met an unreadable node, keys
   out of order or outside the parent's bounds, or an empty node is marked
   for rebuilding.
3. **fix the primary records** (the ones nothing else can derive):
   inodes, extent maps, directory entries, xattrs, the orphan list.
   A damaged extent map is checked against the rmap, its mirror (one rmap
   record per extent record): records an intact rmap does not confirm are
   dropped, and extents lost with unreadable nodes are taken back from the
   rmap records that can still be read.  (When both trees are intact but
   disagree, the extent maps are the truth and the rmap is rebuilt.)
   Extent and xattr-value records pointing outside the device or over
   metadata (superblocks, log, verified tree nodes) are dropped; directory
   entries naming missing inodes are dropped (an inode is recreated only
   when something still points at it: data extents or entries of its own);
   inodes in no directory go to /lost+found under their inode number;
   link counts, parent pointers and block counts are recounted; every inode
   with no link goes on the orphan list.  Entries and xattrs with invalid
   or repeated names are dropped, those filed under the wrong name hash are
   refiled, impossible file sizes are set from the extents.  Data whose
   extent records are lost with both the extent-map node and the rmap is
   gone: the file keeps its size and reads zeros there (a hole), and the
   fix line says how many blocks it lost.
4. **derive** the refcount tree (from the extent maps), the rmap (extent
   maps + xattr values + metadata blocks) and the free-space tree (the
   complement of everything owned); recompute the superblock counters.
5. **write**: each tree whose records changed, or which was damaged, is
   bulk-loaded (nodes ~3/4 full) into *fresh* blocks: blocks that the old,
   committed image does not use for anything (not even as a node of a
   damaged tree, a pool block, or -- when they can be read -- a block the
   old rmap or free-space tree says is taken).  The node images are stored
   directly and flushed like file data; one journal transaction then
   switches both superblocks to the new roots, counters and reserve pool.
   Until that commit point the old image is unchanged, so a crash during a
   repair leaves the image as it was; rerun the repair.
   Trees that were intact and whose records did not change keep their
   nodes.

Afterwards the checker runs again and whatever it still reports is
returned: `repair_image(path) -> (problems_left, fixed_lines)`.  A second
repair of the result finds nothing to do.

It does not repair an image whose two superblock copies are both unusable
(and not mended by replaying the log): that is an operational error (the
caller exits 8), as is an image that is locked or not a daxfs image.  When
the free space cannot hold the rebuilt trees nothing is written and the
repair says so among the problems left.
"""

from __future__ import annotations

import bisect
import logging
import stat
import time

import numpy as np

from daxfs.engine.alloc import POOL_HIGH, POOL_TARGET
from daxfs.engine.btree import MAX_HEIGHT, Node
from .check import Checker
from daxfs.engine.dirs import name_hash
from daxfs.engine.errors import Corrupted, MediaError, NoSpace
from daxfs.engine.format import (BLOCK_SIZE as BS, DT_LNK, DT_OF_FMT, MAX_FILE_BYTES, NODE_HDR_DTYPE, NODE_HDR_SIZE,
                                 OWN_AG, OWN_FS, OWN_LOG, OWN_MAX_INO, RMAP_ATTR, ROOT_INO,
                                 SB_POOL_MAX, STATE_NEEDS_CHECK, SYMLINK_MAX, XATTR_INLINE_MAX,
                                 XATTR_VALUE_MAX, own_tree)
from daxfs.engine.journal import seal
from daxfs.engine.superblock import secondary_bno

log = logging.getLogger(__name__)

LOST_FOUND = b"lost+found"
_MAX_FILE_BLOCKS = -(-MAX_FILE_BYTES // BS)
_LOW = 0xFFFFFFFF

_GOOD_FMTS = set(DT_OF_FMT)

# inode record fields (format.INODE_DTYPE)
I_INO, I_MODE, I_NLINK, I_UID, I_GID, I_SIZE, I_BLOCKS = 0, 1, 2, 3, 4, 5, 6
I_ATIME, I_MTIME, I_CTIME, I_BTIME, I_RDEV, I_PARENT = 7, 8, 9, 10, 11, 12


def _show(name: bytes) -> str:
    """A name for a message line: undecodable bytes and control characters
    escaped, so that every fix stays on one line."""
    text = name.decode(errors="backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _fill(cap: int) -> int:
    """Records per node when bulk-loading: about 3/4 full, at least 2."""
    return max(2, cap * 3 // 4)


def level_sizes(spec, n: int) -> list[int]:
    """Nodes per level (leaves first) of a bulk-loaded tree of n records."""
    if n == 0:
        return []
    k = -(-n // _fill(spec.leaf_cap))
    sizes = [k]
    while k > 1:
        k = -(-k // _fill(spec.node_cap))
        sizes.append(k)
    return sizes


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of every run of True in a boolean array."""
    if not mask.size:
        return []
    m = mask.astype(np.int8)
    d = np.diff(np.concatenate(([0], m, [0])))
    starts = np.nonzero(d == 1)[0]
    ends = np.nonzero(d == -1)[0]
    return [(int(s), int(e - s)) for s, e in zip(starts, ends)]


class Salvaged:
    """What could be read of one tree."""

    def __init__(self, name: str):
        self.name = name
        self.records: list[tuple] = []     # sorted by key, unique keys
        self.good: list[int] = []          # verified nodes reachable from the root
        self.seen: set[int] = set()        # every in-range block the tree points at
        self.lost = 0                      # unreadable nodes (with their subtrees)
        self.damaged = False               # needs a rebuild
        self.why: list[str] = []

    def bad(self, why: str) -> None:
        self.damaged = True
        if len(self.why) < 3:
            self.why.append(why)


class Repair:
    def __init__(self, vol):
        self.vol = vol
        self.pmem = vol.pmem
        self.sb = vol.sb
        self.total = vol.total_blocks
        self.fixed: list[str] = []
        self.salv: dict[str, Salvaged] = {}
        self.paths: dict[int, str] = {ROOT_INO: "/"}
        self.now = time.time_ns()

    def fix(self, line: str) -> None:
        self.fixed.append(line)
        log.info("repaired: %s", line)

    def _where(self, ino: int) -> str:
        p = self.paths.get(ino)
        return f"inode {ino} ({p})" if p else f"inode {ino}"

    # ==== phase 2: salvage =====================================================
    def salvage(self) -> None:
        for name, tree in self.vol.trees.items():
            self.salv[name] = self._salvage_tree(name, tree)

    def _salvage_tree(self, name: str, tree) -> Salvaged:
        s = Salvaged(name)
        spec = tree.spec
        height, root = tree.height, tree.root
        if height == 0:
            return s
        if height > MAX_HEIGHT:
            s.bad(f"height {height}")
            s.lost += 1
            return s
        nk = spec.nkey
        rows: list[tuple] = []
        prev_last = None
        stack = [(root, height - 1, None, None, None)]
        while stack:
            bno, level, low, high, hi = stack.pop()
            if bno == 0 or bno >= self.total or bno in s.seen:
                s.bad(f"block {bno} referenced twice or out of range")
                s.lost += 1
                continue
            s.seen.add(bno)
            try:
                self.pmem.check_load(bno)
                blk = self.pmem.block(bno)
                tree._verify(bno, blk, level)
                node = Node(spec, bno, blk, None)
                if node.level != level:
                    raise Corrupted(bno, f"level {node.level}, expected {level}")
            except MediaError:
                s.bad(f"block {bno} is poisoned")
                s.lost += 1
                continue
            except Corrupted as e:
                s.bad(str(e))
                s.lost += 1
                continue
            s.good.append(bno)
            n = node.n
            if n == 0 and not (bno == root and level == 0):
                s.bad(f"block {bno}: empty node")
            recs = node.recs[:n]
            keys = list(zip(*(recs[f].tolist() for f in spec.key_fields))) if n else []
            if any(keys[i] >= keys[i + 1] for i in range(n - 1)):
                s.bad(f"block {bno}: records out of order")
            if n and low is not None and keys[0] < low:
                s.bad(f"block {bno}: first key below the parent's")
            if n and high is not None and keys[-1] >= high:
                s.bad(f"block {bno}: last key not below the next sibling's")
            if spec.overlap and hi is not None and n and tree._node_hi(node) > hi:
                s.bad(f"block {bno}: high key above the parent's")
            if level:
                for i in range(n - 1, -1, -1):
                    nxt = keys[i + 1] if i + 1 < n else high
                    lo_i = keys[i] if (i or low is not None) else None
                    stack.append((int(recs["child"][i]), level - 1, lo_i, nxt,
                                  int(recs["hi"][i]) if spec.overlap else None))
            else:
                if n and prev_last is not None and keys[0] <= prev_last:
                    s.bad(f"block {bno}: keys overlap the previous leaf")
                if n:
                    prev_last = keys[-1]
                rows.extend(self._norm(name, r) for r in recs.tolist())
        rows.sort(key=lambda r: r[:nk])
        out = []
        for r in rows:
            if out and out[-1][:nk] == r[:nk]:
                continue
            out.append(r)
        s.records = out
        return s

    @staticmethod
    def _norm(name: str, rec: tuple) -> tuple:
        if name == "xattr":
            rec = list(rec)
            rec[3] = (0, 0, 0)
            return tuple(rec)
        return tuple(rec)

    # ==== phase 3: primary records ============================================
    def fix_primary(self) -> None:
        sv = self.salv
        self.inodes: dict[int, list] = {r[0]: list(r) for r in sv["inode"].records}
        self.extents: list[tuple] = list(sv["bmap"].records)
        self.dirents: list[tuple] = list(sv["dir"].records)
        self.xattrs: list[tuple] = list(sv["xattr"].records)
        self.orphans: set[int] = {r[0] for r in sv["orphan"].records}
        self.next_ino = int(self.sb["next_ino"])
        self.created: set[int] = set()
        self._counter_messages()
        self._paths_for_messages()
        self._meta_mask()
        self._fix_inode_records()
        self._recover_extents_from_rmap()
        self._fix_extents()
        self._fix_xattrs()
        self._fix_directories()
        self._fix_counts()

    def _counter_messages(self) -> None:
        """Superblock counters that disagree with the trees as found (the
        counters are recomputed in any case)."""
        sb = self.sb
        if not self.salv["inode"].damaged:
            n, top = len(self.inodes), max(self.inodes, default=0)
            if int(sb["inode_count"]) != n:
                self.fix(f"superblock: inode count {int(sb['inode_count'])}, the inode tree"
                         f" holds {n}: corrected")
            if int(sb["next_ino"]) <= top:
                self.fix(f"superblock: next inode number {int(sb['next_ino'])} is not above"
                         f" the largest in use ({top}): corrected")
        fr = self.salv["free"]
        if not fr.damaged:
            n = sum(r[1] for r in fr.records)
            if int(sb["free_blocks"]) != n:
                self.fix(f"superblock: free block count {int(sb['free_blocks'])}, the"
                         f" free-space tree holds {n}: corrected")

    def _paths_for_messages(self) -> None:
        children: dict[int, list] = {}
        for parent, _, ino, _, _, name in self.dirents:
            children.setdefault(parent, []).append((name, ino))
        stack = [ROOT_INO]
        while stack:
            d = stack.pop()
            for name, ino in children.get(d, []):
                if ino not in self.paths:
                    self.paths[ino] = self.paths[d].rstrip("/") + "/" + _show(name)
                    stack.append(ino)

    def _meta_mask(self) -> None:
        """Blocks that hold metadata for certain: superblocks, log, verified nodes."""
        meta = np.zeros(self.total, dtype=bool)
        meta[0] = True
        meta[secondary_bno(self.total)] = True
        ls, lb = int(self.sb["log_start"]), int(self.sb["log_blocks"])
        meta[min(ls, self.total):min(ls + lb, self.total)] = True
        for s in self.salv.values():
            if s.good:
                meta[np.array(s.good, dtype=np.int64)] = True
        self.meta = meta
        fixed = np.zeros(self.total, dtype=bool)     # superblocks and log only
        fixed[0] = fixed[secondary_bno(self.total)] = True
        fixed[min(ls, self.total):min(ls + lb, self.total)] = True
        self.fixed_meta = fixed

    def _new_ino(self) -> int:
        ino = max(self.next_ino, max(self.inodes, default=0) + 1, ROOT_INO + 1)
        self.next_ino = ino + 1
        return ino

    def _make_inode(self, ino: int, mode: int, parent: int = 0, size: int = 0,
                    nlink: int = 1) -> list:
        now = self.now
        rec = [ino, mode, nlink, 0, 0, size, 0, now, now, now, now, 0, parent, 0, 0]
        self.inodes[ino] = rec
        self.created.add(ino)
        return rec

    def _fix_inode_records(self) -> None:
        for ino in sorted(self.inodes):
            rec = self.inodes[ino]
            if ino == 0 or ino > OWN_MAX_INO:
                del self.inodes[ino]
                self.fix(f"inode {ino}: impossible inode number, record dropped")
            elif stat.S_IFMT(rec[I_MODE]) not in _GOOD_FMTS:
                del self.inodes[ino]
                self.fix(f"{self._where(ino)}: bad file type in mode {rec[I_MODE]:o},"
                         " inode dropped")
        if ROOT_INO in self.inodes and not stat.S_ISDIR(self.inodes[ROOT_INO][I_MODE]):
            del self.inodes[ROOT_INO]
            self.fix("inode 1: the root is not a directory, record dropped")
        if ROOT_INO not in self.inodes:
            self._make_inode(ROOT_INO, stat.S_IFDIR | 0o755, parent=ROOT_INO)
            self.fix("root directory (inode 1) was missing: recreated")

    def _recover_extents_from_rmap(self) -> None:
        """A damaged extent map is checked against the rmap, its mirror (one
        rmap record per extent record): when the rmap is intact, extent
        records it does not confirm are dropped; extent records lost with
        unreadable nodes come back from the rmap's records of file data,
        where those can be read."""
        bm, rm = self.salv["bmap"], self.salv.get("rmap")
        if not bm.damaged or rm is None or not rm.records:
            return
        if not rm.damaged:
            mirror = {(r[1], r[2], r[0], r[3]) for r in rm.records
                      if r[1] <= OWN_MAX_INO and not r[4] & RMAP_ATTR}
            kept = [e for e in self.extents if e[:4] in mirror]
            if len(kept) != len(self.extents):
                self.fix(f"extent maps: {len(self.extents) - len(kept)} extent record(s) in"
                         " damaged nodes disagree with the rmap: dropped")
                self.extents = kept
        per: dict[int, list] = {}
        for ino, foff, p, n, _ in self.extents:
            per.setdefault(ino, []).append((foff, foff + n))
        for v in per.values():
            v.sort()
        added = 0
        for bno, owner, off, n, flags in rm.records:
            if owner > OWN_MAX_INO or flags & RMAP_ATTR or n == 0:
                continue
            ranges = per.setdefault(owner, [])
            i = bisect.bisect_left(ranges, (off, off + n))
            if (i > 0 and ranges[i - 1][1] > off) or (i < len(ranges) and ranges[i][0] < off + n):
                continue
            ranges.insert(i, (off, off + n))
            self.extents.append((owner, off, bno, n, 0))
            added += 1
        if added:
            self.extents.sort(key=lambda r: r[:2])
            self.fix(f"extent maps: {added} extent record(s) lost with unreadable nodes"
                     " taken back from the rmap")

    def _fix_extents(self) -> None:
        total = self.total
        out = []
        last_end: dict[int, int] = {}
        dropped_missing: dict[int, int] = {}
        for rec in self.extents:
            ino, foff, p, n, flags = rec
            why = None
            if n == 0:
                why = "zero-length extent"
            elif p == 0 or p >= total or p + n > total:
                why = f"points outside the device (block {p}+{n})"
            elif self.meta[p:p + n].any():
                why = f"overlaps metadata (block {p}+{n})"
            elif foff + n > _MAX_FILE_BLOCKS:
                why = "lies beyond the maximum file size"
            elif ino in last_end and foff < last_end[ino]:
                why = "overlaps the previous extent of the file"
            elif ino == 0 or ino > OWN_MAX_INO:
                why = "belongs to an impossible inode number"
            elif ino in self.inodes and not (stat.S_ISREG(self.inodes[ino][I_MODE])
                                             or stat.S_ISLNK(self.inodes[ino][I_MODE])):
                why = "belongs to an inode that cannot hold data"
            if why:
                self.fix(f"{self._where(ino)}: extent at file block {foff} {why}: dropped")
                continue
            if flags:
                self.fix(f"{self._where(ino)}: extent at file block {foff}: unknown flags"
                         f" {flags:#x} cleared")
                rec = (ino, foff, p, n, 0)
            last_end[ino] = foff + n
            if ino not in self.inodes:
                dropped_missing[ino] = max(dropped_missing.get(ino, 0), foff + n)
            out.append(rec)
        self.extents = out
        named_as = {e[2]: e[3] for e in self.dirents}
        for ino, end_blk in sorted(dropped_missing.items()):
            # data with no inode: give it one, so that the data can be found
            nlink = 0 if ino in self.orphans else 1      # unlinked: stays so
            if named_as.get(ino) == DT_LNK:
                self._make_inode(ino, stat.S_IFLNK | 0o777, nlink=nlink)
                what = "a symbolic link"
            else:
                self._make_inode(ino, stat.S_IFREG | 0o600, size=end_blk * BS, nlink=nlink)
                what = f"a regular file of {end_blk * BS} bytes"
            self.fix(f"inode {ino}: has data extents but no inode record: recreated as"
                     f" {what}")
        self.data = np.zeros(total + 1, dtype=np.int32)
        if self.extents:
            arr = np.array([(r[2], r[3]) for r in self.extents], dtype=np.int64)
            np.add.at(self.data, arr[:, 0], 1)
            np.add.at(self.data, arr[:, 0] + arr[:, 1], -1)
        self.data = np.cumsum(self.data[:-1], dtype=np.int32)

    def _fix_xattrs(self) -> None:
        taken = self.meta | (self.data > 0)
        out = []
        names: set[tuple] = set()
        for rec in self.xattrs:
            ino, pos, namelen, _pad, vlen, vblk = rec[:6]
            name = rec[6]
            why = None
            if ino not in self.inodes:
                why = "belongs to a missing inode"
            elif not name or (ino, name) in names:
                why = "has an empty or repeated name"
            elif vlen > XATTR_VALUE_MAX:
                why = f"value length {vlen} is over the maximum"
            elif vblk == 0 and vlen > XATTR_INLINE_MAX:
                why = f"inline value of {vlen} bytes is over the inline maximum"
            elif vblk:
                n = -(-vlen // BS)
                if n == 0 or vblk >= self.total or vblk + n > self.total:
                    why = f"value points outside the device (block {vblk}+{n})"
                elif taken[vblk:vblk + n].any():
                    why = f"value blocks {vblk}+{n} are used by something else"
                else:
                    taken[vblk:vblk + n] = True
            if why:
                self.fix(f"{self._where(ino)}: extended attribute {rec[6]!r} {why}: dropped")
                continue
            names.add((ino, name))
            if namelen != len(name):
                rec = rec[:2] + (len(name),) + rec[3:]
            out.append(rec)
        # the key's hash half must be the name's, or lookups cannot find it
        used = {(r[0], r[1]) for r in out}
        for i, rec in enumerate(out):
            h = name_hash(rec[6]) << 32
            if rec[1] >> 32 != h >> 32:
                seq = 0
                while (rec[0], h | seq) in used:
                    seq += 1
                used.discard(rec[:2])
                used.add((rec[0], h | seq))
                out[i] = (rec[0], h | seq) + rec[2:]
                self.fix(f"{self._where(rec[0])}: extended attribute {rec[6]!r} was filed"
                         " under the wrong hash: moved")
        out.sort(key=lambda r: r[:2])
        self.xattrs = out

    # ---- directories -------------------------------------------------------------
    def _fix_directories(self) -> None:
        inodes = self.inodes
        # inodes that entries of their own still point at: recreate as directories
        parents_missing = sorted({d[0] for d in self.dirents if d[0] not in inodes
                                  and 0 < d[0] <= OWN_MAX_INO})
        for p in parents_missing:
            self._make_inode(p, stat.S_IFDIR | 0o700)
            self.fix(f"inode {p}: holds directory entries but has no inode record:"
                     " recreated as a directory")
        kept = []
        seen_names: set[tuple] = set()
        for ent in self.dirents:
            parent, pos, ino, ftype, namelen, name = ent
            what = f"{self.paths.get(parent, f'directory {parent}')}: entry {name!r}"
            if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
                self.fix(f"{what}: invalid name: dropped")
                continue
            if (parent, name) in seen_names:
                self.fix(f"{what}: the name appears twice in the directory: second dropped")
                continue
            seen_names.add((parent, name))
            if parent not in inodes:
                self.fix(f"{what} in a missing directory: dropped")
                continue
            if not stat.S_ISDIR(inodes[parent][I_MODE]):
                self.fix(f"{what} in an inode that is not a directory: dropped")
                continue
            if ino not in inodes:
                self.fix(f"{what} names missing inode {ino}: dropped")
                continue
            if ino == ROOT_INO:
                self.fix(f"{what} names the root directory: dropped")
                continue
            want = DT_OF_FMT[stat.S_IFMT(inodes[ino][I_MODE])]
            if ftype != want:
                self.fix(f"{what}: file type {ftype} set to {want}")
                ent = (parent, pos, ino, want, namelen, name)
            if namelen != len(name):
                ent = (parent, pos, ino, ent[3], len(name), name)
            kept.append(ent)
        # a directory lives in exactly one directory: the one its parent
        # pointer names if that holds an entry, else the first
        by_dir: dict[int, list] = {}
        for ent in kept:
            if stat.S_ISDIR(inodes[ent[2]][I_MODE]):
                by_dir.setdefault(ent[2], []).append(ent)
        drop = set()
        for d, ents in by_dir.items():
            if len(ents) > 1:
                keep = next((e for e in ents if e[0] == inodes[d][I_PARENT]), ents[0])
                for e in ents:
                    if e is not keep:
                        drop.add(e[:2])
                        self.fix(f"directory {self._where(d)}: extra entry {e[5]!r} in"
                                 f" directory {e[0]} dropped (a directory has one parent)")
        self.dirents = [e for e in kept if e[:2] not in drop]
        self._used_pos: dict[int, set] = {}
        self._by_name: dict[tuple, tuple] = {}
        for e in self.dirents:
            self._used_pos.setdefault(e[0], set()).add(e[1])
            self._by_name.setdefault((e[0], e[5]), e)
        # the key's hash half must be the name's, or lookups cannot find it
        for e in [e for e in self.dirents if e[1] >> 32 != name_hash(e[5])]:
            self._remove_entry(e)
            self._add_entry(e[0], e[5], e[2])
            self.fix(f"{self.paths.get(e[0], f'directory {e[0]}')}: entry {e[5]!r} was filed"
                     " under the wrong hash: moved")
        self._connect()

    def _children(self) -> dict[int, list]:
        ch: dict[int, list] = {}
        for e in self.dirents:
            ch.setdefault(e[0], []).append(e)
        return ch

    def _reachable(self) -> set[int]:
        ch = self._children()
        seen = {ROOT_INO}
        stack = [ROOT_INO]
        while stack:
            d = stack.pop()
            for e in ch.get(d, []):
                if e[2] not in seen:
                    seen.add(e[2])
                    if stat.S_ISDIR(self.inodes[e[2]][I_MODE]):
                        stack.append(e[2])
        return seen

    def _connect(self) -> None:
        """Every live inode reachable from the root; lost ones to /lost+found,
        unlinked ones on the orphan list."""
        inodes = self.inodes
        self.lost_found = None
        for _ in range(len(inodes) + 2):
            reach = self._reachable()
            named = {e[2] for e in self.dirents}
            holders = {e[0] for e in self.dirents}
            lost_dirs = [i for i, r in inodes.items() if i not in reach
                         and stat.S_ISDIR(r[I_MODE]) and i != ROOT_INO
                         and (r[I_NLINK] or i in named or i in holders)]
            if not lost_dirs:
                break
            # directories with no entry first; else one inside a loop
            heads = [i for i in lost_dirs if i not in named]
            if not heads:
                d = lost_dirs[0]
                ent = next(e for e in self.dirents if e[2] == d)
                self._remove_entry(ent)
                self.fix(f"directory inode {d} was in a directory loop: entry {ent[5]!r}"
                         f" in directory {ent[0]} dropped")
                heads = [d]
            for d in heads:
                self._to_lost_found(d)
        reach = self._reachable()
        named = {e[2] for e in self.dirents}
        for ino in sorted(inodes):
            r = inodes[ino]
            if ino in named or ino == ROOT_INO or stat.S_ISDIR(r[I_MODE]) and ino in reach:
                continue
            if stat.S_ISDIR(r[I_MODE]):
                # unreachable directory that is unlinked (nlink 0, no children)
                if r[I_NLINK]:
                    r[I_NLINK] = 0
                continue
            if r[I_NLINK]:
                self._to_lost_found(ino)

    def _remove_entry(self, ent: tuple) -> None:
        self.dirents.remove(ent)
        self._used_pos[ent[0]].discard(ent[1])
        if self._by_name.get((ent[0], ent[5])) == ent:
            del self._by_name[(ent[0], ent[5])]

    def _add_entry(self, parent: int, name: bytes, ino: int) -> None:
        used = self._used_pos.setdefault(parent, set())
        h = name_hash(name) << 32
        seq = 0
        while h | seq in used:
            seq += 1
        pos = h | seq
        used.add(pos)
        ent = (parent, pos, ino, DT_OF_FMT[stat.S_IFMT(self.inodes[ino][I_MODE])], len(name), name)
        self.dirents.append(ent)
        self._by_name[(parent, name)] = ent

    def _lookup(self, parent: int, name: bytes):
        return self._by_name.get((parent, name))

    def _get_lost_found(self) -> int:
        if self.lost_found is not None:
            return self.lost_found
        name = LOST_FOUND
        k = 0
        while True:
            e = self._lookup(ROOT_INO, name)
            if e is None:
                break
            if stat.S_ISDIR(self.inodes[e[2]][I_MODE]):
                self.lost_found = e[2]
                return e[2]
            k += 1
            name = LOST_FOUND + b".%d" % k
        ino = self._new_ino()
        self._make_inode(ino, stat.S_IFDIR | 0o700, parent=ROOT_INO, nlink=2)
        self._add_entry(ROOT_INO, name, ino)
        self.paths[ino] = "/" + name.decode()
        self.fix(f"created /{name.decode()} (inode {ino})")
        self.lost_found = ino
        return ino

    def _to_lost_found(self, ino: int) -> None:
        lf = self._get_lost_found()
        base = str(ino).encode()
        name, k = base, 0
        while self._lookup(lf, name) is not None:
            k += 1
            name = base + b".%d" % k
        self._add_entry(lf, name, ino)
        r = self.inodes[ino]
        if stat.S_ISDIR(r[I_MODE]):
            r[I_PARENT] = lf
        if r[I_NLINK] == 0:
            r[I_NLINK] = 1
        kind = "directory" if stat.S_ISDIR(r[I_MODE]) else "inode"
        self.fix(f"{kind} {ino} was in no directory: moved to"
                 f" {self.paths[lf]}/{name.decode()}")

    # ---- counts ----------------------------------------------------------------
    def _fix_counts(self) -> None:
        inodes = self.inodes
        links: dict[int, int] = {}
        subdirs: dict[int, int] = {}
        parent_of: dict[int, int] = {}
        for parent, _, ino, _, _, _ in self.dirents:
            links[ino] = links.get(ino, 0) + 1
            if stat.S_ISDIR(inodes[ino][I_MODE]):
                subdirs[parent] = subdirs.get(parent, 0) + 1
                parent_of[ino] = parent
        blocks: dict[int, int] = {}
        last: dict[int, int] = {}
        for ino, foff, p, n, _ in self.extents:
            blocks[ino] = blocks.get(ino, 0) + n
            last[ino] = foff + n
        orphans = set()
        for ino in sorted(inodes):
            r = inodes[ino]
            say = self.fix if ino not in self.created else (lambda line: None)
            is_dir = stat.S_ISDIR(r[I_MODE])
            if is_dir:
                live = ino == ROOT_INO or ino in parent_of
                want = 2 + subdirs.get(ino, 0) if live else 0
                if live and ino != ROOT_INO and r[I_PARENT] != parent_of[ino]:
                    say(f"{self._where(ino)}: parent pointer {r[I_PARENT]} set to"
                             f" {parent_of[ino]}")
                    r[I_PARENT] = parent_of[ino]
            else:
                want = links.get(ino, 0)
            if r[I_NLINK] != want:
                say(f"{self._where(ino)}: link count {r[I_NLINK]} set to {want}")
                r[I_NLINK] = want
            if want == 0:
                orphans.add(ino)
            b = blocks.get(ino, 0)
            if r[I_BLOCKS] != b:
                if b < r[I_BLOCKS] and self.salv["bmap"].lost:
                    say(f"{self._where(ino)}: {r[I_BLOCKS] - b} of its {r[I_BLOCKS]} blocks"
                        " were mapped by unreadable extent-map nodes: lost (they read"
                        " as zeros now)")
                else:
                    say(f"{self._where(ino)}: block count {r[I_BLOCKS]} set to {b}")
                r[I_BLOCKS] = b
            if r[I_SIZE] > MAX_FILE_BYTES:
                size = last.get(ino, 0) * BS
                say(f"{self._where(ino)}: impossible size {r[I_SIZE]} set to {size}")
                r[I_SIZE] = size
            if stat.S_ISLNK(r[I_MODE]) and b and r[I_SIZE] == 0:
                r[I_SIZE] = self._symlink_len(ino)
        for ino in sorted(orphans - self.orphans):
            self.fix(f"inode {ino}: link count 0: put on the orphan list")
        for ino in sorted(self.orphans - orphans):
            why = "does not exist" if ino not in inodes else "still has links"
            self.fix(f"orphan list: inode {ino} {why}: removed from the list")
        self.orphans = orphans
        top = max(inodes) if inodes else ROOT_INO
        if self.next_ino <= top:
            self.next_ino = top + 1

    def _symlink_len(self, ino: int) -> int:
        for e in self.extents:
            if e[0] == ino and e[1] == 0:
                try:
                    self.pmem.check_load(e[2])
                except MediaError:
                    return 0
                data = self.pmem.block(e[2]).tobytes()[:SYMLINK_MAX]
                return data.find(b"\0") if b"\0" in data else len(data)
        return 0

    # ==== phase 4: derived trees ==============================================
    def derive(self) -> None:
        total = self.total
        # refcount: ranges with two or more owners, from the extent maps
        refc = []
        if self.extents:
            cnt = self.data
            shared = cnt >= 2
            if shared.any():
                change = np.nonzero(np.diff(np.concatenate(([0], cnt, [0]))))[0]
                for a, b in zip(change[:-1], change[1:]):
                    c = int(cnt[a]) if a < total else 0
                    if c >= 2:
                        refc.append((int(a), int(b - a), c))
        old = self.salv["refcount"]
        if not old.damaged and old.records != refc and self._same_counts(old.records, refc):
            refc = list(old.records)      # the same counts, cut differently: keep
        self.refc = refc
        # every block owned for certain once the new trees exist (nodes aside)
        used = self.fixed_meta.copy()
        used |= self.data > 0
        self.xattr_vals = []
        for rec in self.xattrs:
            if rec[5]:
                n = -(-rec[4] // BS)
                used[rec[5]:rec[5] + n] = True
                self.xattr_vals.append((rec[5], rec[0], rec[1], n, RMAP_ATTR))
        self.used_base = used
        # rmap records that do not depend on where nodes go
        ls, lb = int(self.sb["log_start"]), int(self.sb["log_blocks"])
        base = [(0, OWN_FS, 0, 1, 0), (secondary_bno(total), OWN_FS, 0, 1, 0),
                (ls, OWN_LOG, 0, lb, 0)]
        base += [(p, ino, foff, n, 0) for ino, foff, p, n, _ in self.extents]
        base += self.xattr_vals
        self.rmap_base = base

    def _same_counts(self, a: list, b: list) -> bool:
        def counts(recs):
            d = np.zeros(self.total + 1, dtype=np.int64)
            for s, n, c in recs:
                if s + n > self.total or c < 2:
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

    def final_records(self) -> dict[str, list]:
        return {
            "inode": [tuple(self.inodes[i]) for i in sorted(self.inodes)],
            "dir": sorted(self.dirents, key=lambda e: e[:2]),
            "bmap": list(self.extents),
            "refcount": self.refc,
            "xattr": list(self.xattrs),
            "orphan": [(i,) for i in sorted(self.orphans)],
        }

    def _layout_records(self, nodes: dict[str, list[int]], pool: list[int]):
        """rmap and free-space records given every tree's node blocks and the pool."""
        rm = list(self.rmap_base)
        rm += [(b, OWN_AG, 0, 1, 0) for b in pool]
        used = self.used_base.copy()
        if pool:
            used[np.array(pool, dtype=np.int64)] = True
        for name, blocks in nodes.items():
            owner = own_tree(self.vol.trees[name].tid)
            rm += [(b, owner, 0, 1, 0) for b in blocks]
            if blocks:
                used[np.array(blocks, dtype=np.int64)] = True
        rm.sort(key=lambda r: r[:3])
        free = _runs(~used)
        return rm, free

    # ==== phase 5: layout and write ============================================
    def plan(self) -> None:
        vol = self.vol
        recs = self.final_records()
        old_pool = [int(b) for b in self.sb["pool"][:min(int(self.sb["pool_count"]),
                                                         SB_POOL_MAX)]]
        # the old pool, where it is still usable
        pool, seen = [], set()
        for b in old_pool:
            if 0 < b < self.total and b not in seen and not self.used_base[b] \
                    and not self.meta[b] and not self.pmem.bad.first_bad(b, 1):
                pool.append(b)
                seen.add(b)
        if len(pool) != len(old_pool):
            self.fix(f"reserve pool: {len(old_pool) - len(pool)} unusable block(s) dropped")
        self.rebuild: set[str] = set()
        for name, s in self.salv.items():
            if name in recs and (s.damaged or recs[name] != s.records):
                self.rebuild.add(name)
        kept_nodes = {n: list(s.good) for n, s in self.salv.items() if n not in self.rebuild}
        # would the derived trees be right with every node where it is now?
        in_place = {n: list(s.good) for n, s in self.salv.items()}
        rm, free = self._layout_records(in_place, pool)
        # for the messages: unreadable nodes are still where they were
        seen = {n: sorted(s.seen) for n, s in self.salv.items()}
        rm_seen, free_seen = self._layout_records(seen, pool)
        recs["free"] = free
        if "rmap" in vol.trees:
            recs["rmap"] = rm
        for name in ("free", "rmap"):
            s = self.salv.get(name)
            if s is not None and (s.damaged or recs[name] != s.records):
                self.rebuild.add(name)
        self._explain_derived({"rmap": rm_seen, "free": free_seen,
                               "refcount": recs["refcount"]})
        if self.rebuild:
            self.rebuild.add("free")
            if "rmap" in vol.trees:
                self.rebuild.add("rmap")
            if len(pool) > POOL_HIGH:
                pool = pool[:POOL_TARGET]
            self._place(recs, pool)
        else:
            self.nodes = kept_nodes
            self.pool = pool
            self.recs = recs

    def _explain_derived(self, recs: dict) -> None:
        """One line per derived tree whose records were wrong (not merely
        moved along with rebuilt nodes)."""
        s = self.salv.get("rmap")
        if s is not None and not s.damaged and recs["rmap"] != s.records:
            old, new = set(s.records), set(recs["rmap"])
            self.fix(f"rmap tree: {len(new - old)} record(s) missing, {len(old - new)}"
                     " stray: rebuilt from the extent maps and metadata")
        s = self.salv["free"]
        if not s.damaged and recs["free"] != s.records:
            old = np.zeros(self.total, dtype=bool)
            for a, n in s.records:
                old[a:a + n] = True
            new = np.zeros(self.total, dtype=bool)
            for a, n in recs["free"]:
                new[a:a + n] = True
            leaked, wrong = int((new & ~old).sum()), int((old & ~new).sum())
            self.fix(f"free tree: {leaked} leaked block(s) given back, {wrong} used"
                     " block(s) no longer listed free: rebuilt")
        s = self.salv["refcount"]
        if not s.damaged and recs["refcount"] != s.records:
            self.fix(f"refcount tree: share counts wrong ({len(s.records)} records, should"
                     f" be {len(recs['refcount'])}): rebuilt from the extent maps")

    def _candidates(self, strict: bool) -> list[tuple[int, int]]:
        """Free extents safe to write new nodes into: nothing in the old,
        committed image uses them (strict: nor does the old rmap or
        free-space tree say they are taken)."""
        avoid = self.used_base | self.meta
        for s in self.salv.values():
            if s.seen:
                avoid[np.array(sorted(s.seen), dtype=np.int64)] = True
        old_pool = [int(b) for b in self.sb["pool"][:min(int(self.sb["pool_count"]),
                                                         SB_POOL_MAX)]]
        old_pool = [b for b in old_pool if 0 <= b < self.total]
        if old_pool:
            avoid[np.array(old_pool, dtype=np.int64)] = True
        for b, n in self.pmem.bad.ranges():
            avoid[b:b + n] = True
        if strict:
            rm = self.salv.get("rmap")
            if rm is not None:
                for r in rm.records:
                    if r[0] < self.total:
                        avoid[r[0]:r[0] + r[3]] = True
            fr = self.salv["free"]
            if not fr.lost:
                free = np.zeros(self.total, dtype=bool)
                for s, n in fr.records:
                    free[s:s + n] = True
                avoid |= ~free
        return _runs(~avoid)

    def _place(self, recs: dict, pool: list[int]) -> None:
        """Choose fresh blocks for the nodes of every tree being rebuilt.

        The free-space and rmap trees' sizes depend on where the nodes go
        (every node is one rmap record and no longer free), so blocks are
        taken until they cover what the trees then need; blocks taken in
        excess join the reserve pool, which wants POOL_TARGET blocks anyway.
        """
        vol = self.vol
        sizes = {n: sum(level_sizes(vol.trees[n].spec, len(recs[n])))
                 for n in self.rebuild if n not in ("free", "rmap")}
        kept = {n: list(s.good) for n, s in self.salv.items() if n not in self.rebuild}
        want_extra = max(0, POOL_TARGET - len(pool))
        has_rmap = "rmap" in vol.trees
        for strict in (True, False):
            cands = self._candidates(strict)
            supply = ((s + i) for s, n in cands for i in range(n))
            taken: list[int] = []
            while True:
                # counting: each taken block is owned once, as a node or in the pool
                rm, free = self._layout_records(kept, pool + taken)
                sizes["free"] = sum(level_sizes(vol.trees["free"].spec, len(free)))
                if has_rmap:
                    sizes["rmap"] = sum(level_sizes(vol.trees["rmap"].spec, len(rm)))
                short = sum(sizes.values()) + want_extra - len(taken)
                if short <= 0:
                    break
                more = [b for _, b in zip(range(short), supply)]
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
        self.pool = pool + taken[pos:]
        if len(self.pool) > SB_POOL_MAX:
            raise NoSpace("reserve pool overflow while rebuilding")
        rm, free = self._layout_records(nodes, self.pool)
        recs["free"] = free
        if has_rmap:
            recs["rmap"] = rm
        self.nodes = nodes
        self.recs = recs

    def _write_tree(self, name: str, blocks: list[int]) -> tuple[int, int]:
        """Bulk-load a tree's records into the given blocks: (root, height)."""
        tree = self.vol.trees[name]
        spec = tree.spec
        records = self.recs[name]
        sizes = level_sizes(spec, len(records))
        assert sum(sizes) == len(blocks), (name, sizes, len(blocks))
        if not sizes:
            return 0, 0
        items = np.array(records, dtype=spec.rec_dtype)
        seq = self.vol.journal.seq + 1
        bi = 0
        for level, k in enumerate(sizes):
            dt = spec.rec_dtype if level == 0 else spec.ent_dtype
            ents = np.zeros(k, dtype=spec.ent_dtype)
            bounds = np.linspace(0, len(items), k + 1).astype(np.int64)
            for j in range(k):
                a, b = int(bounds[j]), int(bounds[j + 1])
                sub = items[a:b]
                bno = blocks[bi]
                bi += 1
                blk = self.pmem.block(bno)
                blk[:] = 0
                hdr = blk[:NODE_HDR_SIZE].view(NODE_HDR_DTYPE)
                hdr["magic"] = spec.magic
                hdr["tree_id"] = spec.tree_id
                hdr["level"] = level
                hdr["nrecs"] = b - a
                hdr["blkno"] = bno
                hdr["seq"] = seq
                raw = np.ascontiguousarray(sub).view(np.uint8)
                blk[NODE_HDR_SIZE:NODE_HDR_SIZE + raw.size] = raw
                seal(blk)
                for f in spec.key_fields:
                    ents[j][f] = sub[0][f]
                if spec.overlap:
                    if level == 0:
                        sf, lf = spec.overlap
                        ents[j]["hi"] = int((sub[sf] + sub[lf] - np.uint64(1)).max())
                    else:
                        ents[j]["hi"] = int(sub["hi"].max())
                ents[j]["child"] = bno
                assert dt.itemsize * (b - a) <= BS - NODE_HDR_SIZE
            items = ents
        self.vol.journal.note_data(blocks[0], 1)
        for b in blocks[1:]:
            self.vol.journal.note_data(b, 1)
        return blocks[-1], len(sizes)

    def write(self) -> None:
        vol, sb = self.vol, self.sb
        for name in sorted(self.rebuild):
            root, height = self._write_tree(name, self.nodes[name])
            sb["roots"][vol.trees[name].tid] = root
            sb["heights"][vol.trees[name].tid] = height
            s = self.salv[name]
            new = self.recs[name]
            if s.damaged:
                why = "; ".join(s.why)
                self.fix(f"{name} tree: rebuilt from the {len(s.records)} records still"
                         f" readable ({s.lost} unreadable node(s): {why}); now"
                         f" {len(new)} records")
        for name, tree in vol.trees.items():
            n = len(self.recs[name])
            if int(sb["nrecs"][tree.tid]) != n:
                if name not in self.rebuild:
                    self.fix(f"{name} tree: record count {int(sb['nrecs'][tree.tid])}"
                             f" set to {n}")
                sb["nrecs"][tree.tid] = n
        pool = self.pool
        if list(sb["pool"][:int(sb["pool_count"])]) != pool:
            sb["pool"][:] = 0
            sb["pool"][:len(pool)] = pool
            sb["pool_count"] = len(pool)
        sb["free_blocks"] = sum(n for _, n in self.recs["free"])
        sb["next_ino"] = self.next_ino
        sb["inode_count"] = len(self.inodes)
        sb["state"] = int(sb["state"]) & ~STATE_NEEDS_CHECK
        vol.verified.clear()
        vol.drop_node_caches()
        vol.mark_dirty_sb()
        vol.commit()


def repair_image(path: str) -> tuple[list[str], list[str]]:
    """Check the image; if it has problems, repair it and check again.
    Returns (problems left, one line per fix).  Raises DaxfsError when the
    image cannot be opened at all."""
    from daxfs.engine.volume import Volume
    vol = Volume.open(path)
    try:
        problems = Checker(vol).run()
    finally:
        vol.pmem.close()
    if not problems:
        return [], []
    vol = Volume.open(path)
    try:
        rep = Repair(vol)
        if vol.note:
            rep.fix(f"superblock: {vol.note}; both copies rewritten")
        rep.salvage()
        rep.fix_primary()
        rep.derive()
        rep.plan()
        rep.write()
    except NoSpace as e:
        # nothing was committed: the image is as it was
        return problems + [f"repair: {e}; nothing changed"], []
    finally:
        vol.pmem.close()
    fixed = rep.fixed or ["superblocks rewritten"]
    vol = Volume.open(path)
    try:
        left = Checker(vol).run()
    finally:
        vol.pmem.close()
    return left, fixed
