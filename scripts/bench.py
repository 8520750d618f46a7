#!/usr/bin/env python3
"""Measure daxfs against its peers, in the same run, on this machine, and
print ratios.

    .venv/bin/python scripts/bench.py [--quick] [--only GROUPS] [--runs N]
        [--json FILE] [--png FILE] [--workdir DIR] [--profile DIR] [--keep] [--list]

Run as root (mounts, loop devices, drop_caches).  Every figure is the median
of --runs runs (default 3), runs of the peers interleaved with daxfs's.
Nothing asserts on time: a missed target is printed, not raised.

Peers, each started and taken down by this script:
* ceiling: scripts/peers/memfs.py, the smallest in-memory pyfuse3 + trio
  filesystem (dicts, no I/O): what any filesystem on this binding can
  reach at best (meta and untar groups);
* daxfs-single: daxfs made with `mkfs --metadata single` (meta and untar):
  what the default duplicated metadata costs;
* passthrough: scripts/peers/passthrough.py (pyfuse3 + trio, the same FUSE
  options and caching as daxfs) over a directory in the work directory;
* tmpfs: the kernel's tmpfs;
* xfs: kernel XFS, `mkfs.xfs -m reflink=1,rmapbt=1` on a loop device over a
  sparse image file in the work directory (without loop devices: one line,
  and the XFS rows are left out).
The daxfs image and the passthrough directory live in the same work
directory (default under /tmp), so both have the same disk behind them.

Groups (--only takes a comma-separated list; default all):
  seq      sequential write of 1 GiB (128 MiB with --quick) in 1 MiB blocks
           + fsync, then, after `echo 3 > /proc/sys/vm/drop_caches`, a
           sequential read; MB/s.  Targets vs passthrough: read >= 1.0x,
           write >= 0.8x.  drop_caches also drops the daxfs image's and the
           passthrough directory's page cache, so both cold reads come from
           the disk behind the work directory; a second read, after
           dropping only the file's own pages (POSIX_FADV_DONTNEED through
           the mount), measures the FUSE and engine path with the image or
           backing file in memory (no target).
  rand     4 KiB random reads and writes (fio psync, time based, 10 s; 2 s
           with --quick; a Python pread/pwrite loop without fio) on that
           file after dropping the caches; IOPS.
  meta     create, stat, readdir, unlink of 10,000 files (2000) in one
           directory, the page/dentry caches dropped before stat and
           readdir; ops/s.  The systems take turns every META_CHUNK (250)
           files: each does a chunk of calls back to back, as `rm -r` or
           `tar x` would, then the next system (which one goes first
           alternates), each chunk timed on its own.  Target vs
           passthrough >= 1.0x (aim 2x); vs ceiling >= 0.8x; vs
           daxfs-single >= 0.87x: dup metadata costs < 15%.
  untar    extracting a tar of the venv's site-packages (quick: the Python
           standard library without its tests, caches and static library),
           made once in /tmp/daxfs-bench-cache; seconds.  Targets: vs
           passthrough >= 1.5x, vs ceiling >= 0.8x, vs daxfs-single >= 0.87x.
  aged     allocation on an aged image: untar (kept), 5000 small files
           (2000) of which every other one is unlinked, then 1 GiB and
           4 GiB files (128 and 512 MiB) written and deleted; then a
           256 MiB file written in 1 MiB appends + fsync: its extent count
           (FIEMAP), and after a `cp --reflink=never` copy, the share of
           the copy `duperemove -dr` reclaims (df before and after);
           daxfs vs XFS.  Targets: <= 8 extents, >= 90% reclaimed.
  reflink  `cp --reflink=always` of a 1 GiB and an 8 GiB file (128 MiB and
           1 GiB) and a plain `cp --reflink=never`, each followed by an
           fsync of the copy, page cache dropped before each; daxfs vs XFS.
           On daxfs cp runs with the LD_PRELOAD environment `daxfs exec`
           sets up (daxfs.cli.exec.environment), without the wrapper's own
           Python start-up, which is reported on its own row.  Target: the
           large reflink takes <= 1.5x the time of the small one.
  dedupe   `daxfs exec -- duperemove -dr` (the same environment) over two
           separately written files of equal data, 1 GiB each (128 MiB),
           vs duperemove on XFS; seconds, and the space freed in the note.
  engine   scripts/bench_engine.py (no mount): B+tree vs sqlite3, rmap
           owner lookup vs the --no-rmap scan, open and check of a big
           image, the rmap's run-time cost, dedupe's in-place compare.  Its
           groups btree, bigimage, rmapcost, compare may be named directly.

Output: the table on the terminal; --json FILE: a list with one object per
figure (see scripts/bench_common.py for the fields and what ratio and
target mean); --png FILE: a bar chart of the ratios and targets.

--profile DIR samples the daxfs daemon with py-spy (`pip install py-spy`
into the venv) during each phase of the first run (seq-write, seq-read,
rand-read, rand-write, create, stat, readdir, unlink, untar, cp-..., 
duperemove), and bench_engine's daxfs sections the same way; writes the
raw profiles to DIR and prints the hot spots (inclusive and self share of
the busy samples).  Without py-spy the whole daemon runs under cProfile.
A profiled run's numbers are not the real ones.

Safety: every subprocess has a timeout; every mount is taken down in
`finally` (fusermount3 -u, then umount -l; a daemon that does not exit has
its FUSE connection aborted); loop devices are detached; a watchdog aborts
this script's FUSE connections when a group overruns its time limit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import bench_common as bc  # noqa: E402
from daxfs import host  # noqa: E402

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CACHE = Path("/tmp/daxfs-bench-cache")
MOUNT_TIMEOUT = 60
CMD_TIMEOUT = 120
PEERS = ("passthrough", "tmpfs", "xfs")
# the meta and untar groups also measure daxfs with one copy of metadata
# (mkfs --metadata single): what duplicated metadata, the default, costs
SINGLE = "daxfs-single"
DUP_TARGET = 0.87      # dup's speed >= 0.87x single's: it costs under 15%
# ... and the smallest in-memory pyfuse3 filesystem (scripts/peers/memfs.py):
# the ceiling of anything on this binding; daxfs/ceiling >= 0.8 means the
# engine costs at most a quarter of a request
CEILING = "ceiling"
CEILING_TARGET = 0.8
META_PEERS = (CEILING, SINGLE) + PEERS
# the seq group's small-write figures also ask the ceiling, with and without
# the kernel's writeback cache (which daxfs leaves off: README, Performance)
CEILING_WB = "ceiling-writeback"
SMALL_WRITE_PEERS = (CEILING, CEILING_WB)
META_CHUNK = 250       # meta group: files each system does back to back per turn
MAIN_GROUPS = ("seq", "rand", "meta", "untar", "aged", "reflink", "dedupe", "engine")
ENGINE_GROUPS = ("btree", "bigimage", "rmapcost", "compare")


def say(msg: str) -> None:
    print(msg, flush=True)


def run(cmd, *, timeout=CMD_TIMEOUT, check=False, env=None, cwd=None):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, check=check, env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL)


def py_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def size_text(n: int) -> str:
    if n >= GiB and n % GiB == 0:
        return f"{n // GiB} GiB"
    return f"{n // MiB} MiB"


def count_text(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


# ------------------------------------------------------------------ mounts

def mount_entry(mnt) -> tuple[str, str] | None:
    """(fstype, FUSE connection) of what is mounted at `mnt` (the top one)."""
    m = host.mount_at(mnt)
    return None if m is None else (m.fstype, str(os.minor(m.dev)))


is_mounted = host.is_mounted


class Registry:
    """What this script has mounted and attached, for the watchdog and for
    the last-chance cleanup."""

    def __init__(self):
        self.lock = threading.Lock()
        self.fuse: dict[str, tuple[str, subprocess.Popen]] = {}   # mnt -> (conn, proc)
        self.logs: dict[str, Path] = {}                             # mnt -> daemon log
        self.kernel: set[str] = set()
        self.loops: set[str] = set()

    def diagnose(self) -> None:
        """Where things hang: kernel stacks of this process's threads and a
        py-spy dump of each FUSE daemon (when py-spy is installed)."""
        spy = _pyspy()
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):
                stack = Path(f"/proc/self/task/{tid}/stack").read_text().strip()
                say(f"  kernel stack of bench thread {tid}:\n    "
                    + stack.replace("\n", "\n    "))
        with self.lock:
            items = list(self.fuse.items())
        for mnt, (conn, proc) in items:
            log = self.logs.get(mnt)
            if log and log.exists():
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                say(f"  last lines of {log}:\n    " + "\n    ".join(tail))
            if not spy:
                continue
            for pid in [proc.pid] + _children(proc.pid):
                with contextlib.suppress(Exception):
                    if "python" not in Path(f"/proc/{pid}/cmdline").read_text():
                        continue
                    out = run([spy, "dump", "--pid", pid], timeout=30)
                    say(f"  py-spy dump of {mnt} daemon {pid}:\n    "
                        + (out.stdout + out.stderr).strip().replace("\n", "\n    "))

    def abort_fuse(self) -> None:
        with self.lock:
            items = list(self.fuse.items())
        for mnt, (conn, proc) in items:
            host.abort_connection(conn)
            with contextlib.suppress(OSError):
                proc.kill()

    def cleanup(self) -> None:
        for mnt in list(self.fuse):
            with contextlib.suppress(Exception):
                fuse_unmount(mnt, self.fuse[mnt][1], timeout=30)
        for mnt in list(self.kernel):
            with contextlib.suppress(Exception):
                kernel_unmount(mnt)
        for dev in list(self.loops):
            with contextlib.suppress(Exception):
                run(["losetup", "-d", dev], timeout=30)
            self.loops.discard(dev)


REG = Registry()


def _pyspy() -> str | None:
    return bc.find_pyspy()


def _children(pid: int) -> list[int]:
    out = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            kids = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            for k in kids:
                out.append(int(k))
                out += _children(int(k))
    return out


def log_tail(mnt, n: int = 4) -> str:
    log = REG.logs.get(str(mnt))
    if not log or not log.exists():
        return ""
    lines = log.read_text(errors="replace").strip().splitlines()[-n:]
    return f"\n    last lines of {log}:\n      " + "\n      ".join(lines)


def fuse_unmount(mnt, proc, timeout: float = 120) -> None:
    """fusermount3 -u, else umount -l; wait for the daemon; abort and kill
    it if it will not go."""
    mnt = str(mnt)
    try:
        if host.force_unmount(mnt, [proc.pid], timeout):
            say(f"  daemon {proc.pid} of {mnt} did not exit in {timeout:.0f} s: aborted it")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    finally:
        with REG.lock:
            REG.fuse.pop(mnt, None)


def kernel_unmount(mnt) -> None:
    mnt = str(mnt)
    try:
        if is_mounted(mnt):
            res = run(["umount", mnt], timeout=60)
            if res.returncode != 0 and is_mounted(mnt):
                run(["umount", "-l", mnt], timeout=30)
    finally:
        REG.kernel.discard(mnt)


@contextlib.contextmanager
def _serving(cmd: list, mnt: Path, fstype: str, log: Path, output: Path):
    """Start a FUSE daemon (`cmd`, its output appended to `output`), wait
    until `mnt` is its mount, register it for the emergency unmount, and
    always take it down on the way out."""
    with open(output, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                env=py_env(), start_new_session=True, cwd="/")
    try:
        conn = _wait_fuse(mnt, fstype, proc, log)
        with REG.lock:
            REG.fuse[str(mnt)] = (conn, proc)
            REG.logs[str(mnt)] = log
        yield mnt
    finally:
        fuse_unmount(mnt, proc)


def _wait_fuse(mnt: Path, fstype: str, proc: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while time.monotonic() < deadline:
        ent = mount_entry(mnt)
        if ent and ent[0] == fstype:
            return ent[1]
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise RuntimeError(f"{fstype} daemon exited ({proc.returncode}): " + " | ".join(tail))
        time.sleep(0.02)
    raise RuntimeError(f"{fstype} mount did not appear within {MOUNT_TIMEOUT} s")


class Unavailable(Exception):
    """A peer that cannot run on this machine (said once, then left out)."""


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.runs = args.runs
        self.dir = Path(tempfile.mkdtemp(prefix="daxfs-bench-", dir=args.workdir))
        os.chmod(self.dir, 0o755)
        self.figs: list[dict] = []
        self.profile = Path(args.profile) if args.profile else None
        self.profiles: list[tuple[str, Path]] = []
        self.no_loop = None          # reason, once loop devices failed
        self.can_drop = True
        self.seq = 128 * MiB if self.quick else 1 * GiB
        self.rand_secs = 2 if self.quick else 10
        self.nfiles = 2000 if self.quick else 10_000
        self.reflink_sizes = (128 * MiB, 1 * GiB) if self.quick else (1 * GiB, 8 * GiB)
        self.dedupe = 128 * MiB if self.quick else 1 * GiB
        self.fio = shutil.which("fio")
        self._n = 0

    # ---------------------------------------------------------- helpers
    def drop_caches(self) -> None:
        if not self.can_drop:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            run(["sync"], timeout=120)
        try:
            with open("/proc/sys/vm/drop_caches", "w") as fh:
                fh.write("3\n")
        except OSError as e:
            self.can_drop = False
            say(f"cannot drop caches ({e.strerror}): figures are measured with warm caches")

    def mountpoint(self, name: str) -> Path:
        self._n += 1
        d = self.dir / f"mnt-{name}-{self._n}"
        d.mkdir()
        os.chmod(d, 0o755)
        return d

    def _profiler(self, tag: str) -> tuple[list[str], Path | None]:
        """Without py-spy, --profile runs the whole daemon under cProfile."""
        if not self.profile or bc.find_pyspy():
            return [], None
        self.profile.mkdir(parents=True, exist_ok=True)
        out = self.profile / f"daemon-{tag}.prof"
        return [sys.executable, "-m", "cProfile", "-o", str(out)], out

    @contextlib.contextmanager
    def phase(self, target: str, mnt, tag: str, run_no: int):
        """With --profile and py-spy: sample the daxfs daemon during this
        phase of the first run, then print its hot spots."""
        entry = REG.fuse.get(str(mnt))
        if not (self.profile and target == "daxfs" and run_no == 0 and entry
                and bc.find_pyspy()):
            yield
            return
        self.profile.mkdir(parents=True, exist_ok=True)
        out = self.profile / f"daemon-{tag}.txt"
        with bc.pyspy_attached(entry[1].pid, str(out)) as ok:
            yield
        if ok:
            self.profiles.append((tag, out))
            bc.print_pyspy(str(out), f"daxfs daemon during {tag}")

    # ---------------------------------------------------------- targets
    @contextlib.contextmanager
    def daxfs(self, size: int, tag: str = "daxfs", metadata: str = "dup"):
        if metadata != "dup":
            tag = f"{tag}-{metadata}"
        image = self.dir / f"{tag}.img"
        res = run([sys.executable, "-m", "daxfs.cli", "mkfs", image, "--size", str(size),
                   "--force", "--metadata", metadata], env=py_env())
        if res.returncode != 0:
            raise RuntimeError(f"daxfs mkfs failed: {res.stderr.strip()}")
        mnt = self.mountpoint("daxfs" if metadata == "dup" else f"daxfs-{metadata}")
        log = self.dir / f"{tag}.log"
        prefix, prof = self._profiler(tag)
        cmd = (prefix or [sys.executable]) + ["-m", "daxfs.cli", "mount", "--foreground",
                        str(image), str(mnt), "--log", str(log)]
        try:
            with _serving(cmd, mnt, "fuse.daxfs", log, self.dir / f"{tag}.stderr"):
                yield mnt
        finally:
            with contextlib.suppress(OSError):
                text = log.read_text(errors="replace")
                bad = [ln for ln in text.splitlines() if "Traceback" in ln or " ERROR " in ln]
                if bad:
                    say(f"  daxfs daemon log {log} has errors: {bad[0][:160]}")
            if prof is not None:
                self.profiles.append((tag, prof))
                self._print_profile(tag, prof)
            if not self.args.keep:
                image.unlink(missing_ok=True)

    def rounds(self, mnts: dict, res: "Results", group: str, body) -> None:
        """`body(run, target, mountpoint)` for every run and every target
        still standing, targets taking turns within a run (`turn_order`:
        the first rotates from run to run); a target whose body raises is
        failed (its error and daemon log said) and skipped from then on."""
        for r in range(self.runs):
            for t in turn_order(list(mnts), r):
                m = mnts[t]
                if t in res.err:
                    continue
                try:
                    body(r, t, m)
                except Exception as e:
                    res.failed(group, t, e, m)

    @contextlib.contextmanager
    def passthrough(self):
        src = self.dir / f"pt-src-{self._n}"
        src.mkdir()
        mnt = self.mountpoint("passthrough")
        log = self.dir / "passthrough.log"
        try:
            with _serving([sys.executable, str(HERE / "peers" / "passthrough.py"), str(src),
                           str(mnt)], mnt, "fuse.passthrough", log, log):
                yield mnt
        finally:
            shutil.rmtree(src, ignore_errors=True)

    @contextlib.contextmanager
    def memfs(self, writeback: bool = False):
        mnt = self.mountpoint(CEILING_WB if writeback else CEILING)
        log = self.dir / "memfs.log"
        with _serving([sys.executable, str(HERE / "peers" / "memfs.py"), str(mnt)]
                      + (["--writeback-cache"] if writeback else []), mnt,
                      "fuse.memfs", log, log):
            yield mnt

    @contextlib.contextmanager
    def tmpfs(self, size: int):
        mnt = self.mountpoint("tmpfs")
        res = run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "bench-tmpfs", mnt])
        if res.returncode != 0:
            raise RuntimeError(f"mount -t tmpfs: {res.stderr.strip()}")
        REG.kernel.add(str(mnt))
        try:
            yield mnt
        finally:
            kernel_unmount(mnt)

    @contextlib.contextmanager
    def xfs(self, size: int):
        if self.no_loop:
            raise Unavailable(self.no_loop)
        image = self.dir / "xfs.img"
        with open(image, "wb") as fh:
            fh.truncate(size)
        dev = None
        mnt = None
        try:
            res = run(["losetup", "--find", "--show", image], timeout=60)
            if res.returncode != 0 or not res.stdout.strip():
                self.no_loop = f"loop devices unavailable ({res.stderr.strip() or 'losetup failed'})"
                say(f"{self.no_loop}: XFS is left out")
                raise Unavailable(self.no_loop)
            dev = res.stdout.strip()
            REG.loops.add(dev)
            res = run(["mkfs.xfs", "-f", "-q", "-m", "reflink=1,rmapbt=1", dev], timeout=120)
            if res.returncode != 0:
                raise RuntimeError(f"mkfs.xfs: {res.stderr.strip()[:200]}")
            mnt = self.mountpoint("xfs")
            res = run(["mount", "-t", "xfs", dev, mnt], timeout=60)
            if res.returncode != 0:
                raise RuntimeError(f"mount xfs: {res.stderr.strip()}")
            REG.kernel.add(str(mnt))
            yield mnt
        finally:
            if mnt is not None:
                kernel_unmount(mnt)
            if dev is not None:
                res = run(["losetup", "-d", dev], timeout=60)
                if res.returncode == 0:
                    REG.loops.discard(dev)
            image.unlink(missing_ok=True)

    def target(self, name: str, size: int, tag: str = "daxfs"):
        if name == "daxfs":
            return self.daxfs(size, tag)
        if name == SINGLE:
            if self.args.aa:        # an A/A check: a second, identical daxfs
                return self.daxfs(size, tag + "-aa", "dup")
            return self.daxfs(size, tag, "single")
        if name == CEILING:
            return self.memfs()
        if name == CEILING_WB:
            return self.memfs(writeback=True)
        if name == "passthrough":
            return self.passthrough()
        if name == "tmpfs":
            return self.tmpfs(size)
        if name == "xfs":
            return self.xfs(size)
        raise ValueError(name)

    def mount_all(self, stack: contextlib.ExitStack, names, size: int, tag: str,
                  res: "Results") -> dict[str, Path]:
        out = {}
        for name in names:
            try:
                out[name] = stack.enter_context(self.target(name, size, tag))
            except Unavailable as e:
                res.fail(name, str(e))
            except Exception as e:
                res.fail(name, f"{type(e).__name__}: {e}")
                say(f"  {name}: could not be mounted: {e}")
        return out

    def _print_profile(self, tag: str, prof: Path) -> None:
        if not prof.exists():
            say(f"  profile {prof} was not written")
            return
        rows, total = bc.cprofile_hotspots(str(prof), 30)
        say("\n".join(bc.hotspot_lines(
            rows, f"cProfile of the daxfs daemon ({tag}, {total:.1f} s) -> {prof}")))
        rows, _ = bc.cprofile_hotspots(str(prof), 25, only="/daxfs/")
        say("\n".join(bc.hotspot_lines(rows, f"  {tag}: daxfs package functions only")))


class Results:
    """Per target and metric, the list of run values; errors per target."""

    def __init__(self):
        self.v: dict[str, dict[str, list]] = {}
        self.err: dict[str, str] = {}
        self.notes: dict[str, dict[str, str]] = {}

    def add(self, target: str, metric: str, value) -> None:
        self.v.setdefault(target, {}).setdefault(metric, []).append(value)

    def get(self, target: str, metric: str) -> list:
        return self.v.get(target, {}).get(metric, [])

    def fail(self, target: str, why: str) -> None:
        self.err.setdefault(target, why[:200])

    def failed(self, group: str, target: str, exc: Exception, mnt=None) -> None:
        """A target that could not run (Unavailable: said once, no fuss) or
        broke: the error and the tail of its daemon's log (the one at
        `mnt`, else daxfs's latest)."""
        if isinstance(exc, Unavailable):
            self.fail(target, str(exc))
            return
        self.fail(target, f"{type(exc).__name__}: {exc}")
        if mnt is None and target == "daxfs":
            mnt = next(iter([k for k in REG.logs if "mnt-daxfs" in k][-1:]), None)
        say(f"  [{group}] {target} failed: {exc}" + (log_tail(mnt) if mnt else ""))
        if mnt is None:
            traceback.print_exc()

    def note(self, target: str, metric: str, text: str) -> None:
        self.notes.setdefault(target, {})[metric] = text

    def figures(self, metric: str, name: str, unit: str, *, peers=PEERS, hib=True,
                targets: dict | None = None, group: str = "",
                peer_notes: dict | None = None) -> list[dict]:
        """One figure per peer that was measured (or failed for a reason
        other than not being available)."""
        out = []
        ours = self.get("daxfs", metric)
        for peer in peers:
            theirs = self.get(peer, metric)
            target = (targets or {}).get(peer)
            if not theirs and peer in self.err and self.err[peer].startswith("loop devices"):
                continue
            notes = [(peer_notes or {}).get(peer)] if (peer_notes or {}).get(peer) else []
            if not ours:
                notes.append("not measured: " + self.err.get("daxfs", "no value"))
            if not theirs:
                notes.append(f"{peer} not measured: " + self.err.get(peer, "no value"))
            extra = self.notes.get("daxfs", {}).get(metric)
            if extra:
                notes.append(extra)
            extra = self.notes.get(peer, {}).get(metric)
            if extra:
                notes.append(f"{peer}: {extra}")
            out.append(bc.figure(name, unit, runs=ours, peer=peer, peer_runs=theirs,
                                 target=target, higher_is_better=hib, group=group,
                                 note="; ".join(notes)))
        return out


