"""What inode records mean: the in-core Inode and the inode tree's get,
put, create and delete.

An inode record (format.INODE_DTYPE) is converted to an `Inode` in exactly
one place (`Inode.from_rec`) and back in one place (`to_rec`).  Inode
numbers come from the superblock's `next_ino` counter and are never reused.
"""

import operator
import stat
import time

from .attrs import Attr
from .delayed import Delayed
from .errors import Corrupted, NoSpace, NotFound
from .format import BLOCK_SIZE, MAX_FILE_BYTES, OWN_MAX_INO

_FIELDS = ("ino", "mode", "nlink", "uid", "gid", "size", "blocks", "atime", "mtime",
           "ctime", "btime", "rdev", "parent", "flags", "generation")


_get_fields = operator.attrgetter(*_FIELDS)


class Inode:
    __slots__ = _FIELDS

    @classmethod
    def from_rec(cls, rec: tuple) -> "Inode":
        ino = cls.__new__(cls)
        for f, v in zip(_FIELDS, rec):
            setattr(ino, f, v)
        return ino

    def to_rec(self) -> tuple:
        return _get_fields(self)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_lnk(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def attr(self) -> Attr:
        return Attr(self.ino, self.mode, self.nlink, self.uid, self.gid, self.rdev,
                    self.size, self.blocks, self.atime, self.mtime, self.ctime,
                    self.btime, self.generation)


CACHE_MAX = 65536


class Inodes(Delayed):
    """The inode tree, with a cache of in-core inodes (an operation usually
    reads the same few inodes several times) and delayed writes: `put`
    records the inode's new record in `_pending`, and the tree is updated
    once per inode at the start of the next commit (`flush`, called by the
    volume), like the kernel's dirty inode list; an inode written by every
    one of a thousand writes costs one tree update.  `_pending` takes part
    in operations (op_begin/op_rollback restore what a failed operation
    put), so it never holds a change that was rolled back.

    `get` returns the cached object; whoever changes it must `put` it
    before the operation ends, and a rolled-back operation must call
    `forget_cache()`."""

    def __init__(self, vol):
        self.vol = vol
        self.tree = vol.trees["inode"]
        self._cache: dict[int, Inode] = {}
        Delayed.__init__(self)              # _pending: ino -> record not yet in the tree
        vol.add_participant(self)

    # ---- taking part in commits (volume.py) -------------------------------------
    def flush(self) -> None:
        """Write every delayed inode record into the tree."""
        recs = self._take_all()
        self.tree.update_sorted([recs[ino] for ino in sorted(recs)])

    # ---- records ----------------------------------------------------------------
    def get(self, ino: int) -> Inode:
        inode = self._cache.get(ino)
        if inode is not None:
            return inode
        rec = self._pending.get(ino)
        if rec is None:
            rec = self.tree.lookup((ino,))
        if rec is None:
            raise NotFound(f"inode {ino} does not exist")
        if rec[5] > MAX_FILE_BYTES or rec[6] > MAX_FILE_BYTES // BLOCK_SIZE:
            raise Corrupted(0, f"inode {ino}: impossible size {rec[5]} or block count {rec[6]}")
        inode = Inode.from_rec(rec)
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[ino] = inode
        return inode

    def forget_cache(self) -> None:
        self._cache.clear()

    def cached(self, ino: int) -> Inode | None:
        """The in-core inode if it is cached (no tree access)."""
        return self._cache.get(ino)

    def put(self, inode: Inode) -> None:
        self._put(inode.ino, inode.to_rec())
        self._cache[inode.ino] = inode

    def create(self, mode: int, uid: int, gid: int, *, rdev: int = 0, parent: int = 0,
               nlink: int = 1, ino: int | None = None) -> Inode:
        sb = self.vol.sb
        if ino is None:
            ino = int(sb["next_ino"])
            if ino > OWN_MAX_INO:
                raise NoSpace("inode numbers exhausted")
            sb["next_ino"] = ino + 1
        now = time.time_ns()
        inode = Inode.from_rec((ino, mode, nlink, uid, gid, 0, 0, now, now, now, now,
                                rdev, parent, 0, 0))
        self.tree.insert(inode.to_rec())
        sb["inode_count"] = int(sb["inode_count"]) + 1
        self._cache[ino] = inode
        return inode

    def delete(self, ino: int) -> None:
        self._cache.pop(ino, None)
        self._put(ino, None)
        if self.tree.delete((ino,)) is None:
            raise NotFound(f"inode {ino} does not exist")
        sb = self.vol.sb
        sb["inode_count"] = int(sb["inode_count"]) - 1

    def all(self):
        pending = self._pending
        for rec in self.tree.scan():
            yield Inode.from_rec(pending.get(rec[0], rec))
