"""The filesystem API: POSIX operations over one open image, with no FUSE in
sight.  The FUSE adapter (fuse_ops.py), the tools and the tests all call it.

Every public operation runs as one atomic step inside the running
(group-commit) transaction: if it raises, everything it changed is rolled
back (`_op`).  Transactions commit when the log fills up, on `commit()`
(called by the daemon on a timer), on `fsync` and on `close`.  A metadata
block that fails verification or sits on a poisoned range shuts the
filesystem down: every later operation raises Shutdown (EIO) until it is
unmounted and checked.

Names are bytes; inode numbers, offsets and times (ns) are ints.  Errors are
the classes in errors.py.
"""

import contextlib
import errno
import functools
import itertools
import logging
import stat
import time

from . import acl, ranges
from .attrs import Attr, DedupeResult, DirEntry, FILE_DEDUPE_RANGE_DIFFERS, StatFs
from .dirs import DIR_HEAD_BYTES, Dirs, check_name, entry_bytes
from .errors import (Corrupted, DaxfsError, DamagedFile, Exists, FileTooBig, IllegalSeek,
                     InvalidArgument, IsADirectory, NoAttribute, NoData, NoDevice, NoSpace,
                     NotADirectory, NotEmpty, NotFound, NotPermitted, NotSupported,
                     PermissionDenied, ReadOnly, Shutdown, TooManyLinks, TrimFirst, WriteFailed)
from .filemap import FileMap
from .format import (BLOCK_SIZE as BS, DT_OF_FMT, EXT_UNWRITTEN, FEAT_REFLINK, FMT_OF_DT,
                     LINK_MAX, ROOT_INO, SYMLINK_MAX, TIME_MAX_SEC, TIME_MIN_SEC)
from .inodes import Inodes
from .orphans import Orphans
from .volume import Volume
from .xattrs import Xattrs

log = logging.getLogger(__name__)

INACTIVE_MAX = 16384           # queued unlinked inodes before forget frees some itself
STEP_BUDGET = 64               # extents one step of long work touches (Filesystem.budget)
STATFS_REAP_SECONDS = 0.02     # statfs frees queued inodes for at most this long
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
DEDUPE_MAX = 1 << 30          # the VFS caps one dedupe request at 1 GiB
DEDUPE_STEP = 8 << 20         # bytes one dedupe_step compares (a few ms)
FALLOC_FL_KEEP_SIZE = 0x01    # fallocate(2) modes (linux/falloc.h)
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
# copy_range: the most one call does; the caller asks again for the rest
# (copy_file_range(2) may copy less than asked, and cp loops); with a step
# budget, sharing stops at the budget's extents too (`_remap`)
COPY_STEP_BYTES = 16 << 20    # bytes stored (the parts that cannot be shared)
COPY_STEP_BLOCKS = 1 << 18    # blocks shared (1 GiB: FUSE's reply counts 32 bits)

def _clamp_time(ns: int) -> int:
    """A time the inode can hold: one outside the range becomes its
    nearest bound in whole seconds (the kernel's timestamp_truncate)."""
    if ns < -(1 << 63):
        return TIME_MIN_SEC * 10**9
    if ns >= 1 << 63:
        return TIME_MAX_SEC * 10**9
    return ns


def _op(method):
    """Run a public operation atomically; shut down on metadata corruption.

    Two failures are retried once the cause is gone: ENOSPC while unlinked
    inodes or freed blocks wait for a commit (they are freed, the log is
    forced), and TrimFirst (blocks past EOF still queued for freeing) when
    no step budget is set (the blocks are freed first; with a budget the
    caller does that in steps)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        self._check_alive()
        if self._in_op:
            return method(self, *args, **kwargs)
        reaped = False
        while True:
            retry = None
            self._in_op = True
            try:
                self.vol.begin_op()
                try:
                    result = method(self, *args, **kwargs)
                    self.vol.alloc.settle()
                except Corrupted as e:
                    self._rollback()
                    self._shut_down(str(e))
                    raise Shutdown(f"filesystem shut down: {e}") from e
                except NoSpace:
                    self._rollback()
                    if reaped or not (self.vol.alloc.has_busy() or self._inactive):
                        raise
                    reaped = retry = True
                except TrimFirst as e:
                    self._rollback()
                    if self.budget is not None:
                        raise
                    retry = e
                except BaseException:
                    self._rollback()
                    raise
            finally:
                self._in_op = False
            if retry is None:
                break
            if retry is True:
                # Only blocks of unlinked inodes not yet freed, or freed by
                # the running transaction, are left: free the inodes, commit
                # (as XFS flushes inodegc and forces the log) and retry.
                self._reap(list(self._inactive))
                self.commit()
            else:
                while not self.trim_step(retry.ino):
                    pass
        self.vol.end_op()
        if self.vol.needs_commit():
            self.commit()
        return result
    return wrapper


def _query(method):
    """A read-only public operation: no undo bookkeeping (nothing to roll
    back), but corruption still shuts the filesystem down.  A relatime
    update is its last step and either happens whole or not at all."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        self._check_alive()
        if self._in_op:
            return method(self, *args, **kwargs)
        try:
            return method(self, *args, **kwargs)
        except Corrupted as e:
            self._forget_caches()
            self._shut_down(str(e))
            raise Shutdown(f"filesystem shut down: {e}") from e
    return wrapper


def _entry_added(d, name: bytes) -> None:
    """A directory's st_size follows its entries (dirs.entry_bytes)."""
    d.size = max(d.size, DIR_HEAD_BYTES) + entry_bytes(name)


def _entry_removed(d, name: bytes) -> None:
    d.size = max(d.size - entry_bytes(name), DIR_HEAD_BYTES)