# ------------------------------------------------------------------ workloads

_BLOCK = os.urandom(MiB)


def _small_block(i: int) -> bytes:
    return _BLOCK[(i % 256) * 4096:(i % 256 + 1) * 4096]


def write_file(path, size: int, *, data_fn=None, fsync=True) -> float:
    """Write `size` bytes in 1 MiB blocks (+ fsync); returns seconds."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t0 = time.perf_counter()
        i = 0
        left = size
        while left:
            buf = data_fn(i) if data_fn else _BLOCK
            mv = memoryview(buf)[:min(left, len(buf))]
            while len(mv):
                n = os.write(fd, mv)
                mv = mv[n:]
                left -= n
            i += 1
        if fsync:
            os.fsync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)


def read_file(path) -> tuple[int, float]:
    fd = os.open(path, os.O_RDONLY)
    buf = bytearray(MiB)
    total = 0
    try:
        t0 = time.perf_counter()
        while True:
            n = os.readv(fd, [buf])
            if not n:
                break
            total += n
        return total, time.perf_counter() - t0
    finally:
        os.close(fd)


def fsync_path(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rand_io(bench: Bench, path, size: int, write: bool) -> tuple[float, str]:
    """4 KiB random reads or writes for bench.rand_secs: IOPS, and how."""
    secs = bench.rand_secs
    if bench.fio:
        cmd = [bench.fio, "--name=r", f"--filename={path}",
               f"--rw={'randwrite' if write else 'randread'}", "--bs=4k", "--ioengine=psync",
               f"--size={size}", f"--runtime={secs}", "--time_based", "--randrepeat=0",
               "--norandommap", "--invalidate=1", "--output-format=json"]
        if write:
            cmd.append("--end_fsync=1")
        res = run(cmd, timeout=secs + 180)
        if res.returncode == 0 and "{" in res.stdout:
            data = json.loads(res.stdout[res.stdout.index("{"):])
            return float(data["jobs"][0]["write" if write else "read"]["iops"]), "fio"
        raise RuntimeError(f"fio failed: {(res.stderr or res.stdout).strip()[:200]}")
    rnd = random.Random(5)
    nblk = size // 4096
    fd = os.open(path, os.O_RDWR if write else os.O_RDONLY)
    try:
        n = 0
        buf = _BLOCK[:4096]
        t0 = time.perf_counter()
        end = t0 + secs
        while True:
            for _ in range(256):
                off = rnd.randrange(nblk) * 4096
                if write:
                    os.pwrite(fd, buf, off)
                else:
                    os.pread(fd, 4096, off)
            n += 256
            if time.perf_counter() >= end:
                break
        if write:
            os.fsync(fd)
        return n / (time.perf_counter() - t0), "python loop"
    finally:
        os.close(fd)


def group_io(bench: Bench, want_seq: bool, want_rand: bool) -> list[dict]:
    size = bench.seq
    small = min(size, 128 * MiB) // (8 if bench.quick else 1)
    res = Results()
    how = ""
    with contextlib.ExitStack() as stack:
        extra = SMALL_WRITE_PEERS if want_seq else ()
        mnts = bench.mount_all(stack, ("daxfs",) + PEERS + extra, max(2 * GiB, 4 * size), "io",
                               res)

        def one(r, t, m):
            nonlocal how
            p = m / f"seq{r}"
            with bench.phase(t, m, "seq-write", r):
                w = write_file(p, size)
            res.add(t, "write", size / 1e6 / w)
            # the same sequential write in 4 KiB write(2)s (`head -c N
            # /dev/urandom > f` writes 4 KiB at a time): one FUSE request each
            p4 = m / f"seq4k{r}"
            with bench.phase(t, m, "seq-write-4k", r):
                w4 = write_file(p4, small, data_fn=_small_block)
            res.add(t, "write4k", small / 1e6 / w4)
            res.add(t, "small/big", (small / w4) / (size / w))
            os.unlink(p4)
            if t in SMALL_WRITE_PEERS:      # there only for the small writes
                os.unlink(p)
                say(f"  [io] run {r + 1}/{bench.runs} {t:<12} write {size / 1e6 / w:8.0f} MB/s"
                    f"  4 KiB writes {small / 1e6 / w4:8.0f} MB/s")
                return
            bench.drop_caches()
            with bench.phase(t, m, "seq-read", r):
                n, rd = read_file(p)
            if n != size:
                raise RuntimeError(f"read back {n} bytes of {size}")
            res.add(t, "read", size / 1e6 / rd)
            # again with only this file's cached pages dropped: the
            # image / backing file stays in memory
            fd = os.open(p, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            with bench.phase(t, m, "seq-read-warm", r):
                n, rd = read_file(p)
            res.add(t, "read-warm", size / 1e6 / rd)
            if want_rand:
                bench.drop_caches()
                with bench.phase(t, m, "rand-read", r):
                    iops, how = rand_io(bench, p, size, False)
                res.add(t, "rread", iops)
                with bench.phase(t, m, "rand-write", r):
                    iops, how = rand_io(bench, p, size, True)
                res.add(t, "rwrite", iops)
            os.unlink(p)
            if t == "daxfs":
                fsync_path(m)         # commit: the space is reusable
            say(f"  [io] run {r + 1}/{bench.runs} {t:<12} write "
                f"{res.get(t, 'write')[-1]:8.0f} MB/s  read {res.get(t, 'read')[-1]:8.0f} MB/s"
                f"  read (backing warm) {res.get(t, 'read-warm')[-1]:8.0f} MB/s"
                + (f"  4k rand read {res.get(t, 'rread')[-1]:8.0f} IOPS  write "
                   f"{res.get(t, 'rwrite')[-1]:8.0f} IOPS" if want_rand else ""))

        bench.rounds(mnts, res, "io", one)
    s = size_text(size)
    figs = []
    if want_seq:
        figs += res.figures("write", f"seq write {s}, 1 MiB blocks + fsync", "MB/s",
                            targets={"passthrough": 0.8}, group="seq")
        s4 = size_text(small)
        figs += res.figures("write4k", f"seq write {s4}, 4 KiB blocks + fsync", "MB/s",
                            group="seq", peers=SMALL_WRITE_PEERS + PEERS)
        for t in ("daxfs",) + SMALL_WRITE_PEERS:
            sb = res.get(t, "small/big")
            figs.append(bc.figure("seq write 4 KiB / 1 MiB blocks"
                                  + ("" if t == "daxfs" else f" ({t})"), "x", runs=sb,
                                  target=0.5 if t == "daxfs" else None, target_on="value",
                                  group="seq",
                                  note="" if sb else "not measured: " + res.err.get(t, "")))
        figs += res.figures("read", f"seq read {s} (caches dropped)", "MB/s",
                            targets={"passthrough": 1.0}, group="seq")
        figs += res.figures("read-warm", f"seq read {s} (file's pages dropped, backing warm)",
                            "MB/s", group="seq")
    if want_rand:
        figs += res.figures("rread", f"4 KiB random read, {bench.rand_secs} s ({how})", "IOPS",
                            group="rand")
        figs += res.figures("rwrite", f"4 KiB random write, fsync at the end, {bench.rand_secs} s ({how})",
                            "IOPS", group="rand")
    return figs


def turn_order(systems: list, turn: int) -> list:
    """The order the systems go in on turn `turn`: rotated by one each
    turn, so that every system holds every place equally often and none
    ever follows itself.  (Alternating forward and reversed orders made
    the first and last systems run two turns back to back at every
    reversal: two identical daxfs mounts then measured 0.72x (create)
    and 0.81x (unlink) of each other, `--aa`, docs/benchmarks.md.)"""
    k = turn % len(systems) if systems else 0
    return systems[k:] + systems[:k]


def group_meta(bench: Bench) -> list[dict]:
    """The systems take turns every META_CHUNK files (`turn_order`: which
    one goes first rotates), each chunk timed on its own: a noisy moment of
    the machine slows every system alike instead of one system's whole
    phase.  Within a chunk the calls come back to back, as from any tool
    that works through a directory; turns file by file would instead measure, for
    the FUSE systems, the wake-up of an idle daemon on every call, on a
    machine where the other systems' daemons and caches just ran."""
    n = bench.nfiles
    res = Results()
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    steps = {"create": lambda p: os.close(os.open(p, flags, 0o644)),
             "stat": os.stat, "unlink": os.unlink}
    with contextlib.ExitStack() as stack:
        mnts = bench.mount_all(stack, ("daxfs",) + META_PEERS, 2 * GiB, "meta", res)

        def failed(t, e):
            res.failed("meta", t, e, mnts[t])

        def interleaved(tag, names, r):
            live = [t for t in mnts if t not in res.err]
            spent = dict.fromkeys(live, 0)
            step, clock = steps[tag], time.perf_counter_ns
            with contextlib.ExitStack() as phases:
                for t in live:
                    phases.enter_context(bench.phase(t, mnts[t], tag, r))
                for c, at in enumerate(range(0, n, META_CHUNK)):
                    for t in turn_order(live, c):
                        if t in res.err:
                            continue
                        chunk = names[t][at:at + META_CHUNK]
                        t0 = clock()
                        try:
                            for p in chunk:
                                step(p)
                        except OSError as e:
                            failed(t, e)
                            continue
                        spent[t] += clock() - t0
            for t in live:
                if t not in res.err:
                    res.add(t, tag, n / (spent[t] / 1e9))

        for r in range(bench.runs):
            names = {}
            for t, m in mnts.items():
                if t in res.err:
                    continue
                try:
                    (m / f"meta{r}").mkdir()
                except OSError as e:
                    failed(t, e)
                names[t] = [os.path.join(m / f"meta{r}", f"file{i:06d}") for i in range(n)]
            interleaved("create", names, r)
            bench.drop_caches()
            interleaved("stat", names, r)
            bench.drop_caches()
            for t, m in mnts.items():
                if t in res.err:
                    continue
                try:
                    with bench.phase(t, m, "readdir", r):
                        t0 = time.perf_counter()
                        got = len(os.listdir(m / f"meta{r}"))
                        res.add(t, "readdir", got / (time.perf_counter() - t0))
                    if got != n:
                        raise RuntimeError(f"readdir found {got} of {n} names")
                except (OSError, RuntimeError) as e:
                    failed(t, e)
            interleaved("unlink", names, r)
            for t, m in mnts.items():
                if t in res.err:
                    continue
                try:
                    os.rmdir(m / f"meta{r}")
                except OSError as e:
                    failed(t, e)
                    continue
                say(f"  [meta] run {r + 1}/{bench.runs} {t:<12} " + "  ".join(
                    f"{k} {res.get(t, k)[-1]:9.0f}/s"
                    for k in ("create", "stat", "readdir", "unlink")))
    c = count_text(n)
    tg = {"passthrough": 1.0, SINGLE: DUP_TARGET, CEILING: CEILING_TARGET}
    pn = {"passthrough": "aim 2x", SINGLE: "the cost of dup metadata: < 15%",
          CEILING: "in-memory pyfuse3: the engine's share of a request"}
    peers = META_PEERS
    return (res.figures("create", f"create {c} files", "ops/s", targets=tg, group="meta",
                        peer_notes=pn, peers=peers)
            + res.figures("stat", f"stat {c} files (caches dropped)", "ops/s", targets=tg,
                          group="meta", peer_notes=pn, peers=peers)
            + res.figures("readdir", f"readdir of {c} names (caches dropped)", "names/s",
                          targets=tg, group="meta", peer_notes=pn, peers=peers)
            + res.figures("unlink", f"unlink {c} files", "ops/s", targets=tg, group="meta",
                          peer_notes=pn, peers=peers))


