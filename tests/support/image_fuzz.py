"""The image fuzzer: tests/test_fuzz.py runs a few cases of each kind, and
`scripts/fuzz_images.py --count N --seed S [--mount] [--no-repair] [--case I]
[--keep DIR]` runs it long by hand.

Damage copies of one populated image at random and hold the tools to their
promises.  The base image (24 MiB, made from --seed) has files of many sizes
in nested directories, a reflinked pair, inline and out-of-line xattrs, a
symlink, a hard link and enough of each to make most trees two levels deep.
Its metadata is inventoried from the engine's own view: every node of every
tree (with its parent), both superblocks, the log (and which blocks its last,
valid record would restore on replay) and the reserve pool.

Each case copies the image and applies one random damage:

  flip      a few bit flips in one to three metadata blocks
  zero      one or two metadata blocks zeroed
  swap      two metadata blocks exchanged
  truncate  the image cut short
  sbrandom  random bytes over one or both superblocks
  log       random bytes over the log's header
  mixed     two of the above

and, with --semantic (or --kind NAME), damage no checksum can catch, made
through the engine's own tree operations (every block validly sealed):

  extent-meta   a file's extent points at metadata (a superblock copy, the
                log, a tree node, a pool block)
  extent-cross  a file's extent points at another file's blocks
  free-overlap  the free-space tree lists a file's blocks as free
  symlink-huge  a symlink's size says 2 GiB
  size-huge     a file's size or block count no file can have
  nlink-huge    a directory's link count past any limit
  dirent-bad    a name with a '/' or a NUL in it

and then requires:

* `daxfs check` exits 0, 4 or 8 with no Python traceback, and names every
  damaged metadata block it could reach (every ancestor intact) unless
  replaying the log mends it;
* `Filesystem.open` either refuses with a one-line DaxfsError or serves;
  reading every file (and directory, symlink, xattr) gives the original
  bytes or a DaxfsError meaning EIO (Shutdown, MediaError), never other
  bytes, never another exception;
* (unless --no-repair) `repair_image` leaves nothing behind, a second
  repair finds nothing, every file still there holds its original bytes
  (zero-padded to a block if it had to be recreated from its extents),
  and nothing else raises;
* with --mount: `daxfs mount` either refuses with one clear line or serves,
  a walk of the mount (in a subprocess, with a timeout) sees the original
  bytes or EIO (EUCLEAN for a damaged file), the daemon logs no traceback,
  and unmounting leaves no mount behind.  Every subprocess has a timeout.
  For semantic damage the walk also writes: over the damaged file, and a
  new file (the allocator); afterwards no block the damaged extent points
  at holds what was written, and every other file holds its bytes: a
  crafted image never turns a user's write into a write over metadata or
  another file.

Prints a summary (cases, refused, served, shut down, repaired, failures with
the case numbers to rerun with --case) and exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from daxfs.cli import check as cmd_check  # noqa: E402
from daxfs.engine.errors import DaxfsError, DamagedFile, MediaError, Shutdown  # noqa: E402
from daxfs.engine.format import (BLOCK_SIZE as BS, LOG_ENT_DTYPE, LOG_HDR_DTYPE,  # noqa: E402
                                 LOG_HDR_SIZE, LOG_MAGIC, ROOT_INO, SB_MAGIC)
from daxfs.engine.checksum import sealed_ok  # noqa: E402
from daxfs.engine.fs import Filesystem  # noqa: E402
from daxfs.engine.mkfs import mkfs  # noqa: E402
from daxfs.engine.volume import Volume  # noqa: E402

IMAGE_SIZE = 24 << 20
CASE_TIMEOUT = 120          # seconds for the in-process part of one case
MOUNT_TIMEOUT = 60
WALK_TIMEOUT = 60
KINDS = ["flip", "zero", "swap", "truncate", "sbrandom", "log", "mixed"]
WEIGHTS = [30, 20, 15, 5, 8, 5, 17]
# opt-in (--kind resealed): random bytes in a node's records, checksum made
# valid again: wrong metadata no checksum can catch.  Reads may then return
# other bytes; what is required is no crash, no hang, and a clean repair.
EXTRA_KINDS = ["resealed"]
SEMANTIC_KINDS = ["extent-meta", "extent-cross", "free-overlap", "symlink-huge", "size-huge",
                  "nlink-huge", "dirent-bad"]
MARKER = b"daxfs-fuzz-write:"          # what the mounted walk writes (semantic cases)


# =============================================================== the base image

def populate(path: str, seed: int, dup: bool = True) -> dict:
    """Make the base image (duplicated metadata unless not `dup`); returns the expected tree {path: entry} where an
    entry is ("dir", [names]) | ("file", bytes, {xattrs}, ino) | ("link", target)."""
    rng = random.Random(seed)
    mkfs(path, IMAGE_SIZE, dup=dup)
    fs = Filesystem.open(path)
    tree = {"/": ["dir", []]}
    dirs = [(ROOT_INO, "/")]

    def add(parent_path, name):
        tree[parent_path][1].append(name)
        return parent_path.rstrip("/") + "/" + name

    for i in range(5):
        pino, ppath = rng.choice(dirs)
        a = fs.mkdir(pino, f"dir{i}".encode(), 0o755, 0, 0)
        p = add(ppath, f"dir{i}")
        tree[p] = ["dir", []]
        dirs.append((a.ino, p))
    files = []
    for i in range(70):
        pino, ppath = rng.choice(dirs)
        a = fs.create(pino, f"f{i:03d}".encode(), stat.S_IFREG | 0o644, 0, 0)
        size = rng.choice([0, 1, 300, 4096, 6000, 12288, 30000, 70000])
        data = rng.randbytes(size)
        if data:
            fs.write(a.ino, 0, data)
        p = add(ppath, f"f{i:03d}")
        tree[p] = ["file", data, {}, a.ino]
        files.append(p)
    frag = []
    for i in range(16):                         # several extents each
        pino, ppath = rng.choice(dirs)
        a = fs.create(pino, f"frag{i:02d}".encode(), stat.S_IFREG | 0o600, 0, 0)
        p = add(ppath, f"frag{i:02d}")
        tree[p] = ["file", b"", {}, a.ino]
        frag.append((a.ino, p))
    for rnd in range(5):
        for ino, p in frag:
            piece = rng.randbytes(4096)
            fs.write(ino, rnd * 4096, piece)
            tree[p][1] += piece
    big = fs.create(ROOT_INO, b"big", stat.S_IFREG | 0o644, 0, 0)
    data = rng.randbytes(300_000)
    fs.write(big.ino, 0, data)
    tree[add("/", "big")] = ["file", data, {}, big.ino]
    clone = fs.create(ROOT_INO, b"clone", stat.S_IFREG | 0o644, 0, 0)
    fs.clone_range(big.ino, 0, clone.ino, 0, 0)
    fs.write(clone.ino, 4096 * 3, b"cow" * 500)
    cdata = data[:12288] + b"cow" * 500 + data[12288 + 1500:]
    tree[add("/", "clone")] = ["file", cdata, {}, clone.ino]
    fs.link(big.ino, dirs[1][0], b"hardlink")
    tree[add(dirs[1][1], "hardlink")] = ["file", data, {}, big.ino]
    for p in rng.sample(files, 14):
        ino = tree[p][3]
        small, large = rng.randbytes(40), rng.randbytes(rng.choice([200, 5000, 9000]))
        fs.setxattr(ino, b"user.small", small)
        fs.setxattr(ino, b"user.large", large)
        tree[p][2] = {b"user.small": small, b"user.large": large}
    fs.symlink(ROOT_INO, b"symlink", b"dir0/f001", 0, 0)
    tree[add("/", "symlink")] = ["link", b"dir0/f001"]
    fs.close()
    # open once more: the last log record then holds only the superblocks,
    # so replay mends little of the damage to come
    Filesystem.open(path).close()
    return {k: tuple(v) if v[0] != "file" else (v[0], v[1], v[2], v[3])
            for k, v in tree.items()}


def inventory(path: str) -> dict:
    """Where the metadata of the (clean) base image lives."""
    vol = Volume.open(path, readonly=True)
    try:
        total = vol.total_blocks
        nodes = {}                  # bno -> (tree, level, parent bno or None)
        twin_of = {}                # dup: node -> the block of its second copy
        for name, tree in vol.trees.items():
            for v in tree.walk(leaves=False):
                nodes[v.bno] = (name, v.level, v.parent)
                if v.twin:
                    twin_of[v.bno] = v.twin
        sb = vol.sb
        log_start, log_blocks = int(sb["log_start"]), int(sb["log_blocks"])
        hdr = vol.pmem.block(log_start)[:LOG_HDR_SIZE].view(LOG_HDR_DTYPE)[0]
        healed, log_used = [], 1
        if bytes(hdr["magic"]) == LOG_MAGIC:
            n, hb = int(hdr["nblocks"]), int(hdr["hdr_blocks"])
            area = vol.pmem.blocks(log_start, hb)
            ents = area[LOG_HDR_SIZE:LOG_HDR_SIZE + LOG_ENT_DTYPE.itemsize * n] \
                .view(LOG_ENT_DTYPE)
            healed = [int(e["bno"]) for e in ents] + [int(e["twin"]) for e in ents if e["twin"]]
            del ents
            log_used = hb + n
            del area
        del hdr
        return {
            "total": total,
            "nodes": nodes,
            "twin_of": twin_of,
            "twins": {t: b for b, t in twin_of.items()},
            "dup": vol.dup,
            "sbs": [0, total - 1],
            "log": (log_start, log_blocks),
            "log_used": log_used,
            "healed": set(healed),
            "pool": vol.alloc.pool_blocks(),
        }
    finally:
        vol.pmem.close()


# =============================================================== damage

class Damage:
    def __init__(self, kind: str):
        self.kind = kind
        self.blocks: set[int] = set()      # metadata blocks whose bytes changed
        self.truncated_to: int | None = None
        self.resealed = False
        self.semantic = False              # sealed damage that check must still find
        self.target: str | None = None     # the damaged file (semantic)
        self.victims: list[int] = []       # blocks the damage points a file at
        self.desc: list[str] = []


def _meta_candidates(inv) -> list[int]:
    return sorted(inv["nodes"]) + sorted(inv["twins"]) + inv["sbs"] + [inv["log"][0]]


def apply_damage(path: str, inv: dict, rng: random.Random, kind: str, dmg: Damage) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        def rd(bno):
            f.seek(bno * BS)
            return bytearray(f.read(BS))

        def wr(bno, data):
            f.seek(bno * BS)
            f.write(bytes(data))

        def pick(k):
            nodes = sorted(inv["nodes"])
            twins = sorted(inv["twins"])
            out = set()
            while len(out) < k:
                r = rng.random()
                if r < 0.8 and twins and rng.random() < 0.35:
                    out.add(rng.choice(twins))
                elif r < 0.8:
                    out.add(rng.choice(nodes))
                elif r < 0.9:
                    out.add(rng.choice(inv["sbs"]))
                else:
                    out.add(inv["log"][0] + rng.randrange(inv["log_used"]))
            return sorted(out)

        if kind == "flip":
            for b in pick(rng.randint(1, 3)):
                data = rd(b)
                for _ in range(rng.randint(1, 4)):
                    i = rng.randrange(BS)
                    data[i] ^= 1 << rng.randrange(8)
                wr(b, data)
                dmg.blocks.add(b)
                dmg.desc.append(f"flip {b}")
        elif kind == "zero":
            for b in pick(rng.randint(1, 2)):
                if any(rd(b)):
                    wr(b, bytes(BS))
                    dmg.blocks.add(b)
                dmg.desc.append(f"zero {b}")
        elif kind == "swap":
            pool = inv["pool"]
            a = pick(1)[0]
            choices = [x for x in _meta_candidates(inv) + pool[:8] if x != a]
            b = rng.choice(choices)
            da, db = rd(a), rd(b)
            if da != db:
                wr(a, db)
                wr(b, da)
                if {a, b} != set(inv["sbs"]):       # the two copies: equivalent
                    dmg.blocks.update(x for x in (a, b) if x not in pool)
            dmg.desc.append(f"swap {a} {b}")
        elif kind == "truncate":
            new = rng.choice([rng.randrange(0, size),
                              rng.randrange(size // 2, size) // BS * BS,
                              size - BS, size - rng.randrange(1, BS)])
            f.truncate(new)
            dmg.truncated_to = new
            dmg.desc.append(f"truncate {new}")
        elif kind == "sbrandom":
            which = rng.choice([[0], [inv["sbs"][1]], inv["sbs"]])
            for b in which:
                data = rd(b)
                lo = rng.randrange(BS)
                hi = rng.choice([BS, min(BS, lo + rng.randint(1, 64))])
                data[lo:hi] = rng.randbytes(hi - lo)
                if data != rd(b):
                    wr(b, data)
                    dmg.blocks.add(b)
                dmg.desc.append(f"sbrandom {b}[{lo}:{hi}]")
        elif kind == "resealed":
            from daxfs.engine.checksum import seal
            from daxfs.engine.trees import SPECS
            b = rng.choice(sorted(inv["nodes"]))
            data = bytearray(rd(b))
            tree, level, _ = inv["nodes"][b]
            spec = SPECS[tree]
            size = (spec.rec_dtype if level == 0 else spec.ent_dtype).itemsize
            used = 64 + int.from_bytes(data[12:16], "little") * size
            for _ in range(rng.randint(1, 6)):
                i = rng.randrange(64, max(used - 7, 65))
                data[i:i + 8] = rng.randbytes(8) if rng.random() < 0.5 else \
                    rng.randrange(inv["total"] + 10).to_bytes(8, "little")
            arr = np.frombuffer(bytes(data), dtype=np.uint8).copy()
            seal(arr)
            wr(b, arr.tobytes())
            dmg.resealed = True
            dmg.desc.append(f"resealed {b} ({inv['nodes'][b][0]})")
        elif kind == "log":
            b = inv["log"][0]
            data = rd(b)
            lo = rng.randrange(64)
            data[lo:lo + 16] = rng.randbytes(16)
            wr(b, data)
            dmg.blocks.add(b)
            dmg.desc.append(f"log header {b}[{lo}:{lo + 16}]")


def semantic_damage(path: str, inv: dict, expect: dict, rng: random.Random, dmg: Damage) -> None:
    """Damage no checksum can catch, made with the engine's own tree
    operations on the image (every block it writes is validly sealed)."""
    dmg.semantic = True
    vol = Volume.open(path)
    try:
        trees = vol.trees
        files = sorted((p, e) for p, e in expect.items() if e[0] == "file" and len(e[1]) >= BS)
        kind = dmg.kind
        if kind in ("extent-meta", "extent-cross", "free-overlap"):
            path_, ent = rng.choice(files)
            ino = ent[3]
            rec = next(iter(trees["bmap"].scan(lo=(ino, 0), hi=(ino,))))
            _, foff, pblk, n, flags = rec
            if kind == "extent-meta":
                victim = rng.choice(sorted(inv["nodes"]) + inv["sbs"] + inv["pool"][:4]
                                    + [inv["log"][0]])
                trees["bmap"].update((ino, foff, victim, 1, flags))
                dmg.victims = [victim]
                dmg.desc.append(f"extent-meta: {path_} block {foff} -> metadata block {victim}")
            elif kind == "extent-cross":
                others = [(p, e) for p, e in files if e[3] != ino]
                other_path, other = rng.choice(others)
                orec = next(iter(trees["bmap"].scan(lo=(other[3], 0), hi=(other[3],))))
                k = min(n, orec[3])
                trees["bmap"].update((ino, foff, orec[2], k, flags))
                dmg.victims = list(range(orec[2], orec[2] + k))
                dmg.desc.append(f"extent-cross: {path_} -> blocks {orec[2]}+{k} of {other_path}")
            else:
                trees["free"].insert((pblk, n))
                dmg.victims = list(range(pblk, pblk + n))
                dmg.desc.append(f"free-overlap: blocks {pblk}+{n} of {path_} listed as free")
                path_ = None
            dmg.target = path_
        elif kind in ("symlink-huge", "size-huge", "nlink-huge"):
            want = {"symlink-huge": "link", "size-huge": "file", "nlink-huge": "dir"}[kind]
            choices = sorted(p for p, e in expect.items() if e[0] == want and p != "/")
            target = rng.choice(choices)
            ino = ROOT_INO
            for part in [x for x in target.split("/") if x]:
                ino = next(r[2] for r in trees["dir"].scan(lo=(ino, 0), hi=(ino,))
                           if r[5] == part.encode())
            rec = list(trees["inode"].lookup((ino,)))
            if kind == "symlink-huge":
                rec[5] = 2 << 30
            elif kind == "size-huge":
                if rng.random() < 0.5:
                    rec[5] = (1 << 63) + rng.randrange(1 << 20)
                else:
                    rec[6] = 1 << 62
            else:
                rec[2] = (1 << 32) - 1
            trees["inode"].update(tuple(rec))
            dmg.target = target
            dmg.desc.append(f"{kind}: {target} (inode {ino})")
        elif kind == "dirent-bad":
            ents = [r for r in trees["dir"].scan()]
            r = rng.choice(ents)
            bad = rng.choice([b"a/b", b"x\0y", b"/"])
            trees["dir"].update((r[0], r[1], r[2], r[3], len(bad), bad))
            dmg.desc.append(f"dirent-bad: entry {r[5]!r} of directory {r[0]} renamed {bad!r}")
        vol.mark_dirty_sb()
    finally:
        vol.close()


def damage_case(path: str, inv: dict, rng: random.Random, kind: str | None = None,
                expect: dict | None = None) -> Damage:
    if kind is None:
        kind = rng.choices(KINDS, WEIGHTS)[0]
    dmg = Damage(kind)
    if kind in SEMANTIC_KINDS:
        semantic_damage(path, inv, expect, rng, dmg)
        return dmg
    if kind == "mixed":
        for k in rng.sample(["flip", "zero", "swap", "sbrandom", "log"], 2):
            apply_damage(path, inv, rng, k, dmg)
    else:
        apply_damage(path, inv, rng, kind, dmg)
    # a superblock location that now holds a valid superblock (the other
    # copy, or the copy the log keeps) is not damaged
    if dmg.truncated_to is None:
        with open(path, "rb") as f:
            for b in inv["sbs"]:
                if b in dmg.blocks:
                    f.seek(b * BS)
                    blk = np.frombuffer(f.read(BS), dtype=np.uint8)
                    if bytes(blk[:4]) == SB_MAGIC and sealed_ok(blk):
                        dmg.blocks.discard(b)
    return dmg


def expected_reports(inv: dict, dmg: Damage) -> set[int]:
    """Damaged metadata blocks that `check` must name: reachable (every
    ancestor readable: intact, or with dup metadata one of its two copies)
    and not restored by replaying the log (with dup, replay reads the
    log's twin when the first copy is damaged).  A damaged twin is named
    as the copy that differs, unless its node is damaged too (then the
    node is named)."""
    ls, _ = inv["log"]
    log_ok = inv["dup"] or not any(ls <= b < ls + inv["log_used"] for b in dmg.blocks)
    healed = inv["healed"] if log_ok else set()
    bad = {b for b in dmg.blocks if b not in healed}
    out = set()
    for b in bad:
        if ls <= b < ls + inv["log"][1]:
            continue                    # the log has no per-block checksum of its own
        if b in inv["sbs"]:
            out.add(b)
            continue
        node = inv["twins"].get(b, b)
        if node not in inv["nodes"] or (node != b and node in bad):
            continue
        p = inv["nodes"][node][2]
        reachable = True
        while p is not None:
            if p in bad and (not inv["twin_of"].get(p) or inv["twin_of"][p] in bad):
                reachable = False
                break
            p = inv["nodes"][p][2]
        if reachable:
            out.add(b)
    if all(s in bad for s in inv["sbs"]):
        out -= set(inv["sbs"])          # nothing to open: refusing is the answer
    return out


# =============================================================== checks of one case

class CaseResult:
    def __init__(self, case: int):
        self.case = case
        self.failures: list[str] = []
        self.stats: Counter = Counter()

    def fail(self, what: str) -> None:
        self.failures.append(what)


def run_check_inprocess(path: str, *args) -> tuple[int, str, str]:
    """`daxfs check` in this process; the engine's warnings land on its
    stderr as they do for the command (Python's last-resort handler)."""
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cmd_check.main([path, "--quiet", *args])
    finally:
        root.removeHandler(handler)
    return rc, out.getvalue(), err.getvalue()


def run_check_cli(path: str) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "daxfs.cli", "check", "--quiet", path],
                       capture_output=True, text=True, timeout=120, env=env)
    return r.returncode, r.stdout, r.stderr


