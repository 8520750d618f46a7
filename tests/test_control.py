"""Tests of the daxfs control protocol: the codec (daxfs/control/protocol.py), its
Python client (daxfs/control/client.py), the LD_PRELOAD library
(daxfs/control/preload/) and the `daxfs exec/reflink/dedupe` commands.

Three layers, each usable where the one above is not:
* pure unit tests of encode/decode and the daemon-side helpers;
* the C library on an ordinary file system: everything falls through to the
  real libc untouched, statfs is not faked; and, with user.daxfs.probe set
  by hand on an ext4/tmpfs file (a file system that stores the control
  xattrs plays the daemon), the exact bytes the library sends;
* a fake daemon (pyfuse3, in a subprocess) that speaks the protocol with
  control.py's own functions: the whole round trip through a FUSE mount —
  skipped where FUSE cannot be mounted.
Every subprocess is bounded by a timeout.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import astuple
from pathlib import Path

import pytest

from daxfs import host
from daxfs.control import protocol as control, client as reflink_client
from daxfs.fuse import callers
from daxfs.engine.attrs import FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_SHARED, DedupeResult, FiemapExtent
from daxfs.engine.errors import BadFileDescriptor, InvalidArgument, NoAttribute

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TIMEOUT = 60
U64 = (1 << 64) - 1
I64 = (1 << 63) - 1
XFS_MAGIC = 0x58465342
FUSE_MAGIC = 0x65735546


# ===================================================================== codec

def test_names():
    assert control.is_control_name(b"user.daxfs.clone")
    assert control.is_control_name(b"user.daxfs.fiemap.0.1.0")
    assert control.is_control_name("user.daxfs.probe")
    assert not control.is_control_name(b"user.daxfs")
    assert not control.is_control_name(b"user.other")
    assert not control.is_control_name(b"security.capability")
    assert not control.is_control_name(b"trusted.daxfs.clone")
    for name in (control.PROBE_NAME, control.CLONE_NAME, control.DEDUPE_NAME,
                 control.RESULT_NAME, control.FIEMAP_PREFIX):
        assert control.is_control_name(name)
    assert control.MAGIC.to_bytes(4, "little") == b"DXCP"


@pytest.mark.parametrize("op", [control.OP_CLONE, control.OP_DEDUPE])
@pytest.mark.parametrize("numbers", [
    (0, 0, 0, 0, 0, -1),
    (U64, U64, I64, I64, 0, 0),
    (2049, 77, 4096, 8192, 1 << 30, 5),
    (1, 2, I64 - 10, 0, 10, (1 << 31) - 1),
])
def test_request_round_trip(op, numbers):
    dev, ino, soff, doff, length, fd = numbers
    value = control.encode_request(op, dev, ino, soff, doff, length, src_fd=fd)
    assert len(value) == control.REQUEST_SIZE == 64
    req = control.decode_request(value)
    assert req == control.Request(op, dev, ino, soff, doff, length, 0, fd)
    assert req.is_clone == (op == control.OP_CLONE)
    assert req.is_dedupe == (op == control.OP_DEDUPE)
    assert control.decode_request(bytearray(value)) == req
    assert control.decode_request(memoryview(value)) == req


def test_request_layout():
    value = control.encode_request(1, 0x1122, 0x3344, 4096, 8192, 12288, src_fd=7)
    assert value[:4] == b"DXCP"
    assert struct.unpack("<IHHQQQQQQiI", value) == (
        0x50435844, 1, 1, 0x1122, 0x3344, 4096, 8192, 12288, 0, 7, 0)
    # the brief's signature, without src_fd, still works
    assert control.decode_request(control.encode_request(2, 1, 2, 3, 4, 5)).src_fd == -1


def _raw(**kw):
    f = dict(magic=control.MAGIC, version=1, op=1, dev=1, ino=2, soff=0, doff=0,
             length=0, flags=0, fd=3, reserved=0)
    f.update(kw)
    return struct.pack("<IHHQQQQQQiI", f["magic"], f["version"], f["op"], f["dev"],
                       f["ino"], f["soff"], f["doff"], f["length"], f["flags"],
                       f["fd"], f["reserved"])


@pytest.mark.parametrize("value", [
    b"",
    b"DXCP",
    _raw()[:-1],
    _raw() + b"\0",
    _raw()[:56],                       # the 56-byte layout of the first sketch
    _raw() * 2,
    b"\0" * 65537,                     # oversize
    _raw(magic=0),
    _raw(magic=0x44584350),            # byte-swapped magic
    _raw(version=0),
    _raw(version=2),
    _raw(op=0),
    _raw(op=3),
    _raw(op=0xFFFF),
    _raw(flags=1),
    _raw(flags=1 << 63),
    _raw(reserved=1),
    _raw(fd=-2),
    _raw(soff=1 << 63),
    _raw(doff=U64),
    _raw(length=1 << 63),
    _raw(soff=I64, length=1),          # src_off + length overflows loff_t
    _raw(doff=I64 - 4095, length=4096),
    _raw(soff=1 << 62, doff=0, length=1 << 62),
], ids=lambda v: f"{len(v)}B")
def test_request_malformed(value):
    with pytest.raises(InvalidArgument) as info:
        control.decode_request(value)
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("args", [
    (0, 1, 2, 0, 0, 0),                # bad op
    (3, 1, 2, 0, 0, 0),
    (1, -1, 2, 0, 0, 0),               # dev/ino not u64
    (1, 1 << 64, 2, 0, 0, 0),
    (1, 1, -2, 0, 0, 0),
    (1, 1, 2, -1, 0, 0),               # negative offsets
    (1, 1, 2, 0, -4096, 0),
    (1, 1, 2, 0, 0, -1),
    (1, 1, 2, I64, 0, 1),              # overflow
    (1, 1, 2, 0, 1 << 63, 0),
])
def test_encode_request_rejects(args):
    with pytest.raises(InvalidArgument):
        control.encode_request(*args)
    with pytest.raises(InvalidArgument):
        control.encode_request(1, 1, 2, 0, 0, 0, src_fd=-2)
    with pytest.raises(InvalidArgument):
        control.encode_request(1, 1, 2, 0, 0, 0, src_fd=1 << 31)


@pytest.mark.parametrize("result", [
    DedupeResult(0, 0), DedupeResult(0, 1 << 30), DedupeResult(0, I64),
    DedupeResult(1, 0), DedupeResult(-errno.EINVAL, 0), DedupeResult(-4095, 0),
])
def test_result_round_trip(result):
    value = control.encode_result(result)
    assert len(value) == control.RESULT_SIZE == 16
    assert control.decode_result(value) == result
    assert struct.unpack("<iIQ", value) == (result.status, 0, result.bytes_deduped)


@pytest.mark.parametrize("value", [
    b"", b"\0" * 15, b"\0" * 17, b"\0" * 65536,
    struct.pack("<iIQ", 0, 1, 0),                 # padding
    struct.pack("<iIQ", 2, 0, 0),                 # unknown status
    struct.pack("<iIQ", 1 << 30, 0, 0),
    struct.pack("<iIQ", -4096, 0, 0),             # not an errno
    struct.pack("<iIQ", -(1 << 31), 0, 0),
    struct.pack("<iIQ", 0, 0, 1 << 63),           # bytes_deduped not a loff_t
])
def test_result_malformed(value):
    with pytest.raises(InvalidArgument):
        control.decode_result(value)


@pytest.mark.parametrize("result", [DedupeResult(2, 0), DedupeResult(-5000, 0),
                                    DedupeResult(0, -1), DedupeResult(0, 1 << 63)])
def test_encode_result_rejects(result):
    with pytest.raises(InvalidArgument):
        control.encode_result(result)


def test_result_table():
    table = control.ResultTable(capacity=3)
    with pytest.raises(NoAttribute) as info:
        table.value(10, 2)
    assert info.value.errno == errno.ENODATA
    table.store(10, 2, DedupeResult(0, 4096))
    # idempotent: the kernel's size probe and the read see the same value
    assert table.value(10, 2) == table.value(10, 2) == control.encode_result(DedupeResult(0, 4096))
    with pytest.raises(NoAttribute):
        table.value(11, 2)                       # another thread
    with pytest.raises(NoAttribute):
        table.value(10, 3)                       # another destination
    table.store(10, 2, DedupeResult(1, 0))       # replaced
    assert control.decode_result(table.value(10, 2)) == DedupeResult(1, 0)
    for pid in (20, 21, 22):                     # bounded: the oldest goes
        table.store(pid, 2, DedupeResult(0, pid))
    assert len(table) == 3
    with pytest.raises(NoAttribute):
        table.value(10, 2)
    table.drop(22, 2)
    table.drop(99, 99)
    with pytest.raises(NoAttribute):
        table.value(22, 2)


@pytest.mark.parametrize("start,length,flags", [
    (0, 1, 0), (0, U64, 0), (U64, U64, 1), (123456789, 4096, 0), (4096, 10, 1),
])
def test_fiemap_name_round_trip(start, length, flags):
    name = control.fiemap_name(start, length, flags)
    assert isinstance(name, bytes) and len(name) <= 255
    assert name == b"user.daxfs.fiemap.%d.%d.%d" % (start, length, flags)
    assert control.is_control_name(name)
    assert control.parse_fiemap_name(name) == (start, length, flags)
    assert control.parse_fiemap_name(name.decode()) == (start, length, flags)


@pytest.mark.parametrize("name", [
    b"user.daxfs.fiemap.",
    b"user.daxfs.fiemap.0",
    b"user.daxfs.fiemap.0.1",
    b"user.daxfs.fiemap.0.1.",
    b"user.daxfs.fiemap.0.1.0.",
    b"user.daxfs.fiemap.0.1.0.0",
    b"user.daxfs.fiemap..1.0",
    b"user.daxfs.fiemap.0..0",
    b"user.daxfs.fiemap.-1.1.0",
    b"user.daxfs.fiemap.+1.1.0",
    b"user.daxfs.fiemap.01.1.0",                 # leading zero: not canonical
    b"user.daxfs.fiemap.0.1.00",
    b"user.daxfs.fiemap. 0.1.0",
    b"user.daxfs.fiemap.0.1.0 ",
    b"user.daxfs.fiemap.0.1.0\n",
    b"user.daxfs.fiemap.1_0.1.0",
    b"user.daxfs.fiemap.0x10.1.0",
    b"user.daxfs.fiemap.1e3.1.0",
    "user.daxfs.fiemap.\u0661.1.0".encode(),     # a non-ASCII digit
    b"user.daxfs.fiemap.18446744073709551616.1.0",   # 2**64
    b"user.daxfs.fiemap.0.18446744073709551616.0",
    b"user.daxfs.fiemap.0.99999999999999999999.0",
    b"user.daxfs.fiemap.0.1.4294967296",
    b"user.daxfs.fiemap.0.0.0",                  # length 0
    b"user.daxfs.fiemap.0.1.2",                  # FIEMAP_FLAG_XATTR: unsupported
    b"user.daxfs.fiemap.0.1.4",
    b"user.daxfs.fiemap.0.1.3",
    b"user.daxfs.fiemaps.0.1.0",
    b"user.daxfs.FIEMAP.0.1.0",
    b"user.daxfs.clone",
    b"",
])
def test_fiemap_name_malformed(name):
    with pytest.raises(InvalidArgument):
        control.parse_fiemap_name(name)


@pytest.mark.parametrize("args", [(-1, 1, 0), (0, 0, 0), (0, 1 << 64, 0), (1 << 64, 1, 0),
                                  (0, 1, 2), (0, 1, -1)])
def test_fiemap_name_rejects(args):
    with pytest.raises(InvalidArgument):
        control.fiemap_name(*args)


def _extents(n, last=True):
    return [FiemapExtent(i * 4096, (1 << 40) + i * 8192, 4096,
                         (FIEMAP_EXTENT_SHARED if i % 2 else 0)
                         | (FIEMAP_EXTENT_LAST if last and i == n - 1 else 0))
            for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 2, 1999, 2000])
def test_fiemap_round_trip(n):
    extents = _extents(n)
    value = control.encode_fiemap(extents)
    assert len(value) == 8 + 32 * n
    assert len(value) <= 65536
    assert struct.unpack_from("<II", value) == (n, 0)
    assert control.decode_fiemap(value) == extents
    big = [FiemapExtent(U64, U64, U64, 0xFFFFFFFF)]
    assert control.decode_fiemap(control.encode_fiemap(big)) == big


def _fiemap_value(count, body_extents, pad=0, epad=0):
    value = struct.pack("<II", count, pad)
    for i in range(body_extents):
        value += struct.pack("<QQQII", i, i, 1, 0, epad)
    return value


@pytest.mark.parametrize("value", [
    b"", b"\0" * 7,
    _fiemap_value(1, 0),                 # count says more than there is
    _fiemap_value(0, 1),                 # trailing garbage
    _fiemap_value(2, 1),
    _fiemap_value(1, 1) + b"\0",
    _fiemap_value(1, 1)[:-1],
    _fiemap_value(0, 0, pad=1),
    _fiemap_value(1, 1, epad=1),
    _fiemap_value(2001, 2001),           # over the per-call limit
    _fiemap_value(0xFFFFFFFF, 0),
])
def test_fiemap_malformed(value):
    with pytest.raises(InvalidArgument):
        control.decode_fiemap(value)


def test_encode_fiemap_rejects():
    with pytest.raises(InvalidArgument):
        control.encode_fiemap(_extents(2001))
    for bad in (FiemapExtent(-1, 0, 1, 0), FiemapExtent(0, 1 << 64, 1, 0),
                FiemapExtent(0, 0, -1, 0), FiemapExtent(0, 0, 1, 1 << 32)):
        with pytest.raises(InvalidArgument):
            control.encode_fiemap([bad])


# ====================================================== daemon-side helpers

def test_mount_device(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
        "40 22 0:53 / /mnt/dax\\040fs rw - fuse.daxfs daxfs rw\n"
        "41 40 0:60 / /mnt/dax\\040fs rw - fuse.daxfs daxfs rw\n")
    assert host.mount_at("/mnt/dax fs", str(info)).dev == os.makedev(0, 60)
    assert host.mount_at("/mnt/dax fs/", str(info)).dev == os.makedev(0, 60)
    assert host.mount_at("/", str(info)).dev == os.makedev(8, 1)
    assert host.mount_at("/mnt/other", str(info)) is None
    # the real table agrees with stat where a stat is harmless
    assert host.mount_at("/").dev == os.stat("/").st_dev


def test_check_source_fd(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"data")
    st = os.stat(path)
    pid = os.getpid()
    fds = []
    try:
        def open_(flags):
            fd = os.open(path, flags)
            fds.append(fd)
            return fd
        for flags in (os.O_RDONLY, os.O_RDWR):
            callers.check_source_fd(pid, open_(flags), st.st_dev, st.st_ino)
        for flags in (os.O_WRONLY, os.O_PATH):
            with pytest.raises(BadFileDescriptor):
                callers.check_source_fd(pid, open_(flags), st.st_dev, st.st_ino)
        fd = open_(os.O_RDONLY)
        with pytest.raises(BadFileDescriptor):
            callers.check_source_fd(pid, fd, st.st_dev, st.st_ino + 1)   # another file
        with pytest.raises(BadFileDescriptor):
            callers.check_source_fd(pid, fd, st.st_dev + 1, st.st_ino)   # another fs
        with pytest.raises(BadFileDescriptor):
            callers.check_source_fd(pid, -1, st.st_dev, st.st_ino)
        r, w = os.pipe()
        fds += [r, w]
        with pytest.raises(BadFileDescriptor):
            callers.check_source_fd(pid, r, st.st_dev, st.st_ino)
        free = os.dup(fd)
        os.close(free)
        with pytest.raises(BadFileDescriptor):
            callers.check_source_fd(pid, free, st.st_dev, st.st_ino)     # not open
    finally:
        for fd in fds:
            os.close(fd)


# ==================================================== Python client (no mount)

class FakeDaemon:
    """Stands in for the daemon inside the Python client: records the
    requests set on destinations and answers results."""

    def __init__(self, monkeypatch, daxfs_fds=None, answer=0, result=DedupeResult(0, 4096)):
        self.requests = []
        self.answer = answer
        self.result = result
        monkeypatch.setattr(reflink_client, "is_daxfs",
                            lambda fd: daxfs_fds is None or fd in daxfs_fds)
        monkeypatch.setattr(reflink_client.os, "setxattr", self.setxattr)
        monkeypatch.setattr(reflink_client.os, "getxattr", self.getxattr)

    def setxattr(self, fd, name, value, *a):
        self.requests.append((fd, name, control.decode_request(value)))
        if self.answer:
            raise OSError(self.answer, os.strerror(self.answer))

    def getxattr(self, fd, name, *a):
        assert name == control.RESULT_NAME
        return control.encode_result(self.result)


@pytest.fixture
def files(tmp_path):
    """src (3 blocks) and dst, opened in several modes; closed afterwards."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 * 4096))
    dst = tmp_path / "dst"
    dst.write_bytes(b"")
    fds = {}
    fds["src"] = os.open(src, os.O_RDONLY)
    fds["src_w"] = os.open(src, os.O_WRONLY)
    fds["dst"] = os.open(dst, os.O_RDWR)
    fds["dst_r"] = os.open(dst, os.O_RDONLY)
    fds["dst_a"] = os.open(dst, os.O_WRONLY | os.O_APPEND)
    fds["dir"] = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fds["path"] = os.open(src, os.O_PATH)
    fds["pipe_r"], fds["pipe_w"] = os.pipe()
    fds["shm"] = os.open("/dev/shm", os.O_TMPFILE | os.O_RDWR, 0o600)
    yield fds
    for fd in fds.values():
        os.close(fd)


