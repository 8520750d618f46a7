#!/usr/bin/env python3
"""Can one user stall everyone?  The latency of one user's requests while
another user runs the longest requests daxfs serves.

One daxfs mount (image in /dev/shm when it has room, else --workdir) is
shared by two users:

* the hog (uid 65534, via setpriv) loops one kind of long request on its
  own files for --seconds: `dedupe` (1 GiB dedupes between two 1 GiB files
  with the same data), `sparse` (1 GiB dedupes between two sparse 1 GiB
  files: holes), `clone` (FICLONE of a 1 GiB file of 16,384 extents),
  `truncate` (truncate a 16,384-extent file to 0 and rebuild it),
  `fiemap` (FIEMAP of a 50,000-extent file);
* root meanwhile times `stat` of a name that does not exist (a LOOKUP
  the kernel never caches, so every one reaches the daemon), back to back.

It prints, per hog, the hog's requests done, and root's stat latency: p50,
p99 and the worst, with the target (p99 < 100 ms, issue 16) and whether it
is met.  `--baseline` also times the stats with no hog.

    .venv/bin/python scripts/bench_stall.py [--seconds 20] [--hogs dedupe,sparse,clone,truncate,fiemap]

Needs root and /dev/fuse; unmounts everything it mounts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from daxfs import host  # noqa: E402

PY = sys.executable
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
GiB, MiB = 1 << 30, 1 << 20
TARGET_P99_MS = 100.0
HOGS = ("dedupe", "sparse", "clone", "truncate", "fiemap")

# Runs as nobody in the mount's directory `pub`: prepares its files, then
# loops the long request until the deadline; prints how many it did.
HOG = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from daxfs.control import client as rc
kind, pub, seconds = sys.argv[2], sys.argv[3], float(sys.argv[4])
MiB, GiB = 1 << 20, 1 << 30
def fragmented(path, extents, chunk=65536):
    # every other 64 KiB: a hole between extents, so no two merge
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    block = os.urandom(chunk)
    for i in range(extents):
        os.pwrite(fd, block, 2 * i * chunk)
    return fd
if kind == "dedupe":
    data = os.urandom(MiB)
    fds = []
    for name in ("a", "b"):
        fd = os.open(f"{pub}/{name}", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        for i in range(1024):
            os.pwrite(fd, data, i * MiB)
        fds.append(fd)
    step = lambda: rc.dedupe(fds[0], 0, GiB, [(fds[1], 0)])
elif kind == "sparse":
    fds = []
    for name in ("a", "b"):
        fd = os.open(f"{pub}/{name}", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(fd, GiB)
        fds.append(fd)
    step = lambda: rc.dedupe(fds[0], 0, GiB, [(fds[1], 0)])
elif kind == "clone":
    src = fragmented(f"{pub}/src", 16384)
    dst = os.open(f"{pub}/dst", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    step = lambda: rc.clone(src, dst)
elif kind == "truncate":
    fd = fragmented(f"{pub}/t", 16384)
    def step():
        os.ftruncate(fd, 0)
        fragmented(f"{pub}/t", 16384)
elif kind == "fiemap":
    fd = fragmented(f"{pub}/f", 50000, 4096)
    step = lambda: rc.fiemap(fd, 0, 1 << 62)
os.fsync(os.open(pub, os.O_RDONLY))
print("ready", flush=True)
sys.stdin.readline()
done, deadline = 0, time.monotonic() + seconds
while time.monotonic() < deadline:
    step()
    done += 1
print(done, flush=True)
"""


def _percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def time_stats(mnt: str, seconds: float) -> list[float]:
    """Latencies (ms) of stat of a missing name, back to back."""
    missing = os.path.join(mnt, "no-such-name")
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        try:
            os.stat(missing)
        except FileNotFoundError:
            pass
        out.append((time.perf_counter() - t0) * 1000)
    return out


def report(name: str, lat: list[float], extra: str = "") -> None:
    p99 = _percentile(lat, 0.99)
    met = "met" if p99 < TARGET_P99_MS else "NOT met"
    print(f"{name:<10} stats {len(lat):>7}  p50 {statistics.median(lat):8.2f} ms"
          f"  p99 {p99:8.2f} ms  max {max(lat):8.2f} ms  (target p99 < {TARGET_P99_MS:.0f} ms:"
          f" {met}){extra}", flush=True)


def run_hog(kind: str, mnt: str, seconds: float) -> None:
    pub = os.path.join(mnt, f"hog-{kind}")
    os.mkdir(pub)
    os.chmod(pub, 0o777)
    hog = subprocess.Popen(NOBODY + [PY, "-c", HOG, ROOT, kind, pub, str(seconds)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert hog.stdout.readline().strip() == "ready", f"{kind}: the hog did not start"
        hog.stdin.write("go\n")
        hog.stdin.flush()
        time.sleep(0.2)
        lat = time_stats(mnt, seconds - 0.5)
        done = hog.stdout.readline().strip()
        hog.wait(timeout=120)
    finally:
        if hog.poll() is None:
            hog.kill()
    report(kind, lat, f"  [hog: {done} requests]")
    shutil.rmtree(pub)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--hogs", default=",".join(HOGS))
    p.add_argument("--baseline", action="store_true")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("needs root and /dev/fuse", file=sys.stderr)
        return 1
    hogs = [h for h in args.hogs.split(",") if h]
    if set(hogs) - set(HOGS):
        print(f"unknown hog: {sorted(set(hogs) - set(HOGS))}", file=sys.stderr)
        return 2
    base = args.workdir or ("/dev/shm" if shutil.disk_usage("/dev/shm").free > 6 * GiB else None)
    work = tempfile.mkdtemp(prefix="daxfs-stall-", dir=base)
    img, mnt = os.path.join(work, "img"), os.path.join(work, "mnt")
    os.mkdir(mnt)
    os.chmod(work, 0o755)
    daxfs = [PY, "-m", "daxfs.cli"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    try:
        subprocess.run(daxfs + ["mkfs", img, "--size", "5G"], check=True, env=env,
                       capture_output=True, timeout=120)
        subprocess.run(daxfs + ["mount", img, mnt, "--log", img + ".log"], check=True,
                       env=env, timeout=120)
        os.chmod(mnt, 0o755)
        print(f"daxfs mount of {img}; root times stat of a missing name while another"
              " user loops long requests", flush=True)
        if args.baseline:
            report("no hog", time_stats(mnt, min(args.seconds, 5)))
        for kind in hogs:
            run_hog(kind, mnt, args.seconds)
    except BaseException:
        with open(img + ".log", errors="replace") as f:
            print("daemon log (last lines):\n" + "".join(f.readlines()[-15:]), file=sys.stderr)
        raise
    finally:
        subprocess.run(daxfs + ["umount", mnt], env=env, timeout=120)
        host.force_unmount(mnt)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
