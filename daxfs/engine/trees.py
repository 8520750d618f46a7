"""The descriptors of the eight trees: record dtype, how many leading fields
form the key, (rmap only) the fields that make records overlap, a named
record type, and the check of one record's fields.

This is all the generic B+tree learns about each index; what the records
mean lives in inodes.py, dirs.py, filemap.py, alloc.py, rmap.py,
refcount.py, xattrs.py and orphans.py.

Record types: the engine's hot paths pass records as plain tuples (what
numpy's .item() gives); code that reads whole trees (check, repair, poison)
names the fields instead of counting positions: `SPECS[name].record` is a
namedtuple generated from the tree's dtype (`InodeRec._make(row).size`).

Record checks: `SPECS[name].check(rec, total_blocks)` says what is wrong
with one record taken alone (an extent pointing outside the device, a name
of the wrong length, a size no file can have), or returns None.  check
reports what it says, repair never writes a record it rejects, and
BTree.walk runs it on every leaf record.  What needs more than one record
(extents that overlap, an entry naming a missing inode) is check's.
"""

import stat
from collections import namedtuple

from .btree import TreeSpec
from .format import (BLOCK_SIZE, BMAP_DTYPE, DIRENT_DTYPE, DT_OF_FMT, EXT_KNOWN, FMT_OF_DT,
                     FREE_DTYPE, INODE_DTYPE, MAX_FILE_BLOCKS, MAX_FILE_BYTES,
                     ORPHAN_DTYPE, OWN_AG, OWN_FS, OWN_LOG, OWN_MAX_INO, REFC_DTYPE, RMAP_ATTR, RMAP_UNWRITTEN,
                     RMAP_DTYPE, SYMLINK_MAX, TREE_BMAP, TREE_DIR, TREE_FREE, TREE_INODE,
                     TREE_NAMES, TREE_ORPHAN, TREE_REFC, TREE_RMAP, TREE_XATTR, XATTR_DTYPE,
                     XATTR_INLINE_MAX, XATTR_NAME_MAX, XATTR_VALUE_MAX, name_hash, own_tree,
                     valid_name)


def record_type(name: str, dtype):
    """A namedtuple with the fields of a record dtype, in order."""
    return namedtuple(name, dtype.names)


InodeRec = record_type("InodeRec", INODE_DTYPE)
DirentRec = record_type("DirentRec", DIRENT_DTYPE)
BmapRec = record_type("BmapRec", BMAP_DTYPE)
FreeRec = record_type("FreeRec", FREE_DTYPE)
RmapRec = record_type("RmapRec", RMAP_DTYPE)
RefcRec = record_type("RefcRec", REFC_DTYPE)
XattrRec = record_type("XattrRec", XATTR_DTYPE)
OrphanRec = record_type("OrphanRec", ORPHAN_DTYPE)

META_OWNERS = frozenset({OWN_FS, OWN_LOG, OWN_AG} | {own_tree(t) for t in TREE_NAMES})


def _ino_ok(ino: int) -> bool:
    return 0 < ino <= OWN_MAX_INO


def _range_ok(start: int, length: int, total_blocks: int, first: int = 1) -> bool:
    """A run of blocks inside the device, starting at `first` or later (only
    the rmap names block 0, the superblock)."""
    return length > 0 and first <= start < total_blocks and start + length <= total_blocks


def _name_ok(name: bytes, namelen: int, limit: int) -> bool:
    return 0 < len(name) <= limit and namelen == len(name)


def check_inode(r: InodeRec, total_blocks: int) -> str | None:
    if not _ino_ok(r.ino):
        return f"inode {r.ino}: impossible inode number"
    if stat.S_IFMT(r.mode) not in DT_OF_FMT:
        return f"inode {r.ino}: bad file type in mode {r.mode:o}"
    if r.size > MAX_FILE_BYTES:
        return f"inode {r.ino}: size {r.size} is beyond the maximum file size"
    if stat.S_ISLNK(r.mode) and r.size > SYMLINK_MAX:
        return f"inode {r.ino}: symbolic link of {r.size} bytes (at most {SYMLINK_MAX})"
    return None


def check_dirent(r: DirentRec, total_blocks: int) -> str | None:
    name = r.name
    if not _ino_ok(r.parent):
        return f"directory entry {name!r} in impossible directory inode {r.parent}"
    what = f"directory {r.parent}: entry {name!r}"
    if not valid_name(name, r.namelen):
        return f"{what} is not a valid name (length {r.namelen})"
    if not _ino_ok(r.ino):
        return f"{what} names impossible inode {r.ino}"
    if r.ftype not in FMT_OF_DT:
        return f"{what}: unknown file type {r.ftype}"
    if r.pos >> 32 != name_hash(name):
        return f"{what} is filed under the wrong name hash"
    return None


