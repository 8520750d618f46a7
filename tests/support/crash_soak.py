#!/usr/bin/env python3
"""Crash soak: kill a daxfs daemon at random moments under a mixed workload,
again and again, and prove after every crash that nothing fsync'd was lost.

tests/test_soak.py runs it short; run it long by hand with scripts/crash_soak.py.

usage: scripts/crash_soak.py [--iterations N] [--seed S] [--power-loss-every K]
                             [--workers W] [--size 128M] [--workdir DIR] [--keep] [-v]

One iteration (a "crash point"):

1. The image is made available: a real ``daxfs mount`` (mount iterations), or,
   every K-th iteration, the engine opened in this process (power-loss
   iterations, see below).
2. What the previous crashes left is verified (see "What is checked").
3. The workload starts: W worker processes on the mount (or W simulated
   workers interleaved in one child process on the engine), plus a cleaner
   that deletes the directories of older iterations.
4. After a random delay the daemon is killed with SIGKILL (mount) or the
   child is (power loss: the child maps the image ``private=True``, so only
   what it flushed reaches the file -- everything else is lost, as in a
   power cut).  The dead mount is taken down (fusermount3 -u, umount -l,
   abort through /sys/fs/fuse/connections if needed).
5. ``daxfs check`` (its function, in this process) must find the image clean.

The workload (class Worker) mixes writes, fsync, rename over an existing
file, mkdir/rmdir, truncate, unlink, hard links, xattrs, clones and dedupes
(through daxfs.control.client on a mount, the engine API otherwise), CoW
writes into cloned files, and scratch files whose contents the worker
checks against an in-memory model while it runs (a clone followed by a
write into either file must leave the other untouched).

Tracked files are named ``<kind><n>-<key>``; their contents are always a
prefix of a deterministic byte stream of that key (`stream`): they are only
ever appended to, truncated (never below the size last fsync'd), cloned
(whole, or block ranges into other files of the same key at the same
offsets), deduped against files of the same key, or overwritten with the
bytes they already hold (a CoW write when the block is shared).  After each
successful fsync the worker logs ``path size sha256`` for every name of the
file to its log (outside the mount), so the check after a crash is exact.

What is checked after every crash
---------------------------------
* ``daxfs check`` is clean and the image mounts;
* every path with a ``path size sha256`` record exists (unless the worker
  logged that it was going to unlink it) and its first `size` bytes have
  exactly that sha256;
* every tracked file's bytes beyond that are the stream's bytes or zeros
  (zeros: an un-fsync'd truncate may have zeroed the tail of a partial block
  before the crash undid the size change) -- never stale or foreign data;
* a file renamed over another is the old or the new one, never missing;
* an xattr holds its fsync'd value or one set after it;
* every file in the tree reads without error;
* during the run: the workers' in-memory checks, no unexpected errno
  before the kill, no traceback or ERROR in the daemon's log.

The summary gives the iterations, the crash points survived and every
failure; the exit status is 1 if anything failed.  A failed image is kept
under WORKDIR/failures/ and the soak goes on with a fresh image.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import hashlib
import os
import random
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

BS = 4096
DEAD = (errno.ENOTCONN, errno.ECONNABORTED)   # what a killed daemon's mount answers
XATTR = "user.soak"
FILE_CAP = 384 * 1024        # tracked files stop growing here
MAX_INODES = 12              # tracked files per worker
MAX_SCRATCH = 16
WORKER_MAX_SECONDS = 60      # a worker the controller forgot ends by itself
KEEP_ITERATIONS = 2          # directories of this many past iterations are re-verified


# ---------------------------------------------------------------- contents

@functools.lru_cache(maxsize=4096)
def _chunk(key: str, k: int) -> bytes:
    return random.Random(f"{key}/{k}").randbytes(BS)


def stream(key: str, off: int, n: int) -> bytes:
    """Bytes [off, off+n) of the deterministic stream of `key`."""
    if n <= 0:
        return b""
    k0, k1 = off // BS, (off + n - 1) // BS
    buf = b"".join(_chunk(key, k) for k in range(k0, k1 + 1))
    s = off - k0 * BS
    return buf[s:s + n]


def sha(data) -> str:
    return hashlib.sha256(data).hexdigest()


def key_of(name: str) -> str | None:
    """The stream key of a tracked file's name (`a3-7.1.3` -> `7.1.3`)."""
    return name.split("-", 1)[1] if "-" in name else None


def stream_problem(key: str, data: bytes, exact_upto: int) -> str | None:
    """None if `data` is the stream of `key`, except that bytes at or beyond
    `exact_upto` may also be zero; else a description of the first bad byte."""
    expect = stream(key, 0, len(data))
    if data == expect:
        return None
    import numpy as np
    a = np.frombuffer(data, np.uint8)
    b = np.frombuffer(expect, np.uint8)
    bad = a != b
    bad[exact_upto:] &= a[exact_upto:] != 0
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    return (f"byte {i} of {len(data)} is {a[i]:#04x}, the stream has {b[i]:#04x}"
            f" ({int(bad.sum())} bad bytes)")


# ---------------------------------------------------------------- backends

class Dead(Exception):
    """The mount's daemon is gone: the worker stops."""


def _posix(method):
    @functools.wraps(method)
    def run(self, *args):
        try:
            return method(self, *args)
        except OSError as e:
            if e.errno in DEAD:
                raise Dead(str(e)) from None
            raise
    return run


