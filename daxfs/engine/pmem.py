"""The persistent-memory device: one image file mapped MAP_SHARED.

Owns the mapping, numpy views of its blocks, the persistence barrier
(`flush`, an msync of the touched pages), the exclusive lock on the image,
and loads that fail like a machine check on bad ranges (badblocks.py).

`private=True` maps the image MAP_PRIVATE instead: stores stay in this
process until `flush` writes those pages to the file.  Killing such a
process loses exactly what was not flushed, which is how the tests simulate
power loss.
"""

import ctypes
import ctypes.util
import errno
import fcntl
import logging
import mmap
import os
import struct

import numpy as np

from .badblocks import BadBlocks
from .errors import BackingFull, ImageLocked, MediaError, NotAnImage, WriteFailed
from .format import BLOCK_SIZE, MIN_IMAGE_BYTES

log = logging.getLogger(__name__)

_FLOCK = "hhqqi4x"          # struct flock on Linux x86_64/aarch64
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)   # (Linux; the module has it from 3.13)
WRITEBACK_MIN = 64 << 10    # stores this big start their writeback at once
BACK_CHUNK = 256            # blocks: host space is reserved 1 MiB at a time (Pmem.back)
_SYNC_FILE_RANGE_WRITE = 2
try:
    IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))     # buffers one pwritev takes
except (ValueError, OSError):
    IOV_MAX = 16


def _libc(name: str, argtypes):
    """A libc function the os module has no binding for, or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _libc("sync_file_range",
                         [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint])
# fallocate(2), not posix_fallocate: glibc's posix_fallocate falls back to
# writing a byte into every block where the host cannot allocate.
_fallocate = _libc("fallocate64", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64])
_open_here: set[tuple[int, int]] = set()


def _lock_holder(fd: int) -> int | None:
    """pid of the process holding a conflicting lock on the image, if any."""
    arg = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    try:
        res = fcntl.fcntl(fd, fcntl.F_GETLK, arg)
    except OSError:
        return None
    l_type, _, _, _, pid = struct.unpack(_FLOCK, res)
    return pid if l_type != fcntl.F_UNLCK else None


def image_lock_holder(path: str) -> int | None:
    """pid of the process holding the image's lock (a mount, mkfs,
    check...), or None; without taking it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _lock_holder(fd)
    finally:
        os.close(fd)


def _take_lock(fd: int, path: str, kind: int) -> None:
    """The image's lock on `fd` (F_RDLCK or F_WRLCK), or ImageLocked naming
    who holds it."""
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) in _open_here:
        raise ImageLocked(f"{path}: the image is already open in this process")
    try:
        fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 0, 0))
    except OSError:
        pid = _lock_holder(fd)
        who = _describe_pid(pid) if pid else "another process"
        raise ImageLocked(f"{path}: the image is in use by {who}"
                          " (mounted? unmount it first)") from None


def lock_for_create(fd: int, path: str) -> None:
    """Take the image's write lock on `fd` before mkfs changes the file:
    ImageLocked if a mount (or any tool) has it open.  The lock goes with
    the last close of the file in this process."""
    _take_lock(fd, path, fcntl.F_WRLCK)


