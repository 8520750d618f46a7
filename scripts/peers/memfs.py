#!/usr/bin/env python3
"""The smallest in-memory pyfuse3 + trio filesystem: the benchmarks'
ceiling.

    memfs.py MOUNTPOINT [--debug]

Everything lives in dicts (inodes, names, file bytes in a bytearray,
extended attributes) and nothing is ever written anywhere: whatever a
filesystem built on this binding and event loop does, it cannot answer a
request faster than this.  `scripts/bench.py` reports daxfs/ceiling for
the metadata workloads (create, stat, readdir, unlink, untar): the share of
each request that daxfs's own engine costs.

It mounts with the same options and cache choices as daxfs and the
passthrough peer (default_permissions, allow_other when root, no
direct_io, no writeback cache, keep_cache, the same entry/attr timeouts)
and serves with pyfuse3's defaults, as a minimal pyfuse3 program does.  It
runs in the foreground until unmounted (fusermount3 -u) or signalled.
Written for daxfs, as small as it can be while correct for the benchmark
workloads; not a filesystem to keep anything in.
"""

import argparse
import errno
import logging
import os
import stat
import sys
import time
from bisect import bisect_right

import pyfuse3

from serving import mount_options, serve, setup_logging

log = logging.getLogger("memfs")

ENTRY_TIMEOUT = 5.0     # same as daxfs.fuse.operations
ATTR_TIMEOUT = 5.0
BLOCK = 4096


class Inode:
    __slots__ = ("ino", "mode", "nlink", "uid", "gid", "rdev", "atime", "mtime", "ctime",
                 "data", "target", "entries", "order", "next_cookie", "xattrs", "lookups")

    def __init__(self, ino: int, mode: int, uid: int, gid: int, rdev: int = 0):
        now = time.time_ns()
        self.ino, self.mode, self.uid, self.gid, self.rdev = ino, mode, uid, gid, rdev
        self.nlink = 2 if stat.S_ISDIR(mode) else 1
        self.atime = self.mtime = self.ctime = now
        self.data = bytearray()
        self.target = b""
        self.entries: dict[bytes, tuple[int, int]] = {}   # name -> (ino, cookie)
        self.order = None          # cached [(cookie, name)] for readdir
        self.next_cookie = 1
        self.xattrs: dict[bytes, bytes] = {}
        self.lookups = 0


