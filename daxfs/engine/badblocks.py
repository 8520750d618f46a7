"""The device's list of bad (poisoned) ranges, like /sys/block/pmemN/badblocks.

It belongs to the device, not to the filesystem: it is kept beside the image
in `IMAGE.badblocks`, one range per line as "first_sector sector_count" in
512-byte sectors (the sysfs format), and survives unmount.  This module owns
that file and answers "is any block of this range bad?"; what a bad range
means to the filesystem is poison.py's business.
"""

import bisect
import re

from . import files
from .errors import BadSideFile
from .format import BLOCK_SIZE, SECTOR_SIZE

SECTORS_PER_BLOCK = BLOCK_SIZE // SECTOR_SIZE
MAX_FILE_BYTES = 1 << 20        # far more lines than a device would ever list
_LINE = re.compile(rb"[0-9]{1,20} [0-9]{1,20}")


def sidecar_path(image_path: str) -> str:
    return image_path + ".badblocks"


class BadBlocks:
    """Bad ranges in block units, sorted and merged, persisted beside the image.

    The file is read and written as root although it sits wherever the
    image does: it is opened without following symlinks, only if it is a
    small regular file (files.py), and every line is checked before a
    number of it is used; a malformed file is refused with one line
    (BadSideFile) naming the line, never half-used."""

    def __init__(self, image_path: str | None, nblocks: int | None = None):
        self.path = sidecar_path(image_path) if image_path else None
        self.nblocks = nblocks
        # first blocks of the bad ranges, sorted: the list object is never
        # replaced, so a caller may keep it and test it for emptiness
        self.starts: list[int] = []
        self._ends: list[int] = []
        if self.path:
            self._load()

    def __bool__(self) -> bool:
        return bool(self.starts)

    def _load(self) -> None:
        data = files.read_small(self.path, MAX_FILE_BYTES, "bad-block list")
        if data is None:
            return
        for lineno, line in enumerate(data.split(b"\n"), 1):
            line = line.strip()
            if not line:
                continue
            if not _LINE.fullmatch(line):
                raise BadSideFile(f"{self.path} line {lineno}: {line[:40]!r} is not"
                                  " 'first_sector sector_count' in decimal; fix or remove the file")
            sector, count = (int(x) for x in line.split())
            if count == 0:
                raise BadSideFile(f"{self.path} line {lineno}: a range of 0 sectors")
            first = sector // SECTORS_PER_BLOCK
            last = (sector + count - 1) // SECTORS_PER_BLOCK
            if self.nblocks is not None and last >= self.nblocks:
                raise BadSideFile(f"{self.path} line {lineno}: sectors {sector}+{count} lie"
                                  f" beyond the end of the device ({self.nblocks} blocks);"
                                  " fix or remove the file")
            self._add(first, last + 1 - first)

    def _save(self) -> None:
        if not self.path:
            return
        text = "".join(f"{s * SECTORS_PER_BLOCK} {(e - s) * SECTORS_PER_BLOCK}\n"
                       for s, e in zip(self.starts, self._ends))
        files.replace(self.path, text.encode(), 0o600)

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
        if bno < 0 or n <= 0 or (self.nblocks is not None and bno + n > self.nblocks):
            raise BadSideFile(f"bad range {bno}+{n} is not on the device")
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
        if self.path:
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