def _describe_pid(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        return f"pid {pid} ({cmd[:120]})"
    except OSError:
        return f"pid {pid}"


class Pmem:
    """A mapped image file: the device every other layer stores into."""

    def __init__(self, path: str, *, readonly: bool = False, private: bool = False,
                 lock: bool = True, fd: int | None = None):
        """`fd`: the image already open (mkfs), owned from here on."""
        self.path = path
        self.readonly = readonly
        self.private = private
        self._view_holders = []
        flags = os.O_RDONLY if readonly else os.O_RDWR
        try:
            self.fd = os.open(path, flags | os.O_CLOEXEC) if fd is None else fd
        except FileNotFoundError:
            raise NotAnImage(f"{path}: no such file") from None
        except IsADirectoryError:
            raise NotAnImage(f"{path}: is a directory, not an image") from None
        try:
            st = os.fstat(self.fd)
            if not (st.st_mode & 0o170000 == 0o100000):
                raise NotAnImage(f"{path}: not a regular file")
            self.size = st.st_size
            if self.size < MIN_IMAGE_BYTES:
                raise NotAnImage(f"{path}: {self.size} bytes is too small to be a daxfs image"
                                 f" (at least {MIN_IMAGE_BYTES} bytes)")
            self._ident = (st.st_dev, st.st_ino)
            if lock:
                self._lock()
            self.nblocks = self.size // BLOCK_SIZE
            length = self.nblocks * BLOCK_SIZE
            if readonly:
                # private and writable, so that opening applies a pending
                # log in memory (restore_block) without touching the file;
                # every other store is refused by the read-only view below.
                # MAP_NORESERVE: only the few replayed pages are ever copied,
                # and a 64 GiB private mapping would otherwise be refused.
                self.mm = mmap.mmap(self.fd, length, mmap.MAP_PRIVATE | _MAP_NORESERVE,
                                    mmap.PROT_READ | mmap.PROT_WRITE)
            elif private:
                self.mm = mmap.mmap(self.fd, length, mmap.MAP_PRIVATE | _MAP_NORESERVE,
                                    mmap.PROT_READ | mmap.PROT_WRITE)
            else:
                self.mm = mmap.mmap(self.fd, length, mmap.MAP_SHARED,
                                    mmap.PROT_READ | mmap.PROT_WRITE)
            self.buf = np.frombuffer(self.mm, dtype=np.uint8)
            if readonly:
                self.buf = self.buf.view()
                self.buf.flags.writeable = False
            self.bad = BadBlocks(path, self.nblocks)
        except BaseException:
            self._release()
            raise
        self._can_back = _fallocate is not None
        self._backed: set[int] = set()        # BACK_CHUNK chunks given host space

    def _lock(self) -> None:
        _take_lock(self.fd, self.path, fcntl.F_RDLCK if self.readonly else fcntl.F_WRLCK)
        _open_here.add(self._ident)
        self._locked = True

    def _release(self) -> None:
        if getattr(self, "_locked", False):
            _open_here.discard(self._ident)
            self._locked = False
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)
            self.fd = None

    # ---- views ------------------------------------------------------------
    def block(self, bno: int) -> np.ndarray:
        """A writable uint8 view of one block (no poison check)."""
        o = bno * BLOCK_SIZE
        return self.buf[o:o + BLOCK_SIZE]

    def restore_block(self, bno: int, data) -> None:
        """Store a block image from the log (replay).  Read-only: in this
        process's private copy only, so that a read-only open still sees
        the last commit."""
        o = bno * BLOCK_SIZE
        if self.readonly:
            self.mm[o:o + BLOCK_SIZE] = bytes(data)
        else:
            self.back(bno)
            self.buf[o:o + BLOCK_SIZE] = data

    def blocks(self, bno: int, n: int) -> np.ndarray:
        o = bno * BLOCK_SIZE
        return self.buf[o:o + n * BLOCK_SIZE]

    def load(self, offset: int, n: int) -> bytes:
        """The bytes [offset, offset+n) of the device.  pread, not a copy
        out of the mapping: the kernel reads ahead on the image as for any
        file read, and no page of it is faulted into this process (the
        same page cache pages either way; the private mapping copies)."""
        if not self.private:
            data = os.pread(self.fd, n, offset)
            if len(data) == n:
                return data
        return self.buf[offset:offset + n].tobytes()

    def load_into(self, view: memoryview, offset: int) -> None:
        """Fill `view` with the bytes of the device from offset (as load)."""
        if not self.private and os.preadv(self.fd, [view], offset) == len(view):
            return
        view[:] = self.buf[offset:offset + len(view)]

    def store_pages(self, offset: int, data) -> None:
        """Store whole pages (offset and length page-aligned).  A store
        through a shared file mapping costs a page fault per page not yet
        mapped here (and a read of the page if it is not resident); pwrite
        puts the bytes into the same page cache pages without either, with
        the same flush semantics.  The private (power-loss) mapping keeps
        plain stores: its pages must stay private until flushed."""
        if self.private:
            self.buf[offset:offset + len(data)] = np.frombuffer(data, dtype=np.uint8)
            return
        try:
            os.pwrite(self.fd, data, offset)
        except OSError as e:
            raise WriteFailed(f"{self.path}: the image could not be written"
                              f" ({e.strerror or e})") from e
        if len(data) >= WRITEBACK_MIN and _sync_file_range is not None:
            # Start writing the pages to the image now (without waiting):
            # the commit's flush then finds them written or on their way,
            # instead of writing a second's worth of data while every
            # request waits.
            _sync_file_range(self.fd, offset, len(data), _SYNC_FILE_RANGE_WRITE)

    def store_blocks(self, bno: int, bufs) -> None:
        """Store the buffers (uint8 arrays, each a whole number of blocks)
        one after another from block `bno` on: pwritev, IOV_MAX buffers a
        call, into the same page cache pages the mapping shows, without the
        fault a store through the shared mapping takes on every page the
        last flush write-protected; the private (power-loss) mapping keeps
        plain stores, which stay in this process until flushed."""
        o = bno * BLOCK_SIZE
        if self.private:
            for b in bufs:
                self.buf[o:o + b.size] = b
                o += b.size
            return
        for i in range(0, len(bufs), IOV_MAX):
            chunk = bufs[i:i + IOV_MAX]
            want = sum(map(len, chunk))       # (1-D uint8 arrays: len is bytes)
            done = os.pwritev(self.fd, chunk, o)
            if done != want:            # (short: the host is out of space or failing)
                rest = b"".join(bytes(b) for b in chunk)[done:]
                while rest:
                    w = os.pwrite(self.fd, rest, o + want - len(rest))
                    if w <= 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    rest = rest[w:]
            o += want

    def back(self, bno: int, n: int = 1) -> None:
        """Make the host filesystem hold space for blocks [bno, bno+n) of
        the (sparse) image before anything is stored there: a store
        through the mapping into a hole the host cannot fill kills the
        process with SIGBUS, where this raises BackingFull.  Blocks once
        backed stay backed (nothing punches holes)."""
        if self.readonly or not self._can_back:
            return
        # whole chunks, each asked for once per open: a fallocate for
        # every allocation made small appending writes measurably slower
        c0, c1 = bno // BACK_CHUNK, (bno + n - 1) // BACK_CHUNK + 1
        backed = self._backed
        if all(c in backed for c in range(c0, c1)):
            return
        err = self._fallocate(c0 * BACK_CHUNK, min(c1 * BACK_CHUNK, self.nblocks))
        if not err:
            backed.update(range(c0, c1))
            return
        if err in (errno.ENOSPC, errno.EDQUOT):
            # the host may still hold the blocks asked for, if not the chunks
            err = self._fallocate(bno, bno + n)
            if not err:
                return
        if err in (errno.ENOSPC, errno.EDQUOT):
            raise BackingFull(f"{self.path}: the filesystem holding the image is full"
                              f" (blocks {bno}+{n} of the sparse image need space on it)")
        # (a host filesystem without fallocate: stores take their chance)
        log.warning("%s: fallocate: %s; not reserving host space for the image",
                    self.path, os.strerror(err))
        self._can_back = False

    def _fallocate(self, b0: int, b1: int) -> int:
        """fallocate blocks [b0, b1): 0, or the errno."""
        while _fallocate(self.fd, 0, b0 * BLOCK_SIZE, (b1 - b0) * BLOCK_SIZE) != 0:
            err = ctypes.get_errno()
            if err != errno.EINTR:
                return err
        return 0

    def check_load(self, bno: int, n: int = 1) -> None:
        """Raise MediaError if any block of [bno, bno+n) is bad."""
        if self.bad:
            b = self.bad.first_bad(bno, n)
            if b is not None:
                raise MediaError(b)

    # ---- persistence ------------------------------------------------------
    def flush(self, ranges, *, alone: bool = False) -> None:
        """Make the stores to the given (block, count) ranges durable.

        `alone`: the caller knows no other stores to the image wait to be
        written (nothing it would mind being written now), so one fdatasync
        of the image does it.  Each msync of a range is a whole fsync of the
        image, with its own device cache flush: for a commit's few hundred
        scattered metadata blocks, one fdatasync does in one device flush
        what an msync per block did in hundreds."""
        if self.private:
            for bno, n in _merge(ranges):
                o = bno * BLOCK_SIZE
                os.pwrite(self.fd, self.mm[o:o + n * BLOCK_SIZE], o)
            os.fdatasync(self.fd)
            return
        if alone and len(ranges) > 1:
            # (whether or not they merge into one range: nothing else waits)
            os.fdatasync(self.fd)
            return
        merged = _merge(ranges)
        if len(merged) > 256 or (alone and len(merged) > 1):
            os.fdatasync(self.fd)
            return
        for bno, n in merged:
            self.mm.flush(bno * BLOCK_SIZE, n * BLOCK_SIZE)

    def flush_all(self) -> None:
        if self.private:
            os.pwrite(self.fd, self.mm[:], 0)
            os.fdatasync(self.fd)
        elif not self.readonly:
            self.mm.flush()

    def add_view_holder(self, drop) -> None:
        """Register a callable that drops the views of the mapping someone
        keeps (decoded btree nodes); close() calls it first."""
        self._view_holders.append(drop)

    def close(self) -> None:
        for drop in self._view_holders:
            drop()
        self._view_holders = []
        if getattr(self, "mm", None) is not None:
            self.buf = None
            try:
                self.mm.close()
            except BufferError:
                import gc
                gc.collect()
                try:
                    self.mm.close()
                except BufferError:
                    log.warning("views of %s still exist at close", self.path)
            self.mm = None
        self._release()


def _merge(ranges):
    out = []
    for bno, n in sorted(ranges):
        if out and bno <= out[-1][0] + out[-1][1]:
            last = out[-1]
            out[-1] = (last[0], max(last[1], bno + n - last[0]))
        else:
            out.append((bno, n))
    return out