TAR_SKIP = {"__pycache__", "test", "tests", "idlelib", "site-packages", "dist-packages",
            "lib2to3", "tkinter", "turtledemo", "ensurepip"}


def make_tar(quick: bool) -> tuple[Path, str]:
    """A tar of real files, made once in /tmp/daxfs-bench-cache: the venv's
    site-packages, or with --quick the Python standard library without its
    tests, caches and static library (at most 1500 entries)."""
    import sysconfig
    CACHE.mkdir(parents=True, exist_ok=True)
    if quick:
        src, name, cap = Path(sysconfig.get_paths()["stdlib"]), "stdlib-notests", 1500
    else:
        src, name, cap = Path(sysconfig.get_paths()["purelib"]), "site-packages", 0
    out = CACHE / f"{name}.tar"
    if not out.exists():
        entries = [src.name]
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames[:] = sorted(d for d in dirnames
                                 if d not in TAR_SKIP and not d.startswith("config-"))
            rel = os.path.relpath(dirpath, src.parent)
            entries += [os.path.join(rel, d) for d in dirnames]
            entries += [os.path.join(rel, f) for f in sorted(filenames)]
            if cap and len(entries) >= cap:
                break
        if cap:
            entries = entries[:cap]
        listing = CACHE / f"{name}.list"
        listing.write_text("\n".join(entries) + "\n")
        tmp = out.with_suffix(".tmp")
        res = run(["tar", "-cf", tmp, "--no-recursion", "-C", src.parent, "-T", listing],
                  timeout=600)
        if res.returncode not in (0, 1):
            raise RuntimeError(f"tar -c failed: {res.stderr.strip()[:200]}")
        os.replace(tmp, out)
    with tarfile.open(out) as tf:
        members = tf.getmembers()
    size = sum(m.size for m in members)
    return out, f"{name.split('-')[0]} ({len(members):,} entries, {size / 1e6:.0f} MB)"