class PosixOps:
    """The workload's operations through a mounted daxfs (paths relative to
    the mount's root)."""

    def __init__(self, root: str):
        self.root = root

    def p(self, path: str) -> str:
        return os.path.join(self.root, path)

    @_posix
    def mkdir(self, path):
        os.mkdir(self.p(path), 0o755)

    @_posix
    def create(self, path):
        os.close(os.open(self.p(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))

    @_posix
    def pwrite(self, path, off, data) -> int:
        fd = os.open(self.p(path), os.O_WRONLY)
        try:
            return os.pwrite(fd, data, off)
        finally:
            os.close(fd)

    @_posix
    def read(self, path) -> bytes:
        with open(self.p(path), "rb") as f:
            return f.read()

    @_posix
    def size(self, path) -> int:
        return os.stat(self.p(path)).st_size

    @_posix
    def fsync(self, path):
        fd = os.open(self.p(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @_posix
    def fsync_dir(self, path):
        fd = os.open(self.p(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @_posix
    def rename(self, a, b):
        os.rename(self.p(a), self.p(b))

    @_posix
    def link(self, a, b):
        os.link(self.p(a), self.p(b))

    @_posix
    def unlink(self, path):
        os.unlink(self.p(path))

    @_posix
    def rmdir(self, path):
        os.rmdir(self.p(path))

    @_posix
    def truncate(self, path, n):
        os.truncate(self.p(path), n)

    @_posix
    def setxattr(self, path, name, value):
        os.setxattr(self.p(path), name, value)

    @_posix
    def getxattr(self, path, name) -> bytes | None:
        try:
            return os.getxattr(self.p(path), name)
        except OSError as e:
            if e.errno == errno.ENODATA:
                return None
            raise

    @_posix
    def removexattr(self, path, name):
        os.removexattr(self.p(path), name)

    @_posix
    def clone(self, src, dst, soff, doff, n):
        from daxfs.control.client import clone
        sfd = os.open(self.p(src), os.O_RDONLY)
        try:
            dfd = os.open(self.p(dst), os.O_RDWR)
            try:
                clone(sfd, dfd, soff, doff, n)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    @_posix
    def dedupe(self, src, soff, n, dst, doff):
        from daxfs.control.client import dedupe
        sfd = os.open(self.p(src), os.O_RDONLY)
        try:
            dfd = os.open(self.p(dst), os.O_RDWR)
            try:
                return dedupe(sfd, soff, n, [(dfd, doff)])[0]
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    @_posix
    def listdir(self, path) -> list[str]:
        return os.listdir(self.p(path))

    @_posix
    def isdir(self, path) -> bool:
        return stat.S_ISDIR(os.lstat(self.p(path)).st_mode)

    @_posix
    def exists(self, path) -> bool:
        try:
            os.lstat(self.p(path))
            return True
        except FileNotFoundError:
            return False

    def tick(self):
        """The daemon commits on its own timer."""


def _engine(method):
    @functools.wraps(method)
    def run(self, *args):
        from daxfs.engine.errors import DaxfsError
        try:
            return method(self, *args)
        except DaxfsError as e:
            raise OSError(e.errno, f"{method.__name__}{args[:2]}: {e}") from None
    return run


class EngineOps:
    """The same operations on the filesystem API (daxfs.engine.fs.Filesystem),
    for power-loss runs and for verifying without a mount.  Unlinked inodes
    are forgotten at once (nothing holds them open)."""

    def __init__(self, fs):
        self.fs = fs

    def _ino(self, path: str) -> int:
        ino = 1
        for part in filter(None, path.split("/")):
            ino = self.fs.lookup(ino, part.encode()).ino
        return ino

    def _parent(self, path: str):
        d, _, name = path.rpartition("/")
        return self._ino(d), name.encode()

    @_engine
    def mkdir(self, path):
        parent, name = self._parent(path)
        self.fs.mkdir(parent, name, 0o755, 0, 0)

    @_engine
    def create(self, path):
        parent, name = self._parent(path)
        self.fs.mknod(parent, name, stat.S_IFREG | 0o644, 0, 0)

    @_engine
    def pwrite(self, path, off, data) -> int:
        return self.fs.write(self._ino(path), off, data)

    @_engine
    def read(self, path) -> bytes:
        ino = self._ino(path)
        return self.fs.read(ino, 0, self.fs.getattr(ino).size)

    @_engine
    def size(self, path) -> int:
        return self.fs.getattr(self._ino(path)).size

    @_engine
    def fsync(self, path):
        self.fs.fsync(self._ino(path))

    fsync_dir = fsync

    def _forget(self, ino):
        self.fs.forget(ino)

    @_engine
    def rename(self, a, b):
        pa, na = self._parent(a)
        pb, nb = self._parent(b)
        try:
            old = self.fs.lookup(pb, nb).ino
        except Exception:
            old = None
        self.fs.rename(pa, na, pb, nb)
        if old is not None:
            self._forget(old)

    @_engine
    def link(self, a, b):
        pb, nb = self._parent(b)
        self.fs.link(self._ino(a), pb, nb)

    @_engine
    def unlink(self, path):
        parent, name = self._parent(path)
        ino = self.fs.lookup(parent, name).ino
        self.fs.unlink(parent, name)
        self._forget(ino)

    @_engine
    def rmdir(self, path):
        parent, name = self._parent(path)
        ino = self.fs.lookup(parent, name).ino
        self.fs.rmdir(parent, name)
        self._forget(ino)

    @_engine
    def truncate(self, path, n):
        self.fs.setattr(self._ino(path), size=n)

    @_engine
    def setxattr(self, path, name, value):
        self.fs.setxattr(self._ino(path), name.encode(), value)

    @_engine
    def getxattr(self, path, name):
        from daxfs.engine.errors import DaxfsError
        try:
            return self.fs.getxattr(self._ino(path), name.encode())
        except DaxfsError as e:
            if e.errno == errno.ENODATA:
                return None
            raise

    @_engine
    def removexattr(self, path, name):
        self.fs.removexattr(self._ino(path), name.encode())

    @_engine
    def clone(self, src, dst, soff, doff, n):
        self.fs.clone_range(self._ino(src), soff, self._ino(dst), doff, n)

    @_engine
    def dedupe(self, src, soff, n, dst, doff):
        return self.fs.dedupe_range(self._ino(src), soff, n, [(self._ino(dst), doff)])[0]

    @_engine
    def listdir(self, path):
        return [e.name.decode() for e in self.fs.readdir(self._ino(path))
                if e.name not in (b".", b"..")]

    @_engine
    def isdir(self, path):
        return stat.S_ISDIR(self.fs.getattr(self._ino(path)).mode)

    def exists(self, path):
        try:
            self._ino(path)
            return True
        except Exception:
            return False

    def tick(self):
        self.fs.commit()


# ---------------------------------------------------------------- workload

class Tracked:
    """A tracked inode: its bytes are stream(key)[:size]; floor is the size
    last fsync'd (it is never truncated below that)."""

    __slots__ = ("key", "size", "floor", "names", "xattr")

    def __init__(self, key, names, size=0):
        self.key, self.names, self.size = key, list(names), size
        self.floor = 0
        self.xattr = None


class Skip(Exception):
    """An operation had nothing to work on."""


class Worker:
    """One worker of one iteration: owns the directory i<it>/w<wid>, may
    read and clone from its peers' tracked files."""

    OPS = {"new": 3, "append": 20, "fsync": 10, "clone": 5, "copy": 2,
           "clone_range": 4, "dedupe": 4, "cow": 5, "truncate": 3, "link": 2,
           "unlink": 2, "xattr": 3, "slot": 6, "xwrite": 8, "xtrunc": 3,
           "xclone": 4, "xcheck": 2, "xunlink": 3, "xdir": 3, "xxattr": 3}

    def __init__(self, ops, it: int, wid: int, nworkers: int, rnd: random.Random,
                 log_path: str):
        self.ops, self.it, self.wid, self.nworkers, self.rnd = ops, it, wid, nworkers, rnd
        self.dir = f"i{it}/w{wid}"
        self.log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.n = 0
        self.inodes: list[Tracked] = []
        self.slots: dict[str, str | None] = {}
        self.scratch: dict[str, bytearray] = {}
        self.sdirs: list[str] = []
        self.full = 0
        self.steps = 0
        self._names, self._weights = zip(*self.OPS.items())

    # -- plumbing
    def log(self, line: str) -> None:
        os.write(self.log_fd, (line + "\n").encode())

    def fail(self, what: str) -> None:
        self.log(f"!FAIL {time.monotonic():.6f} {what}")

    def next_name(self, prefix: str, key: str | None = None) -> str:
        self.n += 1
        return f"{self.dir}/{prefix}{self.n}" + (f"-{key}" if key else "")

    def setup(self) -> None:
        for d in (f"i{self.it}", self.dir):
            try:
                self.ops.mkdir(d)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise

    def step(self) -> None:
        self.steps += 1
        if self.steps % 25 == 0:
            self.log(f"!N {self.steps}")
        if self.full:
            self.full -= 1
            op = self.rnd.choice(["unlink", "xunlink", "truncate", "xtrunc", "fsync"])
        else:
            op = self.rnd.choices(self._names, self._weights)[0]
        try:
            getattr(self, "op_" + op)()
        except Skip:
            pass
        except OSError as e:
            if e.errno == errno.ENOSPC:
                self.full = 10
            else:
                self.log(f"!ERR {time.monotonic():.6f} {op} {errno.errorcode.get(e.errno, e.errno)}"
                         f" {e}".replace("\n", " "))

    def pick(self, cond=None) -> Tracked:
        cands = [t for t in self.inodes if cond is None or cond(t)]
        if not cands:
            raise Skip
        return self.rnd.choice(cands)

    def write_all(self, path, off, data) -> int:
        done = 0
        while done < len(data):
            n = self.ops.pwrite(path, off + done, data[done:done + 65536])
            if n <= 0:
                break
            done += n
        return done

    def check_tracked(self, t: Tracked, why: str) -> None:
        data = self.ops.read(t.names[0])
        if len(data) != t.size or data != stream(t.key, 0, t.size):
            prob = stream_problem(t.key, data, len(data)) if len(data) == t.size else \
                f"size {len(data)}, expected {t.size}"
            self.fail(f"{why}: {t.names[0]}: {prob}")

    # -- tracked files
    def op_new(self):
        if len(self.inodes) >= MAX_INODES:
            return self.op_unlink()
        self.n += 1
        key = f"{self.it}.{self.wid}.{self.n}"
        path = f"{self.dir}/a{self.n}-{key}"
        self.ops.create(path)
        t = Tracked(key, [path])
        self.inodes.append(t)
        self._append(t)

    def _append(self, t: Tracked) -> None:
        n = self.rnd.choice([1, 100, 4096, 5000, 20000, self.rnd.randrange(1, 70000)])
        t.size += self.ops.pwrite(t.names[0], t.size, stream(t.key, t.size, n))

    def op_append(self):
        t = self.pick(lambda t: t.size < FILE_CAP) if self.inodes else None
        if t is None:
            return self.op_new()
        self._append(t)

    def op_fsync(self):
        t = self.pick()
        self.ops.fsync(self.rnd.choice(t.names))
        if self.rnd.random() < 0.3:
            self.check_tracked(t, "after fsync")
        digest = sha(stream(t.key, 0, t.size))
        for p in t.names:
            self.log(f"{p} {t.size} {digest}")
            if t.xattr:
                self.log(f"!X {p} {t.xattr}")
        t.floor = t.size

    def _peer_source(self) -> tuple[str, str]:
        peers = [w for w in range(self.nworkers) if w != self.wid]
        if not peers:
            raise Skip
        d = f"i{self.it}/w{self.rnd.choice(peers)}"
        try:
            names = [n for n in self.ops.listdir(d) if "-" in n]
        except FileNotFoundError:
            raise Skip from None
        if not names:
            raise Skip
        name = self.rnd.choice(names)
        return f"{d}/{name}", key_of(name)

    def op_clone(self):
        """Clone a whole tracked file (own or a peer's) into a new file; the
        new file continues the source's stream."""
        if len(self.inodes) >= MAX_INODES:
            return self.op_unlink()
        if self.rnd.random() < 0.5:
            src, key = self._peer_source()
        else:
            t = self.pick()
            src, key = t.names[0], t.key
        dst = self.next_name("c", key)
        self.ops.create(dst)
        t = Tracked(key, [dst])
        self.inodes.append(t)
        try:
            self.ops.clone(src, dst, 0, 0, 0)
        except FileNotFoundError:
            raise Skip from None      # a peer unlinked it
        t.size = self.ops.size(dst)
        self.check_tracked(t, f"clone of {src}")

    def op_copy(self):
        if len(self.inodes) >= MAX_INODES:
            return self.op_unlink()
        src = self.pick(lambda t: t.size > 0)
        dst = self.next_name("d", src.key)
        self.ops.create(dst)
        t = Tracked(src.key, [dst])
        self.inodes.append(t)
        t.size = self.write_all(dst, 0, stream(src.key, 0, src.size))

    def _pair(self) -> tuple[Tracked, Tracked]:
        by_key: dict[str, list[Tracked]] = {}
        for t in self.inodes:
            by_key.setdefault(t.key, []).append(t)
        groups = [g for g in by_key.values() if len(g) > 1]
        if not groups:
            raise Skip
        a, b = self.rnd.sample(self.rnd.choice(groups), 2)
        return a, b

    def _range(self, a: Tracked, b: Tracked) -> tuple[int, int]:
        """A block-aligned range inside both files (to EOF if they end
        together)."""
        if a.size == b.size and a.size and self.rnd.random() < 0.3:
            off = self.rnd.randrange(0, -(-a.size // BS)) * BS
            return off, a.size - off
        m = min(a.size, b.size) // BS
        if m == 0:
            raise Skip
        s = self.rnd.randrange(m)
        return s * BS, self.rnd.randint(1, m - s) * BS

    def op_clone_range(self):
        a, b = self._pair()
        off, n = self._range(a, b)
        self.ops.clone(a.names[0], b.names[0], off, off, n if off + n < a.size else 0)
        if self.rnd.random() < 0.5:
            self.check_tracked(b, f"clone_range {off}+{n} from {a.names[0]}")

    def op_dedupe(self):
        a, b = self._pair()
        off, n = self._range(a, b)
        res = self.ops.dedupe(a.names[0], off, n, b.names[0], off)
        if res.status == -errno.ENOSPC:
            raise OSError(errno.ENOSPC, "dedupe")
        if res.status != 0 or res.bytes_deduped != n:
            self.fail(f"dedupe {a.names[0]} -> {b.names[0]} {off}+{n} of equal bytes: {res}")

    def op_cow(self):
        """Overwrite a range with the bytes it holds: a CoW write when the
        blocks are shared, a no-op otherwise, and the stream stays intact."""
        t = self.pick(lambda t: t.size > 0)
        off = self.rnd.randrange(t.size)
        n = min(self.rnd.choice([1, 4096, 9000, self.rnd.randrange(1, 40000)]), t.size - off)
        self.ops.pwrite(t.names[0], off, stream(t.key, off, n))
        if self.rnd.random() < 0.3:
            self.check_tracked(t, f"cow write {off}+{n}")

    def op_truncate(self):
        t = self.pick(lambda t: t.size > t.floor)
        new = self.rnd.randint(t.floor, t.size)
        self.ops.truncate(t.names[0], new)
        t.size = new

    def op_link(self):
        t = self.pick()
        if len(t.names) >= 3:
            raise Skip
        path = self.next_name("h", t.key)
        self.ops.link(t.names[0], path)
        t.names.append(path)

    def op_unlink(self):
        t = self.pick()
        path = self.rnd.choice(t.names)
        self.log(f"!U {path}")
        self.ops.unlink(path)
        t.names.remove(path)
        if not t.names:
            self.inodes.remove(t)

    def op_xattr(self):
        t = self.pick()
        value = self.rnd.randbytes(self.rnd.choice([10, 300, 3000, 20000]))
        h = sha(value)
        for p in t.names:
            self.log(f"!XS {p} {h}")
        self.ops.setxattr(t.names[0], XATTR, value)
        t.xattr = h
        if self.rnd.random() < 0.3:
            got = self.ops.getxattr(self.rnd.choice(t.names), XATTR)
            if got != value:
                self.fail(f"xattr of {t.names[0]} reads back wrong")

    def op_slot(self):
        """Write a new file, fsync it, rename it over a slot."""
        slot = f"{self.dir}/slot{self.rnd.randrange(3)}"
        tmp = self.next_name("tmp")
        data = self.rnd.randbytes(self.rnd.randrange(1, 40000))
        self.ops.create(tmp)
        if self.write_all(tmp, 0, data) != len(data):
            self.ops.unlink(tmp)
            raise OSError(errno.ENOSPC, "short write")
        self.ops.fsync(tmp)
        new = sha(data)
        self.log(f"!P {slot} {self.slots.get(slot)} {new}")
        self.ops.rename(tmp, slot)
        self.slots[slot] = new
        if self.rnd.random() < 0.7:
            self.ops.fsync_dir(self.dir)
            self.log(f"!R {slot} {new}")
        if self.rnd.random() < 0.2 and self.ops.read(slot) != data:
            self.fail(f"{slot} does not hold what was renamed over it")

    # -- scratch files (checked against a model while the worker runs)
    def _scratch(self, new_ok=True) -> str:
        if (new_ok and (not self.scratch or self.rnd.random() < 0.2)
                and len(self.scratch) < MAX_SCRATCH):
            d = self.rnd.choice([self.dir] + self.sdirs)
            path = self.next_name("x").replace(self.dir, d, 1)
            self.ops.create(path)
            self.scratch[path] = bytearray()
            return path
        if not self.scratch:
            raise Skip
        return self.rnd.choice(sorted(self.scratch))

    def _xcheck(self, path, why) -> None:
        got = self.ops.read(path)
        want = bytes(self.scratch[path])
        if got != want:
            first = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]),
                         min(len(got), len(want)))
            self.fail(f"{why}: {path}: {len(got)} bytes, expected {len(want)};"
                      f" first difference at {first}")

    @staticmethod
    def _model_write(model: bytearray, off: int, data: bytes) -> None:
        if off > len(model):
            model.extend(bytes(off - len(model)))
        model[off:off + len(data)] = data

    def op_xwrite(self):
        path = self._scratch()
        off = self.rnd.randrange(0, 65536)
        data = self.rnd.randbytes(self.rnd.randrange(1, 20000))
        n = self.ops.pwrite(path, off, data)
        if n:
            self._model_write(self.scratch[path], off, data[:n])

    def op_xtrunc(self):
        path = self._scratch(False)
        new = self.rnd.randrange(0, 90000)
        self.ops.truncate(path, new)
        m = self.scratch[path]
        if new < len(m):
            del m[new:]
        else:
            m.extend(bytes(new - len(m)))

    def op_xclone(self):
        """Clone a scratch file, then change one side (CoW): the other must
        not see it."""
        src = self._scratch(False)
        if not self.scratch[src] or len(self.scratch) >= MAX_SCRATCH:
            raise Skip
        dst = self.next_name("x")
        self.ops.create(dst)
        self.scratch[dst] = bytearray()
        self.ops.clone(src, dst, 0, 0, 0)
        self.scratch[dst] = bytearray(self.scratch[src])
        victim = self.rnd.choice([src, dst])
        r = self.rnd.random()
        m = self.scratch[victim]
        if r < 0.7:
            off = self.rnd.randrange(0, len(m) + 100)
            data = self.rnd.randbytes(self.rnd.randrange(1, 12000))
            n = self.ops.pwrite(victim, off, data)
            self._model_write(m, off, data[:n])
        elif len(m):
            new = self.rnd.randrange(0, len(m))
            self.ops.truncate(victim, new)
            del m[new:]
        self._xcheck(src, f"clone source after changing {victim}")
        self._xcheck(dst, f"clone after changing {victim}")

    def op_xcheck(self):
        self._xcheck(self._scratch(False), "scratch read-back")

    def op_xunlink(self):
        path = self._scratch(False)
        self.ops.unlink(path)
        del self.scratch[path]

    def op_xdir(self):
        if self.sdirs and self.rnd.random() < 0.5:
            d = self.rnd.choice(self.sdirs)
            for path in [p for p in self.scratch if p.startswith(d + "/")]:
                self.ops.unlink(path)
                del self.scratch[path]
            self.ops.rmdir(d)
            self.sdirs.remove(d)
            return
        if len(self.sdirs) >= 4:
            raise Skip
        d = self.next_name("sd")
        self.ops.mkdir(d)
        self.sdirs.append(d)
        if self.scratch and self.rnd.random() < 0.5:
            src = self.rnd.choice(sorted(self.scratch))
            dst = f"{d}/{src.rsplit('/', 1)[1]}"
            self.ops.rename(src, dst)
            self.scratch[dst] = self.scratch.pop(src)

    def op_xxattr(self):
        path = self._scratch(False)
        if self.rnd.random() < 0.3:
            try:
                self.ops.removexattr(path, XATTR)
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
            return
        value = self.rnd.randbytes(self.rnd.choice([1, 200, 5000, 30000]))
        self.ops.setxattr(path, XATTR, value)
        if self.ops.getxattr(path, XATTR) != value:
            self.fail(f"xattr of {path} reads back wrong")


def remove_tree(ops, path):
    """Delete a directory tree one entry per step (a generator)."""
    try:
        names = ops.listdir(path)
    except FileNotFoundError:
        return
    for name in names:
        p = f"{path}/{name}"
        try:
            if ops.isdir(p):
                yield from remove_tree(ops, p)
                continue
            ops.unlink(p)
        except FileNotFoundError:
            pass
        yield
    try:
        ops.rmdir(path)
    except FileNotFoundError:
        pass
    yield


# ---------------------------------------------------------------- children

def worker_main(args) -> int:
    """One worker process on a mount."""
    rnd = random.Random(f"{args.seed}/{args.iteration}/{args.wid}")
    w = Worker(PosixOps(args.mnt), args.iteration, args.wid, args.workers, rnd, args.log)
    deadline = time.monotonic() + WORKER_MAX_SECONDS
    try:
        w.setup()
        while time.monotonic() < deadline:
            w.step()
    except Dead:
        return 0
    return 0


def cleaner_main(args) -> int:
    """Delete older iterations' directories on a mount."""
    ops = PosixOps(args.mnt)
    try:
        for d in args.clean:
            for _ in remove_tree(ops, d):
                pass
    except Dead:
        pass
    return 0


def engine_child_main(args) -> int:
    """A power-loss run: the engine on a MAP_PRIVATE mapping, the workers
    interleaved, a commit now and then (the daemon's timer); killed by the
    controller."""
    from daxfs.engine.fs import Filesystem
    rnd = random.Random(f"{args.seed}/{args.iteration}/engine")
    print("opening", flush=True)
    fs = Filesystem.open(args.image, private=True)
    print("ready", flush=True)
    ops = EngineOps(fs)
    workers = []
    for wid in range(args.workers):
        w = Worker(ops, args.iteration, wid, args.workers,
                   random.Random(f"{args.seed}/{args.iteration}/{wid}"),
                   os.path.join(args.logdir, f"i{args.iteration}-w{wid}.log"))
        w.setup()
        workers.append(w)
    cleaners = [remove_tree(ops, d) for d in args.clean]
    deadline = time.monotonic() + WORKER_MAX_SECONDS
    while time.monotonic() < deadline:
        r = rnd.random()
        if r < 0.02:
            fs.commit()
        elif r < 0.08 and cleaners:
            try:
                next(cleaners[0])
            except StopIteration:
                cleaners.pop(0)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
        else:
            rnd.choice(workers).step()
    fs.close()
    return 0


# ---------------------------------------------------------------- verification

class Expect:
    """What the logs of one or more iterations promise."""

    def __init__(self):
        self.files: dict[str, tuple[int, str]] = {}
        self.unlinked: set[str] = set()
        self.slots: dict[str, list] = {}        # path -> [stable hash | None, {pending}]
        self.xattrs: dict[str, set[str]] = {}
        self.records = 0

    def read(self, path: str) -> None:
        try:
            with open(path) as f:
                lines = f.readlines()
        except FileNotFoundError:
            return
        for line in lines:
            if not line.endswith("\n"):
                continue                     # torn by the kill
            parts = line.split()
            if len(parts) == 3 and not parts[0].startswith("!"):
                self.files[parts[0]] = (int(parts[1]), parts[2])
                self.records += 1
            elif parts[0] == "!U":
                self.unlinked.add(parts[1])
            elif parts[0] == "!P":
                self.slots.setdefault(parts[1], [None, set()])[1].add(parts[3])
            elif parts[0] == "!R":
                self.slots[parts[1]] = [parts[2], set()]
                self.records += 1
            elif parts[0] == "!X":
                self.xattrs[parts[1]] = {parts[2]}
            elif parts[0] == "!XS" and parts[1] in self.xattrs:
                self.xattrs[parts[1]].add(parts[2])


def walk(ops, path):
    """Every (path, is_dir) under `path`."""
    try:
        names = ops.listdir(path)
    except FileNotFoundError:
        return
    for name in sorted(names):
        p = f"{path}/{name}"
        d = ops.isdir(p)
        yield p, d
        if d:
            yield from walk(ops, p)


def verify(ops, its: list[int], logs: dict[int, list[str]], stats: dict) -> list[str]:
    """Check the directories of iterations `its` against their logs."""
    problems = []
    exp = Expect()
    for it in its:
        for log in logs.get(it, []):
            exp.read(log)
    seen = set()
    for it in its:
        for path, is_dir in walk(ops, f"i{it}"):
            if is_dir:
                continue
            seen.add(path)
            try:
                data = ops.read(path)
            except OSError as e:
                problems.append(f"{path}: read fails: {e}")
                continue
            stats["files_read"] += 1
            stats["bytes_read"] += len(data)
            name = path.rsplit("/", 1)[1]
            key = key_of(name)
            upto = 0
            if path in exp.files:
                size, digest = exp.files[path]
                upto = size
                if len(data) < size:
                    problems.append(f"{path}: {len(data)} bytes, but {size} were fsync'd")
                    continue
                if sha(data[:size]) != digest:
                    problems.append(f"{path}: the {size} bytes fsync'd have changed")
                    continue
                stats["fsync_records"] += 1
            if key:
                prob = stream_problem(key, data, upto)
                if prob:
                    problems.append(f"{path}: {prob}")
            if path in exp.slots:
                stable, pending = exp.slots[path]
                allowed = ({stable} if stable else set()) | pending
                if sha(data) not in allowed:
                    problems.append(f"{path}: renamed over, but holds neither the old"
                                    f" nor a new file ({len(data)} bytes)")
                stats["slots"] += 1
            if path in exp.xattrs:
                value = ops.getxattr(path, XATTR)
                if value is None or sha(value) not in exp.xattrs[path]:
                    problems.append(f"{path}: xattr {XATTR} lost its fsync'd value")
    for path in exp.files:
        if path not in seen and path not in exp.unlinked:
            problems.append(f"{path}: fsync'd, never unlinked, but missing")
    for path, (stable, _pending) in exp.slots.items():
        if path not in seen and stable is not None:
            problems.append(f"{path}: missing after a rename over it")
    return problems


# ---------------------------------------------------------------- controller

class Failure(Exception):
    pass


from daxfs import host  # noqa: E402


def run(cmd, timeout=60):
    """Run a command (this checkout's daxfs first on the path)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd="/")


def take_down(mnt: str) -> None:
    """Unmount whatever is at mnt (its daemon dead or alive)."""
    host.force_unmount(mnt)
    if host.is_mounted(mnt):
        raise RuntimeError(f"cannot unmount {mnt}")


class Soak:
    def __init__(self, args):
        self.args = args
        self.workdir = args.workdir
        self.image = os.path.join(self.workdir, "soak.img")
        self.mnt = os.path.join(self.workdir, "mnt")
        self.logdir = os.path.join(self.workdir, "logs")
        self.daemon_log = os.path.join(self.workdir, "daemon.log")
        self.faildir = os.path.join(self.workdir, "failures")
        self.logs: dict[int, list[str]] = {}
        self.failures: list[str] = []
        self.saved = 0
        self.children: list[subprocess.Popen] = []
        self.stats = dict(iterations=0, mount_kills=0, power_losses=0, early_kills=0,
                          survived=0, fsync_records=0, slots=0, files_read=0,
                          bytes_read=0, records_logged=0, ops=0)
        self.pending_check = False
        os.makedirs(self.logdir, exist_ok=True)
        os.makedirs(self.mnt, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        os.chmod(self.mnt, 0o755)

    # -- helpers
    def say(self, text: str) -> None:
        print(text, flush=True)

    def fresh_image(self, replace: bool = False) -> None:
        """A new image; `replace`: over the one a failed iteration of this
        run left (already copied to failures/)."""
        from daxfs.engine.mkfs import mkfs
        mkfs(self.image, self.args.size, rmap=True, dup=self.args.metadata == "dup",
             force=replace)
        self.logs.clear()

    def check(self, it: int) -> None:
        from daxfs.fsck.check import check_image
        try:
            problems = check_image(self.image)
        except Exception as e:
            raise Failure(f"daxfs check cannot check the image: {e!r}") from None
        if problems:
            raise Failure("daxfs check: " + "; ".join(problems[:10])
                          + (f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""))

    def verify_with(self, ops, it: int) -> None:
        its = [j for j in range(it - KEEP_ITERATIONS, it) if j in self.logs]
        problems = verify(ops, its, self.logs, self.stats)
        if problems:
            raise Failure(f"after the crash of iteration {it - 1}: " + "; ".join(problems[:10])
                          + (f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""))

    def old_dirs(self, ops, it: int) -> list[str]:
        out = []
        for name in ops.listdir(""):
            if name.startswith("i") and name[1:].isdigit() and int(name[1:]) < it - 1:
                out.append(name)
        return sorted(out, key=lambda n: int(n[1:]))

    def spawn(self, args, **kw) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__), *map(str, args)],
                             env=env, cwd="/", **kw)
        self.children.append(p)
        return p

    def reap(self, procs, why: str) -> list[str]:
        """Kill and wait for children; tracebacks they printed are failures."""
        out = []
        for p in procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                out.append(f"{why} pid {p.pid} does not die")
            if p in self.children:
                self.children.remove(p)
        return out

    def log_problems(self, it: int, t_kill: float | None) -> list[str]:
        """!FAIL and !ERR lines logged before the kill."""
        out = []
        for log in self.logs.get(it, []):
            try:
                with open(log) as f:
                    lines = f.readlines()
            except FileNotFoundError:
                continue
            self.stats["records_logged"] += len(lines)
            self.stats["ops"] += max([int(ln.split()[1]) for ln in lines
                                      if ln.startswith("!N ") and ln.endswith("\n")] or [0])
            for line in lines:
                if line.startswith(("!FAIL", "!ERR")) and line.endswith("\n"):
                    t = float(line.split()[1])
                    if t_kill is None or t < t_kill:
                        out.append(f"{os.path.basename(log)}: {line.strip()}")
        return out

    def daemon_log_problems(self, offset: int) -> list[str]:
        try:
            with open(self.daemon_log, errors="replace") as f:
                f.seek(offset)
                text = f.read()
        except FileNotFoundError:
            return []
        return [ln for ln in text.splitlines() if "Traceback" in ln or " ERROR " in ln]

    def _stderr_problems(self, path: str) -> list[str]:
        try:
            with open(path, errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            return []
        if "Traceback" in text:
            return [f"{os.path.basename(path)}: {text.strip()[-1500:]}"]
        return []

    # -- one mount iteration
    def mount_iteration(self, it: int, rnd: random.Random) -> str:
        from daxfs.host import daemon_pids, wait_gone
        args = self.args
        log_offset = os.path.getsize(self.daemon_log) if os.path.exists(self.daemon_log) else 0
        res = run([sys.executable, "-m", "daxfs.cli", "mount", self.image, self.mnt,
                   "--log", self.daemon_log], timeout=90)
        if res.returncode != 0:
            take_down(self.mnt)
            raise Failure(f"mount fails: {res.stderr.strip()}")
        procs = []
        t_kill = None
        delay = 0.0
        problems: list[str] = []
        try:
            pids = daemon_pids(self.image)
            if len(pids) != 1:
                raise Failure(f"daemon pids of the image: {pids}")
            ops = PosixOps(self.mnt)
            self.verify_with(ops, it)
            clean = self.old_dirs(ops, it)
            self.logs[it] = [os.path.join(self.logdir, f"i{it}-w{w}.log")
                             for w in range(args.workers)]
            errs = []
            for w in range(args.workers):
                err = os.path.join(self.logdir, f"i{it}-w{w}.err")
                errs.append(err)
                with open(err, "w") as ef:
                    procs.append(self.spawn(
                        ["--worker", "--mnt", self.mnt, "--iteration", it, "--wid", w,
                         "--workers", args.workers, "--seed", args.seed,
                         "--log", self.logs[it][w]],
                        stdout=subprocess.DEVNULL, stderr=ef))
            if clean:
                with open(os.path.join(self.logdir, f"i{it}-cleaner.err"), "w") as ef:
                    procs.append(self.spawn(["--cleaner", "--mnt", self.mnt, "--clean", *clean],
                                            stdout=subprocess.DEVNULL, stderr=ef))
                errs.append(ef.name)
            delay = rnd.uniform(args.min_delay, args.max_delay)
            time.sleep(delay)
            t_kill = time.monotonic()
            self.pending_check = True
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.stats["mount_kills"] += 1
            if wait_gone(pids, 30):
                raise Failure(f"daemon {pids} survives SIGKILL")
            time.sleep(0.1)
            problems += self.reap(procs, "worker")
            procs = []
            for err in errs:
                problems += self._stderr_problems(err)
        finally:
            if procs:
                self.reap(procs, "worker")
            if t_kill is None:
                # failed before the kill: the daemon is alive; unmount it cleanly
                for pid in daemon_pids(self.image):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.pending_check = True
            take_down(self.mnt)
        problems += self.log_problems(it, t_kill)
        problems += [f"daemon log: {ln}" for ln in self.daemon_log_problems(log_offset)]
        if problems:
            raise Failure(f"iteration {it} (mount, killed after {delay:.2f} s): "
                          + "; ".join(problems[:10]))
        return f"mount, daemon killed after {delay:.2f} s"

    # -- one power-loss iteration
    def power_iteration(self, it: int, rnd: random.Random) -> str:
        from daxfs.engine.fs import Filesystem
        args = self.args
        try:
            fs = Filesystem.open(self.image)
        except Exception as e:
            raise Failure(f"the image does not open: {e!r}") from None
        try:
            ops = EngineOps(fs)
            self.verify_with(ops, it)
            clean = self.old_dirs(ops, it)
        finally:
            fs.close()
        self.logs[it] = [os.path.join(self.logdir, f"i{it}-w{w}.log")
                         for w in range(args.workers)]
        err = os.path.join(self.logdir, f"i{it}-engine.err")
        with open(err, "w") as ef:
            child = self.spawn(["--engine-child", "--image", self.image, "--iteration", it,
                                "--workers", args.workers, "--seed", args.seed,
                                "--logdir", self.logdir, "--clean", *clean],
                               stdout=subprocess.PIPE, stderr=ef)
        in_open = rnd.random() < 0.25
        try:
            if in_open:
                # kill while it opens the image (log replay, orphans, commit)
                if not select.select([child.stdout], [], [], 60)[0]:
                    raise Failure("the engine child does not start")
                child.stdout.readline()
                delay = rnd.uniform(0, 0.03)
            else:
                delay = rnd.uniform(args.min_delay, args.max_delay)
            time.sleep(delay)
            early = child.poll()
            child.kill()
            self.pending_check = True
            child.wait(timeout=30)
            ready = "ready" in child.stdout.read().decode()
        finally:
            self.reap([child], "engine child")
            child.stdout.close()
        self.stats["power_losses"] += 1
        if not ready:
            self.stats["early_kills"] += 1
        problems = self._stderr_problems(err)
        if early is not None:
            problems.append(f"the engine child exited by itself ({early})")
        problems += self.log_problems(it, None)
        if problems:
            raise Failure(f"iteration {it} (power loss after {delay:.2f} s): "
                          + "; ".join(problems[:10]))
        return (f"power loss {delay:.2f} s after {'opening' if in_open else 'start'}"
                + ("" if ready else " (while opening: recovery interrupted)"))

    def final_verify(self, it: int) -> None:
        """Mount once more, verify the last crashes, unmount cleanly, check."""
        from daxfs.host import daemon_pids, wait_gone
        res = run([sys.executable, "-m", "daxfs.cli", "mount", self.image, self.mnt,
                   "--log", self.daemon_log], timeout=90)
        if res.returncode != 0:
            take_down(self.mnt)
            raise Failure(f"final mount fails: {res.stderr.strip()}")
        pids = daemon_pids(self.image)
        try:
            self.verify_with(PosixOps(self.mnt), it)
        finally:
            res = run(["fusermount3", "-u", self.mnt], timeout=60)
            if wait_gone(pids, 60):
                take_down(self.mnt)
                raise Failure("the daemon does not exit after a clean unmount")
            take_down(self.mnt)
        self.check(it)

    def save_failure(self, it: int, text: str) -> None:
        self.failures.append(f"iteration {it}: {text}")
        self.say(f"FAIL iteration {it}: {text}")
        if self.saved < 3:
            self.saved += 1
            os.makedirs(self.faildir, exist_ok=True)
            dest = os.path.join(self.faildir, f"iteration-{it}")
            os.makedirs(dest, exist_ok=True)
            run(["cp", "--sparse=always", self.image, dest], timeout=120)
            for j, logs in self.logs.items():
                for log in logs:
                    if os.path.exists(log):
                        shutil.copy(log, dest)
            with open(os.path.join(dest, "failure.txt"), "w") as f:
                f.write(text + "\n")
            self.say(f"  image and logs kept in {dest}")

    def run(self) -> int:
        args = self.args
        self.fresh_image()
        self.say(f"crash soak: {args.iterations} iterations, seed {args.seed},"
                 f" power loss every {args.power_loss_every or 'never'},"
                 f" {args.workers} workers, image {args.size >> 20} MiB, workdir {self.workdir}")
        t0 = time.monotonic()
        it = 0
        try:
            for it in range(1, args.iterations + 1):
                rnd = random.Random(f"{args.seed}/{it}/controller")
                power = bool(args.power_loss_every) and it % args.power_loss_every == 0
                self.stats["iterations"] += 1
                try:
                    what = (self.power_iteration if power else self.mount_iteration)(it, rnd)
                    self.check(it)
                    self.pending_check = False
                    self.stats["survived"] += 1
                    if args.verbose:
                        self.say(f"iteration {it}: {what}; check clean")
                except Failure as f:
                    self.save_failure(it, str(f))
                    take_down(self.mnt)
                    self.fresh_image(replace=True)
                if not args.verbose and it % 50 == 0:
                    self.say(f"... {it} iterations, {len(self.failures)} failures,"
                             f" {time.monotonic() - t0:.0f} s")
            try:
                self.final_verify(it + 1)
            except Failure as f:
                self.save_failure(it + 1, str(f))
        finally:
            self.reap(list(self.children), "child")
            with contextlib.suppress(Exception):
                take_down(self.mnt)
        s = self.stats
        self.say(f"crash soak done in {time.monotonic() - t0:.0f} s: {s['iterations']} iterations,"
                 f" {s['mount_kills'] + s['power_losses']} crash points"
                 f" ({s['mount_kills']} daemon kills, {s['power_losses']} power losses,"
                 f" {s['early_kills']} of them during open/recovery),"
                 f" {s['survived']} survived, {len(self.failures)} failures")
        self.say(f"  verified: {s['fsync_records']} fsync'd files and renames,"
                 f" {s['slots']} renamed-over files, {s['files_read']} files read"
                 f" ({s['bytes_read'] >> 20} MiB);"
                 f" about {s['ops']} workload operations, {s['records_logged']} log records")
        for f in self.failures:
            self.say(f"  FAILURE {f}")
        return 1 if self.failures else 0


def parse_size(text: str) -> int:
    from daxfs.engine.mkfs import parse_size as ps
    return ps(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--power-loss-every", type=int, default=10, metavar="K",
                   help="every K-th iteration is a power loss of the engine (0: never)")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--size", type=parse_size, default=128 << 20)
    p.add_argument("--min-delay", type=float, default=0.3)
    p.add_argument("--max-delay", type=float, default=2.5)
    p.add_argument("--metadata", choices=["dup", "single"], default="dup",
                   help="the image's metadata profile (default dup, as mkfs)")
    p.add_argument("--workdir")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("-v", "--verbose", action="store_true")
    # internal: the children
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cleaner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mnt", help=argparse.SUPPRESS)
    p.add_argument("--image", help=argparse.SUPPRESS)
    p.add_argument("--iteration", type=int, help=argparse.SUPPRESS)
    p.add_argument("--wid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--log", help=argparse.SUPPRESS)
    p.add_argument("--logdir", help=argparse.SUPPRESS)
    p.add_argument("--clean", nargs="*", default=[], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.cleaner:
        return cleaner_main(args)
    if args.engine_child:
        return engine_child_main(args)
    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    made = args.workdir is None
    if made:
        args.workdir = tempfile.mkdtemp(prefix="daxfs-soak-")
    os.makedirs(args.workdir, exist_ok=True)
    left = [n for n in ("soak.img", "logs", "failures") if os.path.exists(
        os.path.join(args.workdir, n))]
    if left:
        # an earlier soak's image and logs: its logs would be read as this
        # run's expectations
        print(f"crash_soak: {args.workdir} holds an earlier soak's {', '.join(left)};"
              " give an empty or new --workdir", file=sys.stderr)
        return 2
    soak = Soak(args)

    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    try:
        rc = soak.run()
    except KeyboardInterrupt:
        soak.say("interrupted")
        rc = 2
    except Exception:
        traceback.print_exc()
        rc = 3
    if made and not args.keep and rc == 0:
        shutil.rmtree(args.workdir, ignore_errors=True)
    elif made:
        print(f"work directory kept: {args.workdir}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
