"""Changes kept in memory until the next commit that still take part in
operations: the base of the delayed inode records (inodes.py) and the
deferred rmap records (rmap.py).

The volume (volume.py) calls `op_begin`, `op_end` and `op_rollback` of
every participant around each operation, so a failed operation's changes
are undone here as its blocks are in the journal, and `flush` at the start
of each commit, which writes the changes into the trees."""

from .btree import touched_bound

ABSENT = object()
FLUSH_SETTLE_EVERY = 32     # changes written between allocator settles in a flush


def apply_in_steps(tree, changes, settle) -> list:
    """`tree.apply_sorted` of a sorted delta, a few changes at a time with
    the allocator settled in between: splits take btree blocks from the
    reserve pool, which only `settle` refills.  Returns the keys to delete
    found absent."""
    changes = list(changes)
    gone = []
    for at in range(0, len(changes), FLUSH_SETTLE_EVERY):
        gone += tree.apply_sorted(changes[at:at + FLUSH_SETTLE_EVERY])
        settle()
    return gone


class Delayed:
    """key -> pending value, with the undo of the running operation."""

    def __init__(self):
        self._pending: dict = {}
        self._undo: dict | None = None
        # the tree's touch_shape: only a flush changes the tree (a failed
        # one is rolled back, which drops the shape too)
        self._shape: tuple | None = None

    def pending(self) -> int:
        """Blocks of `self.tree` the next flush may dirty (an upper bound).
        Asked after every operation (Volume.needs_commit): cheap."""
        if not self._pending:
            return 0
        if self._shape is None:
            self._shape = self.tree.touch_shape()
        return touched_bound(self._shape, len(self._pending))

    def op_begin(self) -> None:
        self._undo = {}

    def op_end(self) -> None:
        self._undo = None

    def op_rollback(self) -> None:
        self._shape = None
        if self._undo:
            for key, old in self._undo.items():
                if old is ABSENT:
                    self._pending.pop(key, None)
                else:
                    self._pending[key] = old
        self._undo = None

    def _put(self, key, value, cur=None) -> None:
        """Set a key's pending value (None: no longer pending).  `cur`: the
        pending value the caller has just read with .get(key, ABSENT)
        (None: not read, look it up for the undo)."""
        undo = self._undo
        if undo is not None and key not in undo:
            undo[key] = self._pending.get(key, ABSENT) if cur is None else cur
        if value is None:
            self._pending.pop(key, None)
        else:
            self._pending[key] = value

    def _take_all(self) -> dict:
        """Everything pending, for a flush (which is part of a commit: a
        commit inside an operation leaves no way back)."""
        items, self._pending = self._pending, {}
        self._shape = None
        if self._undo is not None:
            self._undo = {}
        return items