def group_untar(bench: Bench) -> list[dict]:
    res = Results()
    tar, what = make_tar(bench.quick)
    with contextlib.ExitStack() as stack:
        mnts = bench.mount_all(stack, ("daxfs",) + META_PEERS, 2 * GiB, "untar", res)

        def one(r, t, m):
            d = m / f"untar{r}"
            d.mkdir()
            with bench.phase(t, m, "untar", r):
                t0 = time.perf_counter()
                out = run(["tar", "-xf", tar, "-C", d], timeout=900)
                dt = time.perf_counter() - t0
            if out.returncode != 0:
                raise RuntimeError(f"tar -x: {out.stderr.strip()[:200]}")
            res.add(t, "untar", dt)
            run(["rm", "-rf", d], timeout=900)
            if t in ("daxfs", SINGLE):
                fsync_path(m)
            say(f"  [untar] run {r + 1}/{bench.runs} {t:<12} {dt:7.2f} s")

        bench.rounds(mnts, res, "untar", one)
    return res.figures("untar", f"untar {what}", "s", hib=False,
                       targets={"passthrough": 1.5, SINGLE: DUP_TARGET,
                                CEILING: CEILING_TARGET},
                       group="untar", peers=META_PEERS,
                       peer_notes={SINGLE: "the cost of dup metadata: < 15%",
                                   CEILING: "in-memory pyfuse3: the engine's share"})


