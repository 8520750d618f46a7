"""The pyfuse3 adapter: turns kernel FUSE requests into calls of the
filesystem API (`daxfs.engine.fs.Filesystem`) and the answers back into replies.

What this module owns
---------------------
* the mapping request -> engine call -> reply (EntryAttributes, FileInfo,
  StatvfsData, readdir_reply);
* the errno boundary: every handler runs inside `_boundary`, the ONE place
  where exceptions become errno values.  A `DaxfsError` answers its own
  ``.errno``; `pyfuse3.FUSEError` passes through; anything else is logged
  with its traceback and answered EIO (an exception escaping a handler would
  end the whole mount).  What it logs goes through an `ErrorLog`
  (daxfs/fuse/error_log.py): the first occurrences of each kind in full,
  then a count per interval, so a shut-down mount hammered with requests
  keeps a small log; a request is logged by its numbers and names
  (`_request_text`), never by the repr of pyfuse3's objects;
* the kernel's lookup counts (lookup/create/mkdir/mknod/symlink/link and
  readdirplus entries +1, forget -n); when a count reaches zero the engine
  is told with `fs.forget(ino)` (which queues an unlinked inode, freed by
  `inactive_loop` when no request has come for a few milliseconds);
* the background group commit (`commit_loop`: `fs.commit()` once a second
  when something changed);
* cache invalidation (`_invalidate`, always via a worker thread: calling
  `pyfuse3.invalidate_inode` inside a handler deadlocks the kernel);
* the dispatch of the private control names ``user.daxfs.*`` to the
  `_control_getxattr` / `_control_setxattr` hooks (filled in by
  daxfs/control/protocol.py), and the mount probe ``user.daxfs.probe`` (answered
  here at once, with control.PROBE_VALUE).

What it leaves to others: all filesystem logic (permissions beyond the
setgid-directory rule, times, space, durability) is the engine's; mounting,
signals and unmounting are daxfs/fuse/mount.py's.

Concurrency
-----------
pyfuse3 runs every handler as a trio task in ONE thread.  Engine calls are
synchronous, so an engine call (and the Python code around it up to the
next ``await``) never interleaves with another handler: no lock is needed
for the engine.  The awaits in this module are `_invalidate` and
`_kernel_size` (worker threads that talk to the kernel, never to the
engine), the waits of READ, GETATTR and LOOKUP while a clone changes their
inode (`_after_change`) or while the kernel has not yet learnt of a
truncation (`_read_after_shrink`), and the background loops' sleeps;
`fs.commit()` itself runs in the trio thread for the same reason.  A
handler that awaits between two engine calls must not assume the engine
state stayed the same across it.

Request workers: pyfuse3 normally keeps two or more worker tasks that hand
a lock and the /dev/fuse fd back and forth for every request; since no
handler blocks, ONE worker serving requests back to back does the same
work with far less (measured: a LOOKUP round trip of ~30 µs instead of
~75 µs; daxfs/fuse/binding.py `main_args`).  A handler that waits
(`_invalidate`, `_kernel_size`, the holds above) must not stop the serving:
the kernel may need other requests answered first (pages locked by reads in
flight, the OPENDIR of `_kernel_size`).  There a temporary worker
(`binding.temporary_worker`, pyfuse3's `start_temporary_worker`) serves
requests until the main one is back, then ends.

Cache choices
-------------
* Timeouts (`ENTRY_TIMEOUT`, `ATTR_TIMEOUT`): the image is locked by the
  daemon, so every change reaches the engine through this kernel mount;
  the kernel updates or invalidates its own cache on those.  The only
  changes made behind its back (clone/dedupe into a file, poison) are
  followed by an explicit `_invalidate`.  The timeouts can therefore be
  long; we keep them at a few seconds so that values the kernel cannot
  predict (st_blocks after a write, atime) are refreshed soon.
* Negative lookups are answered ENOENT (not cached): creates always go
  through the kernel, but the saving is small and the risk is not.
* FileInfo: keep_cache=True (pages survive reopen; behind-the-back changes
  are invalidated), never direct_io (it breaks mmap(MAP_SHARED)), and the
  writeback cache stays off (the kernel would keep its own idea of i_size).
* fh is the inode number (`_ino`), with DIRECT_FH set for a file opened
  with O_DIRECT: the engine needs no per-open state (O_APPEND is done by
  the kernel, O_TRUNC is done at open, and the kernel sends reads on
  O_WRONLY handles, which must be served anyway); the adapter needs the
  one bit for `write`.
* Direct writes and the page cache: the kernel drops an inode's cached
  pages before every O_DIRECT write, and after a synchronous one
  (generic_file_direct_write), but not after an asynchronous one (io_submit,
  io_uring): FUSE's completion (fuse_aio_complete) does not, on Linux 6.18
  (upstream fix proposed in "fuse: invalidate the page cache after direct
  write", 2026).  Pages that buffered readers filled from the old bytes
  while such a write was on its way then outlive it, and every later
  buffered read, even after a reopen, returns the old bytes (xfstests
  generic/451; tests/test_direct_io.py).  So `write` on a DIRECT_FH handle
  drops the inode's pages after storing and before replying
  (`_invalidate`): a page filled before the store is dropped, one filled
  after holds the new bytes, as on a kernel filesystem.  (O_DIRECT set
  later with fcntl(F_SETFL) is not seen here: the kernel does not tell
  the daemon.)

Ownership of new inodes
-----------------------
uid is the caller's (ctx.uid).  gid is the caller's (ctx.gid) unless the
parent directory has S_ISGID, in which case it is the parent's gid, and a
new directory inherits S_ISGID (the BSD/SysV rule Linux follows).  The mode
the kernel sends is unmasked when `init` could ask for FUSE_DONT_MASK
(binding.want_dont_mask), else already masked with the caller's umask; the engine
applies ``ctx.umask`` (idempotent) unless the directory's default ACL
takes its place.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections import defaultdict

import pyfuse3
import trio

from daxfs.engine import acl
from daxfs.control import protocol as control
from . import binding
from .inode_locks import InodeLocks, between_steps
from daxfs.control.admin import is_admin_name
from daxfs.fuse.admin_server import AdminServer
from .control_server import Caller, ControlServer, own_mount_device
from daxfs.engine.errors import DaxfsError, DamagedFile, TrimFirst
from daxfs.engine.fs import STEP_BUDGET
from daxfs.engine.ranges import MAX_BYTES
from .error_log import ErrorLog
from .kernel_size import KernelSizes

log = logging.getLogger(__name__)

ENTRY_TIMEOUT = 5.0     # seconds the kernel may trust a name -> inode
ATTR_TIMEOUT = 5.0      # seconds the kernel may trust attributes
BLKSIZE = 4096          # st_blksize, f_bsize, f_frsize
NAME_MAX = 255
COMMIT_INTERVAL = 1.0   # seconds between background group commits
DIRECT_FH = 1 << 63     # fh bit: opened with O_DIRECT (inode numbers stay below it)
INACTIVE_IDLE = 0.005   # seconds without requests before unlinked inodes are freed
INACTIVE_RECHECK_MAX = 0.1   # longest wait between looks for that gap while busy
SHRINK_POLL = 0.0005    # seconds between looks at the kernel's size (`_read_after_shrink`)
SHRINK_WAIT = 5.0       # at most this long, then answer anyway

# The control protocol's names and the probe's value are daxfs/control/protocol.py's
# (the LD_PRELOAD library compares the probe value byte for byte).
CONTROL_PREFIX = control.PREFIX
PROBE_NAME = control.PROBE_NAME
PROBE_VALUE = control.PROBE_VALUE
SYSTEM_PREFIX = b"system."


def _foreign_system_name(name: bytes) -> bool:
    """A system.* attribute daxfs does not have (it has only the ACLs)."""
    return name.startswith(SYSTEM_PREFIX) and name not in acl.NAMES


ARG_TEXT_MAX = 60       # characters of one request argument in the log


def _request_text(args) -> str:
    """A request's arguments for the log: numbers, names and flags, and
    who asked (pid, uid); never the repr of pyfuse3's objects (a
    RequestContext's is an address) nor the data of a write."""
    parts, who = [], ""
    for arg in args:
        if isinstance(arg, pyfuse3.RequestContext):
            who = f" from pid {arg.pid} uid {arg.uid}"
        elif isinstance(arg, (bytes, bytearray, memoryview)) and len(arg) > ARG_TEXT_MAX // 2:
            parts.append(f"<{len(arg)} bytes>")
        elif isinstance(arg, (int, float, str, bytes)) or arg is None:
            text = repr(arg)
            parts.append(text if len(text) <= ARG_TEXT_MAX else text[:ARG_TEXT_MAX] + "...")
    return f"({', '.join(parts)}){who}"


