#!/usr/bin/env python3
"""How many FUSE requests one operation costs, by kind: daxfs against the
in-memory ceiling (scripts/peers/memfs.py), counted from the requests each
daemon reads from /dev/fuse.

    .venv/bin/python scripts/fuse_requests.py [--n 500] [--workdir /dev/shm]

Every request costs the binding and the event loop the same whatever the
filesystem does with it, so the number of requests per operation is a
floor under any filesystem on this binding: what the engine can never
win back.  The counts come from `strace -e trace=read` on the daemon
(strace must be installed; it slows the daemons, but the counts are
exact): each read of /dev/fuse returns one request, whose header names
its opcode.  GETXATTR requests are also counted by attribute name.  The
mounts are scripts/bench.py's own (its Bench: options, logs, unmount).

Workloads, N operations each, in a fresh directory: create (open
O_CREAT|O_EXCL + close), stat after dropping the kernel's caches, unlink,
and sequential 4 KiB writes to one open file.  Root and /dev/fuse needed;
everything mounted is unmounted.
"""

import argparse
import collections
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time


# linux/fuse.h, enum fuse_opcode
OPCODES = {
    1: "LOOKUP", 2: "FORGET", 3: "GETATTR", 4: "SETATTR", 5: "READLINK", 6: "SYMLINK",
    8: "MKNOD", 9: "MKDIR", 10: "UNLINK", 11: "RMDIR", 12: "RENAME", 13: "LINK", 14: "OPEN",
    15: "READ", 16: "WRITE", 17: "STATFS", 18: "RELEASE", 20: "FSYNC", 21: "SETXATTR",
    22: "GETXATTR", 23: "LISTXATTR", 24: "REMOVEXATTR", 25: "FLUSH", 26: "INIT",
    27: "OPENDIR", 28: "READDIR", 29: "RELEASEDIR", 30: "FSYNCDIR", 34: "ACCESS",
    35: "CREATE", 36: "INTERRUPT", 42: "BATCH_FORGET", 43: "FALLOCATE",
    44: "READDIRPLUS", 45: "RENAME2", 46: "LSEEK", 47: "COPY_FILE_RANGE",
}
IN_HEADER = 40          # sizeof(struct fuse_in_header)
GETXATTR_IN = 8         # sizeof(struct fuse_getxattr_in): the name follows
_READ = re.compile(r'read\(\d+, "((?:\\x[0-9a-f]{2})*)"(?:\.\.\.)?, \d+\) = (\d+)')


def _bytes(hexed: str) -> bytes:
    return bytes.fromhex(hexed.replace("\\x", ""))


def parse(trace: str) -> collections.Counter:
    """Requests by kind in an strace log of the daemon's reads."""
    counts = collections.Counter()
    for line in trace.splitlines():
        m = _READ.search(line)
        if not m or int(m.group(2)) < IN_HEADER:
            continue
        raw = _bytes(m.group(1))
        if len(raw) < 8:
            continue
        op = OPCODES.get(int.from_bytes(raw[4:8], "little"), f"op{raw[4]}")
        if op == "GETXATTR":
            name = raw[IN_HEADER + GETXATTR_IN:].split(b"\0", 1)[0]
            op = f"GETXATTR({name.decode(errors='replace')})"
        counts[op] += 1
    return counts


@contextlib.contextmanager
def traced(pid: int, log: str):
    """strace the daemon's reads while the block runs."""
    st = subprocess.Popen(["strace", "-f", "-qq", "-xx", "-s", "96", "-e", "trace=read",
                           "-e", "signal=none", "-p", str(pid), "-o", log],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)             # (attached to every thread before the workload starts)
    try:
        yield
    finally:
        time.sleep(0.5)         # the last replies' follow-ups (FORGET, RELEASE)
        st.send_signal(2)
        try:
            st.wait(timeout=60)
        except subprocess.TimeoutExpired:
            st.kill()


@contextlib.contextmanager
def mounted(workdir: str | None):
    """daxfs and the ceiling, mounted the way scripts/bench.py mounts them
    (its Bench: the same options, logs and emergency unmount):
    ({name: (mountpoint, daemon pid)}, the Bench)."""
    import bench as benchmod
    b = benchmod.Bench(argparse.Namespace(quick=True, runs=1, workdir=workdir, profile=None,
                                          keep=False, aa=False))
    try:
        with contextlib.ExitStack() as stack:
            mnts = {"daxfs": stack.enter_context(b.daxfs(1 << 30)),
                    "ceiling": stack.enter_context(b.memfs())}
            yield {name: (str(m), benchmod.REG.fuse[str(m)][1].pid)
                   for name, m in mnts.items()}, b
    finally:
        shutil.rmtree(b.dir, ignore_errors=True)


def workloads(n: int, drop_caches):
    """(name, prepare(dir) -> state, run(state)) for each workload."""
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    names = lambda d: [os.path.join(d, f"f{i:05d}") for i in range(n)]  # noqa: E731

    def made(d):
        ps = names(d)
        for p in ps:
            os.close(os.open(p, flags, 0o644))
        return ps

    def write_4k(d):
        fd = os.open(os.path.join(d, "w"), flags, 0o644)
        os.write(fd, b"\0" * 4096)      # (the first write of a file differs)
        return fd

    def run_writes(fd):
        page = b"x" * 4096
        for _ in range(n):
            os.write(fd, page)
        os.close(fd)

    def stat_prepare(d):
        ps = made(d)
        drop_caches()
        return ps

    return [
        ("create", names, lambda ps: [os.close(os.open(p, flags, 0o644)) for p in ps]),
        ("stat (caches dropped)", stat_prepare, lambda ps: [os.stat(p) for p in ps]),
        ("unlink", made, lambda ps: [os.unlink(p) for p in ps]),
        ("4 KiB sequential write", write_4k, run_writes),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="operations per workload")
    p.add_argument("--workdir", default=None, help="where the image and mounts go")
    args = p.parse_args(argv)
    if shutil.which("strace") is None:
        print("fuse_requests: strace is not installed (apt-get install strace)",
              file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("fuse_requests: run as root (it mounts and drops caches)", file=sys.stderr)
        return 2
    with mounted(args.workdir) as (mnts, bench):
        for k, (name, prepare, run) in enumerate(workloads(args.n, bench.drop_caches)):
            print(f"{name} ({args.n} operations): requests per operation")
            for system, (mnt, pid) in mnts.items():
                d = os.path.join(mnt, f"w{k}")
                os.mkdir(d)
                state = prepare(d)
                log = os.path.join(bench.dir, f"{system}-{k}.trace")
                with traced(pid, log):
                    run(state)
                with open(log, errors="replace") as f:
                    counts = parse(f.read())
                total = sum(counts.values()) / args.n
                kinds = "  ".join(f"{op} {c / args.n:.2f}" for op, c in counts.most_common()
                                  if c / args.n >= 0.01)
                print(f"  {system:<8} {total:5.2f}  {kinds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
