"""Edges of the engine: very fragmented files on the smallest device (long
operations must step within the log), full device rollback, big sparse
offsets, names and xattr limits."""

import stat

import pytest

from daxfs.engine.errors import (AttributeTooBig, FileTooBig, NameTooLong, NoSpace, NotEmpty,
                                 InvalidArgument, IsADirectory, NotADirectory, Exists)
from daxfs.engine.format import BLOCK_SIZE as BS
from engine_helpers import assert_clean, make_fs


def test_fragmented_files_on_the_smallest_device(tmp_path):
    fs = make_fs(tmp_path / "s.img", size=16 << 20)
    a = fs.mknod(1, b"a", stat.S_IFREG | 0o644, 0, 0).ino
    b = fs.mknod(1, b"b", stat.S_IFREG | 0o644, 0, 0).ino
    n = 1300
    for i in reversed(range(n)):     # interleaved, last block first: every extent is one block
        fs.write(a, i * BS, bytes([i % 251]) * BS)
        fs.write(b, i * BS, bytes([(i + 7) % 251]) * BS)
    assert len(fs.fiemap(a, 0, n * BS)) > n // 2
    assert_clean(fs)
    c = fs.mknod(1, b"c", stat.S_IFREG | 0o644, 0, 0).ino
    fs.clone_range(a, 0, c, 0, 0)            # clone ~1300 extents
    assert fs.read(c, 5 * BS, 3) == bytes([5]) * 3
    assert_clean(fs)
    fs.setattr(a, size=BS // 2)              # truncate ~1300 extents
    fs.unlink(1, b"b")
    fs.forget(b)                             # free ~1300 extents
    assert fs.read(c, 1000 * BS, 2) == bytes([1000 % 251]) * 2
    assert_clean(fs)
    fs.close()


def test_enospc_rolls_back_and_frees(tmp_path):
    fs = make_fs(tmp_path / "f.img", size=16 << 20)
    a = fs.mknod(1, b"a", stat.S_IFREG | 0o644, 0, 0).ino
    chunk = b"z" * (1 << 20)
    off = 0
    with pytest.raises(NoSpace):
        while True:
            n = fs.write(a, off, chunk)
            off += n
            if n < len(chunk):
                fs.write(a, off, chunk)
    size = fs.getattr(a).size
    assert size == off and fs.read(a, 0, 10) == b"z" * 10
    with pytest.raises(NoSpace):
        fs.mknod(1, b"x", stat.S_IFREG | 0o644, 0, 0)
    with pytest.raises(NoSpace):
        fs.mkdir(1, b"d", 0o755, 0, 0)
    with pytest.raises(NoSpace):
        fs.setxattr(a, b"user.big", b"v" * 5000)
    assert_clean(fs)
    fs.unlink(1, b"a")                       # always succeeds on a full device
    fs.forget(a)
    fs.commit()
    assert fs.statfs().avail_blocks > 3000
    x = fs.mknod(1, b"x", stat.S_IFREG | 0o644, 0, 0).ino
    fs.write(x, 0, chunk)
    assert_clean(fs)
    fs.close()


def test_posix_errors(tmp_path):
    fs = make_fs(tmp_path / "e.img")
    d = fs.mkdir(1, b"d", 0o755, 0, 0).ino
    f = fs.mknod(d, b"f", stat.S_IFREG | 0o644, 0, 0).ino
    with pytest.raises(NameTooLong):
        fs.mknod(1, b"n" * 256, stat.S_IFREG | 0o644, 0, 0)
    fs.mknod(1, b"n" * 255, stat.S_IFREG | 0o644, 0, 0)
    with pytest.raises(Exists):
        fs.mkdir(1, b"d", 0o755, 0, 0)
    with pytest.raises(NotEmpty):
        fs.rmdir(1, b"d")
    with pytest.raises(NotADirectory):
        fs.rmdir(d, b"f")
    with pytest.raises(IsADirectory):
        fs.unlink(1, b"d")
    with pytest.raises(InvalidArgument):
        fs.rename(1, b"d", d, b"sub")        # into itself
    with pytest.raises(AttributeTooBig):
        fs.setxattr(f, b"user.x", b"v" * 65537)
    fs.setxattr(f, b"user.x", b"v" * 65536)
    assert fs.getxattr(f, b"user.x") == b"v" * 65536
    with pytest.raises(FileTooBig):
        fs.write(f, (1 << 63) - 1, b"abc")   # at the largest size: EFBIG
    g = fs.create(1, b"g", 0o644, 0, 0).ino
    assert fs.write(g, (1 << 63) - 2, b"abc") == 1     # short, as generic_write_checks
    assert fs.getattr(g).size == (1 << 63) - 1
    fs.unlink(1, b"g")
    big = 5 << 30                            # beyond 4 GiB, sparse
    fs.write(f, big, b"tail")
    assert fs.getattr(f).size == big + 4 and fs.getattr(f).blocks == 1
    assert fs.read(f, big - 2, 6) == b"\0\0tail"
    fs.rename(1, b"d", 1, b"d2", 1)          # RENAME_NOREPLACE to a free name
    e = fs.mkdir(1, b"e", 0o755, 0, 0).ino
    fs.rename(1, b"d2", 1, b"e", 2)          # RENAME_EXCHANGE
    assert fs.lookup(1, b"e").ino == d and fs.lookup(1, b"d2").ino == e
    assert_clean(fs)
    fs.close()


def test_space_freed_just_now_is_reusable(tmp_path):
    """Blocks freed by an uncommitted transaction are busy; an allocation
    that needs them commits and retries instead of failing with ENOSPC."""
    fs = make_fs(tmp_path / "b.img", size=32 << 20)
    a = fs.mknod(1, b"fill", stat.S_IFREG | 0o644, 0, 0).ino
    off = 0
    chunk = b"f" * (1 << 20)
    try:
        while True:
            n = fs.write(a, off, chunk)
            off += n
    except NoSpace:
        pass
    fs.commit()
    fs.unlink(1, b"fill")
    fs.forget(a)
    b = fs.mknod(1, b"after", stat.S_IFREG | 0o644, 0, 0).ino
    fs.write(b, 0, b"y" * (off // 2))
    assert fs.read(b, 0, 3) == b"yyy"
    assert_clean(fs)
    fs.close()


def test_read_only_open_of_a_64_gib_image(tmp_path):
    """A read-only open maps the image private (to apply a pending log in
    memory) without reserving its size: a 64 GiB image opens read-only on
    a machine with less memory than that, and sees the last commit."""
    from daxfs.engine.fs import Filesystem
    from daxfs.engine.mkfs import mkfs
    path = str(tmp_path / "big.img")
    mkfs(path, 64 << 30)
    fs = Filesystem.open(path)
    ino = fs.mknod(1, b"x", stat.S_IFREG | 0o644, 0, 0).ino
    fs.write(ino, 0, b"seen")
    fs.close()
    ro = Filesystem.open(path, readonly=True)
    try:
        assert ro.read(ro.lookup(1, b"x").ino, 0, 4) == b"seen"
    finally:
        ro.close()


@pytest.mark.parametrize("defer", [True, False])
def test_write_after_rm_gets_the_space_back_whole(tmp_path, defer):
    """A write that runs out of space while unlinked inodes wait to be
    freed (the daemon defers them, as XFS's inodegc) or freed blocks wait
    for a commit frees and commits, then retries whole, as XFS retries a
    buffered write after flushing inodegc.  It came back short instead,
    once it had stored something (xfstests generic/102: write 800 MiB,
    rm, write 800 MiB again on a 1 GiB filesystem)."""
    fs = make_fs(tmp_path / "c.img", size=64 << 20)
    fs.defer_inactive = defer
    data = b"d" * (40 << 20)
    for i in range(3):
        ino = fs.mknod(1, b"f", stat.S_IFREG | 0o644, 0, 0).ino
        assert fs.write(ino, 0, data) == len(data), i
        fs.unlink(1, b"f")
        fs.forget(ino)
    assert_clean(fs)
    fs.close()