def _boundary(*, mutates: bool = False):
    """Wrap a handler: the one place where exceptions become errno values.

    `mutates` marks handlers after which the background commit has work.
    """

    def wrap(handler):
        name = handler.__name__

        @functools.wraps(handler)
        async def run(self, *args, **kwargs):
            self._last_request = time.monotonic()
            try:
                try:
                    return await handler(self, *args, **kwargs)
                except TrimFirst as e:
                    # blocks past EOF still being freed in steps: finish
                    # that, letting other requests in, then do this one
                    await self._trim(e.ino)
                    return await handler(self, *args, **kwargs)
            except pyfuse3.FUSEError:
                raise
            except DaxfsError as exc:
                code = getattr(exc, "errno", None) or errno.EIO
                if code == errno.EIO:
                    self.errors.error(f"{name}: {type(exc).__name__}", logging.WARNING,
                                      "%s%s: %s", name, _request_text(args), exc)
                raise pyfuse3.FUSEError(code) from None
            except Exception as exc:
                self.errors.error(f"{name}: {type(exc).__name__}", logging.ERROR,
                                  "unexpected error in %s%s: answering EIO",
                                  name, _request_text(args), exc_info=True)
                raise pyfuse3.FUSEError(errno.EIO) from None
            finally:
                if mutates:
                    self._dirty = True

        return run

    return wrap


