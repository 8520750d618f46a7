"""`daxfs umount MOUNTPOINT`: unmount a daxfs mount and wait until its daemon
has flushed and unlocked the image.

What this module owns
---------------------
* finding the daemon of a mount: the mount source in /proc/self/mountinfo
  is ``daxfs:IMAGE``; the daemon is the process holding IMAGE open
  (`daemon_pids`, also used by the tests);
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
import time

from .mount import daxfs_mount_at
from daxfs.fuse.mount import FSNAME_PREFIX

PROG = "daxfs umount"
CMD_TIMEOUT = 30.0


def daemon_pids(image: str) -> list[int]:
    """FUSE daemons (processes with /dev/fuse open) that hold `image` open
    (by fd or by mapping).  The image lock makes this one process."""
    image = os.path.realpath(image)
    try:
        st = os.stat(image)
    except OSError:
        return []
    key = (image, st.st_dev, st.st_ino)
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        if _holds(pid, key):
            found.append(pid)
    return found


def _holds(pid: int, key) -> bool:
    # readlink only: stat() of an fd could block on a file of a hung mount.
    path, dev, ino = key
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    holds_image = has_fuse = False
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target == "/dev/fuse":
            has_fuse = True
        elif target == path:
            holds_image = True
    if not has_fuse:
        return False
    if holds_image:
        return True
    try:
        with open(f"/proc/{pid}/maps") as f:
            dev_ino = f"{os.major(dev):02x}:{os.minor(dev):02x} {ino} "
            return any(dev_ino in line for line in f)
    except OSError:
        return False


def fuse_connection(mountpoint: str) -> str | None:
    """The /sys/fs/fuse/connections entry (the device minor) of the FUSE
    mount at `mountpoint`, read from mountinfo, or None."""
    path = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4] == path and " - fuse" in line:
                return fields[2].split(":")[1]
    return None


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pids, timeout: float) -> list[int]:
    """Wait until every pid has exited; returns those still alive."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


def _run(cmd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT)


def unmount(mountpoint: str, timeout: float = 60.0) -> int:
    mountpoint = os.path.abspath(mountpoint)
    source = daxfs_mount_at(mountpoint)
    if source is None:
        print(f"{PROG}: {mountpoint} is not a daxfs mount", file=sys.stderr)
        return 1
    image = source[len(FSNAME_PREFIX):] if source.startswith(FSNAME_PREFIX) else ""
    pids = daemon_pids(image) if image else []

    res = _run(["fusermount3", "-u", mountpoint])
    if res.returncode != 0 and daxfs_mount_at(mountpoint) is not None:
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
    left = wait_gone(pids, timeout)
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
