"""The daxfs control protocol: the names and wire formats that carry
reflink (FICLONE, FICLONERANGE), dedupe (FIDEDUPERANGE) and FIEMAP requests
to the daemon over extended attributes of the destination file, and the
encode/decode functions both sides use.  docs/control-protocol.md is the
specification (why a protocol at all, every name, every format, the checks
each side makes); this module is its code and does no I/O.
"""

from __future__ import annotations

import re
import struct
from collections import OrderedDict
from dataclasses import dataclass

from daxfs.engine.attrs import (FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_SHARED,
                                FILE_DEDUPE_RANGE_DIFFERS, FILE_DEDUPE_RANGE_SAME, DedupeResult,
                                FiemapExtent)
from daxfs.engine.errors import InvalidArgument, NoAttribute

__all__ = [
    "PREFIX", "PROBE_NAME", "PROBE_VALUE", "CLONE_NAME", "DEDUPE_NAME",
    "RESULT_NAME", "FIEMAP_PREFIX", "MAGIC", "VERSION", "OP_CLONE",
    "OP_DEDUPE", "REQUEST_SIZE", "RESULT_SIZE", "FIEMAP_MAX_EXTENTS_PER_CALL",
    "DEDUPE_MAX_LENGTH", "FIEMAP_FLAG_SYNC", "FIEMAP_FLAGS_SUPPORTED",
    "FIEMAP_EXTENT_LAST", "FIEMAP_EXTENT_SHARED", "FILE_DEDUPE_RANGE_SAME",
    "FILE_DEDUPE_RANGE_DIFFERS", "Request", "encode_request",
    "decode_request", "encode_result", "decode_result", "fiemap_name",
    "parse_fiemap_name", "encode_fiemap", "decode_fiemap", "is_control_name",
    "ResultTable",
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