READAHEAD_KB = 1024

def tune_readahead(dev: int) -> None:
    """Let the kernel read ahead 1 MiB per request on this mount instead of
    FUSE's default 128 KiB (sequential reads measured twice as fast).  Best
    effort: needs root and sysfs."""
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(f"{READAHEAD_KB}\n")
    except OSError as exc:
        log.info("readahead left at the default (%s: %s)", path, exc.strerror)


class _Change:
    """A clone or dedupe into an inode, seen by that inode's READ and
    attribute requests while the control request runs (`_control_setxattr`).
    `active`: the 'before' invalidation is done (set from its worker
    thread); `performed`: the engine has changed the mapping; `done`: the
    'after' invalidation is done too."""

    def __init__(self):
        self.active = False
        self.performed = trio.Event()
        self.done = trio.Event()

    def finish(self) -> None:
        self.active = True
        self.performed.set()
        self.done.set()


class Operations(pyfuse3.Operations):
    """pyfuse3 request handlers over one open `Filesystem`."""

    # "." / ".." lookups are answered (fs.lookup): with them the kernel
    # offers export support, so file handles (name_to_handle_at,
    # open_by_handle_at, NFS export, fanotify) work after it has dropped
    # the inode.  Inode numbers are never reused, so a handle is never
    # mistaken for a newer file.
    supports_dot_lookup = True
    enable_writeback_cache = False
    # POSIX ACLs: the kernel enforces them (with default_permissions, which
    # daxfs always mounts with); see the xattr handlers, daxfs/engine/acl.py and
    # `init` (FUSE_DONT_MASK).
    enable_acl = True

    def __init__(self, fs, *, default_permissions: bool = True):
        super().__init__()
        self.fs = fs
        self.default_permissions = default_permissions
        self._lookups: dict[int, int] = defaultdict(int)
        self._dirty = False
        self._last_request = 0.0
        self._inactive_queued = None       # trio.Event inactive_loop sleeps on
        self.nursery = None                # set by mount.serve (extra request workers)
        self.mountpoint = None             # set by mount.serve (`_kernel_size`)
        self._kernel_sizes = None          # KernelSizes, made on first use
        self._shrunk: set[int] = set()     # see `_read_after_shrink`
        self._changes: dict[int, list[_Change]] = {}   # see `_control_setxattr`
        fs.defer_inactive = True           # freed by inactive_loop (fs.forget)
        fs.budget = STEP_BUDGET            # long work in steps (inode_locks.py)
        self.locks = InodeLocks()
        self.control = ControlServer(fs)   # daxfs/fuse/control_server.py
        self.admin = AdminServer(fs)       # daxfs/fuse/admin_server.py
        self.errors = ErrorLog(log)        # daxfs/fuse/error_log.py

    # ---------------------------------------------------------------- helpers

    def _entry(self, attr) -> pyfuse3.EntryAttributes:
        """Attr -> EntryAttributes (also used by readdir).  Never a value
        pyfuse3 cannot encode (st_size and st_blocks are signed 64-bit):
        the engine bounds them (engine/ranges.py); this is the last guard."""
        if not (0 <= attr.size <= MAX_BYTES and 0 <= attr.blocks <= MAX_BYTES // 512):
            raise DamagedFile(attr.ino, f"size {attr.size} or block count {attr.blocks}"
                                        " out of range")
        e = pyfuse3.EntryAttributes()
        e.st_ino = attr.ino
        e.generation = attr.generation
        if attr.damaged:        # never cached: each use asks, and fails with EUCLEAN
            e.entry_timeout = e.attr_timeout = 0
        else:
            e.entry_timeout = ENTRY_TIMEOUT
            e.attr_timeout = ATTR_TIMEOUT
        e.st_mode = attr.mode
        e.st_nlink = attr.nlink
        e.st_uid = attr.uid
        e.st_gid = attr.gid
        e.st_rdev = attr.rdev
        e.st_size = attr.size
        e.st_blksize = BLKSIZE
        e.st_blocks = attr.st_blocks
        e.st_atime_ns = attr.atime_ns
        e.st_mtime_ns = attr.mtime_ns
        e.st_ctime_ns = attr.ctime_ns
        return e

    def _looked_up(self, attr) -> pyfuse3.EntryAttributes:
        """Reply with `attr` and count one more kernel reference to it."""
        self._lookups[attr.ino] += 1
        return self._entry(attr)

    def _creator(self, ctx) -> dict:
        """The engine's keywords for a new inode created by `ctx`: the
        caller's ids and umask.  The set-gid directory rule and the umask
        (or a default ACL in its place) are the engine's (fs._new_inode)."""
        return {"uid": ctx.uid, "gid": ctx.gid, "umask": ctx.umask & 0o777}

    async def _invalidate(self, ino: int, attr_only: bool = False, then=None) -> None:
        """Drop the kernel's cached pages (and attributes) of `ino`.

        Runs in a worker thread, with an extra request worker meanwhile:
        the kernel may wait for this very daemon to answer a request before
        it can finish the invalidation.  `then()` runs in that thread as
        soon as the kernel is done, before this handler is resumed.
        """
        def invalidate():
            try:
                pyfuse3.invalidate_inode(ino, attr_only)
            finally:
                if then is not None:
                    then()

        binding.temporary_worker()
        try:
            await trio.to_thread.run_sync(invalidate)
        except OSError as exc:
            # ENOENT: the kernel does not know the inode: nothing is cached.
            if exc.errno != errno.ENOENT:
                log.warning("invalidate_inode(%d): %s", ino, exc)

    async def _after_change(self, ino: int, what: str) -> None:
        """Wait while a clone or dedupe into `ino` holds back `what`
        ("performed": READs; "done": attributes), see `_control_setxattr`."""
        while True:
            for change in self._changes.get(ino, ()):
                event = getattr(change, what)
                if change.active and not event.is_set():
                    break
            else:
                return
            binding.temporary_worker()
            await event.wait()

    async def _kernel_size(self, ino: int, generation: int) -> int | None:
        """The size the kernel has for `ino` now (daxfs/fuse/kernel_size.py), or
        None if it cannot be learnt.  Starts an extra request worker, which
        serves until this handler's worker waits for requests again."""
        if self._kernel_sizes is None:
            device = self._control_device()
            if self.mountpoint is None or device is None:
                return None
            self._kernel_sizes = KernelSizes(self.mountpoint, device)
        binding.temporary_worker()
        try:
            return await trio.to_thread.run_sync(self._kernel_sizes.size, ino, generation)
        except OSError as exc:
            log.debug("kernel size of inode %d: %s", ino, exc)
            return None

    async def _read_after_shrink(self, ino: int, off: int, size: int, data):
        """A READ of `ino` that ends short (EOF inside it) after the file
        was made shorter (`_shrunk`: setattr or O_TRUNC).

        The kernel zero-fills what a READ leaves out and copies the pages to
        the reader up to ITS i_size.  It writes the new i_size only after our
        reply to the truncating SETATTR, in the truncating task's own time,
        and until then ignores the size a short READ implies (the inode is
        FUSE_I_SIZE_UNSTABLE): a reader whose READ we answer in that window
        gets zeros up to the old size, bytes the file never held (measured:
        8 KiB of zeros while another process truncates 8 KiB to 0, with the
        plain pyfuse3 passthrough too).  So the short answer waits until the
        kernel's size is no larger than the EOF it implies.  That cannot
        deadlock: the truncating task writes i_size before it waits for the
        pages this READ holds locked (truncate_pagecache).  When the kernel
        has caught up with the engine, the inode leaves `_shrunk`."""
        deadline = trio.current_time() + SHRINK_WAIT
        generation = self.fs.getattr(ino).generation
        while len(data) < size:
            known = await self._kernel_size(ino, generation)
            if known is None:
                break
            if known <= self.fs.getattr(ino).size:
                self._shrunk.discard(ino)
            if known <= off + len(data):
                break
            if trio.current_time() > deadline:
                log.warning("read(%d): the kernel still has size %d > %d after %.0f s",
                            ino, known, off + len(data), SHRINK_WAIT)
                break
            await trio.sleep(SHRINK_POLL)    # (`_kernel_size`'s extra worker serves)
            data = self.fs.read(ino, off, size)    # the file may have changed meanwhile
        return data

    async def commit_loop(self, interval: float = COMMIT_INTERVAL) -> None:
        """Group commit: make every change durable once per `interval`."""
        while True:
            await trio.sleep(interval)
            self.errors.flush()
            if self._dirty:
                self._dirty = False
                try:
                    self.fs.commit(durable=False)
                except DaxfsError as exc:   # e.g. shut down
                    self.errors.error("commit", logging.WARNING,
                                      "background commit failed: %s", exc)
                except Exception:
                    self.errors.error("commit", logging.ERROR, "background commit failed",
                                      exc_info=True)

    async def inactive_loop(self, idle: float = INACTIVE_IDLE) -> None:
        """Free the unlinked inodes the kernel has forgotten (fs.forget
        queues them) once no request has come for `idle` seconds, one per
        scheduling turn, stopping as soon as requests come again: unlink
        answers at once and the freeing happens in the gaps.

        It sleeps on `_inactive_queued` while nothing is queued (an idle
        mount does not wake up), and while requests keep coming it looks
        for a gap less and less often (up to INACTIVE_RECHECK_MAX apart):
        each timed wake-up is a trip through trio's cancellation."""
        while True:
            if not (self.fs.pending_inactive() or self.fs.pending_trims()):
                self._inactive_queued = trio.Event()
                await self._inactive_queued.wait()
            delay = idle
            await trio.sleep(idle)
            while time.monotonic() - self._last_request < idle:
                delay = min(2 * delay, INACTIVE_RECHECK_MAX)
                await trio.sleep(delay)
            while self.fs.pending_inactive() or self.fs.pending_trims():
                if time.monotonic() - self._last_request < idle:
                    break
                try:
                    self._background_step()
                except DaxfsError as exc:   # e.g. shut down: freed at the next mount
                    self.errors.error("free in background", logging.WARNING,
                                      "freeing blocks in the background: %s", exc)
                except Exception:
                    self.errors.error("free in background", logging.ERROR,
                                      "freeing blocks in the background failed", exc_info=True)
                self._dirty = True
                await trio.sleep(0)

    def _wake_background(self) -> None:
        """Something was queued for `inactive_loop` (an unlinked inode, a
        truncation's blocks): wake it if it sleeps."""
        queued = self._inactive_queued
        if queued is not None and not queued.is_set() and \
                (self.fs.pending_inactive() or self.fs.pending_trims()):
            queued.set()

    def _background_step(self) -> None:
        """One bounded step of freeing: blocks past EOF of a file truncated
        in steps (unless a long request holds it), else the oldest unlinked
        inode."""
        for ino in self.fs.pending_trims():
            if not self.locks.busy(ino):
                self.fs.trim_step(ino)
                return
        if self.fs.pending_inactive():
            self.fs.reap_step()

    async def _trim(self, ino: int) -> None:
        """Free the blocks past EOF of `ino` in steps, other requests in
        between, holding the inode."""
        async with self.locks.hold(ino):
            while not self.fs.trim_step(ino):
                await between_steps()

    def forget_all(self) -> None:
        """After unmount: drop the references the kernel never forgot."""
        for ino in list(self._lookups):
            self._lookups.pop(ino, None)
            try:
                self.fs.forget(ino)
            except DaxfsError as exc:
                self.errors.error("forget at unmount", logging.WARNING,
                                  "forget(%d) at unmount: %s", ino, exc)
            except Exception:
                self.errors.error("forget at unmount", logging.ERROR,
                                  "forget(%d) at unmount failed", ino, exc_info=True)
        self.errors.flush(everything=True)

    # --------------------------------------------------------- names, inodes

    @_boundary()
    async def lookup(self, parent_inode, name, ctx):
        attr = self.fs.lookup(parent_inode, name)
        if attr.ino in self._changes:
            await self._after_change(attr.ino, "done")
            attr = self.fs.lookup(parent_inode, name)
        return self._looked_up(attr)

    async def forget(self, inode_list):
        # Must never raise: it answers no request.
        for ino, n in inode_list:
            try:
                left = self._lookups.get(ino, 0) - n
                if left > 0:
                    self._lookups[ino] = left
                    continue
                self._lookups.pop(ino, None)
                self._shrunk.discard(ino)
                if ino != pyfuse3.ROOT_INODE:
                    self.fs.forget(ino)
                    self._dirty = True
                    self._wake_background()
            except DaxfsError as exc:       # e.g. shut down: the inode is freed at next open
                self.errors.error("forget", logging.WARNING, "forget(%d, %d): %s", ino, n, exc)
            except Exception:
                self.errors.error("forget", logging.ERROR, "forget(%d, %d) failed", ino, n,
                                  exc_info=True)

    @_boundary()
    async def getattr(self, inode, ctx):
        if inode in self._changes:
            await self._after_change(inode, "done")
        return self._entry(self.fs.getattr(inode))

    @_boundary(mutates=True)
    async def setattr(self, inode, attr, fields, fh, ctx):
        kw = {}
        if fields.update_mode:
            kw["mode"] = attr.st_mode & 0o7777
        if fields.update_uid:
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            kw["gid"] = attr.st_gid
        if fields.update_size:
            kw["size"] = attr.st_size
            if attr.st_size < self.fs.getattr(inode).size:
                self._shrunk.add(inode)
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        if fields.update_ctime:
            kw["ctime_ns"] = attr.st_ctime_ns
        entry = self._entry(self.fs.setattr(inode, **kw))
        self._wake_background()         # a truncation's blocks may wait for it
        return entry

    @_boundary()
    async def readlink(self, inode, ctx):
        return self.fs.readlink(inode)

    @_boundary(mutates=True)
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._looked_up(self.fs.mknod(parent_inode, name, mode, rdev=rdev,
                                             **self._creator(ctx)))

    @_boundary(mutates=True)
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._looked_up(self.fs.mkdir(parent_inode, name, mode, **self._creator(ctx)))

    @_boundary(mutates=True)
    async def symlink(self, parent_inode, name, target, ctx):
        return self._looked_up(self.fs.symlink(parent_inode, name, target, ctx.uid, ctx.gid))

    @_boundary(mutates=True)
    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self._looked_up(self.fs.link(inode, new_parent_inode, new_name))

    @_boundary(mutates=True)
    async def unlink(self, parent_inode, name, ctx):
        self.fs.unlink(parent_inode, name)

    @_boundary(mutates=True)
    async def rmdir(self, parent_inode, name, ctx):
        self.fs.rmdir(parent_inode, name)

    @_boundary(mutates=True)
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        # RENAME_NOREPLACE/EXCHANGE/WHITEOUT: the kernel's values (1, 2, 4)
        # are the engine's too; a whiteout belongs to the caller.
        self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags,
                       ctx.uid, ctx.gid)

    # ------------------------------------------------------------ file data

    def _file_info(self, ino: int, flags: int = 0) -> pyfuse3.FileInfo:
        # strictatime: every open drops the cached pages, so that the reads
        # after it reach the engine and update atime (FUSE inodes are
        # S_NOATIME: a page-cache hit is never seen here).
        keep = not getattr(self.fs, "strictatime", False)
        fh = ino | DIRECT_FH if flags & os.O_DIRECT else ino
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep, direct_io=False)

    @staticmethod
    def _ino(fh: int) -> int:
        """The inode number a file handle stands for."""
        return fh & ~DIRECT_FH

    @_boundary(mutates=True)
    async def open(self, inode, flags, ctx):
        # Access modes were checked by the kernel (default_permissions) and
        # O_APPEND is the kernel's business.  O_TRUNC is ours: libfuse 3
        # negotiates FUSE_CAP_ATOMIC_O_TRUNC by default, so the kernel sends
        # O_TRUNC in the open flags instead of a setattr(size=0) (pyfuse3's
        # docs say otherwise; measured on Linux 6.18 + libfuse 3.14).
        if flags & os.O_TRUNC:   # (Linux truncates even with O_RDONLY)
            if self.fs.getattr(inode).size:
                self._shrunk.add(inode)
            self.fs.setattr(inode, size=0)
            self._wake_background()
        return self._file_info(inode, flags)

    @_boundary(mutates=True)
    async def create(self, parent_inode, name, mode, flags, ctx):
        attr = self.fs.mknod(parent_inode, name, stat.S_IFREG | (mode & 0o7777),
                             **self._creator(ctx))
        return self._file_info(attr.ino, flags), self._looked_up(attr)

    @_boundary()
    async def read(self, fh, off, size):
        fh = self._ino(fh)
        if fh in self._changes:
            await self._after_change(fh, "performed")
        data = self.fs.read(fh, off, size)
        if len(data) < size and fh in self._shrunk:
            data = await self._read_after_shrink(fh, off, size, data)
        return data

    @_boundary(mutates=True)
    async def write(self, fh, off, buf):
        ino = self._ino(fh)
        done = self.fs.write(ino, off, buf)
        if fh & DIRECT_FH:
            await self._invalidate(ino)     # see "Direct writes" at the top
        return done

    @_boundary()
    async def flush(self, fh):
        # Data is in the mapping already and durability is fsync's and the
        # background commit's business, so close() has nothing to wait for:
        # ENOSYS tells the kernel never to send FLUSH again (fc->no_flush),
        # which saves a round trip on every close.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_boundary()
    async def release(self, fh):
        self.fs.release(self._ino(fh))

    @_boundary()
    async def fsync(self, fh, datasync):
        self.fs.fsync(self._ino(fh))

    # -------------------------------------------- space, holes and copies
    # FALLOCATE, LSEEK (SEEK_DATA/SEEK_HOLE) and COPY_FILE_RANGE reach us
    # after the VFS's own checks (vfs_fallocate, generic_copy_file_checks:
    # EBADF for a file not open for writing, EXDEV across filesystems...);
    # the engine checks the rest.  Before FALLOCATE and COPY_FILE_RANGE the
    # kernel drops set-ID bits and file capabilities as for a write
    # (file_modified: a SETATTR and a REMOVEXATTR), and after our reply it
    # drops the cached pages of the range changed (truncate_pagecache_range,
    # truncate_inode_pages_range) and updates i_size itself: nothing here
    # changes bytes outside that range, so there is nothing else to
    # invalidate.  None of them may ever answer ENOSYS: the kernel would
    # stop sending them for the rest of the mount.

    @_boundary(mutates=True)
    async def fallocate(self, fh, mode, offset, length):
        # (a punch frees in steps, other requests in between)
        ino = self._ino(fh)
        async with self.locks.hold(ino):
            while not self.fs.fallocate(ino, mode, offset, length):
                await between_steps()

    @_boundary()
    async def lseek(self, fh, offset, whence):
        if whence == os.SEEK_DATA:
            return self.fs.seek_data(self._ino(fh), offset)
        if whence == os.SEEK_HOLE:
            return self.fs.seek_hole(self._ino(fh), offset)
        raise pyfuse3.FUSEError(errno.EINVAL)

    @_boundary(mutates=True)
    async def copy_file_range(self, fh_in, off_in, fh_out, off_out, length, flags):
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return self.fs.copy_range(self._ino(fh_in), off_in, self._ino(fh_out), off_out, length)

    # ----------------------------------------------------------- directories

    @_boundary()
    async def opendir(self, inode, ctx):
        # The kernel opens only directories here; readdir checks again.
        return inode

    @_boundary()
    async def readdir(self, fh, start_id, token):
        for ent in self.fs.readdir(fh, start_id):
            if ent.next_pos == start_id:
                # A cookie that does not move makes getdents loop forever in
                # the caller: end the listing and say so instead.
                log.error("readdir(%d, %d): engine returned %r with the same cookie",
                          fh, start_id, ent.name)
                break
            if not pyfuse3.readdir_reply(token, ent.name, self._entry(ent.attr), ent.next_pos):
                break
            if ent.name not in (b".", b".."):
                self._lookups[ent.attr.ino] += 1

    @_boundary()
    async def releasedir(self, fh):
        return None

    @_boundary()
    async def fsyncdir(self, fh, datasync):
        self.fs.fsync(fh)

    @_boundary()
    async def statfs(self, ctx):
        st = self.fs.statfs()
        scale = st.block_size / BLKSIZE
        s = pyfuse3.StatvfsData()
        s.f_bsize = BLKSIZE
        s.f_frsize = BLKSIZE
        s.f_blocks = int(st.total_blocks * scale)
        s.f_bfree = int(st.free_blocks * scale)
        s.f_bavail = int(st.avail_blocks * scale)
        s.f_files = st.total_inodes
        s.f_ffree = st.free_inodes
        s.f_favail = st.free_inodes
        s.f_namemax = min(st.name_max, NAME_MAX)
        return s

    # -------------------------------------------------------------- xattrs

    # POSIX ACLs (enable_acl): the kernel checks permissions against them
    # and sends them as system.posix_acl_access / _default; the engine
    # stores them and keeps the mode in step (daxfs/engine/acl.py).  No other
    # system.* name exists: setting one answers EOPNOTSUPP, reading or
    # removing one ENODATA.

    @_boundary()
    async def getxattr(self, inode, name, ctx):
        if name.startswith(CONTROL_PREFIX):
            if name == PROBE_NAME:
                return PROBE_VALUE
            if is_admin_name(name):
                return self.admin.serve_get(ctx.uid, name)
            return await self._control_getxattr(inode, name, ctx)
        if _foreign_system_name(name):
            raise pyfuse3.FUSEError(errno.ENODATA)
        return self.fs.getxattr(inode, name)

    @_boundary(mutates=True)
    async def setxattr(self, inode, name, value, ctx):
        # pyfuse3 has already applied XATTR_CREATE / XATTR_REPLACE (by asking
        # getxattr first), so the engine gets flags=0.
        if name.startswith(CONTROL_PREFIX):
            if is_admin_name(name):
                return await self._admin_setxattr(name, value, ctx)
            return await self._control_setxattr(inode, name, value, ctx)
        if name in acl.NAMES:
            caller = Caller.from_ctx(ctx)
            self.fs.setxattr(inode, name, value, fsetid=caller.uid == 0,
                             in_group=caller.in_group)
            return
        if _foreign_system_name(name):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        self.fs.setxattr(inode, name, value)

    @_boundary()
    async def listxattr(self, inode, ctx):
        return self.fs.listxattr(inode)

    @_boundary(mutates=True)
    async def removexattr(self, inode, name, ctx):
        if name.startswith(CONTROL_PREFIX) or _foreign_system_name(name):
            # Control names are requests, never stored; nor is system.* but ACLs.
            raise pyfuse3.FUSEError(errno.ENODATA)
        self.fs.removexattr(inode, name)

    async def _admin_setxattr(self, name, value, ctx) -> None:
        """Root's requests to the daemon (daxfs/fuse/admin_server.py): inject poison and
        run the failure handler, then drop the cached pages of every file
        that owns bad bytes so their next load (read or mmap fault) asks us
        and fails."""
        for ino in self.admin.serve_set(ctx.uid, name, value):
            await self._invalidate(ino)

    def init(self):
        """FUSE INIT: ask the kernel to leave the umask to daxfs (for
        default ACLs); the mount exists now: learn its st_dev (the control
        protocol's EXDEV check) from mountinfo, never through the mount."""
        if binding.want_dont_mask():
            log.info("umask: left to daxfs (FUSE_DONT_MASK)")
        else:
            log.info("umask: the kernel does not offer FUSE_DONT_MASK; it applies it")
        try:
            dev = self._control_device()
        except Exception:
            log.exception("cannot learn the mount's device: clones will answer EXDEV")
            return
        if dev is None:
            return
        # Not now: the kernel sets the mount's readahead from our INIT reply
        # (libfuse echoes the kernel's own 128 KiB) after this returns.
        nursery = getattr(self, "nursery", None)
        if nursery is None:
            tune_readahead(dev)
        else:
            nursery.start_soon(self._tune_readahead_after_init, dev)

    async def _tune_readahead_after_init(self, dev: int) -> None:
        await trio.sleep(0.05)
        tune_readahead(dev)

    def _control_device(self):
        if self.control.device is None:
            pmem = getattr(getattr(self.fs, "vol", None), "pmem", None)
            if pmem is not None:
                self.control.device = own_mount_device(pmem.path)
        return self.control.device

    async def _control_getxattr(self, inode, name, ctx) -> bytes:
        """The control protocol's reads (daxfs/fuse/control_server.py)."""
        return self.control.getxattr(Caller.from_ctx(ctx), inode, name)

    async def _control_setxattr(self, inode, name, value, ctx) -> None:
        """The control protocol's requests (daxfs/fuse/control_server.py): check,
        drop the kernel's cached pages of source and destination, change
        the mapping, drop the destination's again, reply.  Invalidation
        runs in a worker thread (`_invalidate`), never in the handler.

        Meanwhile the destination's READs and attributes are held back
        (`_Change`, `_after_change`).  The kernel copies a cached page to a
        reader up to the i_size it reads AFTER the page was filled, so a
        page filled short before a clone grew the file (zeros past the old
        EOF), read with the size from after it, gives zeros the file never
        held (measured: 4 KiB of zeros while 'a' was cloned into an empty
        file).  Hence:
        * a READ that comes once the 'before' invalidation is done waits for
          the new mapping and is answered from it (before the 'after'
          invalidation, which waits for the pages such a READ locks); READs
          during the 'before' invalidation are answered at once, it may be
          waiting for their pages;
        * GETATTR and LOOKUP wait until the 'after' invalidation is done:
          the kernel drops the attributes first and the pages second, so a
          size answered in between would meet pages from before."""
        self._control_device()
        action = self.control.prepare(Caller.from_ctx(ctx), inode, name, value)
        async with self.locks.hold(*action.before):
            await self._run_control(action)

    async def _run_control(self, action) -> None:
        """`_control_setxattr`'s body, with the files held: invalidate,
        change the mapping in steps (others' requests in between), invalidate
        again."""
        changes = [(ino, _Change()) for ino in action.after]
        for ino, change in changes:
            self._changes.setdefault(ino, []).append(change)

        def activate():
            for _, change in changes:
                change.active = True

        try:
            for i, ino in enumerate(action.before):
                await self._invalidate(ino, then=activate if i == len(action.before) - 1 else None)
            activate()
            for _ in action.steps():
                await between_steps()
            for _, change in changes:
                change.performed.set()
            for ino in action.after:
                await self._invalidate(ino)
        finally:
            for ino, change in changes:
                change.finish()
                waiting = self._changes[ino]
                waiting.remove(change)
                if not waiting:
                    del self._changes[ino]

    # ---------------------------------------------------------- permissions

    @_boundary()
    async def access(self, inode, mode, ctx):
        """Only asked without `default_permissions` (daxfs always mounts
        with it); kept so that such a mount is not wide open."""
        attr = self.fs.getattr(inode)
        if ctx.uid == 0:
            if mode & os.X_OK and not stat.S_ISDIR(attr.mode) and not attr.mode & 0o111:
                return False
            return True
        if ctx.uid == attr.uid:
            bits = (attr.mode >> 6) & 7
        elif attr.gid == ctx.gid or attr.gid in pyfuse3.get_sup_groups(ctx.pid):
            bits = (attr.mode >> 3) & 7
        else:
            bits = attr.mode & 7
        return (mode & bits) == mode
