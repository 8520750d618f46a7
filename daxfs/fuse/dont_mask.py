"""Asking the kernel to leave the umask to daxfs (FUSE_DONT_MASK).

A directory with a default POSIX ACL gives its new files that ACL in place
of the umask (daxfs/engine/acl.py `inherit`).  The kernel applies the umask to a
FUSE create's mode itself unless the daemon answered FUSE_INIT with
FUSE_DONT_MASK, and pyfuse3 3.5 never asks for it: its INIT callback sets
only its three capabilities before calling `Operations.init()`, and it
hands Python no pointer to libfuse's connection.

`request()`, called from `Operations.init()` (inside libfuse's do_init,
after pyfuse3 set its wants and before libfuse turns them into the reply),
finds libfuse's `struct fuse_session` through pyfuse3's module variable
`session` (a symbol of pyfuse3's extension module), checks that the memory
at the connection's place is what libfuse 3.14's layout says it must be
(the session's /dev/fuse fd, protocol major 7, the POSIX-ACL capability
pyfuse3 just asked for, nothing wanted that is not offered), and only then
adds FUSE_CAP_DONT_MASK to `conn.want`.  Anything unexpected (another
pyfuse3 or libfuse, a stripped module, a kernel without the capability)
changes nothing and the kernel keeps applying the umask, which daxfs then
applies again, harmlessly.

The engine applies the umask itself (fs.py `_new_inode`) unless a default
ACL takes its place.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct

log = logging.getLogger(__name__)

SYMBOL = b"__pyx_v_7pyfuse3_session"
# libfuse 3.14 struct fuse_session (lib/fuse_i.h) on LP64, as Debian 12's
# libfuse3-3 3.14.0 lays it out: fd at 12; struct fuse_lowlevel_ops from
# 40 (44 pointers); got_init, cuse_data, userdata, owner; then struct
# fuse_conn_info at 420: proto_major, proto_minor, max_write, max_read,
# max_readahead, capable, want.
FD_AT = 12
CONN_AT = 420
CAPABLE_AT = CONN_AT + 20
WANT_AT = CONN_AT + 24
CAP_DONT_MASK = 1 << 6
CAP_POSIX_ACL = 1 << 19


def _symbol_offset(path: str, name: bytes) -> int | None:
    """st_value of symbol `name` in the ELF64 little-endian file's .symtab."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    for sh in sections:
        if sh[1] != 2:                  # SHT_SYMTAB
            continue
        strtab = sections[sh[6]]
        str_off = strtab[4]
        off, size, entsize = sh[4], sh[5], sh[9]
        for at in range(off, off + size, entsize):
            st_name, _info, _other, _shndx, value, _size = struct.unpack_from(
                "<IBBHQQ", data, at)
            end = data.index(b"\0", str_off + st_name)
            if data[str_off + st_name:end] == name:
                return value
    return None


def _load_base(path: str) -> int | None:
    """Where the shared object `path` is mapped (its offset-0 mapping)."""
    real = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == real and int(parts[2], 16) == 0:
                return int(parts[0].split("-")[0], 16)
    return None


def request(fuse_fd: int | None) -> bool:
    """Add FUSE_DONT_MASK to the INIT reply being made; True if done.
    Call only from `Operations.init()`."""
    if struct.calcsize("P") != 8 or fuse_fd is None:
        return False
    try:
        import pyfuse3
        path = pyfuse3.__file__
        value = _symbol_offset(path, SYMBOL)
        base = _load_base(path)
    except (OSError, ValueError, struct.error) as exc:
        log.info("umask: cannot find pyfuse3's session (%s); the kernel applies it", exc)
        return False
    if value is None or base is None:
        log.info("umask: pyfuse3's session symbol not found; the kernel applies it")
        return False
    session = ctypes.c_void_p.from_address(base + value).value
    if not session:
        return False
    u32 = lambda at: ctypes.c_uint32.from_address(session + at)     # noqa: E731
    fd, major = u32(FD_AT).value, u32(CONN_AT).value
    capable, want = u32(CAPABLE_AT).value, u32(WANT_AT).value
    if not (fd == fuse_fd and major == 7 and want & CAP_POSIX_ACL
            and not want & ~capable):
        log.info("umask: libfuse's session is not laid out as expected (fd %d/%d, major %d,"
                 " capable %#x, want %#x); the kernel applies it", fd, fuse_fd, major, capable,
                 want)
        return False
    if not capable & CAP_DONT_MASK:
        log.info("umask: the kernel does not offer FUSE_DONT_MASK; it applies the umask")
        return False
    u32(WANT_AT).value = want | CAP_DONT_MASK
    return True
