"""How a request worker waits for the next FUSE request.

pyfuse3 3.5's request loop (`pyfuse3._session_loop`) calls the module
function `pyfuse3._wait_fuse_readable` before it reads each request.  That
function takes a `trio.Lock` with ``async with``, and trio's lock always
yields to the scheduler once, even when nobody holds it: a whole scheduler
round trip per request on top of the wait for the fd itself.  daxfs serves
with ONE worker (fuse_ops, "Request workers"), so the lock is almost never
held by anyone else.  `install` replaces the function with `wait_readable`
below, which takes the lock without yielding when it is free and otherwise
waits for it as before.

The wait for the fd itself (`trio.lowlevel.wait_readable`) is a second
round trip through the scheduler, and it is often not needed: the kernel
sends an unlink's UNLINK right after the answer to its LOOKUP, without the
caller returning to user space, so the next request is often queued already
when the worker comes back.  `wait_readable` first asks the fd with a
zero-timeout poll(2) (one system call) and, when a request is
there, returns at once.  It does that at most SKIP_MAX times in a row and
then goes through the scheduler, so the other tasks (the commit, the
inactive-inode reaper, thread completions, cancellation) still run every
few requests under a steady stream.

scripts/bench_daemon_cpu.py --pyfuse3-wait measures the difference
(DAXFS_REQUEST_WAIT=pyfuse3 keeps pyfuse3's own function).

The replacement keeps what the original does for the loop:

* only one task waits on the fd at a time (trio allows one waiter per fd);
* False ends the calling worker: when the session is closing
  (`pyfuse3.terminate` closes the fd for trio: ClosedResourceError), after
  `terminate` was called, and for a temporary extra worker (fuse_ops
  `_extra_worker`, task name `EXTRA_WORKER`) as soon as another worker is
  waiting: pyfuse3's loop ends such a worker through a count of waiting
  tasks that only its own function keeps, so this function does it.

It is installed only when pyfuse3 has exactly that loop (same check as
fuse_ops.SINGLE_WORKER) and the process has exactly one /dev/fuse fd.
"""

from __future__ import annotations

import logging
import os
import select

import pyfuse3
import trio

log = logging.getLogger(__name__)

EXTRA_WORKER = "daxfs-extra-worker"
# At most this many requests in a row are read without going through the
# scheduler (see the module docstring); then the wait yields once.
SKIP_MAX = 8


class _Waiter:
    """The state of the replacement: the fd (and a poll object on it), the
    lock, how many tasks are inside `wait_readable`, and how many requests
    in a row were taken without the scheduler."""

    def __init__(self, fd: int):
        self.fd = fd
        self.lock = trio.Lock()
        self.waiting = 0
        self.ended = False
        self.poll = select.poll()
        self.poll.register(fd, select.POLLIN)
        self.skipped = 0

    async def wait_readable(self) -> bool:
        """True once the fd has a request to read; False: end this worker."""
        if self.ended:
            return False
        if self.waiting and trio.lowlevel.current_task().name == EXTRA_WORKER:
            return False
        self.waiting += 1
        try:
            lock = self.lock
            try:
                lock.acquire_nowait()
            except trio.WouldBlock:
                await lock.acquire()
            try:
                if self.ended:
                    return False
                if self.skipped < SKIP_MAX and self.poll.poll(0):
                    self.skipped += 1
                else:
                    self.skipped = 0
                    await trio.lowlevel.wait_readable(self.fd)
            finally:
                lock.release()
        except trio.ClosedResourceError:
            return False
        finally:
            self.waiting -= 1
        return True


_waiter: _Waiter | None = None     # the installed replacement's state
_original = None                   # pyfuse3's own function


def fuse_fd() -> int | None:
    """The one fd of this process open on /dev/fuse, or None."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.append(int(name))
        except OSError:
            continue
    return found[0] if len(found) == 1 else None


def install() -> bool:
    """Replace pyfuse3's wait (call after pyfuse3.init); True if done."""
    global _waiter, _original
    if os.environ.get("DAXFS_REQUEST_WAIT") == "pyfuse3":
        return False
    current = getattr(pyfuse3, "_wait_fuse_readable", None)
    if not callable(current) or not hasattr(pyfuse3, "_session_loop"):
        return False
    fd = fuse_fd()
    if fd is None:
        log.info("request wait: not exactly one /dev/fuse fd; keeping pyfuse3's")
        return False
    if _original is None:
        _original = current
    _waiter = _Waiter(fd)
    pyfuse3._wait_fuse_readable = _waiter.wait_readable
    log.info("request wait: daxfs's, on /dev/fuse fd %d", fd)
    return True


def ending() -> None:
    """Tell the workers to end when they next wait (with pyfuse3.terminate)."""
    if _waiter is not None:
        _waiter.ended = True


def uninstall() -> None:
    """Put pyfuse3's own wait back (after the main loop ended)."""
    global _waiter
    if _original is not None:
        pyfuse3._wait_fuse_readable = _original
    _waiter = None
