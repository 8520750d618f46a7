"""The daxfs control protocol: how reflink, dedupe and FIEMAP requests reach
the daemon.  This module owns the protocol — its documentation and the
encode/decode functions both sides use — and nothing else (no FUSE, no I/O
except the /proc reads of `check_source_fd`).

Why a protocol at all
=====================

The kernel handles FICLONE, FICLONERANGE, FIDEDUPERANGE and FS_IOC_FIEMAP
itself and never forwards them to a FUSE daemon (it answers EOPNOTSUPP).
Requests are therefore carried on extended attributes *of the destination
file*, set or read on the open file (``fsetxattr``/``fgetxattr``), so the
kernel checks the caller's access to the destination and the request cannot
race with a rename.  Two clients speak it: the LD_PRELOAD library
``daxfs/control/preload/daxfs_preload.c`` (for unmodified tools) and
``daxfs/control/client.py`` (for Python and the ``daxfs reflink/dedupe``
commands).

Name space
==========

Every xattr name beginning with ``user.daxfs.`` is a control name
(`is_control_name`).  The daemon never stores one, never lists one in
listxattr, and answers removexattr of one with ENODATA.  Control names:

``user.daxfs.probe`` (getxattr)
    Value `PROBE_VALUE`.  Clients decide "is this file on a daxfs mount?"
    by reading it and comparing the value (any other file system answers
    ENODATA or ENOTSUP, or a different value).  Clients cache the answer per
    ``st_dev``.  The daemon answers it for every inode, files and
    directories alike.

``user.daxfs.clone`` (setxattr on the destination; value: a REQUEST, op 1)
    Clone (reflink) a range of the source into the destination, as
    FICLONERANGE does.  The setxattr result *is* the answer: 0 on success,
    or the errno XFS would give (ioctl_ficlonerange(2)): EXDEV, EISDIR,
    EINVAL (bad range/alignment, overlap within one file), EBADF, ENOSPC,
    EFBIG, ETXTBSY, EPERM, EIO...

``user.daxfs.dedupe`` (setxattr on one destination; value: a REQUEST, op 2)
    Compare ``length`` bytes of the source at ``src_off`` with the
    destination at ``dst_off`` and share them if identical.  The daemon
    stores the outcome as the *last result* for (calling thread = FUSE
    ``ctx.pid``, destination inode) and answers the setxattr with 0.  If it
    cannot even form a result (a malformed request...) it may answer the
    setxattr with an errno instead; then it must drop any older result for
    that key, and the client reports ``-errno`` as that destination's
    status.  ``length`` is literal for dedupe (0 dedupes nothing and
    reports SAME with 0 bytes, as the kernel does); the kernel clamps a
    dedupe to 1 GiB per call (`DEDUPE_MAX_LENGTH`) and clients do the same.

``user.daxfs.result`` (getxattr on the same destination, same thread)
    The packed RESULT of the last dedupe (`encode_result`).  Reading it
    must not consume it: the kernel may call getxattr twice (a size probe
    with size 0, then the read).  ENODATA if there is none.  The daemon
    keeps at most one result per key and should bound the table (e.g. the
    1024 most recent keys): a result is read right after the setxattr.

``user.daxfs.fiemap.<start>.<length>.<flags>`` (getxattr)
    Decimal numbers, no signs, no leading zeros (`fiemap_name`).  The value
    is a packed extent list (`encode_fiemap`) of the extents that overlap
    [start, start + length), in file order, whole (not trimmed to the
    range), at most `FIEMAP_MAX_EXTENTS_PER_CALL` of them.  Fewer than that
    many means there are no more in the range; otherwise the client asks
    again from the end of the last extent.  An extent carries
    FIEMAP_EXTENT_LAST only if it is the last extent of the file (never
    merely because the reply was cut at the limit).  ``length`` 0 or flags
    other than FIEMAP_FLAG_SYNC are malformed (EINVAL); clients themselves
    answer EBADR for unsupported flags, as the kernel's fiemap_prep does.
    All units are bytes; flags are FIEMAP_EXTENT_* (LAST = 1,
    SHARED = 0x2000).

The daemon must never answer a control name with ENOSYS: the kernel would
then stop sending getxattr/setxattr to the mount altogether.

Wire formats (all little-endian, `struct` notation)
===================================================

REQUEST, exactly 64 bytes (`REQUEST_STRUCT`)::

    magic u32 = 0x50435844 ('DXCP')   version u16 = 1   op u16 (1 clone, 2 dedupe)
    src_dev u64   st_dev of the source as the client sees it
    src_ino u64   st_ino of the source
    src_off u64   offsets and length must each fit int64, and so must
    dst_off u64   src_off + length and dst_off + length (else EINVAL, as
    length  u64   remap_verify_area); clone: 0 = to the source's EOF
    flags   u64   must be 0
    src_fd  i32   the caller's descriptor of the source, or -1 (see below)
    reserved u32  must be 0

RESULT, exactly 16 bytes (`RESULT_STRUCT`)::

    status i32 (0 SAME, 1 DIFFERS, or -errno)   pad u32 = 0   bytes_deduped u64

FIEMAP value, 8 + 32 x count bytes::

    count u32 (<= 2000)   pad u32 = 0
    count x (logical u64, physical u64, length u64, flags u32, pad u32 = 0)

(2000 extents = 64,008 bytes, under the 65,536-byte xattr value limit.)

Deviation from the first sketch: ``src_fd`` (why the source is named twice)
==========================================================================

The sketch named the source only by (st_dev, st_ino).  An inode number is a
capability nobody checks: inode numbers are small and guessable (root is 1),
so any user could clone a file they may read by its mode bits but could
never open, because a directory above it refuses search permission — the
kernel's FICLONE needs an *open* source descriptor precisely to prevent
that.  The request therefore also carries the caller's descriptor number of
the source.  The daemon verifies it with `check_source_fd`: it reads
``/proc/<ctx.pid>/fdinfo/<src_fd>`` (mnt_id, ino, open flags) and the
caller's mountinfo — plain procfs reads, no round trip through the FUSE
mount, so no deadlock — and accepts the request only if that descriptor is
open for reading on a mount of this file system's device and names
``src_ino``.  ``-1`` means "not given"; what the daemon does then (refuse,
or fall back to a mode-bit check for ``ctx.uid``) is its policy.  The
request grew from 56 to 64 bytes for it; the rest is as sketched.

The daemon learns its own ``st_dev`` (to compare with ``src_dev``, else
EXDEV) without touching its mount: `mount_device` reads it from
/proc/self/mountinfo.

Daemon recipe (what the FUSE adapter does with these functions)
===============================================================

* getxattr: PROBE_NAME -> PROBE_VALUE; RESULT_NAME -> ``table.value(ctx.pid,
  ino)`` (a `ResultTable`); a FIEMAP_PREFIX name -> `parse_fiemap_name`,
  the engine's extents from ``start`` (at most FIEMAP_MAX_EXTENTS_PER_CALL,
  LAST only on the file's last extent) -> `encode_fiemap`.
* setxattr CLONE_NAME / DEDUPE_NAME: `decode_request` (op must match the
  name, else EINVAL); ``src_dev`` must equal `mount_device` (computed once
  at mount) else EXDEV; `check_source_fd` (ctx.pid, src_fd, src_dev,
  src_ino); then the engine's clone_range / dedupe_range; a dedupe stores
  its DedupeResult in the table (``table.drop`` first, so a failed request
  never leaves an older result readable).  Invalidate the destination's
  cached pages as PLATFORM.md says (never from inside the handler itself).
* Every InvalidArgument / DaxfsError raised here carries the errno to answer.

Client-side checks
==================

The daemon sees no file handle (only the inode, ``ctx.uid/gid/pid``), so
some checks only the client can make, exactly as the VFS would, in the
VFS's order: clone — EXDEV (different ``st_dev``), EISDIR (either is a
directory), EINVAL (either is not a regular file), EBADF (source not open
for reading, destination not open for writing or O_APPEND), EINVAL
(negative or overflowing range).  Dedupe — source not readable: EINVAL;
source range beyond EOF: EINVAL; more than 127 destinations in one ioctl:
ENOMEM; per destination: EBADF, EINVAL, EXDEV, EISDIR go in its status.  A
dedupe destination need not be open for writing (the kernel allows it if
the caller could write the file); setxattr needs write permission, so an
EACCES from it is reported as EPERM, the kernel's answer.  Before a clone
or dedupe, clients write back the kernel's dirty page cache of both ranges
(``sync_file_range``, which never reaches the daemon as an fsync), as
XFS's remap prep does with filemap_write_and_wait_range.
"""

