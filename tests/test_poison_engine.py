"""Poison through the engine API (no mount): owners from the rmap, the
failure handler's actions by owner kind, and the bad-range list."""

import stat

import pytest

from daxfs.engine import poison
from daxfs.engine.errors import MediaError, Shutdown
from daxfs.engine.format import BLOCK_SIZE as BS
from daxfs.engine.fs import Filesystem
from engine_helpers import assert_clean, make_fs


@pytest.fixture(params=[True, False], ids=["rmap", "no-rmap"])
def fs(tmp_path, request):
    f = make_fs(tmp_path / "p.img", rmap=request.param)
    yield f
    if f.vol is not None:
        f.close()


def _file(fs, name, data):
    ino = fs.mknod(1, name, stat.S_IFREG | 0o644, 0, 0).ino
    fs.write(ino, 0, data)
    return ino


def _pblk(fs, ino, fblk):
    [ext] = [e for e in fs.fiemap(ino, fblk * BS, BS)]
    return (ext.physical + (fblk * BS - ext.logical)) // BS


def test_shared_block_poison_reaches_every_sharer(tmp_path):
    fs = make_fs(tmp_path / "p.img")
    data = bytes(range(256)) * 64           # 4 blocks
    a = _file(fs, b"A", data)
    b = fs.mknod(1, b"B", stat.S_IFREG | 0o644, 0, 0).ino
    fs.clone_range(a, 0, b, 0, 0)
    c = _file(fs, b"C", data)
    bad = _pblk(fs, a, 1)
    rep = poison.inject(fs, bad, 1)
    assert sorted(rep.data_inodes) == sorted([a, b])
    assert {p for o in rep.owners for p in o.paths} == {"/A", "/B"}
    assert {o.offset for o in rep.owners} == {BS}
    for ino in (a, b):
        with pytest.raises(MediaError):
            fs.read(ino, BS, 10)
        assert fs.read(ino, 0, BS) == data[:BS]          # other blocks read fine
        assert fs.read(ino, 2 * BS, 2 * BS) == data[2 * BS:]
    assert fs.read(c, 0, len(data)) == data
    with pytest.raises(MediaError):                      # partial store needs the bad bytes
        fs.write(a, BS + 1, b"x")
    fs.write(a, BS, b"y" * BS)                           # whole block: CoW away
    assert fs.read(a, BS, BS) == b"y" * BS
    with pytest.raises(MediaError):
        fs.read(b, BS, 10)
    assert [r.owners[0].owner for r in poison.listing(fs)] == [b]
    fs.unlink(1, b"B")
    fs.forget(b)
    assert fs.vol.pmem.bad.ranges() == []                # last owner gone: cleared
    assert_clean(fs)
    fs.close()


def test_free_space_poison_is_cleared(fs):
    free = fs.vol.trees["free"].first()
    rep = poison.inject(fs, free[0] + 5, 2)
    assert rep.owners == [] and "cleared" in rep.action
    assert fs.vol.pmem.bad.ranges() == []
    assert_clean(fs)


def test_metadata_poison_shuts_down(tmp_path):
    """One copy of metadata (dup images heal: tests/test_dup_metadata.py)."""
    fs = make_fs(tmp_path / "single.img", dup=False)
    ino = _file(fs, b"f", b"x" * 100)
    fs.commit()
    root = fs.vol.trees["inode"].root
    rep = poison.inject(fs, root, 1)
    assert fs.shutdown_reason and "inode" in rep.lines()[1]
    with pytest.raises(Shutdown):
        fs.getattr(ino)
    with pytest.raises(Shutdown):
        fs.mknod(1, b"g", stat.S_IFREG | 0o644, 0, 0)
    path = fs.vol.pmem.path
    fs.close()
    from daxfs.fsck.check import check_image
    problems = check_image(path)
    assert any("poisoned" in p and "inode" in p for p in problems), problems


def test_superblock_copy_poison_is_rewritten(fs):
    rep = poison.inject(fs, 0, 1)
    assert "rewritten" in rep.action and not fs.shutdown_reason
    assert fs.vol.pmem.bad.ranges() == []
    assert_clean(fs)


def test_poison_in_unmounted_image_is_handled_at_next_open(tmp_path):
    fs = make_fs(tmp_path / "p.img")
    a = _file(fs, b"A", b"q" * (3 * BS))
    bad = _pblk(fs, a, 2)
    path = fs.vol.pmem.path
    fs.close()
    from daxfs.engine.badblocks import BadBlocks
    BadBlocks(path).add(bad, 1)
    fs = Filesystem.open(path)
    assert [r.data_inodes for r in fs.poison_reports] == [[a]]
    with pytest.raises(MediaError):
        fs.read(a, 2 * BS, 1)
    assert fs.read(a, 0, 2 * BS) == b"q" * (2 * BS)
    fs.close()


def test_owner_lookup_agrees_with_scan(tmp_path):
    fs = make_fs(tmp_path / "p.img")
    inos = [_file(fs, b"f%d" % i, bytes([i]) * (i * 1000 + 1)) for i in range(40)]
    fs.clone_range(inos[5], 0, _file(fs, b"g", b""), 0, 0)
    for b in range(0, fs.vol.total_blocks, 97):
        via_rmap = sorted(fs.vol.rmap.owners(b, b))
        via_scan = sorted(poison.scan_owners(fs, b, 1))
        assert via_rmap == via_scan, b
    fs.close()
