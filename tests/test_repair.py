"""`daxfs check --repair` (daxfs/fsck/repair.py), no mount needed.

Every test damages a copy of one populated image (files of many sizes in
several directories, a reflinked pair that was then partly overwritten,
inline and out-of-line xattrs, a symlink, a hard link, an unlinked file
still on the orphan list), either through the engine's own trees or by
writing bytes into the mapped image, then:

* `daxfs check` reports it (exit 4);
* `daxfs check --repair` fixes it (exit 0, one "repaired:" line per fix);
* a second `daxfs check` is clean and a second repair finds nothing;
* file contents and xattrs that were not damaged are intact.
"""

import contextlib
import io
import random
import shutil
import stat

import numpy as np
import pytest

from daxfs.cli import check as cmd_check
from daxfs.engine.errors import NotFound
from daxfs.engine.dirs import Dirs
from daxfs.engine.format import BLOCK_SIZE, DT_REG, OWN_MAX_INO, ROOT_INO
from daxfs.engine.fs import Filesystem
from daxfs.engine.mkfs import mkfs
from daxfs.fsck.repair import repair_image
from daxfs.engine.volume import Volume
from salvage_image import names

TREES = ["inode", "dir", "bmap", "free", "rmap", "refcount", "xattr", "orphan"]


# ---------------------------------------------------------------- the image

def populate(path, seed=7):
    """A small image (one copy of metadata: these tests are about what a
    repair rebuilds; tests/test_dup_repair.py has the twins) with every
    tree more than one level deep where it can be; returns {ino: (path, bytes, {xattr name: value})} of regular files."""
    rng = random.Random(seed)
    mkfs(str(path), 32 << 20, dup=False)
    fs = Filesystem.open(str(path))
    files = {}
    dirs = [(ROOT_INO, "")]
    for i in range(4):
        a = fs.mkdir(ROOT_INO, b"d%d" % i, 0o755, 0, 0)
        dirs.append((a.ino, f"/d{i}"))
    sub = fs.mkdir(dirs[1][0], b"sub", 0o700, 0, 0)
    dirs.append((sub.ino, "/d0/sub"))
    for i in range(110):
        d, dp = rng.choice(dirs)
        a = fs.create(d, b"f%03d" % i, stat.S_IFREG | 0o644, 0, 0)
        data = rng.randbytes(rng.choice([0, 100, 4096, 5000, 20000, 70000]))
        if data:
            fs.write(a.ino, 0, data)
        files[a.ino] = [f"{dp}/f{i:03d}", data, {}]
    frag = []
    for i in range(30):                              # files of several extents each
        a = fs.create(dirs[2][0], b"frag%02d" % i, stat.S_IFREG | 0o600, 0, 0)
        frag.append(a.ino)
        files[a.ino] = [f"/d1/frag{i:02d}", b"", {}]
    for rnd in range(4):
        for ino in frag:
            piece = rng.randbytes(4096)
            fs.write(ino, rnd * 4096, piece)
            files[ino][1] += piece
    big = fs.create(ROOT_INO, b"big", stat.S_IFREG | 0o644, 0, 0)
    data = rng.randbytes(600_000)
    fs.write(big.ino, 0, data)
    files[big.ino] = ["/big", data, {}]
    clone = fs.create(ROOT_INO, b"clone", stat.S_IFREG | 0o644, 0, 0)
    fs.clone_range(big.ino, 0, clone.ino, 0, 0)
    fs.write(clone.ino, 8192, b"x" * 100)            # CoW of one block
    files[clone.ino] = ["/clone", data[:8192] + b"x" * 100 + data[8292:], {}]
    fs.link(big.ino, dirs[1][0], b"biglink")
    for ino in sorted(files)[:24]:
        small, large = b"v%d" % ino * 10, rng.randbytes(9000)
        fs.setxattr(ino, b"user.small", small)
        fs.setxattr(ino, b"user.big", large)
        files[ino][2] = {b"user.small": small, b"user.big": large}
    fs.symlink(ROOT_INO, b"link", b"d0/f001", 0, 0)
    o = fs.create(ROOT_INO, b"orphan", stat.S_IFREG | 0o644, 0, 0)
    fs.write(o.ino, 0, b"o" * 10000)
    fs.unlink(ROOT_INO, b"orphan")                   # open and unlinked at the "crash"
    fs.commit()
    fs.vol.pmem.close()                              # no close: the orphan stays listed
    return {k: tuple(v) for k, v in files.items()}



