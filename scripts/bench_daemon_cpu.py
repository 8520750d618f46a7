#!/usr/bin/env python3
"""What one metadata operation costs the FUSE daemon: wall time per
operation seen by the caller, and the daemon's CPU time per operation (from
/proc/PID/schedstat around the loop), for daxfs and for the pyfuse3
passthrough peer (scripts/peers/passthrough.py), side by side on the same
machine.  With --pool, daxfs is also measured with pyfuse3's worker pool
(DAXFS_PYFUSE3_POOL=1) instead of its single request worker; with
--gc-default, with Python's own garbage collector settings
(DAXFS_GC=default) instead of daxfs/gc_tuning.py's; with --daxfs-loop,
the passthrough is also measured served the way the daxfs daemon serves
(passthrough.py --daxfs-loop): the binding's own cost under daxfs's
settings.

    .venv/bin/python scripts/bench_daemon_cpu.py [--runs 3] [--files 2000] [--pool]
        [--gc-default] [--daxfs-loop]

Loops: create (open O_CREAT|O_EXCL + close), stat after dropping the
kernel's caches, unlink.  Medians over --runs; runs of the systems
alternate.  Root and /dev/fuse needed; everything mounted is unmounted.
"""

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
TIMEOUT = 120
sys.path.insert(0, ROOT)

from daxfs import host  # noqa: E402


def _daemon_pid(mnt: str) -> int:
    """pid of the process serving `mnt`: it holds /dev/fuse open and names
    the mount point on its command line."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = [os.fsdecode(a) for a in f.read().split(b"\0")]
            if mnt not in args:
                continue
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/fuse" for fd in fds):
                return int(pid)
        except OSError:
            continue
    raise RuntimeError(f"no daemon found for {mnt}")


def _cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def _drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


@contextlib.contextmanager
def mounted_daxfs(work: str, name: str, env: dict):
    img, mnt = os.path.join(work, name + ".img"), os.path.join(work, name)
    os.mkdir(mnt)
    daxfs = [PY, "-m", "daxfs.cli"]
    subprocess.run(daxfs + ["mkfs", img, "--size", "2G"], check=True, capture_output=True,
                   timeout=TIMEOUT)
    subprocess.run(daxfs + ["mount", img, mnt, "--log", img + ".log"], check=True,
                   timeout=TIMEOUT, env=env)
    try:
        yield mnt
    finally:
        subprocess.run(daxfs + ["umount", mnt], timeout=TIMEOUT)
        host.force_unmount(mnt)


@contextlib.contextmanager
def mounted_passthrough(work: str, name: str = "pt", extra=()):
    src, mnt = os.path.join(work, name + "-src"), os.path.join(work, name)
    os.mkdir(src)
    os.mkdir(mnt)
    proc = subprocess.Popen([PY, os.path.join(HERE, "peers", "passthrough.py"), src, mnt,
                             *extra])
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the passthrough peer did not mount")
            time.sleep(0.05)
        yield mnt
    finally:
        host.force_unmount(mnt, [proc.pid], TIMEOUT)
        proc.wait()


def one_run(mnt: str, pid: int, tag: str, n: int) -> dict:
    d = os.path.join(mnt, tag)
    os.mkdir(d)
    names = [os.path.join(d, f"f{i:06d}") for i in range(n)]
    out = {}

    def phase(label, fn):
        c0, t0 = _cpu_ns(pid), time.perf_counter()
        fn()
        t1, c1 = time.perf_counter(), _cpu_ns(pid)
        out[label] = ((t1 - t0) / n * 1e6, (c1 - c0) / n / 1e3)

    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    phase("create", lambda: [os.close(os.open(p, flags, 0o644)) for p in names])
    _drop_caches()
    phase("stat", lambda: [os.stat(p) for p in names])
    phase("unlink", lambda: [os.unlink(p) for p in names])
    os.rmdir(d)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--pool", action="store_true",
                   help="also measure daxfs with pyfuse3's worker pool")
    p.add_argument("--gc-default", action="store_true",
                   help="also measure daxfs with Python's own garbage collector settings")
    p.add_argument("--daxfs-loop", action="store_true",
                   help="also measure the passthrough served with daxfs's request loop "
                        "and collector set-up (passthrough.py --daxfs-loop)")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("needs root and /dev/fuse", file=sys.stderr)
        return 1
    work = tempfile.mkdtemp(prefix="daxfs-cpu-", dir=args.workdir)
    env = dict(os.environ, PYTHONPATH=ROOT)
    systems = {}
    results: dict[str, list[dict]] = {}
    try:
        with contextlib.ExitStack() as stack:
            systems["daxfs"] = stack.enter_context(mounted_daxfs(work, "daxfs", env))
            if args.pool:
                systems["daxfs (pyfuse3 pool)"] = stack.enter_context(
                    mounted_daxfs(work, "daxfs-pool", dict(env, DAXFS_PYFUSE3_POOL="1")))
            if args.gc_default:
                systems["daxfs (gc default)"] = stack.enter_context(
                    mounted_daxfs(work, "daxfs-gc", dict(env, DAXFS_GC="default")))
            systems["passthrough"] = stack.enter_context(mounted_passthrough(work))
            if args.daxfs_loop:
                systems["passthrough (daxfs loop)"] = stack.enter_context(
                    mounted_passthrough(work, "pt-loop", ["--daxfs-loop"]))
            pids = {name: _daemon_pid(m) for name, m in systems.items()}
            for r in range(args.runs):
                for name, m in systems.items():
                    results.setdefault(name, []).append(one_run(m, pids[name], f"r{r}", args.files))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.files} files, median of {args.runs} runs: wall µs per op / daemon CPU µs per op")
    for op in ("create", "stat", "unlink"):
        print(f"  {op}")
        for name, runs in results.items():
            w = statistics.median(x[op][0] for x in runs)
            c = statistics.median(x[op][1] for x in runs)
            print(f"    {name:<26} {w:7.1f} / {c:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