def test_client_clone_request(files, monkeypatch):
    daemon = FakeDaemon(monkeypatch)
    reflink_client.clone(files["src"], files["dst"], 4096, 8192, 4096)
    reflink_client.clone(files["src"], files["dst"])
    st = os.fstat(files["src"])
    assert daemon.requests == [
        (files["dst"], control.CLONE_NAME,
         control.Request(1, st.st_dev, st.st_ino, 4096, 8192, 4096, 0, files["src"])),
        (files["dst"], control.CLONE_NAME,
         control.Request(1, st.st_dev, st.st_ino, 0, 0, 0, 0, files["src"])),
    ]


@pytest.mark.parametrize("src,dst,args,code", [
    ("src", "shm", (), errno.EXDEV),
    ("dir", "dst", (), errno.EISDIR),
    ("src", "dir", (), errno.EISDIR),
    ("pipe_r", "dst", (), errno.EXDEV),          # a pipe is on pipefs: EXDEV first
    ("src_w", "dst", (), errno.EBADF),
    ("src", "dst_r", (), errno.EBADF),
    ("src", "dst_a", (), errno.EBADF),
    ("path", "dst", (), errno.EBADF),
    ("src", "dst", (-4096, 0, 0), errno.EINVAL),
    ("src", "dst", (0, -1, 0), errno.EINVAL),
    ("src", "dst", (0, 0, -4096), errno.EINVAL),
    ("src", "dst", (I64, 0, 1), errno.EINVAL),
    ("src", "dst", (0, I64 - 10, 4096), errno.EINVAL),
])
def test_client_clone_checks(files, monkeypatch, src, dst, args, code):
    daemon = FakeDaemon(monkeypatch)
    with pytest.raises(OSError) as info:
        reflink_client.clone(files[src], files[dst], *args)
    assert info.value.errno == code
    assert daemon.requests == []


