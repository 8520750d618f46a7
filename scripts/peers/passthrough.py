#!/usr/bin/env python3
"""A minimal pyfuse3 + trio passthrough filesystem: the benchmarks' peer.

    passthrough.py SOURCE_DIR MOUNTPOINT [--debug] [--daxfs-loop]

It mirrors SOURCE_DIR at MOUNTPOINT with the same mount options and cache
choices as daxfs (default_permissions, allow_other when root, no
direct_io, no writeback cache, keep_cache, the same entry/attr timeouts),
so that a benchmark comparing the two measures the filesystems, not the
FUSE configuration.  It runs in the foreground until unmounted
(fusermount3 -u) or signalled (SIGTERM/SIGINT).

Inode numbers are the source's st_ino; each known inode maps to the set of
paths it was seen under (hard links).  Open files map fh -> an os-level fd.
Everything else is a direct call of the matching os function.  Written for
daxfs (not copied from pyfuse3's example), as small as it can be while
staying correct for the benchmark workloads (create/stat/unlink, sequential
I/O, untar).

By default it serves the way a minimal pyfuse3 program does: pyfuse3's
worker pool and wait, Python's garbage collector settings (the benchmarks'
peer).  --daxfs-loop serves the way the daxfs daemon does instead: one
request worker (daxfs/fuse/binding.py `main_args`) and collector set-up
(daxfs/gc_tuning.py), so that
scripts/bench_daemon_cpu.py can show what the binding itself costs under
daxfs's own settings.
"""

import argparse
import errno
import logging
import os
import stat
import sys
from collections import defaultdict

import pyfuse3

from serving import mount_options, serve, setup_logging

log = logging.getLogger("passthrough")

ENTRY_TIMEOUT = 5.0     # same as daxfs.fuse.operations
ATTR_TIMEOUT = 5.0


