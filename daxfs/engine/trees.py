"""The descriptors of the eight trees: record dtype, how many leading fields
form the key, and (rmap only) the fields that make records overlap.

This is all the generic B+tree learns about each index; what the records
mean lives in inodes.py, dirs.py, filemap.py, alloc.py, rmap.py,
refcount.py, xattrs.py and orphans (fs.py).
"""

from .btree import TreeSpec
from .format import (BMAP_DTYPE, DIRENT_DTYPE, FREE_DTYPE, INODE_DTYPE, ORPHAN_DTYPE,
                     REFC_DTYPE, RMAP_DTYPE, TREE_BMAP, TREE_DIR, TREE_FREE, TREE_INODE,
                     TREE_ORPHAN, TREE_REFC, TREE_RMAP, TREE_XATTR, XATTR_DTYPE)

SPECS = {
    "inode": TreeSpec(TREE_INODE, INODE_DTYPE, 1),                 # ino
    "dir": TreeSpec(TREE_DIR, DIRENT_DTYPE, 2),                    # parent, pos
    "bmap": TreeSpec(TREE_BMAP, BMAP_DTYPE, 2),                    # ino, file block
    "free": TreeSpec(TREE_FREE, FREE_DTYPE, 1),                    # start
    "rmap": TreeSpec(TREE_RMAP, RMAP_DTYPE, 3, overlap=("bno", "len")),  # bno, owner, offset
    "refcount": TreeSpec(TREE_REFC, REFC_DTYPE, 1),                # start
    "xattr": TreeSpec(TREE_XATTR, XATTR_DTYPE, 2),                 # ino, pos
    "orphan": TreeSpec(TREE_ORPHAN, ORPHAN_DTYPE, 1),              # ino
}
