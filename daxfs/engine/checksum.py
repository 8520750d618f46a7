"""The checksum of a metadata block: a crc32c of the whole block, stored
at bytes 4..8 (after the 4-byte magic) and counted as zero while it is
computed, as XFS v5 does.  Every node, superblock and log write is
sealed; every read is checked (docs/format.md)."""

import struct

import crc32c
import numpy as np

_ZERO4 = bytes(4)
_CRC = struct.Struct("<I")


def seal(block: np.ndarray) -> None:
    """Store the crc32c of a metadata block at bytes 4..8."""
    seal_pieces(block, ())


def seal_pieces(head: np.ndarray, rest) -> None:
    """Seal what is written as several buffers (the log: its header blocks,
    then the block images): one crc32c over `head` and every piece of
    `rest` in order, stored in head's bytes 4..8."""
    _CRC.pack_into(head, 4, 0)
    c = crc32c.crc32c(head)
    for piece in rest:
        c = crc32c.crc32c(piece, c)
    _CRC.pack_into(head, 4, c)


def sealed_ok(block: np.ndarray) -> bool:
    """True if the block's stored crc32c matches its contents."""
    stored = int.from_bytes(bytes(block[4:8]), "little")
    c = crc32c.crc32c(block[:4])
    c = crc32c.crc32c(_ZERO4, c)
    c = crc32c.crc32c(block[8:], c)
    return c == stored