def check_step(res: CaseResult, path: str, inv: dict, dmg: Damage, cli: bool) -> int:
    try:
        rc, out, err = run_check_cli(path) if cli else run_check_inprocess(path)
    except subprocess.TimeoutExpired:
        res.fail("check: timed out")
        return -1
    except Exception:
        res.fail("check: exception\n" + traceback.format_exc())
        return -1
    if "Traceback" in out + err:
        res.fail("check: traceback\n" + err[-3000:])
    if rc not in (0, 4, 8):
        res.fail(f"check: exit status {rc}\n{err[-2000:]}")
    res.stats[f"check exit {rc}"] += 1
    if rc == 8:
        if len(err.strip().splitlines()) != 1:
            res.fail(f"check: refusal is not one line: {err!r}")
        intact_sb = [s for s in inv["sbs"] if s not in dmg.blocks]
        if intact_sb and dmg.truncated_to is None:
            res.fail(f"check: refused although superblock {intact_sb} is intact: {err.strip()}")
        return rc
    if dmg.semantic and rc != 4:
        res.fail(f"check: exit {rc} for damage behind valid checksums (must find it)")
    want = expected_reports(inv, dmg)
    missed = [b for b in sorted(want) if not re.search(rf"\bblock {b}\b", out)]
    if missed:
        res.fail(f"check: damaged block(s) {missed} not reported (exit {rc}):\n{out[-2000:]}")
    return rc


