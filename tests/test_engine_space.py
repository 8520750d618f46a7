"""The engine's fallocate (unwritten extents, punch, zero range),
SEEK_DATA/SEEK_HOLE and copy_range, without a mount.  Every test ends in a
clean check: extent maps, rmap, refcount and free space agree."""

import random
import stat

import pytest

from daxfs.engine import fs as fsmod
from daxfs.engine.attrs import FIEMAP_EXTENT_SHARED, FIEMAP_EXTENT_UNWRITTEN
from daxfs.engine.errors import (FileTooBig, IllegalSeek, InvalidArgument, IsADirectory,
                                 NoData, NoDevice, NoSpace, NotSupported, ReadOnly)
from daxfs.engine.format import BLOCK_SIZE as BS, FEAT_UNWRITTEN, MAX_FILE_BYTES
from daxfs.engine.fs import (FALLOC_FL_KEEP_SIZE as KEEP, FALLOC_FL_PUNCH_HOLE as PUNCH,
                             FALLOC_FL_ZERO_RANGE as ZERO, Filesystem)
from engine_helpers import assert_clean, make_fs

MiB = 1 << 20


def new_file(fs, name=b"f", data=b""):
    ino = fs.mknod(1, name, stat.S_IFREG | 0o644, 0, 0).ino
    if data:
        fs.write(ino, 0, data)
    return ino


def shared_pair(fs, seed: int, nblocks: int, share: int = 0):
    """(data, a, b): file a holding `nblocks` random blocks, and file b
    sharing a's first `share` bytes (0: all of it)."""
    data = bytes(random.Random(seed).randbytes(nblocks * BS))
    a = new_file(fs, b"a", data)
    b = new_file(fs, b"b")
    fs.clone_range(a, 0, b, 0, share)
    return data, a, b


