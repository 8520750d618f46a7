"""A tiny in-memory pyfuse3 file system for tests/test_binding.py.

Run as ``python -I binding_fs.py --log LOG [--dont-mask] MOUNTPOINT``.  It
mounts one flat directory of regular files, serves it with ONE request
worker (``pyfuse3.main(min_tasks=1, max_tasks=1)``) and appends one JSON
object per line to LOG for every call of interest, before it answers:

* ``{"op": "init", "dont_mask": bool|null, "bogus": bool|null}`` once the
  kernel's INIT is being answered (``dont_mask``: what
  ``pyfuse3.want_capability(FUSE_CAP_DONT_MASK)`` returned with
  ``--dont-mask``; ``bogus``: what it returned for a bit no kernel offers);
* ``create`` (name, mode, umask, fh), ``open`` (name, fh);
* ``fallocate``, ``copy_file_range`` and ``lseek`` with their arguments;
* ``wait-start`` / ``wait-end`` around the blocking getxattr below;
* ``{"op": "main returned"}`` when ``pyfuse3.main()`` has returned.

Extended attributes drive the rest:

* ``getxattr user.wait``: calls ``pyfuse3.start_temporary_worker()`` twice
  (logging what they returned) and waits until another request sets
  ``user.release`` (at most WAIT_LIMIT seconds, then ETIMEDOUT); answers
  ``released``;
* ``getxattr user.workers``: the number of running request workers (trio
  tasks named ``pyfuse-*``);
* ``getxattr user.stats``: JSON ``{"requests": n, "steps": n}``: requests
  handled and scheduler steps taken by the workers (a trio instrument);
* ``setxattr user.fail = ERRNO``: fallocate, copy_file_range and lseek on
  this file raise ``FUSEError(ERRNO)`` (``0`` clears it);
* ``setxattr user.overcount = N``: copy_file_range from this file returns
  N more bytes than it was asked to copy (a handler bug).

SIGTERM (or SIGINT) calls ``pyfuse3.terminate()``.  File handles are
counted from 1000 so that a test can tell them from inode numbers.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import os
import signal
import stat
import sys

import pyfuse3
import trio

BLOCK = 4096
COPY_CHUNK = 3000      # copy_file_range copies at most this much per call
WAIT_LIMIT = 8.0       # seconds getxattr user.wait waits for user.release
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10


class Node:
    def __init__(self, ino: int, mode: int, name: bytes = b""):
        self.ino = ino
        self.mode = mode
        self.name = name
        self.data = bytearray()
        self.fail = 0                  # errno for the three new handlers
        self.overcount = 0             # copy_file_range from here claims this much more


def counted(handler):
    @functools.wraps(handler)
    async def run(self, *args):
        self.requests += 1
        return await handler(self, *args)
    return run


class StepCounter(trio.abc.Instrument):
    """Counts the scheduler steps of the request workers."""

    def __init__(self):
        self.steps = 0

    def before_task_step(self, task):
        if task.name.startswith("pyfuse-"):
            self.steps += 1


class BindingFS(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, log_path: str, dont_mask: bool, counter: StepCounter):
        super().__init__()
        self.log_file = open(log_path, "a", buffering=1)
        self.dont_mask = dont_mask
        self.counter = counter
        self.requests = 0
        root = Node(pyfuse3.ROOT_INODE, stat.S_IFDIR | 0o755)
        self.nodes = {root.ino: root}
        self.names: dict[bytes, int] = {}
        self.next_ino = 2
        self.fhs: dict[int, int] = {}
        self.next_fh = 1000
        self.released = None           # trio.Event while user.wait waits

    def log(self, **record) -> None:
        self.log_file.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------ helpers

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.st_mode = node.mode
        e.st_nlink = 2 if stat.S_ISDIR(node.mode) else 1
        e.st_uid = 0
        e.st_gid = 0
        e.st_size = len(node.data)
        e.st_blksize = BLOCK
        e.st_blocks = (len(node.data) + 511) // 512
        e.entry_timeout = 0
        e.attr_timeout = 0
        return e

    def node_of(self, fh: int) -> Node:
        try:
            return self.nodes[self.fhs[fh]]
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None

    def new_fh(self, ino: int) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.fhs[fh] = ino
        return fh

    def check_fail(self, *nodes: Node) -> None:
        for node in nodes:
            if node.fail:
                raise pyfuse3.FUSEError(node.fail)

    # ------------------------------------------------------------ basics

    def init(self):
        granted = bogus = None
        if self.dont_mask:
            want = getattr(pyfuse3, "want_capability", None)
            if want is not None:
                granted = want(pyfuse3.FUSE_CAP_DONT_MASK)
                bogus = want(1 << 31)
        self.log(op="init", dont_mask=granted, bogus=bogus)

    @counted
    async def lookup(self, parent_inode, name, ctx):
        if parent_inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if name in (b".", b".."):
            return self.attrs(self.nodes[pyfuse3.ROOT_INODE])
        ino = self.names.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs(self.nodes[ino])

    async def forget(self, inode_list):
        pass

    @counted
    async def getattr(self, inode, ctx):
        return self.attrs(self.nodes[inode])

    @counted
    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self.nodes[inode]
        if fields.update_size:
            size = attr.st_size
            del node.data[size:]
            node.data.extend(bytes(size - len(node.data)))
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
        return self.attrs(node)

    @counted
    async def create(self, parent_inode, name, mode, flags, ctx):
        if name in self.names:
            raise pyfuse3.FUSEError(errno.EEXIST)
        node = Node(self.next_ino, mode, name)
        self.next_ino += 1
        self.nodes[node.ino] = node
        self.names[name] = node.ino
        fh = self.new_fh(node.ino)
        self.log(op="create", name=name.decode(), mode=mode, umask=ctx.umask, fh=fh)
        return pyfuse3.FileInfo(fh=fh), self.attrs(node)

    @counted
    async def open(self, inode, flags, ctx):
        fh = self.new_fh(inode)
        self.log(op="open", name=self.nodes[inode].name.decode(), fh=fh)
        return pyfuse3.FileInfo(fh=fh)

    @counted
    async def read(self, fh, off, size):
        return bytes(self.node_of(fh).data[off:off + size])

    @counted
    async def write(self, fh, off, buf):
        data = self.node_of(fh).data
        if off > len(data):
            data.extend(bytes(off - len(data)))
        data[off:off + len(buf)] = buf
        return len(buf)

    @counted
    async def flush(self, fh):
        pass

    @counted
    async def release(self, fh):
        self.fhs.pop(fh, None)

    @counted
    async def unlink(self, parent_inode, name, ctx):
        if self.names.pop(name, None) is None:
            raise pyfuse3.FUSEError(errno.ENOENT)

    @counted
    async def opendir(self, inode, ctx):
        return inode

    @counted
    async def readdir(self, fh, start_id, token):
        entries = sorted(self.names.items())
        for i, (name, ino) in enumerate(entries[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, name, self.attrs(self.nodes[ino]), i):
                break

    @counted
    async def releasedir(self, fh):
        pass

    # ------------------------------------------------------------ xattrs

    @counted
    async def getxattr(self, inode, name, ctx):
        if name == b"user.wait":
            return await self.wait_for_release()
        if name == b"user.workers":
            return str(worker_count()).encode()
        if name == b"user.stats":
            return json.dumps({"requests": self.requests,
                               "steps": self.counter.steps}).encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def wait_for_release(self) -> bytes:
        self.released = trio.Event()
        start = getattr(pyfuse3, "start_temporary_worker", None)
        # The second call finds the first one's worker (about to wait for
        # requests) and starts none.
        started = [start(), start()] if start is not None else None
        self.log(op="wait-start", started=started)
        with trio.move_on_after(WAIT_LIMIT) as scope:
            await self.released.wait()
        self.log(op="wait-end", released=not scope.cancelled_caught)
        if scope.cancelled_caught:
            raise pyfuse3.FUSEError(errno.ETIMEDOUT)
        return b"released"

    @counted
    async def setxattr(self, inode, name, value, ctx):
        if name == b"user.release":
            if self.released is not None:
                self.released.set()
            return
        if name == b"user.fail":
            self.nodes[inode].fail = int(value)
            return
        if name == b"user.overcount":
            self.nodes[inode].overcount = int(value)
            return
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @counted
    async def listxattr(self, inode, ctx):
        return []

    # ------------------------------------------------------------ the new handlers

    @counted
    async def fallocate(self, fh, mode, offset, length):
        node = self.node_of(fh)
        self.log(op="fallocate", fh=fh, mode=mode, offset=offset, length=length)
        self.check_fail(node)
        end = offset + length
        data = node.data
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            stop = min(end, len(data))
            if stop > offset:
                data[offset:stop] = bytes(stop - offset)
        if not mode & FALLOC_FL_KEEP_SIZE and end > len(data):
            data.extend(bytes(end - len(data)))

    @counted
    async def copy_file_range(self, fh_in, off_in, fh_out, off_out, length, flags):
        src, dst = self.node_of(fh_in), self.node_of(fh_out)
        self.log(op="copy_file_range", fh_in=fh_in, off_in=off_in, fh_out=fh_out,
                 off_out=off_out, length=length, flags=flags)
        self.check_fail(src, dst)
        chunk = bytes(src.data[off_in:off_in + min(length, COPY_CHUNK)])
        if off_out > len(dst.data):
            dst.data.extend(bytes(off_out - len(dst.data)))
        dst.data[off_out:off_out + len(chunk)] = chunk
        if src.overcount:
            return length + src.overcount       # a handler bug
        return len(chunk)

    @counted
    async def lseek(self, fh, offset, whence):
        node = self.node_of(fh)
        self.log(op="lseek", fh=fh, offset=offset, whence=whence)
        self.check_fail(node)
        # Data: the BLOCK-sized blocks with a non-zero byte; the rest is hole.
        data = node.data
        size = len(data)
        if offset >= size:
            raise pyfuse3.FUSEError(errno.ENXIO)
        want_data = whence == os.SEEK_DATA
        block = offset // BLOCK
        while block * BLOCK < size:
            piece = data[block * BLOCK:(block + 1) * BLOCK]
            if any(piece) == want_data:
                return max(offset, block * BLOCK)
            block += 1
        if want_data:
            raise pyfuse3.FUSEError(errno.ENXIO)
        return size


def worker_count() -> int:
    """Running trio tasks named pyfuse-* (pyfuse3's request workers)."""
    count = 0
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task.name.startswith("pyfuse-"):
            count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


async def serve(ops: BindingFS, counter: StepCounter) -> None:
    trio.lowlevel.add_instrument(counter)

    async def on_signal():
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                pyfuse3.terminate()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signal)
        await pyfuse3.main(min_tasks=1, max_tasks=1)
        ops.log(op="main returned")
        nursery.cancel_scope.cancel()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--dont-mask", action="store_true")
    parser.add_argument("mountpoint")
    args = parser.parse_args()
    counter = StepCounter()
    ops = BindingFS(args.log, args.dont_mask, counter)
    pyfuse3.init(ops, args.mountpoint, {"fsname=pyfuse3-binding-test"})
    try:
        trio.run(serve, ops, counter)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
