"""What refcount records mean: how many owners share a physical range.

Record start -> (len, refcount), only for ranges with two or more owners;
a block with one owner has no record (XFS's refcountbt does the same).
Records never overlap.  `adjust` is the one operation that changes counts:
it splits records at the range's edges, adds the delta, drops records that
fall back to one owner, and reports the ranges that fell to zero owners so
that the caller frees them.
"""

from .errors import Corrupted


class Refcount:
    def __init__(self, tree):
        self.tree = tree

    def _overlapping(self, start: int, n: int) -> list[tuple]:
        end = start + n
        out = []
        prev = self.tree.last_le((start,))
        if prev and prev[0] + prev[1] > start:
            out.append(prev)
        for r in self.tree.scan(lo=(start + (1 if prev and prev[0] == start else 0),)):
            if r[0] >= end:
                break
            if not out or out[-1][0] != r[0]:
                out.append(r)
        return out

    def segments(self, start: int, n: int) -> list[tuple[int, int, int]]:
        """[start, start+n) cut into (start, len, refcount) pieces, unshared
        pieces reported with refcount 1."""
        if self.tree.count == 0:
            return [(start, n, 1)]
        return self._pieces(start, n, self._overlapping(start, n))

    def is_shared(self, start: int, n: int) -> bool:
        if self.tree.count == 0:
            return False
        return bool(self._overlapping(start, n))

    def adjust(self, start: int, n: int, delta: int) -> list[tuple[int, int]]:
        """Add delta (+1 or -1) to the owner count of [start, start+n).
        Returns the (start, len) pieces whose count fell to zero."""
        end = start + n
        old = self._overlapping(start, n) if self.tree.count else []
        for rs, rl, rc in old:
            self.tree.discard((rs,))
            if rs < start:
                self.tree.insert((rs, start - rs, rc))
            if rs + rl > end:
                self.tree.insert((end, rs + rl - end, rc))
        freed = []
        for s, length, rc in self._pieces(start, n, old):
            c = rc + delta
            if c < 0:
                raise Corrupted(s, f"refcount of blocks {s}+{length} would fall below zero")
            if c == 0:
                freed.append((s, length))
            elif c >= 2:
                self.tree.insert((s, length, c))
        return freed

    @staticmethod
    def _pieces(start, n, old):
        pos, end = start, start + n
        out = []
        for rs, rl, rc in old:
            s, e = max(rs, start), min(rs + rl, end)
            if s > pos:
                out.append((pos, s - pos, 1))
            out.append((s, e - s, rc))
            pos = e
        if pos < end:
            out.append((pos, end - pos, 1))
        return out