ALLOWED = (Shutdown, MediaError, DamagedFile)


def verify_tree(res: CaseResult, fs, expect: dict, *, after_repair: bool = False,
                lax: bool = False) -> str:
    """Read everything through the API: 'ok', 'shutdown' (some EIO), or a failure.
    lax: the metadata was changed behind valid checksums, so other answers
    are possible; only exceptions other than DaxfsError fail."""
    outcome = "ok"
    by_ino = {v[3]: v for v in expect.values() if v[0] == "file"}
    fail = res.fail if not lax else (lambda msg: None)

    def resolve(path):
        ino = ROOT_INO
        for part in [p for p in path.split("/") if p]:
            ino = fs.lookup(ino, part.encode()).ino
        return ino

    for path, ent in sorted(expect.items()):
        try:
            ino = resolve(path)
            if ent[0] == "dir":
                names = sorted(e.name.decode(errors="replace") for e in fs.readdir(ino)
                               if e.name not in (b".", b".."))
                want = sorted(ent[1])
                if after_repair and path == "/":
                    names = [n for n in names if not n.startswith("lost+found")]
                if names != want and not after_repair:
                    fail(f"read: directory {path} lists {names}, expected {want}")
                elif after_repair and not set(names) <= set(want):
                    fail(f"read: directory {path} gained names {set(names) - set(want)}")
            elif ent[0] == "link":
                got = fs.readlink(ino)
                if got != ent[1] and not (after_repair and not got.strip(b"\0")):
                    fail(f"read: symlink {path} reads {got!r}")
            else:
                a = fs.getattr(ino)
                got = fs.read(ino, 0, min(a.size, len(ent[1])) + BS)
                if got != ent[1]:
                    if not (after_repair and _salvaged(got, ent[1])):
                        fail(f"read: {path} (inode {ino}) returned other bytes"
                                 f" ({len(got)} vs {len(ent[1])})")
                names = sorted(fs.listxattr(ino))
                xa = {n: fs.getxattr(ino, n) for n in names}
                lost_some = after_repair and all(ent[2].get(n) == v for n, v in xa.items())
                if xa != ent[2] and not lost_some:
                    fail(f"read: {path} xattrs differ: {sorted(xa)} vs {sorted(ent[2])}")
        except ALLOWED:
            outcome = "shutdown"
        except DaxfsError as e:
            if after_repair and type(e).__name__ == "NotFound":
                continue                # lost in the damage; repair dropped it
            fail(f"read: {path}: {type(e).__name__}: {e}")
        except Exception:
            res.fail(f"read: {path}: exception\n" + traceback.format_exc())
            return "failed"
    if after_repair:
        # whatever ended up in lost+found holds its inode's original bytes
        try:
            lf = fs.lookup(ROOT_INO, b"lost+found")
            stack = [lf.ino]
            while stack:
                d = stack.pop()
                for e in fs.readdir(d):
                    if e.name in (b".", b".."):
                        continue
                    if stat.S_ISDIR(e.attr.mode):
                        stack.append(e.attr.ino)
                    elif stat.S_ISREG(e.attr.mode) and e.attr.ino in by_ino:
                        want = by_ino[e.attr.ino][1]
                        got = fs.read(e.attr.ino, 0, min(e.attr.size, len(want) + BS))
                        if got != want and not _salvaged(got, want):
                            fail(f"read: lost+found/{e.name.decode(errors='replace')} (inode"
                                     f" {e.attr.ino}) returned other bytes")
        except DaxfsError as e:
            if type(e).__name__ != "NotFound":
                fail(f"read: lost+found: {type(e).__name__}: {e}")
    return outcome


