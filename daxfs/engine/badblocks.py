"""The device's list of bad (poisoned) ranges, like /sys/block/pmemN/badblocks.

It belongs to the device, not to the filesystem: it is kept beside the image
in `IMAGE.badblocks`, one range per line as "first_sector sector_count" in
512-byte sectors (the sysfs format), and survives unmount.  This module owns
that file and answers "is any block of this range bad?"; what a bad range
means to the filesystem is poison.py's business.
"""

import bisect
import os

from .format import BLOCK_SIZE, SECTOR_SIZE

SECTORS_PER_BLOCK = BLOCK_SIZE // SECTOR_SIZE


def sidecar_path(image_path: str) -> str:
    return image_path + ".badblocks"


class BadBlocks:
    """Bad ranges in block units, sorted and merged, persisted beside the image."""

    def __init__(self, image_path: str | None):
        self.path = sidecar_path(image_path) if image_path else None
        # first blocks of the bad ranges, sorted: the list object is never
        # replaced, so a caller may keep it and test it for emptiness
        self.starts: list[int] = []
        self._ends: list[int] = []
        if self.path and os.path.exists(self.path):
            self._load()

    def __bool__(self) -> bool:
        return bool(self.starts)

    def _load(self) -> None:
        with open(self.path) as f:
            for line in f:
                parts = line.split()
                if len(parts) != 2:
                    continue
                sector, count = int(parts[0]), int(parts[1])
                first = sector // SECTORS_PER_BLOCK
                last = (sector + count - 1) // SECTORS_PER_BLOCK
                self._add(first, last + 1 - first)

    def _save(self) -> None:
        if not self.path:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            for s, e in zip(self.starts, self._ends):
                f.write(f"{s * SECTORS_PER_BLOCK} {(e - s) * SECTORS_PER_BLOCK}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _add(self, bno: int, n: int) -> None:
        s, e = bno, bno + n
        i = bisect.bisect_left(self._ends, s)
        j = bisect.bisect_right(self.starts, e)
        if i < j:
            s = min(s, self.starts[i])
            e = max(e, self._ends[j - 1])
        self.starts[i:j] = [s]
        self._ends[i:j] = [e]

    def add(self, bno: int, n: int) -> None:
        """Mark blocks [bno, bno+n) bad and persist the list."""
        self._add(bno, n)
        self._save()

    def clear(self, bno: int, n: int) -> None:
        """Mark blocks [bno, bno+n) good again (after a recovery write)."""
        s, e = bno, bno + n
        starts, ends = [], []
        for a, b in zip(self.starts, self._ends):
            if b <= s or a >= e:
                starts.append(a)
                ends.append(b)
                continue
            if a < s:
                starts.append(a)
                ends.append(s)
            if b > e:
                starts.append(e)
                ends.append(b)
        changed = (starts != self.starts) or (ends != self._ends)
        self.starts[:], self._ends[:] = starts, ends
        if changed:
            self._save()

    def reload(self) -> None:
        self.starts.clear()
        self._ends.clear()
        if self.path and os.path.exists(self.path):
            self._load()

    def first_bad(self, bno: int, n: int) -> int | None:
        """The first bad block in [bno, bno+n), or None."""
        if not self.starts:
            return None
        i = bisect.bisect_right(self._ends, bno)
        if i < len(self.starts) and self.starts[i] < bno + n:
            return max(bno, self.starts[i])
        return None

    def ranges(self) -> list[tuple[int, int]]:
        """Every bad range as (first block, block count)."""
        return [(s, e - s) for s, e in zip(self.starts, self._ends)]
