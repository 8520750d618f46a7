"""The physical layout of the device, like XFS's GETFSMAP (`xfs_io -c fsmap`):
every range with its owner (inode and path, or metadata kind), file offset,
and shared / poisoned flags; and a PNG picture of it.

Built from the rmap (one in-order scan) and the free-space tree; without the
rmap the same records come from poison.scan_owners' full walk.
"""

import struct
import zlib
from dataclasses import asdict, dataclass

from .format import BLOCK_SIZE as BS, OWN_AG, OWN_FS, OWN_LOG, OWN_MAX_INO, RMAP_ATTR, owner_name


@dataclass
class MapRecord:
    bno: int
    nblocks: int
    owner: int          # inode, metadata owner code, or -1 for free space
    what: str           # "free", "data", "xattr" or the metadata kind
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


def records(fs, start: int = 0, limit: int = 0) -> list[MapRecord]:
    """Map records in block order from block `start` (at most `limit`)."""
    vol = fs.vol
    if vol.rmap.pending() and not fs.readonly:
        fs.commit()                     # the deferred rmap changes into the tree
    if vol.has_rmap:
        raw = [r for r in vol.trees["rmap"].scan(lo=(start, 0, 0))]
        prev = vol.trees["rmap"].overlaps(start, start) if start else []
        raw = sorted(set(prev) | set(raw))
    else:
        from .poison import scan_owners
        raw = sorted(scan_owners(fs, start, vol.total_blocks - start))
    frees = [r for r in vol.trees["free"].scan()]
    out = []
    for s, n in frees:
        if s + n > start:
            out.append(MapRecord(s, n, -1, "free"))
    refc = vol.refcount
    bad = vol.pmem.bad
    for bno, owner, off, n, flags in raw:
        if owner <= OWN_MAX_INO:
            kind = "xattr" if flags & RMAP_ATTR else "data"
            if kind == "data":
                for s, k, rc in refc.segments(bno, n):
                    out.append(MapRecord(s, k, owner, kind, (off + s - bno) * BS, rc > 1))
                continue
            out.append(MapRecord(bno, n, owner, kind))
        else:
            out.append(MapRecord(bno, n, owner, _meta_kind(owner)))
    out.sort(key=lambda r: (r.bno, r.owner))
    if bad:
        split = []
        for r in out:
            split.extend(_split_bad(r, bad))
        out = split
    out = _merge(out)
    if limit:
        out = out[:limit]
    _paths(fs, out)
    return out


def _merge(recs: list[MapRecord]) -> list[MapRecord]:
    """Join neighbours with the same owner and flags (per-block metadata
    records read better as runs)."""
    out = []
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


def _meta_kind(owner: int) -> str:
    if owner == OWN_FS:
        return "superblock"
    if owner == OWN_LOG:
        return "log"
    if owner == OWN_AG:
        return "free-space/rmap btree, reserve pool"
    return owner_name(owner)


def _split_bad(r: MapRecord, bad) -> list[MapRecord]:
    out = []
    pos, end = r.bno, r.bno + r.nblocks
    for b, n in bad.ranges():
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


def _paths(fs, recs: list[MapRecord]) -> None:
    from .poison import Owner, _fill_paths
    owners = [Owner(r.bno, r.nblocks, r.owner, r.what) for r in recs if r.what in ("data", "xattr")]
    _fill_paths(fs, owners)
    by_ino = {o.owner: o.paths for o in owners}
    for r in recs:
        if r.what in ("data", "xattr"):
            r.path = ", ".join(by_ino.get(r.owner, []))


def to_dicts(recs) -> list[dict]:
    return [asdict(r) for r in recs]


def from_dicts(items) -> list[MapRecord]:
    return [MapRecord(**d) for d in items]


# ---- picture -----------------------------------------------------------------
PALETTE = [(66, 135, 245), (245, 166, 35), (126, 211, 33), (189, 16, 224), (80, 227, 194),
           (248, 231, 28), (144, 19, 254), (74, 144, 226), (208, 2, 27), (65, 117, 5)]
FREE = (235, 235, 235)
META = (90, 90, 90)
SHARED = (255, 255, 255)
POISON = (230, 0, 0)


def write_png(recs, total_blocks: int, path: str, width: int = 128) -> None:
    """One pixel row of `width` cells per chunk of the device; files get a
    colour each, metadata dark grey, free light grey, shared cells a white
    dot, poisoned cells red."""
    cells = min(total_blocks, width * 128)
    per = -(-total_blocks // cells)
    height = -(-cells // width)
    img = [[FREE] * width for _ in range(height)]
    marks = {}
    for r in recs:
        if r.what == "free":
            continue
        colour = META if r.what not in ("data", "xattr") else PALETTE[r.owner % len(PALETTE)]
        for c in range(r.bno // per, min(cells, -(-(r.bno + r.nblocks) // per))):
            img[c // width][c % width] = colour
            if r.poisoned:
                marks[c] = POISON
            elif r.shared and c not in marks:
                marks[c] = SHARED
    scale = 6
    rows = []
    for y in range(height):
        for sy in range(scale):
            row = bytearray([0])
            for x in range(width):
                c = y * width + x
                col = img[y][x]
                mark = marks.get(c)
                for sx in range(scale):
                    px = col
                    if mark and (1 < sx < 4 and 1 < sy < 4):
                        px = mark
                    if mark == POISON:
                        px = POISON
                    row += bytes(px)
            rows.append(bytes(row))
    raw = b"".join(rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width * scale,
                                                              height * scale, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)
