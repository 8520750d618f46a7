"""The two superblock copies: where they live, how to pick the valid one,
and how a commit writes both.

The primary is block 0, the secondary the last block of the device.  Each
carries a crc32c, the commit generation and the roots of every tree.  Open
takes the valid copy with the higher generation and says when it had to use
the secondary.  The layout of the log is a pure function of the device size
(`layout`), so even with both copies torn the log can be found and replayed.
"""

import logging

import numpy as np

from .errors import Corrupted, NotAnImage
from .format import (BLOCK_SIZE, FEAT_DUP, FORMAT_VERSION, KNOWN_FEATURES, OWN_AG, OWN_FS, OWN_LOG,
                     SB_DTYPE, SB_MAGIC, SB_POOL_MAX)
from .checksum import sealed_ok

log = logging.getLogger(__name__)


def layout(total_blocks: int) -> tuple[int, int]:
    """(log_start, log_blocks) for a device of this many blocks."""
    log_blocks = max(256, min(16384, total_blocks // 32))
    return 1, log_blocks


def secondary_bno(total_blocks: int) -> int:
    return total_blocks - 1


def static_owners(sb, pool=None) -> list[tuple[int, int, int, int, int]]:
    """The rmap records, (bno, owner, offset, len, flags), of the metadata
    the superblock places: both superblock copies, the log (and its twin),
    and the blocks of the reserve pool (or of `pool`, when the caller is
    choosing a new one; with dup metadata a list of pairs, each block's
    record naming its twin as the offset).  The one list of them: mkfs maps them, check and repair expect
    them, poison names them on a filesystem without the rmap."""
    total = int(sb["total_blocks"])
    if pool is None:
        pool = sb["pool"][:min(int(sb["pool_count"]), SB_POOL_MAX)].tolist()
    out = [(0, OWN_FS, 0, 1, 0), (secondary_bno(total), OWN_FS, 0, 1, 0),
           (int(sb["log_start"]), OWN_LOG, 0, int(sb["log_blocks"]), 0)]
    if int(sb["log2_start"]):
        out.append((int(sb["log2_start"]), OWN_LOG, 0, int(sb["log_blocks"]), 0))
    if int(sb["features"]) & FEAT_DUP:          # the pool holds pairs: (block, its twin)
        out += [(int(b), OWN_AG, int(pool[i ^ 1]) if (i ^ 1) < len(pool) else 0, 1, 0)
                for i, b in enumerate(pool)]
    else:
        out += [(int(b), OWN_AG, 0, 1, 0) for b in pool]
    return out


def _check_copy(blk: np.ndarray, bno: int, nblocks: int) -> tuple[np.void | None, str]:
    sb = blk.view(SB_DTYPE)[0]
    if bytes(sb["magic"]) != SB_MAGIC:
        return None, f"block {bno}: no daxfs superblock magic"
    if not sealed_ok(blk):
        return None, f"block {bno}: superblock checksum mismatch"
    if int(sb["version"]) != FORMAT_VERSION:
        return None, (f"block {bno}: unknown format version {int(sb['version'])}"
                      f" (this daxfs reads version {FORMAT_VERSION})")
    if int(sb["block_size"]) != BLOCK_SIZE:
        return None, f"block {bno}: block size {int(sb['block_size'])} is not {BLOCK_SIZE}"
    if int(sb["features"]) & ~KNOWN_FEATURES:
        return None, f"block {bno}: unknown feature flags {int(sb['features']):#x}"
    if int(sb["total_blocks"]) > nblocks:
        return None, (f"block {bno}: superblock says {int(sb['total_blocks'])} blocks"
                      f" but the image holds {nblocks} (truncated image?)")
    return sb, ""


def read_superblock(pmem) -> tuple[np.ndarray, str]:
    """The current superblock as a 1-element array, and a note ("" or why
    the secondary copy was used).  Raises NotAnImage / Corrupted."""
    candidates = []
    problems = []
    for bno in (0, secondary_bno(pmem.nblocks)):
        if pmem.bad.first_bad(bno, 1) is not None:
            problems.append(f"block {bno}: superblock copy is on a bad (poisoned) range")
            continue
        sb, why = _check_copy(pmem.block(bno), bno, pmem.nblocks)
        if sb is None:
            problems.append(why)
        else:
            candidates.append((int(sb["generation"]), bno, sb))
    if not candidates:
        if all("no daxfs superblock magic" in p for p in problems):
            raise NotAnImage(f"{pmem.path}: not a daxfs image (no superblock at block 0"
                             f" or block {secondary_bno(pmem.nblocks)})")
        version = [p for p in problems if "version" in p or "feature" in p or "truncated" in p]
        raise Corrupted(0, "; ".join(version or problems))
    candidates.sort(key=lambda c: (c[0], -c[1]), reverse=True)
    gen, bno, sb = candidates[0]
    note = ""
    if bno != 0:
        note = f"primary superblock unusable ({problems[0]}); using the secondary copy"
        log.warning("%s: %s", pmem.path, note)
    return np.array([sb], dtype=SB_DTYPE), note


def write_superblocks(journal, sb: np.ndarray, total_blocks: int) -> None:
    """Put both copies of the in-core superblock into the transaction."""
    for copy, bno in enumerate((0, secondary_bno(total_blocks))):
        blk = journal.new(bno)
        view = blk.view(SB_DTYPE)
        view[0] = sb[0]
        view[0]["copy"] = copy


def verify_copy(pmem, bno: int) -> str:
    """'' if the superblock copy at bno is valid, else what is wrong (for check)."""
    if pmem.bad.first_bad(bno, 1) is not None:
        return f"block {bno}: superblock copy is poisoned"
    sb, why = _check_copy(pmem.block(bno), bno, pmem.nblocks)
    return why


def require_valid(sb: np.ndarray) -> None:
    if int(sb[0]["total_blocks"]) < 16:
        raise Corrupted(0, "superblock reports a device of fewer than 16 blocks")
