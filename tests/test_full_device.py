"""A full device through a real mount (a 32 MiB image).

Filled until write(2) says ENOSPC, the filesystem must refuse everything
that needs new space -- a CoW write into a shared extent, a clone, a
dedupe, create, mkdir, setxattr, link -- with ENOSPC and leave nothing half
done (contents and sharing unchanged, `daxfs check` clean), while unlink
and rmdir always succeed (that is what the allocator's reserve is for).
Deleting frees the space at once (statvfs) and everything works again.
"""

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import MiB, check_image, make_image, mount_image
from daxfs.control import client as rc
from daxfs.engine.attrs import FIEMAP_EXTENT_SHARED

BS = 4096
pytestmark = pytest.mark.timeout(300)


def fill(path: Path) -> int:
    """Write `path` until ENOSPC (big chunks, then blocks, then bytes)."""
    done = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (MiB, BS, 1):
            buf = b"\xee" * chunk
            while True:
                try:
                    n = os.write(fd, buf)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
                done += n
                if n < chunk:
                    break
    finally:
        os.close(fd)
    return done


def refill(m: Path) -> None:
    """Fill again (what the last unlink freed) until the device is full: no
    blocks available.  The kernel forgets an unlinked inode a moment after
    the unlink; only then are its blocks freed, so fill until it has."""
    for _ in range(50):
        fill(m / "fill")
        if os.statvfs(m).f_bavail == 0:
            return
        time.sleep(0.1)
    pytest.fail(f"still {os.statvfs(m).f_bavail} blocks available after filling")