def preload_env(res: "Results") -> dict | None:
    """The environment that preloads the reflink/dedupe library, or None
    (and daxfs failed in `res`) when the library cannot be built."""
    from daxfs.cli.exec import ensure_library, environment
    try:
        return environment(ensure_library(), py_env())
    except Exception as e:
        res.fail("daxfs", f"no preload library: {e}")
        return None


def timed_cp(src, dst, mode: str, env=None) -> float:
    t0 = time.perf_counter()
    res = run(["cp", f"--reflink={mode}", src, dst], timeout=1800, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"cp --reflink={mode}: {res.stderr.strip()[:200]}")
    fsync_path(dst)
    return time.perf_counter() - t0


def group_reflink(bench: Bench) -> list[dict]:
    small, big = bench.reflink_sizes
    res = Results()
    env = preload_env(res)
    for t in ("daxfs", "xfs"):
        if t in res.err:
            continue
        try:
            with bench.target(t, 2 * (small + big) + 2 * GiB, "reflink") as m:
                srcs = {}
                for label, size in (("small", small), ("big", big)):
                    srcs[label] = (m / f"src-{label}", size)
                    say(f"  [reflink] {t}: writing {size_text(size)} source")
                    write_file(srcs[label][0], size)
                for r in range(bench.runs):
                    times = {}
                    for mode in ("always", "never"):
                        for label, (src, size) in srcs.items():
                            dst = m / f"copy-{mode}-{label}"
                            bench.drop_caches()
                            with bench.phase(t, m, f"cp-{mode}-{label}", r):
                                dt = timed_cp(src, dst, mode, env if t == "daxfs" else None)
                            if os.path.getsize(dst) != size:
                                raise RuntimeError(f"copy {dst} has the wrong size")
                            res.add(t, f"{mode}-{label}", dt)
                            times[f"{mode}-{label}"] = dt
                    res.add(t, "scaling", times["always-big"] / times["always-small"])
                    for p in m.iterdir():
                        if p.name.startswith("copy-"):
                            p.unlink()
                    fsync_path(m)
                    say(f"  [reflink] run {r + 1}/{bench.runs} {t:<5} " + "  ".join(
                        f"{k} {v:.3f} s" for k, v in times.items()))
        except Exception as e:
            res.failed("reflink", t, e)
    # the wrapper's own start-up, for the record
    if env is not None:
        for _ in range(bench.runs):
            t0 = time.perf_counter()
            out = run([sys.executable, "-m", "daxfs.cli", "exec", "--", "true"], env=py_env())
            if out.returncode == 0:
                res.add("daxfs", "exec", time.perf_counter() - t0)
    S, B = size_text(small), size_text(big)
    figs = []
    figs += res.figures("always-small", f"cp --reflink=always {S} + fsync", "s", peers=("xfs",),
                        hib=False, group="reflink")
    figs += res.figures("always-big", f"cp --reflink=always {B} + fsync", "s", peers=("xfs",),
                        hib=False, group="reflink")
    sc = res.get("daxfs", "scaling")
    figs.append(bc.figure(f"reflink time {B} / time {S}", "x", runs=sc, target=1.5,
                          target_on="value", higher_is_better=False, group="reflink",
                          note="" if sc else "not measured: " + res.err.get("daxfs", "")))
    figs += res.figures("never-small", f"plain cp {S} + fsync", "s", peers=("xfs",),
                        hib=False, group="reflink")
    figs += res.figures("never-big", f"plain cp {B} + fsync", "s", peers=("xfs",),
                        hib=False, group="reflink")
    ex = res.get("daxfs", "exec")
    figs.append(bc.figure("daxfs exec -- true (wrapper start-up)", "s", runs=ex,
                          higher_is_better=False, group="reflink"))
    return figs


