"""What directory-entry records mean: names in a directory.

A directory's st_size follows its entries (`entry_bytes`, kept up to date
by fs.py on every add and remove, recomputed by check and repair with
`dir_sizes`).

Key (parent inode, pos) with pos = hash31(name) << 32 | collision index, so
the entries of one directory are contiguous, a lookup is one short range
query, and pos is a stable readdir cookie.  Names are up to 255 bytes and
stored whole in the record; names whose hashes collide get different
collision indexes and are told apart by comparing the names.

`Dirs` keeps a name cache, (parent, name) -> (pos, ino, ftype) or None for
a name known to be absent, like the kernel's dcache, and the (parent, hash)
ranges known to be empty, so that creating a name just looked up in vain
needs no second search for its collision index: every change of the dir
tree goes through add/remove/retarget here, which keep both exact, and a
rolled-back operation must call `forget_cache()`.

A directory made by this mount starts *complete* (`note_empty`): every
entry it gets is added here, so the name cache holds all of them, and a
name it lacks is absent without a tree search (the negative lookup that
precedes every create).  The collision indexes in use are kept per hash
for complete directories.  Completeness ends with the cache (a full cache
is cleared, a rollback forgets it), after which lookups search the tree
as for any directory.
"""

import logging

from .errors import Corrupted, NameTooLong
from .format import NAME_MAX, name_hash, valid_name  # noqa: F401 (also the engine's API)

_LOW = 0xFFFFFFFF

# A directory's st_size is the bytes of its entries, counted as XFS counts
# a short-form directory: a 6-byte header, and per entry its name plus 8
# bytes (name length, offset, file type, inode number).  So `ls -l` shows
# what XFS shows for a small directory, an empty one included.
DIR_HEAD_BYTES = 6
DIRENT_HEAD_BYTES = 8


def entry_bytes(name: bytes) -> int:
    """What one entry adds to its directory's st_size."""
    return DIRENT_HEAD_BYTES + len(name)


def dir_sizes(entries) -> dict[int, int]:
    """Each directory's st_size from (parent, name) of every entry; a
    directory with no entry is DIR_HEAD_BYTES."""
    sizes: dict[int, int] = {}
    for parent, name in entries:
        sizes[parent] = sizes.get(parent, DIR_HEAD_BYTES) + entry_bytes(name)
    return sizes


def check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise NameTooLong(f"name of {len(name)} bytes is longer than {NAME_MAX}")
    if not name or b"/" in name or b"\0" in name:
        raise Corrupted(0, f"invalid name {name!r}")


CACHE_MAX = 131072
log = logging.getLogger(__name__)


class Dirs:
    def __init__(self, vol):
        self.tree = vol.trees["dir"]
        self._cache: dict[tuple[int, bytes], tuple | None] = {}
        self._vacant: set[tuple[int, int]] = set()     # (parent, hash): no entries
        self._complete: set[int] = set()        # directories whose entries are all cached
        self._used: dict[tuple[int, int], int] = {}   # their (parent, hash) -> index bits

    def forget_cache(self) -> None:
        self._cache.clear()
        self._vacant.clear()
        self._complete.clear()
        self._used.clear()

    def note_empty(self, ino: int) -> None:
        """`ino` is a directory just made, with no entries: complete."""
        self._complete.add(ino)

    def _remember(self, parent: int, name: bytes, ent) -> None:
        if len(self._cache) >= CACHE_MAX:
            self.forget_cache()
        self._cache[(parent, name)] = ent

    def _same_hash(self, parent: int, name: bytes):
        h = name_hash(name) << 32
        return self.tree.short_range((parent, h), (parent, h | _LOW))

    def lookup(self, parent: int, name: bytes) -> tuple | None:
        """(pos, ino, ftype) of the entry, or None."""
        try:
            return self._cache[(parent, name)]
        except KeyError:
            if parent in self._complete:
                return None
        ent = None
        empty = True
        for rec in self._same_hash(parent, name):
            empty = False
            if rec[5][:rec[4]] == name or rec[5] == name:
                ent = rec[1], rec[2], rec[3]
                break
        self._remember(parent, name, ent)
        if empty:
            self._vacant.add((parent, name_hash(name)))
        return ent

    def add(self, parent: int, name: bytes, ino: int, ftype: int) -> int:
        h = name_hash(name)
        seq = 0
        if parent in self._complete:
            used = self._used.get((parent, h), 0)
            seq = (~used & (used + 1)).bit_length() - 1      # the lowest free index
            self._used[(parent, h)] = used | 1 << seq
        elif (parent, h) in self._vacant:
            self._vacant.discard((parent, h))
        else:
            used = {rec[1] & _LOW for rec in self._same_hash(parent, name)}
            while seq in used:
                seq += 1
        pos = h << 32 | seq
        self.tree.insert((parent, pos, ino, ftype, len(name), name))
        self._remember(parent, name, (pos, ino, ftype))
        return pos

    def remove(self, parent: int, pos: int, name: bytes) -> None:
        """Remove the entry `name` found at `pos`."""
        if not self.tree.discard((parent, pos)):
            raise Corrupted(0, f"directory {parent}: entry {pos:#x} vanished")
        if parent in self._complete:
            key = (parent, pos >> 32)
            used = self._used.get(key, 0) & ~(1 << (pos & _LOW))
            if used:
                self._used[key] = used
            else:
                self._used.pop(key, None)
        self._remember(parent, name, None)

    def retarget(self, parent: int, pos: int, name: bytes, ino: int, ftype: int) -> None:
        self.tree.update((parent, pos, ino, ftype, len(name), name))
        self._remember(parent, name, (pos, ino, ftype))

    def entries(self, parent: int, from_pos: int = 0):
        """(pos, name, ino, ftype) in cookie order, from pos on.  A record
        whose name no directory may hold (a crafted image: a '/' or a NUL
        in it) is left out, with a log line: the kernel would refuse the
        whole listing (EIO) for it."""
        for rec in self.tree.scan(lo=(parent, from_pos), hi=(parent,)):
            if not valid_name(rec[5], rec[4]):
                log.warning("directory %d: entry %r is not a valid name: not listed (run"
                            " daxfs check --repair)", parent, rec[5])
                continue
            yield rec[1], rec[5], rec[2], rec[3]

    def is_empty(self, parent: int) -> bool:
        for _ in self.tree.scan(lo=(parent, 0), hi=(parent,)):
            return False
        return True
