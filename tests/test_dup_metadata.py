"""Duplicated metadata (mkfs --metadata dup, the default): every tree node,
the log and the superblock have a twin elsewhere on the device, so one bad
metadata block costs nothing (issue 17.1).

For each tree kind, a populated dup image has its root, then a leaf, then
an interior node poisoned, offline (the device's bad-block list, handled at
the next open) and live (the failure handler of an open filesystem): no
shutdown, every file identical (contents, size, mode, owner, times,
xattrs), `check` clean, the poison gone.  A read that meets a bad copy (a
flipped byte, not a reported media error) uses the twin and rewrites the
bad copy.  Both copies bad: shutdown, as on a single image.
"""

import contextlib
import os
import stat

import pytest

from daxfs.engine.badblocks import BadBlocks
from daxfs.engine.errors import Shutdown
from daxfs.engine.fs import Filesystem
from daxfs.engine.mkfs import mkfs
from daxfs.engine import poison
from engine_helpers import assert_clean

BS = 4096
TREES = ["inode", "dir", "bmap", "free", "rmap", "refcount", "xattr", "orphan"]


def populate(path, dup=True):
    """Enough of everything that most trees have interior nodes."""
    mkfs(str(path), 160 << 20, dup=dup)
    fs = Filesystem.open(str(path))
    files = {}
    dirs = [1]
    for d in range(30):
        dirs.append(fs.mkdir(1, b"d%02d" % d, 0o755, 1000 + d, 100).ino)
    for i in range(6000):
        parent = dirs[i % len(dirs)]
        ino = fs.create(parent, b"file-with-a-long-name-%05d" % i, 0o640, 1000, 100).ino
        data = os.urandom(1 + (i * 37) % 5000)
        fs.write(ino, 0, data)
        fs.write(ino, 40 * BS + i, b"tail")          # a second extent after a hole
        if i % 3 == 0:
            fs.setxattr(ino, b"user.tag", b"t%d" % i)
        if i % 11 == 0:
            fs.setxattr(ino, b"user.big", os.urandom(300))
        files[ino] = parent
    a = fs.create(1, b"shared-a", 0o644, 0, 0).ino
    fs.write(a, 0, os.urandom(64 * BS))
    for k in range(40):                               # many shared ranges: a refcount tree
        b = fs.create(1, b"shared-%d" % k, 0o644, 0, 0).ino
        fs.clone_range(a, (k % 8) * BS, b, 0, BS * (1 + k % 5))
    for k in range(600):                              # an orphan list (open-unlinked files)
        ino = fs.create(1, b"orphan-%d" % k, 0o644, 0, 0).ino
        fs.unlink(1, b"orphan-%d" % k)
    fs.defer_inactive = True
    fs.close()
    return path


def snapshot(fs):
    """Everything a user can see of every file."""
    out = {}
    stack = [(1, "/")]
    while stack:
        d, path = stack.pop()
        for e in fs.readdir(d):
            if e.name in (b".", b".."):
                continue
            a = e.attr
            p = path + e.name.decode()
            xattrs = {n: fs.getxattr(a.ino, n) for n in fs.listxattr(a.ino)}
            data = fs.read(a.ino, 0, a.size) if stat.S_ISREG(a.mode) else None
            out[p] = (a.mode, a.uid, a.gid, a.size, a.mtime_ns, a.ctime_ns, xattrs, data)
            if stat.S_ISDIR(a.mode):
                stack.append((a.ino, p + "/"))
    return out