def test_client_clone_not_regular(files, monkeypatch, tmp_path):
    daemon = FakeDaemon(monkeypatch)
    os.mkfifo(tmp_path / "fifo")
    fd = os.open(tmp_path / "fifo", os.O_RDWR)
    try:
        with pytest.raises(OSError) as info:
            reflink_client.clone(files["src"], fd)
        assert info.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    assert daemon.requests == []


def test_client_clone_daemon_errno(files, monkeypatch):
    FakeDaemon(monkeypatch, answer=errno.ENOSPC)
    with pytest.raises(OSError) as info:
        reflink_client.clone(files["src"], files["dst"])
    assert info.value.errno == errno.ENOSPC


def test_client_dedupe(files, monkeypatch):
    daemon = FakeDaemon(monkeypatch, result=DedupeResult(0, 4096))
    bad = os.dup(files["dst"])
    os.close(bad)
    results = reflink_client.dedupe(files["src"], 4096, 4096, [
        (files["dst"], 0), (files["dst_r"], 8192), (bad, 0), (files["shm"], 0),
        (files["dir"], 0), (files["pipe_r"], 0), (files["path"], 0), (files["dst"], -1)])
    assert results == [DedupeResult(0, 4096), DedupeResult(0, 4096),
                       DedupeResult(-errno.EBADF, 0), DedupeResult(-errno.EXDEV, 0),
                       DedupeResult(-errno.EISDIR, 0), DedupeResult(-errno.EXDEV, 0),
                       DedupeResult(-errno.EBADF, 0), DedupeResult(-errno.EINVAL, 0)]
    st = os.fstat(files["src"])
    assert [r[:2] for r in daemon.requests] == [(files["dst"], control.DEDUPE_NAME),
                                                (files["dst_r"], control.DEDUPE_NAME)]
    assert daemon.requests[1][2] == control.Request(2, st.st_dev, st.st_ino, 4096, 8192,
                                                    4096, 0, files["src"])
    # length 0 dedupes nothing, asks nothing, reports SAME
    assert reflink_client.dedupe(files["src"], 0, 0, [(files["dst"], 0)]) == [DedupeResult(0, 0)]
    assert len(daemon.requests) == 2


def test_client_dedupe_errors(files, monkeypatch):
    daemon = FakeDaemon(monkeypatch, answer=errno.EACCES)
    # setxattr's EACCES is the kernel dedupe's EPERM
    assert reflink_client.dedupe(files["src"], 0, 4096, [(files["dst"], 0)]) == \
        [DedupeResult(-errno.EPERM, 0)]
    daemon.answer = errno.EIO
    assert reflink_client.dedupe(files["src"], 0, 4096, [(files["dst"], 0)]) == \
        [DedupeResult(-errno.EIO, 0)]
    for args, code in [((files["src_w"], 0, 4096), errno.EINVAL),
                       ((files["dir"], 0, 4096), errno.EISDIR),
                       ((files["src"], 0, 3 * 4096 + 1), errno.EINVAL),     # past EOF
                       ((files["src"], 4096, 2 * 4096 + 1), errno.EINVAL),
                       ((files["src"], -1, 1), errno.EINVAL)]:
        with pytest.raises(OSError) as info:
            reflink_client.dedupe(*args, [(files["dst"], 0)])
        assert info.value.errno == code, args


def test_client_dedupe_clamps_to_1GiB(tmp_path, monkeypatch):
    daemon = FakeDaemon(monkeypatch, result=DedupeResult(0, 1 << 30))
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(3 << 30)                              # sparse
    fd = os.open(big, os.O_RDWR)
    try:
        assert reflink_client.dedupe(fd, 0, 3 << 30, [(fd, 0)]) == [DedupeResult(0, 1 << 30)]
        assert daemon.requests[0][2].length == 1 << 30
    finally:
        os.close(fd)


def test_client_fiemap_loop(files, monkeypatch):
    """The client asks again from the end of the last extent while replies
    are full, and stops at FIEMAP_EXTENT_LAST."""
    extents = _extents(4500)
    asked = []

    def getxattr(fd, name, *a):
        start, length, flags = control.parse_fiemap_name(name)
        asked.append((start, length))
        hits = [e for e in extents if e.logical + e.length > start
                and e.logical < start + length][:2000]
        return control.encode_fiemap(hits)
    monkeypatch.setattr(reflink_client, "is_daxfs", lambda fd: True)
    monkeypatch.setattr(reflink_client.os, "getxattr", getxattr)
    assert reflink_client.fiemap(files["src"]) == extents
    assert asked == [(0, U64), (2000 * 4096, U64 - 2000 * 4096),
                     (4000 * 4096, U64 - 4000 * 4096)]
    asked.clear()
    assert reflink_client.fiemap(files["src"], 4096 * 10, 4096 * 3) == extents[10:13]
    with pytest.raises(OSError) as info:
        reflink_client.fiemap(files["src"], flags=2)     # FIEMAP_FLAG_XATTR
    assert info.value.errno == errno.EBADR
    with pytest.raises(OSError) as info:
        reflink_client.fiemap(files["src"], 0, 0)
    assert info.value.errno == errno.EINVAL


def test_client_falls_back_to_kernel(files, tmp_path):
    """Off daxfs, the client issues the real ioctls: the kernel's answers."""
    data = tmp_path / "data"
    data.write_bytes(os.urandom(64 * 1024))
    fd = os.open(data, os.O_RDWR)
    try:
        os.fsync(fd)
        assert not reflink_client.is_daxfs(fd)
        try:
            extents = reflink_client.fiemap(fd)
        except OSError as e:                   # a file system without FIEMAP
            assert e.errno in (errno.EOPNOTSUPP, errno.ENOTTY)
        else:
            assert sum(e.length for e in extents) >= 64 * 1024
            assert extents[-1].flags & FIEMAP_EXTENT_LAST
        try:
            reflink_client.clone(fd, files["dst"])
        except OSError as e:                   # ext4, tmpfs: no reflink
            assert e.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL)
        with pytest.raises(OSError) as info:
            reflink_client.clone(fd, files["shm"])
        assert info.value.errno in (errno.EXDEV, errno.EOPNOTSUPP)
    finally:
        os.close(fd)


# ============================================================ the C library