def _salvaged(got: bytes, want: bytes) -> bool:
    """What a repair may leave of a file whose metadata was damaged: its old
    bytes, except zeros where its extents were lost, and (recreated from its
    extents, the size lost) zeros up to the end of a block.  Never bytes it
    did not hold."""
    if len(got) != len(want) and not (len(got) % BS == 0 and len(got) >= len(want)
                                      and not got[len(want):].strip(b"\0")):
        return False
    a = np.frombuffer(got[:len(want)], dtype=np.uint8)
    b = np.frombuffer(want, dtype=np.uint8)
    return len(a) == len(b) and not ((a != b) & (a != 0)).any()


def open_step(res: CaseResult, path: str, expect: dict, lax: bool = False) -> None:
    try:
        fs = Filesystem.open(path)
    except DaxfsError as e:
        res.stats["open refused"] += 1
        if "\n" in str(e) or not str(e):
            res.fail(f"open: refusal is not one line: {str(e)!r}")
        return
    except Exception:
        res.fail("open: exception\n" + traceback.format_exc())
        return
    res.stats["open served"] += 1
    try:
        outcome = verify_tree(res, fs, expect, lax=lax)
        if outcome == "shutdown" or fs.shutdown_reason:
            res.stats["served, shut down"] += 1
        else:
            res.stats["served, all intact"] += 1
    finally:
        try:
            fs.close()
        except DaxfsError:
            pass
        except Exception:
            res.fail("close: exception\n" + traceback.format_exc())
        finally:
            if fs.vol is not None and fs.vol.pmem.mm is not None:
                fs.vol.pmem.close()


