"""Metadata blocks inside the running transaction, the redo log, and the
commit order that makes a group of changes atomic and durable.

Every metadata change goes through `write()`/`new()`, which hand out a shadow
copy of the block kept in memory; the mapping itself is not touched until
commit.  Readers get the shadow if there is one, else a view on the mapping.
File data does not pass through here: it is stored straight into the
mapping (DAX) and only its block ranges are remembered (`note_data`) so that
commit can flush them first.

Commit order (docs/format.md, "Transactions"):
  1. flush the data ranges stored since the last commit;
  2. seal every dirty block (crc32c at bytes 4..8);
  3. write the log: header with the list of block numbers, then the block
     images, one crc32c over all of it; flush the log;     <- commit point
  4. write the images in place (checkpoint).  Their flush waits for the
     next commit's step 1 (one flush with that commit's data) or for close:
     until the log is overwritten, a replay of it restores them.
Open replays a valid log before anything else reads the image; replay is
idempotent, and blocks named in the last log cannot have been reused for
data since (freed blocks stay busy until the freeing commit is durable), so
a valid log is always replayed.
"""

import logging
from operator import itemgetter

import numpy as np

from .checksum import seal, seal_pieces, sealed_ok
from .errors import Corrupted, MediaError, WriteFailed
from .format import (BLOCK_SIZE, LOG_BNOS_FIRST, LOG_BNOS_NEXT, LOG_ENT_DTYPE, LOG_HDR_DTYPE,
                     LOG_HDR_SIZE, LOG_MAGIC)

log = logging.getLogger(__name__)

LOOSE_MAX = 16384            # overwritten ranges remembered before fsync flushes everything


def _store_runs(pm, bnos: list, imgs: list) -> list[tuple[int, int]]:
    """Store block images at ascending block numbers, one store per run
    of consecutive blocks; the runs, as (block, count)."""
    runs = []
    i, n = 0, len(bnos)
    while i < n:
        j = i + 1
        while j < n and bnos[j] == bnos[j - 1] + 1:
            j += 1
        pm.store_blocks(bnos[i], imgs[i:j])
        runs.append((bnos[i], j - i))
        i = j
    return runs


def log_capacity(log_blocks: int) -> int:
    """How many metadata blocks one commit may carry in a log of this size."""
    n = log_blocks - 1
    extra = 0
    while n - extra > LOG_BNOS_FIRST + extra * LOG_BNOS_NEXT:
        extra += 1
        n = log_blocks - 1 - extra
    return max(0, min(n, LOG_BNOS_FIRST + extra * LOG_BNOS_NEXT))


class LogFull(Exception):
    """A transaction grew past what one log write can carry (a bug)."""