@pytest.fixture(scope="session")
def preload_lib(tmp_path_factory):
    """The library, compiled from the tree's source into a private path (so
    the test never races another build of daxfs/control/preload/)."""
    if shutil.which("make") is None or shutil.which("gcc") is None:
        pytest.skip("make/gcc not installed (scripts/setup.sh installs them)")
    out = tmp_path_factory.mktemp("preload") / "libdaxfs_preload.so"
    proc = subprocess.run(["make", "-s", "-C", str(ROOT / "daxfs" / "control" / "preload"), f"OUT={out}"],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr, proc.stderr
    return out


def run_py(code, *args, preload=None, env=None, check=True):
    """Run `code` in a fresh Python, optionally with the library preloaded."""
    e = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "DAXFS_FAKE_XFS")}
    e["PYTHONPATH"] = str(ROOT)
    if preload is not None:
        e["LD_PRELOAD"] = str(preload)
    e.update(env or {})
    proc = subprocess.run([PY, "-c", CLIENT_PRELUDE + code, *map(str, args)], env=e,
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


CLIENT_PRELUDE = r'''
import ctypes, errno, fcntl, json, os, struct, sys
FICLONE, FICLONERANGE = 0x40049409, 0x4020940D
FIDEDUPERANGE, FS_IOC_FIEMAP = 0xC0189436, 0xC020660B
U64 = (1 << 64) - 1
libc = ctypes.CDLL(None, use_errno=True)

def attempt(fn):
    try:
        r = fn()
        return ["ok", r.hex() if isinstance(r, (bytes, bytearray)) else r]
    except OSError as e:
        return ["err", errno.errorcode.get(e.errno, e.errno)]

def clone_range(dst, src, soff, length, doff):
    fcntl.ioctl(dst, FICLONERANGE, struct.pack("=qQQQ", src, soff, length, doff))
    return 0

def dedupe_arg(soff, length, dests, reserved1=0):
    buf = bytearray(struct.pack("=QQHHI", soff, length, len(dests), reserved1, 0))
    for fd, off in dests:
        buf += struct.pack("=qQQiI", fd, off, 0xDEAD, 77, 0)
    return buf

def dedupe(src, soff, length, dests, reserved1=0):
    buf = dedupe_arg(soff, length, dests, reserved1)
    fcntl.ioctl(src, FIDEDUPERANGE, buf, True)
    return [list(struct.unpack_from("=qQQiI", buf, 24 + 32 * i)[2:4]) for i in range(len(dests))]

def fiemap(fd, start=0, length=U64, count=100, flags=0):
    buf = bytearray(struct.pack("=QQIIII", start, length, flags, 0xAAAA, count, 0)) + bytearray(56 * count)
    r = fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
    fm_flags, mapped = struct.unpack_from("=II", buf, 16)
    ext = [list(struct.unpack_from("=QQQ", buf, 32 + 56 * i)) + [struct.unpack_from("=I", buf, 32 + 56 * i + 40)[0]]
           for i in range(min(mapped, count))]
    return {"flags": fm_flags, "mapped": mapped, "extents": ext}

def f_type(path):
    buf = ctypes.create_string_buffer(256)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return -ctypes.get_errno()
    return struct.unpack_from("l", buf)[0]

def f_type_fd(fd, fn="fstatfs"):
    buf = ctypes.create_string_buffer(256)
    if getattr(libc, fn)(fd, buf) != 0:
        return -ctypes.get_errno()
    return struct.unpack_from("l", buf)[0]

def f_type64(path):
    buf = ctypes.create_string_buffer(256)
    if libc.statfs64(os.fsencode(path), buf) != 0:
        return -ctypes.get_errno()
    return struct.unpack_from("l", buf)[0]
'''

FALLTHROUGH = r'''
d, out_dir = sys.argv[1], sys.argv[2]
src = os.open(d + "/data", os.O_RDONLY)
src_rw = os.open(d + "/data", os.O_RDWR)
dst = os.open(out_dir + "/dst", os.O_RDWR | os.O_CREAT, 0o644)
dst_ro = os.open(out_dir + "/dst", os.O_RDONLY)
shm = os.open("/dev/shm", os.O_TMPFILE | os.O_RDWR, 0o600)
r, w = os.pipe()
res = {}
res["ficlone"] = attempt(lambda: fcntl.ioctl(dst, FICLONE, src))
res["ficlone_badsrc"] = attempt(lambda: fcntl.ioctl(dst, FICLONE, 9999))
res["ficlone_baddst"] = attempt(lambda: fcntl.ioctl(9999, FICLONE, src))
res["ficlone_ro"] = attempt(lambda: fcntl.ioctl(dst_ro, FICLONE, src))
res["ficlone_xdev"] = attempt(lambda: fcntl.ioctl(shm, FICLONE, src))
res["ficlone_pipe"] = attempt(lambda: fcntl.ioctl(w, FICLONE, src))
res["ficlonerange"] = attempt(lambda: clone_range(dst, src, 0, 4096, 0))
res["ficlonerange_bad"] = attempt(lambda: clone_range(dst, src, 1, 4095, 3))
res["dedupe"] = attempt(lambda: dedupe(src_rw, 0, 4096, [(dst, 0)]))
res["dedupe_bad"] = attempt(lambda: dedupe(src_rw, 0, 4096, [(9999, 0)], reserved1=1))
res["dedupe_many"] = attempt(lambda: dedupe(src_rw, 0, 4096, [(dst, 0)] * 200))
res["fiemap"] = attempt(lambda: fiemap(src))
res["fiemap_count"] = attempt(lambda: fiemap(src, count=0))
res["fiemap_one"] = attempt(lambda: fiemap(src, count=1))
res["fiemap_xattr"] = attempt(lambda: fiemap(src, flags=2))
res["fiemap_badflag"] = attempt(lambda: fiemap(src, flags=0x80))
res["fiemap_len0"] = attempt(lambda: fiemap(src, length=0))
res["fiemap_pipe"] = attempt(lambda: fiemap(r))
res["tcgets_pipe"] = attempt(lambda: fcntl.ioctl(r, 0x5401, bytes(64)))
res["fionread"] = attempt(lambda: struct.unpack("i", fcntl.ioctl(r, 0x541B, bytes(4)))[0])
res["cfr"] = attempt(lambda: os.copy_file_range(src, dst, 8192, 0, 4096))
res["cfr_unaligned"] = attempt(lambda: os.copy_file_range(src, dst, 100, 10, 20000))
res["cfr_badflags"] = attempt(lambda: [libc.copy_file_range(src, None, dst, None, 10, 1), ctypes.get_errno()])
res["cfr_ro"] = attempt(lambda: os.copy_file_range(src, dst_ro, 10))
os.lseek(src, 0, 0)
res["cfr_cur"] = attempt(lambda: [os.copy_file_range(src, dst, 4096), os.lseek(src, 0, 1), os.lseek(dst, 0, 1)])
os.close(dst)
with open(out_dir + "/dst", "rb") as f:
    res["dst_data"] = f.read().hex()
res["statfs"] = [f_type(d), f_type64(d), f_type_fd(src), f_type_fd(src, "fstatfs64"),
                 f_type("/dev/shm"), f_type("/proc"), f_type("/nonexistent")]
print(json.dumps(res))
'''


def test_library_exports(preload_lib):
    proc = subprocess.run(["nm", "-D", "--defined-only", str(preload_lib)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        pytest.skip("nm not available")
    exported = {line.split()[-1] for line in proc.stdout.splitlines()}
    assert {"ioctl", "copy_file_range", "statfs", "fstatfs", "statfs64",
            "fstatfs64"} <= exported
    # nothing else leaks into every preloaded program's namespace
    assert not {s for s in exported if not s.startswith("_")} - {
        "ioctl", "copy_file_range", "statfs", "fstatfs", "statfs64", "fstatfs64"}


def test_fall_through_on_ordinary_fs(preload_lib, tmp_path):
    """On a file system that is not daxfs every intercepted call gives the
    same result, errno and buffer contents with and without the library."""
    (tmp_path / "data").write_bytes(os.urandom(5 * 4096 + 123))
    fd = os.open(tmp_path / "data", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    results = []
    for name, preload, env in (("plain", None, {}),
                               ("preloaded", preload_lib, {"DAXFS_FAKE_XFS": "1"})):
        out = tmp_path / name
        out.mkdir()
        proc = run_py(FALLTHROUGH, tmp_path, out, preload=preload, env=env)
        results.append(json.loads(proc.stdout))
    plain, preloaded = results
    assert preloaded == plain
    assert plain["ficlone_badsrc"][0] == "err"
    assert plain["tcgets_pipe"] == ["err", "ENOTTY"]
    assert plain["statfs"][0] not in (XFS_MAGIC, FUSE_MAGIC)


def test_statfs_not_faked_off_daxfs(preload_lib, tmp_path):
    """DAXFS_FAKE_XFS=1 changes nothing on ordinary file systems, even on a
    file that carries a (forged) probe: only FUSE mounts are faked."""
    path = tmp_path / "probed"
    path.write_bytes(b"x")
    os.setxattr(path, control.PROBE_NAME, control.PROBE_VALUE)
    code = 'print(json.dumps([f_type(p) for p in sys.argv[1:]] + [f_type_fd(os.open(sys.argv[1], 0))]))'
    paths = [path, tmp_path, "/dev/shm", "/"]
    plain = json.loads(run_py(code, *paths).stdout)
    faked = json.loads(run_py(code, *paths, preload=preload_lib,
                              env={"DAXFS_FAKE_XFS": "1"}).stdout)
    assert faked == plain
    assert XFS_MAGIC not in plain


FORGED = r'''
d = sys.argv[1]
src = os.open(d + "/src", os.O_RDWR)
src_ro = os.open(d + "/src", os.O_RDONLY)
src_wo = os.open(d + "/src", os.O_WRONLY)
dst = os.open(d + "/dst", os.O_RDWR)
dst_ro = os.open(d + "/dst", os.O_RDONLY)
dst_app = os.open(d + "/dst", os.O_WRONLY | os.O_APPEND)
other = os.open(d + "/other", os.O_RDWR)
dirfd = os.open(d, os.O_RDONLY)
pathfd = os.open(d + "/src", os.O_PATH)
shm = os.open("/dev/shm", os.O_TMPFILE | os.O_RDWR, 0o600)
r, w = os.pipe()
def request(fd, name):
    try:
        v = os.getxattr(fd, name)
    except OSError as e:
        return None
    os.removexattr(fd, name)
    return v.hex()
res = {"fds": {"src": src, "src_ro": src_ro, "dst": dst}}
res["clone"] = [attempt(lambda: fcntl.ioctl(dst, FICLONE, src_ro)), request(dst, "user.daxfs.clone")]
res["clonerange"] = [attempt(lambda: clone_range(dst, src, 4096, 8192, 12288)), request(dst, "user.daxfs.clone")]
res["clone_errors"] = {
    "ro_dst": attempt(lambda: fcntl.ioctl(dst_ro, FICLONE, src)),
    "append_dst": attempt(lambda: fcntl.ioctl(dst_app, FICLONE, src)),
    "wo_src": attempt(lambda: fcntl.ioctl(dst, FICLONE, src_wo)),
    "path_src": attempt(lambda: fcntl.ioctl(dst, FICLONE, pathfd)),
    "bad_src": attempt(lambda: fcntl.ioctl(dst, FICLONE, 9999)),
    "dir_src": attempt(lambda: fcntl.ioctl(dst, FICLONE, dirfd)),
    "dir_dst": attempt(lambda: fcntl.ioctl(dirfd, FICLONE, src)),
    "xdev": attempt(lambda: fcntl.ioctl(dst, FICLONE, shm)),
    "pipe": attempt(lambda: fcntl.ioctl(dst, FICLONE, r)),
    "neg": attempt(lambda: clone_range(dst, src, 1 << 63, 4096, 0)),
    "overflow": attempt(lambda: clone_range(dst, src, 0, 4096, (1 << 63) - 4095)),
    "null": attempt(lambda: [libc.ioctl(dst, FICLONERANGE, None), ctypes.get_errno()]),
}
res["clone_leftover"] = request(dst, "user.daxfs.clone")
os.setxattr(dst, "user.daxfs.result", bytes.fromhex(sys.argv[2]))
res["dedupe"] = attempt(lambda: dedupe(src_ro, 4096, 4096, [(dst, 0), (9999, 0), (shm, 0), (dirfd, 0), (w, 0), (dst_ro, 8192)]))
res["dedupe_request"] = request(dst_ro, "user.daxfs.dedupe")
res["dedupe_len0"] = attempt(lambda: dedupe(src_ro, 0, 0, [(dst, 0)]))
res["dedupe_errors"] = {
    "wo_src": attempt(lambda: dedupe(src_wo, 0, 4096, [(dst, 0)])),
    "past_eof": attempt(lambda: dedupe(src_ro, 4096, 4 * 4096, [(dst, 0)])),
    "reserved": attempt(lambda: dedupe(src_ro, 0, 4096, [(dst, 0)], reserved1=1)),
    "too_many": attempt(lambda: dedupe(src_ro, 0, 4096, [(dst, 0)] * 128)),
    "dir": attempt(lambda: dedupe(dirfd, 0, 4096, [(dst, 0)])),
}
res["dedupe_127"] = attempt(lambda: len(dedupe(src_ro, 0, 4096, [(dst, 0)] * 127)))
res["fiemap"] = attempt(lambda: fiemap(src))
res["fiemap_count"] = attempt(lambda: fiemap(src, count=0))
res["fiemap_two"] = attempt(lambda: fiemap(src, count=2))
res["fiemap_sync"] = attempt(lambda: fiemap(src, flags=1))
res["fiemap_xattr"] = attempt(lambda: fiemap(src, flags=3))
res["fiemap_len0"] = attempt(lambda: fiemap(src, length=0))
res["fiemap_missing"] = attempt(lambda: fiemap(src, start=4096))
os.lseek(src_ro, 0, 0)
res["cfr_aligned"] = [attempt(lambda: os.copy_file_range(src_ro, other, 3 * 4096, 0, 4096)),
                      request(other, "user.daxfs.clone")]
res["cfr_short"] = [attempt(lambda: os.copy_file_range(src_ro, other, 4096 + 100, 0, 0)),
                    request(other, "user.daxfs.clone")]
res["cfr_eof"] = [attempt(lambda: os.copy_file_range(src_ro, other, 1 << 30, 2 * 4096, 0)),
                  request(other, "user.daxfs.clone")]
res["cfr_cur"] = [attempt(lambda: os.copy_file_range(src_ro, other, 4096)),
                  request(other, "user.daxfs.clone"), os.lseek(src_ro, 0, 1), os.lseek(other, 0, 1)]
res["cfr_unaligned"] = [attempt(lambda: os.copy_file_range(src_ro, other, 100, 10, 0)),
                        request(other, "user.daxfs.clone")]
res["cfr_past_eof"] = attempt(lambda: os.copy_file_range(src_ro, other, 4096, 8 * 4096, 0))
print(json.dumps(res))
'''


@contextlib.contextmanager
def xattr_store_mount(tmp_path):
    """A FUSE mount of type fuse.daxfs that keeps every xattr as it is set
    (the pyfuse3 passthrough peer over a directory): a stand-in daemon that
    stores control requests instead of running them."""
    src, mnt = tmp_path / "store", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "peers" / "passthrough.py"),
                             str(src), str(mnt), "--subtype", "daxfs"])
    try:
        deadline = time.monotonic() + 30
        while host.daxfs_mount_at(mnt) is None:
            assert proc.poll() is None and time.monotonic() < deadline, "passthrough did not mount"
            time.sleep(0.05)
        yield mnt
    finally:
        host.force_unmount(mnt, [proc.pid], 30)
        proc.wait(timeout=30)


def test_library_speaks_the_protocol(preload_lib, tmp_path):
    """With a hand-set probe, a fuse.daxfs mount that stores xattrs plays
    the daemon: the library's requests are left behind as xattrs, in exactly
    the bytes control.py decodes; answers set by hand are read back."""
    with xattr_store_mount(tmp_path) as d:
        _speaks_the_protocol(preload_lib, d)


def test_forged_probe_off_daxfs_is_ignored(preload_lib, tmp_path):
    """On ext4, a destination carrying user.daxfs.probe does not make the
    library speak the protocol: cp --reflink=always fails as it does
    without the library, instead of "succeeding" with an empty copy."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(3 * 4096))
    dst.write_bytes(b"")
    for p in (src, dst):
        os.setxattr(p, control.PROBE_NAME, control.PROBE_VALUE)
    env = dict(os.environ, LD_PRELOAD=str(preload_lib), DAXFS_FAKE_XFS="1")
    res = subprocess.run(["cp", "--reflink=always", str(src), str(dst)], capture_output=True,
                         text=True, timeout=TIMEOUT, env=env)
    assert res.returncode != 0 and "Operation not supported" in res.stderr, res.stderr
    assert control.CLONE_NAME.decode() not in os.listxattr(dst)
    assert dst.read_bytes() == b""


def _speaks_the_protocol(preload_lib, d):
    src_data = os.urandom(3 * 4096 + 100)
    (d / "src").write_bytes(src_data)
    (d / "dst").write_bytes(b"")
    (d / "other").write_bytes(b"")
    for name in ("src", "dst", "other"):
        try:
            os.setxattr(d / name, control.PROBE_NAME, control.PROBE_VALUE)
        except OSError as e:
            pytest.skip(f"no user xattrs on {d}: {e}")
    extents = _extents(3)
    os.setxattr(d / "src", control.fiemap_name(0, U64), control.encode_fiemap(extents))
    os.setxattr(d / "src", control.fiemap_name(0, U64, 1), control.encode_fiemap(extents[:1]))
    result = control.encode_result(DedupeResult(0, 4096))
    res = json.loads(run_py(FORGED, d, result.hex(), preload=preload_lib).stdout)
    st = os.stat(d / "src")
    fds = res["fds"]

    def req(hexvalue):
        return control.decode_request(bytes.fromhex(hexvalue))

    assert res["clone"][0] == ["ok", 0]
    assert req(res["clone"][1]) == control.Request(1, st.st_dev, st.st_ino, 0, 0, 0, 0, fds["src_ro"])
    assert res["clonerange"][0] == ["ok", 0]
    assert req(res["clonerange"][1]) == control.Request(1, st.st_dev, st.st_ino, 4096, 12288,
                                                        8192, 0, fds["src"])
    assert res["clone_errors"] == {
        "ro_dst": ["err", "EBADF"], "append_dst": ["err", "EBADF"],
        "wo_src": ["err", "EBADF"], "path_src": ["err", "EBADF"],
        "bad_src": ["err", "EBADF"], "dir_src": ["err", "EISDIR"],
        "dir_dst": ["err", "EISDIR"], "xdev": ["err", "EXDEV"],
        "pipe": ["err", "EXDEV"], "neg": ["err", "EINVAL"],
        "overflow": ["err", "EINVAL"], "null": ["ok", [-1, errno.EFAULT]]}
    assert res["clone_leftover"] is None            # no request escaped a failed check

    assert res["dedupe"] == ["ok", [[4096, 0], [0, -errno.EBADF], [0, -errno.EXDEV],
                                    [0, -errno.EISDIR], [0, -errno.EXDEV], [4096, 0]]]
    assert req(res["dedupe_request"]) == control.Request(2, st.st_dev, st.st_ino, 4096, 8192,
                                                         4096, 0, fds["src_ro"])
    assert res["dedupe_len0"] == ["ok", [[0, 0]]]
    assert res["dedupe_errors"] == {
        "wo_src": ["err", "EINVAL"], "past_eof": ["err", "EINVAL"],
        "reserved": ["err", "EINVAL"], "too_many": ["err", "ENOMEM"],
        "dir": ["err", "EISDIR"]}
    assert res["dedupe_127"] == ["ok", 127]

    as_lists = [[e.logical, e.physical, e.length, e.flags] for e in extents]
    assert res["fiemap"] == ["ok", {"flags": 0, "mapped": 3, "extents": as_lists}]
    assert res["fiemap_count"] == ["ok", {"flags": 0, "mapped": 3, "extents": []}]
    assert res["fiemap_two"] == ["ok", {"flags": 0, "mapped": 2, "extents": as_lists[:2]}]
    assert res["fiemap_sync"] == ["ok", {"flags": 1, "mapped": 1, "extents": as_lists[:1]}]
    assert res["fiemap_xattr"] == ["err", "EBADR"]
    assert res["fiemap_len0"] == ["err", "EINVAL"]
    assert res["fiemap_missing"] == ["err", "ENODATA"]    # the "daemon" has no answer

    # copy_file_range: aligned ranges become clones (nothing copied here:
    # the stand-in daemon only stores the request), others fall through
    n, v = res["cfr_aligned"]
    assert n == ["ok", 3 * 4096]
    assert astuple(req(v))[1:6] == (st.st_dev, st.st_ino, 0, 4096, 3 * 4096)
    n, v = res["cfr_short"]                        # shortened to whole blocks
    assert n == ["ok", 4096] and req(v).length == 4096
    n, v = res["cfr_eof"]                          # to EOF: an unaligned tail is fine
    assert n == ["ok", 4096 + 100]
    assert astuple(req(v))[3:6] == (2 * 4096, 0, 4096 + 100)
    n, v, src_pos, other_pos = res["cfr_cur"]      # the file offsets move
    assert n == ["ok", 4096] and astuple(req(v))[3:6] == (0, 0, 4096)
    assert (src_pos, other_pos) == (4096, 4096)
    n, v = res["cfr_unaligned"]                    # a real copy
    assert n == ["ok", 100] and v is None
    assert (d / "other").read_bytes()[:100] == src_data[10:110]
    assert res["cfr_past_eof"] == ["ok", 0]


FAKE_DAEMON = r'''"""A fake daxfs daemon for the control-protocol contract tests."""
import errno, json, os, stat, sys, time
import pyfuse3, trio
from daxfs import host
from daxfs.control import protocol as control
from daxfs.engine.attrs import DedupeResult, FiemapExtent, FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_SHARED
from daxfs.engine.errors import DaxfsError
from daxfs.fuse import callers

MNT, LOG = sys.argv[1], sys.argv[2]
BLOCK = 4096
FILES = {b"src": 2, b"dst": 3, b"dir": 4, b"same": 5, b"diff": 6, b"small": 7}
DIRS = {1, 4}


class Fake(pyfuse3.Operations):
    def __init__(self):
        super().__init__()
        src = bytes(range(256)) * (2500 * BLOCK // 256)         # 2500 blocks
        self.data = {2: src, 3: b"", 5: src[:8 * BLOCK],
                     6: b"x" + src[1:8 * BLOCK], 7: b"tiny"}
        self.dev = None
        self.results = control.ResultTable()
        self.log = open(LOG, "a", buffering=1)

    def attr(self, ino):
        if ino not in DIRS and ino not in self.data:
            raise pyfuse3.FUSEError(errno.ENOENT)
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        size = 0 if ino in DIRS else len(self.data[ino])
        a.st_mode = (stat.S_IFDIR | 0o755) if ino in DIRS else (stat.S_IFREG | 0o644)
        a.st_nlink = 2 if ino in DIRS else 1
        a.st_size = size
        a.st_blksize = BLOCK
        a.st_blocks = (size + 511) // 512
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        a.entry_timeout = a.attr_timeout = 0
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = time.time_ns()
        return a

    async def lookup(self, parent, name, ctx=None):
        if parent == pyfuse3.ROOT_INODE and name in FILES:
            return self.attr(FILES[name])
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def getattr(self, ino, ctx=None):
        return self.attr(ino)

    async def setattr(self, ino, attr, fields, fh, ctx):
        if fields.update_size:
            d = self.data[ino]
            self.data[ino] = d[:attr.st_size].ljust(attr.st_size, b"\0")
        return self.attr(ino)

    async def open(self, ino, flags, ctx):
        return pyfuse3.FileInfo(fh=ino, direct_io=True)

    async def create(self, parent, name, mode, flags, ctx):
        if parent != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EACCES)
        ino = max(max(self.data), max(DIRS)) + 1
        FILES[name] = ino
        self.data[ino] = b""
        return pyfuse3.FileInfo(fh=ino, direct_io=True), self.attr(ino)

    async def opendir(self, ino, ctx):
        return ino

    async def readdir(self, fh, start, token):
        pass

    async def releasedir(self, fh):
        pass

    async def read(self, fh, off, size):
        return self.data[fh][off:off + size]

    async def write(self, fh, off, buf):
        d = bytearray(self.data[fh])
        if off > len(d):
            d.extend(bytes(off - len(d)))
        d[off:off + len(buf)] = buf
        self.data[fh] = bytes(d)
        return len(buf)

    async def flush(self, fh):
        pass

    async def release(self, fh):
        pass

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK
        s.f_blocks, s.f_bfree, s.f_bavail = 1000, 500, 500
        s.f_files, s.f_ffree, s.f_favail = 100, 50, 50
        s.f_namemax = 255
        return s

    async def listxattr(self, ino, ctx):
        return []

    async def getxattr(self, ino, name, ctx):
        try:
            if name == control.PROBE_NAME:
                return control.PROBE_VALUE
            if name == control.RESULT_NAME:
                return self.results.value(ctx.pid, ino)
            if name.startswith(control.FIEMAP_PREFIX):
                start, length, flags = control.parse_fiemap_name(name)
                self.log.write(json.dumps({"fiemap": [start, length, flags]}) + "\n")
                return control.encode_fiemap(self.fiemap(ino, start, length))
        except DaxfsError as e:
            raise pyfuse3.FUSEError(e.errno)
        raise pyfuse3.FUSEError(errno.ENODATA)

    def fiemap(self, ino, start, length):
        if ino in DIRS:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        nblocks = -(-len(self.data[ino]) // BLOCK)
        first = start // BLOCK
        last = min(nblocks, -(-(start + length) // BLOCK))
        out = []
        for b in range(first, last):
            if len(out) == control.FIEMAP_MAX_EXTENTS_PER_CALL:
                break
            flags = (FIEMAP_EXTENT_SHARED if b % 2 == 0 else 0) | \
                    (FIEMAP_EXTENT_LAST if b == nblocks - 1 else 0)
            out.append(FiemapExtent(b * BLOCK, (ino << 32) + b * BLOCK, BLOCK, flags))
        return out

    async def setxattr(self, ino, name, value, ctx):
        try:
            if name not in (control.CLONE_NAME, control.DEDUPE_NAME):
                raise pyfuse3.FUSEError(errno.ENOTSUP)
            if name == control.DEDUPE_NAME:
                self.results.drop(ctx.pid, ino)
            req = control.decode_request(value)
            self.log.write(json.dumps({"name": name.decode(), "pid": ctx.pid, "ino": ino,
                                       **req.__dict__}) + "\n")
            if req.src_dev != self.dev:
                raise pyfuse3.FUSEError(errno.EXDEV)
            callers.check_source_fd(ctx.pid, req.src_fd, req.src_dev, req.src_ino)
            src = self.data[req.src_ino]
            if req.is_clone:
                if (name != control.CLONE_NAME):
                    raise pyfuse3.FUSEError(errno.EINVAL)
                length = req.length or max(len(src) - req.src_off, 0)
                if req.src_off + length > len(src):
                    raise pyfuse3.FUSEError(errno.EINVAL)
                d = bytearray(self.data[ino])
                if req.dst_off > len(d):
                    d.extend(bytes(req.dst_off - len(d)))
                d[req.dst_off:req.dst_off + length] = src[req.src_off:req.src_off + length]
                self.data[ino] = bytes(d)
            else:
                a = src[req.src_off:req.src_off + req.length]
                b = self.data[ino][req.dst_off:req.dst_off + req.length]
                result = DedupeResult(0, req.length) if a == b and len(b) == req.length \
                    else DedupeResult(1, 0)
                self.results.store(ctx.pid, ino, result)
        except DaxfsError as e:
            raise pyfuse3.FUSEError(e.errno)


def main():
    ops = Fake()
    opts = set(pyfuse3.default_options)
    opts.add("fsname=fakedaxfs")
    opts.add("subtype=daxfs")
    opts.add("default_permissions")
    pyfuse3.init(ops, MNT, opts)
    ops.dev = host.mount_at(MNT).dev
    ops.log.write(json.dumps({"ready": ops.dev}) + "\n")
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


main()
'''


# ============================================ through a FUSE mount (fake daemon)

class FakeMount:
    def __init__(self, path: Path, log: Path, dev: int):
        self.path, self.log_path, self.dev = path, log, dev

    def log(self):
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def requests(self):
        return [e for e in self.log() if "name" in e]

    def fiemaps(self):
        return [e["fiemap"] for e in self.log() if "fiemap" in e]


@pytest.fixture(scope="module")
def fake_mount(tmp_path_factory):
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("FUSE is not available here")
    base = tmp_path_factory.mktemp("fakedaxfs")
    mnt, log, script = base / "mnt", base / "log", base / "fake_daemon.py"
    mnt.mkdir()
    log.write_text("")
    script.write_text(FAKE_DAEMON)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("LD_PRELOAD", None)
    with open(base / "daemon.out", "wb") as out:
        proc = subprocess.Popen([PY, str(script), str(mnt), str(log)], env=env, cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    dev = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and dev is None:
        for line in log.read_text().splitlines():
            if "ready" in line:
                dev = json.loads(line)["ready"]
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    if dev is None:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, timeout=TIMEOUT)
        pytest.skip("cannot mount the fake daemon: "
                    + (base / "daemon.out").read_text(errors="replace")[-500:])
    try:
        yield FakeMount(mnt, log, dev)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, timeout=TIMEOUT)
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True,
                           timeout=TIMEOUT)


SRC_DATA = bytes(range(256)) * (2500 * 4096 // 256)       # the fake daemon's src


def test_mount_statfs_faked_only_when_asked(fake_mount, preload_lib):
    m = fake_mount.path
    code = ('fd = os.open(sys.argv[1] + "/src", os.O_RDONLY)\n'
            'print(json.dumps([f_type(sys.argv[1]), f_type(sys.argv[1] + "/src"), f_type64(sys.argv[1]),'
            ' f_type_fd(fd), f_type_fd(fd, "fstatfs64")]))')
    assert json.loads(run_py(code, m, preload=preload_lib,
                             env={"DAXFS_FAKE_XFS": "1"}).stdout) == [XFS_MAGIC] * 5
    for env in ({}, {"DAXFS_FAKE_XFS": "0"}):
        assert json.loads(run_py(code, m, preload=preload_lib, env=env).stdout) == [FUSE_MAGIC] * 5
    assert json.loads(run_py(code, m, env={"DAXFS_FAKE_XFS": "1"}).stdout) == [FUSE_MAGIC] * 5


MOUNT_IOCTLS = r'''
m = sys.argv[1]
src = os.open(m + "/src", os.O_RDONLY)
dst = os.open(m + "/dst", os.O_RDWR)
res = {"pid": os.getpid(), "src": src}
res["ficlone"] = attempt(lambda: fcntl.ioctl(dst, FICLONE, src))
res["size"] = os.fstat(dst).st_size
res["same"] = os.pread(dst, 10 ** 8, 0) == os.pread(src, 10 ** 8, 0)
os.ftruncate(dst, 0)
res["range"] = attempt(lambda: clone_range(dst, src, 4096, 8192, 4096))
res["range_data"] = os.pread(dst, 10 ** 8, 0).hex()
same = os.open(m + "/same", os.O_RDONLY)
diff = os.open(m + "/diff", os.O_RDONLY)
res["dedupe"] = attempt(lambda: dedupe(src, 0, 8 * 4096, [(same, 0), (diff, 0), (same, 4096)]))
res["fiemap_count"] = attempt(lambda: fiemap(src, count=0)["mapped"])
f = fiemap(src, count=3000)
res["fiemap_all"] = [f["mapped"], f["extents"][:3], f["extents"][-1]]
res["fiemap_ten"] = fiemap(src, count=10)["mapped"]
res["fiemap_dir"] = attempt(lambda: fiemap(os.open(m + "/dir", os.O_RDONLY)))
os.ftruncate(dst, 0)
res["cfr"] = attempt(lambda: os.copy_file_range(src, dst, 5 * 4096, 4096, 0))
res["cfr_data"] = os.pread(dst, 10 ** 8, 0) == os.pread(src, 5 * 4096, 4096)
res["cfr_unaligned"] = attempt(lambda: os.copy_file_range(src, dst, 5000, 1, 0))
res["cfr_unaligned_data"] = os.pread(dst, 5000, 0) == os.pread(src, 5000, 1)
print(json.dumps(res))
'''


def test_mount_ioctls_round_trip(fake_mount, preload_lib):
    before = len(fake_mount.log())
    res = json.loads(run_py(MOUNT_IOCTLS, fake_mount.path, preload=preload_lib).stdout)
    assert res["ficlone"] == ["ok", 0]
    assert res["size"] == len(SRC_DATA) and res["same"]
    assert res["range"] == ["ok", 0]
    assert bytes.fromhex(res["range_data"]) == bytes(4096) + SRC_DATA[4096:3 * 4096]
    assert res["dedupe"] == ["ok", [[8 * 4096, 0], [0, 1], [0, 1]]]
    assert res["fiemap_count"] == ["ok", 2500]
    mapped, first, last = res["fiemap_all"]
    ino = os.stat(fake_mount.path / "src").st_ino
    assert mapped == 2500
    assert first == [[0, ino << 32, 4096, FIEMAP_EXTENT_SHARED], [4096, (ino << 32) + 4096, 4096, 0],
                     [8192, (ino << 32) + 8192, 4096, FIEMAP_EXTENT_SHARED]]
    assert last == [2499 * 4096, (ino << 32) + 2499 * 4096, 4096, FIEMAP_EXTENT_LAST]
    assert res["fiemap_ten"] == 10
    assert res["fiemap_dir"] == ["err", errno.errorcode[errno.EOPNOTSUPP]]
    assert res["cfr"] == ["ok", 5 * 4096] and res["cfr_data"]
    assert res["cfr_unaligned"] == ["ok", 5000] and res["cfr_unaligned_data"]

    log = fake_mount.log()[before:]
    reqs = [e for e in log if "name" in e]
    assert all(r["pid"] == res["pid"] and r["src_fd"] == res["src"] for r in reqs)
    assert [(r["name"], r["src_off"], r["dst_off"], r["length"]) for r in reqs] == [
        ("user.daxfs.clone", 0, 0, 0),
        ("user.daxfs.clone", 4096, 4096, 8192),
        ("user.daxfs.dedupe", 0, 0, 8 * 4096),
        ("user.daxfs.dedupe", 0, 0, 8 * 4096),
        ("user.daxfs.dedupe", 0, 4096, 8 * 4096),
        ("user.daxfs.clone", 4096, 0, 5 * 4096),        # copy_file_range, aligned
    ]
    # FIEMAP: a full reply (2000) is followed by a second call from its end
    fiemaps = [e["fiemap"] for e in log if "fiemap" in e]
    assert fiemaps[:2] == [[0, U64, 0], [2000 * 4096, U64 - 2000 * 4096, 0]]


def test_mount_source_must_be_held_open(fake_mount):
    """The daemon refuses a source named by inode alone: the request's
    src_fd must be the caller's readable descriptor of that very file."""
    src = fake_mount.path / "src"
    st = os.stat(src)
    dst = os.open(fake_mount.path / "dst", os.O_RDWR)
    other = os.open(fake_mount.path / "small", os.O_RDONLY)
    wo = os.open(src, os.O_WRONLY)
    try:
        for fd in (-1, other, wo, 9999):
            value = control.encode_request(1, st.st_dev, st.st_ino, 0, 0, 0, src_fd=fd)
            with pytest.raises(OSError) as info:
                os.setxattr(dst, control.CLONE_NAME, value)
            assert info.value.errno == errno.EBADF, fd
        value = control.encode_request(1, st.st_dev + 1, st.st_ino, 0, 0, 0, src_fd=other)
        with pytest.raises(OSError) as info:
            os.setxattr(dst, control.CLONE_NAME, value)
        assert info.value.errno == errno.EXDEV
        for bad in (b"junk", value[:-1], b"\0" * 64):
            with pytest.raises(OSError) as info:
                os.setxattr(dst, control.CLONE_NAME, bad)
            assert info.value.errno == errno.EINVAL
        # a FIEMAP name the daemon cannot parse
        with pytest.raises(OSError) as info:
            os.getxattr(dst, b"user.daxfs.fiemap.01.1.0")
        assert info.value.errno == errno.EINVAL
    finally:
        for fd in (dst, other, wo):
            os.close(fd)


def test_mount_python_client(fake_mount):
    m = fake_mount.path
    src = os.open(m / "src", os.O_RDONLY)
    dst = os.open(m / "dst", os.O_RDWR)
    same = os.open(m / "same", os.O_RDONLY)
    diff = os.open(m / "diff", os.O_RDONLY)
    try:
        assert reflink_client.is_daxfs(src) and reflink_client.is_daxfs(dst)
        os.ftruncate(dst, 0)
        reflink_client.clone(src, dst, 8192, 0, 4096)
        assert os.pread(dst, 1 << 20, 0) == SRC_DATA[8192:12288]
        with pytest.raises(OSError) as info:
            reflink_client.clone(src, same)                     # read-only destination
        assert info.value.errno == errno.EBADF
        assert reflink_client.dedupe(src, 0, 4096, [(same, 0), (diff, 0), (same, 8192)]) == [
            DedupeResult(0, 4096), DedupeResult(1, 0), DedupeResult(0, 4096)]
        extents = reflink_client.fiemap(src)
        assert len(extents) == 2500 and extents[-1].flags & FIEMAP_EXTENT_LAST
        assert reflink_client.fiemap(src, 4096 * 5, 4096 * 2) == extents[5:7]
    finally:
        for fd in (src, dst, same, diff):
            os.close(fd)


def run_cli(*args, timeout=TIMEOUT):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "DAXFS_FAKE_XFS")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([PY, "-m", "daxfs.cli", *map(str, args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_mount_cli_reflink_and_dedupe(fake_mount):
    m = fake_mount.path
    proc = run_cli("reflink", m / "src", m / "new1", "--src-offset", "4k", "--length", "8K")
    assert proc.returncode == 0, proc.stderr
    assert (m / "new1").read_bytes() == SRC_DATA[4096:12288]
    proc = run_cli("reflink", "/etc/hostname", m / "dst")
    assert proc.returncode == 1
    assert proc.stderr == (f"daxfs reflink: cannot clone /etc/hostname into {m}/dst: the files "
                           "are on different mounts; SRC and DST must be on the same mount\n")
    proc = run_cli("dedupe", m / "src", m / "same", m / "diff", m / "missing",
                   "--length", 8 * 4096)
    assert proc.stdout.splitlines() == [f"{m}/same: {8 * 4096} bytes deduped", f"{m}/diff: differs"]
    assert proc.stderr == f"daxfs dedupe: cannot open {m}/missing: no such file or directory\n"
    assert proc.returncode == 1


def test_mount_exec_unmodified_tools(fake_mount):
    m = fake_mount.path
    before = len(fake_mount.requests())
    proc = run_cli("exec", "--", "cp", "--reflink=always", m / "src", m / "copy")
    assert proc.returncode == 0, proc.stderr
    assert (m / "copy").read_bytes() == SRC_DATA
    assert [r["name"] for r in fake_mount.requests()[before:]] == ["user.daxfs.clone"]
    if shutil.which("filefrag"):
        proc = run_cli("exec", "filefrag", "-v", m / "same")
        assert proc.returncode == 0, proc.stderr
        assert "shared" in proc.stdout and "last" in proc.stdout
    proc = run_cli("exec", "--", "sh", "-c", 'echo "$DAXFS_FAKE_XFS"; exit 7')
    assert proc.returncode == 7 and proc.stdout == "1\n"


# ======================================================== the commands (no mount)

def test_cli_errors_are_one_line(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"abc")
    proc = run_cli("reflink", tmp_path / "missing", tmp_path / "out")
    assert (proc.returncode, proc.stderr) == (
        1, f"daxfs reflink: cannot open {tmp_path}/missing for reading: "
           "no such file or directory\n")
    assert not (tmp_path / "out").exists()
    # cross-device (ext4 vs tmpfs): the kernel's own FICLONE answer
    proc = run_cli("reflink", src, "/dev/shm/daxfs-test-never-created")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"daxfs reflink: cannot clone {src} into ")
    assert "[Errno" not in proc.stderr
    assert not os.path.exists("/dev/shm/daxfs-test-never-created")   # created, then removed
    proc = run_cli("reflink", src, tmp_path)
    assert (proc.returncode, proc.stderr) == (
        1, f"daxfs reflink: cannot open {tmp_path} for writing: it is a directory\n")
    proc = run_cli("reflink", src)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run_cli("reflink", src, tmp_path / "x", "--length", "-5")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run_cli("dedupe", tmp_path / "missing", src)
    assert (proc.returncode, proc.stderr) == (
        1, f"daxfs dedupe: cannot open {tmp_path}/missing for reading: "
           "no such file or directory\n")
    proc = run_cli("exec")
    assert proc.returncode == 2 and proc.stderr.startswith("usage: daxfs exec")
    proc = run_cli("exec", "--", "/nonexistent/tool")
    assert (proc.returncode, proc.stderr) == (
        127, "daxfs exec: cannot run /nonexistent/tool: no such file or directory; "
             "is it installed and on PATH?\n")


def test_exec_environment(tmp_path):
    from daxfs.cli import exec as cmd_exec
    lib = cmd_exec.ensure_library()
    assert lib.exists()
    env = cmd_exec.environment(lib, {"LD_PRELOAD": "/x.so", "PATH": "/bin"})
    assert env == {"LD_PRELOAD": f"{lib}:/x.so", "PATH": "/bin", "DAXFS_FAKE_XFS": "1"}
    env = cmd_exec.environment(lib, {"DAXFS_FAKE_XFS": "0"})
    assert env == {"LD_PRELOAD": str(lib), "DAXFS_FAKE_XFS": "0"}
    proc = run_cli("exec", "--", PY, "-c",
                   "import os; print(os.environ['LD_PRELOAD'], os.environ['DAXFS_FAKE_XFS'])")
    assert proc.returncode == 0 and proc.stdout == f"{lib} 1\n"


def test_exec_build_failure_is_one_line(tmp_path, monkeypatch):
    from daxfs.cli import exec as cmd_exec
    broken = tmp_path / "preload"
    broken.mkdir()
    (broken / "Makefile").write_text("all:\n\t@echo 'x.c:1: error: broken on purpose' >&2; exit 1\n")
    monkeypatch.setattr(cmd_exec, "PRELOAD_DIR", broken)
    monkeypatch.setattr(cmd_exec, "LIBRARY", broken / "libdaxfs_preload.so")
    with pytest.raises(cmd_exec.BuildError) as info:
        cmd_exec.ensure_library()
    assert "broken on purpose" in str(info.value) and "\n" not in str(info.value)
    assert cmd_exec.main(["--", "true"]) == 1
