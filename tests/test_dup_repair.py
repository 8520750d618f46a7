"""`daxfs check --repair` on a filesystem with duplicated metadata (dup,
the default), engine level (issue 17).

* One bad copy of a node -- the first or the twin, poisoned or with a
  flipped byte -- is healed from the other, as a mount heals it: nothing
  rebuilt, every file identical, check clean.
* Both copies of a node lost: the tree is rebuilt from what the rmap names
  (each node's two copies, read as one) into fresh pairs; check clean,
  which verifies every rebuilt node has a twin holding the same bytes.
* A node whose parent names no usable twin: the tree is rebuilt into
  fresh pairs.
"""


import numpy as np
import pytest

from daxfs.engine.badblocks import BadBlocks
from daxfs.engine.format import NODE_HDR_SIZE
from daxfs.engine.checksum import seal
from daxfs.engine.volume import Volume
from daxfs.fsck.check import check_image
from daxfs.fsck.repair import repair
from salvage_image import compare, expected, populate, snapshot, sparse_copy

MiB = 1 << 20



@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("dup-repair") / "base.img"
    populate(path, size=96 * MiB, files=2000, dup=True)
    assert check_image(str(path)) == []
    return path, snapshot(path)


@pytest.fixture
def img(base, tmp_path):
    return sparse_copy(base[0], tmp_path / "daxfs.img")


def nodes(path, tree):
    """[(block, twin, level, records)] of every node of a tree, root first."""
    vol = Volume.open(str(path), readonly=True)
    try:
        return [(v.bno, v.twin, v.level, v.records or []) for v in vol.trees[tree].walk()]
    finally:
        vol.pmem.close()


def pick(path, tree, which):
    ns = nodes(path, tree)
    if which == "root":
        return ns[0]
    leaves = [n for n in ns if n[2] == 0]
    return leaves[len(leaves) // 2]


def flip(path, bno):
    with open(path, "r+b") as f:
        f.seek(bno * 4096 + 200)
        b = f.read(1)
        f.seek(bno * 4096 + 200)
        f.write(bytes([b[0] ^ 0x5A]))


def repaired(path):
    res = repair(str(path))
    assert res.found, "check found nothing before the repair"
    assert res.left == [], "\n".join(res.fixed + res.left)
    assert repair(str(path)).fixed == []          # a second repair: nothing to do
    return res


@pytest.mark.parametrize("tree", ["inode", "dir", "bmap", "rmap", "free"])
@pytest.mark.parametrize("which", ["root", "leaf"])
@pytest.mark.parametrize("copy", ["first", "twin"])
def test_one_bad_copy_is_healed(base, img, tree, which, copy):
    bno, twin, _, _ = pick(img, tree, which)
    assert twin and twin != bno
    BadBlocks(str(img)).add(bno if copy == "first" else twin, 1)
    res = repaired(img)
    assert not any("rebuilt" in f for f in res.fixed), res.fixed
    assert any(("healed from its copy" if copy == "first" else "rewritten from the node") in f
               for f in res.fixed), res.fixed
    assert not BadBlocks(str(img)).ranges()
    assert compare(base[1], snapshot(img)) == []


@pytest.mark.parametrize("copy", ["first", "twin"])
def test_a_flipped_byte_in_either_copy_is_healed(base, img, copy):
    bno, twin, _, _ = pick(img, "dir", "leaf")
    flip(img, bno if copy == "first" else twin)
    res = repaired(img)
    assert not any("rebuilt" in f for f in res.fixed), res.fixed
    assert compare(base[1], snapshot(img)) == []


@pytest.mark.parametrize("tree", ["inode", "dir", "bmap", "xattr"])
def test_both_copies_of_the_root_lost(base, img, tree):
    """The rmap names every node's two copies: the leaves under a lost root
    are all found, the tree rebuilt in fresh pairs, nothing lost."""
    bno, twin, level, _ = pick(img, tree, "root")
    assert level > 0
    bad = BadBlocks(str(img))
    bad.add(bno, 1)
    bad.add(twin, 1)
    res = repaired(img)
    assert any(f.startswith(f"{tree} tree: rebuilt") and "through the rmap" in f
               for f in res.fixed), res.fixed
    assert compare(base[1], snapshot(img)) == []
    for b, t, _, _ in nodes(img, tree):
        assert t and t != b


def test_both_copies_of_a_leaf_lost(base, img):
    """What only that leaf held is lost (as on a single image); the rest is
    identical and the tree is rebuilt in fresh pairs."""
    bno, twin, _, lost = pick(img, "inode", "leaf")
    bad = BadBlocks(str(img))
    bad.add(bno, 1)
    bad.add(twin, 1)
    repaired(img)
    assert compare(expected(base[1], "inode", lost), snapshot(img)) == []


def test_a_node_without_a_usable_twin_is_rebuilt(base, img):
    """A parent entry whose twin pointer is 0 (sealed: no checksum catches
    it): check names it, repair rebuilds the tree into fresh pairs."""
    root, root_twin, level, _ = pick(img, "dir", "root")
    assert level > 0
    vol = Volume.open(str(img))
    try:
        spec = vol.trees["dir"].spec
        for b in (root, root_twin):
            blk = vol.pmem.block(b)
            ents = blk[NODE_HDR_SIZE:].view(np.uint8)[:spec.node_cap * spec.ent_dtype.itemsize] \
                .view(spec.ent_dtype)
            ents[0]["twin"] = 0
            seal(blk)
        vol.pmem.flush([(root, 1), (root_twin, 1)])
    finally:
        vol.pmem.close()
    problems = check_image(str(img))
    assert any("no usable twin" in p for p in problems), problems
    res = repaired(img)
    assert any(f.startswith("dir tree: rebuilt") for f in res.fixed), res.fixed
    assert compare(base[1], snapshot(img)) == []
