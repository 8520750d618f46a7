"""`daxfs reflink SRC DST [--src-offset N] [--dst-offset N] [--length N]`:
clone (share) a range of SRC into DST, creating DST if it does not exist,
through the control protocol (daxfs/control/client.py) — or the kernel's
FICLONERANGE on other file systems.  Owns only the command line: argument
parsing, opening the files, one-line error messages (what failed, on what,
why and what to do).

Sizes accept a K, M, G or T suffix (powers of 1024).  --length 0 (the
default) clones to the source's end of file.  If DST was created here and
the clone fails, DST is removed again.
"""

from __future__ import annotations

import os
import sys

from daxfs.control.client import clone
from .common import BYTES_HELP, Parser, failed, range_arguments, sharing_hints

PROG = "daxfs reflink"

HINTS = sharing_hints("reflink", "DST", "SRC's end of file")


def parser() -> Parser:
    p = Parser(prog=PROG, description=(
        "Share a range of SRC's extents with DST (a clone, like FICLONERANGE or\n"
        "cp --reflink=always): no bytes are copied, and a later write to either\n"
        "file copies only the blocks it touches.  DST is created if it does not\n"
        "exist (and removed again if the clone fails).  On a daxfs mount the clone\n"
        "goes to the daemon through its control protocol; on XFS or btrfs the\n"
        "kernel's FICLONERANGE is used."),
        epilog="Offsets and lengths are " + BYTES_HELP + "\n"
               "Exit status: 0 cloned, 1 refused or failed (one line on stderr), 2 usage.")
    p.add_argument("src", metavar="SRC", help="the file whose blocks are shared")
    p.add_argument("dst", metavar="DST", help="the file that gets them")
    range_arguments(p, "where it goes in DST (default 0)",
                    "bytes to clone; 0 (default): to the end of SRC")
    return p


def _fail(what: str, e: OSError, hint: str = "") -> int:
    print(failed(PROG, what, e, hint), file=sys.stderr)
    return 1


def main(argv) -> int:
    try:
        args = parser().parse_args(list(argv))
    except SystemExit as e:
        return int(e.code or 0)
    try:
        src_fd = os.open(args.src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        return _fail(f"open {args.src} for reading", e)
    created = False
    try:
        try:
            dst_fd = os.open(args.dst, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            try:
                dst_fd = os.open(args.dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
                created = True
            except OSError as e:
                return _fail(f"create {args.dst}", e)
        except OSError as e:
            return _fail(f"open {args.dst} for writing", e)
        try:
            clone(src_fd, dst_fd, args.src_offset, args.dst_offset, args.length)
        except OSError as e:
            if created:
                try:
                    os.unlink(args.dst)
                except OSError:
                    pass
            return _fail(f"clone {args.src} into {args.dst}", e, HINTS.get(e.errno, ""))
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)
    return 0
