"""An open filesystem image below the POSIX layer: the device, the journal,
the in-core superblock, the eight trees, the allocator, rmap and refcount,
bound together; plus making a new image (mkfs) and committing.

Open order: map the device, find a superblock (or compute the layout from
the device size), replay the log, then read the superblock for real.
Commit order: settle the allocator, seal both superblock copies into the
transaction, then journal.commit() (see journal.py).
"""

import logging
import os
import time
import uuid

import numpy as np

from . import files
from .alloc import Allocator, POOL_TARGET
from .btree import BTree
from .errors import Corrupted, Exists, InvalidArgument, UnsafeFile
from .format import (BLOCK_SIZE, FEAT_DUP, FEAT_REFLINK, FEAT_RMAP, FIRST_INO, FORMAT_VERSION,
                     MIN_IMAGE_BYTES, NODE_HDR_DTYPE, NODE_HDR_SIZE, SB_DTYPE, SB_MAGIC,
                     TREE_MAGICS)
from .checksum import sealed_ok
from .journal import Journal, replay
from .pmem import Pmem, lock_for_create
from .refcount import Refcount
from .rmap import Rmap
from .superblock import layout, read_superblock, secondary_bno, static_owners, write_superblocks
from .trees import SPECS

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 1 << 50
HEALED_KEPT = 1000


def _back_fixed(pmem: Pmem, log_start: int, log_blocks: int, log2_start: int = 0) -> None:
    """Host space for the superblocks and the log(s) (Pmem.back)."""
    pmem.back(0, log_start + log_blocks)
    if log2_start:
        pmem.back(log2_start, log_blocks)
    pmem.back(secondary_bno(pmem.nblocks))


def _open_target(path: str, force: bool) -> int:
    """The image file mkfs writes, opened without following a symlink."""
    try:
        fd = files.open_regular(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600, what="image")
    except FileExistsError:
        fd = files.open_regular(path, os.O_RDWR, what="image")
    if os.fstat(fd).st_nlink > 1:
        os.close(fd)
        raise UnsafeFile(f"{path}: the file has other names (hard links); refusing to"
                         " overwrite it")
    return fd


def _holds_superblock(fd: int) -> bool:
    return os.pread(fd, len(SB_MAGIC), 0) == SB_MAGIC


