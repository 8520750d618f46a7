"""The on-disk format in one place: block size, magics, tree ids, special
owners, and the numpy structured dtype of every record and header.

All fields are fixed-size little-endian.  docs/format.md explains each
structure; the asserts at the bottom pin every size and offset so that a
change to the format cannot happen by accident (as XFS's xfs_ondisk.h does).
Nothing here reads or writes the device.
"""

import stat

import crc32c
import numpy as np

BLOCK_SIZE = 4096
BLOCK_SHIFT = 12
SECTOR_SIZE = 512

FORMAT_VERSION = 2          # 2: twin block numbers in node entries, the log and the superblock
MIN_IMAGE_BYTES = 16 * 1024 * 1024
MAX_FILE_BYTES = (1 << 63) - 1
MAX_FILE_BLOCKS = -(-MAX_FILE_BYTES // 4096)     # file blocks 0 .. MAX_FILE_BLOCKS - 1
NAME_MAX = 255
XATTR_NAME_MAX = 255
XATTR_VALUE_MAX = 65536
XATTR_INLINE_MAX = 160
SYMLINK_MAX = 4095
LINK_MAX = 65000
# Inode times are signed 64-bit ns since the epoch; the range in whole
# seconds (1677-09-21 .. 2262-04-11) is what a time is clamped to, as the
# kernel clamps to a filesystem's s_time_min/s_time_max (FUSE sets none).
TIME_MIN_SEC = -((1 << 63) // 10**9)
TIME_MAX_SEC = ((1 << 63) - 1) // 10**9
ROOT_INO = 1
FIRST_INO = 2

# Feature flags in the superblock.
FEAT_RMAP = 1 << 0
FEAT_REFLINK = 1 << 1
FEAT_UNWRITTEN = 1 << 2     # extent maps may hold unwritten (preallocated) extents
FEAT_DUP = 1 << 3           # every metadata block has a twin (mkfs --metadata dup)
KNOWN_FEATURES = FEAT_RMAP | FEAT_REFLINK | FEAT_UNWRITTEN | FEAT_DUP

# Superblock state flags.
STATE_NEEDS_CHECK = 1 << 0

# Every metadata block starts with a 4-byte magic and a crc32c (bytes 4..8)
# computed over the whole block with those 4 bytes zero.
SB_MAGIC = b"DXSB"
LOG_MAGIC = b"DXLG"

# Tree ids and node magics.  Node magic: 'DX' + two letters naming the tree.
TREE_INODE = 1
TREE_DIR = 2
TREE_BMAP = 3
TREE_FREE = 4
TREE_RMAP = 5
TREE_REFC = 6
TREE_XATTR = 7
TREE_ORPHAN = 8
NTREES = 8
TREE_NAMES = {
    TREE_INODE: "inode", TREE_DIR: "dir", TREE_BMAP: "extent map",
    TREE_FREE: "free space", TREE_RMAP: "rmap", TREE_REFC: "refcount",
    TREE_XATTR: "xattr", TREE_ORPHAN: "orphan",
}
TREE_MAGICS = {
    TREE_INODE: b"DXIN", TREE_DIR: b"DXDR", TREE_BMAP: b"DXBM",
    TREE_FREE: b"DXFS", TREE_RMAP: b"DXRM", TREE_REFC: b"DXRC",
    TREE_XATTR: b"DXXA", TREE_ORPHAN: b"DXOR",
}

def name_hash(name: bytes) -> int:
    """The 31-bit hash that files a directory entry or an extended attribute
    under its name: the high half of the record's `pos` key field."""
    return crc32c.crc32c(name) & 0x7FFFFFFF


def valid_name(name: bytes, namelen: int) -> bool:
    """Is a name read from a directory record one a directory may hold?"""
    return 0 < namelen <= NAME_MAX and len(name) == namelen and b"/" not in name \
        and b"\0" not in name and name not in (b".", b"..")


# rmap owners.  File data is owned by its inode number (< 2**62); metadata
# has named owners at the top of the u64 range, as XFS's XFS_RMAP_OWN_*.
OWN_MAX_INO = (1 << 62) - 1
OWN_FS = (1 << 64) - 1          # the two superblocks
OWN_LOG = (1 << 64) - 2         # the redo log
OWN_AG = (1 << 64) - 3          # free-space and rmap btree nodes, and the reserve pool
OWN_TREE_BASE = (1 << 64) - 16  # OWN_TREE_BASE - tree_id: nodes of that tree


def own_tree(tree_id: int) -> int:
    """The rmap owner of the nodes of tree `tree_id`."""
    if tree_id in (TREE_FREE, TREE_RMAP):
        return OWN_AG
    return OWN_TREE_BASE - tree_id


def owner_name(owner: int) -> str:
    """A person's name for an rmap owner."""
    if owner <= OWN_MAX_INO:
        return f"inode {owner}"
    if owner == OWN_FS:
        return "superblock"
    if owner == OWN_LOG:
        return "log"
    if owner == OWN_AG:
        return "free-space/rmap btree or reserve pool"
    tid = OWN_TREE_BASE - owner
    if tid in TREE_NAMES:
        return f"{TREE_NAMES[tid]} btree"
    return f"unknown owner {owner:#x}"


# rmap record flags
RMAP_ATTR = 1 << 0      # the blocks hold an xattr value of the owner, not file data
RMAP_UNWRITTEN = 1 << 1  # file data blocks mapped by an unwritten extent

# Extent flags
EXT_NONE = 0
EXT_UNWRITTEN = 1 << 0  # allocated (fallocate) but never written: reads as zeros
EXT_KNOWN = EXT_UNWRITTEN


def _dt(fields, itemsize=None):
    names = [f[0] for f in fields]
    formats = [(f[1], f[2]) if len(f) == 3 else f[1] for f in fields]
    offsets = []
    off = 0
    for fmt in formats:
        offsets.append(off)
        off += np.dtype(fmt).itemsize
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": itemsize or off})


# ---- superblock (block 0 and the last block of the device) ----------------
SB_POOL_MAX = 256
SB_DTYPE = _dt([
    ("magic", "S4"), ("crc", "<u4"),
    ("version", "<u4"), ("block_size", "<u4"),
    ("features", "<u8"), ("state", "<u8"),
    ("copy", "<u4"), ("pool_count", "<u4"),   # copy: 0 primary, 1 secondary
    ("uuid", "S16"),
    ("total_blocks", "<u8"), ("generation", "<u8"),
    ("log_start", "<u8"), ("log_blocks", "<u8"),
    ("free_blocks", "<u8"), ("next_ino", "<u8"), ("inode_count", "<u8"),
    ("created_ns", "<i8"), ("mount_count", "<u8"),
    ("roots", "<u8", (NTREES + 1,)),      # root block of each tree (index = tree id)
    ("heights", "<u4", (NTREES + 1,)),    # 0 = empty tree
    ("nrecs", "<u8", (NTREES + 1,)),      # record count of each tree
    ("pool", "<u8", (SB_POOL_MAX,)),      # reserve pool of btree blocks (owner OWN_AG);
                                          # dup: pairs (block, its twin)
    ("roots2", "<u8", (NTREES + 1,)),     # the twin of each root (dup), else 0
    ("log2_start", "<u8"),                # the twin of the log (dup), else 0
], itemsize=BLOCK_SIZE)

# ---- redo log header (first block(s) of the log) ---------------------------
LOG_HDR_DTYPE = _dt([
    ("magic", "S4"), ("crc", "<u4"),
    ("seq", "<u8"), ("nblocks", "<u4"), ("hdr_blocks", "<u4"),
    ("uuid", "S16"),
    ("pad", "<u8", (3,)),
])
LOG_HDR_SIZE = 64
# after the header: per block of the transaction (block number, its twin or 0)
LOG_ENT_DTYPE = _dt([("bno", "<u8"), ("twin", "<u8")])
LOG_BNOS_FIRST = (BLOCK_SIZE - LOG_HDR_SIZE) // 16    # entries in the first header block
LOG_BNOS_NEXT = BLOCK_SIZE // 16                      # in each further header block

# ---- B+tree node header (64 bytes at the start of every node) ------------
NODE_HDR_DTYPE = _dt([
    ("magic", "S4"), ("crc", "<u4"),
    ("tree_id", "<u2"), ("level", "<u2"), ("nrecs", "<u4"),
    ("blkno", "<u8"),          # the node's own block number (misplaced-write check)
    ("seq", "<u8"),            # log sequence of the last write
    ("twin", "<u8"),           # the block of the node's second copy (dup), or 0;
                               # both copies are the same bytes (blkno names the first)
    ("pad", "<u8", (3,)),
])
NODE_HDR_SIZE = 64

# ---- records of each tree -------------------------------------------------
INODE_DTYPE = _dt([
    ("ino", "<u8"),
    ("mode", "<u4"), ("nlink", "<u4"), ("uid", "<u4"), ("gid", "<u4"),
    ("size", "<u8"), ("blocks", "<u8"),
    ("atime", "<i8"), ("mtime", "<i8"), ("ctime", "<i8"), ("btime", "<i8"),
    ("rdev", "<u8"), ("parent", "<u8"),
    ("flags", "<u4"), ("generation", "<u4"),
])

DIRENT_DTYPE = _dt([
    ("parent", "<u8"), ("pos", "<u8"),        # pos = hash31 << 32 | collision index
    ("ino", "<u8"), ("ftype", "u1"), ("namelen", "u1"),
    ("name", "S255"),
], itemsize=288)

BMAP_DTYPE = _dt([
    ("ino", "<u8"), ("foff", "<u8"),          # file offset, in blocks
    ("pblk", "<u8"), ("len", "<u8"),          # physical block, length in blocks
    ("flags", "<u4"),
], itemsize=40)

FREE_DTYPE = _dt([("start", "<u8"), ("len", "<u8")])

RMAP_DTYPE = _dt([
    ("bno", "<u8"), ("owner", "<u8"), ("offset", "<u8"),   # key
    ("len", "<u8"), ("flags", "<u4"),
], itemsize=40)

REFC_DTYPE = _dt([("start", "<u8"), ("len", "<u8"), ("refcount", "<u4")], itemsize=24)

XATTR_DTYPE = _dt([
    ("ino", "<u8"), ("pos", "<u8"),
    ("namelen", "u1"), ("pad", "u1", (3,)), ("vlen", "<u4"),
    ("vblk", "<u8"),                           # first block of an out-of-line value, or 0
    ("name", "S255"), ("inline", f"S{XATTR_INLINE_MAX}"),
], itemsize=448)

ORPHAN_DTYPE = _dt([("ino", "<u8")])

# Directory entry file types (as DT_* in dirent.h), and the one map from a
# mode's file type (stat.S_IFMT) to the entry type: DT_OF_FMT.
DT_UNKNOWN, DT_FIFO, DT_CHR, DT_DIR, DT_BLK, DT_REG, DT_LNK, DT_SOCK = 0, 1, 2, 4, 6, 8, 10, 12
DT_OF_FMT = {stat.S_IFREG: DT_REG, stat.S_IFDIR: DT_DIR, stat.S_IFLNK: DT_LNK,
             stat.S_IFIFO: DT_FIFO, stat.S_IFCHR: DT_CHR, stat.S_IFBLK: DT_BLK,
             stat.S_IFSOCK: DT_SOCK}
FMT_OF_DT = {dt: fmt for fmt, dt in DT_OF_FMT.items()}

# ---- size and offset assertions -------------------------------------------
assert SB_DTYPE.itemsize == BLOCK_SIZE
assert SB_DTYPE.fields["crc"][1] == 4
assert SB_DTYPE.fields["pool"][1] + 8 * SB_POOL_MAX <= BLOCK_SIZE
assert SB_DTYPE.fields["log2_start"][1] + 8 <= BLOCK_SIZE
assert LOG_ENT_DTYPE.itemsize == 16
assert LOG_HDR_DTYPE.itemsize == LOG_HDR_SIZE
assert NODE_HDR_DTYPE.itemsize == NODE_HDR_SIZE
assert NODE_HDR_DTYPE.fields["crc"][1] == 4
assert NODE_HDR_DTYPE.fields["twin"][1] == 32
assert INODE_DTYPE.itemsize == 96
assert DIRENT_DTYPE.itemsize == 288
assert BMAP_DTYPE.itemsize == 40
assert FREE_DTYPE.itemsize == 16
assert RMAP_DTYPE.itemsize == 40
assert REFC_DTYPE.itemsize == 24
assert XATTR_DTYPE.itemsize == 448
assert ORPHAN_DTYPE.itemsize == 8