def repair_step(res: CaseResult, path: str, expect: dict, check_rc: int,
                lax: bool = False) -> None:
    from daxfs.fsck.repair import repair_image
    try:
        rc, out, err = run_check_inprocess(path, "--repair")
    except Exception:
        res.fail("repair: exception\n" + traceback.format_exc())
        return
    if "Traceback" in out + err:
        res.fail("repair: traceback\n" + err[-3000:])
    if rc == 8:
        res.stats["repair refused"] += 1
        if check_rc != 8:
            res.fail(f"repair: refused an image check could read: {err.strip()}")
        return
    left = [ln for ln in out.splitlines()
            if ln and not ln.startswith(("repaired: ", "summary: "))]
    if rc != 0 or left:
        res.fail(f"repair: exit {rc}, problems left:\n" + "\n".join(left[:20]))
        return
    res.stats["repaired" if check_rc == 4 else "repair: nothing to do"] += 1
    try:
        again = repair_image(path)
    except Exception:
        res.fail("repair: second run raised\n" + traceback.format_exc())
        return
    if again != ([], []):
        res.fail(f"repair: second run found more: {again}")
    try:
        fs = Filesystem.open(path)
    except Exception as e:
        res.fail(f"repair: the repaired image does not open: {e}")
        return
    try:
        outcome = verify_tree(res, fs, expect, after_repair=True, lax=lax)
        if outcome != "ok":
            res.fail("repair: the repaired image gives EIO")
    finally:
        with contextlib.suppress(Exception):
            fs.close()
        if fs.vol is not None and fs.vol.pmem.mm is not None:
            fs.vol.pmem.close()


