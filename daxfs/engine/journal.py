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

import crc32c
import numpy as np

from .errors import Corrupted, MediaError
from .format import (BLOCK_SIZE, LOG_BNOS_FIRST, LOG_BNOS_NEXT, LOG_HDR_DTYPE,
                     LOG_HDR_SIZE, LOG_MAGIC)

log = logging.getLogger(__name__)

_ZERO4 = bytes(4)
LOOSE_MAX = 16384            # overwritten ranges remembered before fsync flushes everything


def seal(block: np.ndarray) -> None:
    """Store the crc32c of a metadata block at bytes 4..8."""
    block[4:8] = 0
    c = crc32c.crc32c(block)
    block[4:8] = np.frombuffer(c.to_bytes(4, "little"), dtype=np.uint8)


def sealed_ok(block: np.ndarray) -> bool:
    """True if the block's stored crc32c matches its contents."""
    stored = int.from_bytes(bytes(block[4:8]), "little")
    c = crc32c.crc32c(block[:4])
    c = crc32c.crc32c(_ZERO4, c)
    c = crc32c.crc32c(block[8:], c)
    return c == stored


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

    def __init__(self, pmem, log_start: int, log_blocks: int, seq: int):
        self.pmem = pmem
        self.log_start = log_start
        self.log_blocks = log_blocks
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

    def write(self, bno: int) -> np.ndarray:
        """A writable shadow of a block, copied from the device on first use."""
        blk = self.dirty.get(bno)
        if self._undo is not None and bno not in self._undo:
            self._undo[bno] = None if blk is None else blk.copy()
        if blk is None:
            self._check(bno)
            blk = self.pmem.block(bno).copy()
            self.dirty[bno] = blk
        return blk

    def new(self, bno: int) -> np.ndarray:
        """A zeroed shadow for a block whose old contents do not matter."""
        if self._undo is not None and bno not in self._undo:
            old = self.dirty.get(bno)
            self._undo[bno] = None if old is None else old.copy()
        blk = np.zeros(BLOCK_SIZE, dtype=np.uint8)
        self.dirty[bno] = blk
        return blk

    def discard(self, bno: int) -> None:
        """Forget a shadow: the block was freed in this transaction."""
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
            self.pmem.flush(self.home_ranges, alone=self._alone())
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
        overwritten in place to the kernel's writeback)."""
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
        for b in bnos:
            seal(self.dirty[b])
        # 3. the log
        seq = self.seq + 1
        n = len(bnos)
        hdr_blocks = 1
        if n > LOG_BNOS_FIRST:
            hdr_blocks += -(-(n - LOG_BNOS_FIRST) // LOG_BNOS_NEXT)
        area = pm.blocks(self.log_start, hdr_blocks + n)
        hdr_area = area[:hdr_blocks * BLOCK_SIZE]
        hdr_area[:] = 0
        hdr = hdr_area[:LOG_HDR_SIZE].view(LOG_HDR_DTYPE)[0]
        hdr["magic"] = LOG_MAGIC
        hdr["seq"] = seq
        hdr["nblocks"] = n
        hdr["hdr_blocks"] = hdr_blocks
        hdr_area[LOG_HDR_SIZE:LOG_HDR_SIZE + 8 * n].view("<u8")[:] = bnos
        body = area[hdr_blocks * BLOCK_SIZE:].reshape(n, BLOCK_SIZE)
        for i, b in enumerate(bnos):
            body[i] = self.dirty[b]
        c = crc32c.crc32c(area)
        area[4:8] = np.frombuffer(c.to_bytes(4, "little"), dtype=np.uint8)
        pm.flush([(self.log_start, hdr_blocks + n)], alone=self._alone())
        # 4. checkpoint
        for b in bnos:
            pm.block(b)[:] = self.dirty[b]
        self.home_ranges = [(b, 1) for b in bnos]
        self.seq = seq
        self.dirty = {}
        self.commits += 1


def replay(pmem, log_start: int, log_blocks: int) -> int | None:
    """Apply the last committed log to the device if it is valid.

    Returns the log's sequence number, or None if there was no valid log.
    """
    if pmem.bad and pmem.bad.first_bad(log_start, log_blocks) is not None:
        log.error("the log is on a poisoned range: not replayed")
        return None
    first = pmem.block(log_start)
    hdr = first[:LOG_HDR_SIZE].view(LOG_HDR_DTYPE)[0]
    if bytes(hdr["magic"]) != LOG_MAGIC:
        return None
    n = int(hdr["nblocks"])
    hdr_blocks = int(hdr["hdr_blocks"])
    if n == 0 or hdr_blocks < 1 or hdr_blocks + n > log_blocks:
        return None
    area = pmem.blocks(log_start, hdr_blocks + n)
    stored = int.from_bytes(bytes(area[4:8]), "little")
    c = crc32c.crc32c(area[:4])
    c = crc32c.crc32c(_ZERO4, c)
    c = crc32c.crc32c(area[8:], c)
    if c != stored:
        return None
    bnos = area[LOG_HDR_SIZE:LOG_HDR_SIZE + 8 * n].view("<u8").copy()
    if bnos.size and int(bnos.max()) >= pmem.nblocks:
        del first, hdr, area    # no view of the mapping may outlive the failed open
        raise Corrupted(log_start, "log names a block beyond the end of the device")
    body = area[hdr_blocks * BLOCK_SIZE:].reshape(n, BLOCK_SIZE)
    for i, b in enumerate(bnos):
        pmem.restore_block(int(b), body[i])
    if pmem.readonly:
        # in memory only: the checkpoint of the last commit may not have
        # reached the file (it is flushed with the next commit)
        return int(hdr["seq"])
    pmem.flush([(int(b), 1) for b in bnos])
    log.info("replayed log sequence %d (%d blocks)", int(hdr["seq"]), n)
    return int(hdr["seq"])
