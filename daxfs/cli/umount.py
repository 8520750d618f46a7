"""`daxfs umount MOUNTPOINT`: unmount a daxfs mount and wait until its daemon
has flushed and unlocked the image.

What this module owns
---------------------
* finding the daemon of a mount (its image from the mount's source, the
  daemon from the image: daxfs/host.py);
* the unmount itself: ``fusermount3 -u``; if the mount is busy, a lazy
  detach (``umount -l`` as root, ``fusermount3 -u -z`` otherwise) with a
  message saying the daemon finishes when the last user lets go;
* waiting for the daemon to exit, so that on return the image is
  consistent and free for `daxfs check` or another mount.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from daxfs import host

PROG = "daxfs umount"
CMD_TIMEOUT = 30.0


def _run(cmd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT)


def unmount(mountpoint: str, timeout: float = 60.0) -> int:
    mountpoint = os.path.abspath(mountpoint)
    found = host.daxfs_mount_at(mountpoint)
    if found is None:
        print(f"{PROG}: {mountpoint} is not a daxfs mount", file=sys.stderr)
        return 1
    image = host.image_of_source(found.source)
    pids = host.daemon_pids(image) if image else []

    res = _run(["fusermount3", "-u", mountpoint])
    if res.returncode != 0 and host.daxfs_mount_at(mountpoint) is not None:
        reason = (res.stderr.strip().splitlines() or ["unmount failed"])[-1]
        print(f"{PROG}: {reason}; detaching lazily: the daemon flushes and exits "
              f"when the last user of {mountpoint} lets go", file=sys.stderr)
        lazy = ["umount", "-l", mountpoint] if os.geteuid() == 0 \
            else ["fusermount3", "-u", "-z", mountpoint]
        res = _run(lazy)
        if res.returncode != 0:
            print(f"{PROG}: {' '.join(lazy)}: {res.stderr.strip()}", file=sys.stderr)
            return 1
        return 0
    left = host.wait_gone(pids, timeout)
    if left:
        print(f"{PROG}: unmounted, but the daemon (pid {left[0]}) is still running "
              f"after {timeout:.0f} s", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="Unmount a daxfs mount.")
    p.add_argument("mountpoint")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the daemon to exit (default 60)")
    args = p.parse_args(argv)
    try:
        return unmount(args.mountpoint, args.timeout)
    except subprocess.TimeoutExpired as exc:
        print(f"{PROG}: {exc.cmd[0]} did not finish in {exc.timeout:.0f} s", file=sys.stderr)
        return 1
