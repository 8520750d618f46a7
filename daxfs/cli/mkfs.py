"""`daxfs mkfs IMAGE --size SIZE [--no-rmap] [--force]`: make a filesystem."""

import argparse
import os
import sys

from daxfs.engine.errors import DaxfsError
from daxfs.engine.mkfs import mkfs, parse_size
from daxfs.engine.pmem import Pmem


def main(argv=None, prog="daxfs mkfs") -> int:
    p = argparse.ArgumentParser(prog=prog, description="Make a new daxfs image.")
    p.add_argument("image", help="image file to create (made sparse, mode 0600)")
    p.add_argument("--size", required=True, help="device size, e.g. 64M, 4G, 1T (min 16M)")
    p.add_argument("--no-rmap", action="store_true",
                   help="no reverse-map btree (then reflink and dedupe are refused)")
    p.add_argument("--force", "-f", action="store_true",
                   help="overwrite an existing daxfs image")
    args = p.parse_args(argv)
    try:
        size = parse_size(args.size)
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    if os.path.exists(args.image) and os.path.getsize(args.image) > 0 and not args.force:
        try:
            pm = Pmem(args.image, readonly=True)
            pm.close()
            if _looks_like_daxfs(args.image):
                print(f"{prog}: {args.image} already holds a daxfs filesystem;"
                      " use --force to overwrite it", file=sys.stderr)
                return 1
        except DaxfsError as e:
            if "in use" in str(e):
                print(f"{prog}: {e}", file=sys.stderr)
                return 1
    try:
        mkfs(args.image, size, rmap=not args.no_rmap)
    except (DaxfsError, OSError) as e:
        msg = str(e) if args.image in str(e) else f"{args.image}: {e}"
        print(f"{prog}: {msg}", file=sys.stderr)
        return 1
    features = "rmap, reflink" if not args.no_rmap else "no rmap"
    print(f"made daxfs on {args.image}: {size - size % 4096} bytes, 4096-byte blocks, {features}")
    return 0


def _looks_like_daxfs(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"DXSB"


if __name__ == "__main__":
    sys.exit(main())
