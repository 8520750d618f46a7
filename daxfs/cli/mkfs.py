"""`daxfs mkfs IMAGE --size SIZE [--no-rmap] [--force]`: make a filesystem."""

import argparse

import sys

from daxfs.engine.errors import DaxfsError
from daxfs.engine.mkfs import mkfs, parse_size


def main(argv=None, prog="daxfs mkfs") -> int:
    p = argparse.ArgumentParser(prog=prog, description="Make a new daxfs image.")
    p.add_argument("image", help="image file to create (made sparse, mode 0600)")
    p.add_argument("--size", required=True, help="device size, e.g. 64M, 4G, 1T (min 16M)")
    p.add_argument("--no-rmap", action="store_true",
                   help="no reverse-map btree (then reflink and dedupe are refused)")
    p.add_argument("--force", "-f", action="store_true",
                   help="overwrite an existing file (a daxfs image or not)")
    args = p.parse_args(argv)
    try:
        size = parse_size(args.size)
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    try:
        mkfs(args.image, size, rmap=not args.no_rmap, force=args.force)
    except (DaxfsError, OSError) as e:
        msg = str(e) if args.image in str(e) else f"{args.image}: {e}"
        print(f"{prog}: {msg}", file=sys.stderr)
        return 1
    features = "rmap, reflink" if not args.no_rmap else "no rmap"
    print(f"made daxfs on {args.image}: {size - size % 4096} bytes, 4096-byte blocks, {features}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