from __future__ import annotations

import os
import re
import struct
from collections import OrderedDict
from dataclasses import dataclass

from daxfs.engine.attrs import (FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_SHARED,
                                FILE_DEDUPE_RANGE_DIFFERS, FILE_DEDUPE_RANGE_SAME, DedupeResult,
                                FiemapExtent)
from daxfs.mountinfo import unescape as unescape_mountinfo
from daxfs.engine.errors import BadFileDescriptor, InvalidArgument, NoAttribute, PermissionDenied

__all__ = [
    "PREFIX", "PROBE_NAME", "PROBE_VALUE", "CLONE_NAME", "DEDUPE_NAME",
    "RESULT_NAME", "FIEMAP_PREFIX", "MAGIC", "VERSION", "OP_CLONE",
    "OP_DEDUPE", "REQUEST_SIZE", "RESULT_SIZE", "FIEMAP_MAX_EXTENTS_PER_CALL",
    "DEDUPE_MAX_LENGTH", "FIEMAP_FLAG_SYNC", "FIEMAP_FLAGS_SUPPORTED",
    "FIEMAP_EXTENT_LAST", "FIEMAP_EXTENT_SHARED", "FILE_DEDUPE_RANGE_SAME",
    "FILE_DEDUPE_RANGE_DIFFERS", "Request", "encode_request",
    "decode_request", "encode_result", "decode_result", "fiemap_name",
    "parse_fiemap_name", "encode_fiemap", "decode_fiemap", "is_control_name",
    "ResultTable", "mount_device", "check_source_fd",
]

