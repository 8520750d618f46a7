"""`daxfs check IMAGE [--repair]`: verify an image (fsck).

Exit status as e2fsck: 0 clean, 4 errors left uncorrected, 8 operational
error (not an image, in use, unreadable)."""

import sys

from daxfs import gc_tuning
from daxfs.engine.errors import DaxfsError
from .common import Parser, failed

PROG = "daxfs check"
EXIT_CLEAN, EXIT_ERRORS, EXIT_OPERATIONAL = 0, 4, 8

DESCRIPTION = """\
Check a daxfs image (like xfs_repair -n / e2fsck -n): both superblocks,
every node of every tree, inodes, directories and link counts, and that
extent maps, rmap, refcount and free space agree (every block is exactly
one of free, metadata or file data).  Each problem is one line naming the
inode (and path) and the block.  The image must not be mounted.  Without
--repair nothing is changed (a pending log is replayed, as e2fsck replays
its journal)."""

EPILOG = """\
--repair keeps every record of every intact leaf and derives the rest: it
reads every tree node it can, finds the nodes an unreadable one hid through
the rmap and a scan of the device, mends the primary records and derives
the rest (extent maps from the rmap, refcount, rmap, free space, counters),
then writes the rebuilt trees into free blocks and switches to them in one
transaction (a crash during the repair leaves the image as it was).  What
it does to files: an inode whose record was lost is made again from what
the image knows of it (its data, names, attributes), the attributes it had
to guess said ("attributes guessed: size from its extents, mode 0600, ...");
inodes no directory names go to /lost+found, named by inode number; entries
naming inodes that cannot be made again are dropped; link counts, block
counts and impossible sizes are corrected; extents pointing outside the
device or over metadata are dropped; data whose extent records are lost
together with their rmap records is gone: the file keeps its size and reads
zeros there (the fix line says how many blocks).  Each change is printed as
"repaired: ...", and a closing "summary: ..." counts the inodes recovered
exactly, recreated with guessed attributes, and lost.

Exit status (as e2fsck):
  0  clean (or, with --repair, clean after repairing)
  4  problems found and left uncorrected
  8  could not check: not a daxfs image, in use by a mount, unreadable"""


def main(argv=None) -> int:
    p = Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("image", metavar="IMAGE", help="the image file (not mounted)")
    p.add_argument("--repair", action="store_true",
                   help="mend the image, losing nothing it still holds (see below)")
    p.add_argument("--quiet", "-q", action="store_true", help="print problems only")
    args = p.parse_args(argv)
    gc_tuning.tune()
    try:
        summary = ""
        if args.repair:
            from daxfs.fsck.repair import repair
            res = repair(args.image)
            problems, summary = res.left, res.summary
            for line in res.fixed:
                print(f"repaired: {line}")
        else:
            from daxfs.fsck.check import check_image
            problems = check_image(args.image, progress=not args.quiet)
    except DaxfsError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_OPERATIONAL
    except OSError as e:
        print(failed(PROG, f"check {args.image}", e), file=sys.stderr)
        return EXIT_OPERATIONAL
    for line in problems:
        print(line)
    if summary:
        print(f"summary: {summary}")
    if problems:
        print(f"{args.image}: {len(problems)} problem(s) found", file=sys.stderr)
        return EXIT_ERRORS
    if not args.quiet:
        print(f"{args.image}: clean")
    return EXIT_CLEAN


if __name__ == "__main__":
    sys.exit(main())
