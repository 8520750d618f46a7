"""Python client of the daxfs control protocol (see daxfs/control/protocol.py): clone,
dedupe and FIEMAP on open file descriptors, as the kernel's FICLONERANGE,
FIDEDUPERANGE and FS_IOC_FIEMAP would do them.

On a daxfs mount the requests go to the daemon as extended attributes of the
destination; on any other file system the real ioctl is issued, so these
functions (and the `daxfs reflink` / `daxfs dedupe` commands built on them)
work on XFS and btrfs too.  Errors are raised as OSError carrying the errno
the kernel would give; dedupe reports per-destination errors in the result's
status as -errno, like FIDEDUPERANGE.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct

from . import protocol as control
from daxfs.engine.attrs import FIEMAP_EXTENT_LAST, DedupeResult, FiemapExtent
from daxfs.engine.errors import InvalidArgument

__all__ = ["clone", "dedupe", "fiemap", "is_daxfs",
           "FICLONE", "FICLONERANGE", "FIDEDUPERANGE", "FS_IOC_FIEMAP"]

# ioctl numbers from linux/fs.h (x86_64, aarch64 and every asm-generic arch)
FICLONE = 0x40049409          # _IOW(0x94, 9, int)
FICLONERANGE = 0x4020940D     # _IOW(0x94, 13, struct file_clone_range)
FIDEDUPERANGE = 0xC0189436    # _IOWR(0x94, 54, struct file_dedupe_range)
FS_IOC_FIEMAP = 0xC020660B    # _IOWR('f', 11, struct fiemap)

_CLONE_RANGE = struct.Struct("=qQQQ")
_DEDUPE_HEAD = struct.Struct("=QQHHI")
_DEDUPE_INFO = struct.Struct("=qQQiI")
_FIEMAP_HEAD = struct.Struct("=QQIIII")
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")
_DEDUPE_IOCTL_MAX_DESTS = (4096 - _DEDUPE_HEAD.size) // _DEDUPE_INFO.size  # 127
_FIEMAP_IOCTL_BATCH = 512

_INT64_MAX = (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1


def _error(code: int, what: str | None = None) -> OSError:
    if what is None:
        return OSError(code, os.strerror(code))
    return OSError(code, os.strerror(code), what)


def is_daxfs(fd: int) -> bool:
    """True if `fd` is a file on a daxfs mount (its daemon answers the probe)."""
    try:
        return os.getxattr(fd, control.PROBE_NAME) == control.PROBE_VALUE
    except OSError:
        return False


_libc = None


def _writeback(fd: int, offset: int, length: int) -> None:
    """Write back the kernel's dirty pages of a range (sync_file_range; never
    an fsync, so it costs the daemon nothing when nothing is dirty)."""
    global _libc
    try:
        if _libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64,
                                             ctypes.c_int64, ctypes.c_uint]
            _libc = libc
        if offset > _INT64_MAX or length > _INT64_MAX - offset:
            length = 0
        _libc.sync_file_range(fd, offset, length, 1 | 2 | 4)
    except (OSError, AttributeError):
        pass


def _access_mode(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETFL)


def _range_ok(offset: int, length: int) -> bool:
    return 0 <= offset and 0 <= length and offset + length <= _INT64_MAX


def _clone_checks(src_fd, dst_fd, src_st, dst_st, src_off, dst_off, length):
    """The checks the VFS makes before ->remap_file_range, in its order."""
    if src_st.st_dev != dst_st.st_dev:
        raise _error(errno.EXDEV)
    if stat.S_ISDIR(src_st.st_mode) or stat.S_ISDIR(dst_st.st_mode):
        raise _error(errno.EISDIR)
    if not stat.S_ISREG(src_st.st_mode) or not stat.S_ISREG(dst_st.st_mode):
        raise _error(errno.EINVAL)
    src_flags, dst_flags = _access_mode(src_fd), _access_mode(dst_fd)
    if (src_flags & os.O_PATH or (src_flags & os.O_ACCMODE) == os.O_WRONLY
            or dst_flags & os.O_PATH or (dst_flags & os.O_ACCMODE) == os.O_RDONLY
            or dst_flags & os.O_APPEND):
        raise _error(errno.EBADF)
    if not _range_ok(src_off, length) or not _range_ok(dst_off, length):
        raise _error(errno.EINVAL)


def clone(src_fd: int, dst_fd: int, src_off: int = 0, dst_off: int = 0,
          length: int = 0) -> None:
    """Share `length` bytes of src_fd at src_off into dst_fd at dst_off
    (length 0: to the source's EOF), like FICLONERANGE.  Raises OSError."""
    dst_st = os.fstat(dst_fd)
    src_st = os.fstat(src_fd)
    if not (is_daxfs(dst_fd) or (src_st.st_dev == dst_st.st_dev and is_daxfs(src_fd))):
        return _ioctl_clone(src_fd, dst_fd, src_off, dst_off, length)
    _clone_checks(src_fd, dst_fd, src_st, dst_st, src_off, dst_off, length)
    _writeback(src_fd, src_off, length)
    _writeback(dst_fd, dst_off, length)
    value = control.encode_request(control.OP_CLONE, src_st.st_dev, src_st.st_ino,
                                   src_off, dst_off, length, src_fd=src_fd)
    try:
        os.setxattr(dst_fd, control.CLONE_NAME, value)
    except OSError as e:
        raise _error(e.errno) from None


def _ioctl_clone(src_fd, dst_fd, src_off, dst_off, length) -> None:
    if not _range_ok(src_off, length) or not _range_ok(dst_off, length):
        raise _error(errno.EINVAL)
    if src_off == dst_off == length == 0:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    else:
        fcntl.ioctl(dst_fd, FICLONERANGE,
                    _CLONE_RANGE.pack(src_fd, src_off, length, dst_off))


def dedupe(src_fd: int, src_off: int, length: int, dests) -> list[DedupeResult]:
    """Compare `length` bytes of src_fd at src_off with each (dst_fd,
    dst_off) and share the range where identical, like FIDEDUPERANGE
    (clamped to 1 GiB per call, as the kernel does).  Whole-request errors
    raise OSError; per-destination ones are a result with status -errno."""
    dests = [(int(fd), int(off)) for fd, off in dests]
    src_st = os.fstat(src_fd)
    if not is_daxfs(src_fd):
        return _ioctl_dedupe(src_fd, src_off, length, dests)
    flags = _access_mode(src_fd)
    if flags & os.O_PATH:
        raise _error(errno.EBADF)
    if (flags & os.O_ACCMODE) == os.O_WRONLY:
        raise _error(errno.EINVAL)
    if stat.S_ISDIR(src_st.st_mode):
        raise _error(errno.EISDIR)
    if not stat.S_ISREG(src_st.st_mode):
        raise _error(errno.EINVAL)
    if not _range_ok(src_off, length) or src_off + length > src_st.st_size:
        raise _error(errno.EINVAL)
    length = min(length, control.DEDUPE_MAX_LENGTH)
    if length:
        _writeback(src_fd, src_off, length)
    return [_dedupe_one(src_fd, src_st, src_off, length, dst_fd, dst_off)
            for dst_fd, dst_off in dests]


def _dedupe_one(src_fd, src_st, src_off, length, dst_fd, dst_off) -> DedupeResult:
    try:
        dst_st = os.fstat(dst_fd)
        if _access_mode(dst_fd) & os.O_PATH:
            raise _error(errno.EBADF)
    except OSError:
        return DedupeResult(-errno.EBADF, 0)
    if not _range_ok(dst_off, length):
        return DedupeResult(-errno.EINVAL, 0)
    if dst_st.st_dev != src_st.st_dev:
        return DedupeResult(-errno.EXDEV, 0)
    if stat.S_ISDIR(dst_st.st_mode):
        return DedupeResult(-errno.EISDIR, 0)
    if not stat.S_ISREG(dst_st.st_mode):
        return DedupeResult(-errno.EINVAL, 0)
    if length == 0:
        return DedupeResult(control.FILE_DEDUPE_RANGE_SAME, 0)
    _writeback(dst_fd, dst_off, length)
    value = control.encode_request(control.OP_DEDUPE, src_st.st_dev, src_st.st_ino,
                                   src_off, dst_off, length, src_fd=src_fd)
    try:
        os.setxattr(dst_fd, control.DEDUPE_NAME, value)
    except OSError as e:
        # setxattr needs write permission; the kernel's dedupe says EPERM.
        return DedupeResult(-(errno.EPERM if e.errno == errno.EACCES else e.errno), 0)
    try:
        return control.decode_result(os.getxattr(dst_fd, control.RESULT_NAME))
    except OSError as e:
        return DedupeResult(-e.errno, 0)
    except InvalidArgument:
        return DedupeResult(-errno.EIO, 0)


def _ioctl_dedupe(src_fd, src_off, length, dests) -> list[DedupeResult]:
    if not _range_ok(src_off, length):
        raise _error(errno.EINVAL)
    results = []
    for i in range(0, max(len(dests), 1), _DEDUPE_IOCTL_MAX_DESTS):
        batch = dests[i:i + _DEDUPE_IOCTL_MAX_DESTS]
        buf = bytearray(_DEDUPE_HEAD.pack(src_off, length, len(batch), 0, 0))
        for fd, off in batch:
            if not -(1 << 63) <= fd <= _INT64_MAX or not 0 <= off <= _UINT64_MAX:
                raise _error(errno.EINVAL)
            buf += _DEDUPE_INFO.pack(fd, off, 0, 0, 0)
        fcntl.ioctl(src_fd, FIDEDUPERANGE, buf, True)
        for j in range(len(batch)):
            _, _, done, status, _ = _DEDUPE_INFO.unpack_from(
                buf, _DEDUPE_HEAD.size + j * _DEDUPE_INFO.size)
            results.append(DedupeResult(status, done))
    return results


def fiemap(fd: int, start: int = 0, length: int | None = None,
           flags: int = 0) -> list[FiemapExtent]:
    """Every extent of `fd` overlapping [start, start+length) (length None:
    to the end), like FS_IOC_FIEMAP.  Byte units; flags FIEMAP_EXTENT_*."""
    if length is None:
        length = _UINT64_MAX - start
    if not 0 <= start <= _UINT64_MAX or not 0 <= length <= _UINT64_MAX:
        raise _error(errno.EINVAL)
    if length == 0:
        raise _error(errno.EINVAL)
    end = min(start + length, _UINT64_MAX)
    os.fstat(fd)
    if not is_daxfs(fd):
        return _ioctl_fiemap(fd, start, end, flags)
    if flags & ~control.FIEMAP_FLAGS_SUPPORTED:
        raise _error(errno.EBADR)
    if flags & control.FIEMAP_FLAG_SYNC:
        _writeback(fd, 0, 0)
    extents: list[FiemapExtent] = []
    while start < end:
        name = control.fiemap_name(start, end - start, flags)
        try:
            value = os.getxattr(fd, name)
        except OSError as e:
            raise _error(e.errno) from None
        try:
            batch = control.decode_fiemap(value)
        except InvalidArgument:
            raise _error(errno.EIO) from None
        extents += batch
        if (len(batch) < control.FIEMAP_MAX_EXTENTS_PER_CALL
                or batch[-1].flags & FIEMAP_EXTENT_LAST):
            break
        next_start = batch[-1].logical + batch[-1].length
        if next_start <= start:      # a daemon that does not move on: stop
            raise _error(errno.EIO)
        start = next_start
    return extents


def _ioctl_fiemap(fd, start, end, flags) -> list[FiemapExtent]:
    extents: list[FiemapExtent] = []
    size = _FIEMAP_HEAD.size + _FIEMAP_IOCTL_BATCH * _FIEMAP_EXTENT.size
    while start < end:
        buf = bytearray(size)
        _FIEMAP_HEAD.pack_into(buf, 0, start, end - start, flags, 0,
                               _FIEMAP_IOCTL_BATCH, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
        mapped = _FIEMAP_HEAD.unpack_from(buf, 0)[3]
        batch = []
        for i in range(mapped):
            lo, ph, ln, _, _, fl, _, _, _ = _FIEMAP_EXTENT.unpack_from(
                buf, _FIEMAP_HEAD.size + i * _FIEMAP_EXTENT.size)
            batch.append(FiemapExtent(lo, ph, ln, fl))
        extents += batch
        if mapped < _FIEMAP_IOCTL_BATCH or batch[-1].flags & FIEMAP_EXTENT_LAST:
            break
        next_start = batch[-1].logical + batch[-1].length
        if next_start <= start:
            break
        start = next_start
    return extents
