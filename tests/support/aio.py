"""Linux native AIO (io_setup/io_submit/io_getevents) through raw system
calls, for tests that need an asynchronous O_DIRECT write (xfstests'
aio-dio programs use libaio for the same calls).  x86_64 and aarch64."""

from __future__ import annotations

import ctypes
import os
import platform

_NR = {"x86_64": {"io_setup": 206, "io_destroy": 207, "io_getevents": 208, "io_submit": 209},
       "aarch64": {"io_setup": 0, "io_destroy": 1, "io_submit": 2, "io_getevents": 4}}
IOCB_CMD_PWRITE = 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _Iocb(ctypes.Structure):
    _fields_ = [("aio_data", ctypes.c_uint64), ("aio_key", ctypes.c_uint32),
                ("aio_rw_flags", ctypes.c_int32), ("aio_lio_opcode", ctypes.c_uint16),
                ("aio_reqprio", ctypes.c_int16), ("aio_fildes", ctypes.c_uint32),
                ("aio_buf", ctypes.c_uint64), ("aio_nbytes", ctypes.c_uint64),
                ("aio_offset", ctypes.c_int64), ("aio_reserved2", ctypes.c_uint64),
                ("aio_flags", ctypes.c_uint32), ("aio_resfd", ctypes.c_uint32)]


class _Event(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64),
                ("res", ctypes.c_int64), ("res2", ctypes.c_int64)]


assert ctypes.sizeof(_Iocb) == 64 and ctypes.sizeof(_Event) == 32


def _call(name: str, *args) -> int:
    nr = _NR[platform.machine()][name]
    res = _libc.syscall(ctypes.c_long(nr), *args)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return res


class AioContext:
    """One io_context with room for one request at a time."""

    def __init__(self):
        self.ctx = ctypes.c_ulong(0)
        _call("io_setup", ctypes.c_uint(1), ctypes.byref(self.ctx))

    def pwrite(self, fd: int, buf, offset: int) -> int:
        """Submit an asynchronous write of `buf` (a writable buffer whose
        address suits O_DIRECT, e.g. an anonymous mmap) and wait for it:
        the byte count written."""
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        iocb = _Iocb(aio_lio_opcode=IOCB_CMD_PWRITE, aio_fildes=fd, aio_buf=addr,
                     aio_nbytes=len(buf), aio_offset=offset)
        ptrs = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(iocb))
        if _call("io_submit", self.ctx, ctypes.c_long(1), ptrs) != 1:
            raise OSError("io_submit queued nothing")
        ev = _Event()
        while _call("io_getevents", self.ctx, ctypes.c_long(1), ctypes.c_long(1),
                    ctypes.byref(ev), None) != 1:
            pass
        if ev.res < 0:
            raise OSError(-ev.res, os.strerror(-ev.res))
        return ev.res

    def close(self) -> None:
        if self.ctx.value:
            _call("io_destroy", self.ctx)
            self.ctx = ctypes.c_ulong(0)
