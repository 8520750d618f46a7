"""O_DIRECT writes and the kernel's page cache, on a real mount.

An asynchronous O_DIRECT write (io_submit) racing buffered readers of the
same file (xfstests generic/451): once the write has completed, a buffered
read, through a new or an already open descriptor, must return the bytes
written, as on a kernel filesystem.  Linux 6.18's FUSE drops the cached
pages after a synchronous direct write but not after an asynchronous one,
so daxfs does it (daxfs/fuse/operations.py, "Direct writes").  Without
that, this test finds stale pages a few times per thousand rounds.
"""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
from pathlib import Path

import pytest

from support.aio import AioContext

SIZE = 655360            # generic/451's file size
ROUNDS = 2000
READERS = 2
READAHEAD_KB = 128       # the kernel's default (daxfs mounts ask for 1 MiB, which hides the race more)


def _set_readahead(mnt: Path, kb: int) -> None:
    dev = os.stat(mnt).st_dev
    Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb").write_text(f"{kb}\n")


@pytest.mark.timeout(300)
def test_async_direct_writes_racing_buffered_readers(mounted):
    path = mounted / "dio"
    _set_readahead(mounted, READAHEAD_KB)
    patterns = []
    for byte in (0x55, 0xAA):
        buf = mmap.mmap(-1, SIZE)            # page-aligned, as O_DIRECT wants
        buf.write(bytes([byte]) * SIZE)
        patterns.append(buf)
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o600)
    os.ftruncate(fd, SIZE)
    assert os.pwrite(fd, patterns[0], 0) == SIZE
    os.fsync(fd)
    os.close(fd)
    # buffered readers, as generic/451 runs them: xfs_io opening the file
    # anew for every read
    loop = f"while :; do xfs_io -f -c 'pread 0 {SIZE}' {path} >/dev/null 2>&1; done"
    readers = [subprocess.Popen(["sh", "-c", loop], start_new_session=True)
               for _ in range(READERS)]
    held = os.open(path, os.O_RDONLY)
    aio = AioContext()
    stale = []
    try:
        for i in range(1, ROUNDS + 1):
            want = patterns[i % 2]
            fd = os.open(path, os.O_RDWR | os.O_DIRECT)
            try:
                assert aio.pwrite(fd, want, 0) == SIZE
            finally:
                os.close(fd)
            fd = os.open(path, os.O_RDONLY)
            try:
                fresh = os.pread(fd, SIZE, 0)
            finally:
                os.close(fd)
            kept = os.pread(held, SIZE, 0)
            for how, got in (("a new descriptor", fresh), ("a descriptor kept open", kept)):
                if got != want[:]:
                    old = sum(1 for k in range(0, SIZE, 4096) if got[k] != want[k])
                    stale.append(f"round {i}, {how}: {old} of {SIZE // 4096} pages"
                                 " hold the bytes from before the write")
    finally:
        for p in readers:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        os.close(held)
        aio.close()
    assert not stale, f"{len(stale)} stale reads after a completed direct write:\n" + \
        "\n".join(stale[:10])