def _dup_block(i: int) -> bytes:
    return random.Random(i * 7919 + 1).randbytes(MiB)


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


def duperemove_env(res: Results) -> dict | None:
    """The environment duperemove runs in on daxfs (`daxfs exec`'s), or
    None with daxfs (and XFS, without duperemove) marked failed."""
    env = preload_env(res)
    if not shutil.which("duperemove"):
        res.fail("daxfs", "duperemove is not installed")
        res.fail("xfs", "duperemove is not installed")
    return env


def duperemove(d, env) -> None:
    out = run(["duperemove", "-dr", "-q", d], timeout=1800, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"duperemove exit {out.returncode}: "
                           f"{(out.stderr or out.stdout).strip()[-200:]}")


def group_dedupe(bench: Bench) -> list[dict]:
    size = bench.dedupe
    res = Results()
    env = duperemove_env(res)
    for t in ("daxfs", "xfs"):
        if t in res.err:
            continue
        try:
            with bench.target(t, 3 * size + 2 * GiB, "dedupe") as m:
                d = m / "dup"
                d.mkdir()
                write_file(d / "a", size, data_fn=_dup_block)
                freed = []
                for r in range(bench.runs):
                    write_file(d / "b", size, data_fn=_dup_block)
                    fsync_path(d)
                    fsync_path(m)
                    bench.drop_caches()
                    before = free_bytes(m)
                    with bench.phase(t, m, "duperemove", r):
                        t0 = time.perf_counter()
                        duperemove(d, env if t == "daxfs" else None)
                        dt = time.perf_counter() - t0
                    fsync_path(m)
                    gained = free_bytes(m) - before
                    freed.append(gained)
                    res.add(t, "dedupe", dt)
                    say(f"  [dedupe] run {r + 1}/{bench.runs} {t:<5} {dt:7.2f} s, "
                        f"{gained / MiB:.0f} MiB freed")
                    (d / "b").unlink()
                    fsync_path(m)
                res.note(t, "dedupe", f"freed {bc.median(freed) / MiB:.0f} MiB of "
                                      f"{size // MiB} MiB duplicated")
        except Exception as e:
            res.failed("dedupe", t, e)
    return res.figures("dedupe", f"duperemove -dr, {size_text(size)} duplicated", "s",
                       peers=("xfs",), hib=False, group="dedupe")


