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
from .delayed import Delayed, apply_in_steps
from .errors import Corrupted, DamagedFile, NoSpace, NotFound
from .format import BLOCK_SIZE, LINK_MAX, MAX_FILE_BYTES, OWN_MAX_INO, SYMLINK_MAX

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
_FILE_TYPES = frozenset((stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFCHR,
                         stat.S_IFBLK, stat.S_IFSOCK))


def check_record(rec: tuple) -> None:
    """An inode record read from the image is hostile until checked: every
    number later used as a size, a count or an allocation bound is bounded
    here (DamagedFile: EUCLEAN for this inode only)."""
    ino, mode, nlink, size, blocks = rec[0], rec[1], rec[2], rec[5], rec[6]
    if stat.S_IFMT(mode) not in _FILE_TYPES:
        raise DamagedFile(ino, f"bad file type in mode {mode:o}")
    if size > MAX_FILE_BYTES or blocks > MAX_FILE_BYTES // BLOCK_SIZE + 1:
        raise DamagedFile(ino, f"impossible size {size} or block count {blocks}")
    if stat.S_ISLNK(mode) and size > SYMLINK_MAX:
        raise DamagedFile(ino, f"symbolic link of {size} bytes (at most {SYMLINK_MAX})")
    if stat.S_ISDIR(mode) and nlink > LINK_MAX + 2:
        raise DamagedFile(ino, f"directory with {nlink} links")


class Inodes(Delayed):
    """The inode tree, with a cache of in-core inodes (an operation usually
    reads the same few inodes several times) and delayed writes: `create`,
    `put` and `delete` record what the inode's record must become in
    `_pending`, and the tree is changed once per inode at the start of the
    next commit (`flush`, called by the volume, in key order), like the
    kernel's dirty inode list; an inode written by every one of a thousand
    writes costs one tree update, and one created and freed before the
    commit (a short-lived temporary file) costs nothing in the tree.
    `_pending` takes part in operations (op_begin/op_rollback restore what a
    failed operation put), so it never holds a change that was rolled back.

    `get` returns the cached object; whoever changes it must `put` it
    before the operation ends, and a rolled-back operation must call
    `forget_cache()`."""

    def __init__(self, vol):
        self.vol = vol
        self.tree = vol.trees["inode"]
        self._cache: dict[int, Inode] = {}
        # _pending: ino -> (record, or None for "deleted"; whether the tree
        # holds the inode now)
        Delayed.__init__(self)
        vol.add_participant(self)

    # ---- taking part in commits (volume.py) -------------------------------------
    def flush(self) -> None:
        """Write every delayed inode change into the tree."""
        items = self._take_all()
        gone = apply_in_steps(self.tree, (((ino,), *items[ino]) for ino in sorted(items)),
                              self.vol.alloc.settle)
        if gone:
            raise Corrupted(0, f"inode {gone[0][0]} vanished from the inode tree")

    # ---- records ----------------------------------------------------------------
    def get(self, ino: int) -> Inode:
        inode = self._cache.get(ino)
        if inode is not None:
            return inode
        cur = self._pending.get(ino)
        rec = self.tree.lookup((ino,)) if cur is None else cur[0]
        if rec is None:
            raise NotFound(f"inode {ino} does not exist")
        if cur is None:
            check_record(rec)       # (records of this mount are sound by construction)
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
        cur = self._pending.get(inode.ino)
        self._put(inode.ino, (inode.to_rec(), True if cur is None else cur[1]))
        self._cache[inode.ino] = inode

    def create(self, mode: int, uid: int, gid: int, *, rdev: int = 0, parent: int = 0,
               nlink: int = 1, ino: int | None = None) -> Inode:
        sb = self.vol.sb
        if ino is None:
            ino = int(sb["next_ino"])
            if ino > OWN_MAX_INO:
                raise NoSpace("inode numbers exhausted")
            sb["next_ino"] = ino + 1
        elif ino in self._pending or self.tree.lookup((ino,)) is not None:
            raise Corrupted(0, f"inode {ino} exists already")
        now = time.time_ns()
        inode = Inode.from_rec((ino, mode, nlink, uid, gid, 0, 0, now, now, now, now,
                                rdev, parent, 0, 0))
        self._put(ino, (inode.to_rec(), False))
        sb["inode_count"] = int(sb["inode_count"]) + 1
        self._cache[ino] = inode
        return inode

    def delete(self, ino: int) -> None:
        cur = self._pending.get(ino)
        if cur is None:
            if self.tree.lookup((ino,)) is None:
                raise NotFound(f"inode {ino} does not exist")
            cur = (True, True)
        elif cur[0] is None:
            raise NotFound(f"inode {ino} does not exist")
        self._cache.pop(ino, None)
        self._put(ino, (None, True) if cur[1] else None)
        sb = self.vol.sb
        sb["inode_count"] = int(sb["inode_count"]) - 1