class Filesystem:
    root_ino = ROOT_INO

    def __init__(self, vol: Volume):
        self.vol = vol
        self.readonly = vol.pmem.readonly
        self.inodes = Inodes(vol)
        self.orphans = Orphans(vol)
        self.dirs = Dirs(vol)
        self.xattrs = Xattrs(vol)
        self.filemap = FileMap(vol, step=self._step)
        self.shutdown_reason = ""
        self._in_op = False
        self._step_inodes = []
        self._inactive: dict[int, None] = {}   # unlinked, forgotten, not yet freed (FIFO)
        self.defer_inactive = False
        self._eof_clean: set[int] = set()      # inodes known to have no blocks past EOF
        self._trims: dict[int, None] = {}      # inodes with blocks past EOF to free (FIFO)
        # Extents one step of long work may touch (freeing, trimming,
        # cloning): None runs every operation whole; the daemon sets it so
        # that no request holds it long (the adapter runs the steps).
        self.budget: int | None = None
        self.has_rmap = vol.has_rmap
        self.atime = True          # relatime updates; the mount's noatime turns them off
        self.strictatime = False   # the mount's strictatime: every read the daemon sees
        self.diratime = True       # readdir updates the directory's atime (not nodiratime)
        self.poison_reports = []
        self.reflink = bool(int(vol.sb["features"]) & FEAT_REFLINK)

    # ---- lifecycle ---------------------------------------------------------
    @classmethod
    def open(cls, image_path: str, *, readonly: bool = False, private: bool = False) -> "Filesystem":
        vol = Volume.open(image_path, readonly=readonly, private=private)
        fs = cls(vol)
        if vol.pmem.bad and not readonly:
            from . import poison
            fs.poison_reports = poison.handle_all(fs)
        if not readonly and not fs.shutdown_reason:
            try:
                vol.alloc.verify_pool()
                fs._reap_orphans()
                vol.sb["mount_count"] = int(vol.sb["mount_count"]) + 1
                vol.mark_dirty_sb()
                fs.commit()
            except BaseException:
                vol.pmem.close()
                raise
        return fs

    def close(self) -> None:
        if self.vol is None:
            return
        if not self.readonly and not self.shutdown_reason:
            try:
                self._reap_orphans()
                self.vol.close()
            except (Corrupted, WriteFailed) as e:
                # the last commit met damage, or could not be written: the
                # image keeps its last committed state; the next mount (or
                # check) will find it
                self._shut_down(str(e))
                self.vol.pmem.close()
                self.vol = None
                raise Shutdown(f"filesystem shut down: {e}") from e
        else:
            self.vol.pmem.close()
        self.vol = None

    def commit(self, durable: bool = True) -> None:
        """Make every change so far durable (group commit).  The daemon's
        background commit passes durable=False: file data overwritten in
        place is then left to the kernel's writeback (fsync, close and
        unmount commit durably), like ext4's data=ordered; metadata and
        the data of newly mapped blocks are always in the commit."""
        if self.shutdown_reason or self.readonly:
            return
        try:
            self.vol.commit(durable)
        except (Corrupted, WriteFailed) as e:
            # a deferred change met a damaged tree while being written
            # (nothing of this transaction reaches the image), or the host
            # could not write the image: nothing more is trusted to reach
            # it (a later fsync must not report success)
            self._forget_caches()
            self._shut_down(str(e))
            raise Shutdown(f"filesystem shut down: {e}") from e

    def _check_alive(self) -> None:
        """Every operation's first step: none is served after a shutdown."""
        if self.shutdown_reason:
            raise Shutdown(f"filesystem shut down: {self.shutdown_reason}")

    def _shut_down(self, why: str) -> None:
        if self.shutdown_reason:
            return
        self.shutdown_reason = why
        log.error("metadata error, shutting down: %s; unmount and run 'daxfs check'", why)

    def shut_down(self, why: str) -> None:
        """Stop serving: every later operation fails with EIO."""
        self._shut_down(why)

    def _rollback(self) -> None:
        """Undo the current operation: its blocks, and any in-core inode it
        may have changed without putting it back."""
        self.vol.rollback_op()
        self._forget_caches()

    def _forget_caches(self) -> None:
        """Drop what the in-core caches remember of names and inodes."""
        self.inodes.forget_cache()
        self.dirs.forget_cache()
        self._eof_clean.clear()

    def _step(self) -> None:
        """A consistent point inside a long operation: refill the pool and
        commit if the log is filling up."""
        self.vol.alloc.settle()
        if self.vol.needs_commit():
            for inode in self._step_inodes:
                self.inodes.put(inode)
            self.vol.end_op()
            self.commit()
            self.vol.begin_op()

    @contextlib.contextmanager
    def _stepping(self, inode):
        """A long operation on `inode` that may commit between its steps
        (`_step`): the inode is put back before each such commit."""
        self._step_inodes = [inode]
        try:
            yield
        finally:
            self._step_inodes = []

    def _writable(self):
        if self.readonly:
            raise ReadOnly("the filesystem is mounted read-only")

    # ---- helpers -----------------------------------------------------------
    def _dir(self, ino: int):
        inode = self.inodes.get(ino)
        if not inode.is_dir:
            raise NotADirectory(f"inode {ino} is not a directory")
        return inode

    def _touch(self, inode, *, m=True, c=True) -> None:
        now = time.time_ns()
        if m:
            inode.mtime = now
        if c:
            inode.ctime = now

    def _need_space(self) -> None:
        if self.vol.alloc.available() <= 0:
            raise NoSpace("no space left on device")

    # ---- lookup and attributes ---------------------------------------------
    @_query
    def lookup(self, parent: int, name: bytes):
        if name == b".":
            # Path walks never ask for "."; the kernel does, for an inode of
            # any type, to open a file handle whose inode it has dropped
            # (export support).  A removed file's handle is stale.
            inode = self.inodes.get(parent)
            if not inode.nlink:
                raise NotFound(f"inode {parent} has been removed")
            return inode.attr()
        self._dir(parent)
        if name == b"..":
            p = self.inodes.get(parent)
            return self.inodes.get(p.parent or ROOT_INO).attr()
        check_name(name) if len(name) > 255 else None
        ent = self.dirs.lookup(parent, name)
        if ent is None:
            raise NotFound(f"{name!r} not found in directory {parent}")
        return self.inodes.get(ent[1]).attr()

    @_query
    def getattr(self, ino: int):
        return self.inodes.get(ino).attr()

    @_op
    def setattr(self, ino: int, *, mode=None, uid=None, gid=None, size=None,
                atime_ns=None, mtime_ns=None, ctime_ns=None):
        self._writable()
        inode = self.inodes.get(ino)
        if size is not None:
            if inode.is_dir:
                raise IsADirectory("cannot truncate a directory")
            if not inode.is_reg:
                raise InvalidArgument("can only truncate regular files")
            self._truncate(inode, ranges.new_size(size))
        if mode is not None:
            inode.mode = stat.S_IFMT(inode.mode) | (mode & 0o7777)
            self._chmod_acl(inode)
        if uid is not None:
            inode.uid = uid
        if gid is not None:
            inode.gid = gid
        if atime_ns is not None:
            inode.atime = _clamp_time(atime_ns)
        if mtime_ns is not None:
            inode.mtime = _clamp_time(mtime_ns)
        inode.ctime = _clamp_time(ctime_ns) if ctime_ns is not None else time.time_ns()
        self.inodes.put(inode)
        return inode.attr()

    def _truncate(self, inode, size: int) -> None:
        old = inode.size
        self.vol.alloc.release(inode.ino)       # (blocks held for its appends)
        with self._stepping(inode):
            if size < old:
                keep = -(-size // BS)
                inode.size = size
                if not self.filemap.truncate_blocks(inode, keep, self.budget):
                    self._eof_clean.discard(inode.ino)
                    self._trims[inode.ino] = None      # the rest in steps: trim_step
                self.filemap.zero_tail(inode, size)
            elif size > old:
                self._drop_post_eof(inode)
                inode.size = size
            if size != old:
                self._touch(inode)

    def _drop_post_eof(self, inode) -> None:
        """Unmap blocks past EOF, and zero the last block past EOF (both
        left by a crash mid-write, or by a truncation still being done in
        steps), before the file grows.  Each inode is looked at once per
        mount (`_eof_clean`, forgotten with the other caches when an
        operation is rolled back).  More than one step's budget of blocks
        past EOF: TrimFirst."""
        if inode.ino in self._eof_clean:
            return
        keep = -(-inode.size // BS)
        if self.filemap.last_block(inode.ino) > keep:
            # (unwritten blocks past EOF are a fallocate's KEEP_SIZE
            # preallocation: they read as zeros and stay, unless a
            # truncation is still freeing what lies past EOF)
            if inode.ino in self._trims:
                done = self.filemap.truncate_blocks(inode, keep, self.budget)
            else:
                done = self.filemap.truncate_written(inode, keep, self.budget)
            if not done:
                raise TrimFirst(inode.ino)
        # the same crash can leave bytes past EOF in the last block: zero
        # them before they come inside the file (XFS zeroes past EOF too)
        self.filemap.zero_tail(inode, inode.size)
        self._trims.pop(inode.ino, None)
        if len(self._eof_clean) > 65536:
            self._eof_clean.clear()
        self._eof_clean.add(inode.ino)

    @_op
    def trim_step(self, ino: int) -> bool:
        """Free up to a step's budget of the blocks past EOF of `ino` (a
        truncation done in steps); True when none are left."""
        try:
            inode = self.inodes.get(ino)
        except NotFound:
            self._trims.pop(ino, None)
            return True
        keep = -(-inode.size // BS)
        with self._stepping(inode):
            done = self.filemap.truncate_blocks(inode, keep, self.budget or STEP_BUDGET)
        self.inodes.put(inode)
        if done:
            self._trims.pop(ino, None)
            self._eof_clean.add(ino)
        return done

    def pending_trims(self) -> list[int]:
        """Inodes whose blocks past EOF wait to be freed in steps."""
        return list(self._trims)

    # ---- creating names ----------------------------------------------------
    def _new_inode(self, parent_ino: int, name: bytes, mode: int, uid: int, gid: int,
                   rdev: int = 0, umask: int = 0):
        """`umask` is applied unless the parent's default ACL takes its
        place (POSIX.1e; a symlink's mode is always 0777)."""
        self._writable()
        check_name(name)
        parent = self._dir(parent_ino)
        if parent.nlink == 0:
            raise NotFound("the directory has been removed")
        if self.dirs.lookup(parent_ino, name) is not None:
            raise Exists(f"{name!r} exists")
        self._need_space()
        is_dir = stat.S_ISDIR(mode)
        if parent.mode & stat.S_ISGID:
            gid = parent.gid
            if is_dir:
                mode |= stat.S_ISGID
        default = None if stat.S_ISLNK(mode) else self._acl(parent_ino, acl.DEFAULT)
        access = None
        if default is not None:
            mode, access = acl.inherit(default, mode)
        elif not stat.S_ISLNK(mode):
            mode &= ~(umask & 0o777)
        inode = self.inodes.create(mode, uid, gid, rdev=rdev,
                                   parent=parent_ino if is_dir else 0,
                                   nlink=2 if is_dir else 1)
        self.xattrs.note_bare(inode.ino)
        if access is not None:
            self.xattrs.set(inode.ino, acl.ACCESS, acl.encode(access))
        if default is not None and is_dir:
            self.xattrs.set(inode.ino, acl.DEFAULT, acl.encode(default))
        self.dirs.add(parent_ino, name, inode.ino, DT_OF_FMT.get(stat.S_IFMT(mode), 0))
        _entry_added(parent, name)
        if is_dir:
            if parent.nlink >= LINK_MAX:
                raise TooManyLinks("too many subdirectories")
            parent.nlink += 1
            self.dirs.note_empty(inode.ino)
            inode.size = DIR_HEAD_BYTES
            self.inodes.put(inode)
        self._touch(parent)
        self.inodes.put(parent)
        return inode

    @_op
    def mknod(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0,
              umask: int = 0):
        fmt = stat.S_IFMT(mode) or stat.S_IFREG
        if fmt not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise InvalidArgument(f"mknod cannot make file type {fmt:o}")
        if fmt not in (stat.S_IFCHR, stat.S_IFBLK):
            rdev = 0
        return self._new_inode(parent, name, fmt | (mode & 0o7777), uid, gid, rdev,
                               umask).attr()

    create = mknod

    @_op
    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int, umask: int = 0):
        return self._new_inode(parent, name, stat.S_IFDIR | (mode & 0o7777), uid, gid,
                               umask=umask).attr()

    @_op
    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int):
        if len(target) > SYMLINK_MAX:
            raise NameTooLongTarget(f"symlink target of {len(target)} bytes is too long")
        if not target:
            raise NotFound("empty symlink target")
        inode = self._new_inode(parent, name, stat.S_IFLNK | 0o777, uid, gid)
        with self._stepping(inode):
            self.filemap.write(inode, 0, target)
        inode.size = len(target)
        self.inodes.put(inode)
        return inode.attr()

    @_query
    def readlink(self, ino: int) -> bytes:
        inode = self.inodes.get(ino)
        if not inode.is_lnk:
            raise InvalidArgument("not a symbolic link")
        return self.filemap.read(ino, 0, inode.size, inode.size)

    @_op
    def link(self, ino: int, new_parent: int, new_name: bytes):
        self._writable()
        inode = self.inodes.get(ino)
        if inode.is_dir:
            raise NotPermitted("hard links to directories are not allowed")
        if inode.nlink == 0:
            raise NotFound("the file has been removed")
        if inode.nlink >= LINK_MAX:
            raise TooManyLinks(f"inode {ino} has {inode.nlink} links")
        check_name(new_name)
        parent = self._dir(new_parent)
        if self.dirs.lookup(new_parent, new_name) is not None:
            raise Exists(f"{new_name!r} exists")
        self._need_space()
        self.dirs.add(new_parent, new_name, ino, DT_OF_FMT.get(stat.S_IFMT(inode.mode), 0))
        _entry_added(parent, new_name)
        inode.nlink += 1
        self._touch(inode, m=False)
        self.inodes.put(inode)
        self._touch(parent)
        self.inodes.put(parent)
        return inode.attr()

    # ---- removing names ----------------------------------------------------
    def _drop_link(self, inode) -> None:
        inode.nlink -= 1
        self._touch(inode, m=False)
        self.inodes.put(inode)
        if inode.nlink == 0:
            self.orphans.add(inode.ino)

    @_op
    def unlink(self, parent: int, name: bytes) -> None:
        self._writable()
        pdir = self._dir(parent)
        ent = self.dirs.lookup(parent, name)
        if ent is None:
            raise NotFound(f"{name!r} not found")
        inode = self.inodes.get(ent[1])
        if inode.is_dir:
            raise IsADirectory(f"{name!r} is a directory")
        self.dirs.remove(parent, ent[0], name)
        _entry_removed(pdir, name)
        self._touch(pdir)
        self.inodes.put(pdir)
        self._drop_link(inode)

    @_op
    def rmdir(self, parent: int, name: bytes) -> None:
        self._writable()
        if name == b".":
            raise InvalidArgument("cannot remove '.'")
        if name == b"..":
            raise NotEmpty("cannot remove '..'")
        pdir = self._dir(parent)
        ent = self.dirs.lookup(parent, name)
        if ent is None:
            raise NotFound(f"{name!r} not found")
        inode = self.inodes.get(ent[1])
        if not inode.is_dir:
            raise NotADirectory(f"{name!r} is not a directory")
        if not self.dirs.is_empty(inode.ino):
            raise NotEmpty(f"{name!r} is not empty")
        self.dirs.remove(parent, ent[0], name)
        _entry_removed(pdir, name)
        pdir.nlink -= 1
        self._touch(pdir)
        self.inodes.put(pdir)
        inode.nlink = 0
        self._touch(inode, m=False)
        self.inodes.put(inode)
        self.orphans.add(inode.ino)

    def forget(self, ino: int) -> None:
        """The kernel holds no more references: free the inode if it is
        unlinked.  With `defer_inactive` (the daemon sets it) it is queued
        instead and freed by `reap_inactive` when the daemon is idle, as
        XFS defers inode inactivation to its inodegc workers; the queue is
        kept short by freeing the oldest ones here once it is long."""
        if self.readonly or ino == ROOT_INO:
            return
        self._check_alive()
        inode = self.inodes.cached(ino)
        if inode is not None and inode.nlink:
            return                          # still linked: nothing to free
        if not self.defer_inactive:
            self._free_unlinked(ino)
        elif self._is_orphan(ino):
            self._inactive[ino] = None
            if len(self._inactive) > INACTIVE_MAX:     # the queue is long: a few steps now
                deadline = time.monotonic() + STATFS_REAP_SECONDS
                while self.reap_step() and time.monotonic() < deadline:
                    pass

    @_query
    def _is_orphan(self, ino: int) -> bool:
        return self.orphans.contains(ino)

    def pending_inactive(self) -> int:
        """How many unlinked inodes wait to be freed."""
        return len(self._inactive)

    def reap_inactive(self, limit: int | None = None) -> int:
        """Free up to `limit` (default: all) queued unlinked inodes, oldest
        first, each whole (in as many steps as it takes).  Returns how many
        are left."""
        # (the oldest `limit` without copying the whole queue: the daemon
        # frees one at a time from a queue of thousands)
        todo = list(itertools.islice(self._inactive, limit))
        for ino in todo:
            self._check_alive()
            while not self._free_unlinked(ino):
                pass
            self._inactive.pop(ino, None)
        return len(self._inactive)

    def reap_step(self) -> bool:
        """One bounded step of freeing the oldest queued unlinked inode (at
        most the step budget of its extents); True if more is queued."""
        for ino in self._inactive:
            self._check_alive()
            if self._free_unlinked(ino):
                self._inactive.pop(ino, None)
            break
        return bool(self._inactive)

    @_op
    def _free_unlinked(self, ino: int) -> bool:
        """Free an unlinked inode (or a step of it); True when it is gone."""
        if self.orphans.contains(ino):
            return self._free_inode(ino, self.budget)
        return True

    def _reap(self, inos) -> None:
        """Free the given orphans, each in its own operation, outside any
        other operation (orphan reaping at open/close, ENOSPC retry)."""
        for ino in inos:
            self._inactive.pop(ino, None)
            self.vol.begin_op()
            try:
                self._free_inode(ino)
                self.vol.alloc.settle()
            except BaseException:
                self._rollback()
                raise
            self.vol.end_op()

    def _free_inode(self, ino: int, budget: int | None = None) -> bool:
        """Free an unlinked inode: its blocks (at most `budget` extents of
        them), then, once none are left, its attributes and record.  True
        when the inode is gone."""
        try:
            inode = self.inodes.get(ino)
        except NotFound:
            self.orphans.remove(ino)
            return True
        if inode.nlink:
            self.orphans.remove(ino)
            return True
        self.vol.alloc.release(ino)
        with self._stepping(inode):
            done = self.filemap.truncate_blocks(inode, 0, budget)
        if not done:
            self.inodes.put(inode)
            return False
        self.xattrs.remove_all(ino)
        self.inodes.delete(ino)
        self.orphans.remove(ino)
        return True

    def _reap_orphans(self) -> None:
        self._reap(self.orphans.all())

    # ---- rename ----------------------------------------------------------
    @_op
    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
               flags: int = 0, uid: int = 0, gid: int = 0) -> None:
        """RENAME_WHITEOUT leaves at the old name a whiteout, a 0/0
        character device owned by `uid`/`gid` (the caller), as xfs does."""
        self._writable()
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT) or \
                flags & RENAME_EXCHANGE and flags & (RENAME_NOREPLACE | RENAME_WHITEOUT):
            raise InvalidArgument(f"bad rename flags {flags:#x}")
        check_name(new_name)
        odir = self._dir(old_parent)
        ndir = odir if new_parent == old_parent else self._dir(new_parent)
        src = self.dirs.lookup(old_parent, old_name)
        if src is None:
            raise NotFound(f"{old_name!r} not found")
        dst = self.dirs.lookup(new_parent, new_name)
        sino = self.inodes.get(src[1])
        if sino.is_dir and new_parent != old_parent:
            self._check_not_ancestor(sino.ino, new_parent)
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise NotFound(f"{new_name!r} not found")
            dino = self.inodes.get(dst[1])
            if dino.is_dir and new_parent != old_parent:
                self._check_not_ancestor(dino.ino, old_parent)
            self.dirs.retarget(old_parent, src[0], old_name, dino.ino, dst[2])
            self.dirs.retarget(new_parent, dst[0], new_name, sino.ino, src[2])
            if new_parent != old_parent and sino.is_dir != dino.is_dir:
                moved_down = sino if sino.is_dir else dino
                if moved_down is sino:
                    odir.nlink -= 1
                    ndir.nlink += 1
                else:
                    ndir.nlink -= 1
                    odir.nlink += 1
            for ino_, newp in ((sino, new_parent), (dino, old_parent)):
                if ino_.is_dir:
                    ino_.parent = newp
                self._touch(ino_, m=False)
                self.inodes.put(ino_)
            self._touch(odir)
            self._touch(ndir)
            self.inodes.put(odir)
            if ndir is not odir:
                self.inodes.put(ndir)
            return
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                raise Exists(f"{new_name!r} exists")
            if dst[1] == src[1]:
                return                      # both names are links to one inode
            dino = self.inodes.get(dst[1])
            if sino.is_dir:
                if not dino.is_dir:
                    raise NotADirectory(f"{new_name!r} is not a directory")
                if not self.dirs.is_empty(dino.ino):
                    raise NotEmpty(f"{new_name!r} is not empty")
            elif dino.is_dir:
                raise IsADirectory(f"{new_name!r} is a directory")
            self.dirs.remove(new_parent, dst[0], new_name)
            _entry_removed(ndir, new_name)
            if dino.is_dir:
                ndir.nlink -= 1
                dino.nlink = 0
                self._touch(dino, m=False)
                self.inodes.put(dino)
                self.orphans.add(dino.ino)
            else:
                self._drop_link(dino)
        self.dirs.remove(old_parent, src[0], old_name)
        _entry_removed(odir, old_name)
        self.dirs.add(new_parent, new_name, sino.ino, src[2])
        _entry_added(ndir, new_name)
        if sino.is_dir and new_parent != old_parent:
            sino.parent = new_parent
            odir.nlink -= 1
            ndir.nlink += 1
        self._touch(sino, m=False)
        self.inodes.put(sino)
        self._touch(odir)
        self.inodes.put(odir)
        if ndir is not odir:
            self._touch(ndir)
            self.inodes.put(ndir)
        if flags & RENAME_WHITEOUT:
            self._new_inode(old_parent, old_name, stat.S_IFCHR, uid, gid, rdev=0)

    def _check_not_ancestor(self, ino: int, target_dir: int) -> None:
        p = target_dir
        seen = 0
        while True:
            if p == ino:
                raise InvalidArgument("cannot move a directory into itself")
            if p == ROOT_INO or seen > 100000:
                return
            p = self.inodes.get(p).parent or ROOT_INO
            seen += 1

    # ---- directories --------------------------------------------------------
    def readdir(self, ino: int, pos: int = 0):
        """DirEntry for '.', '..' and each name, from cookie `pos` on."""
        self._check_alive()
        try:
            d = self._dir(ino)
            if pos == 0:
                if self.diratime:
                    self._relatime(d)
                yield DirEntry(b".", d.attr(), 1)
            if pos <= 1:
                p = self.inodes.get(d.parent or ROOT_INO)
                yield DirEntry(b"..", p.attr(), 2)
            start = max(0, pos - 2) if pos >= 2 else 0
            # lazy: the caller stops when its buffer is full, and a readdir
            # must not cost the whole rest of the directory each time
            for epos, name, child, ftype in self.dirs.entries(ino, start):
                if epos < start:
                    continue        # only a damaged tree leads back: cookies must advance
                try:
                    attr = self.inodes.get(child).attr()
                except NotFound:
                    continue
                except DamagedFile as e:
                    log.warning("readdir of directory %d: %s", ino, e)
                    attr = Attr.stand_in(child, FMT_OF_DT.get(ftype, stat.S_IFREG))
                yield DirEntry(name, attr, epos + 3)
        except Corrupted as e:
            self._shut_down(str(e))
            raise Shutdown(f"filesystem shut down: {e}") from e

    # ---- data ----------------------------------------------------------------
    @_query
    def read(self, ino: int, offset: int, size: int) -> bytes:
        inode = self.inodes.get(ino)
        if inode.is_dir:
            raise IsADirectory("is a directory")
        ranges.offset(offset, "read offset")
        ranges.length(size, "read size")
        data = self.filemap.read(ino, offset, size, inode.size)
        self._relatime(inode)
        return data

    def _relatime(self, inode) -> None:
        """Update atime on a read as Linux's relatime does: when it is not
        newer than mtime or ctime, or is a day old."""
        if self.readonly or not self.atime:
            return
        now = time.time_ns()
        if self.strictatime or inode.atime <= inode.mtime or inode.atime <= inode.ctime or \
                now - inode.atime > 86400 * 10**9:
            inode.atime = now
            self.inodes.put(inode)

    @_op
    def write(self, ino: int, offset: int, data) -> int:
        self._writable()
        inode = self.inodes.get(ino)
        if inode.is_dir:
            raise IsADirectory("is a directory")
        n = ranges.write_limit(offset, len(data))
        if n == 0:
            return 0
        if n < len(data):
            data = memoryview(data)[:n]       # a short write up to the largest file size
        # space the queued unlinked inodes or a commit would give back
        reclaimable = bool(self._inactive) or self.vol.alloc.has_busy()
        with self._stepping(inode):
            if offset + n > inode.size:
                self._drop_post_eof(inode)
            done = self.filemap.write(inode, offset, data)
        if done < n and reclaimable:
            # short for want of it: fail whole, so that _op frees, commits
            # and tries again (XFS retries after flushing inodegc)
            raise NoSpace("no space left on device")
        if offset + done > inode.size:
            inode.size = offset + done
        # set-uid/set-gid bits are dropped by the kernel (a setattr it sends
        # for writers without CAP_FSETID), not here
        self._touch(inode)
        self.inodes.put(inode)
        return done

    def release(self, ino: int) -> None:
        """A file was closed: forget the free blocks held for its next
        appends (speculative preallocation, alloc.py; kept in memory only,
        so nothing on the image changes)."""
        if self.vol is not None:
            self.vol.alloc.release(ino)

    def fsync(self, ino: int = 0) -> None:
        """Returns when the data and metadata of the file (and everything
        before it) are durable."""
        self._check_alive()
        self.commit()

    def statfs(self) -> StatFs:
        """Counts with the queued unlinked inodes freed first (df right
        after rm shows the space back): all of them, or with a step budget
        as many as STATFS_REAP_SECONDS allow (the rest is freed in the
        background)."""
        if self._inactive and not self.readonly:
            if self.budget is None:
                self.reap_inactive()
            else:
                deadline = time.monotonic() + STATFS_REAP_SECONDS
                while self.reap_step() and time.monotonic() < deadline:
                    pass
        return self._statfs()

    @_query
    def _statfs(self) -> StatFs:
        a = self.vol.alloc
        total = self.vol.total_blocks
        return StatFs(block_size=BS, total_blocks=total, free_blocks=a.free_blocks,
                      avail_blocks=a.available(),
                      total_inodes=int(self.vol.sb["inode_count"]) + a.available(),
                      free_inodes=a.available())

    # ---- extended attributes -------------------------------------------------
    @_query
    def getxattr(self, ino: int, name: bytes) -> bytes:
        self.inodes.get(ino)
        return self.xattrs.get(ino, name)

    @_op
    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0, *,
                 fsetid: bool = True, in_group=None) -> None:
        """A POSIX ACL (acl.NAMES) also sets the mode, and clears its
        set-group-ID bit unless the caller is in the file's group or has
        CAP_FSETID (`fsetid`; `in_group(gid)`), as posix_acl_update_mode."""
        self._writable()
        inode = self.inodes.get(ino)
        if not name:
            raise InvalidArgument("empty attribute name")
        self._need_space()
        if name in acl.NAMES:
            self._set_acl(inode, name, bytes(value), flags, fsetid, in_group)
        else:
            self.xattrs.set(ino, name, bytes(value), flags)
        self._touch(inode, m=False)
        self.inodes.put(inode)

    def _set_acl(self, inode, name: bytes, value: bytes, flags: int, fsetid: bool,
                 in_group) -> None:
        entries = acl.parse(value)
        if name == acl.DEFAULT:
            if not inode.is_dir:
                raise PermissionDenied("only a directory has a default ACL")
            if not entries:
                with contextlib.suppress(NoAttribute):
                    self.xattrs.remove(inode.ino, name)
                return
        else:
            if not entries:
                raise InvalidArgument("an access ACL cannot be empty")
            mode = inode.mode & ~0o777 | acl.mode_bits(entries)
            if not fsetid and not (in_group is not None and in_group(inode.gid)):
                mode &= ~stat.S_ISGID
            inode.mode = mode
            if acl.is_minimal(entries):
                with contextlib.suppress(NoAttribute):
                    self.xattrs.remove(inode.ino, name)
                return
        self.xattrs.set(inode.ino, name, acl.encode(entries), flags)

    def _acl(self, ino: int, name: bytes):
        """The stored ACL `name` of `ino`, parsed, or None."""
        try:
            return acl.parse(self.xattrs.get(ino, name))
        except NoAttribute:
            return None

    @_query
    def get_acl(self, ino: int, name: bytes):
        """The ACL `name` (acl.ACCESS or acl.DEFAULT) of `ino` as entries,
        or None."""
        self.inodes.get(ino)
        return self._acl(ino, name)

    def _chmod_acl(self, inode) -> None:
        """A chmod rewrites a stored access ACL's owner, group (or mask)
        and other entries."""
        entries = self._acl(inode.ino, acl.ACCESS)
        if entries is not None:
            self.xattrs.set(inode.ino, acl.ACCESS, acl.encode(acl.chmod(entries, inode.mode)))

    @_query
    def listxattr(self, ino: int) -> list[bytes]:
        self.inodes.get(ino)
        return self.xattrs.names(ino)

    @_op
    def removexattr(self, ino: int, name: bytes) -> None:
        self._writable()
        inode = self.inodes.get(ino)
        self.xattrs.remove(ino, name)
        self._touch(inode, m=False)
        self.inodes.put(inode)

    # ---- shared extents -------------------------------------------------------
    def _remap_prep(self, src, s_off: int, dst, d_off: int, length: int, dedupe: bool) -> int:
        """The kernel's remap_verify_area, remap_file_range_prep and
        generic_remap_checks, in their order: a zero length is resolved
        ("to the end of the source" for a clone) BEFORE the range is
        checked and used.  Returns the byte count to remap (0: nothing)."""
        if not self.reflink or not self.has_rmap:
            raise NotSupported("reflink needs a filesystem made with the rmap btree")
        if src.is_dir or dst.is_dir:
            raise IsADirectory("cannot share extents of a directory")
        if not src.is_reg or not dst.is_reg:
            raise InvalidArgument("can only share extents of regular files")
        ranges.span(s_off, length, "source")
        ranges.span(d_off, length, "destination")
        size_in, size_out = src.size, dst.size
        if length == 0:
            if dedupe or s_off == size_in:
                return 0
            if s_off > size_in:
                raise InvalidArgument("source offset is beyond end of file")
            length = size_in - s_off
        # generic_remap_checks, with the resolved length
        if s_off % BS or d_off % BS:
            raise InvalidArgument("offsets must be multiples of the block size (4096)")
        ranges.span(s_off, length, "source")
        ranges.span(d_off, length, "destination")
        if dedupe and (s_off >= size_in or s_off + length > size_in or
                       d_off >= size_out or d_off + length > size_out):
            raise InvalidArgument("dedupe ranges must lie within both files")
        if s_off >= size_in:
            raise InvalidArgument("source offset is beyond end of file")
        count = ranges.write_limit(d_off, min(length, size_in - s_off), "destination")
        if s_off + count == size_in and (not dedupe or d_off + count == size_out):
            bcount = -(-size_in // BS) * BS - s_off
        else:
            count -= count % BS     # a dedupe may be shortened (REMAP_FILE_CAN_SHORTEN)
            bcount = count
        if src.ino == dst.ino and d_off + bcount > s_off and d_off < s_off + bcount:
            raise InvalidArgument("overlapping ranges within one file")
        if not dedupe and count != length:
            raise InvalidArgument("the range cannot be cloned whole (beyond the source's end,"
                                  " a partial block, or past the largest file size)")
        if not dedupe and s_off + count == size_in and d_off + count < size_out \
                and count % BS:
            raise InvalidArgument("cannot clone a partial block into the middle of a file")
        return count

    @_op
    def clone_range(self, src_ino: int, src_off: int, dst_ino: int, dst_off: int,
                    length: int, *, fsetid: bool = False, in_group=None) -> int:
        """Make dst's bytes [dst_off, +length) share src's (FICLONERANGE);
        length 0 means to the end of src.  Returns bytes cloned: all of
        them, or with a step budget (`budget`) the first part, whole blocks
        (the caller goes on with the rest: `remap_count` tells the total).
        dst loses its privileges as on a write (`fsetid`: the caller has
        CAP_FSETID; `in_group(gid)`: the caller is in that group)."""
        self._writable()
        src = self.inodes.get(src_ino)
        dst = src if dst_ino == src_ino else self.inodes.get(dst_ino)
        count = self._remap_prep(src, src_off, dst, dst_off, length, False)
        if count == 0:
            return 0
        # new extent, rmap and refcount records: never from the reserve
        # that keeps unlink working on a full device
        self._need_space()
        self._remove_privs(dst, fsetid, in_group)
        return self._remap(src, src_off, dst, dst_off, count)

    @_query
    def remap_count(self, src_ino: int, src_off: int, dst_ino: int, dst_off: int,
                    length: int, dedupe: bool = False) -> int:
        """The bytes a clone (or dedupe) of this range would remap, after
        every check of the kernel's remap preparation (its errors raised)."""
        src = self.inodes.get(src_ino)
        dst = src if dst_ino == src_ino else self.inodes.get(dst_ino)
        if dedupe:
            length = min(length, DEDUPE_MAX)
        return self._remap_prep(src, src_off, dst, dst_off, length, dedupe)

    @_op
    def dedupe_step(self, src_ino: int, src_off: int, dst_ino: int, dst_off: int,
                    length: int) -> tuple[int, bool]:
        """One piece of a dedupe whose range `remap_count` checked: the
        first part of [off, off+length) (at most DEDUPE_STEP bytes, and no
        more extents of either file than the step budget) is compared and,
        if equal, shared, in one operation.  Returns (bytes done, equal)."""
        self._writable()
        src = self.inodes.get(src_ino)
        dst = src if dst_ino == src_ino else self.inodes.get(dst_ino)
        count = self._remap_prep(src, src_off, dst, dst_off, length, True)
        if count == 0:
            return 0, True
        n = min(count, DEDUPE_STEP)
        if self.budget is not None:
            s0, d0 = src_off // BS, dst_off // BS
            n = min(n, self.filemap.extent_span(src.ino, s0, s0 + -(-n // BS), self.budget) * BS,
                    self.filemap.extent_span(dst.ino, d0, d0 + -(-n // BS), self.budget) * BS)
        if n < count:
            n -= n % BS
        if not self.filemap.same_bytes(src, src_off, dst, dst_off, n):
            return 0, False
        self._need_space()
        done = 0
        while done < n:
            done += self._remap(src, src_off + done, dst, dst_off + done, n - done)
        return n, True

    def _remove_privs(self, inode, fsetid: bool, in_group) -> None:
        """The kernel's file_remove_privs, which it runs before a write
        but cannot run for a change made in the daemon (a clone): the file
        capability goes, and without CAP_FSETID the set-user-ID bit, and
        the set-group-ID bit of a group-executable file or of a file whose
        group the caller is not in (setattr_should_drop_sgid)."""
        with contextlib.suppress(NoAttribute):
            self.xattrs.remove(inode.ino, b"security.capability")
        if not fsetid:
            kill = stat.S_ISUID
            if inode.mode & stat.S_IXGRP or in_group is None or not in_group(inode.gid):
                kill |= stat.S_ISGID
            inode.mode &= ~kill

    def _remap(self, src, s_off: int, dst, d_off: int, count: int) -> int:
        """Share src's blocks with dst (all of them, or as many as a step's
        budget allows); returns the bytes done."""
        nblk = -(-count // BS)
        with self._stepping(dst):
            if d_off + count > dst.size:
                self._drop_post_eof(dst)
            blocks = self.filemap.clone(src, s_off // BS, dst, d_off // BS, nblk, self.budget)
        done = min(count, blocks * BS)
        if d_off + done > dst.size:
            dst.size = d_off + done
        self._touch(dst)
        self.inodes.put(dst)
        return done

    @_op
    def dedupe_range(self, src_ino: int, src_off: int, length: int, dests) -> list:
        """Share src's [src_off, +length) with each (dst_ino, dst_off) whose
        bytes are equal (FIDEDUPERANGE); per destination a DedupeResult.
        A length that is not a block multiple and does not end at both
        EOFs is shortened to whole blocks; the result gives `length`."""
        self._writable()
        src = self.inodes.get(src_ino)
        if src.is_dir:
            raise IsADirectory("cannot dedupe a directory")
        if not src.is_reg:
            raise InvalidArgument("can only dedupe regular files")
        length = min(length, DEDUPE_MAX)
        out = []
        for dst_ino, dst_off in dests:
            try:
                dst = src if dst_ino == src_ino else self.inodes.get(dst_ino)
                count = self._remap_prep(src, src_off, dst, dst_off, length, True)
                if count == 0:
                    out.append(DedupeResult(0, length))
                    continue
                if not self.filemap.same_bytes(src, src_off, dst, dst_off, count):
                    out.append(DedupeResult(FILE_DEDUPE_RANGE_DIFFERS, 0))
                    continue
                self._need_space()
                done = 0
                while done < count:
                    done += self._remap(src, src_off + done, dst, dst_off + done, count - done)
                # the length asked for, even if shortened (vfs_dedupe_file_range)
                out.append(DedupeResult(0, length))
            except (Corrupted, NoSpace):
                raise
            except DaxfsError as e:
                out.append(DedupeResult(-e.errno, 0))
        return out

    # ---- preallocation, holes and copies ----------------------------------
    @_op
    def fallocate(self, ino: int, mode: int, offset: int, length: int) -> bool:
        """fallocate(2) on [offset, offset+length):

        * mode 0: give the holes unwritten blocks (they read as zeros; no
          byte is stored) and extend the size to offset+length;
        * FALLOC_FL_KEEP_SIZE: the same, leaving the size (blocks past EOF);
        * FALLOC_FL_PUNCH_HOLE | KEEP_SIZE: unmap the whole blocks (a shared
          block loses only this file's reference) and zero the bytes of the
          partial blocks at the edges;
        * FALLOC_FL_ZERO_RANGE (with or without KEEP_SIZE): the range reads
          zeros afterwards, every block of it allocated: blocks the file
          alone owns become unwritten in place, shared blocks and holes get
          new unwritten blocks, partial edges are zeroed.

        Other modes (COLLAPSE_RANGE, INSERT_RANGE, UNSHARE_RANGE...) raise
        NotSupported (EOPNOTSUPP), as on a filesystem without them.  The
        checks and errnos are vfs_fallocate's.  ENOSPC is found before
        anything changes: the modes that allocate are one atomic operation
        (they cost an extent record per free extent used, no stores).  A
        punch, which only frees, unmaps at most the step budget's extents
        per call (as a truncation does): True when it is done, else the
        caller calls again for the rest (the edges are zeroed again, the
        same bytes).  Set-ID bits are the kernel's to drop (it does, as
        for a write, before sending FALLOCATE)."""
        self._writable()
        end = ranges.allocation(offset, length)
        keep = mode & FALLOC_FL_KEEP_SIZE
        kind = mode & ~FALLOC_FL_KEEP_SIZE
        if kind not in (0, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE):
            raise NotSupported(f"fallocate mode {mode:#x} is not supported (daxfs has the"
                               " default mode, KEEP_SIZE, PUNCH_HOLE and ZERO_RANGE)")
        if kind == FALLOC_FL_PUNCH_HOLE and not keep:
            raise NotSupported("PUNCH_HOLE needs KEEP_SIZE")
        inode = self.inodes.get(ino)
        if stat.S_ISFIFO(inode.mode):
            raise IllegalSeek("cannot fallocate a pipe")
        if inode.is_dir:
            raise IsADirectory("cannot fallocate a directory")
        if not inode.is_reg:
            raise NoDevice("fallocate needs a regular file")
        ranges.new_size(end, "fallocate end")
        grow = not keep and end > inode.size
        done = True
        with self._stepping(inode):
            if grow:
                self._drop_post_eof(inode)
            if kind == FALLOC_FL_PUNCH_HOLE:
                done = self._punch(inode, offset, end)
            elif kind == FALLOC_FL_ZERO_RANGE:
                self._zero_range(inode, offset, end)
            else:
                b0, b1 = offset // BS, -(-end // BS)
                holes = self.filemap.holes(ino, b0, b1)
                self._need_blocks(sum(b - a for a, b in holes))
                self.filemap.preallocate(inode, holes)
        if grow:
            inode.size = end
        self._touch(inode)
        self.inodes.put(inode)
        return done

    def _need_blocks(self, n: int) -> None:
        """NoSpace, before anything changes, unless `n` data blocks can be
        allocated now (blocks freed since the last commit cannot: `_op`
        commits and tries again for those)."""
        a = self.vol.alloc
        if n > 0 and n > a.available() - a.busy_blocks():
            raise NoSpace(f"no space left on device ({n} blocks needed)")

    def _partial_edges(self, inode, off: int, end: int) -> list[tuple[int, int]]:
        """The byte ranges of [off, end) in partial blocks at its edges that
        hold written bytes of the file (before EOF), to be zeroed."""
        w0, w1 = -(-off // BS), end // BS
        if w0 > w1:
            parts = [(off, end)]                     # inside one block
        else:
            parts = [(off, w0 * BS)] if off % BS else []
            if end % BS:
                parts.append((w1 * BS, end))
        out = []
        for lo, hi in parts:
            hi = min(hi, inode.size)                 # bytes past EOF are zeros already
            if lo >= hi:
                continue
            m = self.filemap.mapping(inode.ino, lo // BS, lo // BS + 1)
            if m and not m[0][3] & EXT_UNWRITTEN:
                out.append((lo, hi))
        return out

    def _zero_bytes(self, inode, edges) -> None:
        for lo, hi in edges:
            if self.filemap.write(inode, lo, bytes(hi - lo)) < hi - lo:
                raise NoSpace("no space left on device")

    def _edge_cow_blocks(self, inode, edges) -> int:
        return sum(self.filemap.shared_blocks(inode.ino, lo // BS, lo // BS + 1)
                   for lo, _ in edges)

    def _punch(self, inode, off: int, end: int) -> bool:
        edges = self._partial_edges(inode, off, end)
        self._need_blocks(self._edge_cow_blocks(inode, edges))
        self._zero_bytes(inode, edges)
        w0, w1 = -(-off // BS), end // BS
        return w0 >= w1 or self.filemap.punch(inode, w0, w1, self.budget)

    def _zero_range(self, inode, off: int, end: int) -> None:
        ino = inode.ino
        b0, b1 = off // BS, -(-end // BS)
        w0, w1 = -(-off // BS), end // BS
        edges = self._partial_edges(inode, off, end)
        need = sum(b - a for a, b in self.filemap.holes(ino, b0, b1))
        need += self._edge_cow_blocks(inode, edges)
        if w0 < w1:
            need += self.filemap.shared_blocks(ino, w0, w1)
        self._need_blocks(need)
        self._zero_bytes(inode, edges)
        if w0 < w1:
            self.filemap.unshare_or_unwrite(inode, w0, w1)
        self.filemap.preallocate(inode, self.filemap.holes(ino, b0, b1))

    @_query
    def seek_data(self, ino: int, offset: int) -> int:
        """lseek(SEEK_DATA): the first offset >= `offset` holding written
        data; NoData (ENXIO) at or past EOF or when only holes follow.
        Unwritten extents count as holes (they read as zeros)."""
        inode = self._seekable(ino, offset)
        pos = self.filemap.seek_data(ino, offset, inode.size)
        if pos is None:
            raise NoData(f"no data at or after offset {offset} (size {inode.size})")
        return pos

    @_query
    def seek_hole(self, ino: int, offset: int) -> int:
        """lseek(SEEK_HOLE): the first offset >= `offset` in a hole (or an
        unwritten extent), or EOF, the hole every file ends with; NoData
        (ENXIO) at or past EOF."""
        inode = self._seekable(ino, offset)
        return self.filemap.seek_hole(ino, offset, inode.size)

    def _seekable(self, ino: int, offset: int):
        inode = self.inodes.get(ino)
        if inode.is_dir:
            raise IsADirectory("SEEK_DATA/SEEK_HOLE on a directory")
        if offset < 0 or offset >= inode.size:
            raise NoData(f"offset {offset} is not before the end of the file ({inode.size})")
        return inode

    def copy_range(self, src_ino: int, src_off: int, dst_ino: int, dst_off: int,
                   length: int) -> int:
        """copy_file_range(2): copy up to `length` bytes of src from src_off
        to dst at dst_off; returns the count copied, short at src's EOF (0
        at or past it) and possibly short for a large request (each call
        does a bounded amount of work; the caller asks again, as cp does).

        Whole blocks whose offsets agree modulo the block size are shared
        (as clone_range does: CoW on a later write), and the source's last
        partial block too when the copy ends at both EOFs; the rest is
        copied.  On a filesystem without reflink everything is copied.
        Each piece (head bytes, shared blocks, tail bytes) is one atomic
        operation, done in that order: ENOSPC in a piece leaves it undone
        and the call returns what the pieces before it copied (ENOSPC if
        none); with a step budget the shared piece stops at the budget's
        extents (`_remap`), and the call returns what was done so far.  The kernel checks and drops set-ID bits before sending the
        request; ranges, file types and the overlap of a file with itself
        are checked here with its errnos (EINVAL, EISDIR, EFBIG)."""
        plan = self._copy_plan(src_ino, src_off, dst_ino, dst_off, length)
        done = 0
        for share, s, d, n in plan:
            try:
                if share:
                    got = self._copy_share(src_ino, s, dst_ino, d, n)
                else:
                    got = self.write(dst_ino, d, self._copy_load(src_ino, s, n))
            except NoSpace:
                if done:
                    break
                raise
            done += got
            if got < n:
                break
        return done

    @_query
    def _copy_plan(self, src_ino: int, s: int, dst_ino: int, d: int, length: int) -> list:
        """The pieces of one copy_range call: (share?, src offset, dst
        offset, bytes), in order, contiguous."""
        self._writable()
        ranges.offset(s, "source offset")
        ranges.offset(d, "destination offset")
        ranges.length(length, "copy length")
        src = self.inodes.get(src_ino)
        dst = src if dst_ino == src_ino else self.inodes.get(dst_ino)
        if src.is_dir or dst.is_dir:
            raise IsADirectory("cannot copy to or from a directory")
        if not src.is_reg or not dst.is_reg:
            raise InvalidArgument("copy_file_range needs regular files")
        count = 0 if s >= src.size else min(length, src.size - s)
        count = ranges.write_limit(d, count, "copy")
        if src_ino == dst_ino and d + count > s and d < s + count:
            raise InvalidArgument("overlapping ranges within one file")
        if not count:
            return []
        if not (self.reflink and self.has_rmap) or (s - d) % BS:
            return [(False, s, d, min(count, COPY_STEP_BYTES))]
        plan = []
        head = min(-d % BS, count)
        if head:
            plan.append((False, s, d, head))
            s, d, count = s + head, d + head, count - head
            if not count:
                return plan
        whole = count - count % BS
        share = whole
        if count % BS and s + count == src.size and d + count >= dst.size:
            share = count           # the last block, zeros past src's EOF, too
        if share > COPY_STEP_BLOCKS * BS:
            share = COPY_STEP_BLOCKS * BS
        if share:
            plan.append((True, s, d, share))
        if share == whole and count > whole:
            plan.append((False, s + whole, d + whole, count - whole))
        return plan

    @_query
    def _copy_load(self, ino: int, off: int, n: int) -> bytes:
        inode = self.inodes.get(ino)
        return self.filemap.read(ino, off, n, inode.size)

    @_op
    def _copy_share(self, src_ino: int, s: int, dst_ino: int, d: int, n: int) -> int:
        src = self.inodes.get(src_ino)
        dst = src if dst_ino == src_ino else self.inodes.get(dst_ino)
        self._need_space()
        return self._remap(src, s, dst, d, n)

    @_query
    def fiemap(self, ino: int, start: int, length: int, limit: int | None = None):
        """The extents overlapping [start, start+length), at most `limit`
        of them (the kernel's fiemap_prep: length 0 is EINVAL, a start at
        or past the largest file size EFBIG, a length past it is cut)."""
        inode = self.inodes.get(ino)
        if length <= 0:
            raise InvalidArgument("FIEMAP of length 0")
        if not 0 <= start < ranges.MAX_BYTES:
            if start < 0:
                raise InvalidArgument(f"FIEMAP start {start} is negative")
            raise FileTooBig(f"FIEMAP start {start} is beyond the maximum file size")
        length = min(length, ranges.MAX_BYTES - start)
        return self.filemap.fiemap(ino, start, length, inode.size, limit)


class NameTooLongTarget(DaxfsError):
    """A symlink target is longer than 4095 bytes."""
    errno = errno.ENAMETOOLONG
