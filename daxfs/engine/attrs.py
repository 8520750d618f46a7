"""In-core values the filesystem API hands out: file attributes, statfs
figures, readdir entries, FIEMAP extents and dedupe results.

Plain frozen dataclasses of Python ints and bytes (Attr, made for every
lookup and getattr, and DirEntry, made for every name readdir lists, are
NamedTuples: as immutable, and made several times faster); the on-disk
records they come from are described in format.py.
"""

from dataclasses import dataclass
from typing import NamedTuple

BLOCK_SIZE = 4096


class Attr(NamedTuple):
    ino: int
    mode: int          # file type and permission bits, as st_mode
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blocks: int        # allocated 4 KiB blocks owned by the file
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    btime_ns: int
    generation: int = 0
    damaged: bool = False  # a stand-in for an inode whose record is damaged (readdir)

    @classmethod
    def stand_in(cls, ino: int, file_type: int) -> "Attr":
        """What readdir lists for an entry whose inode is damaged: the name
        stays visible (ls works for everyone); opening or stat'ing it
        fails with EUCLEAN."""
        return cls(ino, file_type, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, True)

    @property
    def st_blocks(self) -> int:
        """Allocated space in 512-byte units, as stat(2) reports it."""
        return self.blocks * (BLOCK_SIZE // 512)


@dataclass(frozen=True)
class StatFs:
    block_size: int
    total_blocks: int
    free_blocks: int       # free to anyone
    avail_blocks: int      # free to unprivileged writers (excludes the reserve)
    total_inodes: int
    free_inodes: int
    name_max: int = 255


class DirEntry(NamedTuple):
    name: bytes
    attr: Attr
    next_pos: int          # readdir cookie to resume after this entry


@dataclass(frozen=True)
class FiemapExtent:
    logical: int           # byte offset in the file
    physical: int          # byte offset on the device
    length: int            # bytes
    flags: int             # FIEMAP_EXTENT_* bits


# FIEMAP flag bits, as in linux/fiemap.h
FIEMAP_EXTENT_LAST = 0x00000001
FIEMAP_EXTENT_UNWRITTEN = 0x00000800
FIEMAP_EXTENT_SHARED = 0x00002000


@dataclass(frozen=True)
class DedupeResult:
    status: int            # 0 (FILE_DEDUPE_RANGE_SAME), 1 (DIFFERS) or -errno
    bytes_deduped: int


FILE_DEDUPE_RANGE_SAME = 0
FILE_DEDUPE_RANGE_DIFFERS = 1