def node_of(tree, where):
    """A block of `tree`: its root, a leaf, or an interior node (not the root)."""
    nodes = [(v.bno, v.level) for v in tree.walk(leaves=False)]
    if where == "root":
        return tree.root
    if where == "leaf":
        leaves = [b for b, lv in nodes if lv == 0 and b != tree.root]
        return leaves[len(leaves) // 2] if leaves else None
    inner = [b for b, lv in nodes if lv > 0 and b != tree.root]
    return inner[0] if inner else None


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = populate(tmp_path_factory.mktemp("dup") / "base.img")
    fs = Filesystem.open(str(path), readonly=True)
    try:
        return path, snapshot(fs)
    finally:
        fs.close()


def _copy(base, tmp_path):
    path, want = base
    img = tmp_path / "img"
    img.write_bytes(path.read_bytes())
    return img, want


@contextlib.contextmanager
def intact_after(img, want):
    """The image opened for the body; afterwards it must still serve
    everything it held (`want`), not be shut down, and check clean."""
    fs = Filesystem.open(str(img))
    try:
        yield fs
        assert not fs.shutdown_reason, fs.shutdown_reason
        assert snapshot(fs) == want
        assert_clean(fs)
    finally:
        fs.close()


def _trees_with(fs, where):
    out = []
    for name in TREES:
        tree = fs.vol.trees[name]
        if tree.height and node_of(tree, where) is not None:
            out.append(name)
    return out


@pytest.mark.parametrize("where", ["root", "leaf", "interior"])
def test_offline_poison_heals_at_open(base, tmp_path, where):
    img, want = _copy(base, tmp_path)
    fs = Filesystem.open(str(img), readonly=True)
    targets = {name: node_of(fs.vol.trees[name], where) for name in _trees_with(fs, where)}
    fs.close()
    if where == "interior":
        assert {"dir", "inode", "bmap", "rmap"} <= set(targets), targets
    elif where == "leaf":
        assert {"dir", "inode", "bmap", "rmap", "xattr"} <= set(targets), targets
    else:
        assert set(targets) == set(TREES), targets
    bad = BadBlocks(str(img))
    for b in targets.values():
        bad.add(b, 1)
    with intact_after(img, want) as fs:
        assert not fs.shutdown_reason, fs.shutdown_reason
        assert all("healed" in r.action for r in fs.poison_reports), \
            [r.action for r in fs.poison_reports]
        assert not fs.vol.pmem.bad.ranges()


@pytest.mark.parametrize("where", ["root", "leaf", "interior"])
def test_live_poison_heals_at_once(base, tmp_path, where):
    img, want = _copy(base, tmp_path)
    with intact_after(img, want) as fs:
        for name in _trees_with(fs, where):
            b = node_of(fs.vol.trees[name], where)
            rep = poison.inject(fs, b, 1)
            assert "healed from its copy" in rep.action, (name, rep.action)
            assert not fs.shutdown_reason, fs.shutdown_reason
            # and its twin (the other copy) too
            twin = fs.vol.rmap.owners(b, b)[0][2]
            rep = poison.inject(fs, twin, 1)
            assert "healed from its copy" in rep.action, (name, "twin", rep.action)


def test_log_and_superblock_poison(base, tmp_path):
    img, want = _copy(base, tmp_path)
    with intact_after(img, want) as fs:
        sb = fs.vol.sb
        for b in (int(sb["log_start"]), int(sb["log2_start"]) + 1, 0, fs.vol.total_blocks - 1):
            rep = poison.inject(fs, b, 1)
            assert not fs.shutdown_reason, (b, rep.action)


def test_a_flipped_byte_is_read_from_the_twin(base, tmp_path):
    """Silent damage (no media error): the read fails verification, the
    twin is used and the bad copy rewritten."""
    img, want = _copy(base, tmp_path)
    fs = Filesystem.open(str(img), readonly=True)
    blocks = [node_of(fs.vol.trees[n], "leaf") for n in ("inode", "dir", "bmap")]
    fs.close()
    with open(img, "r+b") as f:
        for b in blocks:
            f.seek(b * BS + 100)
            byte = f.read(1)
            f.seek(b * BS + 100)
            f.write(bytes([byte[0] ^ 0xFF]))
    with intact_after(img, want) as fs:
        assert snapshot(fs) == want          # reading the leaves heals them
        assert len(fs.vol.healed) >= len(blocks), fs.vol.healed


def test_both_copies_bad_shuts_down(base, tmp_path):
    img, _ = _copy(base, tmp_path)
    fs = Filesystem.open(str(img))
    try:
        b = node_of(fs.vol.trees["inode"], "leaf")
        twin = fs.vol.rmap.owners(b, b)[0][2]
        fs.vol.pmem.bad.add(twin, 1)
        rep = poison.inject(fs, b, 1)
        assert fs.shutdown_reason and "shut down" in rep.action
        with pytest.raises(Shutdown):
            fs.getattr(1)
    finally:
        fs.close()


def test_single_image_has_no_twins(tmp_path):
    img = populate(tmp_path / "single.img", dup=False)
    fs = Filesystem.open(str(img))
    try:
        assert not fs.vol.dup and not int(fs.vol.sb["log2_start"])
        b = node_of(fs.vol.trees["inode"], "leaf")
        rep = poison.inject(fs, b, 1)
        assert fs.shutdown_reason and "shut down" in rep.action
    finally:
        fs.close()


def test_read_only_open_reads_the_twins(base, tmp_path):
    """A read-only open writes nothing: a poisoned node is read from its
    twin every time, the damage assessment counts nothing, the poison stays
    for a writable open to heal."""
    from daxfs.engine import damage
    img, want = _copy(base, tmp_path)
    fs = Filesystem.open(str(img), readonly=True)
    targets = [node_of(fs.vol.trees[n], w) for n in ("inode", "dir", "bmap", "xattr")
               for w in ("root", "leaf")]
    fs.close()
    bad = BadBlocks(str(img))
    for b in targets:
        bad.add(b, 1)
    fs = Filesystem.open(str(img), readonly=True)
    try:
        assert damage.assess(fs) is None
        assert snapshot(fs) == want
        assert not fs.shutdown_reason
    finally:
        fs.close()
    assert sum(n for _, n in BadBlocks(str(img)).ranges()) == len(set(targets))


def test_poison_on_a_node_changed_since_the_last_commit(base, tmp_path):
    """A node changed in the running transaction has its new bytes only in
    memory: the handler commits first (both copies then on the device) and
    heals; nothing is lost, no shutdown."""
    img, want = _copy(base, tmp_path)
    fs = Filesystem.open(str(img))
    try:
        fs.commit()
        ino = fs.create(1, b"made-after-the-commit", 0o100644, 7, 8).ino
        fs.write(ino, 0, b"fresh")
        dirty = set(fs.vol.journal.dirty)
        hit = {name: sorted(dirty & set(fs.vol.trees[name].node_blocks()))
               for name in ("inode", "dir", "bmap")}
        hit = {name: blocks for name, blocks in hit.items() if blocks}
        assert {"dir", "bmap"} <= set(hit), hit
        for name, blocks in hit.items():
            rep = poison.inject(fs, blocks[0], 1)
            assert "healed from its copy" in rep.action, (name, rep.action)
            assert not fs.shutdown_reason, fs.shutdown_reason
        assert fs.read(fs.lookup(1, b"made-after-the-commit").ino, 0, 10) == b"fresh"
        assert_clean(fs)
    finally:
        fs.close()
