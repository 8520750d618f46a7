"""`daxfs reflink SRC DST [--src-offset N] [--dst-offset N] [--length N]`:
clone (share) a range of SRC into DST, creating DST if it does not exist,
through the control protocol (daxfs/control/client.py) — or the kernel's
FICLONERANGE on other file systems.  Owns only the command line: argument
parsing, opening the files, one-line error messages.

Sizes accept a K, M, G or T suffix (powers of 1024).  --length 0 (the
default) clones to the source's end of file.  If DST was created here and
the clone fails, DST is removed again.
"""

from __future__ import annotations

import argparse
import os
import sys

from daxfs.control.client import clone

_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """A non-negative byte count, with an optional K/M/G/T suffix."""
    t = text.strip().lower()
    scale = 1
    if t and t[-1] in _SUFFIXES:
        scale, t = _SUFFIXES[t[-1]], t[:-1]
    try:
        value = int(t, 0) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"negative size: {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"{self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="daxfs reflink",
                description="Share a range of SRC's extents with DST (a clone).")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.add_argument("--src-offset", type=parse_size, default=0, metavar="N")
    p.add_argument("--dst-offset", type=parse_size, default=0, metavar="N")
    p.add_argument("--length", type=parse_size, default=0, metavar="N",
                   help="bytes to clone; 0 (default): to the end of SRC")
    return p


def _fail(name: str, e: OSError) -> int:
    print(f"daxfs reflink: {name}: {e.strerror or e}", file=sys.stderr)
    return 1


def main(argv) -> int:
    try:
        args = parser().parse_args(list(argv))
    except SystemExit as e:
        return int(e.code or 0)
    try:
        src_fd = os.open(args.src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        return _fail(args.src, e)
    created = False
    try:
        try:
            dst_fd = os.open(args.dst, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            try:
                dst_fd = os.open(args.dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
                created = True
            except OSError as e:
                return _fail(args.dst, e)
        except OSError as e:
            return _fail(args.dst, e)
        try:
            clone(src_fd, dst_fd, args.src_offset, args.dst_offset, args.length)
        except OSError as e:
            if created:
                try:
                    os.unlink(args.dst)
                except OSError:
                    pass
            return _fail(args.src, e)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)
    return 0
