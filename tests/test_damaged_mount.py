"""Damaged metadata through real mounts and the `daxfs` commands (issue
17, parts 2 and 3), on a `single` image.

* Mounting an image whose metadata is poisoned never succeeds silently:
  damage that reading files needs (the inode tree) makes `daxfs mount`
  fail with one line naming it and `daxfs check --repair IMAGE`, exit 1,
  nothing mounted; damage that reading does not need (the free-space
  tree) mounts read-only and says so.
* Live: a mount is populated and changed (new files, attributes, files
  unlinked while open), then `daxfs poison inject MOUNT --metadata
  KIND:WHICH` hits one node of each tree kind; the daemon shuts down;
  after the unmount `daxfs check --repair IMAGE` must give back every file
  whose record sits in an intact leaf, identical.  What must survive is
  computed from a copy of the image taken after the unmount without its
  bad-block list (the bytes of the poisoned block are still there).
"""

import errno
import os
import subprocess

import pytest

from conftest import daxfs, mount_image, mount_source
from daxfs.engine.trees import SPECS
from daxfs.engine.volume import Volume
from salvage_image import TREE_KINDS, compare, expected, populate, snapshot

LIVE = [("inode", "leaf"), ("dir", "interior"), ("bmap", "root"), ("xattr", "leaf"),
        ("rmap", "interior"), ("refcount", "root"), ("free", "leaf"), ("orphan", "root")]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("damaged") / "base.img"
    populate(path, files=2500, close=True)      # (trees of height 2 or 3, quick to mount)
    return path


@pytest.fixture
def img(base, tmp_path):
    path = tmp_path / "daxfs.img"
    subprocess.run(["cp", "--sparse=always", str(base), str(path)], check=True, timeout=60)
    return path


def _records_of(image, tree: str, bno: int) -> list[tuple]:
    """The records block `bno` held if it is a leaf of `tree` (read from an
    image copy without the bad-block list)."""
    vol = Volume.open(str(image), readonly=True)
    try:
        [v] = [v for v in vol.trees[tree].walk() if v.bno == bno]
        return v.records if v.level == 0 else []
    finally:
        vol.pmem.close()


def test_mount_refuses_damage_reading_needs(img, mnt):
    res = daxfs("poison", "inject", img, "--metadata", "inode-tree")
    assert res.returncode == 0, res.stderr
    res = daxfs("mount", img, mnt, timeout=90)
    lines = res.stderr.strip().splitlines()
    try:
        assert res.returncode == 1 and len(lines) == 1, res.stderr
        assert mount_source(mnt) is None
    finally:
        if mount_source(mnt) is not None:
            subprocess.run(["fusermount3", "-u", str(mnt)], timeout=60)
    line = lines[0]
    assert line.startswith("daxfs mount: ") and "inode btree" in line and "poisoned" in line
    assert f"daxfs check --repair {img}" in line
    res = daxfs("check", "--repair", img, timeout=300)
    assert res.returncode == 0 and "summary: " in res.stdout, res.stdout + res.stderr
    with mount_image(img, mnt) as m:
        assert len(os.listdir(m)) > 50


@pytest.mark.parametrize("options", [[], ["-o", "ro"]], ids=["rw", "ro"])
def test_mount_read_only_when_reading_is_spared(img, mnt, options):
    res = daxfs("poison", "inject", img, "--metadata", "free-space-tree")
    assert res.returncode == 0, res.stderr
    log = img.parent / "ro.log"
    res = daxfs("mount", img, mnt, "--log", log, *options, timeout=90)
    try:
        assert res.returncode == 0, res.stderr
        [line] = res.stderr.strip().splitlines()
        assert "free-space" in line and "mounted read-only" in line and "--repair" in line
        names = os.listdir(mnt)
        assert names
        with pytest.raises(OSError) as e:
            (mnt / "new").write_bytes(b"x")
        assert e.value.errno == errno.EROFS
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], timeout=60)
        from conftest import force_unmount
        force_unmount(mnt)
    res = daxfs("check", "--repair", img, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    with mount_image(img, mnt) as m:
        (m / "new").write_bytes(b"x")


@pytest.mark.parametrize("tree, which", LIVE)
def test_live_poison_then_repair(img, mnt, tmp_path, tree, which):
    orphans = []
    with mount_image(img, mnt, options="noatime", check_log=False) as m:
        live = m / "live"
        live.mkdir()
        for i in range(30):
            p = live / f"new{i}"
            p.write_bytes(os.urandom(i * 700))
            os.chmod(p, 0o600 + i % 8)
            os.setxattr(p, b"user.live", b"%d" % i)
        for i in range(12):                      # unlinked while open: the orphan list
            p = live / f"gone{i}"
            p.write_bytes(b"g" * 5000)
            orphans.append(os.open(p, os.O_RDONLY))
            os.unlink(p)
        subprocess.run(["sync", "-f", str(m)], check=True, timeout=60)
        res = daxfs("poison", "inject", m, "--metadata", f"{TREE_KINDS[tree]}:{which}")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "shut down" in res.stdout, res.stdout
        bno = int(res.stdout.split("bad range blocks ")[1].split("+")[0])
        with pytest.raises(OSError) as e:
            os.listdir(m)
        assert e.value.errno == errno.EIO
        for fd in orphans:
            os.close(fd)
    copy = tmp_path / "committed.img"            # the bytes as committed, no bad blocks
    subprocess.run(["cp", "--sparse=always", str(img), str(copy)], check=True, timeout=60)
    lost = _records_of(copy, tree, bno)
    assert lost or which != "leaf"
    before = snapshot(copy)
    res = daxfs("check", "--repair", img, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr     # (0: check is clean afterwards)
    assert f"block {bno} is poisoned" in res.stdout, res.stdout
    assert res.stdout.splitlines()[-2].startswith("summary: "), res.stdout
    after = snapshot(img)
    want = expected(before, tree, lost)
    if tree == "inode":
        gone = {SPECS["inode"].record._make(r).ino for r in lost}
        assert gone and all(i in after or i in (r[0] for r in lost) for i in gone)
    assert compare(want, after) == []
    res = daxfs("check", "--repair", img)
    assert res.returncode == 0 and "repaired" not in res.stdout, res.stdout


def test_mount_refuses_a_root_that_fails_its_checksum(img, mnt):
    """Not only poison: a tree root that fails verification is found before
    anything is served."""
    vol = Volume.open(str(img))
    try:
        root = vol.trees["dir"].root
        vol.pmem.block(root)[300] ^= 0x10
        vol.pmem.block(int(vol.sb["log_start"]))[:8] = 0      # (no replay mends it)
        vol.pmem.flush_all()
    finally:
        vol.pmem.close()
    res = daxfs("mount", img, mnt, timeout=90)
    try:
        assert res.returncode == 1 and mount_source(mnt) is None, res.stderr
    finally:
        if mount_source(mnt) is not None:
            subprocess.run(["fusermount3", "-u", str(mnt)], timeout=60)
    [line] = res.stderr.strip().splitlines()
    assert f"dir tree: block {root}" in line and "checksum" in line and "--repair" in line, line
