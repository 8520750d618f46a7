"""Allocation that stays contiguous as the image ages (daxfs/engine/alloc.py):
best fit by size near the file's last block, and speculative preallocation
for appending files (free blocks held in memory, never on the image).

Engine tests (no mount) end in a clean check; one test kills a process
holding blocks for an appending file and checks the image; the last one
appends through the kernel on a mount."""

import os
import random
import signal
import stat
import subprocess
import sys
import time

import pytest

from conftest import MiB, ROOT, check_image, make_image, mount_image
from daxfs.control import client as reflink_client
from daxfs.engine.errors import NoSpace
from daxfs.engine.format import BLOCK_SIZE as BS
from daxfs.engine.fs import Filesystem
from engine_helpers import assert_clean, make_fs

CHUNK = 64 * 1024                 # one append: 16 blocks


def new_file(fs, name: bytes) -> int:
    return fs.mknod(1, name, stat.S_IFREG | 0o644, 0, 0).ino


def extents(fs, ino: int) -> int:
    return len(fs.fiemap(ino, 0, 1 << 50))


def size_index_agrees(fs) -> None:
    """The allocator's index of free extents by size is the free-space tree's."""
    a = fs.vol.alloc
    if a._by_size is not None:
        assert a._by_size == sorted((n, s) for s, n in a.free_tree.scan())


