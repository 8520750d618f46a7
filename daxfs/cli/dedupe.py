"""`daxfs dedupe SRC DST... [--src-offset N] [--dst-offset N] [--length N]`:
compare a range of SRC with the same-sized range of each DST and share the
extents where the bytes are identical (FIDEDUPERANGE semantics), through
the control protocol (daxfs/control/client.py) — or the kernel's ioctl on
other file systems.  Owns only the command line.

The range is deduplicated in pieces of at most 1 GiB (the kernel's limit per
call).  For each destination one line on stdout: ``DST: N bytes deduped``
or ``DST: differs`` (data differs: not an error).  Errors are one line each
on stderr, ``daxfs dedupe: DST: message``, and make the exit status 1.
--length 0 (the default) means from --src-offset to the end of SRC.
"""

from __future__ import annotations

import os
import sys

from daxfs.control import protocol as control
from .reflink import _Parser, parse_size
from daxfs.control.client import dedupe


def parser():
    p = _Parser(prog="daxfs dedupe",
                description="Share identical ranges of SRC and each DST after comparing them.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dsts", metavar="DST", nargs="+")
    p.add_argument("--src-offset", type=parse_size, default=0, metavar="N")
    p.add_argument("--dst-offset", type=parse_size, default=0, metavar="N")
    p.add_argument("--length", type=parse_size, default=0, metavar="N",
                   help="bytes to compare; 0 (default): to the end of SRC")
    return p


def main(argv) -> int:
    try:
        args = parser().parse_args(list(argv))
    except SystemExit as e:
        return int(e.code or 0)
    status = 0
    try:
        src_fd = os.open(args.src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        print(f"daxfs dedupe: {args.src}: {e.strerror}", file=sys.stderr)
        return 1
    fds: dict[str, int] = {}
    try:
        length = args.length
        if length == 0:
            length = max(os.fstat(src_fd).st_size - args.src_offset, 0)
        for name in args.dsts:
            try:
                fds[name] = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                print(f"daxfs dedupe: {name}: {e.strerror}", file=sys.stderr)
                status = 1
        done = {name: 0 for name in fds}
        outcome: dict[str, str] = {}
        pending = list(fds)
        pos = 0
        while pending:
            n = min(length - pos, control.DEDUPE_MAX_LENGTH)
            try:
                results = dedupe(src_fd, args.src_offset + pos, n,
                                 [(fds[name], args.dst_offset + pos) for name in pending])
            except OSError as e:
                print(f"daxfs dedupe: {args.src}: {e.strerror}", file=sys.stderr)
                return 1
            still = []
            for name, r in zip(pending, results):
                if r.status == control.FILE_DEDUPE_RANGE_SAME:
                    done[name] += r.bytes_deduped
                    if pos + n < length and r.bytes_deduped == n:
                        still.append(name)
                elif r.status == control.FILE_DEDUPE_RANGE_DIFFERS:
                    outcome[name] = "differs"
                else:
                    outcome[name] = f"error {-r.status}"
                    print(f"daxfs dedupe: {name}: {os.strerror(-r.status)}", file=sys.stderr)
                    status = 1
            pending = still
            pos += n
        for name in fds:
            if outcome.get(name) == "differs":
                extra = f" (after {done[name]} bytes deduped)" if done[name] else ""
                print(f"{name}: differs{extra}")
            elif name not in outcome:
                print(f"{name}: {done[name]} bytes deduped")
    finally:
        for fd in fds.values():
            os.close(fd)
        os.close(src_fd)
    return status
