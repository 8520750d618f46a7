"""`daxfs poison inject|list`: media errors on the device.

  daxfs poison inject TARGET --offset BYTES --length BYTES
  daxfs poison inject TARGET --block N
  daxfs poison inject TARGET --metadata KIND[:root|leaf|interior]
  daxfs poison list TARGET

TARGET is an image (offsets on the device; the handler runs at the next
mount), a mountpoint (offsets on the device; the live daemon handles it at
once), or a file on a daxfs mount (offsets in the file, resolved to its
physical blocks through FIEMAP).
"""

import argparse
import json
import os
import sys

from daxfs.control import admin
from daxfs.engine.errors import DaxfsError
from daxfs.engine.format import BLOCK_SIZE as BS

PROG = "daxfs poison"


def _kind(target: str) -> str:
    if os.path.isdir(target):
        try:
            os.getxattr(target, b"user.daxfs.probe")
            return "mount"
        except OSError:
            raise SystemExit(f"{PROG}: {target}: a directory that is not on a daxfs mount")
    if not os.path.isfile(target):
        raise SystemExit(f"{PROG}: {target}: no such image, mountpoint or file")
    try:
        os.getxattr(target, b"user.daxfs.probe")
        return "file"
    except OSError:
        return "image"


def _print_report(rep: dict) -> None:
    for line in rep["lines"]:
        print(line)


def _metadata(text: str) -> str:
    if not admin.is_metadata_request(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: one of {', '.join(sorted(admin.METADATA_KINDS))}, a tree kind"
            f" optionally followed by :{', :'.join(admin.WHICH)}")
    return text


def inject(args) -> int:
    kind = _kind(args.target)
    if args.block is not None:
        if args.block < 0 or args.offset is not None or args.length is not None:
            print(f"{PROG} inject: --block takes a block number, without --offset/--length",
                  file=sys.stderr)
            return 2
        args.offset, args.length = args.block * BS, BS
    if args.metadata is None and (args.offset is None or args.length is None):
        print(f"{PROG} inject: give --offset and --length, --block N, or --metadata KIND",
              file=sys.stderr)
        return 2
    if kind == "image":
        from daxfs.engine import poison
        from daxfs.engine.badblocks import BadBlocks
        from daxfs.engine.fs import Filesystem
        fs = Filesystem.open(args.target, readonly=True)
        try:
            if args.metadata:
                bno, n = admin.metadata_block(fs, args.metadata), 1
            else:
                bno = args.offset // BS
                n = -(-(args.offset + args.length) // BS) - bno
            if bno + n > fs.vol.total_blocks:
                print(f"{PROG}: range is beyond the end of the device", file=sys.stderr)
                return 1
            owners = poison.owners_of(fs, bno, n)
        finally:
            fs.close()
        BadBlocks(args.target).add(bno, n)
        print(f"marked blocks {bno}+{n} (bytes {bno * BS}+{n * BS}) bad on {args.target};"
              " the filesystem handles it at the next mount")
        for o in owners:
            print(f"  owner {o.describe()}")
        return 0
    root = admin.mount_root(args.target)
    if kind == "file":
        if args.metadata:
            print(f"{PROG}: --metadata needs an image or a mountpoint", file=sys.stderr)
            return 2
        from daxfs.control.client import fiemap
        fd = os.open(args.target, os.O_RDONLY)
        try:
            exts = fiemap(fd, args.offset, args.length)
        finally:
            os.close(fd)
        lo, hi = args.offset, args.offset + args.length
        requests = []
        for e in exts:
            a, b = max(lo, e.logical), min(hi, e.logical + e.length)
            if a < b:
                requests.append(f"{e.physical + a - e.logical} {b - a}")
        if not requests:
            print(f"{PROG}: {args.target}: no blocks are mapped in that range (a hole)",
                  file=sys.stderr)
            return 1
    else:
        requests = [args.metadata] if args.metadata else [f"{args.offset} {args.length}"]
    for req in requests:
        _print_report(admin.client_poison(root, req))
    return 0


def listing(args) -> int:
    kind = _kind(args.target)
    if kind == "image":
        from daxfs.engine import poison
        from daxfs.engine.fs import Filesystem
        fs = Filesystem.open(args.target, readonly=True)
        try:
            reports = [admin.report_dict(r) for r in poison.listing(fs)]
        finally:
            fs.close()
    else:
        reports = admin.client_list(admin.mount_root(args.target))
    if args.json:
        print(json.dumps(reports, indent=1))
        return 0
    if not reports:
        print("no bad ranges")
    for rep in reports:
        print(f"bad blocks {rep['bno']}+{rep['nblocks']} (bytes {rep['bno'] * BS}"
              f"+{rep['nblocks'] * BS}):" + ("" if rep["owners"] else " no owner"))
        for o in rep["owners"]:
            print(f"  {o['what']}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="Inject or list media errors.")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("inject", help="mark a range bad and run the failure handler")
    i.add_argument("target", help="image, mountpoint, or a file on a daxfs mount")
    i.add_argument("--offset", type=int, help="first byte (device, or file for a file target)")
    i.add_argument("--length", type=int, help="bytes")
    i.add_argument("--metadata", metavar="KIND[:WHICH]", type=_metadata,
                   help="poison one block of metadata instead: KIND is one of "
                   + ", ".join(sorted(admin.METADATA_KINDS))
                   + "; for a tree, WHICH picks the node: root (the default), leaf (the"
                   " middle leaf in key order) or interior (the middle interior node"
                   " below the root; the tree must have one)")
    i.add_argument("--block", type=int, metavar="N",
                   help="poison block N (of the device; of the file for a file target):"
                   " the same as --offset N*4096 --length 4096")
    ls = sub.add_parser("list", help="every bad range with its owners")
    ls.add_argument("target", help="image or mountpoint")
    ls.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        return inject(args) if args.cmd == "inject" else listing(args)
    except DaxfsError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{PROG}: {args.target}: {e.strerror}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