AGED_FILE = 256 * MiB
AGED_EXTENTS = 8           # target: the appended file has at most this many extents
AGED_RECLAIM = 90          # target: duperemove reclaims >= 90% of the copy


def age_image(bench: Bench, m: Path) -> None:
    """What a busy image has been through: a tree untarred (and kept),
    small files created and every other one unlinked, then large files
    written and deleted."""
    tar, _ = make_tar(bench.quick)
    d = m / "aging"
    d.mkdir()
    out = run(["tar", "-xf", tar, "-C", d], timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"tar -x: {out.stderr.strip()[:200]}")
    rng = random.Random(20)
    small = d / "small"
    small.mkdir()
    names = [small / f"f{i:05d}" for i in range(2000 if bench.quick else 5000)]
    for p in names:
        with open(p, "wb") as fh:
            fh.write(_BLOCK[:rng.choice((1, 2, 3, 5, 8, 16)) * 4 * KiB])
    for p in names[::2]:
        p.unlink()
    settle_space(m)
    for size in ((128 * MiB, 512 * MiB) if bench.quick else (1 * GiB, 4 * GiB)):
        write_file(m / "big", size)
        (m / "big").unlink()
        settle_space(m)


def settle_space(m: Path, timeout: float = 120) -> int:
    """Free bytes once what was deleted is given back and committed (daxfs
    frees unlinked files in the background; statfs frees some itself)."""
    last = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fsync_path(m)
        now = free_bytes(m)
        if now == last:
            return now
        last = now
        time.sleep(0.2)
    return last


def append_file(path, size: int) -> None:
    """`size` bytes in 1 MiB appends (O_APPEND), each its own write, + fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    try:
        for i in range(size // MiB):
            mv = memoryview(_dup_block(i))
            while len(mv):
                mv = mv[os.write(fd, mv):]
        os.fsync(fd)
    finally:
        os.close(fd)


def extent_count(path) -> int:
    """The file's extents as FIEMAP gives them (daxfs's through its
    control channel, a kernel filesystem's through the ioctl)."""
    from daxfs.control import client
    fd = os.open(path, os.O_RDONLY)
    try:
        return len(client.fiemap(fd))
    finally:
        os.close(fd)


def group_aged(bench: Bench) -> list[dict]:
    res = Results()
    env = duperemove_env(res)
    big = 640 * MiB if bench.quick else 5 * GiB
    for t in ("daxfs", "xfs"):
        if t in res.err:
            continue
        try:
            with bench.target(t, big + 2 * GiB, "aged") as m:
                say(f"  [aged] {t}: ageing the image")
                age_image(bench, m)
                for r in range(bench.runs):
                    d = m / f"aged{r}"
                    d.mkdir()
                    append_file(d / "a", AGED_FILE)
                    n = extent_count(d / "a")
                    timed_cp(d / "a", d / "b", "never", env if t == "daxfs" else None)
                    fsync_path(d)
                    before = settle_space(m)
                    duperemove(d, env if t == "daxfs" else None)
                    share = 100 * (settle_space(m) - before) / AGED_FILE
                    res.add(t, "extents", n)
                    res.add(t, "reclaim", share)
                    say(f"  [aged] run {r + 1}/{bench.runs} {t:<5} {n} extents, "
                        f"duperemove reclaimed {share:.0f}% of the copy")
                    shutil.rmtree(d)
                    settle_space(m)
        except Exception as e:
            res.failed("aged", t, e)
    F = size_text(AGED_FILE)
    figs = []
    for metric, name, unit, target, hib in (
            ("extents", f"aged image: extents of a {F} file written in 1 MiB appends",
             "extents", AGED_EXTENTS, False),
            ("reclaim", f"aged image: duperemove -dr reclaims of a {F} plain copy",
             "%", AGED_RECLAIM, True)):
        ours, theirs = res.get("daxfs", metric), res.get("xfs", metric)
        notes = [] if ours else ["not measured: " + res.err.get("daxfs", "no value")]
        if not theirs:
            notes.append("xfs not measured: " + res.err.get("xfs", "no value"))
        figs.append(bc.figure(name, unit, runs=ours, peer="xfs", peer_runs=theirs,
                              target=target, target_on="value", higher_is_better=hib,
                              group="aged", note="; ".join(notes)))
    return figs