@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("repair") / "base.img"
    files = populate(path)
    assert run_check(path) == (0, [])
    return path, files


@pytest.fixture
def img(base, tmp_path):
    path = tmp_path / "daxfs.img"
    shutil.copy(base[0], path)
    return path


# ---------------------------------------------------------------- helpers

def run_check(path, *args):
    """`daxfs check` in this process: (exit status, problem lines)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cmd_check.main([str(path), "--quiet", *args])
    lines = [ln for ln in out.getvalue().splitlines() if ln]
    return rc, lines


def engine(path):
    """Open the volume to damage it through its trees; commit on leaving."""

    @contextlib.contextmanager
    def cm():
        vol = Volume.open(str(path))
        try:
            yield vol
            vol.alloc.settle()
            vol.mark_dirty_sb()
            vol.commit()
        finally:
            vol.pmem.close()
    return cm()


def clear_log(vol):
    """Make the last log invalid (harmless after a clean commit), so that
    replay at the next open does not mend the damage we write in place."""
    for start in (int(vol.sb["log_start"]), int(vol.sb["log2_start"])):
        if start:
            vol.pmem.block(start)[:8] = 0
    vol.pmem.flush_all()


def node_blocks(path, name):
    """[(bno, level)] of every node of a tree, and its root."""
    vol = Volume.open(str(path), readonly=True)
    try:
        tree = vol.trees[name]
        return [(v.bno, v.level) for v in tree.walk(leaves=False)], tree.root
    finally:
        vol.pmem.close()


def write_bytes(path, bno, fn):
    """Change a block in place (not through the journal)."""
    vol = Volume.open(str(path))
    try:
        blk = vol.pmem.block(bno)
        fn(blk)
        del blk
        clear_log(vol)
    finally:
        vol.pmem.close()


def walk(path):
    """{ino: (paths, data, xattrs)} of every regular file reachable from the root."""
    fs = Filesystem.open(str(path), readonly=True)
    try:
        out = {}
        for p, ent in names(fs):
            ino = ent.attr.ino
            if not stat.S_ISREG(ent.attr.mode):
                continue
            if ino in out:
                out[ino][0].append(p)
                continue
            data = fs.read(ino, 0, ent.attr.size)
            xa = {n: fs.getxattr(ino, n) for n in fs.listxattr(ino)}
            out[ino] = ([p], data, xa)
        return out
    finally:
        fs.close()


def repair_and_verify(path, files, *, intact=True, moved_ok=False, xattrs_ok=True,
                      padded_ok=False, allow_lost=False):
    """check finds problems; --repair fixes them; a second check is clean,
    a second repair finds nothing; the files are what they were.

    intact: every file at its old path with its old bytes.  Otherwise each
    surviving file must hold its old bytes (padded_ok: followed by zeros up
    to the next block, for files recreated from their extents), found
    under its old path or (moved_ok) in /lost+found.
    """
    rc, problems = run_check(path)
    assert rc == 4 and problems, "check did not see the damage"
    rc, lines = run_check(path, "--repair")
    fixes = [ln for ln in lines if ln.startswith("repaired: ")]
    left = [ln for ln in lines if not ln.startswith(("repaired: ", "summary: "))]
    assert rc == 0 and not left, "\n".join(lines)
    assert fixes, "repair said nothing"
    assert lines[-1].startswith("summary: ") and "recovered exactly" in lines[-1], lines
    assert run_check(path) == (0, [])
    assert repair_image(str(path)) == ([], [])
    after = walk(path)
    lost = []
    for ino, (p, data, xa) in files.items():
        got = after.get(ino)
        if got is None:
            lost.append(ino)
            continue
        paths, gdata, gxa = got
        if intact:
            assert p in paths, f"inode {ino}: {p} is now at {paths}"
        elif p not in paths:
            assert moved_ok and any(q.startswith("/lost+found/") for q in paths), (ino, p, paths)
        if padded_ok and gdata != data:
            assert len(gdata) % BLOCK_SIZE == 0 and gdata[:len(data)] == data \
                and not gdata[len(data):].strip(b"\0"), f"inode {ino} ({p}): data differs"
        else:
            assert gdata == data, f"inode {ino} ({p}): data differs"
        if xattrs_ok:
            assert gxa == xa, f"inode {ino} ({p}): xattrs differ"
    if not allow_lost:
        assert not lost, f"files lost: {lost}"
    return fixes, after


def a_file(files, *, min_size=1, xattrs=False):
    for ino, (p, data, xa) in sorted(files.items()):
        if len(data) >= min_size and bool(xa) == xattrs and p.count("/") == 2:
            return ino
    raise AssertionError("no such file")


# ---------------------------------------------------------------- record-level damage

def test_clean_image_is_left_alone(img):
    before = img.read_bytes()
    assert repair_image(str(img)) == ([], [])
    assert img.read_bytes() == before


def test_rmap_record_deleted(img, base):
    with engine(img) as vol:
        rec = next(r for r in vol.trees["rmap"].scan() if r[1] <= OWN_MAX_INO and not r[4])
        vol.trees["rmap"].delete(rec[:3])
    fixes, _ = repair_and_verify(img, base[1])
    assert any(f.startswith("repaired: rmap tree: 1 record(s) missing, 0 stray")
               for f in fixes), fixes


def test_rmap_bogus_record(img, base):
    with engine(img) as vol:
        free = vol.trees["free"].first()
        vol.trees["rmap"].insert((free[0] + 5, 2, 77, 3, 0))
    fixes, _ = repair_and_verify(img, base[1])
    assert any(f.startswith("repaired: rmap tree: 0 record(s) missing, 1 stray")
               for f in fixes), fixes


@pytest.mark.parametrize("how", ["count", "deleted", "added"])
def test_refcount_wrong(img, base, how):
    with engine(img) as vol:
        t = vol.trees["refcount"]
        rec = t.first()
        if how == "count":
            t.update((rec[0], rec[1], rec[2] + 1))
        elif how == "deleted":
            t.delete(rec[:1])
        else:
            ext = next(r for r in vol.trees["bmap"].scan() if r[3] >= 2)
            t.insert((ext[2], 1, 2))
    fixes, _ = repair_and_verify(img, base[1])
    assert any(f.startswith("repaired: refcount tree: share counts wrong") for f in fixes), fixes


def test_free_space_lost(img, base):
    with engine(img) as vol:
        s, n = next(r for r in vol.trees["free"].scan() if r[1] > 40)
        vol.trees["free"].update((s, n - 40))        # 40 blocks leaked
        vol.sb["free_blocks"] = int(vol.sb["free_blocks"]) - 40
    rc, problems = run_check(img)
    assert any("leaked" in p for p in problems), problems
    fixes, _ = repair_and_verify(img, base[1])
    assert any(f.startswith("repaired: free tree: 40 leaked block(s) given back, 0 used")
               for f in fixes), fixes


def test_used_block_marked_free(img, base, tmp_path):
    ino = a_file(base[1], min_size=3 * BLOCK_SIZE)
    with engine(img) as vol:
        ext = next(r for r in vol.trees["bmap"].scan(lo=(ino, 0), hi=(ino,)))
        vol.trees["free"].insert((ext[2] + 1, 1))
        vol.sb["free_blocks"] = int(vol.sb["free_blocks"]) + 1
    rc, problems = run_check(img)
    assert any("both free and file data" in p for p in problems), problems
    fixes, _ = repair_and_verify(img, base[1])
    assert any(f.startswith("repaired: free tree: 0 leaked block(s) given back, 1 used")
               for f in fixes), fixes


def test_wrong_link_count(img, base):
    ino = a_file(base[1])
    with engine(img) as vol:
        rec = list(vol.trees["inode"].lookup((ino,)))
        rec[2] += 3
        vol.trees["inode"].update(tuple(rec))
        d = vol.trees["inode"].lookup((ROOT_INO,))
        vol.trees["inode"].update((d[0], d[1], d[2] + 1) + d[3:])
    fixes, _ = repair_and_verify(img, base[1])
    assert any(f"inode {ino}" in f and "link count 4 set to 1" in f for f in fixes), fixes
    assert any("inode 1 (/): link count" in f for f in fixes), fixes


def test_dangling_directory_entry(img, base):
    with engine(img) as vol:
        Dirs(vol).add(ROOT_INO, b"ghost", 99999, DT_REG)
    fixes, _ = repair_and_verify(img, base[1])
    assert any("'ghost'" in f and "missing inode 99999: dropped" in f for f in fixes), fixes
    fs = Filesystem.open(str(img), readonly=True)
    with pytest.raises(NotFound):
        fs.lookup(ROOT_INO, b"ghost")
    fs.close()


def test_file_with_no_name_goes_to_lost_found(img, base):
    files = base[1]
    ino = a_file(files, min_size=4096, xattrs=True)
    name = files[ino][0].rsplit("/", 1)[1].encode()
    with engine(img) as vol:
        d = Dirs(vol)
        parent = next(r[0] for r in vol.trees["dir"].scan() if r[2] == ino)
        pos = d.lookup(parent, name)[0]
        d.remove(parent, pos, name)
    fixes, after = repair_and_verify(img, files, intact=False, moved_ok=True)
    assert after[ino][0] == [f"/lost+found/{ino}"]
    assert any("created /lost+found" in f for f in fixes), fixes
    fs = Filesystem.open(str(img), readonly=True)
    lf = fs.lookup(ROOT_INO, b"lost+found")
    assert stat.S_IMODE(lf.mode) == 0o700 and stat.S_ISDIR(lf.mode)
    fs.close()


def test_directory_with_no_name_goes_to_lost_found(img, base):
    files = base[1]
    with engine(img) as vol:
        d = Dirs(vol)
        dino = d.lookup(ROOT_INO, b"d0")[1]
        d.remove(ROOT_INO, d.lookup(ROOT_INO, b"d0")[0], b"d0")
    fixes, after = repair_and_verify(img, files, intact=False, moved_ok=True)
    for ino, (p, _, _) in files.items():
        if p.startswith("/d0/"):
            assert after[ino][0][0] == f"/lost+found/{dino}" + p[3:]
    assert any(f"directory {dino} was in no directory" in f for f in fixes), fixes


def test_unlinked_inode_not_on_orphan_list(img, base):
    with engine(img) as vol:
        orphan = vol.trees["orphan"].first()[0]
        vol.trees["orphan"].delete((orphan,))
    fixes, _ = repair_and_verify(img, base[1])
    assert f"repaired: inode {orphan}: link count 0: put on the orphan list" in fixes
    # the next mount frees it
    fs = Filesystem.open(str(img))
    with pytest.raises(NotFound):
        fs.getattr(orphan)
    fs.close()
    assert run_check(img) == (0, [])


@pytest.mark.parametrize("where", ["outside", "log", "node"])
def test_bad_extent_record_dropped(img, base, where):
    ino = a_file(base[1], min_size=1)
    with engine(img) as vol:
        if where == "outside":
            p = vol.total_blocks + 5
        elif where == "log":
            p = int(vol.sb["log_start"]) + 3
        else:
            p = vol.trees["inode"].root
        vol.trees["bmap"].insert((ino, 1000, p, 2, 0))
        rec = list(vol.trees["inode"].lookup((ino,)))
        rec[6] += 2
        vol.trees["inode"].update(tuple(rec))
    fixes, _ = repair_and_verify(img, base[1])
    assert any(f"inode {ino}" in f and "extent at file block 1000" in f for f in fixes), fixes


def test_superblock_counters(img, base):
    with engine(img) as vol:
        sb = vol.sb
        sb["free_blocks"] = int(sb["free_blocks"]) + 7
        sb["inode_count"] = int(sb["inode_count"]) + 2
        sb["next_ino"] = 3
        sb["nrecs"][2] = int(sb["nrecs"][2]) + 1
        vol.mark_dirty_sb()
    fixes, _ = repair_and_verify(img, base[1])
    text = "\n".join(fixes)
    for what in ("free block count", "inode count", "next inode number 3 is not above",
                 "dir tree: record count"):
        assert what in text, text


def test_primary_superblock_damaged(img, base):
    write_bytes(img, 0, lambda b: b.__setitem__(200, b[200] ^ 0x40))
    fixes, _ = repair_and_verify(img, base[1])
    assert any("using the secondary copy" in f for f in fixes), fixes
    vol = Volume.open(str(img), readonly=True)
    assert vol.note == ""
    vol.pmem.close()


# ---------------------------------------------------------------- node damage

# what may change when a node of each tree is lost
EXPECT = {
    "inode": dict(intact=False, moved_ok=True, padded_ok=True, allow_lost=True,
                  xattrs_ok=False),
    "dir": dict(intact=False, moved_ok=True),
    "bmap": dict(),                    # the extents come back from the rmap
    "xattr": dict(xattrs_ok=False),
}


@pytest.mark.parametrize("how", ["zero", "flip"])
@pytest.mark.parametrize("tree", TREES)
def test_node_damaged(img, base, tree, how):
    nodes, root = node_blocks(img, tree)
    leaves = [b for b, level in nodes if level == 0 and b != root]
    bno = leaves[len(leaves) // 2] if leaves else root

    def damage(blk):
        if how == "zero":
            blk[:] = 0
        else:
            blk[100 + bno % 3000] ^= 1 << (bno % 8)

    write_bytes(img, bno, damage)
    rc, problems = run_check(img)
    assert rc == 4 and any(f"block {bno}" in p for p in problems), problems
    fixes, after = repair_and_verify(img, base[1], **EXPECT.get(tree, {}))
    assert any(f.startswith(f"repaired: {tree} tree: rebuilt from the") for f in fixes), fixes


@pytest.mark.parametrize("tree", TREES)
def test_root_node_zeroed(img, base, tree):
    """A lost root hides no leaf: the rmap names every node of the tree
    (a scan of the device finds those of the free-space and rmap trees),
    every leaf is read and nothing is lost."""
    nodes, root = node_blocks(img, tree)
    write_bytes(img, root, lambda b: b.__setitem__(slice(None), 0))
    fixes, after = repair_and_verify(img, base[1])
    if len(nodes) > 1:
        assert any(f.startswith(f"repaired: {tree} tree: rebuilt") and "leaves found through"
                   in f for f in fixes), fixes
    assert not any("lost+found" in f for f in fixes), fixes


def test_swapped_nodes(img, base):
    nodes, root = node_blocks(img, "bmap")
    a, b = [bno for bno, level in nodes if level == 0][:2]

    def swap(_blk):
        vol_a, vol_b = pm.block(a).copy(), pm.block(b).copy()
        pm.block(a)[:] = vol_b
        pm.block(b)[:] = vol_a

    vol = Volume.open(str(img))
    pm = vol.pmem
    swap(None)
    clear_log(vol)
    pm.close()
    rc, problems = run_check(img)
    assert any(f"block {a}" in p for p in problems) and \
        any(f"block {b}" in p for p in problems), problems
    repair_and_verify(img, base[1])


def test_repair_with_two_kinds_of_damage_and_a_lost_rmap(img, base):
    """The extent map and the rmap both lose a leaf: what only they knew is gone,
    the rest is repaired and consistent."""
    for tree in ("rmap", "bmap"):
        nodes, root = node_blocks(img, tree)
        leaf = [b for b, level in nodes if level == 0][0]
        write_bytes(img, leaf, lambda blk: blk.__setitem__(slice(None), 0))
    rc, problems = run_check(img)
    assert rc == 4
    rc, lines = run_check(img, "--repair")
    assert rc == 0, lines
    assert run_check(img) == (0, [])
    assert repair_image(str(img)) == ([], [])
    after = walk(img)
    for ino, (p, data, xa) in base[1].items():
        if ino in after and after[ino][1]:
            # a file that lost extents reads zeros there (a hole), never wrong bytes
            got = after[ino][1]
            arr, want = np.frombuffer(got, np.uint8), np.frombuffer(data, np.uint8)
            assert len(got) == len(data)
            bad = (arr != want) & (arr != 0)
            assert not bad.any(), f"inode {ino}: wrong bytes"


def test_repair_never_writes_over_the_old_image_before_commit(img, base):
    """The rebuilt trees go into blocks the old image did not use: every
    block the old image's trees, extents and pool used is unchanged until
    the superblocks switch, so only fresh blocks, the log and the two
    superblocks differ after a repair that rebuilt trees."""
    with engine(img) as vol:
        rec = next(r for r in vol.trees["rmap"].scan() if r[1] <= OWN_MAX_INO)
        vol.trees["rmap"].delete(rec[:3])
    before = np.fromfile(img, dtype=np.uint8).reshape(-1, BLOCK_SIZE)
    vol = Volume.open(str(img), readonly=True)
    used = np.zeros(vol.total_blocks, dtype=bool)
    for name, t in vol.trees.items():
        used[t.node_blocks()] = True
    for ino, foff, p, n, _ in vol.trees["bmap"].scan():
        used[p:p + n] = True
    for rec in vol.trees["xattr"].scan():
        if rec[5]:
            used[rec[5]:rec[5] + -(-rec[4] // BLOCK_SIZE)] = True
    sb = vol.sb
    log = (int(sb["log_start"]), int(sb["log_blocks"]))
    vol.pmem.close()
    left, fixed = repair_image(str(img))
    assert left == [] and fixed
    after = np.fromfile(img, dtype=np.uint8).reshape(-1, BLOCK_SIZE)
    changed = np.nonzero((before != after).any(axis=1))[0]
    for b in changed:
        b = int(b)
        if b in (0, len(after) - 1) or log[0] <= b < log[0] + log[1]:
            continue
        assert not used[b], f"block {b} of the old image was overwritten"


def test_repair_command_line(img, base):
    """The real command: `daxfs check --repair` prints one line per fix."""
    from conftest import daxfs
    ino = a_file(base[1])
    with engine(img) as vol:
        rec = list(vol.trees["inode"].lookup((ino,)))
        rec[2] = 5
        vol.trees["inode"].update(tuple(rec))
    res = daxfs("check", img)
    assert res.returncode == 4, res.stdout + res.stderr
    res = daxfs("check", "--repair", img)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"repaired: inode {ino} ({base[1][ino][0]}): link count 5 set to 1" in res.stdout
    assert "Traceback" not in res.stderr
    res = daxfs("check", "--repair", img)
    assert res.returncode == 0 and "repaired" not in res.stdout, res.stdout


def test_repair_without_rmap(tmp_path):
    """A filesystem made without the rmap btree: the same repairs, no rmap."""
    path = tmp_path / "normap.img"
    mkfs(str(path), 32 << 20, rmap=False, dup=False)
    fs = Filesystem.open(str(path))
    files = {}
    for i in range(60):
        a = fs.create(ROOT_INO, b"n%02d" % i, stat.S_IFREG | 0o644, 0, 0)
        data = bytes([i]) * (i * 700)
        fs.write(a.ino, 0, data)
        files[a.ino] = (f"/n{i:02d}", data, {})
    fs.close()
    nodes, root = node_blocks(path, "dir")
    leaf = [b for b, level in nodes if level == 0][1]
    write_bytes(path, leaf, lambda b: b.__setitem__(slice(None), 0))
    with engine(path) as vol:
        s, n = vol.trees["free"].first()
        vol.trees["free"].update((s, n - 3))
    fixes, after = repair_and_verify(path, files, intact=False, moved_ok=True)
    assert any(f.startswith("repaired: dir tree: rebuilt from the") for f in fixes), fixes


def test_impossible_file_size(img, base):
    """A size no file can have (beyond 2**63-1): the engine refuses that
    inode (EUCLEAN for it, not a crash, and no shutdown: the rest is
    served); repair sets it from the extents."""
    ino = a_file(base[1], min_size=BLOCK_SIZE)
    with engine(img) as vol:
        rec = list(vol.trees["inode"].lookup((ino,)))
        rec[5] = (1 << 64) - 5
        vol.trees["inode"].update(tuple(rec))
    fs = Filesystem.open(str(img), readonly=True)
    from daxfs.engine.errors import DamagedFile
    with pytest.raises(DamagedFile):
        fs.getattr(ino)
    assert fs.getattr(1).ino == 1 and not fs.shutdown_reason
    fs.close()
    rc, problems = run_check(img)
    assert any(f"inode {ino}: size {(1 << 64) - 5} is beyond" in p for p in problems), problems
    files = dict(base[1])
    p, data, xa = files[ino]
    files[ino] = (p, data + bytes(-len(data) % BLOCK_SIZE), xa)   # size now whole blocks
    fixes, _ = repair_and_verify(img, files)
    assert any(f"impossible size {(1 << 64) - 5} set to" in f for f in fixes), fixes


def test_poisoned_node(img, base):
    """A node on a bad (poisoned) range is unreadable: rebuilt elsewhere; the
    bad block is free afterwards and the next open clears it."""
    from daxfs.engine.badblocks import BadBlocks
    nodes, root = node_blocks(img, "bmap")
    leaf = [b for b, level in nodes if level == 0][1]
    BadBlocks(str(img)).add(leaf, 1)
    rc, problems = run_check(img)
    assert any(f"node block {leaf} is on a poisoned" in p for p in problems), problems
    fixes, _ = repair_and_verify(img, base[1])
    assert any(f"block {leaf} is poisoned" in f for f in fixes), fixes
    fs = Filesystem.open(str(img))
    assert [r.action for r in fs.poison_reports] == ["1 free block(s) zeroed and cleared"]
    fs.close()
    assert BadBlocks(str(img)).ranges() == []
    assert run_check(img) == (0, [])


def test_entry_and_xattr_under_the_wrong_hash(img, base):
    """A directory entry and an extended attribute filed under a key whose
    hash half is not their name's: lookups cannot find them; check says
    so (the record checks), repair refiles them."""
    files = base[1]
    ino = a_file(files, xattrs=True)
    path = files[ino][0]
    parent_path, name = path.rsplit("/", 1)
    with engine(img) as vol:
        d = Dirs(vol)
        parent = next(r[0] for r in vol.trees["dir"].scan() if r[2] == ino)
        pos, _, ftype = d.lookup(parent, name.encode())
        d.remove(parent, pos, name.encode())
        vol.trees["dir"].insert((parent, 7, ino, ftype, len(name), name.encode()))
        x = next(r for r in vol.trees["xattr"].scan(lo=(ino, 0), hi=(ino,)))
        vol.trees["xattr"].delete(x[:2])
        vol.trees["xattr"].insert((ino, 9) + tuple(x[2:]))
    rc, problems = run_check(img)
    assert any("filed under the wrong name hash" in p and repr(name.encode()) in p
               for p in problems), problems
    assert any("extended attribute" in p and "wrong name hash" in p for p in problems), problems
    fixes, _ = repair_and_verify(img, files)
    assert sum("filed under the wrong hash: moved" in f for f in fixes) == 2, fixes


def test_size_past_the_maximum_with_an_extent_at_the_end(img, base):
    """Issue 16's finding: a file whose last extent ends at the last file
    block there can be and whose size is past 2**63-1: repair sets a size
    check accepts (the maximum), never 2**63."""
    from daxfs.engine.format import MAX_FILE_BLOCKS, MAX_FILE_BYTES
    ino = a_file(base[1], min_size=BLOCK_SIZE)
    with engine(img) as vol:
        s, _ = vol.alloc.alloc(1)
        vol.trees["bmap"].insert((ino, MAX_FILE_BLOCKS - 1, s, 1, 0))
        vol.rmap.map(s, ino, MAX_FILE_BLOCKS - 1, 1)
        rec = list(vol.trees["inode"].lookup((ino,)))
        rec[5] = (1 << 63) + 4096
        rec[6] += 1
        vol.trees["inode"].update(tuple(rec))
    rc, problems = run_check(img)
    assert any("is beyond the maximum file size" in p for p in problems), problems
    rc, lines = run_check(img, "--repair")
    assert rc == 0, lines
    assert any(f"set to {MAX_FILE_BYTES}" in ln for ln in lines), lines
    assert run_check(img) == (0, [])
    fs = Filesystem.open(str(img), readonly=True)
    assert fs.getattr(ino).size == MAX_FILE_BYTES
    fs.close()