class MemFS(pyfuse3.Operations):
    enable_writeback_cache = False
    supports_dot_lookup = False

    def __init__(self):
        super().__init__()
        root = Inode(pyfuse3.ROOT_INODE, stat.S_IFDIR | 0o755, 0, 0)
        self.inodes: dict[int, Inode] = {root.ino: root}
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self.fhs: dict[int, int] = {}

    # -- helpers

    def _get(self, ino: int) -> Inode:
        try:
            return self.inodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _entry(self, i: Inode) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = i.ino
        e.generation = 0
        e.entry_timeout = ENTRY_TIMEOUT
        e.attr_timeout = ATTR_TIMEOUT
        e.st_mode, e.st_nlink, e.st_uid, e.st_gid, e.st_rdev = \
            i.mode, i.nlink, i.uid, i.gid, i.rdev
        size = len(i.target) if stat.S_ISLNK(i.mode) else len(i.data)
        e.st_size = size
        e.st_blocks = -(-size // 512)
        e.st_blksize = BLOCK
        e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns = i.atime, i.mtime, i.ctime
        return e

    def _child(self, parent: Inode, name: bytes) -> Inode:
        try:
            return self.inodes[parent.entries[name][0]]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _add(self, parent: Inode, name: bytes, child: Inode) -> None:
        if name in parent.entries:
            raise pyfuse3.FUSEError(errno.EEXIST)
        parent.entries[name] = (child.ino, parent.next_cookie)
        parent.next_cookie += 1
        parent.order = None
        parent.mtime = parent.ctime = time.time_ns()

    def _drop(self, parent: Inode, name: bytes) -> Inode:
        child = self._child(parent, name)
        del parent.entries[name]
        parent.order = None
        parent.mtime = parent.ctime = time.time_ns()
        child.nlink -= 1
        child.ctime = parent.mtime
        self._maybe_free(child)
        return child

    def _maybe_free(self, i: Inode) -> None:
        if i.nlink <= (1 if stat.S_ISDIR(i.mode) else 0) and i.lookups <= 0 \
                and i.ino not in self.fhs.values():
            self.inodes.pop(i.ino, None)

    def _new(self, parent_inode: int, name: bytes, mode: int, ctx, rdev: int = 0) -> Inode:
        parent = self._get(parent_inode)
        i = Inode(self.next_ino, mode, ctx.uid, ctx.gid, rdev)
        self._add(parent, name, i)
        self.next_ino += 1
        self.inodes[i.ino] = i
        if stat.S_ISDIR(mode):
            parent.nlink += 1
        i.lookups += 1
        return i

    # -- handlers

    async def lookup(self, parent_inode, name, ctx):
        i = self._child(self._get(parent_inode), name)
        i.lookups += 1
        return self._entry(i)

    async def forget(self, inode_list):
        for ino, n in inode_list:
            i = self.inodes.get(ino)
            if i is not None:
                i.lookups -= n
                self._maybe_free(i)

    async def getattr(self, inode, ctx):
        return self._entry(self._get(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        i = self._get(inode)
        if fields.update_size:
            n = attr.st_size
            if n < len(i.data):
                del i.data[n:]
            else:
                i.data.extend(bytes(n - len(i.data)))
            i.mtime = time.time_ns()
        if fields.update_mode:
            i.mode = stat.S_IFMT(i.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            i.uid = attr.st_uid
        if fields.update_gid:
            i.gid = attr.st_gid
        if fields.update_atime:
            i.atime = attr.st_atime_ns
        if fields.update_mtime:
            i.mtime = attr.st_mtime_ns
        i.ctime = time.time_ns()
        return self._entry(i)

    async def readlink(self, inode, ctx):
        return self._get(inode).target

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        d = self._get(fh)
        if d.order is None:
            d.order = [(c, name) for name, (_, c) in d.entries.items()]
        order = d.order
        at = bisect_right(order, (start_id, b"\xff" * 256))
        for cookie, name in order[at:]:
            ent = d.entries.get(name)
            if ent is None:
                continue
            i = self.inodes[ent[0]]
            if not pyfuse3.readdir_reply(token, name, self._entry(i), cookie):
                break
            i.lookups += 1

    async def releasedir(self, fh):
        pass

    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._entry(self._new(parent_inode, name, stat.S_IFDIR | (mode & ~ctx.umask),
                                     ctx))

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._entry(self._new(parent_inode, name, mode & ~ctx.umask, ctx, rdev))

    async def symlink(self, parent_inode, name, target, ctx):
        i = self._new(parent_inode, name, stat.S_IFLNK | 0o777, ctx)
        i.target = bytes(target)
        return self._entry(i)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        i = self._get(inode)
        self._add(self._get(new_parent_inode), new_name, i)
        i.nlink += 1
        i.lookups += 1
        i.ctime = time.time_ns()
        return self._entry(i)

    async def unlink(self, parent_inode, name, ctx):
        self._drop(self._get(parent_inode), name)

    async def rmdir(self, parent_inode, name, ctx):
        parent = self._get(parent_inode)
        child = self._child(parent, name)
        if child.entries:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        self._drop(parent, name)
        parent.nlink -= 1

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old, new = self._get(parent_inode_old), self._get(parent_inode_new)
        i = self._child(old, name_old)
        if name_new in new.entries:
            victim = self._child(new, name_new)
            if victim.entries:
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            self._drop(new, name_new)
        del old.entries[name_old]
        old.order = None
        self._add(new, name_new, i)
        if stat.S_ISDIR(i.mode) and old is not new:
            old.nlink -= 1
            new.nlink += 1

    async def open(self, inode, flags, ctx):
        i = self._get(inode)
        if flags & os.O_TRUNC:
            i.data.clear()
        fh = self._fh(i.ino)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    def _fh(self, ino: int) -> int:
        fh = len(self.fhs) + 1
        while fh in self.fhs:
            fh += 1
        self.fhs[fh] = ino
        return fh

    async def create(self, parent_inode, name, mode, flags, ctx):
        i = self._new(parent_inode, name, stat.S_IFREG | (mode & ~ctx.umask), ctx)
        return pyfuse3.FileInfo(fh=self._fh(i.ino), keep_cache=True), self._entry(i)

    async def read(self, fh, off, size):
        return bytes(self._get(self.fhs[fh]).data[off:off + size])

    async def write(self, fh, off, buf):
        i = self._get(self.fhs[fh])
        d = i.data
        if off > len(d):
            d.extend(bytes(off - len(d)))
        d[off:off + len(buf)] = buf
        i.mtime = i.ctime = time.time_ns()
        return len(buf)

    async def flush(self, fh):
        pass

    async def release(self, fh):
        ino = self.fhs.pop(fh, None)
        i = self.inodes.get(ino)
        if i is not None:
            self._maybe_free(i)

    async def fsync(self, fh, datasync):
        pass

    async def fsyncdir(self, fh, datasync):
        pass

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK
        used = sum(-(-len(i.data) // BLOCK) for i in self.inodes.values())
        s.f_blocks = max(1 << 20, used * 2)
        s.f_bfree = s.f_bavail = s.f_blocks - used
        s.f_files = 1 << 24
        s.f_ffree = s.f_favail = s.f_files - len(self.inodes)
        s.f_namemax = 255
        return s

    async def getxattr(self, inode, name, ctx):
        try:
            return self._get(inode).xattrs[name]
        except KeyError:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None

    async def setxattr(self, inode, name, value, ctx):
        self._get(inode).xattrs[bytes(name)] = bytes(value)

    async def listxattr(self, inode, ctx):
        return list(self._get(inode).xattrs)

    async def removexattr(self, inode, name, ctx):
        try:
            del self._get(inode).xattrs[name]
        except KeyError:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mountpoint")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--writeback-cache", action="store_true",
                   help="let the kernel cache writes (FUSE_WRITEBACK_CACHE) and send them in"
                        " batches: what the kernel's own batching gives small writes")
    args = p.parse_args(argv)
    setup_logging(args.debug)
    MemFS.enable_writeback_cache = args.writeback_cache
    return serve(MemFS(), args.mountpoint, mount_options("memfs", "memfs", os.geteuid() == 0))


if __name__ == "__main__":
    sys.exit(main())