class Journal:
    """The running transaction's dirty metadata blocks and the redo log."""

    def __init__(self, pmem, log_start: int, log_blocks: int, seq: int, log2_start: int = 0):
        self.pmem = pmem
        self.log_start = log_start
        self.log2_start = log2_start      # the log's twin (dup), or 0
        self.log_blocks = log_blocks
        self.twins: dict[int, int] = {}   # dirty block -> its twin (dup metadata)
        self.capacity = log_capacity(log_blocks)
        self.seq = seq
        self.dirty: dict[int, np.ndarray] = {}
        self.data_ranges: list[tuple[int, int]] = []
        self.loose_ranges: list[tuple[int, int]] = []
        self.loose_overflow = False
        self.home_ranges: list[tuple[int, int]] = []    # checkpointed, not flushed yet
        self.commits = 0
        self._undo: dict[int, np.ndarray | None] | None = None

    # ---- access -----------------------------------------------------------
    def read(self, bno: int) -> np.ndarray:
        """The current contents of a metadata block (shadow or mapping view)."""
        blk = self.dirty.get(bno)
        if blk is not None:
            return blk
        self._check(bno)
        return self.pmem.block(bno)

    def _check(self, bno: int) -> None:
        try:
            self.pmem.check_load(bno)
        except MediaError:
            raise Corrupted(bno, "metadata block is on a poisoned (bad) range") from None

    def write(self, bno: int, twin: int = 0) -> np.ndarray:
        """A writable shadow of a block, copied from the device on first use.
        `twin`: the block's second copy, written with it at checkpoint
        (callers that have one always pass it: the latest wins)."""
        if twin or bno in self.twins:
            self.twins[bno] = twin
        blk = self.dirty.get(bno)
        if self._undo is not None and bno not in self._undo:
            self._undo[bno] = None if blk is None else blk.copy()
        if blk is None:
            self._check(bno)
            blk = self.pmem.block(bno).copy()
            self.dirty[bno] = blk
        return blk

    def new(self, bno: int, twin: int = 0) -> np.ndarray:
        """A zeroed shadow for a block whose old contents do not matter."""
        if twin or bno in self.twins:
            self.twins[bno] = twin
        if self._undo is not None and bno not in self._undo:
            old = self.dirty.get(bno)
            self._undo[bno] = None if old is None else old.copy()
        blk = np.zeros(BLOCK_SIZE, dtype=np.uint8)
        self.dirty[bno] = blk
        return blk

    def discard(self, bno: int) -> None:
        """Forget a shadow: the block was freed in this transaction.  (Its
        twin stays known: a rollback may bring the shadow back.)"""
        old = self.dirty.pop(bno, None)
        if self._undo is not None and bno not in self._undo:
            self._undo[bno] = old

    # ---- one operation inside the running transaction ----------------------
    def begin_op(self) -> None:
        """Start remembering how to undo the blocks this operation touches."""
        self._undo = {}

    def end_op(self) -> None:
        self._undo = None

    def rollback_op(self) -> None:
        """Put every block the current operation touched back as it was."""
        if self._undo is None:
            return
        for bno, old in self._undo.items():
            if old is None:
                self.dirty.pop(bno, None)
            else:
                self.dirty[bno] = old
        self._undo = None

    def note_data(self, bno: int, n: int) -> None:
        """Remember data blocks stored directly into newly mapped blocks: they
        are flushed before the commit that maps them."""
        self.data_ranges.append((bno, n))

    def note_overwrite(self, bno: int, n: int) -> None:
        """Remember data stored in place into blocks the committed metadata
        already maps: no metadata depends on them, so only a durable commit
        (fsync) flushes them, as ext4's data=ordered leaves overwrites to
        writeback."""
        if self.loose_overflow:
            return
        self.loose_ranges.append((bno, n))
        if len(self.loose_ranges) > LOOSE_MAX:
            self.loose_ranges = []
            self.loose_overflow = True          # the next durable commit flushes all

    @property
    def pending(self) -> int:
        return len(self.dirty)

    def flush_checkpoint(self) -> None:
        """Make the last checkpoint durable (before close: the log would
        restore it, but a clean image needs no replay to be right)."""
        if self.home_ranges:
            try:
                self.pmem.flush(self.home_ranges, alone=self._alone())
            except OSError as e:
                raise WriteFailed(f"{self.pmem.path}: the image could not be written"
                                  f" ({e.strerror or e})") from e
            self.home_ranges = []

    def _flush_data(self, durable: bool, home=()) -> None:
        """Flush the data ranges (and overwrites when durable), with `home`
        ranges in the same flush."""
        if durable and self.loose_overflow:
            self.pmem.flush_all()
            self.loose_overflow = False
            self.loose_ranges = []
            self.data_ranges = []
            return
        ranges = self.data_ranges + list(home)
        if durable and self.loose_ranges:
            ranges = ranges + self.loose_ranges
            self.loose_ranges = []
        if ranges:
            self.pmem.flush(ranges, alone=self._alone())
        self.data_ranges = []

    def _alone(self) -> bool:
        """No stores wait to be written but the ones being flushed: data
        overwritten in place is left to writeback only by background
        commits, and only then may a flush not sweep the whole image."""
        return not (self.loose_ranges or self.loose_overflow)

    # ---- commit -------------------------------------------------------------
    def commit(self, durable: bool = True) -> None:
        """Make every change since the last commit durable, atomically
        (`durable=False`: a background group commit, which leaves data
        overwritten in place to the kernel's writeback).  WriteFailed if
        the host could not write the image: nothing after that may be
        trusted to reach it (the caller shuts down)."""
        try:
            self._commit(durable)
        except OSError as e:
            raise WriteFailed(f"{self.pmem.path}: the image could not be written"
                              f" ({e.strerror or e}): commit {self.seq + 1} failed") from e

    def _commit(self, durable: bool) -> None:
        if not self.dirty:
            self._flush_data(durable)
            return
        self._undo = None
        if len(self.dirty) > self.capacity:
            raise LogFull(f"{len(self.dirty)} dirty blocks, log holds {self.capacity}")
        pm = self.pmem
        # 1. data before the metadata that points at it, and the last
        #    checkpoint before its log is overwritten
        self._flush_data(durable, self.home_ranges)
        self.home_ranges = []
        # 2. seal
        bnos = sorted(self.dirty)
        imgs = [self.dirty[b] for b in bnos]
        for img in imgs:
            seal(img)
        twins = [self.twins.get(b, 0) for b in bnos]
        # 3. the log (and its twin, written alike): its header blocks made
        #    here, the images stored after them as they are
        seq = self.seq + 1
        n = len(bnos)
        hdr_blocks = 1
        if n > LOG_BNOS_FIRST:
            hdr_blocks += -(-(n - LOG_BNOS_FIRST) // LOG_BNOS_NEXT)
        hdr_area = np.zeros(hdr_blocks * BLOCK_SIZE, dtype=np.uint8)
        hdr = hdr_area[:LOG_HDR_SIZE].view(LOG_HDR_DTYPE)[0]
        hdr["magic"] = LOG_MAGIC
        hdr["seq"] = seq
        hdr["nblocks"] = n
        hdr["hdr_blocks"] = hdr_blocks
        ents = hdr_area[LOG_HDR_SIZE:LOG_HDR_SIZE + LOG_ENT_DTYPE.itemsize * n].view(LOG_ENT_DTYPE)
        ents["bno"] = bnos
        ents["twin"] = twins
        seal_pieces(hdr_area, imgs)             # one crc32c over the whole log
        area = [hdr_area] + imgs
        pm.store_blocks(self.log_start, area)
        logs = [(self.log_start, hdr_blocks + n)]
        if self.log2_start:
            pm.store_blocks(self.log2_start, area)
            logs.append((self.log2_start, hdr_blocks + n))
        pm.flush(logs, alone=self._alone())
        # 4. checkpoint (each block and its twin), run by run of blocks
        home = _store_runs(pm, bnos, imgs)
        if any(twins):
            pairs = sorted(((t, img) for t, img in zip(twins, imgs) if t), key=itemgetter(0))
            home += _store_runs(pm, [t for t, _ in pairs], [img for _, img in pairs])
        self.home_ranges = home
        self.seq = seq
        self.dirty = {}
        self.twins = {}
        self.commits += 1


def _valid_log(pmem, log_start: int, log_blocks: int):
    """(seq, header blocks, entries, area) of the log at log_start if it is
    whole and valid, else None."""
    if pmem.bad and pmem.bad.first_bad(log_start, log_blocks) is not None:
        log.error("the log at block %d is on a poisoned range", log_start)
        return None
    first = pmem.block(log_start)
    hdr = first[:LOG_HDR_SIZE].view(LOG_HDR_DTYPE)[0]
    if bytes(hdr["magic"]) != LOG_MAGIC:
        return None
    n = int(hdr["nblocks"])
    hdr_blocks = int(hdr["hdr_blocks"])
    if n == 0 or hdr_blocks < 1 or hdr_blocks + n > log_blocks or \
            LOG_HDR_SIZE + LOG_ENT_DTYPE.itemsize * n > hdr_blocks * BLOCK_SIZE:
        return None
    area = pmem.blocks(log_start, hdr_blocks + n)
    if not sealed_ok(area):
        return None
    ents = area[LOG_HDR_SIZE:LOG_HDR_SIZE + LOG_ENT_DTYPE.itemsize * n].view(LOG_ENT_DTYPE).copy()
    return int(hdr["seq"]), hdr_blocks, ents, area


def replay(pmem, log_start: int, log_blocks: int, log2_start: int = 0) -> int | None:
    """Apply the last committed log to the device if it is valid: the copy
    at log_start, or its twin at log2_start when that one is valid and
    newer (a poisoned or torn copy is mended by the other).

    Returns the log's sequence number, or None if there was no valid log.
    """
    found = [v for v in (_valid_log(pmem, log_start, log_blocks),
                         _valid_log(pmem, log2_start, log_blocks) if log2_start else None) if v]
    if not found:
        return None
    seq, hdr_blocks, ents, area = max(found, key=lambda v: v[0])
    n = len(ents)
    if n and (int(ents["bno"].max()) >= pmem.nblocks or int(ents["twin"].max()) >= pmem.nblocks):
        del area, found        # no view of the mapping may outlive the failed open
        raise Corrupted(log_start, "log names a block beyond the end of the device")
    body = area[hdr_blocks * BLOCK_SIZE:].reshape(n, BLOCK_SIZE)
    homes = []
    for i in range(n):
        b, t = int(ents["bno"][i]), int(ents["twin"][i])
        pmem.restore_block(b, body[i])
        homes.append((b, 1))
        if t:
            pmem.restore_block(t, body[i])
            homes.append((t, 1))
    if pmem.readonly:
        # in memory only: the checkpoint of the last commit may not have
        # reached the file (it is flushed with the next commit)
        return seq
    pmem.flush(homes)
    log.info("replayed log sequence %d (%d blocks)", seq, n)
    return seq