def refcounts(fs, ino, off, n):
    """The owner count of each block behind [off, off+n) of the file."""
    out = []
    for _, p, k in fs.filemap.extents(ino, off // BS, (off + n) // BS):
        out += [rc for _, length, rc in fs.vol.refcount.segments(p, k) for _ in range(length)]
    return out


def state(fs, ino):
    """What must not change when an operation fails."""
    a = fs.getattr(ino)
    return (a.size, a.blocks, fs.fiemap(ino, 0, 1 << 40), fs.statfs().free_blocks,
            fs.read(ino, 0, a.size))


def phys_of(extents, blk):
    """The device offset of file block `blk` in a FIEMAP answer."""
    for e in extents:
        if e.logical <= blk * BS < e.logical + e.length:
            return e.physical + blk * BS - e.logical
    return None


# ---- fallocate ----------------------------------------------------------------

def test_preallocation_reads_zeros_and_costs_no_stores(tmp_path):
    fs = make_fs(tmp_path / "p.img", size=64 * MiB)
    # blocks that held another file's bytes, then freed
    old = new_file(fs, b"old", b"S" * (8 * MiB))
    fs.unlink(1, b"old")
    fs.forget(old)
    fs.commit()
    f = new_file(fs, b"f", b"head")
    free = fs.statfs().free_blocks
    fs.fallocate(f, 0, 0, 8 * MiB)
    a = fs.getattr(f)
    assert a.size == 8 * MiB and a.blocks == 2048
    assert fs.statfs().free_blocks == free - 2047
    assert fs.read(f, 0, 8 * MiB) == b"head" + bytes(8 * MiB - 4)   # never the stale S bytes
    ext = fs.fiemap(f, 0, 1 << 40)
    assert ext[0].flags & FIEMAP_EXTENT_UNWRITTEN == 0               # the written block
    assert all(e.flags & FIEMAP_EXTENT_UNWRITTEN for e in ext[1:])
    assert int(fs.vol.sb["features"]) & FEAT_UNWRITTEN
    # a write converts only the blocks it touches, zeros around the data
    fs.write(f, 3 * MiB + 100, b"w" * 5000)
    assert fs.read(f, 3 * MiB, 3 * BS) == bytes(100) + b"w" * 5000 + bytes(3 * BS - 5100)
    written = [e for e in fs.fiemap(f, 0, 1 << 40) if not e.flags & FIEMAP_EXTENT_UNWRITTEN]
    assert sum(e.length for e in written) == 3 * BS
    assert fs.getattr(f).blocks == 2048
    assert_clean(fs)
    fs.close()


def test_keep_size_preallocation_past_eof_survives_growth_and_remount(tmp_path):
    path = tmp_path / "k.img"
    fs = make_fs(path)
    f = new_file(fs, b"f", b"x" * 1000)
    fs.fallocate(f, KEEP, 0, 4 * MiB)
    assert fs.getattr(f).size == 1000 and fs.getattr(f).blocks == 1024
    fs.close()
    fs = Filesystem.open(str(path))
    fs.write(f, 1000, b"y" * 10)                 # grows: the preallocation stays
    fs.setattr(f, size=2 * MiB)                  # truncate up: it stays too
    assert fs.getattr(f).blocks == 1024
    assert fs.read(f, 0, 2 * MiB) == b"x" * 1000 + b"y" * 10 + bytes(2 * MiB - 1010)
    fs.setattr(f, size=5000)                     # truncate down frees past EOF, as XFS
    assert fs.getattr(f).blocks == 2
    assert_clean(fs)
    fs.close()


def test_punch_hole_frees_own_blocks_and_drops_only_its_share(tmp_path):
    fs = make_fs(tmp_path / "h.img")
    data, a, b = shared_pair(fs, 1, 64)
    c = new_file(fs, b"c", data)
    free = fs.statfs().free_blocks
    # own blocks: freed; partial edges: zeroed, not freed
    fs.fallocate(c, PUNCH | KEEP, 10 * BS + 7, 20 * BS)
    want = data[:10 * BS + 7] + bytes(20 * BS) + data[30 * BS + 7:]
    assert fs.read(c, 0, 64 * BS) == want and fs.getattr(c).size == 64 * BS
    assert fs.getattr(c).blocks == 64 - 19
    fs.commit()
    assert fs.statfs().free_blocks == free + 19
    # shared blocks: a loses its reference, b keeps the bytes
    fs.fallocate(a, PUNCH | KEEP, 0, 16 * BS)
    assert fs.read(a, 0, 16 * BS) == bytes(16 * BS)
    assert fs.read(b, 0, 64 * BS) == data
    assert set(refcounts(fs, b, 0, 16 * BS)) == {1} and set(refcounts(fs, b, 16 * BS, BS)) == {2}
    # a shared partial edge is copied on write, the other owner keeps it
    fs.fallocate(a, PUNCH | KEEP, 20 * BS + 100, 200)
    assert fs.read(a, 20 * BS, BS) == data[20 * BS:20 * BS + 100] + bytes(200) + \
        data[20 * BS + 300:21 * BS]
    assert fs.read(b, 0, 64 * BS) == data
    # past EOF: nothing to do, the size stays
    fs.fallocate(a, PUNCH | KEEP, 100 * BS, BS)
    assert fs.getattr(a).size == 64 * BS
    assert_clean(fs)
    fs.close()


def test_zero_range_unwrites_own_blocks_in_place_and_allocates_the_rest(tmp_path):
    fs = make_fs(tmp_path / "z.img")
    data, a, b = shared_pair(fs, 2, 32, 16 * BS)  # blocks 0..15 shared
    fs.setattr(a, size=40 * BS)                  # blocks 32..39: a hole
    phys = fs.fiemap(a, 0, 1 << 40)
    free = fs.statfs().free_blocks
    fs.fallocate(a, ZERO | KEEP, 8 * BS + 5, 30 * BS)
    want = data[:8 * BS + 5] + bytes(30 * BS) + data[38 * BS + 5:] + bytes(2 * BS - 5)
    assert fs.read(a, 0, 40 * BS) == want[:40 * BS]
    # every block of [8, 39) is allocated; 39 stays a hole
    assert fs.getattr(a).size == 40 * BS and fs.getattr(a).blocks == 39
    assert fs.read(b, 0, 16 * BS) == data[:16 * BS]
    ext = fs.fiemap(a, 0, 1 << 40)
    assert not any(e.flags & FIEMAP_EXTENT_SHARED for e in ext if e.logical >= 8 * BS)
    # blocks 16..31 were a's alone: the same blocks, now unwritten
    unwritten16 = [e for e in ext if e.logical <= 16 * BS < e.logical + e.length]
    assert unwritten16[0].flags & FIEMAP_EXTENT_UNWRITTEN
    assert unwritten16[0].physical + 16 * BS - unwritten16[0].logical == phys_of(phys, 16)
    fs.commit()
    # new blocks only for the 7 shared blocks given up (9..15) and the 7
    # holes (32..38); the edge block 8 is shared: copied on write
    assert fs.statfs().free_blocks == free - 7 - 7 - 1
    # without KEEP_SIZE the file grows
    fs.fallocate(a, ZERO, 50 * BS, 10)
    assert fs.getattr(a).size == 50 * BS + 10
    assert fs.read(a, 40 * BS, 10 * BS + 10) == bytes(10 * BS + 10)
    assert_clean(fs)
    fs.close()


def test_fallocate_errors_are_the_kernels(tmp_path):
    fs = make_fs(tmp_path / "e.img")
    f = new_file(fs, b"f", b"x")
    d = fs.mkdir(1, b"d", 0o755, 0, 0).ino
    fifo = fs.mknod(1, b"p", stat.S_IFIFO | 0o644, 0, 0).ino
    chr_ = fs.mknod(1, b"c", stat.S_IFCHR | 0o644, 0, 0, rdev=0x0103).ino
    cases = [
        ((f, 0, -1, 10), InvalidArgument), ((f, 0, 0, 0), InvalidArgument),
        ((f, 0, 0, -5), InvalidArgument),
        ((f, PUNCH, 0, 10), NotSupported),              # PUNCH_HOLE needs KEEP_SIZE
        ((f, 0x08, 0, BS), NotSupported),               # COLLAPSE_RANGE
        ((f, 0x20, 0, BS), NotSupported),               # INSERT_RANGE
        ((f, 0x40, 0, BS), NotSupported),               # UNSHARE_RANGE
        ((f, PUNCH | ZERO | KEEP, 0, BS), NotSupported),
        ((d, 0, 0, BS), IsADirectory), ((fifo, 0, 0, BS), IllegalSeek),
        ((chr_, 0, 0, BS), NoDevice),
        ((f, 0, MAX_FILE_BYTES, 1), FileTooBig), ((f, KEEP, MAX_FILE_BYTES - 10, 11), FileTooBig),
    ]
    for args, err in cases:
        with pytest.raises(err):
            fs.fallocate(*args)
    assert fs.read(f, 0, 10) == b"x" and fs.getattr(f).blocks == 1
    assert_clean(fs)
    fs.close()
    ro = Filesystem.open(str(tmp_path / "e.img"), readonly=True)
    with pytest.raises(ReadOnly):
        ro.fallocate(f, 0, 0, BS)
    with pytest.raises(ReadOnly):
        ro.copy_range(f, 0, f, BS, 1)
    ro.close()


def _fill(fs, ino):
    """Write at the end of file `ino` until the device is full."""
    chunk = b"f" * MiB
    while True:
        off = fs.getattr(ino).size
        try:
            if fs.write(ino, off, chunk) < len(chunk):
                continue
        except NoSpace:
            return


def test_enospc_changes_nothing(tmp_path):
    fs = make_fs(tmp_path / "n.img", size=16 * MiB)
    data, a, b = shared_pair(fs, 3, 40)
    c = new_file(fs, b"c")
    fill = new_file(fs, b"fill")
    for _ in range(2):              # (blocks freed before a commit come back after it)
        _fill(fs, fill)
        fs.commit()
    assert fs.statfs().avail_blocks == 0
    before = state(fs, a), state(fs, b), state(fs, c)
    for args in [(a, 0, 0, 64 * MiB), (a, KEEP, 100 * BS, 4 * BS),
                 (a, ZERO, 0, 40 * BS),                 # 40 shared blocks to replace
                 (a, ZERO | KEEP, 45 * BS, 8 * BS),     # holes to allocate
                 (a, PUNCH | KEEP, 5 * BS + 1, 10)]:    # a shared edge to copy
        with pytest.raises(NoSpace):
            fs.fallocate(*args)
        assert (state(fs, a), state(fs, b), state(fs, c)) == before, args
    for src_off in (1, 0):                              # bytes to store; blocks to share
        with pytest.raises(NoSpace):
            fs.copy_range(a, src_off, c, 0, 40 * BS)
        assert (state(fs, a), state(fs, b), state(fs, c)) == before
    assert_clean(fs)
    # punching whole blocks needs no space, and frees a's own blocks
    fs.fallocate(c, PUNCH | KEEP, 0, BS)
    fs.unlink(1, b"fill")
    fs.forget(fill)
    fs.commit()
    fs.fallocate(a, ZERO, 0, 40 * BS)
    assert fs.read(a, 0, 40 * BS) == bytes(40 * BS) and fs.read(b, 0, 40 * BS) == data
    assert_clean(fs)
    fs.close()


def test_power_loss_after_a_write_into_preallocated_blocks(tmp_path):
    path = str(tmp_path / "c.img")
    fs = make_fs(tmp_path / "c.img")
    old = new_file(fs, b"old", b"S" * MiB)          # stale bytes left in free blocks
    fs.unlink(1, b"old")
    fs.forget(old)
    fs.commit()
    fs.close()
    fs = Filesystem.open(path, private=True)        # only flushed pages reach the image
    f = new_file(fs, b"f")
    fs.fallocate(f, 0, 0, MiB)
    fs.commit()
    fs.write(f, 4 * BS, b"new")                     # not committed: lost
    fs.vol.pmem.close()                             # power loss
    fs = Filesystem.open(path)
    assert fs.read(f, 0, MiB) == bytes(MiB)
    assert_clean(fs)
    fs.close()


# ---- SEEK_DATA / SEEK_HOLE -------------------------------------------------------

def _model_seek(runs, size, off, data):
    """SEEK_DATA/SEEK_HOLE from a list of written block runs."""
    def in_data(pos):
        return any(a * BS <= pos < b * BS for a, b in runs)
    if off >= size:
        return None
    pos = off
    while pos < size and in_data(pos) != data:
        pos = (pos // BS + 1) * BS
    if data:
        return pos if pos < size else None
    return min(pos, size)


def test_seek_data_and_hole_follow_the_extent_map(tmp_path):
    fs = make_fs(tmp_path / "s.img", size=64 * MiB)
    f = new_file(fs)
    rng = random.Random(4)
    runs, pos = [], 0
    while pos < 3000:                                # ~600 extents, holes between
        n = rng.randint(1, 8)
        if rng.random() < 0.5:
            fs.write(f, pos * BS, b"d" * (n * BS))
            runs.append((pos, pos + n))
        elif rng.random() < 0.5:
            fs.fallocate(f, KEEP, pos * BS, n * BS)  # unwritten: a hole for SEEK_*
        pos += n
    size = pos * BS - 1234
    fs.setattr(f, size=size)
    runs = [(a, min(b, -(-size // BS))) for a, b in runs if a * BS < size]
    for off in [0, 1, size - 1] + [rng.randrange(size) for _ in range(300)]:
        want = _model_seek(runs, size, off, True)
        if want is None:
            with pytest.raises(NoData):
                fs.seek_data(f, off)
        else:
            assert fs.seek_data(f, off) == want, off
        assert fs.seek_hole(f, off) == _model_seek(runs, size, off, False), off
    for off in (size, size + 1, -1):
        with pytest.raises(NoData):
            fs.seek_data(f, off)
        with pytest.raises(NoData):
            fs.seek_hole(f, off)
    e = new_file(fs, b"empty")
    with pytest.raises(NoData):
        fs.seek_hole(e, 0)
    assert_clean(fs)
    fs.close()


# ---- copy_range ------------------------------------------------------------------

def test_copy_shares_whole_blocks_and_copies_the_edges(tmp_path):
    fs = make_fs(tmp_path / "cp.img", size=64 * MiB)
    data = bytes(random.Random(5).randbytes(10 * MiB + 123))
    a = new_file(fs, b"a", data)
    b = new_file(fs, b"b")
    free = fs.statfs().free_blocks
    assert fs.copy_range(a, 0, b, 0, 1 << 62) == len(data)
    assert fs.read(b, 0, len(data) + 1) == data
    assert set(refcounts(fs, b, 0, len(data))) == {2}          # the last partial block too
    fs.commit()
    assert fs.statfs().free_blocks == free                      # nothing stored
    # same offsets modulo 4096: the middle is shared, the edges copied
    c = new_file(fs, b"c", b"c" * (3 * MiB))
    assert fs.copy_range(a, BS + 100, c, 2 * BS + 100, MiB) == MiB
    got = fs.read(c, 0, 3 * MiB)
    assert got == b"c" * (2 * BS + 100) + data[BS + 100:BS + 100 + MiB] + \
        b"c" * (3 * MiB - 2 * BS - 100 - MiB)
    rc = refcounts(fs, c, 0, 3 * MiB)
    assert rc[2] == 1 and rc[3] == 3 and rc[257] == 3 and rc[258] == 1
    # offsets that disagree: every byte is copied, in bounded steps
    d = new_file(fs, b"d")
    n = fs.copy_range(a, 1, d, 0, 1 << 40)
    assert n == len(data) - 1 if len(data) - 1 <= fsmod.COPY_STEP_BYTES else n == fsmod.COPY_STEP_BYTES
    assert fs.read(d, 0, n) == data[1:1 + n] and set(refcounts(fs, d, 0, n)) == {1}
    # at and past the source's EOF: 0
    assert fs.copy_range(a, len(data), d, 0, 10) == 0
    assert fs.copy_range(a, len(data) + 5, d, 0, 10) == 0
    # within one file: allowed when the ranges do not overlap
    assert fs.copy_range(a, 0, a, 20 * MiB, 2 * MiB) == 2 * MiB
    assert fs.read(a, 20 * MiB, 2 * MiB) == data[:2 * MiB]
    with pytest.raises(InvalidArgument):
        fs.copy_range(a, 0, a, MiB, 2 * MiB)
    with pytest.raises(InvalidArgument):
        fs.copy_range(a, -1, b, 0, 1)
    with pytest.raises(IsADirectory):
        fs.copy_range(a, 0, 1, 0, 1)
    with pytest.raises(FileTooBig):
        fs.copy_range(a, 0, b, MAX_FILE_BYTES, 1)
    assert_clean(fs)
    fs.close()


def test_copy_is_bounded_per_call(tmp_path, monkeypatch):
    """A large copy returns a short count; calling again finishes it."""
    monkeypatch.setattr(fsmod, "COPY_STEP_BYTES", 10000)
    fs = make_fs(tmp_path / "b.img")
    fs.budget = 4                                    # (the daemon's step budget, made small)
    a = new_file(fs, b"a")
    data = bytes(random.Random(6).randbytes(40 * BS))
    for i in reversed(range(40)):        # 40 one-block extents (written last block first)
        fs.write(a, i * BS, data[i * BS:(i + 1) * BS])
        new_file(fs, b"x%d" % i, b"x")
    for src_off, dst_off in ((0, 0), (3, 0)):
        b = new_file(fs, b"b%d" % src_off)
        done = calls = 0
        while True:
            n = fs.copy_range(a, src_off + done, b, dst_off + done, 1 << 40)
            if not n:
                break
            assert n <= max(5 * BS, 10000)
            done += n
            calls += 1
        assert done == len(data) - src_off and calls >= 4
        assert fs.read(b, 0, len(data)) == data[src_off:]
    assert_clean(fs)
    fs.close()


def test_copy_without_reflink_copies_bytes(tmp_path):
    fs = make_fs(tmp_path / "n.img", rmap=False)
    data = b"q" * (3 * BS + 5)
    a = new_file(fs, b"a", data)
    b = new_file(fs, b"b")
    assert fs.copy_range(a, 0, b, 0, 1 << 30) == len(data)
    assert fs.read(b, 0, 1 << 20) == data
    assert fs.getattr(b).blocks == 4 and set(refcounts(fs, b, 0, len(data))) == {1}
    fs.fallocate(b, ZERO | KEEP, 0, 2 * BS)
    assert fs.read(b, 0, 1 << 20) == bytes(2 * BS) + data[2 * BS:]
    assert_clean(fs)
    fs.close()


# ---- check and repair know unwritten extents --------------------------------------

@pytest.mark.parametrize("tree", ["rmap", "bmap"])
def test_repair_keeps_unwritten_extents(tmp_path, tree):
    """A lost rmap is rebuilt from the extent maps, lost extent maps from
    the rmap: either way the unwritten flag survives (RMAP_UNWRITTEN is
    the extent flag's mirror), and the preallocated range still reads as
    zeros, not as the stale bytes its blocks hold."""
    from daxfs.engine.volume import Volume
    from daxfs.fsck.repair import repair_image
    path = tmp_path / "r.img"
    fs = make_fs(path, dup=False)        # (one copy of the root: it is lost)
    old = new_file(fs, b"old", b"S" * MiB)
    fs.unlink(1, b"old")
    fs.forget(old)
    fs.commit()
    files = []
    for i in range(60):                      # enough records for a tree of several nodes
        f = new_file(fs, b"f%d" % i, b"w" * 5000)
        fs.fallocate(f, KEEP, 0, (i % 7 + 2) * BS)
        fs.write(new_file(fs, b"g%d" % i), 0, b"g" * 3000)
        files.append(f)
    want = {f: (fs.read(f, 0, 1 << 20), fs.fiemap(f, 0, 1 << 40)) for f in files}
    assert_clean(fs)
    fs.close()
    vol = Volume.open(str(path))
    try:
        root = vol.trees[tree].root
        vol.pmem.block(root)[:] = 0                          # the root node is lost
        vol.pmem.block(int(vol.sb["log_start"]))[:8] = 0     # (no replay mends it)
        vol.pmem.flush_all()
    finally:
        vol.pmem.close()
    problems, fixes = repair_image(str(path))
    assert problems == [] and fixes
    fs = Filesystem.open(str(path))
    for f, (data, ext) in want.items():
        assert fs.read(f, 0, 1 << 20) == data
        got = fs.fiemap(f, 0, 1 << 40)
        assert [(e.logical, e.length, e.flags & FIEMAP_EXTENT_UNWRITTEN) for e in got] == \
            [(e.logical, e.length, e.flags & FIEMAP_EXTENT_UNWRITTEN) for e in ext]
    assert_clean(fs)
    fs.close()
