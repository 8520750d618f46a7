"""`daxfs dedupe SRC DST... [--src-offset N] [--dst-offset N] [--length N]`:
compare a range of SRC with the same-sized range of each DST and share the
extents where the bytes are identical (FIDEDUPERANGE semantics), through
the control protocol (daxfs/control/client.py) — or the kernel's ioctl on
other file systems.  Owns only the command line.

The range is deduplicated in pieces of at most 1 GiB (the kernel's limit per
call).  For each destination one line on stdout: ``DST: N bytes deduped``
or ``DST: differs`` (data differs: not an error).  Errors are one line each
on stderr, ``daxfs dedupe: cannot WHAT: why; what to do``, and make the
exit status 1.
--length 0 (the default) means from --src-offset to the end of SRC.
"""

from __future__ import annotations

import os
import sys


from daxfs.control import protocol as control
from daxfs.control.client import dedupe
from .common import BYTES_HELP, Parser, failed, range_arguments, sharing_hints

PROG = "daxfs dedupe"

HINTS = sharing_hints("dedupe", "every DST", "the end of both files")


def parser():
    p = Parser(prog=PROG, description=(
        "Compare a range of SRC with the same range of each DST and, where the\n"
        "bytes are identical, make DST share SRC's blocks (FIDEDUPERANGE): the\n"
        "space is freed and the file contents stay exactly as they were.  For each\n"
        "DST one line on stdout: 'DST: N bytes deduped' or 'DST: differs' (not an\n"
        "error).  To dedupe whole trees use duperemove through daxfs exec\n"
        "(daxfs exec -- duperemove -dr -b 4096 DIR)."),
        epilog="Offsets and lengths are " + BYTES_HELP + "\n"
               "Exit status: 0 done (also when ranges differ), 1 an error (one line\n"
               "per error on stderr), 2 usage.")
    p.add_argument("src", metavar="SRC", help="the file whose blocks are kept")
    p.add_argument("dsts", metavar="DST", nargs="+", help="files that share them where identical")
    range_arguments(p, "where it starts in each DST (default 0)",
                    "bytes to compare; 0 (default): from --src-offset to the end of SRC")
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
        print(failed(PROG, f"open {args.src} for reading", e), file=sys.stderr)
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
                print(failed(PROG, f"open {name}", e), file=sys.stderr)
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
                print(failed(PROG, f"dedupe {args.src}", e, HINTS.get(e.errno, "")),
                      file=sys.stderr)
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
                    e = OSError(-r.status, os.strerror(-r.status))
                    print(failed(PROG, f"dedupe {args.src} into {name}", e,
                                 HINTS.get(-r.status, "")), file=sys.stderr)
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