# --- names -----------------------------------------------------------------

PREFIX = b"user.daxfs."
PROBE_NAME = b"user.daxfs.probe"
CLONE_NAME = b"user.daxfs.clone"
DEDUPE_NAME = b"user.daxfs.dedupe"
RESULT_NAME = b"user.daxfs.result"
FIEMAP_PREFIX = b"user.daxfs.fiemap."

#: The value of PROBE_NAME; the C library compares it byte for byte.
PROBE_VALUE = b"daxfs-control-1"

# --- numbers ---------------------------------------------------------------

MAGIC = 0x50435844          # b"DXCP" read as a little-endian u32
VERSION = 1
OP_CLONE = 1
OP_DEDUPE = 2
_OPS = (OP_CLONE, OP_DEDUPE)

REQUEST_STRUCT = struct.Struct("<IHHQQQQQQiI")
REQUEST_SIZE = REQUEST_STRUCT.size            # 64
RESULT_STRUCT = struct.Struct("<iIQ")
RESULT_SIZE = RESULT_STRUCT.size              # 16
_FIEMAP_HEAD = struct.Struct("<II")
_FIEMAP_EXTENT = struct.Struct("<QQQII")
FIEMAP_MAX_EXTENTS_PER_CALL = 2000
FIEMAP_MAX_VALUE = _FIEMAP_HEAD.size + FIEMAP_MAX_EXTENTS_PER_CALL * _FIEMAP_EXTENT.size
XATTR_SIZE_MAX = 65536

DEDUPE_MAX_LENGTH = 1 << 30                   # the kernel's per-call clamp
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_FLAGS_SUPPORTED = FIEMAP_FLAG_SYNC

INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1
UINT32_MAX = (1 << 32) - 1
INT32_MAX = (1 << 31) - 1


def is_control_name(name) -> bool:
    """True if `name` (bytes, or str) is in the daemon's private name space."""
    if isinstance(name, str):
        name = name.encode("utf-8", "surrogateescape")
    return bytes(name).startswith(PREFIX)