# =============================================================== mounts

WALKER = r"""
import errno, json, os, sys
expect = json.load(open(sys.argv[1]))
mnt = sys.argv[2]
out = {"ok": 0, "eio": 0, "wrong": []}
for path, ent in sorted(expect.items()):
    p = mnt + path
    try:
        if ent[0] == "dir":
            names = sorted(os.listdir(p))
            if names != sorted(ent[1]):
                out["wrong"].append(f"{path}: lists {names}")
                continue
        elif ent[0] == "link":
            if os.readlink(p) != ent[1]:
                out["wrong"].append(f"{path}: link target differs")
                continue
        else:
            with open(p, "rb") as f:
                data = f.read(ent[2] + 4096)
            import hashlib
            if hashlib.sha256(data).hexdigest() != ent[1]:
                out["wrong"].append(f"{path}: other bytes ({len(data)} vs {ent[2]})")
                continue
        out["ok"] += 1
    except OSError as e:
        if e.errno in (errno.EIO, errno.EUCLEAN):
            out["eio"] += 1
        else:
            out["wrong"].append(f"{path}: {errno.errorcode.get(e.errno, e.errno)}")
print(json.dumps(out))
"""

# Semantic cases: write over the damaged file (if any) and into a new file.
# Every answer must be success or EIO / EUCLEAN / ENOSPC (never a hang).
WRITER = r"""
import errno, json, os, sys
mnt, target, marker = sys.argv[1], sys.argv[2], sys.argv[3].encode()
out = {"wrote": [], "refused": [], "wrong": []}
def attempt(what, fn):
    try:
        fn()
        out["wrote"].append(what)
    except OSError as e:
        if e.errno in (errno.EIO, errno.EUCLEAN, errno.ENOSPC):
            out["refused"].append(what)
        else:
            out["wrong"].append(f"{what}: {errno.errorcode.get(e.errno, e.errno)}")
def overwrite(path, n):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, marker * (n // len(marker) + 1), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
def create(path, n):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, marker * (n // len(marker) + 1))
        os.fsync(fd)
    finally:
        os.close(fd)
if target:
    attempt("overwrite " + target, lambda: overwrite(mnt + target, 65536))
attempt("create /fuzz-new", lambda: create(mnt + "/fuzz-new", 2 << 20))
print(json.dumps(out))
"""


def unmount(mnt: str, pids: list[int]) -> list[str]:
    """Take the mount down whatever its state (daxfs.host.force_unmount):
    never leave a mount; say what it took."""
    from daxfs import host
    problems = []
    if host.is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", mnt], capture_output=True, timeout=30)
        if host.is_mounted(mnt):
            problems.append("fusermount3 -u failed: lazy unmount")
    killed = host.force_unmount(mnt, pids, 30)
    if killed:
        problems.append(f"daemon {killed} did not exit: aborted and killed")
    if host.is_mounted(mnt):
        problems.append("still mounted after unmount")
    return problems



def _child(res, what: str, argv: list):
    """Run a child program (`python -c CODE ARGS`, CODE argv[0]) that
    works on the mount and prints its findings as JSON; None (and the
    case failed) when it hangs or fails."""
    try:
        w = subprocess.run([sys.executable, "-c", *argv], capture_output=True, text=True,
                           timeout=WALK_TIMEOUT)
    except subprocess.TimeoutExpired:
        res.fail(f"mount: the child that {what}s the mount hung (timeout)")
        return None
    if w.returncode != 0:
        res.fail(f"mount: the child that {what}s the mount failed: {w.stderr[-2000:]}")
        return None
    return json.loads(w.stdout)

