"""Many processes on the same files of one real mount, at once.

* appenders: one per file F<i>, appending fixed-size records with O_APPEND
  (fsync now and then); at the end each F<i> must hold exactly the records
  its appender says it wrote -- no lost update, whatever else happened;
* cloners: clone the same block ranges of F<i> into the same target T<i>
  concurrently, and whole F<i> (with its partial last block, which the
  appender then CoWs) into files of their own, which they check;
* dedupers: dedupe the same ranges between F<i> and T<i> in both
  directions -- into F<i> while its appender writes to it;
* churners: hard links to F<i> made and removed, renames over one shared
  name, mkdir/rmdir of one shared name, xattrs on F<i>, truncates;
* readers: read F<i> and T<i> (read(2) and mmap) and list a 300-entry
  directory while all that happens; every byte read must be the record
  stream's, every name must be listed.

Kernel FUSE, not daxfs: while a file is appended to through FUSE (no
writeback cache), another process's view of its size can step back for a
moment (a read reply racing the append shrinks i_size), so an mmap of the
whole file may SIGBUS on its last page and a size taken from fstat may be
too big a moment later.  Measured on the pyfuse3 passthrough peer
(scripts/peers/passthrough.py) as well, more often than on daxfs.  The
readers therefore map F<i> only up to 64 KiB below the size they saw, and
dedupers stay as far below it.

Every process has a time limit (a hang is a deadlock: the FUSE connection
is aborted and the test fails); the daemon's log must be clean and
`daxfs check` must pass after unmount, and the contents survive a remount.

This file is also the workers' program: ``python test_concurrency.py ROLE ...``.
"""

import errno
import mmap
import os
import random
import subprocess
import sys
import time

NFILES = 3
REC = 100
BS = 4096
RUN_SECONDS = 12
PROC_TIMEOUT = 90          # a worker still running after this is deadlocked
MANY = 300
MARGIN = 64 * 1024         # see "Kernel FUSE, not daxfs" above


def record(i: int, seq: int) -> bytes:
    head = f"F{i}:{seq:08d}:".encode()
    return head + (b"abcdefghijklmnopqrstuvwxyz" * 4)[:REC - len(head) - 1] + b"\n"


def expected(i: int, nbytes: int) -> bytes:
    n = -(-nbytes // REC)
    return b"".join(record(i, s) for s in range(n))[:nbytes]


def prefix_problem(i: int, data: bytes) -> str | None:
    want = expected(i, len(data))
    if data == want:
        return None
    bad = next(k for k in range(len(data)) if data[k] != want[k])
    return (f"byte {bad} of {len(data)} is {data[bad:bad + 16]!r},"
            f" expected {want[bad:bad + 16]!r}")


# ---------------------------------------------------------------- workers

class Worker:
    OK_ERRNOS = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY}

    def __init__(self, mnt: str, wid: int):
        self.mnt, self.wid = mnt, wid
        self.rnd = random.Random(wid)
        self.deadline = time.monotonic() + RUN_SECONDS
        self.ops = 0

    def p(self, *parts) -> str:
        return os.path.join(self.mnt, *parts)

    def fail(self, what: str):
        print(f"worker {self.wid}: {what}", file=sys.stderr, flush=True)
        sys.exit(1)

    def loop(self, step):
        while time.monotonic() < self.deadline:
            try:
                step()
            except OSError as e:
                if e.errno not in self.OK_ERRNOS:
                    self.fail(f"{step.__name__}: {e!r}")
            self.ops += 1
        print(self.ops, flush=True)


def appender(w: Worker, i: int):
    fd = os.open(w.p(f"F{i}"), os.O_WRONLY | os.O_APPEND)
    first = seq = os.fstat(fd).st_size // REC
    while time.monotonic() < w.deadline:
        n = os.write(fd, record(i, seq))
        if n != REC:
            w.fail(f"short append: {n}")
        seq += 1
        if seq % 200 == 0:
            os.fsync(fd)
    os.close(fd)
    print(seq - first, flush=True)


