"""The daemon side of the control protocol (daxfs/control/protocol.py): what a
``user.daxfs.*`` getxattr or setxattr on a file of this mount does.

FUSE-free and unit-testable: it takes the open `Filesystem`, the caller
(`Caller`, daxfs/fuse/callers.py: uid, gid, pid of the calling thread,
supplementary groups read from /proc/<pid>/status when they matter), the inode the xattr was set or
read on, the name and the value; it performs the request or raises the
engine error (`DaxfsError`) whose ``.errno`` is what XFS gives.  The FUSE
adapter (daxfs/fuse/operations.py, `_control_getxattr` / `_control_setxattr`)
only turns the answer into a reply and does the cache invalidation.

Requests
--------
getxattr (`ControlServer.getxattr`)
    ``user.daxfs.probe`` -> control.PROBE_VALUE (every inode);
    ``user.daxfs.result`` -> the caller's last dedupe result for this inode
    (ENODATA if none; reading does not consume it);
    ``user.daxfs.fiemap.S.L.F`` -> `parse_fiemap_name`, the engine's
    extents overlapping [S, S+L), at most FIEMAP_MAX_EXTENTS_PER_CALL
    (FIEMAP_EXTENT_LAST stays only on the file's real last extent: the
    engine sets it, and cutting the list never adds it) -> `encode_fiemap`;
    any other control name -> ENODATA (nothing is ever stored there).

setxattr (`ControlServer.prepare` then `Action.perform`)
    ``user.daxfs.clone`` / ``user.daxfs.dedupe`` with a 64-byte REQUEST;
    any other control name, a malformed, oversized or mismatched (op vs
    name) value -> EINVAL, never a crash.

Checks of a clone, in the kernel's order (the client has already made the
ones that need the file handles: destination open for writing, not
O_APPEND, source open for reading)
    1. ``src_dev`` must be this mount's st_dev -> else EXDEV (the adapter
       learns it once at FUSE init with `own_mount_device`, from
       mountinfo, without touching the mount; until it is known every
       request is EXDEV);
    2. `check_source_fd`: the calling thread really holds
       ``src_fd`` open for reading on this mount, naming ``src_ino`` ->
       else EBADF (EACCES if the caller's /proc cannot be read).  A
       request without a descriptor (``src_fd`` -1) is refused with EBADF:
       an inode number alone is a capability nobody checks (see control.py);
    3. the caller may read the source by its access ACL, else by its mode
       bits (owner, then group incl. supplementary groups, then other; uid
       0 bypasses, as with CAP_DAC_OVERRIDE) -> else EACCES.  Stricter
       than the kernel in one corner: a descriptor opened before a chmod
       (or received over a socket) is enough for FICLONE, not for us;
    4. either file a directory -> EISDIR; either not a regular file ->
       EINVAL;
    5. the engine's `clone_range` (generic_remap_checks: alignment EINVAL,
       overlap within one file EINVAL, to-EOF rules; no rmap/reflink
       feature -> EOPNOTSUPP; ENOSPC, EFBIG...), which drops the
       destination's file capability and, unless the caller is uid 0
       (CAP_FSETID), its set-id bits (set-group-ID only if the file is
       group-executable or the caller not in its group), as the kernel
       does before a write.

A dedupe makes checks 1-3 the same way (the source for a dedupe must be
readable too), then the engine's `dedupe_range` for this one destination,
whose outcome (SAME with the byte count, DIFFERS, or a -errno status for
the destination) is stored in the `ResultTable` under (ctx.pid, inode) for
``user.daxfs.result``.  The table entry is dropped first, so a request that
fails as a whole (the setxattr answers an errno) never leaves an older
result readable.

Invalidation
------------
`prepare` makes every check that needs no change and returns an `Action`
naming the inodes whose cached pages and attributes the adapter must drop
*before* the mapping changes (``before``: source and destination) and
*after* it (``after``: the destination).  The adapter awaits in between
(the invalidation runs in a worker thread, see PLATFORM.md), so `perform`
re-reads the inodes and lets the engine check everything again: nothing
decided in `prepare` is trusted across the await except the caller's
identity and the descriptor check.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import Callable, Iterator

from daxfs import host
from daxfs.control import protocol as control
from daxfs.engine import acl
from daxfs.engine.attrs import FILE_DEDUPE_RANGE_DIFFERS, DedupeResult
from daxfs.engine.format import BLOCK_SIZE
from daxfs.fuse.callers import Caller, check_source_fd, may_read
from daxfs.engine.errors import (BadFileDescriptor, Corrupted, CrossDevice, DaxfsError,
                                 InvalidArgument, IsADirectory, NoAttribute, NoSpace, NotFound,
                                 PermissionDenied)

__all__ = ["Action", "ControlServer", "own_mount_device"]


def own_mount_device(image: str, mountinfo: str = host.MOUNTINFO) -> int | None:
    """The st_dev of this daemon's mount of `image`, from mountinfo alone
    (a stat through the mount from inside the daemon could deadlock).

    The mount is found by its source (host.mount_source); the image is
    locked by its daemon, so at most one mount has that source.  None if no
    mount, or more than one candidate device, matches (then every clone or
    dedupe answers EXDEV rather than guess)."""
    want = host.mount_source(image)
    try:
        found = {m.dev for m in host.mounts(mountinfo)
                 if m.is_daxfs and m.source == want}
    except OSError:
        return None
    return found.pop() if len(found) == 1 else None


@dataclass
class Action:
    """A checked setxattr request: hold `before` (inode_locks), invalidate
    `before`, run `steps()` (a generator: one bounded step of the engine's
    work per item, the caller lets other requests in between), invalidate
    `after`, reply.  `perform()` runs every step at once."""

    before: tuple[int, ...]
    after: tuple[int, ...]
    steps: Callable[[], Iterator[None]]

    def perform(self):
        """Every step at once; the request's outcome (the bytes cloned, the
        DedupeResult)."""
        steps = self.steps()
        while True:
            try:
                next(steps)
            except StopIteration as stop:
                return stop.value


def _unique(*inos: int) -> tuple[int, ...]:
    return tuple(dict.fromkeys(inos))


class ControlServer:
    """The control requests of one mount over one open Filesystem.

    `device` is the mount's st_dev (None until known: every clone or
    dedupe is then EXDEV, since no source can be proven to be ours).
    `check_fd` is check_source_fd (replaceable in unit tests that
    have no real caller)."""

    def __init__(self, fs, device: int | None = None, *,
                 results: control.ResultTable | None = None,
                 check_fd=check_source_fd):
        self.fs = fs
        self.device = device
        self.results = results if results is not None else control.ResultTable()
        self.check_fd = check_fd

    # ----------------------------------------------------------- getxattr

    def getxattr(self, caller: Caller, ino: int, name: bytes) -> bytes:
        name = bytes(name)
        if name == control.PROBE_NAME:
            return control.PROBE_VALUE
        if name == control.RESULT_NAME:
            return self.results.value(caller.pid, ino)
        if name.startswith(control.FIEMAP_PREFIX):
            return self._fiemap(ino, name)
        raise NoAttribute(f"{name!r} is a control name that holds no value")

    def _fiemap(self, ino: int, name: bytes) -> bytes:
        start, length, _flags = control.parse_fiemap_name(name)
        # FIEMAP_FLAG_SYNC: the data is in the mapping already (the client
        # wrote back the kernel's dirty pages before asking).
        extents = self.fs.fiemap(ino, start, length, control.FIEMAP_MAX_EXTENTS_PER_CALL)
        return control.encode_fiemap(extents)

    # ----------------------------------------------------------- setxattr

    def prepare(self, caller: Caller, ino: int, name: bytes, value) -> Action:
        """Check a setxattr request up to the engine call; raise its errno
        or return the Action that performs it."""
        name = bytes(name)
        if name == control.DEDUPE_NAME:
            # before anything can fail: a failed request leaves no result
            self.results.drop(caller.pid, ino)
            req = self._request(caller, name, value, control.OP_DEDUPE)
            return Action(_unique(req.src_ino, ino), (ino,),
                          lambda: self._dedupe(caller, ino, req))
        if name == control.CLONE_NAME:
            req = self._request(caller, name, value, control.OP_CLONE)
            self._check_types(req.src_ino, ino)
            return Action(_unique(req.src_ino, ino), (ino,),
                          lambda: self._clone(caller, ino, req))
        raise InvalidArgument(f"{name!r} is not a control request")

    def setxattr(self, caller: Caller, ino: int, name: bytes, value) -> tuple[int, ...]:
        """prepare + perform in one step (no invalidation in between, for
        callers without a kernel cache); returns the inodes to invalidate."""
        action = self.prepare(caller, ino, name, value)
        action.perform()
        return _unique(*action.before, *action.after)

    def _request(self, caller: Caller, name: bytes, value, op: int) -> control.Request:
        if value is None or len(value) != control.REQUEST_SIZE:
            raise InvalidArgument(f"{name!r}: a request is {control.REQUEST_SIZE} bytes")
        req = control.decode_request(value)
        if req.op != op:
            raise InvalidArgument(f"{name!r} carries op {req.op}")
        if self.device is None or req.src_dev != self.device:
            raise CrossDevice("the source is not on this file system")
        self.check_fd(caller.pid, req.src_fd, req.src_dev, req.src_ino)
        self._check_readable(caller, req.src_ino)
        return req

    def _source_attr(self, src_ino: int):
        try:
            return self.fs.getattr(src_ino)
        except NotFound:
            # the descriptor named it a moment ago: it is not ours to give
            raise BadFileDescriptor(f"source inode {src_ino} is gone") from None

    def _check_readable(self, caller: Caller, src_ino: int) -> None:
        attr = self._source_attr(src_ino)
        if not may_read(attr, caller, self.fs.get_acl(src_ino, acl.ACCESS)):
            raise PermissionDenied(f"uid {caller.uid} may not read inode {src_ino}")

    def _check_types(self, src_ino: int, dst_ino: int) -> None:
        src = self._source_attr(src_ino)
        dst = self.fs.getattr(dst_ino)
        if stat.S_ISDIR(src.mode) or stat.S_ISDIR(dst.mode):
            raise IsADirectory("cannot clone to or from a directory")
        if not stat.S_ISREG(src.mode) or not stat.S_ISREG(dst.mode):
            raise InvalidArgument("can only clone regular files")

    def _clone(self, caller: Caller, ino: int, req: control.Request) -> Iterator[None]:
        """The clone in steps (the engine's step budget of extents each).
        Writers are not held back meanwhile (the kernel holds their pages,
        see inode_locks.py), so the range is settled first: a partial last
        block at the source's EOF goes in the first step, with the checks
        of the whole request and the first budget of whole blocks before
        it (no other request runs in between: a clone that fits one step,
        as a small file's does, is atomic, and a source that shrinks after
        its tail was cloned cannot leave the destination half done and the
        request failed); the rest of the whole blocks follow, each step a
        clone of an aligned range well inside both files."""
        # again after the adapter's await: the files may have changed
        self._check_readable(caller, req.src_ino)
        self._check_types(req.src_ino, ino)
        count = self.fs.remap_count(req.src_ino, req.src_off, ino, req.dst_off, req.length)
        whole = count - count % BLOCK_SIZE
        # uid 0 stands for CAP_FSETID (root keeps the set-id bits)
        privs = {"fsetid": caller.uid == 0, "in_group": caller.in_group}
        if whole < count:
            self.fs.clone_range(req.src_ino, req.src_off + whole, ino, req.dst_off + whole,
                                count - whole, **privs)
        done = 0
        while done < whole:
            n = self.fs.clone_range(req.src_ino, req.src_off + done, ino, req.dst_off + done,
                                    whole - done, **privs)
            if n == 0:
                break                       # (the source shrank meanwhile)
            done += n
            if done < whole:
                yield
        return count

    def _dedupe(self, caller: Caller, ino: int, req: control.Request) -> Iterator[None]:
        """Compare and share piece by piece (the engine's dedupe_step: each
        piece compared and shared in one go, holes compared as holes).  The
        outcome goes to the result table (per destination, as FIDEDUPERANGE
        reports it); pieces shared before one that differs stay shared
        (their bytes were the same)."""
        self.results.drop(caller.pid, ino)
        self._check_readable(caller, req.src_ino)
        length = min(req.length, control.DEDUPE_MAX_LENGTH)
        fs = self.fs
        try:
            count = fs.remap_count(req.src_ino, req.src_off, ino, req.dst_off, length, True)
        except (Corrupted, NoSpace):
            raise
        except DaxfsError as e:
            return self._result(caller, ino, DedupeResult(-e.errno, 0))
        done = 0
        while done < count:
            try:
                n, same = fs.dedupe_step(req.src_ino, req.src_off + done, ino,
                                         req.dst_off + done, count - done)
            except (Corrupted, NoSpace):
                raise
            except DaxfsError as e:         # (a file changed size meanwhile)
                return self._result(caller, ino, DedupeResult(-e.errno, 0))
            if not same:
                return self._result(caller, ino, DedupeResult(FILE_DEDUPE_RANGE_DIFFERS, 0))
            if n == 0:
                break
            done += n
            if done < count:
                yield
        # the length asked for, even if shortened (vfs_dedupe_file_range)
        return self._result(caller, ino, DedupeResult(0, length))

    def _result(self, caller: Caller, ino: int, result: DedupeResult) -> DedupeResult:
        self.results.store(caller.pid, ino, result)
        return result
