"""What rmap records mean: who owns each allocated block.

Record (bno, owner, offset) -> (len, flags).  File data: owner = inode,
offset = file block, one record per extent-map record (a shared extent has
one record per owner).  Metadata: a named owner (format.OWN_*), offset 0,
one record per block (btree nodes, pool) or per region (superblocks, log).
The key (bno, owner, offset) is the only unique key when many owners share
a block, as in XFS's rmapbt; "who owns block B" is one overlap query.

Changes are deferred, as XFS defers its rmap updates to intent items:
they collect in `_pending` (key -> the record it must become, or "delete
it") and go into the tree at the start of the next commit (`flush`,
called by the volume), sorted by key.  A record made and removed before
the commit (a short-lived file, a btree node taken from the pool and given
back) costs nothing in the tree.  `_pending` takes part in operations (a
failed operation's changes are undone), and `owners()` answers from the
tree and the pending changes together.

On a filesystem made with --no-rmap there is no tree: updates are no-ops
and `owners()` raises NotSupported (poison.py then scans the extent maps).
"""

from .delayed import ABSENT, Delayed, apply_in_steps
from .errors import Corrupted, NotSupported


# A pending value is an int: `_GONE` (the tree holds the key's record and
# the flush deletes it), or the record the key must become and whether the
# tree holds the key now, as flags << 41 | len << 1 | in_tree.  Ints, not
# tuples: the common values (one block, no flags) are Python's cached small
# ints, so a pending change costs its key and a dict slot, and nothing the
# garbage collector must walk.
_GONE = -1
_LEN_MASK = (1 << 40) - 1


def _value(length: int, flags: int, in_tree: bool) -> int:
    return flags << 41 | length << 1 | in_tree


def _record(key: tuple, value: int) -> tuple:
    """The record (bno, owner, offset, len, flags) a pending value makes."""
    return key + (value >> 1 & _LEN_MASK, value >> 41)


class Rmap(Delayed):
    def __init__(self, tree, settle=None):
        self.tree = tree          # a BTree, or None without the rmap feature
        self.settle = settle or (lambda: None)
        # _pending: key -> a pending value (above)
        Delayed.__init__(self)

    @property
    def enabled(self) -> bool:
        return self.tree is not None

    # ---- taking part in commits (volume.py) -------------------------------------
    def flush(self) -> None:
        """Write the deferred changes into the tree, in key order.  The
        tree's own node allocations add owner changes (the allocator
        settles every few records): the volume flushes again until
        nothing is left."""
        if not self._pending:
            return
        delta = self._take_all()
        gone = apply_in_steps(self.tree, (_change(k, delta[k]) for k in sorted(delta)),
                              self.settle)
        if gone:
            k = gone[0]
            raise Corrupted(k[0], f"rmap has no record for block {k[0]}"
                                  f" owner {k[1]} offset {k[2]}")

    # ---- file data (deferred) ---------------------------------------------------
    def map(self, bno: int, owner: int, offset: int, length: int, flags: int = 0) -> None:
        if self.tree is None:
            return
        key = (bno, owner, offset)
        cur = self._pending.get(key, ABSENT)
        if cur is ABSENT:
            self._put(key, _value(length, flags, False), cur)
        elif cur == _GONE:
            self._put(key, _value(length, flags, True), cur)
        else:
            raise Corrupted(bno, f"rmap: block {bno} owner {owner} offset {offset} mapped twice")

    def unmap(self, bno: int, owner: int, offset: int) -> None:
        """Remove a record (a missing one is found, as corruption, when the
        flush deletes it)."""
        if self.tree is None:
            return
        key = (bno, owner, offset)
        cur = self._pending.get(key, ABSENT)
        if cur is ABSENT:
            self._put(key, _GONE, cur)
        elif cur == _GONE:
            raise Corrupted(bno, f"rmap has no record for block {bno} owner {owner} offset {offset}")
        else:
            self._put(key, _GONE if cur & 1 else None, cur)

    def resize(self, bno: int, owner: int, offset: int, length: int, flags: int = 0) -> None:
        if self.tree is None:
            return
        key = (bno, owner, offset)
        cur = self._pending.get(key, ABSENT)
        if cur == _GONE:
            raise Corrupted(bno, f"rmap: resizing removed record {bno} owner {owner}")
        self._put(key, _value(length, flags, cur is ABSENT or cur & 1), cur)

    # ---- metadata ------------------------------------------------------------------
    def map_meta(self, bno: int, owner: int, length: int = 1) -> None:
        self.map(bno, owner, 0, length)

    def unmap_meta(self, bno: int, owner: int) -> None:
        self.unmap(bno, owner, 0)

    def change_owner(self, bno: int, old: int, new: int) -> None:
        """A btree node or pool block (one block, no flags) changes owner."""
        if self.tree is None:
            return
        self.unmap(bno, old, 0)
        self.map(bno, new, 0, 1)

    # ---- queries -------------------------------------------------------------
    def record(self, bno: int, owner: int, offset: int) -> tuple[int, int] | None:
        """(len, flags) of the record with exactly this key, pending
        changes included, or None."""
        key = (bno, owner, offset)
        v = self._pending.get(key, ABSENT)
        if v is ABSENT:
            rec = self.tree.lookup(key)
            return None if rec is None else (rec[3], rec[4])
        if v == _GONE:
            return None
        return (v >> 1 & _LEN_MASK, v >> 41)

    def owners(self, lo: int, hi: int) -> list[tuple]:
        """Every record overlapping blocks [lo, hi] as (bno, owner, offset, len, flags)."""
        if self.tree is None:
            raise NotSupported("this filesystem has no rmap btree")
        out = [r for r in self.tree.overlaps(lo, hi) if r[:3] not in self._pending]
        for key, v in self._pending.items():
            if v != _GONE and key[0] <= hi:
                rec = _record(key, v)
                if rec[0] + rec[3] - 1 >= lo:
                    out.append(rec)
        return sorted(out)


def _change(key, value) -> tuple:
    """A pending value as `BTree.apply_sorted` takes it."""
    if value == _GONE:
        return key, None, True
    return key, _record(key, value), bool(value & 1)