def check_bmap(r: BmapRec, total_blocks: int) -> str | None:
    if not _ino_ok(r.ino):
        return f"extent of impossible inode number {r.ino}"
    what = f"inode {r.ino}: extent at file block {r.foff}"
    if r.len == 0:
        return f"{what} has length zero"
    if not _range_ok(r.pblk, r.len, total_blocks):
        return f"{what} points outside the device (block {r.pblk}+{r.len})"
    if r.foff + r.len > MAX_FILE_BLOCKS:
        return f"{what} lies beyond the maximum file size"
    if r.flags & ~EXT_KNOWN:
        return f"{what} has unknown flags {r.flags & ~EXT_KNOWN:#x}"
    return None


def check_free(r: FreeRec, total_blocks: int) -> str | None:
    if not _range_ok(r.start, r.len, total_blocks):
        return f"free extent {r.start}+{r.len} is outside the device"
    return None


def check_rmap(r: RmapRec, total_blocks: int) -> str | None:
    what = f"rmap record for block {r.bno}+{r.len}"
    if not _range_ok(r.bno, r.len, total_blocks, first=0):
        return f"{what} is outside the device"
    if r.owner <= OWN_MAX_INO:
        if r.owner == 0:
            return f"{what} names inode 0"
        if r.flags & ~(RMAP_ATTR | RMAP_UNWRITTEN) or \
                r.flags & RMAP_ATTR and r.flags & RMAP_UNWRITTEN:
            return f"{what} has unknown flags {r.flags:#x}"
        return None
    if r.owner not in META_OWNERS:
        return f"{what} names unknown owner {r.owner:#x}"
    # (offset: 0, or for a node or pool block of a dup filesystem its twin)
    if r.flags or (r.offset and (r.owner in (OWN_FS, OWN_LOG) or
                                 not 0 < r.offset < total_blocks)):
        return f"{what}: a metadata owner with offset {r.offset} and flags {r.flags:#x}"
    return None


def check_refcount(r: RefcRec, total_blocks: int) -> str | None:
    if not _range_ok(r.start, r.len, total_blocks):
        return f"refcount record for block {r.start}+{r.len} is outside the device"
    if r.refcount < 2:
        return f"refcount record at block {r.start} has count {r.refcount} (< 2)"
    return None


def check_xattr(r: XattrRec, total_blocks: int) -> str | None:
    if not _ino_ok(r.ino):
        return f"extended attribute of impossible inode number {r.ino}"
    what = f"inode {r.ino}: extended attribute {r.name!r}"
    if not _name_ok(r.name, r.namelen, XATTR_NAME_MAX):
        return f"{what}: invalid name (length {r.namelen})"
    if r.pos >> 32 != name_hash(r.name):
        return f"{what} is filed under the wrong name hash"
    if r.vlen > XATTR_VALUE_MAX:
        return f"{what}: value length {r.vlen} is over the maximum"
    if r.vblk == 0:
        if r.vlen > XATTR_INLINE_MAX:
            return f"{what}: inline value of {r.vlen} bytes is over the inline maximum"
    elif not _range_ok(r.vblk, -(-r.vlen // BLOCK_SIZE), total_blocks):
        return f"{what}: value points outside the device (block {r.vblk}, {r.vlen} bytes)"
    return None


def check_orphan(r: OrphanRec, total_blocks: int) -> str | None:
    if not _ino_ok(r.ino):
        return f"orphan list names impossible inode number {r.ino}"
    return None


SPECS = {
    "inode": TreeSpec(TREE_INODE, INODE_DTYPE, 1,                  # ino
                      record=InodeRec, check=check_inode),
    "dir": TreeSpec(TREE_DIR, DIRENT_DTYPE, 2,                     # parent, pos
                    record=DirentRec, check=check_dirent),
    "bmap": TreeSpec(TREE_BMAP, BMAP_DTYPE, 2,                     # ino, file block
                     record=BmapRec, check=check_bmap),
    "free": TreeSpec(TREE_FREE, FREE_DTYPE, 1,                     # start
                     record=FreeRec, check=check_free),
    "rmap": TreeSpec(TREE_RMAP, RMAP_DTYPE, 3, overlap=("bno", "len"),   # bno, owner, offset
                     record=RmapRec, check=check_rmap),
    "refcount": TreeSpec(TREE_REFC, REFC_DTYPE, 1,                 # start
                         record=RefcRec, check=check_refcount),
    "xattr": TreeSpec(TREE_XATTR, XATTR_DTYPE, 2,                  # ino, pos
                      record=XattrRec, check=check_xattr),
    "orphan": TreeSpec(TREE_ORPHAN, ORPHAN_DTYPE, 1,               # ino
                       record=OrphanRec, check=check_orphan),
}