def cloner(w: Worker):
    from daxfs.control import client as rc
    mine = w.p("own", f"c{w.wid}")

    def clone_step():
        i = w.rnd.randrange(NFILES)
        src = os.open(w.p(f"F{i}"), os.O_RDONLY)
        try:
            if w.rnd.random() < 0.6:
                # the same block range into the same target as the others
                k = os.fstat(src).st_size // BS * BS
                k = min(k, w.rnd.choice([BS, 4 * BS, k]))
                if k:
                    dst = os.open(w.p(f"T{i}"), os.O_RDWR)
                    try:
                        rc.clone(src, dst, 0, 0, k)
                    finally:
                        os.close(dst)
            else:
                # the whole file, partial last block included
                dst = os.open(mine, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    rc.clone(src, dst)
                    data = os.pread(dst, os.fstat(dst).st_size, 0)
                finally:
                    os.close(dst)
                prob = prefix_problem(i, data)
                if prob:
                    w.fail(f"clone of F{i}: {prob}")
        finally:
            os.close(src)
    w.loop(clone_step)


def deduper(w: Worker):
    from daxfs.control import client as rc

    def dedupe_step():
        i = w.rnd.randrange(NFILES)
        f = os.open(w.p(f"F{i}"), os.O_RDWR)
        t = os.open(w.p(f"T{i}"), os.O_RDWR)
        try:
            k = min(os.fstat(f).st_size - MARGIN, os.fstat(t).st_size) // BS * BS
            if k <= 0:
                return
            k = w.rnd.choice([BS, k])
            src, dst = (t, f) if w.rnd.random() < 0.5 else (f, t)
            res = rc.dedupe(src, 0, k, [(dst, 0)])[0]
            if res.status != 0 or res.bytes_deduped != k:
                w.fail(f"dedupe of equal ranges F{i}/T{i} 0+{k}: {res}")
        finally:
            os.close(f)
            os.close(t)
    w.loop(dedupe_step)


def churner(w: Worker):
    n = [0]

    def churn_step():
        n[0] += 1
        i = w.rnd.randrange(NFILES)
        r = w.rnd.random()
        if r < 0.25:
            link = w.p("shared", f"h{w.wid}-{n[0]}")
            os.link(w.p(f"F{i}"), link)
            with open(link, "rb") as fh:
                prob = prefix_problem(i, fh.read(REC * 10))
            if prob:
                w.fail(f"hard link of F{i}: {prob}")
            os.unlink(link)
        elif r < 0.5:
            tmp = w.p("shared", f"tmp{w.wid}")
            tag = f"<{w.wid}:{n[0]:06d}>".encode()
            with open(tmp, "wb") as fh:
                fh.write(tag * w.rnd.randrange(1, 500))
            os.rename(tmp, w.p("shared", "common"))
            with open(w.p("shared", "common"), "rb") as fh:
                data = fh.read()
            if not data or data != data[:len(tag)] * (len(data) // len(tag)):
                w.fail("the file renamed over 'common' is torn")
        elif r < 0.7:
            d = w.p("shared", "dd")
            if w.rnd.random() < 0.5:
                os.mkdir(d)
            else:
                os.rmdir(d)
        elif r < 0.9:
            value = os.urandom(w.rnd.choice([16, 500, 3000]))
            name = f"user.c{w.wid}"
            os.setxattr(w.p(f"F{i}"), name, value)
            if os.getxattr(w.p(f"F{i}"), name) != value:
                w.fail(f"xattr {name} of F{i} reads back wrong")
        else:
            s = w.p("own", f"s{w.wid}")
            with open(s, "ab") as fh:
                fh.write(os.urandom(w.rnd.randrange(1, 20000)))
            os.truncate(s, w.rnd.randrange(0, 30000))
    w.loop(churn_step)


def reader(w: Worker):
    want_many = {f"n{k:04d}-{'x' * (k % 40)}" for k in range(MANY)}

    def read_step():
        i = w.rnd.randrange(NFILES)
        r = w.rnd.random()
        if r < 0.4:
            with open(w.p(f"F{i}"), "rb") as fh:
                data = fh.read()
            what = f"F{i}"
        elif r < 0.6:
            with open(w.p(f"T{i}"), "rb") as fh:
                data = fh.read()
            what = f"T{i}"
        elif r < 0.8:
            fd = os.open(w.p(f"F{i}"), os.O_RDONLY)
            try:
                size = (os.fstat(fd).st_size - MARGIN) // BS * BS
                if size <= 0:
                    return
                with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as mm:
                    data = mm[:]
            finally:
                os.close(fd)
            what = f"F{i} (mmap)"
        else:
            names = set(os.listdir(w.p("many")))
            if names != want_many:
                w.fail(f"listing of 'many': {len(names)} names, missing"
                       f" {sorted(want_many - names)[:5]}, extra {sorted(names - want_many)[:5]}")
            return
        prob = prefix_problem(i, data)
        if prob:
            w.fail(f"{what}: {prob}")
    w.loop(read_step)


def worker_main(argv):
    role, mnt, wid = argv[0], argv[1], int(argv[2])
    w = Worker(mnt, wid)
    if role == "appender":
        appender(w, int(argv[3]))
    else:
        {"cloner": cloner, "deduper": deduper, "churner": churner, "reader": reader}[role](w)


# ---------------------------------------------------------------- the test

if __name__ != "__main__":
    import pytest

    from conftest import ROOT, check_image, make_image, mount_image
    from daxfs import host

    @pytest.mark.timeout(240)
    def test_many_processes_on_the_same_files(tmp_path, mnt):
        image = make_image(tmp_path / "conc.img")
        log = tmp_path / "daemon.log"
        with mount_image(image, mnt, log=log) as m:
            for i in range(NFILES):
                (m / f"F{i}").write_bytes(b"".join(record(i, s) for s in range(50)))
                (m / f"T{i}").write_bytes(b"")
            for d in ("own", "shared", "many"):
                (m / d).mkdir()
            for k in range(MANY):
                (m / "many" / f"n{k:04d}-{'x' * (k % 40)}").write_bytes(b"")

            env = dict(os.environ, PYTHONPATH=str(ROOT))
            roles = ([("appender", i) for i in range(NFILES)]
                     + [("cloner",), ("cloner",), ("deduper",), ("deduper",),
                        ("churner",), ("churner",), ("reader",), ("reader",)])
            procs = []
            for wid, (role, *extra) in enumerate(roles):
                procs.append((role, extra, subprocess.Popen(
                    [sys.executable, __file__, role, str(m), str(wid), *map(str, extra)],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                    cwd="/")))
            results, problems = {}, []
            deadline = time.monotonic() + PROC_TIMEOUT
            for wid, (role, extra, p) in enumerate(procs):
                try:
                    out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    problems.append(f"{role}{extra} still running after {PROC_TIMEOUT} s:"
                                    " deadlock")
                    continue
                if p.returncode != 0:
                    problems.append(f"{role}{extra} exit {p.returncode}: {err.strip()[-2000:]}")
                else:
                    results[(role, *extra) if extra else (role, wid)] = int(out.split()[-1])
            if len(problems) and any("deadlock" in x for x in problems):
                host.abort_connection(host.fuse_connection(m))
            for _, _, p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=30)
            assert not problems, "\n".join(problems)

            for key, n in results.items():
                assert n > 20, f"{key} did almost nothing: {results}"
            print("operations per worker:", results)
            counts = [50 + results[("appender", i)] for i in range(NFILES)]
            for i, n in enumerate(counts):
                data = (m / f"F{i}").read_bytes()
                assert len(data) == n * REC, f"F{i}: {len(data)} bytes, {n} records appended"
                assert prefix_problem(i, data) is None, prefix_problem(i, data)
                assert prefix_problem(i, (m / f"T{i}").read_bytes()) is None
        check_image(image)
        with mount_image(image, mnt, log=log) as m:
            for i, n in enumerate(counts):
                data = (m / f"F{i}").read_bytes()
                assert len(data) == n * REC and prefix_problem(i, data) is None
        check_image(image)

else:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    worker_main(sys.argv[1:])
