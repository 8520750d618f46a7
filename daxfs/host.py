"""The host around a mount: its mount table, the daemons that serve daxfs
images, and taking a mount down however it is.

What this module owns
---------------------
* reading /proc/self/mountinfo (`mounts`, `mount_at`, `daxfs_mount_at`),
  the one place that knows its format and its escaping (`unescape`);
* what a daxfs mount's source is (`mount_source`: the image's path, as a
  kernel filesystem's source is its device, so `umount IMAGE`,
  `findmnt --source IMAGE` and `df` name it), which image a source names
  (`image_of_source`) and the daxfs mount of an image (`daxfs_mount_of`).
  A daxfs mount is recognised by its fstype, `fuse.daxfs`, never by its
  source;
* finding a daemon: the FUSE daemon of an image is the process holding the
  image open or mapped and /dev/fuse open (`daemon_pids`); `alive`,
  `wait_gone`;
* taking a mount down whatever state it is in (`force_unmount`):
  fusermount3 -u, then umount -l, then, if the daemon does not exit, its
  FUSE connection is aborted and it is killed.

Used by the commands (mount, umount), the daemon (its own device), tests,
benchmarks and scripts; it imports nothing of daxfs.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"
FSTYPE = "fuse.daxfs"
UNMOUNT_TIMEOUT = 60.0
UNMOUNT_TRIES = 3           # fusermount3 -u attempts before a lazy detach
COMMAND_TIMEOUT = 30.0

_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """A mountinfo path field as the path it names: mountinfo writes space,
    tab, newline and backslash as a backslash and three octal digits."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo."""

    mount_id: int
    dev: int              # st_dev of the files on the mount
    mountpoint: str
    fstype: str
    source: str

    @property
    def is_daxfs(self) -> bool:
        return self.fstype == FSTYPE


def mounts(path: str = MOUNTINFO) -> list[Mount]:
    """Every mount in `path` (a mountinfo file), in its order: a mount
    stacked on another at the same point comes later."""
    out = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, sep, right = line.partition(" - ")
            fields, rest = left.split(), right.split()
            if not sep or len(fields) < 5 or len(rest) < 2:
                continue
            try:
                major, minor = fields[2].split(":")
                out.append(Mount(int(fields[0]), os.makedev(int(major), int(minor)),
                                 unescape(fields[4]), rest[0], unescape(rest[1])))
            except ValueError:
                continue
    return out


def _resolved(mountpoint) -> str:
    """`mountpoint` with its parent resolved, but the mount point itself
    never stat'ed: that would be a request to the daemon of a mount there,
    which hangs if the daemon is stuck (or is the caller)."""
    parent, leaf = os.path.split(os.path.abspath(os.fsdecode(mountpoint)))
    return os.path.join(os.path.realpath(parent), leaf) if leaf else parent


def mount_at(mountpoint, path: str = MOUNTINFO) -> Mount | None:
    """The top mount at `mountpoint`, or None (no request to any mount)."""
    want = _resolved(mountpoint)
    found = None
    for m in mounts(path):
        if m.mountpoint == want:
            found = m
    return found


def daxfs_mount_at(mountpoint) -> Mount | None:
    """The daxfs mount at `mountpoint` if the top mount there is one."""
    m = mount_at(mountpoint)
    return m if m is not None and m.is_daxfs else None


def is_mounted(mountpoint) -> bool:
    return mount_at(mountpoint) is not None


def mount_source(image) -> str:
    """The source the kernel shows for a mount of `image`: the image's
    absolute path with symlinks resolved (what util-linux compares a
    path given to umount or findmnt with)."""
    return os.path.realpath(os.fsdecode(image))


def image_of_source(source: str) -> str | None:
    """The image the source of a daxfs mount names, or None."""
    return source if source.startswith("/") else None


def daxfs_mount_of(image, path: str = MOUNTINFO) -> Mount | None:
    """The daxfs mount whose source is `image` (the image is locked by its
    daemon, so there is at most one), or None."""
    want = mount_source(image)
    for m in mounts(path):
        if m.is_daxfs and m.source == want:
            return m
    return None


def fuse_connection(mountpoint) -> str | None:
    """The /sys/fs/fuse/connections entry (the device minor) of the FUSE
    mount at `mountpoint`, or None."""
    m = mount_at(mountpoint)
    if m is None or not m.fstype.startswith("fuse"):
        return None
    return str(os.minor(m.dev))


FUSECTL = "/sys/fs/fuse/connections"


def abort_connection(conn: str | None) -> None:
    """Abort a FUSE connection: every request pending on it fails and the
    daemon's reads of /dev/fuse end (what frees a hung mount).  fusectl is
    not mounted on every machine: it is mounted for the abort, and taken
    down again if it was mounted here."""
    if conn is None:
        return
    mounted_here = not any(m.fstype == "fusectl" for m in mounts())
    if mounted_here:
        _quiet(["mount", "-t", "fusectl", "none", FUSECTL])
    try:
        with contextlib.suppress(OSError):
            with open(f"{FUSECTL}/{conn}/abort", "w") as f:
                f.write("1")
    finally:
        if mounted_here:
            _quiet(["umount", FUSECTL])


# ---- daemons ----------------------------------------------------------------

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
    return [int(name) for name in os.listdir("/proc")
            if name.isdigit() and int(name) != me and _holds(int(name), key)]


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


def _state(stat_path: str) -> str:
    try:
        with open(stat_path) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def alive(pid: int) -> bool:
    """True while any thread of `pid` has not exited.  The main thread of
    a killed daemon can be a zombie while another of its threads is still
    on its way out (stuck in a request to a FUSE mount), and the process's
    files, the image's lock among them, are closed only when the last
    thread is gone."""
    if _state(f"/proc/{pid}/stat") not in ("Z", "X"):
        return True
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any(_state(f"/proc/{pid}/task/{t}/stat") not in ("Z", "X") for t in tasks)


def wait_gone(pids, timeout: float) -> list[int]:
    """Wait until every pid has exited; returns those still alive."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


# ---- taking a mount down ------------------------------------------------------

def _quiet(cmd) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        subprocess.run(cmd, capture_output=True, timeout=COMMAND_TIMEOUT)


def force_unmount(mountpoint, pids=(), timeout: float = UNMOUNT_TIMEOUT) -> list[int]:
    """Take down whatever is mounted at `mountpoint` and wait for the
    daemons `pids`: fusermount3 -u, then umount -l if it is busy; a daemon
    that does not exit in time (`timeout`, or 10 s after a lazy detach,
    whose last user may be the caller itself) has its FUSE connection
    aborted and is killed.  Returns the pids that had to be killed."""
    mountpoint = str(mountpoint)
    conn = fuse_connection(mountpoint)
    for attempt in range(UNMOUNT_TRIES):
        if not is_mounted(mountpoint):
            break
        if attempt:
            time.sleep(0.2)     # (a moment's user, the daemon's own brief look at its root)
        _quiet(["fusermount3", "-u", mountpoint])
    lazy = is_mounted(mountpoint)
    if lazy:
        _quiet(["umount", "-l", mountpoint])
    left = wait_gone(pids, 10 if lazy else timeout)
    if left:
        abort_connection(conn)
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
        wait_gone(left, 10)
    return left
