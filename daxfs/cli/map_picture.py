"""The picture of a device map (`daxfs map --png`), drawn with
daxfs/picture.py from the records of daxfs/engine/devmap.py.

What a reader sees, top to bottom:

* a title (the image, its size, how full it is, when it was drawn, and
  the mount point when read from a live daemon);
* the scale: how many bytes one cell stands for (a power of two chosen so
  that the device fits in at most `MAX_ROWS` rows of `COLS` cells), and
  how many one row does;
* the grid: cells in device order, left to right and top to bottom, each
  row labelled with its first byte's offset on the left.  A cell takes the
  colour of whatever owns most of its blocks, anything owned beating free
  space; a cell holding any shared block (two or more owners) gets a white
  dot; a cell holding any poisoned block is `POISON` red whatever else it
  holds (a bad range is never averaged away, at any scale), and its row is
  marked "< bad" on the right;
* the legend: the largest files, one colour each (no file colour is near
  red), the other files, each metadata kind present, free space, shared,
  and the bad ranges with their offsets.

`draw` returns the canvas and the `Layout` (where each block's cell is),
which is what a test reads back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from daxfs.engine.format import BLOCK_SIZE as BS
from daxfs.picture import Canvas

COLS = 128              # cells per row
MAX_ROWS = 128          # the device fits in at most this many rows
CELL = 6                # pixels per cell side
MARGIN = 16
AXIS_W = 60             # offset labels left of the grid
MARK_W = 48             # "< bad" right of the grid
LINE = 12               # pixels per text line (5x7 font at scale 1)
TOP_FILES = 8           # files with a colour of their own in the legend

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
DIM = (90, 90, 90)
POISON = (255, 0, 0)
FREE = (228, 228, 228)
SHARED_DOT = (255, 255, 255)
# Files: distinct, saturated hues far from POISON red (tests check the distance).
FILE_COLOURS = [(31, 119, 180), (255, 160, 20), (44, 160, 44), (148, 103, 189),
                (23, 190, 207), (188, 189, 34), (140, 86, 75), (227, 119, 194)]
OTHER_FILES = (158, 188, 218)
META_COLOURS = {
    "superblock": (0, 0, 0),
    "log": (101, 67, 33),
    "free-space/rmap btree or reserve pool": (105, 105, 105),
    "inode btree": (47, 79, 79),
    "dir btree": (72, 61, 139),
    "extent map btree": (85, 107, 47),
    "refcount btree": (96, 80, 64),
    "xattr btree": (112, 128, 144),
    "orphan btree": (60, 60, 60),
}
META_OTHER = (40, 40, 40)


@dataclass(frozen=True)
class Layout:
    """Where the grid is: block b is in cell b // per, drawn at `cell_xy`."""

    x0: int
    y0: int
    cols: int
    rows: int
    cell: int
    per: int            # blocks per cell
    cells: int          # cells that hold blocks

    def cell_xy(self, c: int) -> tuple[int, int]:
        return self.x0 + (c % self.cols) * self.cell, self.y0 + (c // self.cols) * self.cell


HEAD_H = MARGIN + 2 * 8 + 6 + 3 * LINE + 6     # title, device line, source, scale


def layout_for(total_blocks: int) -> Layout:
    """Where the grid of a device of `total_blocks` is drawn."""
    x0, y0 = MARGIN + AXIS_W, HEAD_H
    per = 1
    while -(-total_blocks // per) > COLS * MAX_ROWS:
        per *= 2
    cells = -(-total_blocks // per)
    return Layout(x0, y0, COLS, -(-cells // COLS), CELL, per, cells)


_UNITS = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def human(nbytes: float, exact: bool = False) -> str:
    """1536 -> '1.5 KiB', 0 -> '0'; `exact`: the largest unit that gives a
    whole number (1152 MiB, not 1.1 GiB)."""
    if nbytes == 0:
        return "0"
    for unit, scale in _UNITS:
        if nbytes >= scale and (not exact or nbytes % scale == 0):
            v = nbytes / scale
            return f"{v:.0f} {unit}" if v == int(v) or v >= 100 else f"{v:.1f} {unit}"
    return f"{int(nbytes)} B"


def _short(text: str, width: int) -> str:
    """`text` in at most `width` characters, its middle left out."""
    if len(text) <= width:
        return text
    keep = width - 3
    return text[:keep // 2] + "..." + text[len(text) - (keep - keep // 2):]


def file_colours(recs) -> tuple[dict[int, tuple], list[tuple[int, int, str]]]:
    """(inode -> colour for the largest files, [(inode, blocks, path)] of
    those files, largest first)."""
    blocks: dict[int, int] = {}
    paths: dict[int, str] = {}
    for r in recs:
        if r.is_file:
            blocks[r.owner] = blocks.get(r.owner, 0) + r.nblocks
            paths.setdefault(r.owner, r.path)
    top = sorted(blocks, key=lambda ino: (-blocks[ino], ino))[:TOP_FILES]
    return ({ino: FILE_COLOURS[i] for i, ino in enumerate(top)},
            [(ino, blocks[ino], paths[ino]) for ino in top])


def _colour(r, top: dict) -> tuple:
    if r.is_file:
        return top.get(r.owner, OTHER_FILES)
    return META_COLOURS.get(r.what, META_OTHER)


def cell_states(recs, lay: Layout, top: dict):
    """Per cell: (colour, shared, poisoned)."""
    tally: list = [None] * lay.cells          # colour -> owned blocks, per cell
    shared = bytearray(lay.cells)
    poisoned = bytearray(lay.cells)
    per = lay.per
    for r in recs:
        first, end = r.bno, r.bno + r.nblocks
        c0, c1 = first // per, min(lay.cells - 1, (end - 1) // per)
        if r.poisoned:
            poisoned[c0:c1 + 1] = b"\1" * (c1 - c0 + 1)
        if r.what == "free":
            continue
        if r.shared:
            shared[c0:c1 + 1] = b"\1" * (c1 - c0 + 1)
        colour = _colour(r, top)
        for c in range(c0, c1 + 1):
            n = min(end, (c + 1) * per) - max(first, c * per)
            t = tally[c]
            if t is None:
                tally[c] = {colour: n}
            else:
                t[colour] = t.get(colour, 0) + n
    out = []
    for c in range(lay.cells):
        t = tally[c]
        colour = FREE if t is None else max(t.items(), key=lambda kv: kv[1])[0]
        out.append((colour, bool(shared[c]), bool(poisoned[c])))
    return out


def draw(recs, total_blocks: int, image: str, *, mountpoint: str | None = None,
         when: float | None = None) -> tuple[Canvas, Layout]:
    """The picture of the map `recs` of a device of `total_blocks`."""
    top, top_files = file_colours(recs)
    free = sum(r.nblocks for r in recs if r.what == "free")
    used = total_blocks - free          # shared blocks once
    bad = [r for r in recs if r.poisoned]
    metas = sorted({r.what for r in recs if not r.is_file and r.what != "free"},
                   key=lambda k: (list(META_COLOURS).index(k) if k in META_COLOURS else 99, k))
    others = len({r.owner for r in recs if r.is_file} - set(top))

    lay = layout_for(total_blocks)
    grid_x = lay.x0
    width = grid_x + COLS * CELL + MARK_W + MARGIN
    legend_lines = max(2 + len(top_files) + 1, 2 + len(metas) + 4 + min(len(bad), 6))
    height = lay.y0 + lay.rows * CELL + 2 * LINE + legend_lines * LINE + MARGIN
    cv = Canvas(width, height, BACKGROUND)

    # title and scale
    stamp = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(when))
    cv.text(MARGIN, MARGIN, _short(f"daxfs map of {image}", (width - 2 * MARGIN) // 12),
            INK, 2)
    y = MARGIN + 2 * 8 + 6
    device = (f"{human(total_blocks * BS)} device ({total_blocks:,} blocks of 4 KiB): "
              f"{human(used * BS)} owned, {human(free * BS)} free; drawn {stamp}")
    cv.text(MARGIN, y, device, INK)
    where = f"read from the live mount at {mountpoint}" if mountpoint else "read from the image"
    cv.text(MARGIN, y + LINE, _short(where, (width - 2 * MARGIN) // 6), DIM)
    cv.text(MARGIN, y + 2 * LINE,
            f"scale: 1 cell = {human(lay.per * BS)} ({lay.per} block{'s' * (lay.per > 1)}), "
            f"1 row = {human(lay.per * COLS * BS)}; device offsets on the left", INK)

    # the grid
    states = cell_states(recs, lay, top)
    bad_rows = set()
    for c, (colour, is_shared, is_bad) in enumerate(states):
        x, y = lay.cell_xy(c)
        if is_bad:
            cv.rect(x, y, x + CELL, y + CELL, POISON)
            bad_rows.add(c // COLS)
            continue
        cv.rect(x, y, x + CELL, y + CELL, colour)
        if is_shared:
            cv.rect(x + 2, y + 2, x + CELL - 2, y + CELL - 2, SHARED_DOT)
    every = 8 if lay.rows > 8 else 1
    for row in range(0, lay.rows, every):
        y = lay.y0 + row * CELL
        label = human(row * COLS * lay.per * BS, exact=True)
        cv.text(grid_x - 6 - Canvas.text_width(label), y, label, DIM)
        cv.rect(grid_x - 4, y, grid_x - 1, y + 1, DIM)
    for row in sorted(bad_rows):
        y = lay.y0 + row * CELL
        cv.text(grid_x + COLS * CELL + 4, max(lay.y0, y - 1), "< bad", INK)

    # the legend: files on the left, the rest on the right
    y0 = lay.y0 + lay.rows * CELL + 2 * LINE
    col_w = (width - 2 * MARGIN) // 2
    chars = col_w // 6 - 4

    def entry(x, y, colour, text, dot=False):
        cv.rect(x, y, x + 8, y + 8, colour)
        if dot:
            cv.rect(x + 3, y + 3, x + 5, y + 5, SHARED_DOT)
        cv.text(x + 14, y + 1, _short(text, chars), INK)

    x = MARGIN
    cv.text(x, y0, "files (the largest, one colour each)", INK)
    y = y0 + LINE
    for ino, blocks, path in top_files:
        entry(x, y, top[ino], f"{human(blocks * BS)}  {path or f'inode {ino} (unlinked)'}")
        y += LINE
    if others or not top_files:
        entry(x, y, OTHER_FILES, f"{others:,} other files" if top_files else "no files")
    x = MARGIN + col_w
    cv.text(x, y0, "metadata, free, shared, bad", INK)
    y = y0 + LINE
    for kind in metas:
        entry(x, y, META_COLOURS.get(kind, META_OTHER), kind)
        y += LINE
    entry(x, y, FREE, "free space")
    entry(x, y + LINE, OTHER_FILES, "shared: a block with 2 or more owners (reflink, dedupe)",
          dot=True)
    y += 2 * LINE
    if bad:
        ranges = bad_ranges(bad)
        entry(x, y, POISON, f"poisoned: {human(sum(n for _, n in ranges) * BS)} in "
                            f"{len(ranges)} bad range{'s' * (len(ranges) > 1)} "
                            "(a whole cell red)")
        for r in bad[:6]:
            y += LINE
            cv.text(x + 14, y + 1, _short(f"at {r.bno * BS:,} (+{human(r.nblocks * BS)}) "
                                          f"{_owner_text(r)}", chars), DIM)
    else:
        entry(x, y, POISON, "poisoned (none)")
    return cv, lay


def bad_ranges(bad) -> list[tuple[int, int]]:
    """(first block, blocks) of the bad ranges the poisoned records cover
    (records of sharers overlap)."""
    out: list[list[int]] = []
    for r in sorted(bad, key=lambda r: r.bno):
        if out and r.bno <= out[-1][1]:
            out[-1][1] = max(out[-1][1], r.bno + r.nblocks)
        else:
            out.append([r.bno, r.bno + r.nblocks])
    return [(s, e - s) for s, e in out]


def _owner_text(r) -> str:
    if r.is_file:
        return r.path or f"inode {r.owner}"
    return r.what
