"""What directory-entry records mean: names in a directory.

Key (parent inode, pos) with pos = hash31(name) << 32 | collision index, so
the entries of one directory are contiguous, a lookup is one short range
query, and pos is a stable readdir cookie.  Names are up to 255 bytes and
stored whole in the record; names whose hashes collide get different
collision indexes and are told apart by comparing the names.
"""

import crc32c

from .errors import Corrupted, NameTooLong
from .format import NAME_MAX

_LOW = 0xFFFFFFFF


def name_hash(name: bytes) -> int:
    return crc32c.crc32c(name) & 0x7FFFFFFF


def check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise NameTooLong(f"name of {len(name)} bytes is longer than {NAME_MAX}")
    if not name or b"/" in name or b"\0" in name:
        raise Corrupted(0, f"invalid name {name!r}")


class Dirs:
    def __init__(self, vol):
        self.tree = vol.trees["dir"]

    def _same_hash(self, parent: int, name: bytes):
        h = name_hash(name) << 32
        return self.tree.scan(lo=(parent, h), hi=(parent, h | _LOW))

    def lookup(self, parent: int, name: bytes) -> tuple | None:
        """(pos, ino, ftype) of the entry, or None."""
        for rec in self._same_hash(parent, name):
            if rec[5][:rec[4]] == name or rec[5] == name:
                return rec[1], rec[2], rec[3]
        return None

    def add(self, parent: int, name: bytes, ino: int, ftype: int) -> int:
        used = set()
        h = name_hash(name) << 32
        for rec in self._same_hash(parent, name):
            used.add(rec[1] & _LOW)
        seq = 0
        while seq in used:
            seq += 1
        pos = h | seq
        self.tree.insert((parent, pos, ino, ftype, len(name), name))
        return pos

    def remove(self, parent: int, pos: int) -> None:
        if self.tree.delete((parent, pos)) is None:
            raise Corrupted(0, f"directory {parent}: entry {pos:#x} vanished")

    def retarget(self, parent: int, pos: int, name: bytes, ino: int, ftype: int) -> None:
        self.tree.update((parent, pos, ino, ftype, len(name), name))

    def entries(self, parent: int, from_pos: int = 0):
        """(pos, name, ino, ftype) in cookie order, from pos on."""
        for rec in self.tree.scan(lo=(parent, from_pos), hi=(parent,)):
            yield rec[1], rec[5], rec[2], rec[3]

    def is_empty(self, parent: int) -> bool:
        for _ in self.tree.scan(lo=(parent, 0), hi=(parent,)):
            return False
        return True