def group_engine(bench: Bench, sub: list[str]) -> list[dict]:
    out = bench.dir / "engine.json"
    cmd = [sys.executable, str(HERE / "bench_engine.py"), "--json", str(out),
           "--runs", str(bench.runs), "--workdir", str(bench.dir)]
    if bench.quick:
        cmd.append("--quick")
    if sub:
        cmd += ["--only", ",".join(sub)]
    if bench.profile:
        cmd += ["--profile", str(bench.profile)]
    timeout = 900 if bench.quick else 7200
    say(f"  [engine] {' '.join(cmd[1:])}")
    try:
        proc = subprocess.run(cmd, timeout=timeout, env=py_env(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return [bc.not_measured("engine benchmarks", "-", f"timed out after {timeout} s",
                                group="engine")]
    if proc.returncode != 0 or not out.exists():
        return [bc.not_measured("engine benchmarks", "-",
                                f"bench_engine.py exited {proc.returncode}", group="engine")]
    figs = bc.read_json(str(out))
    for f in figs:
        f["group"] = "engine." + (f.get("group") or "")
    return figs


# ------------------------------------------------------------------ main

class Watchdog:
    """Aborts this script's FUSE connections if a group overruns: a hung
    daemon then fails the group's system calls instead of hanging it."""

    def __init__(self, seconds: float, what: str):
        self.seconds, self.what, self.fired = seconds, what, False
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True

    def _fire(self):
        self.fired = True
        say(f"!! {self.what} overran {self.seconds:.0f} s: aborting its FUSE connections")
        with contextlib.suppress(Exception):
            REG.diagnose()
        REG.abort_fuse()

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()
        return False


def select_groups(only: str) -> tuple[list[str], list[str]]:
    if not only:
        return list(MAIN_GROUPS), []
    main, sub = [], []
    for w in only.split(","):
        w = w.strip()
        if not w:
            continue
        if w in MAIN_GROUPS:
            main.append(w)
        elif w in ENGINE_GROUPS or (w.startswith("engine.") and w[7:] in ENGINE_GROUPS):
            sub.append(w.removeprefix("engine."))
            if "engine" not in main:
                main.append("engine")
        else:
            raise SystemExit(f"bench.py: unknown group {w!r}; groups: "
                             + ", ".join(MAIN_GROUPS + ENGINE_GROUPS))
    if "engine" in main and sub and "engine" in [w.strip() for w in only.split(",")]:
        sub = []
    return [g for g in MAIN_GROUPS if g in main], sub


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def machine_line(args) -> str:
    u = os.uname()
    return (f"{time.strftime('%Y-%m-%d %H:%M')}  Linux {u.release} {u.machine}, "
            f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
            + ("  [quick]" if args.quick else "") + f"  medians of {args.runs}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="daxfs vs its peers, in one run.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="groups: " + ", ".join(MAIN_GROUPS)
                                + "; engine sub-groups: " + ", ".join(ENGINE_GROUPS))
    p.add_argument("--quick", action="store_true", help="smaller sizes; under 5 minutes")
    p.add_argument("--only", default="", help="comma-separated groups (default: all)")
    p.add_argument("--runs", type=int, default=3, help="runs per figure, median (default 3)")
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    p.add_argument("--png", metavar="FILE", help="draw the figures as a PNG chart")
    p.add_argument("--workdir", default=None, help="where images and mounts go (default /tmp)")
    p.add_argument("--profile", metavar="DIR", help="profile the daxfs daemon and the engine")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--group-timeout", type=float, default=None, metavar="S",
                   help="watchdog limit per group (default 600 s quick, 5400 s full)")
    p.add_argument("--list", action="store_true", help="list the groups and exit")
    p.add_argument("--aa", action="store_true",
                   help="A/A check of the bench itself: the daxfs-single peer is a second"
                        " daxfs with dup metadata, so its ratios should read 1x")
    args = p.parse_args(argv)
    if args.list:
        print("Groups" + __doc__.split("Groups")[1].split("Output:")[0].rstrip())
        return 0
    if args.runs < 1:
        p.error("--runs must be at least 1")
    groups, sub = select_groups(args.only)
    if os.geteuid() != 0:
        say("bench.py: needs root (mounts, loop devices, drop_caches)")
        return 1
    if not os.path.exists("/dev/fuse"):
        say("bench.py: /dev/fuse is missing: FUSE figures cannot be measured")
    signal.signal(signal.SIGTERM, _sigterm)
    bench = Bench(args)
    say(f"daxfs benchmark: {machine_line(args)}")
    if args.aa:
        say(f"A/A check: {SINGLE} is a second daxfs with dup metadata (ratios should be 1x)")
    say(f"work directory {bench.dir}; groups {', '.join(groups)}"
        + (f" ({', '.join(sub)})" if sub else ""))
    if args.runs < 3:
        say(f"note: {args.runs} run(s) per figure; 3 or more give meaningful medians")
    if bench.profile:
        say("note: profiling: these numbers are not the real ones")
    t_start = time.perf_counter()
    limit = args.group_timeout or (600 if args.quick else 5400)
    try:
        for g in groups:
            t0 = time.perf_counter()
            say(f"--- {g}")
            try:
                with Watchdog(limit, g):
                    if g == "seq":
                        bench.figs += group_io(bench, True, "rand" in groups)
                    elif g == "rand":
                        if "seq" not in groups:
                            bench.figs += group_io(bench, False, True)
                    elif g == "meta":
                        bench.figs += group_meta(bench)
                    elif g == "untar":
                        bench.figs += group_untar(bench)
                    elif g == "aged":
                        bench.figs += group_aged(bench)
                    elif g == "reflink":
                        bench.figs += group_reflink(bench)
                    elif g == "dedupe":
                        bench.figs += group_dedupe(bench)
                    elif g == "engine":
                        bench.figs += group_engine(bench, sub)
            except Exception as e:
                traceback.print_exc()
                bench.figs.append(bc.not_measured(f"{g} figures", "-",
                                                  f"{type(e).__name__}: {e}", group=g))
            say(f"--- {g} took {time.perf_counter() - t0:.0f} s")
    except KeyboardInterrupt:
        say("interrupted: taking the mounts down")
    finally:
        REG.cleanup()
        if not args.keep:
            shutil.rmtree(bench.dir, ignore_errors=True)
        else:
            say(f"kept {bench.dir}")
    figs = bench.figs
    say("")
    say(f"daxfs benchmark: {machine_line(args)}; {time.perf_counter() - t_start:.0f} s")
    say("ratio = how many times faster daxfs is than the peer (below 1: slower)")
    say(bc.table(figs))
    if bench.no_loop:
        say(f"XFS: {bench.no_loop}")
    if args.json:
        bc.write_json(figs, args.json)
        say(f"wrote {args.json}")
    if args.png:
        bc.write_png(figs, args.png, "daxfs vs peers", machine_line(args))
        say(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
