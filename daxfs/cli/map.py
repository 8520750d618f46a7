"""`daxfs map IMAGE|MOUNTPOINT [--png FILE] [--no-free]`: the physical layout
of the device, like `xfs_io -c fsmap`: byte offset, length, owner (inode and
path or metadata kind), file offset, shared and poisoned flags; and with
--png a picture of it (daxfs/cli/map_picture.py).

Owns the command line: an image is read directly (daxfs/engine/devmap.py),
a mount from its daemon in pieces (daxfs/control/admin.py `client_map`)."""

import errno
import os
import sys
import time

from daxfs import host
from daxfs.control import admin
from daxfs.engine import devmap
from .common import Parser, failed, one_line_errors, target_kind

PROG = "daxfs map"

DESCRIPTION = """\
Print the physical layout of the device, like xfs_io's fsmap: one line per
range, in device order, with its byte offset and length, its owner (inode
and path, or the kind of metadata), the offset in the file, and whether
it is shared (reflink, dedupe) or poisoned (a bad range).  A mounted image
is read from its daemon in small pieces, so the mount keeps serving."""

EPILOG = """\
--png FILE draws the map: a grid of cells in device order with the scale
(bytes per cell) and device offsets, a title, and a legend: the largest
files one colour each, other files, each kind of metadata, free space,
shared blocks (white dot) and poisoned blocks (red: a cell with any
poisoned block is red at any scale, and its row is marked "< bad").

Exit status: 0 done, 1 failed (one line on stderr), 2 usage."""


def read_map(target: str):
    """(records, total_blocks, image, mountpoint or None) of TARGET."""
    if target_kind(target) in ("mount", "file"):
        root = admin.mount_root(target)
        found = host.daxfs_mount_at(root)
        image = host.image_of_source(found.source) if found else None
        recs, total = admin.client_map(root)
        return recs, total, image or root, root
    from daxfs.engine.fs import Filesystem
    fs = Filesystem.open(target, readonly=True)
    try:
        return devmap.records(fs), fs.vol.total_blocks, os.path.abspath(target), None
    finally:
        fs.close()


def main(argv=None) -> int:
    p = Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("target", metavar="IMAGE|MOUNTPOINT",
                   help="an image file, or the mount point of a daxfs mount")
    p.add_argument("--png", metavar="FILE", help="also draw the map as a PNG picture")
    p.add_argument("--no-free", action="store_true", help="leave free space out of the listing")
    args = p.parse_args(argv)
    only_root = "only root may read the map of a mount"
    return one_line_errors(PROG, f"read the map of {args.target}", lambda: _show(args),
                           {errno.EPERM: only_root, errno.EACCES: only_root})


def _show(args) -> int:
    recs, total, image, mountpoint = read_map(args.target)
    lines = [f"{'device offset':>14} {'length':>12}  {'owner':<40} {'file offset':<18} flags"]
    lines += [r.line() for r in recs if not (args.no_free and r.what == "free")]
    sys.stdout.write("\n".join(lines) + "\n")
    if args.png:
        from .map_picture import draw, human
        canvas, lay = draw(recs, total, image, mountpoint=mountpoint, when=time.time())
        try:
            canvas.write(args.png)
        except OSError as e:
            print(failed(PROG, f"write {args.png}", e), file=sys.stderr)
            return 1
        print(f"picture written to {args.png} ({canvas.w}x{canvas.h} px, "
              f"1 cell = {human(lay.per * 4096)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