# --- requests --------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    op: int            # OP_CLONE or OP_DEDUPE
    src_dev: int
    src_ino: int
    src_off: int
    dst_off: int
    length: int        # clone: 0 = to the source's EOF; dedupe: literal
    flags: int = 0
    src_fd: int = -1   # the caller's descriptor of the source; -1: not given

    @property
    def is_clone(self) -> bool:
        return self.op == OP_CLONE

    @property
    def is_dedupe(self) -> bool:
        return self.op == OP_DEDUPE


def _check_range(src_off: int, dst_off: int, length: int) -> None:
    for what, value in (("src_off", src_off), ("dst_off", dst_off), ("length", length)):
        if not 0 <= value <= INT64_MAX:
            raise InvalidArgument(f"{what} {value} is not a valid file offset")
    if src_off + length > INT64_MAX or dst_off + length > INT64_MAX:
        raise InvalidArgument("offset + length overflows a file offset")


def encode_request(op: int, src_dev: int, src_ino: int, src_off: int,
                   dst_off: int, length: int, src_fd: int = -1) -> bytes:
    """Pack a clone (op 1) or dedupe (op 2) request, the value for
    CLONE_NAME / DEDUPE_NAME.  Raises InvalidArgument on numbers the wire
    format or the kernel's range rules refuse."""
    if op not in _OPS:
        raise InvalidArgument(f"unknown op {op}")
    for what, value in (("src_dev", src_dev), ("src_ino", src_ino)):
        if not 0 <= value <= UINT64_MAX:
            raise InvalidArgument(f"{what} {value} does not fit u64")
    if not -1 <= src_fd <= INT32_MAX:
        raise InvalidArgument(f"src_fd {src_fd} is not a descriptor")
    _check_range(src_off, dst_off, length)
    return REQUEST_STRUCT.pack(MAGIC, VERSION, op, src_dev, src_ino, src_off,
                               dst_off, length, 0, src_fd, 0)


def decode_request(value) -> Request:
    """Unpack a request value; InvalidArgument (EINVAL) if it is not one."""
    value = bytes(value)
    if len(value) != REQUEST_SIZE:
        raise InvalidArgument(f"control request is {len(value)} bytes, not {REQUEST_SIZE}")
    (magic, version, op, src_dev, src_ino, src_off, dst_off, length, flags,
     src_fd, reserved) = REQUEST_STRUCT.unpack(value)
    if magic != MAGIC:
        raise InvalidArgument(f"bad control magic {magic:#x}")
    if version != VERSION:
        raise InvalidArgument(f"unsupported control protocol version {version}")
    if op not in _OPS:
        raise InvalidArgument(f"unknown op {op}")
    if flags or reserved:
        raise InvalidArgument("unknown request flags")
    if src_fd < -1:
        raise InvalidArgument(f"src_fd {src_fd} is not a descriptor")
    _check_range(src_off, dst_off, length)
    return Request(op, src_dev, src_ino, src_off, dst_off, length, flags, src_fd)


# --- dedupe results --------------------------------------------------------

def _check_status(status: int) -> None:
    if status not in (FILE_DEDUPE_RANGE_SAME, FILE_DEDUPE_RANGE_DIFFERS) and \
            not -4095 <= status <= -1:
        raise InvalidArgument(f"bad dedupe status {status}")


def encode_result(result: DedupeResult) -> bytes:
    """Pack a DedupeResult, the value of RESULT_NAME."""
    _check_status(result.status)
    if not 0 <= result.bytes_deduped <= INT64_MAX:
        raise InvalidArgument(f"bad bytes_deduped {result.bytes_deduped}")
    return RESULT_STRUCT.pack(result.status, 0, result.bytes_deduped)


def decode_result(value) -> DedupeResult:
    value = bytes(value)
    if len(value) != RESULT_SIZE:
        raise InvalidArgument(f"dedupe result is {len(value)} bytes, not {RESULT_SIZE}")
    status, pad, done = RESULT_STRUCT.unpack(value)
    if pad:
        raise InvalidArgument("nonzero padding in dedupe result")
    _check_status(status)
    if done > INT64_MAX:
        raise InvalidArgument(f"bad bytes_deduped {done}")
    return DedupeResult(status, done)