def mount_step(res: CaseResult, image: str, expect: dict, work: str, lax: bool = False,
               dmg: Damage | None = None) -> None:
    from daxfs import host
    from daxfs.host import daemon_pids
    mnt = tempfile.mkdtemp(prefix="mnt-", dir=work)
    os.chmod(mnt, 0o755)
    log = os.path.join(work, "mount.log")
    env = dict(os.environ, PYTHONPATH=ROOT)
    pids: list[int] = []
    try:
        try:
            r = subprocess.run([sys.executable, "-m", "daxfs.cli", "mount", image, mnt,
                                "--log", log, "--timeout", "40"],
                               capture_output=True, text=True, timeout=MOUNT_TIMEOUT, env=env)
        except subprocess.TimeoutExpired:
            res.fail("mount: `daxfs mount` timed out")
            return
        pids = daemon_pids(image) if host.is_mounted(mnt) else []
        if r.returncode != 0:
            res.stats["mount refused"] += 1
            lines = r.stderr.strip().splitlines()
            if len(lines) != 1 or not lines[0].startswith("daxfs mount:") \
                    or "Traceback" in r.stderr:
                res.fail(f"mount: refusal is not one clear line: {r.stderr!r}")
            if host.is_mounted(mnt):
                res.fail("mount: refused but something is mounted")
            return
        if not host.is_mounted(mnt):
            res.fail("mount: exit 0 but nothing mounted")
            return
        res.stats["mount served"] += 1
        spec = {}
        for path, ent in expect.items():
            if ent[0] == "file":
                spec[path] = ["file", hashlib.sha256(ent[1]).hexdigest(), len(ent[1])]
            elif ent[0] == "link":
                spec[path] = ["link", ent[1].decode()]
            else:
                spec[path] = ["dir", ent[1]]
        spec_path = os.path.join(work, "expect.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        out = _child(res, "walk", [WALKER, spec_path, mnt])
        if out is None:
            return
        if out["wrong"] and not lax:
            res.fail("mount: wrong answers: " + "; ".join(out["wrong"][:5]))
        res.stats["mount served, EIO" if out["eio"] else "mount served, all intact"] += 1
        if dmg is not None and dmg.semantic:
            out = _child(res, "write", [WRITER, mnt, dmg.target or "", MARKER.decode()])
            if out is None:
                return
            if out["wrong"]:
                res.fail("mount: wrong answers to writes: " + "; ".join(out["wrong"]))
            res.stats["mount writes refused" if out["refused"] else "mount writes done"] += 1
    finally:
        for p in unmount(mnt, pids):
            res.fail("mount: " + p)
        with contextlib.suppress(OSError):
            os.rmdir(mnt)
        if os.path.exists(log):
            text = open(log, errors="replace").read()
            if "Traceback" in text:
                res.fail("mount: the daemon logged a traceback:\n" + text[-3000:])
            os.unlink(log)
    if dmg is not None and dmg.semantic and not res.failures:
        writes_stayed_home(res, image, expect, dmg)


def writes_stayed_home(res: CaseResult, image: str, expect: dict, dmg: Damage) -> None:
    """After a mounted session on a crafted image: no block the damage
    pointed a file at holds what the session wrote, and every file but the
    damaged one holds its own bytes."""
    with open(image, "rb") as f:
        for b in dmg.victims:
            f.seek(b * BS)
            if MARKER in f.read(BS):
                res.fail(f"mount: a user's write landed in block {b}, which the damage"
                         " pointed a file at (metadata or another file's data)")
                return
    try:
        fs = Filesystem.open(image, readonly=True)
    except DaxfsError:
        return                           # refused now: nothing more to read
    try:
        for path, ent in sorted(expect.items()):
            if ent[0] != "file" or path == dmg.target:
                continue
            try:
                ino = ROOT_INO
                for part in [x for x in path.split("/") if x]:
                    ino = fs.lookup(ino, part.encode()).ino
                got = fs.read(ino, 0, len(ent[1]) + BS)
            except ALLOWED:
                continue
            except DaxfsError:
                if dmg.kind == "dirent-bad":
                    continue
                raise
            if got != ent[1] and MARKER in got:
                res.fail(f"mount: {path} holds what was written to another file")
                return
    finally:
        fs.close()


# =============================================================== driver

class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def run_case(case: int, seed: int, base: str, inv: dict, expect: dict, work: str, *,
             repair: bool, mount: bool, cli: bool, keep: str | None,
             kind: str | None = None) -> CaseResult:
    """One case: damage a copy of the base image and run every check on it.
    `kind` forces the kind of damage (else drawn from the case's seed)."""
    res = CaseResult(case)
    rng = random.Random(f"{seed}-{case}" + (f"-{kind}" if kind else ""))
    img = os.path.join(work, "case.img")
    shutil.copyfile(base, img)
    dmg = damage_case(img, inv, rng, kind, expect)
    res.stats[f"damage {dmg.kind}"] += 1
    pristine = os.path.join(work, "damaged.img")
    shutil.copyfile(img, pristine)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_TIMEOUT)
    try:
        rc = check_step(res, img, inv, dmg, cli)
        lax = dmg.resealed or dmg.kind == "dirent-bad"
        open_step(res, img, expect, lax=lax)
        if repair:
            shutil.copyfile(pristine, img)
            # a forged extent that agrees with no rmap record: repair keeps
            # the extent maps as the truth, so the file may keep the bytes
            # it was pointed at
            repair_step(res, img, expect, rc, lax=lax or dmg.kind == "extent-cross")
    except _Timeout:
        res.fail(f"timed out after {CASE_TIMEOUT} s (in process)")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    if mount:
        shutil.copyfile(pristine, img)
        mount_step(res, img, expect, work, lax=dmg.resealed or dmg.kind == "dirent-bad",
                   dmg=dmg)
    if res.failures:
        res.failures.insert(0, "damage: " + ", ".join(dmg.desc))
        if keep:
            os.makedirs(keep, exist_ok=True)
            shutil.copyfile(pristine, os.path.join(keep, f"case-{seed}-{case}.img"))
    for p in (img, pristine):
        with contextlib.suppress(OSError):
            os.unlink(p)
    return res