def age(fs, small: int = 1500, big_blocks: int = 4096) -> None:
    """Small files of 1-16 blocks, every other one unlinked, then two big
    files written and unlinked: free space is many small holes and a few
    large extents (the sequence that gave a new file hundreds of extents)."""
    rng = random.Random(20)
    names = []
    for i in range(small):
        name = b"s%d" % i
        ino = new_file(fs, name)
        fs.write(ino, 0, b"s" * (rng.choice((1, 2, 3, 5, 8, 16)) * BS))
        fs.release(ino)
        names.append((name, ino))
    fs.commit()
    for name, ino in names[::2]:
        fs.unlink(1, name)
        fs.forget(ino)
    fs.commit()
    for n in (big_blocks // 4, big_blocks):
        ino = new_file(fs, b"big")
        for off in range(0, n * BS, MiB):
            fs.write(ino, off, b"b" * MiB)
        fs.release(ino)
        fs.unlink(1, b"big")
        fs.forget(ino)
        fs.commit()


def append(fs, ino: int, n: int, chunk: int = CHUNK) -> bytes:
    data = random.Random(ino).randbytes(n * chunk)
    for i in range(n):
        size = fs.getattr(ino).size
        assert fs.write(ino, size, data[i * chunk:(i + 1) * chunk]) == chunk
    return data


def test_aged_volume_appends_stay_contiguous(tmp_path):
    fs = make_fs(tmp_path / "a.img", size=96 * MiB)
    age(fs)
    assert fs.vol.alloc.free_tree.count > 300        # (free space is fragmented)
    a = new_file(fs, b"a")
    data = append(fs, a, 256)                  # 256 appends of 64 KiB
    assert extents(fs, a) <= 4
    # a plain copy, made the same way, lines up extent for extent
    b = new_file(fs, b"b")
    for off in range(0, len(data), CHUNK):
        fs.write(b, off, data[off:off + CHUNK])
    assert extents(fs, b) <= 4
    assert fs.read(a, 0, len(data)) == data == fs.read(b, 0, len(data))
    size_index_agrees(fs)
    assert_clean(fs)
    fs.close()


def test_two_files_appending_in_turn_stay_contiguous(tmp_path):
    fs = make_fs(tmp_path / "t.img", size=64 * MiB)
    a, b = new_file(fs, b"a"), new_file(fs, b"b")
    for i in range(128):
        for ino in (a, b):
            fs.write(ino, i * CHUNK, bytes([i % 251]) * CHUNK)
    assert extents(fs, a) <= 6 and extents(fs, b) <= 6
    assert_clean(fs)
    fs.close()


def test_best_fit_takes_the_smallest_hole_that_holds_the_file(tmp_path):
    fs = make_fs(tmp_path / "h.img", size=32 * MiB)
    # files of 3, 8 and 20 blocks between keepers; freeing them leaves
    # holes of exactly those sizes
    sizes = (20, 3, 8)
    for i, n in enumerate(sizes):
        new = new_file(fs, b"hole%d" % i)
        fs.write(new, 0, b"h" * (n * BS))
        keep = new_file(fs, b"keep%d" % i)
        fs.write(keep, 0, b"k" * BS)
    fs.commit()
    holes = {n: fs.filemap.extents(fs.lookup(1, b"hole%d" % i).ino, 0, n)[0][1]
             for i, n in enumerate(sizes)}
    for i, n in enumerate(sizes):
        ino = fs.lookup(1, b"hole%d" % i).ino
        fs.unlink(1, b"hole%d" % i)
        fs.forget(ino)
    fs.commit()
    f = new_file(fs, b"eight")
    fs.write(f, 0, b"e" * (8 * BS))
    assert fs.filemap.extents(f, 0, 8) == [(0, holes[8], 8)]
    g = new_file(fs, b"two")
    fs.write(g, 0, b"t" * (2 * BS))
    assert fs.filemap.extents(g, 0, 2) == [(0, holes[3], 2)]
    assert_clean(fs)
    fs.close()


def test_held_blocks_are_free_and_released(tmp_path):
    fs = make_fs(tmp_path / "r.img", size=64 * MiB)
    alloc = fs.vol.alloc
    a = new_file(fs, b"a")
    append(fs, a, 16)                           # 1 MiB
    held = alloc.held(a)
    _, p, n = fs.filemap.extents(a, 0, 256)[-1]
    assert held is not None and held[0] == p + n  # right after the file's last block
    assert held[1] - held[0] >= 256               # as many blocks as the file has
    # held blocks are free blocks: df counts them, check finds no leak
    free = fs.statfs().free_blocks
    rec = alloc.free_tree.last_le((held[0],))
    assert rec[0] <= held[0] and rec[0] + rec[1] >= held[1]
    assert_clean(fs)
    # another file goes elsewhere while anything else fits
    b = new_file(fs, b"b")
    fs.write(b, 0, b"b" * MiB)
    for _, p, n in fs.filemap.extents(b, 0, 256):
        assert p + n <= held[0] or p >= held[1]
    # released at last close: nothing held, nothing changed on the image
    fs.release(a)
    assert alloc.held(a) is None
    assert fs.statfs().free_blocks == free - 256
    # truncate and unlink release too
    append(fs, a, 4)
    assert alloc.held(a) is not None
    fs.setattr(a, size=BS)
    assert alloc.held(a) is None
    append(fs, a, 20, chunk=BS * 16)
    assert alloc.held(a) is not None
    fs.unlink(1, b"a")
    fs.forget(a)
    assert alloc.held(a) is None
    size_index_agrees(fs)
    assert_clean(fs)
    fs.close()
    check = Filesystem.open(str(tmp_path / "r.img"))
    assert check.vol.alloc.held(a) is None      # (an unmount forgets them all)
    check.close()


def test_nearly_full_device_takes_held_blocks(tmp_path):
    """Holding never causes an ENOSPC that would not happen otherwise: a
    file that needs the held blocks gets them."""
    fs = make_fs(tmp_path / "f.img", size=64 * MiB)
    alloc = fs.vol.alloc
    a = new_file(fs, b"a")
    append(fs, a, 64)                   # 4 MiB: it holds more than the reserve
    held = alloc.held(a)
    assert held is not None and held[1] - held[0] > alloc.reserve
    fs.commit()
    # everything an ordinary allocation may take, in one file
    b = new_file(fs, b"b")
    want = alloc.available() - 64      # (room for the tree nodes the file's extents need)
    off = 0
    while off < want * BS:
        n = min(MiB, want * BS - off)
        assert fs.write(b, off, b"x" * n) == n
        off += n
    assert any(p < held[1] and p + n > held[0] for _, p, n in fs.filemap.extents(b, 0, want))
    assert alloc.held(a) is None                # (a cannot continue in place now)
    try:                                        # the device is full now
        got = fs.write(b, off, b"y" * (2 * MiB))
    except NoSpace:
        got = 0
    assert got < 2 * MiB and alloc.available() < 64
    # a is still appendable from the reserve-free space after b gives some back
    fs.setattr(b, size=0)
    fs.commit()
    append(fs, a, 4)
    size_index_agrees(fs)
    assert_clean(fs)
    fs.close()


def test_rolled_back_operation_keeps_the_size_index(tmp_path):
    fs = make_fs(tmp_path / "b.img", size=16 * MiB)
    a = new_file(fs, b"a")
    fs.write(a, 0, b"a" * BS)
    fs.vol.alloc._sizes()
    with pytest.raises(NoSpace):
        while True:                            # ENOSPC rolls back a whole write
            fs.write(a, fs.getattr(a).size, b"z" * (4 * MiB))
    size_index_agrees(fs)
    fs.setattr(a, size=0)
    size_index_agrees(fs)
    append(fs, a, 8)
    size_index_agrees(fs)
    assert_clean(fs)
    fs.close()


CHILD = """
import os, signal, stat, sys
sys.path.insert(0, {root!r})
from daxfs.engine.fs import Filesystem
fs = Filesystem.open({image!r})
ino = fs.mknod(1, b"a", stat.S_IFREG | 0o644, 0, 0).ino
for i in range(32):
    fs.write(ino, i * 65536, bytes([i]) * 65536)
    if i == 15:
        fs.commit()
assert fs.vol.alloc.held(ino) is not None
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_crash_with_blocks_held(tmp_path):
    """A process killed while it holds blocks for an appending file leaves
    an image check finds clean (the held blocks were never anything but
    free on the image)."""
    image = make_image(tmp_path / "c.img", 32 * MiB)
    res = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), image=str(image))],
                         capture_output=True, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr.decode()[-2000:]
    check_image(image)
    fs = Filesystem.open(str(image))
    a = fs.lookup(1, b"a")
    assert a.size >= 16 * 65536
    assert fs.read(a.ino, 15 * 65536, 1) == bytes([15])
    append(fs, a.ino, 8)                        # appends go on after the crash
    assert_clean(fs)
    fs.close()


def test_appends_through_the_kernel_are_contiguous(tmp_path, mnt):
    image = make_image(tmp_path / "k.img", 256 * MiB)
    with mount_image(image, mnt) as m:
        # age it: small files, every other one unlinked, a big file deleted
        rng = random.Random(3)
        small = m / "small"
        small.mkdir()
        for i in range(600):
            (small / f"f{i}").write_bytes(b"s" * (rng.choice((1, 3, 8, 16)) * BS))
        for i in range(0, 600, 2):
            (small / f"f{i}").unlink()
        (m / "big").write_bytes(b"b" * (96 * MiB))
        (m / "big").unlink()
        deadline = time.monotonic() + 60
        last = None
        while time.monotonic() < deadline:      # the unlinked file freed and committed
            fd = os.open(m, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            free = os.statvfs(m).f_bfree
            if free == last:
                break
            last = free
            time.sleep(0.2)
        block = os.urandom(MiB)
        fd = os.open(m / "a", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for _ in range(64):
                assert os.write(fd, block) == MiB
            os.fsync(fd)
            ext = reflink_client.fiemap(fd)
        finally:
            os.close(fd)
        assert sum(e.length for e in ext) == 64 * MiB
        assert len(ext) <= 4, [(e.logical, e.physical, e.length) for e in ext]
    check_image(image)
