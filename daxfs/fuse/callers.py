"""Who calls: the caller of a FUSE request as the daemon can know it, from
the request context and /proc alone (never a request through the mount,
which would come back to this very daemon).

* `Caller`: FUSE's ctx.uid / ctx.gid (the caller's fsuid/fsgid) and
  ctx.pid (the calling thread), with its supplementary groups read from
  /proc/<pid>/status when they matter (`read_groups`);
* `may_read`: the kernel's generic_permission(MAY_READ) for that caller;
* `check_source_fd`: the calling thread really holds a descriptor open for
  reading on a given file of a given mount (/proc/<pid>/fdinfo and the
  caller's mountinfo): what makes an inode number in a control request a
  file the caller has opened (docs/control-protocol.md, "src_fd").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from daxfs import host
from daxfs.engine import acl
from daxfs.engine.errors import BadFileDescriptor, PermissionDenied


def read_groups(pid: int) -> frozenset[int]:
    """The supplementary groups of thread `pid` (/proc/<pid>/status,
    ``Groups:``); empty if they cannot be read (the thread is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


@dataclass
class Caller:
    """Who asks: FUSE's ctx.uid / ctx.gid (the caller's fsuid/fsgid) and
    ctx.pid (the calling thread).  `groups` is read from /proc on first use
    unless given."""

    uid: int
    gid: int
    pid: int
    _groups: frozenset[int] | None = field(default=None, repr=False)

    @classmethod
    def from_ctx(cls, ctx) -> "Caller":
        return cls(int(ctx.uid), int(ctx.gid), int(ctx.pid))

    @property
    def groups(self) -> frozenset[int]:
        if self._groups is None:
            self._groups = read_groups(self.pid)
        return self._groups

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


def may_read(attr, caller: Caller, access_acl=None) -> bool:
    """The kernel's generic_permission(MAY_READ): the file's access ACL
    (parsed entries) if it has one, else the st_mode bits: owner bits if
    the caller owns the file, else group bits if it is in the file's group,
    else other bits; uid 0 reads everything."""
    if caller.uid == 0:
        return True
    if access_acl is not None:
        return acl.permits(access_acl, caller.uid, caller.in_group, attr.uid, attr.gid, 4)
    if caller.uid == attr.uid:
        bits = attr.mode >> 6
    elif caller.in_group(attr.gid):
        bits = attr.mode >> 3
    else:
        bits = attr.mode
    return bool(bits & 0o4)


def _read_fdinfo(pid: int, fd: int) -> dict[str, str]:
    info = {}
    with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    return info


def _mount_id_device(pid: int, mnt_id: int) -> int | None:
    for m in host.mounts(f"/proc/{pid}/mountinfo"):
        if m.mount_id == mnt_id:
            return m.dev
    return None


def check_source_fd(pid: int, fd: int, dev: int, ino: int) -> None:
    """Verify that thread `pid` (FUSE ctx.pid) holds descriptor `fd` open for
    reading on file (`dev`, `ino`).  Raises BadFileDescriptor if not (the
    errno FICLONE gives for a bad source descriptor), PermissionDenied if
    /proc of the caller cannot be read (e.g. the daemon runs unprivileged
    and the caller is another user)."""
    if fd < 0:
        raise BadFileDescriptor("no source descriptor in the request")
    try:
        info = _read_fdinfo(pid, fd)
    except FileNotFoundError:
        raise BadFileDescriptor(f"caller has no descriptor {fd}") from None
    except PermissionError:
        raise PermissionDenied(f"cannot inspect the caller's descriptor {fd}") from None
    except OSError as e:
        raise BadFileDescriptor(f"caller's descriptor {fd}: {e.strerror}") from None
    try:
        flags = int(info["flags"], 8)
        mnt_id = int(info["mnt_id"])
        fd_ino = int(info["ino"])
    except (KeyError, ValueError):
        raise BadFileDescriptor(f"caller's descriptor {fd} is not a file") from None
    if flags & os.O_PATH or (flags & os.O_ACCMODE) == os.O_WRONLY:
        raise BadFileDescriptor(f"caller's descriptor {fd} is not open for reading")
    if fd_ino != ino:
        raise BadFileDescriptor(f"caller's descriptor {fd} is another file")
    try:
        mount_dev = _mount_id_device(pid, mnt_id)
    except OSError:
        raise PermissionDenied("cannot read the caller's mount table") from None
    if mount_dev != dev:
        raise BadFileDescriptor(f"caller's descriptor {fd} is on another file system")

