"""`daxfs map IMAGE|MOUNTPOINT [--png FILE]`: the physical layout of the
device, like `xfs_io -c fsmap`: byte offset, length, owner (inode and path
or metadata kind), file offset, shared and poisoned flags."""

import argparse
import os
import sys

from daxfs.control import admin
from daxfs.engine import devmap
from daxfs.engine.errors import DaxfsError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="daxfs map", description="Print the device's layout.")
    p.add_argument("target", help="image or mountpoint")
    p.add_argument("--png", metavar="FILE", help="also draw the device as a picture")
    p.add_argument("--no-free", action="store_true", help="leave free space out")
    args = p.parse_args(argv)
    try:
        if os.path.isdir(args.target):
            recs, total = admin.client_map(admin.mount_root(args.target))
        else:
            from daxfs.engine.fs import Filesystem
            fs = Filesystem.open(args.target, readonly=True)
            try:
                recs, total = devmap.records(fs), fs.vol.total_blocks
            finally:
                fs.close()
    except DaxfsError as e:
        print(f"daxfs map: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"daxfs map: {args.target}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"{'device offset':>14} {'length':>12}  {'owner':<40} {'file offset':<18} flags")
    for r in recs:
        if args.no_free and r.what == "free":
            continue
        print(r.line())
    if args.png:
        devmap.write_png(recs, total, args.png)
        print(f"picture written to {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
