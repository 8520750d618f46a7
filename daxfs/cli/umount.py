"""`daxfs umount MOUNTPOINT|IMAGE`: unmount a daxfs mount and wait until its
daemon has flushed and unlocked the image.

What this module owns
---------------------
* finding the mount (at MOUNTPOINT, or the one whose source is IMAGE) and
  its daemon (its image from the mount's source, the daemon from the
  image: daxfs/host.py);
* the unmount itself: ``fusermount3 -u``; if the mount is busy, a lazy
  detach (``umount -l`` as root, ``fusermount3 -u -z`` otherwise) with a
  message saying that the daemon keeps the image in use until the last
  user of the old mount lets go;
* waiting for the daemon to exit, so that on return the image is
  consistent and free for `daxfs check` or another mount;
* the umount(8) helper (`helper`, ``daxfs umount --helper``, run as
  /sbin/umount.fuse.daxfs, installed by ``daxfs mount --install-helper``):
  umount(8) hands a ``fuse.daxfs`` mount to it ("EXTERNAL HELPERS" in
  umount(8)), which unmounts as umount(8) would (``umount -i``, with the
  -f, -l, -n, -r, -v it was given; a busy mount fails with umount's own
  message and status) and then waits for the daemon, so that
  ``umount MNT && daxfs check IMAGE`` finds the image flushed and unlocked,
  as after unmounting a kernel filesystem.  With -l the mount is detached
  and the daemon finishes when its last user lets go.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from daxfs import host
from .common import Parser

PROG = "daxfs umount"
CMD_TIMEOUT = 30.0


def _run(cmd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT)


def find_mount(target: str) -> host.Mount | None:
    """The daxfs mount at `target`, or the mount of the image `target`."""
    path = os.path.abspath(target)
    found = host.daxfs_mount_at(path)
    if found is None and os.path.isfile(path):
        found = host.daxfs_mount_of(path)
    return found


def unmount(target: str, timeout: float = 60.0) -> int:
    found = find_mount(target)
    if found is None:
        print(f"{PROG}: {target} is not a daxfs mount (nor an image mounted somewhere)",
              file=sys.stderr)
        return 1
    mountpoint = found.mountpoint
    image = host.image_of_source(found.source)
    pids = host.daemon_pids(image) if image else []

    res = _run(["fusermount3", "-u", mountpoint])
    if res.returncode != 0 and host.daxfs_mount_at(mountpoint) is not None:
        lazy = ["umount", "-l", mountpoint] if os.geteuid() == 0 \
            else ["fusermount3", "-u", "-z", mountpoint]
        res = _run(lazy)
        if res.returncode != 0:
            print(f"{PROG}: {mountpoint} is busy and could not be detached either: "
                  f"{res.stderr.strip() or ' '.join(lazy) + ' failed'}", file=sys.stderr)
            return 1
        daemon = f"its daemon (pid {pids[0]})" if pids else "its daemon"
        print(f"{PROG}: {mountpoint} is busy (a process has a file or its working "
              f"directory there): detached it lazily; {daemon} keeps {image or 'the image'} "
              f"in use until the last user of the old mount lets go, then flushes and exits",
              file=sys.stderr)
        return 0
    left = host.wait_gone(pids, timeout)
    if left:
        print(f"{PROG}: unmounted, but the daemon (pid {left[0]}) is still running "
              f"after {timeout:.0f} s", file=sys.stderr)
        return 1
    return 0


UMOUNT_FAILURE = 32          # umount(8)'s exit status for a failed unmount


def helper(target: str, flags: list[str], timeout: float) -> int:
    """umount(8)'s helper for fuse.daxfs: unmount `target` with umount's
    `flags` and wait until the daemon has flushed and let go of the image."""
    found = find_mount(target)
    if found is None:
        print(f"umount: {target}: not mounted (no daxfs mount there)", file=sys.stderr)
        return UMOUNT_FAILURE
    image = host.image_of_source(found.source)
    pids = host.daemon_pids(image) if image else []
    # -i: umount(8) itself, without calling this helper again
    res = _run(["umount", "-i", *flags, found.mountpoint])
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        return res.returncode
    if "-l" in flags:
        return 0            # detached: the daemon finishes when the last user lets go
    left = host.wait_gone(pids, timeout)
    if left:
        print(f"umount: {found.mountpoint}: unmounted, but the daxfs daemon (pid {left[0]})"
              f" is still running after {timeout:.0f} s", file=sys.stderr)
        return UMOUNT_FAILURE
    return 0


def main(argv=None) -> int:
    p = Parser(
        prog=PROG, description=(
            "Unmount a daxfs mount and wait until its daemon has flushed and unlocked\n"
            "the image (then `daxfs check IMAGE` or another mount may use it).  A busy\n"
            "mount (a process has a file or its working directory there) is detached\n"
            "lazily: the image stays in use until the last user of the old mount lets\n"
            "go; a `daxfs mount` of it meanwhile waits and says so."),
        epilog="Exit status: 0 unmounted (or detached), 1 failed (one line on stderr), 2 usage.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT|IMAGE",
                   help="the mount point, or the image file that is mounted")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the daemon to exit (default 60)")
    # umount(8)'s helper interface: umount.fuse.daxfs TARGET [-flnrv]
    # [-N namespace] [-t type.subtype]
    p.add_argument("--helper", action="store_true", help=argparse.SUPPRESS)
    for flag in ("-f", "-l", "-n", "-r", "-v"):
        p.add_argument(flag, action="append_const", const=flag, dest="flags",
                       help=argparse.SUPPRESS)
    p.add_argument("-N", dest="namespace", help=argparse.SUPPRESS)
    p.add_argument("-t", dest="fstype", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        if args.helper:
            flags = list(dict.fromkeys(args.flags or []))
            if args.namespace:
                flags += ["-N", args.namespace]
            return helper(args.mountpoint, flags, args.timeout)
        if args.flags or args.namespace or args.fstype:
            p.error("-f, -l, -n, -r, -v, -N and -t are umount(8)'s helper options")
        return unmount(args.mountpoint, args.timeout)
    except subprocess.TimeoutExpired as exc:
        print(f"{PROG}: {exc.cmd[0]} did not finish in {exc.timeout:.0f} s", file=sys.stderr)
        return 1
