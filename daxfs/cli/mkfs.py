"""`daxfs mkfs IMAGE --size SIZE [--no-rmap] [--force]`: make a filesystem.

Owns the command line and its one-line errors; a failed mkfs leaves no
file it created behind (daxfs/engine/mkfs.py)."""

import errno
import os
import sys

from daxfs.engine.errors import DaxfsError
from daxfs.engine.format import BLOCK_SIZE
from daxfs.engine.mkfs import mkfs, parse_size
from .common import Parser, failed

HINTS = {
    errno.EFBIG: "choose a smaller --size, or put the image on a filesystem that allows "
                 "larger files",
    errno.ENOSPC: "free space on the host filesystem or put the image elsewhere",
    errno.EACCES: "check the permissions of the directory, or run as root",
}


def parser(prog: str) -> Parser:
    p = Parser(prog=prog, description=(
        "Make a new daxfs image: a sparse file that plays a persistent-memory\n"
        "device (blocks take host space only once daxfs allocates them).  The\n"
        "file is created with mode 0600 (it holds every file's bytes)."),
        epilog="Exit status: 0 made, 1 failed (one line on stderr; nothing is left behind\n"
               "that mkfs created), 2 usage.")
    p.add_argument("image", help="the image file to create (or, with --force, to overwrite)")
    p.add_argument("--size", required=True,
                   help="device size in bytes, or with a K, M, G or T suffix (KiB, MiB, GiB, "
                        "TiB), e.g. 64M, 4G, 1T; at least 16M; rounded down to 4 KiB")
    p.add_argument("--no-rmap", action="store_true",
                   help="no reverse-map btree (then reflink and dedupe are refused, and a "
                        "media error cannot be traced to the files it hits)")
    p.add_argument("--force", "-f", action="store_true",
                   help="overwrite an existing file (a daxfs image or not)")
    return p


def main(argv=None, prog="daxfs mkfs") -> int:
    args = parser(prog).parse_args(argv)
    image = args.image
    try:
        size = parse_size(args.size)
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    if os.path.isdir(image):
        print(f"{prog}: {image} is a directory; give the path of the image file to make",
              file=sys.stderr)
        return 1
    parent = os.path.dirname(os.path.abspath(image))
    if not os.path.isdir(parent):
        print(f"{prog}: cannot create {image}: the directory {parent} does not exist",
              file=sys.stderr)
        return 1
    try:
        mkfs(image, size, rmap=not args.no_rmap, force=args.force)
    except DaxfsError as e:
        msg = str(e) if image in str(e) else f"{image}: {e}"
        print(f"{prog}: {msg}", file=sys.stderr)
        return 1
    except OSError as e:
        what = f"make {image} {_size_text(size)} large" if e.errno == errno.EFBIG \
            else f"make {image}"
        print(failed(prog, what, e, HINTS.get(e.errno, "")), file=sys.stderr)
        return 1
    features = "rmap, reflink" if not args.no_rmap else "no rmap"
    print(f"made daxfs on {image}: {size - size % BLOCK_SIZE} bytes, "
          f"{BLOCK_SIZE}-byte blocks, {features}")
    return 0


def _size_text(size: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} bytes"


if __name__ == "__main__":
    sys.exit(main())
