"""Repair loses nothing the image still holds (issue 17, part 2), engine
level, on a `single` image (one copy of metadata).

For each tree kind, one node is poisoned offline -- its root, a leaf, an
interior node below the root -- the way `daxfs poison inject IMAGE
--metadata KIND:WHICH` does (the block goes on the image's bad-block list),
then `daxfs check` must report it and the repair must give back
everything the image still holds.  The test computes, from the tree
before the damage, which records were lost (those of the poisoned leaf;
none for a root or an interior node, whose leaves the rmap names) and
what must survive: every file whose record sits in an intact leaf is
identical -- contents, size, mode, owner, times, extended attributes and
ACLs, and its names unless the lost leaf held the entries naming it
(those files are in /lost+found under their inode numbers).  Afterwards
check is clean (so a second repair finds nothing: test_the_commands runs
one).
"""

import contextlib
import hashlib
import io
import os
import stat

import pytest

from daxfs.cli import check as cmd_check
from daxfs.engine import acl
from daxfs.engine.badblocks import BadBlocks
from daxfs.engine.format import BLOCK_SIZE as BS
from daxfs.engine.fs import Filesystem
from daxfs.fsck.repair import repair
from salvage_image import (compare, expected, node_of, populate, snapshot, sparse_copy,
                           tree_shapes)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the shapes populate() gives the trees: height 3 has an interior node below the root
HEIGHTS = {"inode": 3, "dir": 3, "bmap": 3, "rmap": 3, "xattr": 3,
           "refcount": 2, "free": 2, "orphan": 2}
CASES = [(tree, which) for tree, h in HEIGHTS.items()
         for which in ("root", "leaf", "interior") if which != "interior" or h >= 3]



@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("salvage") / "base.img"
    populate(path)
    assert tree_shapes(path) == HEIGHTS
    assert run_check(path) == (0, [])
    return path, snapshot(path)


@pytest.fixture
def img(base, tmp_path):
    return sparse_copy(base[0], tmp_path / "daxfs.img")


