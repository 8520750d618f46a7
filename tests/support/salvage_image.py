"""A populated image whose trees are deep enough to lose a root, a leaf or
an interior node, what it holds (a snapshot of every inode), and what a
repair must give back after one node is lost: the helpers of
test_salvage.py (engine) and test_damaged_mount.py (real mounts).

The image (`populate`): thousands of files of every kind (regular files
of many sizes, empty files, FIFOs, sockets, device nodes, symlinks, empty
and full directories, hard links), with varied modes, owners and times,
inline and out-of-line extended attributes, POSIX ACLs, fragmented files
(several extents each), reflinked pairs (shared ranges), holes in the
free space, and unlinked files still on the orphan list: the inode,
directory, extent-map, rmap and xattr trees have interior nodes below
their roots; the refcount, free-space and orphan trees have leaves below
their roots.

`expected(before, tree, lost_records)` says what must survive the loss of
a leaf's records: every file whose record sits in an intact leaf is
identical (contents, size, mode, owner, times, extended attributes and
ACLs; its names, unless the lost leaf held the entries that named it);
`compare` checks a snapshot taken after the repair against it.
"""

from __future__ import annotations

import hashlib
import random
import stat
import subprocess

from daxfs.engine import acl
from daxfs.engine.dirs import DIR_HEAD_BYTES, dir_sizes
from daxfs.engine.format import BLOCK_SIZE as BS, ROOT_INO
from daxfs.engine.fs import Filesystem
from daxfs.engine.mkfs import mkfs
from daxfs.engine.trees import SPECS
from daxfs.engine.volume import Volume

MiB = 1 << 20
TREE_KINDS = {"inode": "inode-tree", "dir": "dir-tree", "bmap": "extent-map-tree",
              "xattr": "xattr-tree", "rmap": "rmap-tree", "refcount": "refcount-tree",
              "free": "free-space-tree", "orphan": "orphan-tree"}


def _acl(uid: int) -> bytes:
    return acl.encode([[acl.USER_OBJ, 6, acl.UNDEFINED_ID], [acl.USER, 4, uid],
                       [acl.GROUP_OBJ, 4, acl.UNDEFINED_ID], [acl.MASK, 6, acl.UNDEFINED_ID],
                       [acl.OTHER, 0, acl.UNDEFINED_ID]])


