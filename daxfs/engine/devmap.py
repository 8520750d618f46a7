"""The physical layout of the device, like XFS's GETFSMAP (`xfs_io -c fsmap`):
every range with its owner (inode and path, or metadata kind), file offset,
and shared / poisoned flags.  Only the records: drawing them is the
`daxfs map` command's (daxfs/cli/map_picture.py).

The records come from the rmap and the free-space tree, read lazily from a
starting block and put in block order (`_ordered`), so that a piece of the
map costs what its own records cost: a live daemon serves the map in
pieces (`piece`, daxfs/fuse/admin_server.py) and holds the filesystem only for
one piece per request.  Records are in (block, owner, file offset) order
and a piece goes on from a cursor (block, records of that block already
read); records are split where their sharing or poisoned state
changes, and neighbours with the same owner and state are joined again
(`merge`, which the reader of pieces applies to their concatenation).
Paths come from the directory tree: `dir_entries` reads it in pieces too,
poison.paths_of names the inodes.  Without the rmap the records come from
poison.scan_owners' full walk (what a filesystem without rmap must do).

`records(fs)` is the whole map at once (an unmounted image).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

from .errors import Corrupted, MediaError
from .format import BLOCK_SIZE as BS, OWN_MAX_INO, RMAP_ATTR, owner_name

FREE_OWNER = -1


@dataclass
class MapRecord:
    bno: int
    nblocks: int
    owner: int          # inode, metadata owner code, or -1 for free space
    what: str           # "free", "data", "xattr" or the metadata kind (format.owner_name)
    offset: int = 0     # byte offset in the file, for data
    shared: bool = False
    poisoned: bool = False
    path: str = ""

    def line(self) -> str:
        flags = ",".join(f for f, on in (("shared", self.shared), ("poisoned", self.poisoned)) if on)
        if self.what in ("data", "xattr"):
            who = f"inode {self.owner} {self.path or '(unlinked)'}"
            where = f"offset {self.offset}" if self.what == "data" else "xattr value"
        elif self.what == "free":
            who, where = "free space", ""
        else:
            who, where = self.what, ""
        return (f"{self.bno * BS:>14} {self.nblocks * BS:>12}  {who:<40} {where:<18} {flags}").rstrip()

    @property
    def is_file(self) -> bool:
        return self.what in ("data", "xattr")

    # a compact row for the admin protocol: [bno, nblocks, owner, flags, offset]
    def row(self) -> list:
        flags = (1 if self.what == "xattr" else 0) | (2 if self.shared else 0) \
            | (4 if self.poisoned else 0)
        return [self.bno, self.nblocks, self.owner, flags, self.offset]

    @classmethod
    def from_row(cls, row) -> "MapRecord":
        bno, n, owner, flags, offset = (int(v) for v in row)
        if owner == FREE_OWNER:
            what = "free"
        elif owner <= OWN_MAX_INO:
            what = "xattr" if flags & 1 else "data"
        else:
            what = owner_name(owner)
        return cls(bno, n, owner, what, offset, bool(flags & 2), bool(flags & 4))


# ---- the records, in block order -------------------------------------------------

def records(fs, *, paths: bool = True) -> list[MapRecord]:
    """The whole map, in block order."""
    _settle(fs)
    out = merge(_ordered(fs, 0))
    if paths:
        try:
            fill_paths(out, dir_entries_all(fs))
        except (Corrupted, MediaError):
            pass                        # a damaged directory tree: no names
    return out


def piece(fs, start: int, skip: int, limit: int) -> tuple[list[MapRecord], tuple | None]:
    """At most `limit` records from block `start` on, the first `skip` of
    those that start at `start` left out (a reader's cursor: `start, skip`
    never splits a record); without paths.  Returns them and the cursor of
    the next piece (None at the end)."""
    _settle(fs)
    taken: list[MapRecord] = []
    at, same = start, skip             # the last block taken, records taken there
    for r in _ordered(fs, start):
        if skip:
            skip -= 1
            continue
        if len(taken) >= limit:
            return merge(taken), (r.bno, same if r.bno == at else 0)
        taken.append(r)
        same = same + 1 if r.bno == at else 1
        at = r.bno
    return merge(taken), None


def _settle(fs) -> None:
    if fs.vol.rmap.pending() and not fs.readonly:
        fs.commit()                     # the deferred rmap changes into the tree


def _ordered(fs, start: int):
    """The map's records that start at block `start` or later, in (block,
    owner, file offset) order, made lazily: a record is yielded once no record still to
    be read can start before it."""
    vol = fs.vol
    bad = list(vol.pmem.bad.ranges()) if vol.pmem.bad else []
    refc = vol.refcount
    heap: list = []
    seq = itertools.count()
    for src in heapq.merge(_raw_owned(fs, start), _raw_free(fs, start), key=lambda r: r[0]):
        while heap and heap[0][0] < src[0]:
            yield heapq.heappop(heap)[-1]
        for r in _pieces(src, refc, bad):
            if r.bno >= start:
                heapq.heappush(heap, (r.bno, r.owner, r.offset, next(seq), r))
    while heap:
        yield heapq.heappop(heap)[-1]


def _raw_owned(fs, start: int):
    """(bno, owner, offset, nblocks, flags) of every owned range that ends
    after `start`, in block order."""
    vol = fs.vol
    if not vol.has_rmap:
        from .poison import scan_owners
        yield from sorted(scan_owners(fs, start, vol.total_blocks - start))
        return
    tree = vol.trees["rmap"]
    if start:
        yield from sorted(r for r in tree.overlaps(start, start) if r[0] < start)
    yield from tree.scan(lo=(start, 0, 0))


def _raw_free(fs, start: int):
    """(bno, FREE_OWNER, 0, nblocks, 0) of every free extent that ends after
    `start`, in block order."""
    tree = fs.vol.trees["free"]
    if start:
        prev = tree.last_le((start,))
        if prev is not None and prev[0] < start < prev[0] + prev[1]:
            yield (prev[0], FREE_OWNER, 0, prev[1], 0)
    for s, n in tree.scan(lo=(start,)):
        yield (s, FREE_OWNER, 0, n, 0)


def _pieces(src, refc, bad) -> list[MapRecord]:
    """One raw range as map records: split where sharing changes (file
    data) and where a bad range begins or ends."""
    bno, owner, off, n, flags = src
    if owner == FREE_OWNER:
        recs = [MapRecord(bno, n, owner, "free")]
    elif owner <= OWN_MAX_INO:
        if flags & RMAP_ATTR:
            recs = [MapRecord(bno, n, owner, "xattr")]
        else:
            recs = [MapRecord(s, k, owner, "data", (off + s - bno) * BS, rc > 1)
                    for s, k, rc in refc.segments(bno, n)]
    else:
        recs = [MapRecord(bno, n, owner, owner_name(owner))]
    if bad:
        recs = [p for r in recs for p in _split_bad(r, bad)]
    return recs


def merge(recs) -> list[MapRecord]:
    """Join neighbours with the same owner and flags (per-block metadata
    records read better as runs); also joins pieces read one after another."""
    out: list[MapRecord] = []
    for r in recs:
        if out:
            last = out[-1]
            if (last.owner == r.owner and last.what == r.what and last.shared == r.shared
                    and last.poisoned == r.poisoned and last.bno + last.nblocks == r.bno
                    and (r.what != "data" or last.offset + last.nblocks * BS == r.offset)):
                last.nblocks += r.nblocks
                continue
        out.append(r)
    return out


def _split_bad(r: MapRecord, bad) -> list[MapRecord]:
    out = []
    pos, end = r.bno, r.bno + r.nblocks
    for b, n in bad:
        lo, hi = max(b, pos), min(b + n, end)
        if lo >= hi:
            continue
        if lo > pos:
            out.append(_piece(r, pos, lo, False))
        out.append(_piece(r, lo, hi, True))
        pos = hi
    if pos < end:
        out.append(_piece(r, pos, end, False))
    return out


def _piece(r: MapRecord, s: int, e: int, poisoned: bool) -> MapRecord:
    off = r.offset + (s - r.bno) * BS if r.what == "data" else r.offset
    return MapRecord(s, e - s, r.owner, r.what, off, r.shared, poisoned, r.path)


# ---- paths ----------------------------------------------------------------------

def dir_entries(fs, after: tuple | None, budget: int) -> tuple[list[tuple], tuple | None]:
    """Directory entries (parent, ino, name) from key `after` (None: the
    first) on, names decoded, until about `budget` bytes of names; and the
    key to go on from (None at the end)."""
    out, used = [], 0
    lo = tuple(after) if after else None
    for parent, pos, ino, _, _, name in fs.vol.trees["dir"].scan(lo=lo):
        if used >= budget:
            return out, (parent, pos)
        text = name.decode(errors="replace")
        out.append((parent, ino, text))
        used += len(text) + 32
    return out, None


def dir_entries_all(fs):
    for parent, _, ino, _, _, name in fs.vol.trees["dir"].scan():
        yield parent, ino, name


def fill_paths(recs: list[MapRecord], entries) -> None:
    """Set the path of every file record from the directory entries."""
    from .poison import paths_of
    want = {r.owner for r in recs if r.is_file}
    if not want:
        return
    joined = {ino: ", ".join(paths) for ino, paths in paths_of(entries, want).items()}
    for r in recs:
        if r.is_file:
            r.path = joined.get(r.owner, "")