class ResultTable:
    """The daemon's memory of dedupe outcomes: the last result per (calling
    thread id = FUSE ctx.pid, destination inode), bounded to the `capacity`
    most recently stored keys.  Reading does not consume (getxattr may come
    twice); storing or dropping replaces."""

    def __init__(self, capacity: int = 1024):
        self.capacity = capacity
        self._results: OrderedDict[tuple[int, int], DedupeResult] = OrderedDict()

    def store(self, pid: int, ino: int, result: DedupeResult) -> None:
        key = (pid, ino)
        self._results[key] = result
        self._results.move_to_end(key)
        while len(self._results) > self.capacity:
            self._results.popitem(last=False)

    def drop(self, pid: int, ino: int) -> None:
        self._results.pop((pid, ino), None)

    def value(self, pid: int, ino: int) -> bytes:
        """The RESULT_NAME value for this caller; NoAttribute (ENODATA) if
        it has none."""
        try:
            return encode_result(self._results[(pid, ino)])
        except KeyError:
            raise NoAttribute("no dedupe result for this caller") from None

    def __len__(self) -> int:
        return len(self._results)


# --- FIEMAP ----------------------------------------------------------------

_DECIMAL = rb"(0|[1-9][0-9]{0,19})"
_FIEMAP_NAME_RE = re.compile(re.escape(FIEMAP_PREFIX) + _DECIMAL + rb"\." + _DECIMAL
                             + rb"\." + _DECIMAL)


def fiemap_name(start: int, length: int, flags: int = 0) -> bytes:
    """The getxattr name that asks for the extents of [start, start+length)."""
    if not 0 <= start <= UINT64_MAX or not 1 <= length <= UINT64_MAX:
        raise InvalidArgument(f"bad FIEMAP range {start}+{length}")
    if flags & ~FIEMAP_FLAGS_SUPPORTED or flags < 0:
        raise InvalidArgument(f"unsupported FIEMAP flags {flags:#x}")
    return b"%s%d.%d.%d" % (FIEMAP_PREFIX, start, length, flags)


def parse_fiemap_name(name) -> tuple[int, int, int]:
    """(start, length, flags) from a FIEMAP control name; InvalidArgument if
    it is malformed, out of range, asks for length 0 or unsupported flags."""
    if isinstance(name, str):
        name = name.encode("utf-8", "surrogateescape")
    m = _FIEMAP_NAME_RE.fullmatch(bytes(name))
    if m is None:
        raise InvalidArgument(f"malformed FIEMAP request {name!r}")
    start, length, flags = (int(g) for g in m.groups())
    if start > UINT64_MAX or length > UINT64_MAX or flags > UINT32_MAX:
        raise InvalidArgument(f"FIEMAP request out of range {name!r}")
    if length == 0:
        raise InvalidArgument("FIEMAP of length 0")
    if flags & ~FIEMAP_FLAGS_SUPPORTED:
        raise InvalidArgument(f"unsupported FIEMAP flags {flags:#x}")
    return start, length, flags


def encode_fiemap(extents) -> bytes:
    """Pack at most FIEMAP_MAX_EXTENTS_PER_CALL FiemapExtents."""
    extents = list(extents)
    if len(extents) > FIEMAP_MAX_EXTENTS_PER_CALL:
        raise InvalidArgument(f"{len(extents)} extents exceed the per-call limit")
    out = bytearray(_FIEMAP_HEAD.size + len(extents) * _FIEMAP_EXTENT.size)
    _FIEMAP_HEAD.pack_into(out, 0, len(extents), 0)
    pos = _FIEMAP_HEAD.size
    for e in extents:
        if not (0 <= e.logical <= UINT64_MAX and 0 <= e.physical <= UINT64_MAX
                and 0 <= e.length <= UINT64_MAX and 0 <= e.flags <= UINT32_MAX):
            raise InvalidArgument(f"extent out of range: {e}")
        _FIEMAP_EXTENT.pack_into(out, pos, e.logical, e.physical, e.length, e.flags, 0)
        pos += _FIEMAP_EXTENT.size
    return bytes(out)