def enospc(fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno == errno.ENOSPC, f"{fn.__name__}: {e.value}"


def shared(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return any(e.flags & FIEMAP_EXTENT_SHARED for e in rc.fiemap(fd))
    finally:
        os.close(fd)


def opened(path: Path, flags=os.O_RDWR) -> int:
    return os.open(path, flags)


def test_full_device(tmp_path, mnt):
    image = make_image(tmp_path / "full.img", 32 * MiB)
    data = os.urandom(16 * BS + 1000)            # ends in a partial block
    other = os.urandom(BS)

    # ---- phase 1: set up, fill, everything that needs space fails
    with mount_image(image, mnt) as m:
        (m / "A").write_bytes(data)
        (m / "D").write_bytes(data)               # same bytes, own blocks
        (m / "C").write_bytes(b"")
        a, b = opened(m / "A", os.O_RDONLY), os.open(m / "B", os.O_RDWR | os.O_CREAT, 0o644)
        rc.clone(a, b)
        os.close(b)
        os.setxattr(m / "A", "user.keep", b"kept")
        for i in range(4):
            (m / f"s{i}").write_bytes(os.urandom(5000))
            (m / f"e{i}").mkdir()
        (m / "tree").mkdir()
        for i in range(20):
            (m / "tree" / f"f{i}").write_bytes(os.urandom(3000))
        assert shared(m / "A") and shared(m / "B") and not shared(m / "D")

        written = fill(m / "fill")
        assert written > 20 * MiB
        st = os.statvfs(m)
        assert st.f_bavail == 0, st

        b, c, d = opened(m / "B"), opened(m / "C"), opened(m / "D")
        try:
            # a CoW write into the shared extent needs a new block
            enospc(os.pwrite, b, other, 4 * BS)
            # clone (whole file, and a block range over existing blocks)
            enospc(rc.clone, a, c)
            enospc(rc.clone, a, d, 0, 0, 4 * BS)
            # dedupe: the destination's status is -ENOSPC, nothing shared
            res = rc.dedupe(a, 0, 16 * BS, [(d, 0)])
            assert res[0].status == -errno.ENOSPC, res
        finally:
            for fd in (b, c, d):
                os.close(fd)
        enospc(os.open, m / "new", os.O_CREAT | os.O_WRONLY, 0o644)
        enospc(os.mkdir, m / "newdir")
        enospc(os.setxattr, m / "A", "user.more", b"x" * 3000)
        enospc(os.link, m / "A", m / "A.link")

        # nothing half done
        assert not (m / "new").exists() and not (m / "newdir").exists()
        assert not (m / "A.link").exists() and os.stat(m / "A").st_nlink == 1
        assert sorted(os.listxattr(m / "A")) == ["user.keep"]
        for name in ("A", "B", "D"):
            assert (m / name).read_bytes() == data, name
        assert (m / "C").read_bytes() == b""
        assert shared(m / "A") and shared(m / "B") and not shared(m / "D")
        os.close(a)
    check_image(image)

    # ---- phase 2: the same after a remount; unlink and rmdir on a full device
    with mount_image(image, mnt) as m:
        for name in ("A", "B", "D"):
            assert (m / name).read_bytes() == data, name
        assert (m / "C").read_bytes() == b""
        assert os.getxattr(m / "A", "user.keep") == b"kept"
        assert os.statvfs(m).f_bavail == 0
        for i in range(4):
            refill(m)
            os.unlink(m / f"s{i}")
            refill(m)
            os.rmdir(m / f"e{i}")
        refill(m)
        for i in range(20):
            os.unlink(m / "tree" / f"f{i}")
        os.rmdir(m / "tree")
        assert sorted(p.name for p in m.iterdir() if not p.name.startswith("fill")) == \
            ["A", "B", "C", "D"]

        # deleting frees the space: when the kernel forgets the inode, a
        # moment after unlink(2) returns (FUSE sends FORGET asynchronously)
        before = os.statvfs(m).f_bavail
        for p in list(m.glob("fill*")):
            p.unlink()
        deadline = time.monotonic() + 10
        while (os.statvfs(m).f_bavail - before) * BS <= 20 * MiB \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        after = os.statvfs(m).f_bavail
        assert (after - before) * BS > 20 * MiB, (before, after)

        # and everything works again
        big = os.urandom(8 * MiB)
        (m / "new").write_bytes(big)
        (m / "newdir").mkdir()
        os.setxattr(m / "A", "user.more", b"x" * 3000)
        os.link(m / "A", m / "A.link")
        a, b, c, d = (opened(m / "A", os.O_RDONLY), opened(m / "B"), opened(m / "C"),
                      opened(m / "D"))
        try:
            rc.clone(a, c)
            res = rc.dedupe(a, 0, 16 * BS, [(d, 0)])
            assert res[0].status == 0 and res[0].bytes_deduped == 16 * BS, res
            assert os.pwrite(b, other, 4 * BS) == BS
        finally:
            for fd in (a, b, c, d):
                os.close(fd)
        assert (m / "new").read_bytes() == big
    check_image(image)

    # ---- phase 3: what the second phase did is there
    cowed = data[:4 * BS] + other + data[5 * BS:]
    with mount_image(image, mnt) as m:
        assert (m / "A").read_bytes() == data
        assert (m / "A.link").read_bytes() == data
        assert (m / "B").read_bytes() == cowed
        assert (m / "C").read_bytes() == data
        assert (m / "D").read_bytes() == data
        assert shared(m / "A") and shared(m / "C") and shared(m / "D")
        assert os.getxattr(m / "A", "user.more") == b"x" * 3000
    check_image(image)


@pytest.fixture
def small_host(tmp_path):
    """A 24 MiB tmpfs: a host filesystem smaller than the image on it."""
    d = tmp_path / "host"
    d.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(d)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, f"cannot mount a tmpfs: {res.stderr}"
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True, timeout=30)


def test_full_host_filesystem(small_host, mnt):
    """Images are sparse: a 64 MiB image on a 24 MiB host filesystem runs
    out of host space before its own.  Every block is given host space
    (fallocate) before anything is stored in it, so a write gets ENOSPC, as
    on a full device, where it used to kill the daemon with SIGBUS when a
    store through the mapping met a hole the host could not fill (and
    `daxfs check` with it, replaying the log).  The mount keeps working,
    nothing written before is lost, and once the host has room again, so
    has the filesystem."""
    img = make_image(small_host / "daxfs.img", 64 * MiB)
    filler = small_host / "filler"
    filler.write_bytes(b"f" * 4 * MiB)
    with mount_image(img, mnt) as m:
        (m / "keep").write_bytes(b"kept" * 1000)
        done = fill(m / "big")                          # (asserts the error is ENOSPC)
        assert done < 24 * MiB
        st = os.statvfs(m)
        assert st.f_bavail * st.f_frsize > 24 * MiB     # the image itself is not full
        try:
            (m / "small").write_bytes(b"x" * 100)       # may find room in backed blocks
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        os.unlink(m / "big")                            # (frees image blocks, not host space)
        filler.unlink()
        (m / "after").write_bytes(b"y" * MiB)
        assert (m / "keep").read_bytes() == b"kept" * 1000
    check_image(img)
