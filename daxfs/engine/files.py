"""Opening and writing the files that daxfs, running as root, keeps beside an
image (its bad-block list, the daemon's log) or makes (a new image): paths
that other users may be able to prepare in advance.

* `open_regular` never follows a symlink at the last component
  (O_NOFOLLOW), never blocks on a FIFO (O_NONBLOCK, cleared after the
  check), and accepts only a regular file of bounded size (fstat on the
  descriptor it opened, so nothing can be swapped in between);
* `read_small` reads such a file whole, or None if there is none;
* `replace` writes a file atomically: a new file from mkstemp in the
  target's own directory, fsync'ed, renamed over the target (a rename
  replaces a symlink itself, never what it points at) and the directory
  fsync'ed.

A refusal is `UnsafeFile` with one line that says what was found and where.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile

from .errors import UnsafeFile


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str, flags: int = os.O_RDONLY, mode: int = 0o600, *,
                 max_size: int | None = None, what: str = "file") -> int:
    """A descriptor of the regular file at `path` (O_CLOEXEC); `flags` may
    add O_WRONLY/O_RDWR/O_CREAT/O_APPEND/O_EXCL.  UnsafeFile if the last
    component is a symlink or not a regular file, or if it holds more than
    `max_size` bytes."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeFile(f"{path}: the {what} is a symbolic link; refusing to follow it"
                             " (remove it)") from None
        if e.errno == errno.ENXIO:       # a FIFO with no writer, opened for writing
            raise UnsafeFile(f"{path}: the {what} is a FIFO, not a regular file"
                             " (remove it)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{path}: the {what} is {_kind(st.st_mode)}, not a regular file"
                             " (remove it)")
        if max_size is not None and st.st_size > max_size:
            raise UnsafeFile(f"{path}: the {what} holds {st.st_size} bytes, more than a"
                             f" {what} ever needs ({max_size}); refusing to read it")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small(path: str, max_size: int, what: str = "file") -> bytes | None:
    """The whole content of a small regular file, or None if it does not
    exist."""
    try:
        fd = open_regular(path, max_size=max_size, what=what)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(max_size + 1)[:max_size]


def replace(path: str, data: bytes, mode: int = 0o644) -> None:
    """Make `path` hold `data`, atomically and durably."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
