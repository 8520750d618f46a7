"""`daxfs check IMAGE [--repair]`: verify an image (fsck).

Exit status as e2fsck: 0 clean, 4 errors left uncorrected, 8 operational
error (not an image, in use, unreadable)."""

import argparse
import sys

from daxfs import gc_tuning
from daxfs.engine.errors import DaxfsError

EXIT_CLEAN, EXIT_ERRORS, EXIT_OPERATIONAL = 0, 4, 8


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="daxfs check", description="Check a daxfs image.")
    p.add_argument("image")
    p.add_argument("--repair", action="store_true",
                   help="repair: salvage every tree, rebuild what can be derived (rmap,"
                   " refcount, free space, link counts), make lost inodes again, and end"
                   " with a summary (recovered exactly / recreated with guessed"
                   " attributes / lost)")
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
        print(f"daxfs check: {e}", file=sys.stderr)
        return EXIT_OPERATIONAL
    except OSError as e:
        print(f"daxfs check: {args.image}: {e.strerror}", file=sys.stderr)
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
