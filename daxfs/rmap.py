"""What rmap records mean: who owns each allocated block.

Record (bno, owner, offset) -> (len, flags).  File data: owner = inode,
offset = file block, one record per extent-map record (a shared extent has
one record per owner).  Metadata: a named owner (format.OWN_*), offset 0,
one record per block (btree nodes, pool) or per region (superblocks, log).
The key (bno, owner, offset) is the only unique key when many owners share
a block, as in XFS's rmapbt; "who owns block B" is one overlap query.

On a filesystem made with --no-rmap there is no tree: updates are no-ops
and `owners()` raises NotSupported (poison.py then scans the extent maps).
"""

from .errors import Corrupted, NotSupported


class Rmap:
    def __init__(self, tree):
        self.tree = tree          # a BTree, or None without the rmap feature

    @property
    def enabled(self) -> bool:
        return self.tree is not None

    # ---- file data -------------------------------------------------------------
    def map(self, bno: int, owner: int, offset: int, length: int, flags: int = 0) -> None:
        if self.tree is not None:
            self.tree.insert((bno, owner, offset, length, flags))

    def unmap(self, bno: int, owner: int, offset: int) -> tuple:
        if self.tree is None:
            return None
        old = self.tree.delete((bno, owner, offset))
        if old is None:
            raise Corrupted(bno, f"rmap has no record for block {bno} owner {owner} offset {offset}")
        return old

    def resize(self, bno: int, owner: int, offset: int, length: int, flags: int = 0) -> None:
        if self.tree is not None:
            self.tree.update((bno, owner, offset, length, flags))

    # ---- metadata -------------------------------------------------------------
    def map_meta(self, bno: int, owner: int, length: int = 1) -> None:
        self.map(bno, owner, 0, length)

    def unmap_meta(self, bno: int, owner: int) -> None:
        self.unmap(bno, owner, 0)

    def change_owner(self, bno: int, old: int, new: int) -> None:
        if self.tree is None:
            return
        rec = self.tree.delete((bno, old, 0))
        if rec is None:
            raise Corrupted(bno, f"rmap: block {bno} is not owned by {old:#x}")
        self.tree.insert((bno, new, 0, rec[3], rec[4]))

    # ---- queries -------------------------------------------------------------
    def owners(self, lo: int, hi: int) -> list[tuple]:
        """Every record overlapping blocks [lo, hi] as (bno, owner, offset, len, flags)."""
        if self.tree is None:
            raise NotSupported("this filesystem has no rmap btree")
        return self.tree.overlaps(lo, hi)
