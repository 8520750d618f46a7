"""`daxfs poison inject|list`: media errors on the device.

  daxfs poison inject TARGET --offset BYTES --length BYTES
  daxfs poison inject TARGET --block N
  daxfs poison inject TARGET --metadata KIND[:root|leaf|interior]
  daxfs poison list TARGET

TARGET is an image (offsets on the device; the handler runs at the next
mount), a mountpoint (offsets on the device; the live daemon handles it at
once), or a file on a daxfs mount (offsets in the file, resolved to its
physical blocks through FIEMAP).  scripts/inject_poison.py is
`daxfs poison inject`.
"""

import argparse
import errno
import json
import os
import sys

from daxfs.control import admin
from daxfs.engine import poison_target
from daxfs.engine.format import BLOCK_SIZE as BS
from .common import BYTES_HELP, Parser, byte_count, one_line_errors, target_kind

PROG = "daxfs poison"

HINTS = {
    errno.EINVAL: "the range must lie inside the device (`daxfs map` shows its size)",
    errno.EPERM: "only root may inject media errors or read the daemon's reports",
    errno.EACCES: "only root may inject media errors or read the daemon's reports",
}


def _print_report(rep: dict) -> None:
    for line in rep["lines"]:
        print(line)


def _metadata(text: str) -> str:
    if not poison_target.is_metadata_request(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: one of {', '.join(sorted(poison_target.METADATA_KINDS))}, a tree kind"
            f" optionally followed by :{', :'.join(poison_target.WHICH)}")
    return text


def inject(args) -> int:
    kind = target_kind(args.target)
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
    if args.metadata is None and args.length == 0:
        print(f"{PROG} inject: --length must be at least 1 byte", file=sys.stderr)
        return 2
    if kind == "image":
        from daxfs.engine import poison
        from daxfs.engine.badblocks import BadBlocks
        from daxfs.engine.fs import Filesystem
        fs = Filesystem.open(args.target, readonly=True)
        try:
            if args.metadata:
                bno, n = poison_target.metadata_block(fs, args.metadata), 1
            else:
                bno = args.offset // BS
                n = -(-(args.offset + args.length) // BS) - bno
            if bno + n > fs.vol.total_blocks:
                print(f"{PROG}: bytes {bno * BS}+{n * BS} are beyond the end of the device "
                      f"({fs.vol.total_blocks * BS} bytes)", file=sys.stderr)
                return 1
            owners = poison.owners_of(fs, bno, n)
            total = fs.vol.total_blocks
        finally:
            fs.close()
        BadBlocks(args.target, total).add(bno, n)
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
    kind = target_kind(args.target)
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
    if not any(not rep.get("healed") for rep in reports):
        print("no bad ranges")
    for rep in reports:
        if rep.get("healed"):
            print(f"block {rep['bno']}: {rep['action']} (no longer bad)")
            continue
        print(f"bad blocks {rep['bno']}+{rep['nblocks']} (bytes {rep['bno'] * BS}"
              f"+{rep['nblocks'] * BS}):" + ("" if rep["owners"] else " no owner"))
        for o in rep["owners"]:
            print(f"  {o['what']}")
    return 0


def parser() -> Parser:
    p = Parser(prog=PROG, description=(
        "Inject or list media errors (bad ranges) on the device, as a pmem device's\n"
        "badblocks list would report them.  On a mount the daemon runs its failure\n"
        "handler at once: the rmap names every owner of the range; files that own\n"
        "it (every sharer) get EIO on those bytes (SIGBUS through mmap), metadata\n"
        "shuts the filesystem down, free space is cleared.  On an unmounted image\n"
        "the range is recorded in IMAGE.badblocks and handled at the next mount."),
        epilog=("TARGET is an image file, the mount point of a daxfs mount (offsets on\n"
                "the device), or a file on a daxfs mount (offsets in that file).\n"
                "Offsets and lengths are " + BYTES_HELP + "\n"
                "scripts/inject_poison.py is the same as `daxfs poison inject`.\n"
                "Exit status: 0 done, 1 failed (one line on stderr), 2 usage."))
    sub = p.add_subparsers(dest="cmd", required=True, metavar="inject|list")
    i = sub.add_parser("inject", help="mark a range bad and run the failure handler",
                       formatter_class=p.formatter_class, epilog=p.epilog, description=(
                           "Mark a range bad.  Give --offset and --length, --block, or"
                           " --metadata."))
    i.add_argument("target", metavar="TARGET",
                   help="image, mount point, or a file on a daxfs mount")
    i.add_argument("--offset", type=byte_count, metavar="BYTES",
                   help="first bad byte: on the device, or in the file for a file TARGET "
                        "(the whole 4 KiB blocks it touches go bad)")
    i.add_argument("--length", type=byte_count, metavar="BYTES", help="how many bytes")
    i.add_argument("--metadata", metavar="KIND[:WHICH]", type=_metadata,
                   help="poison one block of metadata instead: KIND is one of "
                        + ", ".join(sorted(poison_target.METADATA_KINDS))
                        + "; for a tree, WHICH picks the node: root (the default), leaf (the"
                        " middle leaf in key order) or interior (the middle interior node"
                        " below the root; the tree must have one)")
    i.add_argument("--block", type=int, metavar="N",
                   help="poison block N (of the device; of the file for a file TARGET):"
                        " the same as --offset N*4096 --length 4096")
    ls = sub.add_parser("list", help="every bad range with its owners",
                        formatter_class=p.formatter_class, description=(
                            "Every bad range of the device with its owners (inode, path, "
                            "offset in the file,\nor the kind of metadata)."))
    ls.add_argument("target", metavar="TARGET", help="image or mount point")
    ls.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    what = (f"inject a media error on {args.target}" if args.cmd == "inject"
            else f"list the bad ranges of {args.target}")
    return one_line_errors(PROG, what, lambda: inject(args) if args.cmd == "inject"
                           else listing(args), HINTS)


if __name__ == "__main__":
    sys.exit(main())