def make_base(work: str, seed: int, dup: bool = True) -> tuple[str, dict, dict]:
    base = os.path.join(work, "base.img")
    expect = populate(base, seed, dup)
    inv = inventory(base)
    return base, inv, expect


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Damage copies of a populated daxfs image at random and check that"
                    " check, open, read, repair (and with --mount, a real mount) behave.")
    p.add_argument("--count", type=int, default=100, help="number of cases (default 100)")
    p.add_argument("--seed", type=int, default=1,
                   help="seed of the base image and of every case (default 1)")
    p.add_argument("--case", type=int, action="append",
                   help="run only this case number (repeatable)")
    p.add_argument("--mount", action="store_true", help="also mount each damaged image")
    p.add_argument("--mount-every", type=int, default=1, metavar="K",
                   help="with --mount, mount only every K-th case")
    p.add_argument("--no-repair", action="store_true", help="do not run repair")
    p.add_argument("--cli-every", type=int, default=50, metavar="K",
                   help="run `daxfs check` as a subprocess every K-th case (0: never)")
    p.add_argument("--keep", metavar="DIR", help="keep the damaged images of failing cases")
    p.add_argument("--kind", choices=KINDS + EXTRA_KINDS + SEMANTIC_KINDS,
                   help="only this kind of damage")
    p.add_argument("--semantic", action="store_true",
                   help="semantic damage behind valid checksums (the kinds cycle)")
    p.add_argument("--metadata", choices=["dup", "single"], default="dup",
                   help="the base image's metadata profile (default dup, as mkfs)")
    p.add_argument("--quiet", "-q", action="store_true", help="print failures and the summary only")
    args = p.parse_args(argv)

    # the engine's warnings about damage are expected: keep them off the
    # terminal (run_check_inprocess collects them where `daxfs check` would)
    logging.getLogger().addHandler(logging.NullHandler())
    t0 = time.monotonic()
    stats: Counter = Counter()
    failures: list[CaseResult] = []
    cases = args.case or list(range(args.count))
    with tempfile.TemporaryDirectory(prefix="daxfs-fuzz-") as work:
        os.chmod(work, 0o755)
        base, inv, expect = make_base(work, args.seed, args.metadata == "dup")
        if not args.quiet:
            print(f"base image: {len(inv['nodes'])} tree nodes ({args.metadata}), "
                  f"{sum(1 for e in expect.values() if e[0] == 'file')} files; "
                  f"{len(cases)} cases, seed {args.seed}", flush=True)
        for i, case in enumerate(cases):
            kind = SEMANTIC_KINDS[case % len(SEMANTIC_KINDS)] if args.semantic else args.kind
            res = run_case(case, args.seed, base, inv, expect, work,
                           repair=not args.no_repair,
                           mount=args.mount and case % args.mount_every == 0,
                           cli=bool(args.cli_every) and case % args.cli_every == 0,
                           keep=args.keep, kind=kind)
            stats.update(res.stats)
            if res.failures:
                failures.append(res)
                again = f"--seed {args.seed} --case {case}" + (f" --kind {args.kind}"
                                                                if args.kind else "")
                print(f"FAIL case {case} ({again}):", flush=True)
                for line in res.failures:
                    print("    " + line.replace("\n", "\n    "), flush=True)
            elif not args.quiet and (i + 1) % 50 == 0:
                print(f"  {i + 1} cases, {len(failures)} failing, "
                      f"{time.monotonic() - t0:.0f} s", flush=True)
    print(summary(len(cases), stats, failures, args.seed, time.monotonic() - t0))
    return 1 if failures else 0


def summary(n: int, stats: Counter, failures: list, seed: int, secs: float) -> str:
    lines = [f"cases: {n} in {secs:.0f} s (seed {seed})"]
    lines.append("  check: " + ", ".join(f"exit {k}: {stats[f'check exit {k}']}"
                                         for k in (0, 4, 8)))
    lines.append(f"  open: refused {stats['open refused']}, served {stats['open served']}"
                 f" (shut down / EIO {stats['served, shut down']},"
                 f" all intact {stats['served, all intact']})")
    if stats["repaired"] or stats["repair refused"] or stats["repair: nothing to do"]:
        lines.append(f"  repair: repaired {stats['repaired']}, nothing to do"
                     f" {stats['repair: nothing to do']}, refused {stats['repair refused']}")
    if stats["mount served"] or stats["mount refused"]:
        lines.append(f"  mount: refused {stats['mount refused']}, served"
                     f" {stats['mount served']} (EIO {stats['mount served, EIO']},"
                     f" all intact {stats['mount served, all intact']})")
    if stats["mount writes done"] or stats["mount writes refused"]:
        lines.append(f"  mounted writes: done {stats['mount writes done']}, refused (EIO,"
                     f" EUCLEAN, ENOSPC) {stats['mount writes refused']}")
    lines.append("  damage: " + ", ".join(f"{k} {stats[f'damage {k}']}"
                                          for k in KINDS + EXTRA_KINDS + SEMANTIC_KINDS
                                          if stats[f"damage {k}"]))
    if failures:
        lines.append(f"  FAILURES: {len(failures)}: cases "
                     + " ".join(str(r.case) for r in failures)
                     + f" (rerun: --seed {seed} --case N)")
    else:
        lines.append("  failures: none")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
