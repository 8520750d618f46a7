"""`daxfs map`: the device map read in pieces (as a live daemon serves it)
is the whole map; the picture has a title, a scale and a legend, and the
poison colour exactly where blocks are bad, at any scale.

The PNG is decoded here with zlib (no dependency): its size, its pixels."""

from __future__ import annotations

import os
import struct
import zlib

import pytest

from conftest import MiB, check_image, daxfs, make_image, mount_image
from engine_helpers import assert_clean, make_fs

from daxfs.cli import map_picture as mp
from daxfs.engine import devmap

BS = 4096


# ---------------------------------------------------------------- PNG reading

def read_png(data: bytes):
    """(width, height, rows of RGB tuples) of an 8-bit RGB PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, head = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == \
            zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, colour, _, _, interlace = head
    assert (depth, colour, interlace) == (8, 2, 0)
    raw = zlib.decompress(idat)
    stride = 3 * w
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - 3] if i >= 3 else 0
            b, c = prev[i], (prev[i - 3] if i >= 3 else 0)
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
            else:
                assert f == 0, f"filter {f}"
        rows.append([tuple(line[i:i + 3]) for i in range(0, stride, 3)])
        prev = line
    return w, h, rows


def cells_with(rows, lay, colour) -> set[int]:
    out = set()
    for c in range(lay.cells):
        x, y = lay.cell_xy(c)
        if any(rows[yy][xx] == colour for yy in range(y, y + lay.cell)
               for xx in range(x, x + lay.cell)):
            out.add(c)
    return out


def pixels_outside_grid(rows, lay, colour) -> int:
    x1, y1 = lay.x0 + lay.cols * lay.cell, lay.y0 + lay.rows * lay.cell
    return sum(1 for y, row in enumerate(rows) for x, px in enumerate(row)
               if px == colour and not (lay.x0 <= x < x1 and lay.y0 <= y < y1))


def poisoned_blocks(listing: str) -> set[int]:
    out = set()
    for ln in listing.splitlines()[1:]:
        if ln.rstrip().endswith("poisoned"):
            off, length = int(ln.split()[0]), int(ln.split()[1])
            out.update(range(off // BS, (off + length) // BS))
    return out


def check_picture(png: bytes, listing: str, total_blocks: int, names) -> None:
    w, h, rows = read_png(png)
    lay = mp.layout_for(total_blocks)
    assert w == lay.x0 + mp.COLS * mp.CELL + mp.MARK_W + mp.MARGIN
    assert h > lay.y0 + lay.rows * mp.CELL + 8 * mp.LINE          # the legend below the grid
    bad = poisoned_blocks(listing)
    assert bad, "no poisoned block in the listing"
    assert cells_with(rows, lay, mp.POISON) == {b // lay.per for b in bad}
    assert pixels_outside_grid(rows, lay, mp.POISON) == 64        # the legend's 8x8 swatch
    legend = rows[lay.y0 + lay.rows * mp.CELL:]
    drawn = {px for row in legend for px in row}
    for colour in (mp.FREE, mp.POISON, mp.FILE_COLOURS[0], mp.META_COLOURS["superblock"],
                   mp.META_COLOURS["log"]):
        assert colour in drawn, f"legend swatch {colour} missing"
    title = rows[:lay.y0]
    assert sum(px == mp.INK for row in title for px in row) > 500  # title and scale text
    for name in names:
        assert name in listing


def test_no_file_colour_is_near_the_poison_colour():
    for c in mp.FILE_COLOURS + [mp.OTHER_FILES] + list(mp.META_COLOURS.values()) \
            + [mp.FREE, mp.META_OTHER, mp.SHARED_DOT, mp.BACKGROUND]:
        assert sum((a - b) ** 2 for a, b in zip(c, mp.POISON)) ** 0.5 > 150, c
    assert len(set(mp.FILE_COLOURS)) == len(mp.FILE_COLOURS)


# ---------------------------------------------------------------- the records

def _rows(recs):
    return [(r.bno, r.nblocks, r.owner, r.what, r.offset, r.shared, r.poisoned) for r in recs]


def test_the_map_in_pieces_is_the_whole_map(tmp_path):
    """Shared, poisoned, xattr, metadata and free records, read in pieces
    of any size from a cursor, make exactly the whole map."""
    fs = make_fs(tmp_path / "m.img", 64 * MiB)
    try:
        ids = {}
        for i, name in enumerate([b"a", b"b", b"c", b"d"]):
            ids[name] = fs.create(1, name, 0o644, 0, 0).ino
        fs.write(ids[b"a"], 0, os.urandom(40 * BS))
        for j in range(30):                                    # interleaved: fragments
            fs.write(ids[b"c"], j * BS, b"c" * BS)
            fs.write(ids[b"d"], j * BS, b"d" * BS)
        fs.clone_range(ids[b"a"], 8 * BS, ids[b"b"], 0, 16 * BS)
        fs.clone_range(ids[b"a"], 8 * BS, ids[b"b"], 32 * BS, 4 * BS)   # same blocks twice
        fs.setxattr(ids[b"a"], b"user.big", b"v" * 9000)
        fs.setattr(ids[b"c"], size=10 * BS)                    # frees blocks: free gaps
        fs.commit()
        whole = devmap.records(fs, paths=False)
        data = [r for r in whole if r.what == "data" and r.owner == ids[b"a"]]
        free = [r for r in whole if r.what == "free"]
        bad = [(data[0].bno + 9, 2), (free[0].bno + 1, 1), (whole[0].bno, 1)]
        for b, n in bad:
            fs.vol.pmem.bad.add(b, n)
        whole = devmap.records(fs, paths=False)
        assert any(r.shared for r in whole) and any(r.what == "xattr" for r in whole)
        assert sum(r.poisoned for r in whole) >= 4              # a and b's shared block too
        for limit in (1, 2, 3, 7, 50, 600):
            got, cursor, pieces = [], (0, 0), 0
            while cursor is not None:
                recs, nxt = devmap.piece(fs, cursor[0], cursor[1], limit)
                assert 0 < len(recs) <= limit
                assert nxt is None or nxt > cursor
                got += recs
                cursor, pieces = nxt, pieces + 1
            assert _rows(devmap.merge(got)) == _rows(whole), limit
            assert pieces >= len(whole) // limit
        for b, n in bad:
            fs.vol.pmem.bad.clear(b, n)
        assert_clean(fs)
    finally:
        fs.close()


# ---------------------------------------------------------------- the picture

@pytest.mark.timeout(300)
def test_map_picture_of_an_image_and_of_a_mount(tmp_path, mnt):
    """A poisoned block is red in its cell (and nowhere else in the grid)
    whether the map is read from the image or from the live daemon, at 1
    block per cell and at 4 blocks per cell; the legend names the files."""
    for size, per in ((64 * MiB, 1), (256 * MiB, 4)):
        image = make_image(tmp_path / f"p{size}.img", size)
        total = size // BS
        assert mp.layout_for(total).per == per
        with mount_image(image, mnt, check_log=False) as m:
            (m / "photo.raw").write_bytes(os.urandom(64 * BS))
            assert daxfs("reflink", m / "photo.raw", m / "copy.raw").returncode == 0
            (m / "notes").write_bytes(b"n" * 3 * BS)
            os.sync()
            res = daxfs("poison", "inject", m / "photo.raw", "--offset", 5 * BS,
                        "--length", BS)
            assert res.returncode == 0, res.stderr
            png = tmp_path / f"live{per}.png"
            res = daxfs("map", m, "--png", png)
            assert res.returncode == 0, res.stderr
            check_picture(png.read_bytes(), res.stdout, total,
                          ["/photo.raw", "/copy.raw", "/notes"])
        free_off = size - 8 * MiB                             # free space, far from data
        res = daxfs("poison", "inject", image, "--offset", free_off, "--length", 3 * BS)
        assert res.returncode == 0, res.stderr
        png = tmp_path / f"image{per}.png"
        res = daxfs("map", image, "--png", png)
        assert res.returncode == 0, res.stderr
        assert len(poisoned_blocks(res.stdout)) == 4            # 1 (two files share it), 3 free
        check_picture(png.read_bytes(), res.stdout, total, ["/photo.raw", "/notes"])
        with mount_image(image, mnt, check_log=False) as m:     # free poison: cleared
            os.unlink(m / "photo.raw")
            os.unlink(m / "copy.raw")                           # the last owner: cleared
        check_image(image)
