"""A commit whose writes fail is fatal (issue 17.4).

The image lives on a file system that can be made to fail: the pyfuse3
passthrough peer with --fail-when, whose writes and fsyncs answer EIO while
a flag file exists (a disk going bad under the image).  Files made durable
by fsync before the failure survive it; the fsync that meets the failure
reports it to its caller, and so does everything after it (the filesystem
is shut down, as XFS shuts down on a log I/O error, never retrying behind
the caller's back); after unmount, `daxfs check` finds the image clean and
everything an fsync reported durable is there.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, check_image, daxfs, mount_image
from daxfs import host

pytestmark = pytest.mark.timeout(300)


def _fsync_write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.fixture
def failing_disk(tmp_path, mount_root):
    """A directory on a file system whose writes fail while `flag` exists."""
    src, mnt, flag = tmp_path / "disk", mount_root / "disk", tmp_path / "fail"
    src.mkdir()
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "peers" / "passthrough.py"),
                             str(src), str(mnt), "--fail-when", str(flag)])
    try:
        deadline = time.monotonic() + 30
        while host.mount_at(mnt) is None or host.mount_at(mnt).fstype != "fuse.passthrough":
            assert proc.poll() is None and time.monotonic() < deadline, "no passthrough mount"
            time.sleep(0.05)
        yield mnt, flag
    finally:
        flag.unlink(missing_ok=True)
        host.force_unmount(mnt, [proc.pid], 30)
        proc.wait(timeout=30)


def test_a_failed_commit_shuts_down_and_loses_nothing_fsynced(failing_disk, mount_root, tmp_path):
    disk, flag = failing_disk
    img = disk / "daxfs.img"
    res = daxfs("mkfs", img, "--size", "64M")
    assert res.returncode == 0, res.stderr
    mnt = mount_root / "dax"
    mnt.mkdir()
    durable = {f"f{i}": os.urandom(5000 + i) for i in range(5)}
    with mount_image(img, mnt, log=tmp_path / "daemon.log", check_log=False) as m:
        for name, data in durable.items():
            _fsync_write(m / name, data)
        flag.write_text("fail")
        # a data write the host refuses fails alone (EIO), nothing is latched
        with pytest.raises(OSError) as e:
            _fsync_write(m / "late", os.urandom(20000))
        assert e.value.errno == 5
        # a commit the host refuses: the fsync that needed it reports EIO...
        fd = os.open(m / "meta-only", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            with pytest.raises(OSError) as e:
                os.fsync(fd)
            assert e.value.errno == 5
        finally:
            os.close(fd)
        # ...and the filesystem is shut down: every call fails, also once
        # the disk works again (nothing is retried behind the caller's back)
        for _ in range(3):
            with pytest.raises(OSError) as e:
                os.listdir(m)
            assert e.value.errno == 5
        flag.unlink()
        with pytest.raises(OSError) as e:
            os.listdir(m)           # (a READDIR always reaches the daemon)
        assert e.value.errno == 5
    log = (tmp_path / "daemon.log").read_text()
    assert "could not be written" in log and "shut down" in log
    check_image(img)
    with mount_image(img, mnt) as m:
        for name, data in durable.items():
            assert (m / name).read_bytes() == data
    check_image(img)