def decode_fiemap(value) -> list[FiemapExtent]:
    value = bytes(value)
    if len(value) < _FIEMAP_HEAD.size:
        raise InvalidArgument("FIEMAP reply shorter than its header")
    count, pad = _FIEMAP_HEAD.unpack_from(value, 0)
    if pad:
        raise InvalidArgument("nonzero padding in FIEMAP reply")
    if count > FIEMAP_MAX_EXTENTS_PER_CALL:
        raise InvalidArgument(f"FIEMAP reply claims {count} extents")
    if len(value) != _FIEMAP_HEAD.size + count * _FIEMAP_EXTENT.size:
        raise InvalidArgument("FIEMAP reply size does not match its count")
    extents = []
    for logical, physical, length, flags, epad in _FIEMAP_EXTENT.iter_unpack(
            value[_FIEMAP_HEAD.size:]):
        if epad:
            raise InvalidArgument("nonzero padding in FIEMAP extent")
        extents.append(FiemapExtent(logical, physical, length, flags))
    return extents


# --- daemon-side helpers (procfs only; never touch the FUSE mount) ---------

def mount_device(mountpoint, mountinfo: str = "/proc/self/mountinfo") -> int:
    """The st_dev clients see for files under `mountpoint`, read from
    mountinfo (the last mount on that point wins), without a stat through
    the mount.  InvalidArgument if nothing is mounted there."""
    # Resolve the parent only: a stat of the mount point itself would be a
    # FUSE request to the daemon that is calling this (a deadlock before
    # its loop runs).
    parent, leaf = os.path.split(os.path.abspath(os.fsdecode(mountpoint)))
    target = os.path.join(os.path.realpath(parent), leaf) if leaf else parent
    found = None
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5 and unescape_mountinfo(fields[4]) == target:
                major, minor = fields[2].split(":")
                found = os.makedev(int(major), int(minor))
    if found is None:
        raise InvalidArgument(f"nothing is mounted on {target}")
    return found


def _read_fdinfo(pid: int, fd: int) -> dict[str, str]:
    info = {}
    with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    return info


def _mount_id_device(pid: int, mnt_id: int) -> int | None:
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and fields[0] == str(mnt_id):
                major, minor = fields[2].split(":")
                return os.makedev(int(major), int(minor))
    return None


def check_source_fd(pid: int, fd: int, dev: int, ino: int) -> None:
    """Verify that thread `pid` (FUSE ctx.pid) holds descriptor `fd` open for
    reading on file (`dev`, `ino`).  Raises BadFileDescriptor if not (the
    errno FICLONE gives for a bad source descriptor), PermissionDenied if
    /proc of the caller cannot be read (e.g. the daemon runs unprivileged
    and the caller is another user)."""
    if fd < 0:
        raise BadFileDescriptor("no source descriptor in the request")
    try:
        info = _read_fdinfo(pid, fd)
    except FileNotFoundError:
        raise BadFileDescriptor(f"caller has no descriptor {fd}") from None
    except PermissionError:
        raise PermissionDenied(f"cannot inspect the caller's descriptor {fd}") from None
    except OSError as e:
        raise BadFileDescriptor(f"caller's descriptor {fd}: {e.strerror}") from None
    try:
        flags = int(info["flags"], 8)
        mnt_id = int(info["mnt_id"])
        fd_ino = int(info["ino"])
    except (KeyError, ValueError):
        raise BadFileDescriptor(f"caller's descriptor {fd} is not a file") from None
    if flags & os.O_PATH or (flags & os.O_ACCMODE) == os.O_WRONLY:
        raise BadFileDescriptor(f"caller's descriptor {fd} is not open for reading")
    if fd_ino != ino:
        raise BadFileDescriptor(f"caller's descriptor {fd} is another file")
    try:
        mount_dev = _mount_id_device(pid, mnt_id)
    except OSError:
        raise PermissionDenied("cannot read the caller's mount table") from None
    if mount_dev != dev:
        raise BadFileDescriptor(f"caller's descriptor {fd} is on another file system")