class Volume:
    def __init__(self, pmem: Pmem, sb_arr: np.ndarray, note: str = ""):
        self.pmem = pmem
        self.sb_arr = sb_arr
        self.sb = sb_arr[0]
        self.note = note
        self.total_blocks = int(self.sb["total_blocks"])
        self.has_rmap = bool(int(self.sb["features"]) & FEAT_RMAP)
        self.dup = bool(int(self.sb["features"]) & FEAT_DUP)
        self.journal = Journal(pmem, int(self.sb["log_start"]), int(self.sb["log_blocks"]),
                               int(self.sb["generation"]), int(self.sb["log2_start"]))
        # metadata blocks mended from their twins: (block, twin, what), the
        # latest HEALED_KEPT (poison.listing shows them)
        self.healed: list[tuple[int, int, str]] = []
        self.verified: set[int] = set()
        self.participants = []
        self.trees = {}
        for name, spec in SPECS.items():
            if name == "rmap" and not self.has_rmap:
                continue
            self.trees[name] = BTree(spec, self.journal, self.sb, None, self.verified)
            self.trees[name].on_heal = lambda b, t, tree: self._healed(b, t, f"{tree} btree node")
        pmem.add_view_holder(self.drop_node_caches)
        self.rmap = Rmap(self.trees.get("rmap"), settle=lambda: self.alloc.settle())
        self.add_participant(self.rmap)
        self.refcount = Refcount(self.trees["refcount"])
        self.alloc = Allocator(self)
        for t in self.trees.values():
            t.alloc = self.alloc

    def heal_block(self, bad: int, good: int, what: str, node: bool = True) -> bool:
        """Mend metadata block `bad` from its twin `good` (dup): if `good`
        is readable (and, for a btree node, a sealed node naming either
        block as itself), store it whole over `bad` (a recovery write: it
        clears the poison) and make it durable.  True if mended."""
        pm = self.pmem
        if not (0 < good < pm.nblocks) or pm.bad.first_bad(good, 1) is not None:
            return False
        copy = pm.block(good)
        if node:
            hdr = copy[:NODE_HDR_SIZE].view(NODE_HDR_DTYPE)[0]
            if bytes(hdr["magic"]) not in TREE_MAGICS.values() or not sealed_ok(copy) \
                    or int(hdr["blkno"]) not in (bad, good):
                return False
        pm.block(bad)[:] = copy
        pm.flush([(bad, 1)])
        pm.bad.clear(bad, 1)
        self.verified.discard(bad)
        for t in self.trees.values():
            t._forget_node(bad)
        self._healed(bad, good, what)
        return True

    def twin_problem(self, bno: int, twin: int) -> str | None:
        """What is wrong with node `bno`'s second copy at `twin` as its
        parent and header name it, or None: a dup filesystem gives every
        node a twin elsewhere holding the same bytes (a commit writes
        both), a single one none.  A twin on a bad range, or whose bytes
        differ while the node is in the running transaction, is not judged
        here (the caller heals or skips those)."""
        if not self.dup:
            return f"node {bno} has a twin ({twin}) on a single image" if twin else None
        if not twin or twin == bno or twin >= self.total_blocks:
            return f"node {bno} has no usable twin ({twin})"
        pm = self.pmem
        if bno not in self.journal.dirty and pm.bad.first_bad(bno, 1) is None and \
                pm.bad.first_bad(twin, 1) is None and \
                not np.array_equal(pm.block(bno), pm.block(twin)):
            return f"node {bno} and its twin at block {twin} differ"
        return None

    def _healed(self, bno: int, twin: int, tree: str) -> None:
        log.warning("%s: %s at block %d healed from its copy at block %d",
                    self.pmem.path, tree, bno, twin)
        if len(self.healed) >= HEALED_KEPT:
            del self.healed[:HEALED_KEPT // 2]
        self.healed.append((bno, twin, tree))

    def drop_node_caches(self) -> None:
        """Forget every tree's decoded nodes (btree.py)."""
        for t in self.trees.values():
            t.drop_cache()

    # ---- open / create ----------------------------------------------------
    @classmethod
    def open(cls, path: str, *, readonly: bool = False, private: bool = False) -> "Volume":
        pmem = Pmem(path, readonly=readonly, private=private)
        try:
            log_start, log_blocks = layout(pmem.nblocks)
            log2_start = 0
            try:
                sb_arr, _ = read_superblock(pmem)
                log_start = int(sb_arr[0]["log_start"])
                log_blocks = int(sb_arr[0]["log_blocks"])
                log2_start = int(sb_arr[0]["log2_start"])
            except Corrupted:
                pass  # both copies bad: the log (found by layout) may mend them
            if log2_start + log_blocks > pmem.nblocks - 1:
                log2_start = 0
            _back_fixed(pmem, log_start, log_blocks, log2_start)
            replay(pmem, log_start, log_blocks, log2_start)
            sb_arr, note = read_superblock(pmem)
            vol = cls(pmem, sb_arr, note)
            for b in vol.alloc.pool_blocks():
                pmem.back(b)
            if note and not readonly:
                vol.mark_dirty_sb()
            return vol
        except BaseException:
            pmem.close()
            raise

    @classmethod
    def create(cls, path: str, size: int, *, rmap: bool = True, private: bool = False,
               force: bool = False, dup: bool = True) -> "Volume":
        """Make a new filesystem in the file at `path` (created if missing).
        An existing non-empty file is overwritten only with `force`; the
        target is never followed as a symlink, must be a regular file with
        no other names (a hard link to another file is refused), and is
        opened once: what is checked is what is written."""
        if size < MIN_IMAGE_BYTES:
            raise InvalidArgument(f"size {size} is below the minimum of {MIN_IMAGE_BYTES} bytes (16 MiB)")
        if size > MAX_IMAGE_BYTES:
            raise InvalidArgument(f"size {size} is above the maximum of {MAX_IMAGE_BYTES} bytes")
        size -= size % BLOCK_SIZE
        fd = _open_target(path, force)
        try:
            lock_for_create(fd, path)        # never truncate an image in use
            st = os.fstat(fd)
            if st.st_size and not force:
                what = "a daxfs image" if _holds_superblock(fd) else "data that is not a daxfs image"
                raise Exists(f"{path} already holds {what}; use --force to overwrite it")
            # a size the host cannot hold (EFBIG) fails here, before an
            # existing file has lost anything
            os.ftruncate(fd, max(size, st.st_size))
            # also when overwriting a file: the image holds every file's
            # bytes, readable by anyone who may read the image
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, 0)
            os.ftruncate(fd, size)
            pmem = Pmem(path, private=private, fd=fd)
        except BaseException:
            os.close(fd)
            raise
        try:
            total = pmem.nblocks
            log_start, log_blocks = layout(total)
            sb_arr = np.zeros(1, dtype=SB_DTYPE)
            sb = sb_arr[0]
            sb["magic"] = SB_MAGIC
            sb["version"] = FORMAT_VERSION
            sb["block_size"] = BLOCK_SIZE
            sb["features"] = ((FEAT_RMAP | FEAT_REFLINK) if rmap else 0) | (FEAT_DUP if dup else 0)
            sb["uuid"] = uuid.uuid4().bytes
            sb["total_blocks"] = total
            sb["log_start"] = log_start
            sb["log_blocks"] = log_blocks
            sb["next_ino"] = FIRST_INO
            sb["created_ns"] = time.time_ns()
            # dup: the log's twin and the pool's twins at the end of the
            # device, as far from the originals as the device allows
            log2_start = secondary_bno(total) - log_blocks if dup else 0
            sb["log2_start"] = log2_start
            _back_fixed(pmem, log_start, log_blocks, log2_start)
            pmem.blocks(log_start, 1)[:] = 0
            first = log_start + log_blocks
            end = log2_start or secondary_bno(total)
            half = POOL_TARGET // 2
            if dup:
                firsts = list(range(first, first + half))
                twins = list(range(end - half, end))
                pool = [b for pair in zip(firsts, twins) for b in pair]
                data_start, data_end = first + half, end - half
            else:
                pool = list(range(first, first + POOL_TARGET))
                data_start, data_end = first + POOL_TARGET, end
            for b in pool:
                pmem.back(b)
            sb["pool"][:len(pool)] = pool
            sb["pool_count"] = len(pool)
            vol = cls(pmem, sb_arr)
            data_len = data_end - data_start
            vol.trees["free"].insert((data_start, data_len))
            sb["free_blocks"] = data_len
            # (the pool as made: its last block is the free-space tree's
            # root now, which has the pool's owner)
            for bno, owner, offset, n, _ in static_owners(sb, pool):
                vol.rmap.map_meta(bno, owner, n, offset)
            vol.alloc.settle()
            return vol
        except BaseException:
            pmem.close()
            raise

    # ---- one operation: all or nothing inside the running transaction ------
    def add_participant(self, p) -> None:
        """Something that keeps changes in memory until commit (inodes.py's
        dirty inodes): it takes part in every operation (op_begin, op_end,
        op_rollback) and writes its changes into the trees at the start of
        every commit (flush), so that they are in the same transaction as
        the tree changes made with them."""
        self.participants.append(p)

    def begin_op(self) -> None:
        self.journal.begin_op()
        self._sb_saved = self.sb_arr.tobytes()   # (a structured copy goes field by field)
        self._alloc_saved = self.alloc.save_state()
        for p in self.participants:
            p.op_begin()

    def end_op(self) -> None:
        self.journal.end_op()
        self._sb_saved = None
        for p in self.participants:
            p.op_end()

    def rollback_op(self) -> None:
        self.journal.rollback_op()
        if getattr(self, "_sb_saved", None) is not None:
            self.sb_arr.view(np.uint8)[:] = np.frombuffer(self._sb_saved, dtype=np.uint8)
            self.alloc.restore_state(self._alloc_saved)
        self._sb_saved = None
        for p in self.participants:
            p.op_rollback()

    # ---- commit -------------------------------------------------------------
    def mark_dirty_sb(self) -> None:
        self._sb_dirty = True

    def commit(self, durable: bool = True) -> None:
        """Make every change so far durable and atomic (a group commit;
        `durable=False` leaves data overwritten in place to writeback)."""
        j = self.journal
        self._flush_participants()
        if not j.dirty and not getattr(self, "_sb_dirty", False):
            j.commit(durable)
            return
        self.sb["generation"] = j.seq + 1
        write_superblocks(j, self.sb_arr, self.total_blocks)
        shadows = j.dirty
        j.commit(durable)
        for t in self.trees.values():
            t.committed(shadows)
        self.alloc.clear_busy()
        self._sb_dirty = False

    def _flush_participants(self) -> None:
        """Delayed changes into the trees, and the allocator settled, until
        neither has anything left (a flush may split nodes, whose new
        owners are delayed rmap changes again)."""
        for _ in range(64):
            for p in self.participants:
                p.flush()
            self.alloc.settle()
            if not any(p.pending() for p in self.participants):
                return
        raise Corrupted(0, "delayed metadata changes do not settle")

    def needs_commit(self) -> bool:
        """Would the delayed changes and dirty blocks fill more than half
        the log?"""
        pending = self.journal.pending
        for p in self.participants:
            pending += p.pending()
        return pending > self.journal.capacity // 2

    def close(self) -> None:
        if not self.pmem.readonly:
            self.commit()
            self.journal.flush_checkpoint()
        self.drop_node_caches()
        self.trees = {}
        self.journal = None
        self.pmem.close()
