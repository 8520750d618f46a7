"""A file system exerciser in the manner of xfstests' fsx: random operations
on one file of a mounted filesystem, each checked against an in-memory
model of what the file must hold.

Operations (all on one file, as fsx does): write, mapped write (mmap
MAP_SHARED + msync), read, mapped read, truncate, fallocate in its four
modes (default, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE with and
without KEEP_SIZE), copy_file_range and clone (FICLONERANGE's request over
daxfs's control protocol, daxfs/control/client.py) between non-overlapping
ranges of the file, SEEK_DATA/SEEK_HOLE, and close/reopen.  After every
operation the file's size and bytes are compared with the model, through
the page cache and, at random, with the cached pages dropped first (then
the bytes come from the daemon).  SEEK_DATA may never skip a nonzero byte
and SEEK_HOLE may never land on one.

Seeded: a failure names the seed and the operation number and dumps the
last operations, so that it can be replayed:

    python tests/support/fsx.py /mnt/daxfs/fsx-file --seed 7 --ops 5000
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import errno
import mmap
import os
import random
import sys

BLOCK = 4096
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) itself (os.posix_fallocate would fall back to writes)."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fallocate(mode {mode:#x}, {offset}, {length}): {os.strerror(err)}")


class Mismatch(AssertionError):
    pass


class Exerciser:
    OPS = ("write", "mapwrite", "read", "mapread", "truncate", "falloc", "falloc_keep",
           "punch", "zero", "zero_keep", "copy_range", "clone", "seek", "reopen")

    def __init__(self, path, seed: int, *, maxlen: int = 256 << 10, maxop: int = 64 << 10,
                 clone=None, weights=None):
        """`clone(fd, src_off, dst_off, length)` shares a range within the
        file (None: no clone operations)."""
        self.path = str(path)
        self.seed = seed
        self.rng = random.Random(seed)
        self.maxlen = maxlen
        self.maxop = maxop
        self.clone_fn = clone
        self.model = bytearray()
        self.log = collections.deque(maxlen=40)
        self.counts = collections.Counter()
        ops = [op for op in self.OPS if op != "clone" or clone is not None]
        w = dict(weights or {})
        self.ops = ops
        self.weights = [w.get(op, 1) for op in ops]
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.step = 0

    # ---- helpers -----------------------------------------------------------
    def _off(self, limit: int, aligned: bool = False) -> int:
        off = self.rng.randrange(max(1, limit))
        return off - off % BLOCK if aligned else off

    def _len(self, aligned: bool = False) -> int:
        n = self.rng.randint(1, self.maxop)
        if aligned:
            n = max(BLOCK, n - n % BLOCK)
        return n

    def _aligned(self) -> bool:
        return self.rng.random() < 0.4

    def _set(self, off: int, data) -> None:
        end = off + len(data)
        if end > len(self.model):
            self.model.extend(bytes(end - len(self.model)))
        self.model[off:end] = data

    def _resize(self, size: int) -> None:
        if size < len(self.model):
            del self.model[size:]
        else:
            self.model.extend(bytes(size - len(self.model)))

    def _zero(self, off: int, end: int) -> None:
        end = min(end, len(self.model))
        if off < end:
            self.model[off:end] = bytes(end - off)

    def _fail(self, what: str) -> None:
        lines = "\n".join(self.log)
        raise Mismatch(f"fsx seed {self.seed}, operation {self.step}: {what}\n"
                       f"last operations:\n{lines}")

    # ---- checks --------------------------------------------------------------
    def verify(self, uncached: bool = False) -> None:
        size = os.fstat(self.fd).st_size
        if size != len(self.model):
            self._fail(f"size {size}, model says {len(self.model)}")
        if uncached:
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        got = os.pread(self.fd, size + 1, 0)
        if got != self.model:
            bad = next((i for i in range(min(len(got), size)) if got[i] != self.model[i]),
                       min(len(got), size))
            self._fail(f"{'uncached ' if uncached else ''}read: {len(got)} bytes, first"
                       f" difference at offset {bad:#x} (file {got[bad:bad + 8].hex()}, model"
                       f" {bytes(self.model[bad:bad + 8]).hex()})")

    # ---- operations ------------------------------------------------------------
    def op_write(self):
        aligned = self._aligned()
        off, n = self._off(self.maxlen, aligned), self._len(aligned)
        n = min(n, self.maxlen - off)
        data = self.rng.randbytes(n)
        self.log.append(f"{self.step} write {off:#x} {n:#x}")
        if os.pwrite(self.fd, data, off) != n:
            self._fail("short write")
        self._set(off, data)

    def op_mapwrite(self):
        off, n = self._off(self.maxlen), self._len()
        n = min(n, self.maxlen - off)
        data = self.rng.randbytes(n)
        self.log.append(f"{self.step} mapwrite {off:#x} {n:#x}")
        if off + n > len(self.model):
            os.ftruncate(self.fd, off + n)
            self._resize(off + n)
        start = off - off % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(self.fd, off + n - start, offset=start) as m:
            m[off - start:off - start + n] = data
            m.flush()
        self._set(off, data)

    def op_read(self):
        size = len(self.model)
        off, n = self._off(size + BLOCK), self._len()
        self.log.append(f"{self.step} read {off:#x} {n:#x}")
        if os.pread(self.fd, n, off) != self.model[off:off + n]:
            self._fail(f"read {off:#x}+{n:#x} differs from the model")

    def op_mapread(self):
        size = len(self.model)
        if not size:
            return
        off = self._off(size)
        n = min(self._len(), size - off)
        self.log.append(f"{self.step} mapread {off:#x} {n:#x}")
        start = off - off % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(self.fd, off + n - start, offset=start, prot=mmap.PROT_READ) as m:
            if m[off - start:off - start + n] != self.model[off:off + n]:
                self._fail(f"mapread {off:#x}+{n:#x} differs from the model")

    def op_truncate(self):
        size = self._off(self.maxlen, self._aligned())
        self.log.append(f"{self.step} truncate {size:#x} (from {len(self.model):#x})")
        os.ftruncate(self.fd, size)
        self._resize(size)

    def _falloc(self, mode: int, name: str):
        aligned = self._aligned()
        off, n = self._off(self.maxlen, aligned), self._len(aligned)
        n = min(n, self.maxlen - off)
        self.log.append(f"{self.step} {name} {off:#x} {n:#x} (size {len(self.model):#x})")
        fallocate(self.fd, mode, off, n)
        end = off + n
        kind = mode & ~FALLOC_FL_KEEP_SIZE
        if kind in (FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE):
            self._zero(off, end)
        if not mode & FALLOC_FL_KEEP_SIZE and end > len(self.model):
            self._resize(end)

    def op_falloc(self):
        self._falloc(0, "falloc")

    def op_falloc_keep(self):
        self._falloc(FALLOC_FL_KEEP_SIZE, "falloc_keep")

    def op_punch(self):
        self._falloc(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "punch")

    def op_zero(self):
        self._falloc(FALLOC_FL_ZERO_RANGE, "zero")

    def op_zero_keep(self):
        self._falloc(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, "zero_keep")

    def _ranges(self, aligned: bool):
        """(src, dst, count) for a copy within the file: src before EOF,
        the ranges apart, dst below maxlen; or None."""
        size = len(self.model)
        if size < 2:
            return None
        src = self._off(size, aligned)
        count = min(self._len(aligned), size - src)
        for _ in range(20):
            dst = self._off(self.maxlen - count, aligned)
            if dst + count <= src or dst >= src + count + (BLOCK if aligned else 0):
                return src, dst, count
        return None

    def op_copy_range(self):
        r = self._ranges(self._aligned())
        if r is None:
            return
        src, dst, count = r
        self.log.append(f"{self.step} copy_range {src:#x} -> {dst:#x} {count:#x}"
                        f" (size {len(self.model):#x})")
        done = 0
        while done < count:
            n = os.copy_file_range(self.fd, self.fd, count - done, src + done, dst + done)
            if n <= 0:
                self._fail(f"copy_file_range returned {n} with {count - done} bytes left")
            done += n
        self._set(dst, bytes(self.model[src:src + count]))

    def op_clone(self):
        r = self._ranges(True)
        if r is None:
            return
        src, dst, count = r
        size = len(self.model)
        if count % BLOCK and (src + count != size or dst + count < size):
            count -= count % BLOCK            # (a partial block only at both EOFs)
        if count <= 0:
            return
        self.log.append(f"{self.step} clone {src:#x} -> {dst:#x} {count:#x} (size {size:#x})")
        self.clone_fn(self.fd, src, dst, count)
        self._set(dst, bytes(self.model[src:src + count]))

    def op_seek(self):
        size = len(self.model)
        off = self._off(size + BLOCK)
        self.log.append(f"{self.step} seek {off:#x} (size {size:#x})")
        for whence in (os.SEEK_DATA, os.SEEK_HOLE):
            try:
                pos = os.lseek(self.fd, off, whence)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                if off < size and (whence == os.SEEK_HOLE or any(self.model[off:])):
                    self._fail(f"lseek({off:#x}, {whence}): ENXIO before EOF"
                               " (data follows)" if whence == os.SEEK_DATA else "")
                continue
            if off >= size or not off <= pos <= size:
                self._fail(f"lseek({off:#x}, {whence}) = {pos:#x}, size {size:#x}")
            if whence == os.SEEK_DATA and any(self.model[off:pos]):
                self._fail(f"SEEK_DATA from {off:#x} skipped data before {pos:#x}")
            if whence == os.SEEK_HOLE and pos < size and self.model[pos]:
                self._fail(f"SEEK_HOLE from {off:#x} = {pos:#x} lands on data")

    def op_reopen(self):
        self.log.append(f"{self.step} close/open")
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR)

    # ---- the run ---------------------------------------------------------------
    def run(self, nops: int) -> collections.Counter:
        try:
            for self.step in range(1, nops + 1):
                op = self.rng.choices(self.ops, self.weights)[0]
                try:
                    getattr(self, "op_" + op)()
                except OSError as e:
                    self._fail(f"{op}: {e}")
                self.counts[op] += 1
                self.verify(uncached=self.rng.random() < 0.2)
            self.verify(uncached=True)
        finally:
            os.close(self.fd)
        return self.counts


def daxfs_clone(fd: int, src: int, dst: int, length: int) -> None:
    """FICLONERANGE within one file, over daxfs's control protocol."""
    from daxfs.control import client
    client.clone(fd, fd, src, dst, length)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ops", type=int, default=10000)
    p.add_argument("--no-clone", action="store_true", help="leave clone out (another filesystem)")
    args = p.parse_args(argv)
    ex = Exerciser(args.file, args.seed, clone=None if args.no_clone else daxfs_clone)
    counts = ex.run(args.ops)
    print(f"fsx: seed {args.seed}: {args.ops} operations passed: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
