"""The size the kernel currently believes a file of this mount has.

The FUSE daemon needs it in one place (daxfs/fuse/operations.py, `read` after a
truncation): a READ answered short tells the kernel "EOF here", and the
kernel zero-fills the rest of the pages and copies them to the reader up
to ITS idea of the size.  While a truncation is on its way through the
kernel (the FUSE_SETATTR is answered but the truncating task has not yet
written the new i_size; the kernel marks the inode FUSE_I_SIZE_UNSTABLE
and ignores the size a short read implies), that idea is the old, larger
size: the reader gets zeros the file never held.

How, without a request to the daemon (which is the caller):
``open_by_handle_at(mount, {nodeid, generation}, O_PATH)`` (FUSE's export
handle, FILEID_INO64_GEN; the mount offers it because the daemon answers
"." lookups; no request while the kernel holds the inode, which it does
while a reader has it open) and ``statx(AT_EMPTY_PATH |
AT_STATX_DONT_SYNC, STATX_SIZE)``, which FUSE answers from the inode's
cached attributes.  Needs CAP_DAC_READ_SEARCH (the daemon runs as root);
any failure raises OSError and the caller does without.  The mount root
is opened for each question (an OPENDIR and a RELEASEDIR to the daemon,
which must keep serving meanwhile) and closed at once: a descriptor kept
open would make the daemon hold its own mount busy, and unmounting would
wait for it forever.
"""

from __future__ import annotations

import ctypes
import os
import struct

__all__ = ["KernelSizes"]

AT_EMPTY_PATH = 0x1000
AT_STATX_DONT_SYNC = 0x4000
STATX_SIZE = 0x200
FILEID_INO64_GEN = 0x81         # fuse_encode_fh: nodeid (2 x u32, high first), generation
_STATX_BUF = 256
_STX_SIZE_OFFSET = 40           # struct statx: stx_size
_STX_DEV_OFFSET = 136           # struct statx: stx_dev_major, stx_dev_minor


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    libc.open_by_handle_at.restype = ctypes.c_int
    libc.statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                           ctypes.c_char_p]
    libc.statx.restype = ctypes.c_int
    return libc


class KernelSizes:
    """Kernel-side sizes of the inodes of the mount at `mountpoint`, whose
    st_dev is `device` (checked, so that a mount stacked on top is never
    asked).  Blocking calls: run them in a worker thread."""

    def __init__(self, mountpoint: str, device: int):
        self.mountpoint = mountpoint
        self.device = device
        self._libc = _libc()

    def _statx(self, fd: int, flags: int) -> bytes:
        buf = ctypes.create_string_buffer(_STATX_BUF)
        if self._libc.statx(fd, b"", AT_EMPTY_PATH | AT_STATX_DONT_SYNC | flags,
                            STATX_SIZE, buf) < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return buf.raw

    def _open_mount(self) -> int:
        # not O_PATH: open_by_handle_at refuses an O_PATH descriptor (EBADF)
        fd = os.open(self.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
        try:
            major, minor = struct.unpack_from("=II", self._statx(fd, 0), _STX_DEV_OFFSET)
            if os.makedev(major, minor) != self.device:
                raise OSError(f"{self.mountpoint} is not this mount's root")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def size(self, ino: int, generation: int) -> int:
        """i_size of inode `ino` as the kernel has it now (OSError if the
        kernel does not hold the inode or cannot be asked)."""
        handle = struct.pack("=Ii", 12, FILEID_INO64_GEN) + struct.pack(
            "=III", ino >> 32, ino & 0xFFFFFFFF, generation & 0xFFFFFFFF)
        mount_fd = self._open_mount()
        try:
            fd = self._libc.open_by_handle_at(mount_fd, handle, os.O_PATH)
            if fd < 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e))
        finally:
            os.close(mount_fd)
        try:
            return struct.unpack_from("=Q", self._statx(fd, 0), _STX_SIZE_OFFSET)[0]
        finally:
            os.close(fd)
