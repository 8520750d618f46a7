"""Byte ranges that callers hand the engine, checked in one place.

Every operation that takes an offset and a length (read, write, truncate,
fallocate, copy_file_range, clone, dedupe, FIEMAP, lseek, poison requests)
first resolves what the caller meant (a zero length meaning "to the end of
the source", a count clipped to EOF or to the largest file), and then
passes the resolved range through the functions here before any of its
numbers is used in arithmetic on block numbers or sizes.  Nothing past
`MAX_BYTES` (the kernel's s_maxbytes for daxfs) is ever stored as a size
or mapped as a block, so every value the engine hands out fits the signed
64-bit fields of stat(2) and FUSE.

The refusal of each check is the kernel's errno for it: a negative or
wrapping range is EINVAL (InvalidArgument), a range that would grow a file
past MAX_BYTES is EFBIG (FileTooBig).
"""

from .errors import FileTooBig, InvalidArgument
from .format import BLOCK_SIZE, MAX_FILE_BYTES

MAX_BYTES = MAX_FILE_BYTES            # 2**63 - 1
MAX_BLOCKS = MAX_BYTES // BLOCK_SIZE + 1


def offset(off: int, what: str = "offset") -> int:
    """A file offset: 0 <= off <= MAX_BYTES, else EINVAL."""
    if not 0 <= off <= MAX_BYTES:
        raise InvalidArgument(f"{what} {off} is not a valid file offset")
    return off


def length(n: int, what: str = "length") -> int:
    """A byte count: 0 <= n <= MAX_BYTES, else EINVAL."""
    if not 0 <= n <= MAX_BYTES:
        raise InvalidArgument(f"{what} {n} is not a valid length")
    return n


def span(off: int, n: int, what: str = "range") -> int:
    """A range [off, off+n) that must lie inside a file's largest extent:
    EINVAL for a negative or wrapping range (the kernel's
    remap_verify_area / rw_verify_area); returns its end."""
    offset(off, f"{what} offset")
    length(n, f"{what} length")
    if off + n > MAX_BYTES:
        raise InvalidArgument(f"{what} {off}+{n} wraps past the largest file offset")
    return off + n


def write_limit(pos: int, n: int, what: str = "write") -> int:
    """How many of `n` bytes may be written at `pos` (the kernel's
    generic_write_check_limits): EFBIG if pos is at or past the largest
    file size, else n clipped so that pos + n <= MAX_BYTES."""
    offset(pos, f"{what} offset")
    length(n, f"{what} length")
    if pos >= MAX_BYTES and n:
        raise FileTooBig(f"{what} at {pos} is beyond the maximum file size")
    return min(n, MAX_BYTES - pos)


def new_size(size: int, what: str = "size") -> int:
    """A size a file may be given: EINVAL if negative, EFBIG past MAX_BYTES."""
    if size < 0:
        raise InvalidArgument(f"{what} {size} is negative")
    if size > MAX_BYTES:
        raise FileTooBig(f"{what} {size} is beyond the maximum file size")
    return size


def allocation(off: int, n: int, what: str = "fallocate") -> int:
    """The range [off, off+n) of a fallocate: EINVAL if off < 0 or n <= 0
    (the first check of the kernel's vfs_fallocate); returns its end, which
    the caller passes through `new_size` (EFBIG past MAX_BYTES) after its
    other checks, in vfs_fallocate's order."""
    if off < 0 or n <= 0:
        raise InvalidArgument(f"{what} of {n} bytes at {off}: the offset must be >= 0 and"
                              " the length > 0")
    return off + n
