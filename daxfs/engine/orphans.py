"""The orphan list: inodes whose last name is gone but which are not freed
yet (still open, or waiting in the daemon's queue), so that a crash never
leaks them: open reaps every inode the list holds.

Adding and removing wait until the commit (delayed.py), as the rmap's
changes do: they are written into the orphan tree in the same transaction
as the unlink that made the orphan, and an inode unlinked and freed before
the commit (rm of a closed file) costs nothing in the tree.
"""

from .delayed import Delayed, apply_in_steps
from .errors import Corrupted


class Orphans(Delayed):
    def __init__(self, vol):
        Delayed.__init__(self)          # _pending: ino -> (listed, in_tree)
        self.tree = vol.trees["orphan"]
        self.vol = vol
        vol.add_participant(self)

    def add(self, ino: int) -> None:
        cur = self._pending.get(ino)
        self._put(ino, (True, cur[1] if cur else False))

    def remove(self, ino: int) -> None:
        """Take ino off the list (nothing if it is not on it)."""
        cur = self._pending.get(ino)
        if cur is None:
            if self.tree.lookup((ino,)) is not None:
                self._put(ino, (False, True))
        elif cur[0]:
            self._put(ino, (False, True) if cur[1] else None)

    def contains(self, ino: int) -> bool:
        cur = self._pending.get(ino)
        if cur is not None:
            return cur[0]
        return self.tree.lookup((ino,)) is not None

    def all(self) -> list[int]:
        inos = {r[0] for r in self.tree.scan()}
        for ino, (listed, _) in self._pending.items():
            (inos.add if listed else inos.discard)(ino)
        return sorted(inos)

    # ---- taking part in commits (volume.py) -------------------------------------
    def flush(self) -> None:
        gone = apply_in_steps(self.tree, (((ino,), (ino,) if listed else None, in_tree)
                                          for ino, (listed, in_tree)
                                          in sorted(self._take_all().items())
                                          if listed != in_tree),
                              self.vol.alloc.settle)
        if gone:
            raise Corrupted(0, f"orphan list: inode {gone[0][0]} vanished")
