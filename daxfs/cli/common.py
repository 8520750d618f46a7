"""What the `daxfs` subcommands share: their argument parser (help that
keeps its line breaks, usage errors as one line and exit 2), byte counts on
the command line, what a TARGET argument names (image, mount or a file on
a mount), and failed system calls said as one sentence.

Owns only these; every subcommand's own work stays in its module.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys

from daxfs.control.protocol import PROBE_NAME
from daxfs.engine.errors import DaxfsError

# ---- the command line ----------------------------------------------------------

_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

# For epilogs: "Offsets and lengths are " + BYTES_HELP
BYTES_HELP = ("in bytes; a K, M, G or T suffix means KiB, MiB,\n"
              "GiB, TiB (e.g. 4096, 64K, 1M).")


_BYTE_COUNT = re.compile(r"(0x[0-9a-f]{1,16}|[0-9]{1,20})\s*(?:([kmgt])(?:i?b)?)?")


def byte_count(text: str) -> int:
    """A non-negative byte count: ASCII decimal (or 0x hexadecimal) digits,
    with an optional K/M/G/T suffix (powers of 1024; KiB, KB alike).  An
    argparse `type`."""
    m = _BYTE_COUNT.fullmatch(text.strip().lower())
    if m is None:
        if text.strip().startswith("-"):
            raise argparse.ArgumentTypeError(f"a byte count cannot be negative: {text!r}")
        raise argparse.ArgumentTypeError(
            f"not a byte count: {text!r} (use e.g. 4096, 64K, 1M)")
    digits = m.group(1)
    value = int(digits, 16) if digits.startswith("0x") else int(digits)
    return value * (_SUFFIXES[m.group(2)] if m.group(2) else 1)


def range_arguments(p: argparse.ArgumentParser, dst_help: str, length_help: str) -> None:
    """--src-offset, --dst-offset and --length, in bytes (reflink, dedupe)."""
    p.add_argument("--src-offset", type=byte_count, default=0, metavar="BYTES",
                   help="where the range starts in SRC (default 0)")
    p.add_argument("--dst-offset", type=byte_count, default=0, metavar="BYTES",
                   help=dst_help)
    p.add_argument("--length", type=byte_count, default=0, metavar="BYTES", help=length_help)


class Parser(argparse.ArgumentParser):
    """argparse with the description and epilog printed as written, and a
    usage error as the usage line plus one line, exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"{self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


# ---- failed system calls -------------------------------------------------------

_REASONS = {
    errno.ENOENT: "no such file or directory",
    errno.EISDIR: "it is a directory",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on the host filesystem",
    errno.EFBIG: "the host filesystem cannot hold a file that large",
    errno.EROFS: "the filesystem is read-only",
    errno.EXDEV: "the files are on different mounts",
    errno.EOPNOTSUPP: "the filesystem does not support it",
    errno.EINVAL: "invalid argument",
    errno.EIO: "input/output error (a media error, or the filesystem has shut down)",
    errno.EBUSY: "it is busy",
    errno.ETXTBSY: "it is busy",
    errno.ENAMETOOLONG: "the name is too long",
}


def sharing_hints(op: str, dst: str, ends: str) -> dict[int, str]:
    """What to do about a refused reflink or dedupe (`op`), by errno;
    `dst` names the destinations, `ends` where an unaligned length may end."""
    return {
        errno.EINVAL: f"offsets and length must be multiples of 4096 bytes (a length may end "
                      f"unaligned only at {ends}), the range must lie inside SRC and end "
                      "below the largest file size, and ranges in one file must not overlap",
        errno.EXDEV: f"SRC and {dst} must be on the same mount",
        errno.EOPNOTSUPP: f"the files must be on one daxfs mount of an image made with the rmap "
                          f"(not mkfs --no-rmap), or on a filesystem with {op} (XFS, btrfs)",
        errno.EBADF: f"{dst} must be a regular file open for writing",
        errno.EFBIG: f"{dst} would grow beyond the largest file size",
        errno.ENOSPC: "the filesystem is full",
    }


def reason(exc: OSError) -> str:
    """Why a system call failed, in words (no "[Errno N]")."""
    if exc.errno in _REASONS:
        return _REASONS[exc.errno]
    text = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    return text[:1].lower() + text[1:]


def failed(prog: str, what: str, exc: OSError, hint: str = "") -> str:
    """The one line for a failed system call: `prog: cannot WHAT: REASON`
    and, when there is something to do, `; HINT`."""
    line = f"{prog}: cannot {what}: {reason(exc)}"
    return f"{line}; {hint}" if hint else line


class CommandError(Exception):
    """A command cannot go on: its message is the one line to print."""


def one_line_errors(prog: str, what: str, body, hints: dict | None = None) -> int:
    """`body()`'s exit status, or 1 with one line on stderr when it fails: a
    CommandError or an engine error says itself, a failed system call says
    what could not be done (`failed`) and the hint for its errno."""
    try:
        return body()
    except (CommandError, DaxfsError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
    except OSError as e:
        print(failed(prog, what, e, (hints or {}).get(e.errno, "")), file=sys.stderr)
    return 1


# ---- targets ---------------------------------------------------------------------



def on_daxfs(path: str) -> bool:
    """Is `path` on a daxfs mount (its daemon answers the probe)?"""
    try:
        os.getxattr(path, PROBE_NAME)
        return True
    except OSError:
        return False


def target_kind(target: str) -> str:
    """What TARGET names: "mount" (a directory on a daxfs mount), "file"
    (a file on one) or "image"; CommandError for anything else."""
    if os.path.isdir(target):
        if on_daxfs(target):
            return "mount"
        raise CommandError(f"{target} is a directory that is not on a daxfs mount; "
                           "give an image file or the mount point of a daxfs mount")
    if not os.path.exists(target):
        raise CommandError(f"{target}: no such image, mount point or file")
    if not os.path.isfile(target):
        raise CommandError(f"{target} is not a regular file; give an image file or "
                           "the mount point of a daxfs mount")
    return "file" if on_daxfs(target) else "image"
