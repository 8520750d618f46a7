"""What extended-attribute records mean: names and values of one inode.

Key (ino, pos) with pos = hash31(name) << 32 | collision index, as for
directory entries.  Names up to 255 bytes live in the record; values up to
160 bytes live inline, larger ones (to 64 KiB) in a contiguous run of
blocks owned by the inode in the rmap with the RMAP_ATTR flag.
"""

from .dirs import name_hash
from .errors import AttributeTooBig, Exists, NameTooLong, NoAttribute
from .format import BLOCK_SIZE as BS
from .format import RMAP_ATTR, XATTR_INLINE_MAX, XATTR_NAME_MAX, XATTR_VALUE_MAX

XATTR_CREATE = 1
XATTR_REPLACE = 2
_LOW = 0xFFFFFFFF


class Xattrs:
    def __init__(self, vol):
        self.vol = vol
        self.tree = vol.trees["xattr"]
        # inodes known to have no attribute at all: the kernel asks for
        # security.capability before every write, and the answer is
        # almost always "none"
        self._bare: set[int] = set()

    def note_bare(self, ino: int) -> None:
        """A new inode: it has no attributes yet."""
        if len(self._bare) > 65536:
            self._bare.clear()
        self._bare.add(ino)

    def _find(self, ino: int, name: bytes):
        h = name_hash(name) << 32
        for rec in self.tree.short_range((ino, h), (ino, h | _LOW)):
            if rec[6] == name:
                return rec
        return None

    def get(self, ino: int, name: bytes) -> bytes:
        if ino in self._bare:
            raise NoAttribute(f"no attribute {name!r}")
        rec = self._find(ino, name)
        if rec is None:
            if not self.names(ino):
                if len(self._bare) > 65536:
                    self._bare.clear()
                self._bare.add(ino)
            raise NoAttribute(f"no attribute {name!r}")
        vlen, vblk = rec[4], rec[5]
        if vblk == 0:
            return rec[7].ljust(vlen, b"\0")[:vlen]
        n = -(-vlen // BS)
        self.vol.pmem.check_load(vblk, n)
        return self.vol.pmem.blocks(vblk, n)[:vlen].tobytes()

    def set(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        if len(name) > XATTR_NAME_MAX:
            raise NameTooLong(f"attribute name of {len(name)} bytes is longer than {XATTR_NAME_MAX}")
        if len(value) > XATTR_VALUE_MAX:
            raise AttributeTooBig(f"attribute value of {len(value)} bytes is over {XATTR_VALUE_MAX}")
        self._bare.discard(ino)
        old = self._find(ino, name)
        if old is not None and flags & XATTR_CREATE:
            raise Exists(f"attribute {name!r} exists")
        if old is None and flags & XATTR_REPLACE:
            raise NoAttribute(f"no attribute {name!r}")
        if old is not None:
            pos = old[1]
            self._free_value(ino, old)
            self.tree.discard((ino, pos))
        else:
            used = {r[1] & _LOW for r in self.tree.scan(lo=(ino, name_hash(name) << 32),
                                                       hi=(ino, name_hash(name) << 32 | _LOW))}
            seq = 0
            while seq in used:
                seq += 1
            pos = (name_hash(name) << 32) | seq
        vblk = 0
        inline = b""
        if len(value) <= XATTR_INLINE_MAX:
            inline = value
        else:
            n = -(-len(value) // BS)
            p, got = self.vol.alloc.alloc(n, minlen=n)
            area = self.vol.pmem.blocks(p, n)
            area[:len(value)] = memoryview(value)
            area[len(value):] = 0
            self.vol.journal.note_data(p, n)
            self.vol.rmap.map(p, ino, pos, n, RMAP_ATTR)
            vblk = p
        self.tree.insert((ino, pos, len(name), (0, 0, 0), len(value), vblk, name, inline))

    def _free_value(self, ino: int, rec) -> None:
        vlen, vblk = rec[4], rec[5]
        if vblk:
            n = -(-vlen // BS)
            self.vol.rmap.unmap(vblk, ino, rec[1])
            self.vol.alloc.free(vblk, n)

    def remove(self, ino: int, name: bytes) -> None:
        rec = self._find(ino, name)
        if rec is None:
            raise NoAttribute(f"no attribute {name!r}")
        self._free_value(ino, rec)
        self.tree.discard((ino, rec[1]))

    def names(self, ino: int) -> list[bytes]:
        if ino in self._bare:
            return []
        return [rec[6] for rec in self.tree.scan(lo=(ino, 0), hi=(ino,))]

    def remove_all(self, ino: int) -> None:
        if ino in self._bare:
            self._bare.discard(ino)
            return
        for rec in list(self.tree.scan(lo=(ino, 0), hi=(ino,))):
            self._free_value(ino, rec)
            self.tree.discard((ino, rec[1]))

    def value_blocks(self):
        """(ino, pos, first block, count) of every out-of-line value (check)."""
        for rec in self.tree.scan():
            if rec[5]:
                yield rec[0], rec[1], rec[5], -(-rec[4] // BS)
