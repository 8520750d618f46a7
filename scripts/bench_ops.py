#!/usr/bin/env python3
"""Engine cost of single operations, no FUSE: µs per operation, median of
--runs, through the filesystem API (`daxfs.engine.fs.Filesystem`) on a fresh
image in --workdir.

    .venv/bin/python scripts/bench_ops.py [--runs 3] [--n 10000]

To measure another commit, run it with that checkout first on the path:
`PYTHONPATH=/path/to/checkout .venv/bin/python scripts/bench_ops.py`.
Times are the process's CPU time (the engine is one thread, and CPU time
moves far less than wall time on a shared machine), except the durable
commit's, which waits for the disk: wall time.  Compare figures from one
run only.
"""

import argparse
import os
import random
import statistics
import stat
import sys
import tempfile
import time

REG = stat.S_IFREG | 0o644
BS = 4096


def _fs(workdir, name, size=2 << 30):
    from daxfs.engine.fs import Filesystem
    from daxfs.engine.mkfs import mkfs
    path = os.path.join(workdir, name)
    mkfs(path, size)
    return Filesystem.open(path)


def _per_op(fn, n, clock=time.process_time):
    t0 = clock()
    fn()
    return (clock() - t0) / n * 1e6


def metadata(workdir, n) -> dict:
    fs = _fs(workdir, "meta.img")
    d = fs.mkdir(1, b"d", 0o755, 0, 0).ino
    names = [b"file%06d" % i for i in range(n)]
    inos = []

    def create():
        for nm in names:
            try:
                fs.lookup(d, nm)                   # the kernel's LOOKUP before CREATE
            except Exception:
                pass
            inos.append(fs.mknod(d, nm, REG, 0, 0).ino)

    out = {"create (lookup miss + mknod)": _per_op(create, n)}
    fs.commit()
    out["lookup, name and inode cached"] = _per_op(lambda: [fs.lookup(d, nm) for nm in names], n)
    fs.inodes.forget_cache()
    if hasattr(fs.dirs, "forget_cache"):           # (older commits had no name cache)
        fs.dirs.forget_cache()
    out["lookup, nothing cached"] = _per_op(lambda: [fs.lookup(d, nm) for nm in names], n)
    out["readdir, per name listed (inodes cached)"] = _per_op(
        lambda: sum(1 for _ in fs.readdir(d, 0)), n + 2)
    deferred = hasattr(fs, "reap_inactive")        # (older commits freed in forget)
    fs.defer_inactive = True                       # as the daemon runs it

    def unlink():
        for nm, ino in zip(names, inos):
            fs.unlink(d, nm)
            fs.getattr(d)                          # the kernel's GETATTR of the directory
            fs.forget(ino)

    if deferred:
        out["unlink + getattr + forget (free queued)"] = _per_op(unlink, n)
        out["free of a queued unlinked inode"] = _per_op(fs.reap_inactive, n)
    else:
        out["unlink + getattr + forget (freeing)"] = _per_op(unlink, n)
    fs.close()
    return out


def data(workdir, n) -> dict:
    fs = _fs(workdir, "data.img")
    big = fs.mknod(1, b"big", REG, 0, 0).ino
    mb = os.urandom(1 << 20)
    for i in range(256):
        fs.write(big, i << 20, mb)
    fs.commit()
    rnd = random.Random(1)
    offs = [rnd.randrange(65536) * BS for _ in range(n)]
    page = os.urandom(BS)
    out = {"4 KiB overwrite in place": _per_op(lambda: [fs.write(big, o, page) for o in offs], n)}
    out["4 KiB read"] = _per_op(lambda: [fs.read(big, o, BS) for o in offs], n)
    chunk = os.urandom(16384)
    files, per = max(1, n // 10), 10

    def append():
        for f in range(files):
            ino = fs.mknod(1, b"a%d" % f, REG, 0, 0).ino
            for i in range(per):
                fs.write(ino, i * len(chunk), chunk)

    out["16 KiB appending write (incl. 1 create per 10)"] = _per_op(append, files * per)
    fs.commit()
    small = max(1, n // 20)

    def overwrite_fsync():
        for o in offs[:small]:
            fs.write(big, o, page)
            fs.fsync(big)

    out["4 KiB overwrite + fsync (a durable commit), wall"] = _per_op(overwrite_fsync, small,
                                                                      time.perf_counter)
    fs.close()
    return out


def commits(workdir, n) -> dict:
    """What the commit adds per operation: a background commit after a
    second's worth (5000) of creates and of unlinks."""
    fs = _fs(workdir, "commit.img")
    d = fs.mkdir(1, b"d", 0o755, 0, 0).ino
    k = min(n, 5000)
    names = [b"f%06d" % i for i in range(k)]
    fs.commit()
    inos = [fs.mknod(d, nm, REG, 0, 0).ino for nm in names]
    out = {f"background commit after {k} creates, per create":
           _per_op(lambda: fs.commit(durable=False), k)}
    fs.defer_inactive = True
    for nm, ino in zip(names, inos):
        fs.unlink(d, nm)
        fs.forget(ino)
    out[f"background commit after {k} unlinks, per unlink"] = _per_op(
        lambda: fs.commit(durable=False), k)
    fs.close()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--n", type=int, default=10000, help="operations per figure")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    import daxfs
    try:
        from daxfs import gc_tuning
        gc_tuning.tune()        # the collector set up as the daemon has it
    except ImportError:
        pass                    # (older commits ran with Python's defaults)
    print(f"daxfs from {os.path.dirname(daxfs.__file__)}; median of {args.runs} runs, µs/op")
    results: dict[str, list[float]] = {}
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(dir=args.workdir) as wd:
            for group in (metadata, data, commits):
                for k, v in group(wd, args.n).items():
                    results.setdefault(k, []).append(v)
    for k, vs in results.items():
        print(f"  {k:<48} {statistics.median(vs):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