def run_check(path, *args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cmd_check.main([str(path), "--quiet", *args])
    return rc, [ln for ln in out.getvalue().splitlines() if ln]


def poison_and_repair(img, bno):
    """Poison a block as `daxfs poison inject IMAGE` does; check must name
    it, and the repair must leave check clean (res.left: the check of a
    fresh open after the repair, which is all a second repair would do)."""
    BadBlocks(str(img)).add(bno, 1)
    res = repair(str(img))
    assert any(f"block {bno}" in p for p in res.found), res.found
    assert res.left == [], "\n".join(res.fixed + res.left)
    return res


def original_bytes(path, ino) -> bytes:
    fs = Filesystem.open(str(path), readonly=True)
    try:
        return fs.read(ino, 0, fs.getattr(ino).size)
    finally:
        fs.close()


@pytest.mark.parametrize("tree, which", CASES)
def test_one_node_lost(base, img, tree, which):
    base_path, before = base
    bno, lost = node_of(img, tree, which)
    assert (which == "leaf") == bool(lost)
    res = poison_and_repair(img, bno)
    after = snapshot(img)
    want = expected(before, tree, lost)
    assert compare(want, after) == []
    assert not any(" 0 leaked" not in f for f in res.fixed if "leaked" in f), res.fixed
    assert res.summary.endswith(" lost") and "recovered exactly" in res.summary
    if tree == "inode" and lost:
        _recreated(base_path, before, after, res, lost)
    elif tree == "dir" and lost:
        moved = {ino for ino, w in want.items() if any(p.startswith("/lost+found/")
                                                       for p in w["paths"])}
        assert moved and moved <= res.details["moved"]
    else:
        assert not res.details["guessed"] and not res.details["lost"], res.fixed
        if tree != "xattr":
            assert " 0 recreated" in res.summary and res.summary.endswith(" 0 lost")
    if which != "leaf" and tree in ("inode", "dir", "bmap", "xattr"):
        assert any("leaves found through the rmap" in f for f in res.fixed), res.fixed


def _recreated(base_path, before, after, res, lost):
    """The inodes whose records were in the lost leaf: made again from what
    the image knows (their data, their names), the guesses said; a device
    node (its number is gone) is reported lost."""
    guessed, gone = res.details["guessed"], res.details["lost"]
    for rec in lost:
        ino, mode = rec[0], rec[1]
        f = before[ino]
        if stat.S_ISCHR(mode):
            assert ino in gone and ino not in after
            continue
        assert ino in guessed, (ino, oct(mode))
        got = after[ino]
        assert got["paths"] == f["paths"] and got["xattrs"] == f["xattrs"]
        assert stat.S_IFMT(got["attr"][0]) == stat.S_IFMT(mode)
        if stat.S_ISREG(mode) and f["attr"][4]:
            data = original_bytes(base_path, ino)
            assert "from its extents" in guessed[ino]
            assert got["attr"][4] == -(-len(data) // BS) * BS
            assert got["data"] == hashlib.sha256(data.ljust(got["attr"][4], b"\0")).hexdigest()
        elif stat.S_ISLNK(mode):
            assert got["data"] == f["data"]
        if acl.ACCESS in f["xattrs"]:       # the permission bits come back from the ACL
            assert "from its access ACL" in guessed[ino]
            assert stat.S_IMODE(got["attr"][0]) == acl.mode_bits(acl.parse(f["xattrs"][acl.ACCESS]))
    n_recreated = len([r for r in lost if not stat.S_ISCHR(r[1])])
    assert f" {n_recreated} recreated with guessed attributes" in res.summary, res.summary


@pytest.mark.parametrize("kind", ["log", "superblock", "superblock2"])
def test_log_or_superblock_lost(base, img, kind):
    """A poisoned block of the log or a superblock copy: the repair rewrites
    it whole and it leaves the bad-block list; nothing else changes."""
    from daxfs.engine.poison_target import metadata_block
    fs = Filesystem.open(str(img), readonly=True)
    bno = metadata_block(fs, kind)
    fs.close()
    res = poison_and_repair(img, bno)
    assert BadBlocks(str(img)).ranges() == []
    assert any("rewritten whole, no longer bad" in f for f in res.fixed), res.fixed
    assert compare(expected(base[1], "inode", []), snapshot(img)) == []


def test_rmap_and_a_tree_lost_together(base, img):
    """Without an intact rmap to name the inode tree's nodes, a scan of the
    device finds them (checked against what the readable trees say is
    data, free space or the pool)."""
    inode_root, _ = node_of(img, "inode", "root")
    rmap_root, _ = node_of(img, "rmap", "root")
    BadBlocks(str(img)).add(rmap_root, 1)
    res = poison_and_repair(img, inode_root)
    assert any(f.startswith("inode tree: rebuilt") and "a scan of the device" in f
               for f in res.fixed), res.fixed
    assert compare(expected(base[1], "inode", []), snapshot(img)) == []


@pytest.mark.parametrize("rmap_lost", [False, True])
def test_an_old_copy_of_a_leaf_is_not_resurrected(base, img, rmap_lost):
    """A sealed inode-tree leaf in free space (an old node, freed since,
    holding records of files deleted since) is found by the scan but not
    used: an intact rmap does not name it, and an intact free-space tree
    says its block is free."""
    from daxfs.engine.volume import Volume
    vol = Volume.open(str(img))
    try:
        tree = vol.trees["inode"]
        start, n = vol.trees["free"].last_le((vol.total_blocks,))
        stale = start + n - 1
        ghost = tuple(tree.first())[:1] + tuple(tree.first())[1:]
        ghosts = [(ino,) + ghost[1:] for ino in range(900000, 900010)]
        tree.bulk_load(ghosts, [stale])
        vol.journal.commit()
    finally:
        vol.pmem.close()
    from daxfs.engine.btree import find_nodes
    from daxfs.engine.trees import SPECS
    vol = Volume.open(str(img), readonly=True)
    assert (stale, 0) in find_nodes(vol.pmem, [SPECS["inode"]])[SPECS["inode"].tree_id]
    vol.pmem.close()
    if rmap_lost:
        BadBlocks(str(img)).add(node_of(img, "rmap", "root")[0], 1)
    poison_and_repair(img, node_of(img, "inode", "root")[0])
    after = snapshot(img)
    assert not set(range(900000, 900010)) & set(after)
    assert compare(expected(base[1], "inode", []), after) == []


def test_without_rmap(tmp_path):
    """A filesystem made without the rmap: the nodes a lost root hid are
    found by the scan alone."""
    path = tmp_path / "normap.img"
    from daxfs.engine.mkfs import mkfs
    mkfs(str(path), 64 << 20, rmap=False, dup=False)
    fs = Filesystem.open(str(path))
    for i in range(1500):
        a = fs.create(1, b"n%04d" % i, stat.S_IFREG | 0o640, i, i)
        fs.write(a.ino, 0, bytes([i % 256]) * (i % 7 * 1000))
    fs.close()
    before = snapshot(path)
    for tree in ("inode", "dir"):
        bno, lost = node_of(path, tree, "root")
        res = poison_and_repair(path, bno)
        assert any(f.startswith(f"{tree} tree: rebuilt") and "a scan of the device" in f
                   for f in res.fixed), res.fixed
    assert compare(expected(before, "inode", []), snapshot(path)) == []


def test_the_commands(base, img):
    """The commands a person runs: `daxfs poison inject IMAGE --metadata
    KIND:WHICH` (and --block), `daxfs check --repair IMAGE` with its
    closing summary."""
    from conftest import daxfs
    bno, lost = node_of(base[0], "inode", "leaf")
    res = daxfs("poison", "inject", img, "--metadata", "inode-tree:leaf")
    assert res.returncode == 0 and f"marked blocks {bno}+1" in res.stdout, res.stdout
    res = daxfs("poison", "inject", img, "--metadata", "inode-tree")
    assert res.returncode == 0 and "inode btree" in res.stdout, res.stdout + res.stderr
    res = daxfs("poison", "inject", img, "--metadata", "refcount-tree:interior")
    assert res.returncode == 1 and "has no interior node" in res.stderr, res.stderr
    free = node_of(base[0], "free", "root")[0]
    res = daxfs("poison", "inject", img, "--block", free)
    assert res.returncode == 0 and "free-space" in res.stdout, res.stdout
    res = daxfs("check", img)
    assert res.returncode == 4
    res = daxfs("check", "--repair", img, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    n = len([r for r in lost if not stat.S_ISCHR(r[1])])
    assert lines[-2].startswith("summary: ") and f", {n} recreated with guessed attributes" \
        in lines[-2], lines[-3:]
    guessed = [ln for ln in lines if "attributes guessed:" in ln]
    assert len(guessed) == n and all(ln.startswith("repaired: inode ") for ln in guessed)
    assert any("size" in ln and "from its extents, mode 0600, owner root, times of the"
               " repair" in ln for ln in guessed), guessed
    assert "Traceback" not in res.stderr
    assert daxfs("check", img).returncode == 0
    res = daxfs("check", "--repair", img)
    assert res.returncode == 0 and "repaired" not in res.stdout, res.stdout


def test_pool_block_lost(base, img):
    """A poisoned block of the reserve pool: check names it, repair drops it
    from the pool (it is free afterwards: the next mount clears it) and
    says nothing was leaked."""
    from daxfs.engine.volume import Volume
    vol = Volume.open(str(img), readonly=True)
    bno = vol.alloc.pool_blocks()[3]
    vol.pmem.close()
    res = poison_and_repair(img, bno)
    assert "reserve pool: 1 unusable block(s) dropped" in res.fixed, res.fixed
    assert not any("leaked" in f for f in res.fixed), res.fixed
    fs = Filesystem.open(str(img))
    assert [r.action for r in fs.poison_reports] == ["1 free block(s) zeroed and cleared"]
    fs.close()
    assert BadBlocks(str(img)).ranges() == []