def populate(path, *, size=256 * MiB, files=5600, seed=5, close=False, dup=False) -> None:
    """Make and fill the image (single metadata unless `dup`: the salvage
    tests are about a lost node that has no second copy).  Unless `close`,
    it is left as by a crash after a commit: files unlinked while open
    stay on the orphan list."""
    rng = random.Random(seed)
    mkfs(str(path), size, dup=dup)
    fs = Filesystem.open(str(path))
    dirs = [ROOT_INO]
    for i in range(70):
        d = fs.mkdir(rng.choice(dirs), b"dir%02d" % i, rng.choice([0o755, 0o700, 0o2775]),
                     rng.randrange(2000), rng.randrange(2000))
        dirs.append(d.ino)
    for i in range(8):
        fs.mkdir(rng.choice(dirs), b"empty%d" % i, 0o750, 7, 8)
    regular = []
    for i in range(files):
        parent = rng.choice(dirs)
        name = b"f%05d" % i
        uid, gid = rng.randrange(3000), rng.randrange(3000)
        kind = rng.random()
        if kind < 0.02:
            ino = fs.mknod(parent, name, stat.S_IFIFO | 0o640, uid, gid).ino
        elif kind < 0.03:
            ino = fs.mknod(parent, name, stat.S_IFSOCK | 0o600, uid, gid).ino
        elif kind < 0.04:
            ino = fs.mknod(parent, name, stat.S_IFCHR | 0o620, uid, gid, rdev=0x0501 + i).ino
        elif kind < 0.07:
            ino = fs.symlink(parent, name, b"../target/%d" % i, uid, gid).ino
        else:
            mode = rng.choice([0o644, 0o600, 0o755, 0o640, 0o4755, 0o444])
            ino = fs.create(parent, name, stat.S_IFREG | mode, uid, gid).ino
            n = rng.choice([0, 0, 1, 100, 3000, 4096, 5000, 9000, 20000])
            if n:
                fs.write(ino, 0, rng.randbytes(n))
            regular.append(ino)
        t = rng.randrange(1 << 40) * 1000 + rng.randrange(1000)
        if not stat.S_ISLNK(fs.getattr(ino).mode):
            fs.setattr(ino, atime_ns=t, mtime_ns=t + rng.randrange(10**12))
    # fragmented files: appends interleaved with other files' appends
    frag = rng.sample(regular, len(regular) * 2 // 5)
    for rnd in range(4):
        for ino in frag:
            size = fs.getattr(ino).size
            fs.write(ino, -(-size // BS) * BS, rng.randbytes(rng.choice([10, 4096])))
    # extended attributes and ACLs
    for ino in rng.sample(regular, len(regular) // 5):
        fs.setxattr(ino, b"user.tag", b"t%d" % ino)
        if rng.random() < 0.3:
            fs.setxattr(ino, b"user.note", rng.randbytes(rng.choice([100, 5000])))
    for ino in rng.sample(regular, len(regular) // 20):
        fs.setxattr(ino, acl.ACCESS, _acl(rng.randrange(1, 3000)))
    for d in rng.sample(dirs[1:], 10):
        fs.setxattr(d, acl.DEFAULT, _acl(1234))
    # shared extents (the refcount tree): clones, then a block of each rewritten
    sources = [i for i in regular if fs.getattr(i).size >= 3 * BS][:230]
    for k, src in enumerate(sources):
        dst = fs.create(ROOT_INO, b"clone%03d" % k, stat.S_IFREG | 0o644, 0, 0).ino
        fs.clone_range(src, 0, dst, 0, 0)
        fs.write(dst, BS, b"c" * 10)
    for k, ino in enumerate(rng.sample(regular, 60)):
        parent = rng.choice(dirs)
        fs.link(ino, parent, b"hard%03d" % k)
    # holes in the free space: remove every 9th file
    for parent in dirs:
        for k, e in enumerate(list(fs.readdir(parent))):
            if e.name.startswith(b"f") and k % 9 == 4 and not stat.S_ISDIR(e.attr.mode) \
                    and e.attr.nlink == 1:
                fs.unlink(parent, e.name)
                fs.forget(e.attr.ino)
    # unlinked while open at the "crash": the orphan list
    for k in range(files // 9):
        ino = fs.create(ROOT_INO, b"orphan%03d" % k, stat.S_IFREG | 0o600, 0, 0).ino
        fs.write(ino, 0, b"o" * 100)
        fs.unlink(ROOT_INO, b"orphan%03d" % k)
    fs.commit()
    if close:
        fs.close()
    else:
        fs.vol.pmem.close()


def sparse_copy(src, dst):
    """A copy of the image at `src` (holes kept): one populated image, a
    fresh copy for each test."""
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True, timeout=60)
    return dst


def tree_shapes(path) -> dict[str, int]:
    vol = Volume.open(str(path), readonly=True)
    try:
        return {name: t.height for name, t in vol.trees.items()}
    finally:
        vol.pmem.close()


def node_of(path, tree: str, which: str) -> tuple[int, list[tuple]]:
    """The block `daxfs poison inject --metadata KIND:WHICH` aims at, and
    the records lost with it when it is a leaf (none when it is the root
    or an interior node: the rmap names the nodes below it)."""
    from daxfs.engine.poison_target import metadata_block
    fs = Filesystem.open(str(path), readonly=True)
    try:
        bno = metadata_block(fs, f"{TREE_KINDS[tree]}:{which}")
        t = fs.vol.trees[tree]
        [v] = [v for v in t.walk() if v.bno == bno]
        return bno, (v.records if v.level == 0 else [])
    finally:
        fs.close()


def names(fs):
    """(path, entry) of every name reachable from the root of an open
    filesystem; each directory is listed once."""
    stack, listed = [(ROOT_INO, "")], {ROOT_INO}
    while stack:
        d, dp = stack.pop()
        for e in fs.readdir(d):
            if e.name in (b".", b".."):
                continue
            p = f"{dp}/{e.name.decode()}"
            yield p, e
            if stat.S_ISDIR(e.attr.mode) and e.attr.ino not in listed:
                listed.add(e.attr.ino)
                stack.append((e.attr.ino, p))


def snapshot(path) -> dict:
    """{ino: {"paths", "attr", "data", "xattrs"}} of every inode reachable
    from the root, and of the unlinked inodes on the orphan list."""
    fs = Filesystem.open(str(path), readonly=True)
    try:
        out: dict[int, dict] = {}

        def visit(ino: int, path: str) -> None:
            a = fs.getattr(ino)
            if ino in out:
                out[ino]["paths"].add(path)
                return
            if stat.S_ISREG(a.mode):
                data = hashlib.sha256(fs.read(ino, 0, a.size)).hexdigest()
            elif stat.S_ISLNK(a.mode):
                data = fs.readlink(ino)
            else:
                data = None
            out[ino] = {"paths": {path}, "data": data,
                        "attr": (a.mode, a.uid, a.gid, a.rdev, a.size, a.atime_ns,
                                 a.mtime_ns, a.ctime_ns, a.btime_ns),
                        "xattrs": {n: fs.getxattr(ino, n) for n in fs.listxattr(ino)}}

        visit(ROOT_INO, "/")
        for p, e in names(fs):
            visit(e.attr.ino, p)
        for rec in fs.vol.trees["orphan"].scan():
            if rec[0] not in out:
                visit(rec[0], f"(orphan {rec[0]})")
        return out
    finally:
        fs.close()


def expected(before: dict, tree: str, lost: list[tuple]) -> dict:
    """What must hold after repairing the loss of `lost` (the records of
    one leaf of `tree`): {ino: (paths or None for "any", attr or None,
    data or None, xattrs)}; inodes missing from it may have changed."""
    rec = SPECS[tree].record
    lost = [rec._make(r) for r in lost]
    want = {}
    gone_inodes = {r.ino for r in lost} if tree == "inode" else set()
    lost_names = {(r.parent, r.name) for r in lost} if tree == "dir" else set()
    lost_xattrs = {(r.ino, r.name) for r in lost} if tree == "xattr" else set()
    # a device node whose record is lost cannot be made again (its number
    # is gone): its names go too
    devices = {r.ino for r in lost
               if tree == "inode" and (stat.S_ISCHR(r.mode) or stat.S_ISBLK(r.mode))}
    for ino, f in before.items():
        if ino in gone_inodes:
            continue
        xattrs = {n: v for n, v in f["xattrs"].items() if (ino, n) not in lost_xattrs}
        want[ino] = {"paths": set(f["paths"]), "attr": f["attr"], "data": f["data"],
                     "xattrs": xattrs}
    if lost_names or devices:
        _renamed(before, want, lost_names, devices)
    return want


def _renamed(before: dict, want: dict, lost_names: set, gone: set) -> None:
    """The paths after the entries `lost_names` ((parent, name)) and those
    naming the inodes `gone` are gone: an inode with no entry left goes to
    /lost+found/INO, with what is below it (as repair and xfs_repair do);
    directory sizes follow their entries."""
    by_path = {p: ino for ino, f in before.items() for p in f["paths"]}
    entries = []                    # (parent ino, name, ino)
    for p, ino in by_path.items():
        if p == "/" or p.startswith("(orphan"):
            continue
        parent = by_path.get(p.rsplit("/", 1)[0] or "/")
        name = p.rsplit("/", 1)[1].encode()
        if (parent, name) not in lost_names and ino not in gone:
            entries.append((parent, name, ino))
    named = {ino for _, _, ino in entries}
    for ino, f in before.items():
        if ino != ROOT_INO and ino not in named and ino not in gone and not any(
                p.startswith("(orphan") for p in f["paths"]):
            entries.append(("lost+found", str(ino).encode(), ino))
    children: dict = {}
    for parent, name, ino in entries:
        children.setdefault(parent, []).append((name, ino))
    paths: dict[int, set] = {ROOT_INO: {"/"}}
    stack = [(ROOT_INO, ""), ("lost+found", "/lost+found")]
    while stack:
        d, dp = stack.pop()
        for name, ino in children.get(d, []):
            p = f"{dp}/{name.decode()}"
            first = ino not in paths
            paths.setdefault(ino, set()).add(p)
            if first and stat.S_ISDIR(before[ino]["attr"][0]):
                stack.append((ino, p))
    for ino, w in want.items():
        if not any(p.startswith("(orphan") for p in w["paths"]):
            w["paths"] = paths.get(ino, set())
    # a directory's size is the bytes of its entries (dirs.py): the ones it
    # lost, and the root's new /lost+found
    if "lost+found" in children:
        entries.append((ROOT_INO, b"lost+found", None))
    sizes = dir_sizes((parent, name) for parent, name, _ in entries if parent != "lost+found")
    for ino, w in want.items():
        if stat.S_ISDIR(w["attr"][0]):
            a = list(w["attr"])
            a[4] = sizes.get(ino, DIR_HEAD_BYTES)
            w["attr"] = tuple(a)


def compare(want: dict, after: dict, *, exact_paths=True) -> list[str]:
    """What differs between a snapshot after the repair and what must hold."""
    out = []
    for ino, w in sorted(want.items()):
        got = after.get(ino)
        if got is None:
            out.append(f"inode {ino} {sorted(w['paths'])}: gone")
            continue
        for key in ("attr", "data", "xattrs"):
            if got[key] != w[key]:
                out.append(f"inode {ino} {sorted(w['paths'])}: {key} differs:"
                           f" {str(w[key])[:120]} -> {str(got[key])[:120]}")
        if exact_paths and got["paths"] != w["paths"]:
            out.append(f"inode {ino}: paths {sorted(w['paths'])} -> {sorted(got['paths'])}")
    return out
