#!/usr/bin/env python3
"""Engine-level benchmarks of daxfs (no mount, no FUSE): the filesystem API
and the on-disk trees called directly, in this process.

    bench_engine.py [--quick] [--only GROUPS] [--runs N] [--json FILE]
                    [--workdir DIR] [--profile DIR] [--keep]

Groups (--only takes a comma-separated list):

btree     B+tree insert and point lookup of N records (1M; 100k with
          --quick) in random key order, into the extent-map tree of a fresh
          volume, committing whenever the journal asks (vol.needs_commit);
          peer: the standard library's sqlite3 on the same keys (a
          WITHOUT ROWID table keyed like the tree, one execute() per record,
          journal_mode=WAL, synchronous=FULL, as many commits as daxfs made).
          Target: >= 0.5x sqlite's rate.
bigimage  An image of 64 GiB (8 GiB with --quick), sparse, holding N data
          extents (1M; 100k) in files of 1000 one-block extents each, built
          through the engine (Filesystem.create, FileMap.map, committing
          periodically), and the same data on a --no-rmap image.  Figures:
          owners of one poisoned block (poison.owners_of, the rmap overlap
          query) in ms per lookup, target < 1 ms; the same question answered
          by the --no-rmap scan of every extent map (poison.scan_owners),
          target >= 1000x slower than the rmap; Filesystem.open time after
          dropping the page cache (what a mount does before FUSE starts),
          target < 1 s; `daxfs check` time, target < 60 s.
rmapcost  The rmap's run-time cost: N files (10,000; 2000) created, given
          three small writes each (3 extents), unlinked and forgotten, and
          committed, through the Filesystem API on an rmap image and on a
          --no-rmap image, interleaved file by file (each file's steps on
          one image, then on the other, each timed on its own), so that a
          noisy machine slows both alike.  Target: rmap image >= 0.95x the
          ops/s of the --no-rmap image (a cost of at most 5%).
compare   Dedupe's in-place compare (FileMap.same_bytes, what
          FIDEDUPERANGE runs) of two files of equal data (1 GiB; 128 MiB),
          in GB/s, target >= 2 GB/s; peer: numpy.array_equal of the same
          two files' mapped ranges, extent by extent.

Python's cyclic garbage collector is set up as the mount daemon sets it
(daxfs/gc_tuning.py; DAXFS_GC=default keeps Python's defaults).

Each figure is the median of --runs runs (default 3).  Nothing is asserted
about time.  The figures go to the terminal and, with --json, to a file in
the format of scripts/bench_common.py (bench.py calls this script that way).
--profile DIR samples the daxfs sections (btree-insert, btree-lookup,
bigimage-build, rmap-owner-lookup, no-rmap-scan, rmapcost: both
images, interleaved) the first time they run, with py-spy attached to this
process (cProfile without py-spy), writes DIR/engine-TAG.txt (.prof) and
prints the hot spots; the numbers of a profiled run are not the real ones.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import bench_common as bc  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
BS = 4096
GROUPS = ("btree", "bigimage", "rmapcost", "compare")
CHECK_TIMEOUT = 1800


def log(msg: str) -> None:
    print(f"[engine] {msg}", flush=True)


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], timeout=120, check=False)
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except (OSError, subprocess.TimeoutExpired):
        return False


def count_text(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def size_text(n: int) -> str:
    if n >= GiB and n % GiB == 0:
        return f"{n // GiB} GiB"
    return f"{n // MiB} MiB"


class Engine:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.runs = args.runs
        self.dir = Path(tempfile.mkdtemp(prefix="daxfs-bench-engine-", dir=args.workdir))
        self.figs: list[dict] = []
        self.profiled_tags: set[str] = set()

    @contextlib.contextmanager
    def profiled(self, tag: str):
        """With --profile: sample this section (the first time it runs) with
        py-spy attached to this process, or cProfile without py-spy, and
        print its hot spots."""
        if not self.args.profile or tag in self.profiled_tags:
            yield
            return
        self.profiled_tags.add(tag)
        os.makedirs(self.args.profile, exist_ok=True)
        if bc.find_pyspy():
            out = os.path.join(self.args.profile, f"engine-{tag}.txt")
            with bc.pyspy_attached(os.getpid(), out) as ok:
                yield
            if ok:
                bc.print_pyspy(out, f"[engine] {tag}")
            return
        out = os.path.join(self.args.profile, f"engine-{tag}.prof")
        prof = cProfile.Profile()
        prof.enable()
        try:
            yield
        finally:
            prof.disable()
            prof.dump_stats(out)
            rows, total = bc.cprofile_hotspots(out, 30)
            print("\n".join(bc.hotspot_lines(rows, f"[engine] cProfile of {tag} ({total:.1f} s)"
                                                    f" -> {out}")), flush=True)

    def cleanup(self) -> None:
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            log(f"kept {self.dir}")

    # ------------------------------------------------------------ btree
    def btree(self) -> list[dict]:
        from daxfs.engine.volume import Volume
        n = 100_000 if self.quick else 1_000_000
        nlook = min(n, 50_000 if self.quick else 200_000)
        rnd = random.Random(1)
        ks = rnd.sample(range(n * 8), n)
        recs = [(100 + k // 4096, (k % 4096) * 2, 1000 + i, 1, 0) for i, k in enumerate(ks)]
        probe = [recs[i][:2] for i in rnd.sample(range(n), nlook)]
        ins, look, s_ins, s_look = [], [], [], []
        for run in range(self.runs):
            img = self.dir / "btree.img"
            vol = Volume.create(str(img), max(1 * GiB, n * 400))
            try:
                tree = vol.trees["bmap"]
                commits = 0
                with self.profiled("btree-insert"):
                    t0 = time.perf_counter()
                    for i, rec in enumerate(recs):
                        tree.insert(rec)
                        if i & 31 == 31:
                            vol.alloc.settle()
                            if vol.needs_commit():
                                vol.commit()
                                commits += 1
                    vol.alloc.settle()
                    vol.commit()
                    commits += 1
                    t1 = time.perf_counter()
                ins.append(n / (t1 - t0))
                with self.profiled("btree-lookup"):
                    t0 = time.perf_counter()
                    for k in probe:
                        tree.lookup(k)
                    t1 = time.perf_counter()
                look.append(nlook / (t1 - t0))
                for k in probe[:100]:
                    got = tree.lookup(k)
                    assert got is not None and got[:2] == k, (k, got)
            finally:
                vol.close()
                img.unlink()
            # sqlite3 on the same keys, as many durable commits
            db = self.dir / "btree.sqlite"
            con = sqlite3.connect(str(db), isolation_level=None)
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=FULL")
                con.execute("CREATE TABLE bmap(ino INTEGER, foff INTEGER, pblk INTEGER, "
                            "len INTEGER, flags INTEGER, PRIMARY KEY(ino, foff)) WITHOUT ROWID")
                every = max(1, n // commits)
                ex = con.execute
                t0 = time.perf_counter()
                ex("BEGIN")
                for i, rec in enumerate(recs):
                    ex("INSERT INTO bmap VALUES (?,?,?,?,?)", rec)
                    if i % every == every - 1:
                        ex("COMMIT")
                        ex("BEGIN")
                ex("COMMIT")
                t1 = time.perf_counter()
                s_ins.append(n / (t1 - t0))
                q = "SELECT pblk, len, flags FROM bmap WHERE ino=? AND foff=?"
                t0 = time.perf_counter()
                for k in probe:
                    ex(q, k).fetchone()
                t1 = time.perf_counter()
                s_look.append(nlook / (t1 - t0))
            finally:
                con.close()
                for suffix in ("", "-wal", "-shm"):
                    Path(str(db) + suffix).unlink(missing_ok=True)
            log(f"btree run {run + 1}/{self.runs}: insert {ins[-1]:,.0f}/s (sqlite "
                f"{s_ins[-1]:,.0f}/s, {commits} commits), lookup {look[-1]:,.0f}/s "
                f"(sqlite {s_look[-1]:,.0f}/s)")
        c = count_text(n)
        return [
            bc.figure(f"B+tree insert, {c} records, random order", "rec/s", runs=ins,
                      peer="sqlite3", peer_runs=s_ins, target=0.5, group="btree"),
            bc.figure(f"B+tree point lookup in {c} records", "lookup/s", runs=look,
                      peer="sqlite3", peer_runs=s_look, target=0.5, group="btree"),
        ]

    # ------------------------------------------------------------ big image
    def _build(self, path: Path, size: int, n: int, rmap: bool) -> list[tuple[int, int, int]]:
        """An image with n one-block data extents in files of 1000 extents
        (file block 2i -> a contiguous physical run, so nothing merges).
        Returns [(ino, first physical block, count)] per file."""
        from daxfs.engine.fs import Filesystem
        from daxfs.engine.mkfs import mkfs
        mkfs(str(path), size, rmap=rmap)
        fs = Filesystem.open(str(path))
        vol = fs.vol
        files = []
        per = 1000
        done = 0
        t0 = time.perf_counter()
        try:
            d = fs.mkdir(1, b"data", 0o755, 0, 0).ino
            f = 0
            while done < n:
                ino = fs.create(d, b"f%06d" % f, stat.S_IFREG | 0o644, 0, 0).ino
                f += 1
                vol.begin_op()
                inode = fs.inodes.get(ino)
                s, k = vol.alloc.alloc(min(per, n - done), 0)
                for i in range(k):
                    fs.filemap.map(ino, 2 * i, s + i, 1)
                    if i & 31 == 31:
                        vol.alloc.settle()
                inode.blocks += k
                inode.size = (2 * k - 1) * BS
                fs.inodes.put(inode)
                vol.alloc.settle()
                vol.end_op()
                if vol.needs_commit():
                    fs.commit()
                files.append((ino, s, k))
                done += k
                if f % 100 == 0:
                    rate = done / (time.perf_counter() - t0)
                    log(f"  building {path.name}: {done:,}/{n:,} extents ({rate:,.0f}/s)")
        finally:
            fs.close()
        log(f"built {path.name}: {n:,} extents in {time.perf_counter() - t0:.1f} s "
            f"({'rmap' if rmap else 'no rmap'})")
        return files

    def bigimage(self) -> list[dict]:
        from daxfs.engine import poison
        from daxfs.engine.fs import Filesystem
        n = 100_000 if self.quick else 1_000_000
        size = 8 * GiB if self.quick else 64 * GiB
        c, sz = count_text(n), size_text(size)
        rimg, nimg = self.dir / "big-rmap.img", self.dir / "big-normap.img"
        with self.profiled("bigimage-build"):
            rfiles = self._build(rimg, size, n, True)
        nfiles = self._build(nimg, size, n, False)
        figs = []
        rnd = random.Random(2)

        def sample(files):
            ino, s, k = rnd.choice(files)
            j = rnd.randrange(k)
            return ino, s + j

        # owners by rmap
        nlook = 1000
        per_lookup = []
        fs = Filesystem.open(str(rimg), readonly=True)
        try:
            for run in range(self.runs):
                picks = [sample(rfiles) for _ in range(nlook)]
                with self.profiled("rmap-owner-lookup"):
                    t0 = time.perf_counter()
                    for _, b in picks:
                        poison.owners_of(fs, b, 1, with_paths=False)
                    t1 = time.perf_counter()
                per_lookup.append((t1 - t0) / nlook * 1000)
                for ino, b in picks[:20]:
                    got = poison.owners_of(fs, b, 1, with_paths=False)
                    assert [o.owner for o in got] == [ino], (b, ino, got)
                log(f"rmap owner lookup run {run + 1}: {per_lookup[-1]:.4f} ms")
        finally:
            fs.close()
        # the same question without an rmap: the full scan
        scan = []
        fs = Filesystem.open(str(nimg), readonly=True)
        try:
            for run in range(self.runs):
                ino, b = sample(nfiles)
                with self.profiled("no-rmap-scan"):
                    t0 = time.perf_counter()
                    got = poison.owners_of(fs, b, 1, with_paths=False)
                    t1 = time.perf_counter()
                assert [o.owner for o in got] == [ino], (b, ino, got)
                scan.append((t1 - t0) * 1000)
                log(f"no-rmap scan run {run + 1}: {scan[-1]:.0f} ms")
        finally:
            fs.close()
        figs.append(bc.figure(f"owners of a poisoned block, rmap, {c} extents", "ms",
                              runs=per_lookup, target=1.0, target_on="value",
                              higher_is_better=False, group="bigimage"))
        figs.append(bc.figure(f"owners of a poisoned block: rmap vs full scan, {c}", "ms",
                              runs=per_lookup, peer="--no-rmap scan", peer_runs=scan,
                              target=1000, higher_is_better=False, group="bigimage"))
        # open time (cold page cache), then check time
        opens = []
        dropped = True
        for run in range(self.runs):
            dropped = drop_caches() and dropped
            t0 = time.perf_counter()
            fs = Filesystem.open(str(rimg))
            t1 = time.perf_counter()
            fs.close()
            opens.append(t1 - t0)
            log(f"open run {run + 1}: {opens[-1]:.3f} s")
        note = "" if dropped else "page cache not dropped (not root?)"
        figs.append(bc.figure(f"open (mount) a {sz} image with {c} extents", "s",
                              runs=opens, target=1.0, target_on="value",
                              higher_is_better=False, group="bigimage", note=note))
        checks = []
        problems = ""
        for run in range(self.runs):
            drop_caches()
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-m", "daxfs.cli", "check", "-q", str(rimg)],
                                 capture_output=True, text=True, timeout=CHECK_TIMEOUT,
                                 env=_env())
            t1 = time.perf_counter()
            checks.append(t1 - t0)
            if res.returncode != 0:
                problems = (f"check exit {res.returncode}: "
                            + (res.stdout + res.stderr).strip().splitlines()[0][:120])
            log(f"check run {run + 1}: {checks[-1]:.2f} s (exit {res.returncode})")
        figs.append(bc.figure(f"daxfs check of the {sz} image, {c} extents", "s",
                              runs=checks, target=60.0, target_on="value",
                              higher_is_better=False, group="bigimage", note=problems))
        for p in (rimg, nimg):
            p.unlink(missing_ok=True)
        return figs

    # ------------------------------------------------------------ rmap cost
    def rmapcost(self) -> list[dict]:
        from daxfs.engine.fs import Filesystem
        from daxfs.engine.mkfs import mkfs
        n = 2000 if self.quick else 10_000
        data = os.urandom(BS)
        small = os.urandom(100)
        images = {}
        fss = {}
        for rmap in (True, False):
            p = self.dir / f"cost-{'rmap' if rmap else 'normap'}.img"
            mkfs(str(p), 2 * GiB, rmap=rmap)
            images[rmap] = p
            fss[rmap] = Filesystem.open(str(p))
        rates = {True: [], False: []}

        def workload(run: int) -> dict:
            """One run on both images, interleaved file by file: each
            file's steps run on one image and then on the other (which
            one first alternates), each timed on its own, so both images
            see the same moment of a noisy machine."""
            spent = {True: 0, False: 0}
            clock = time.perf_counter_ns
            order = [(rmap, fss[rmap]) for rmap in (True, False)]
            dirs = {rmap: fs.mkdir(1, b"w%d" % run, 0o755, 0, 0).ino for rmap, fs in order}
            names = [b"f%06d" % i for i in range(n)]
            inos = {True: [], False: []}
            for i, nm in enumerate(names):
                for rmap, fs in (order if i % 2 == 0 else order[::-1]):
                    t0 = clock()
                    ino = fs.create(dirs[rmap], nm, stat.S_IFREG | 0o644, 0, 0).ino
                    fs.write(ino, 0, data)
                    fs.write(ino, 4 * BS, data)
                    fs.write(ino, 16 * BS, small)
                    spent[rmap] += clock() - t0
                    inos[rmap].append(ino)
            for i, nm in enumerate(names):
                for rmap, fs in (order if i % 2 == 0 else order[::-1]):
                    t0 = clock()
                    fs.unlink(dirs[rmap], nm)
                    fs.forget(inos[rmap][i])
                    spent[rmap] += clock() - t0
            for rmap, fs in order:
                t0 = clock()
                fs.commit()
                spent[rmap] += clock() - t0
                fs.rmdir(1, b"w%d" % run)
                fs.commit()
            return {rmap: 5 * n / (ns / 1e9) for rmap, ns in spent.items()}

        try:
            for run in range(self.runs):
                with self.profiled("rmapcost"):
                    got = workload(run)
                for rmap in (True, False):
                    rates[rmap].append(got[rmap])
                log(f"rmap cost run {run + 1}: rmap {rates[True][-1]:,.0f} ops/s, "
                    f"no rmap {rates[False][-1]:,.0f} ops/s")
        finally:
            for fs in fss.values():
                fs.close()
            for p in images.values():
                p.unlink(missing_ok=True)
        return [bc.figure(f"rmap run-time cost: {count_text(n)} x (create, 3 small writes, "
                          f"unlink)", "ops/s", runs=rates[True], peer="--no-rmap image",
                          peer_runs=rates[False], target=0.95, group="rmapcost",
                          note="target 0.95x = at most 5% slower with the rmap")]

    # ------------------------------------------------------------ compare
    def compare(self) -> list[dict]:
        import numpy as np
        from daxfs.engine.fs import Filesystem
        from daxfs.engine.mkfs import mkfs
        size = 128 * MiB if self.quick else 1 * GiB
        img = self.dir / "compare.img"
        mkfs(str(img), 2 * size + 512 * MiB, rmap=True)
        fs = Filesystem.open(str(img))
        ours, theirs = [], []
        try:
            chunk = np.random.default_rng(3).integers(0, 256, 4 * MiB, dtype=np.uint8).tobytes()
            inos = []
            for name in (b"a", b"b"):
                ino = fs.create(1, name, stat.S_IFREG | 0o644, 0, 0).ino
                for off in range(0, size, len(chunk)):
                    fs.write(ino, off, chunk)
                inos.append(ino)
            fs.commit()
            a, b = (fs.inodes.get(i) for i in inos)
            nblk = size // BS
            ea = fs.filemap.extents(a.ino, 0, nblk)
            eb = fs.filemap.extents(b.ino, 0, nblk)
            pieces = _pair_pieces(ea, eb)
            buf = fs.vol.pmem.buf

            def numpy_compare() -> bool:
                for pa, pb, k in pieces:
                    step = 16384         # 64 MiB at a time, like same_bytes
                    for j in range(0, k, step):
                        m = min(step, k - j) * BS
                        oa, ob = (pa + j) * BS, (pb + j) * BS
                        if not np.array_equal(buf[oa:oa + m], buf[ob:ob + m]):
                            return False
                return True

            fs.filemap.same_bytes(a, 0, b, 0, size)      # warm both ways once
            numpy_compare()
            for run in range(self.runs):
                t0 = time.perf_counter()
                same = fs.filemap.same_bytes(a, 0, b, 0, size)
                t1 = time.perf_counter()
                assert same
                ours.append(size / 1e9 / (t1 - t0))
                t0 = time.perf_counter()
                same = numpy_compare()
                t1 = time.perf_counter()
                assert same
                theirs.append(size / 1e9 / (t1 - t0))
                log(f"compare run {run + 1}: same_bytes {ours[-1]:.2f} GB/s, numpy "
                    f"{theirs[-1]:.2f} GB/s ({len(ea)}+{len(eb)} extents)")
            buf = None        # the mapping has no export left when it closes
        finally:
            fs.close()
            img.unlink(missing_ok=True)
        return [bc.figure(f"dedupe in-place compare, {size_text(size)}", "GB/s", runs=ours,
                          target=2.0, target_on="value", group="compare"),
                bc.figure(f"dedupe in-place compare, {size_text(size)}", "GB/s", runs=ours,
                          peer="numpy array_equal", peer_runs=theirs, group="compare")]


def _pair_pieces(ea, eb):
    """Two extent lists [(file block, physical, count)] of equal-sized files
    -> [(physical a, physical b, count)] pieces contiguous in both."""
    out = []
    i = j = 0
    while i < len(ea) and j < len(eb):
        f1, p1, n1 = ea[i]
        f2, p2, n2 = eb[j]
        s, e = max(f1, f2), min(f1 + n1, f2 + n2)
        if s < e:
            out.append((p1 + s - f1, p2 + s - f2, e - s))
        if f1 + n1 <= f2 + n2:
            i += 1
        else:
            j += 1
    return out


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


NAMES = {  # what a group reports when it fails: (name, unit, target, target_on, hib, peer)
    "btree": [("B+tree insert", "rec/s", 0.5, "ratio", True, "sqlite3"),
              ("B+tree point lookup", "lookup/s", 0.5, "ratio", True, "sqlite3")],
    "bigimage": [("owners of a poisoned block, rmap", "ms", 1.0, "value", False, None),
                 ("owners of a poisoned block: rmap vs full scan", "ms", 1000, "ratio",
                  False, "--no-rmap scan"),
                 ("open (mount) of the big image", "s", 1.0, "value", False, None),
                 ("daxfs check of the big image", "s", 60.0, "value", False, None)],
    "rmapcost": [("rmap run-time cost", "ops/s", 0.95, "ratio", True, "--no-rmap image")],
    "compare": [("dedupe in-place compare", "GB/s", 2.0, "value", True, None)],
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="daxfs engine-level benchmarks (no mount).")
    p.add_argument("--quick", action="store_true", help="smaller sizes (100k records, ...)")
    p.add_argument("--only", default="", help="comma-separated groups: " + ",".join(GROUPS))
    p.add_argument("--runs", type=int, default=3, help="runs per figure (median; default 3)")
    p.add_argument("--json", metavar="FILE", help="write the figures here")
    p.add_argument("--workdir", default=None, help="where images go (default: /tmp)")
    p.add_argument("--profile", metavar="DIR", help="cProfile each group into DIR")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    groups = [g for g in (args.only.split(",") if args.only else GROUPS) if g]
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        p.error(f"unknown group(s) {','.join(bad)}; groups are {','.join(GROUPS)}")
    from daxfs import gc_tuning
    gc_tuning.tune()            # the collector set up as the daemon has it
    eng = Engine(args)
    figs: list[dict] = []
    try:
        for g in groups:
            t0 = time.perf_counter()
            log(f"--- {g}")
            try:
                figs += getattr(eng, g)()
            except Exception as e:          # report, go on with the next group
                traceback.print_exc()
                why = f"{type(e).__name__}: {e}"[:160]
                for name, unit, target, on, hib, peer in NAMES[g]:
                    figs.append(bc.not_measured(name, unit, why, peer=peer, target=target,
                                                target_on=on, higher_is_better=hib, group=g))
            log(f"{g} took {time.perf_counter() - t0:.1f} s")
    finally:
        eng.cleanup()
    if args.json:
        bc.write_json(figs, args.json)
    else:
        print(bc.table(figs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