def _os_errors(fn):
    """OSError -> FUSEError(errno): the only exception a handler may raise."""

    async def wrapped(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    wrapped.__name__ = fn.__name__
    return wrapped


class Passthrough(pyfuse3.Operations):
    enable_writeback_cache = False
    supports_dot_lookup = False

    def __init__(self, source: str, fail_when: str | None = None):
        super().__init__()
        self.root = os.path.abspath(source)
        self.fail_when = fail_when      # while this file exists, writes and syncs fail (EIO)
        self.paths: dict[int, set[str]] = {pyfuse3.ROOT_INODE: {self.root}}
        self.lookups: dict[int, int] = defaultdict(int)
        self.fds: dict[int, int] = {}          # fh (== fd) -> inode

    # -- inode <-> path

    def _path(self, ino: int) -> str:
        try:
            return next(iter(self.paths[ino]))
        except (KeyError, StopIteration):
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self._path(parent), os.fsdecode(name))

    def _remember(self, path: str, st: os.stat_result) -> int:
        ino = pyfuse3.ROOT_INODE if path == self.root else st.st_ino
        self.paths.setdefault(ino, set()).add(path)
        return ino

    def _forget_path(self, ino: int, path: str) -> None:
        paths = self.paths.get(ino)
        if paths is not None:
            paths.discard(path)

    def _entry(self, ino: int, st: os.stat_result) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        e.entry_timeout = ENTRY_TIMEOUT
        e.attr_timeout = ATTR_TIMEOUT
        for field in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                      "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_blocks"):
            setattr(e, field, getattr(st, field))
        e.st_blksize = 4096
        return e

    def _stat_new(self, path: str) -> pyfuse3.EntryAttributes:
        st = os.lstat(path)
        ino = self._remember(path, st)
        self.lookups[ino] += 1
        return self._entry(ino, st)

    def _chown(self, path: str, ctx) -> None:
        os.chown(path, ctx.uid, ctx.gid, follow_symlinks=False)

    # -- handlers

    @_os_errors
    async def lookup(self, parent_inode, name, ctx):
        return self._stat_new(self._child(parent_inode, name))

    async def forget(self, inode_list):
        for ino, n in inode_list:
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
            else:
                self.lookups.pop(ino, None)
                if ino != pyfuse3.ROOT_INODE:
                    self.paths.pop(ino, None)

    @_os_errors
    async def getattr(self, inode, ctx):
        return self._entry(inode, os.lstat(self._path(inode)))

    @_os_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        # Works by fd when one is open, so an unlinked-but-open file can
        # still be truncated or touched.
        target = fh if fh is not None and fh in self.fds else self._path(inode)
        if fields.update_size:
            os.truncate(target, attr.st_size)
        if fields.update_mode:
            os.chmod(target, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            os.chown(target, attr.st_uid if fields.update_uid else -1,
                     attr.st_gid if fields.update_gid else -1)
        if fields.update_atime or fields.update_mtime:
            st = os.stat(target) if isinstance(target, int) else os.lstat(target)
            times = (attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                     attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns)
            if isinstance(target, int):
                os.utime(target, ns=times)
            else:
                os.utime(target, ns=times, follow_symlinks=False)
        st = os.fstat(target) if isinstance(target, int) else os.lstat(target)
        return self._entry(inode, st)

    @_os_errors
    async def readlink(self, inode, ctx):
        return os.fsencode(os.readlink(self._path(inode)))

    @_os_errors
    async def opendir(self, inode, ctx):
        return inode

    @_os_errors
    async def readdir(self, fh, start_id, token):
        path = self._path(fh)
        # Offsets are positions in the sorted listing: stable enough for a
        # benchmark peer (no concurrent directory changes during a listing).
        names = sorted(os.listdir(path))
        for i, name in enumerate(names[start_id:], start_id + 1):
            child = os.path.join(path, name)
            try:
                st = os.lstat(child)
            except FileNotFoundError:
                continue
            ino = self._remember(child, st)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._entry(ino, st), i):
                break
            self.lookups[ino] += 1

    async def releasedir(self, fh):
        pass

    @_os_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        path = self._child(parent_inode, name)
        os.mkdir(path, mode & ~ctx.umask)
        self._chown(path, ctx)
        return self._stat_new(path)

    @_os_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        path = self._child(parent_inode, name)
        os.mknod(path, mode & ~ctx.umask, rdev)
        self._chown(path, ctx)
        return self._stat_new(path)

    @_os_errors
    async def symlink(self, parent_inode, name, target, ctx):
        path = self._child(parent_inode, name)
        os.symlink(os.fsdecode(target), path)
        self._chown(path, ctx)
        return self._stat_new(path)

    @_os_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        path = self._child(new_parent_inode, new_name)
        os.link(self._path(inode), path, follow_symlinks=False)
        return self._stat_new(path)

    def _remove(self, parent_inode, name, remove) -> None:
        path = self._child(parent_inode, name)
        ino = os.lstat(path).st_ino
        remove(path)
        self._forget_path(ino, path)

    @_os_errors
    async def unlink(self, parent_inode, name, ctx):
        self._remove(parent_inode, name, os.unlink)

    @_os_errors
    async def rmdir(self, parent_inode, name, ctx):
        self._remove(parent_inode, name, os.rmdir)

    @_os_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        ino = os.lstat(old).st_ino
        try:
            replaced = os.lstat(new).st_ino
        except FileNotFoundError:
            replaced = None
        os.rename(old, new)
        if replaced is not None:
            self._forget_path(replaced, new)
        self._forget_path(ino, old)
        self.paths.setdefault(ino, set()).add(new)
        if stat.S_ISDIR(os.lstat(new).st_mode):
            # Paths below a renamed directory change too: drop what we know
            # of them; they are found again by lookup.
            prefix = old + os.sep
            for other, paths in self.paths.items():
                for p in [p for p in paths if p.startswith(prefix)]:
                    paths.discard(p)
                    paths.add(new + p[len(old):])

    @_os_errors
    async def open(self, inode, flags, ctx):
        fd = os.open(self._path(inode), flags & ~os.O_CREAT)
        self.fds[fd] = inode
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    @_os_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        path = self._child(parent_inode, name)
        fd = os.open(path, flags | os.O_CREAT, mode & ~ctx.umask)
        os.fchown(fd, ctx.uid, ctx.gid)
        attr = self._stat_new(path)
        self.fds[fd] = attr.st_ino
        return pyfuse3.FileInfo(fh=fd, keep_cache=True), attr

    @_os_errors
    async def read(self, fh, off, size):
        return os.pread(fh, size, off)

    @_os_errors
    async def write(self, fh, off, buf):
        self._maybe_fail()
        return os.pwrite(fh, buf, off)

    def _maybe_fail(self) -> None:
        """A failing disk on demand (tests of what a file system under it
        does when its writes fail): EIO while the --fail-when file exists."""
        if self.fail_when and os.path.exists(self.fail_when):
            raise pyfuse3.FUSEError(errno.EIO)

    async def flush(self, fh):
        pass

    @_os_errors
    async def release(self, fh):
        self.fds.pop(fh, None)
        os.close(fh)

    @_os_errors
    async def fsync(self, fh, datasync):
        self._maybe_fail()
        (os.fdatasync if datasync else os.fsync)(fh)

    @_os_errors
    async def statfs(self, ctx):
        sv = os.statvfs(self.root)
        s = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                      "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(s, field, getattr(sv, field))
        return s

    @_os_errors
    async def getxattr(self, inode, name, ctx):
        try:
            return os.getxattr(self._path(inode), os.fsdecode(name), follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENOTSUP:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

    @_os_errors
    async def setxattr(self, inode, name, value, ctx):
        os.setxattr(self._path(inode), os.fsdecode(name), value, follow_symlinks=False)

    @_os_errors
    async def listxattr(self, inode, ctx):
        return [os.fsencode(n) for n in os.listxattr(self._path(inode), follow_symlinks=False)]

    @_os_errors
    async def removexattr(self, inode, name, ctx):
        os.removexattr(self._path(inode), os.fsdecode(name), follow_symlinks=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source")
    p.add_argument("mountpoint")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--fail-when", metavar="FILE",
                   help="while FILE exists, every write and fsync fails with EIO (a disk"
                        " that goes bad, for tests)")
    p.add_argument("--subtype", default="passthrough",
                   help="the mount's type is fuse.SUBTYPE (tests use 'daxfs': a file"
                        " system that keeps control requests as plain xattrs, to check"
                        " the bytes the preload library sends)")
    p.add_argument("--daxfs-loop", action="store_true",
                   help="serve with the daxfs daemon's request loop and collector set-up")
    args = p.parse_args(argv)
    setup_logging(args.debug)
    opts = mount_options("passthrough:" + os.path.abspath(args.source), args.subtype,
                         os.geteuid() == 0)
    loop_args = {}
    if args.daxfs_loop:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))))
        from daxfs import gc_tuning
        from daxfs.fuse import binding
        gc_tuning.tune()
        loop_args = binding.main_args()
    return serve(Passthrough(args.source, args.fail_when), args.mountpoint, opts, loop_args)


if __name__ == "__main__":
    sys.exit(main())
