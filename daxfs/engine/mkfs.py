"""Making a new filesystem: lay out the device (volume.py), create the root
directory, commit.  `mkfs_daxfs.py` and `daxfs mkfs` are thin wrappers."""

import contextlib
import os
import stat

from .dirs import DIR_HEAD_BYTES
from .format import ROOT_INO
from .inodes import Inodes
from .volume import Volume


def mkfs(path: str, size: int, *, rmap: bool = True, force: bool = False) -> None:
    """Create the image at path with a fresh filesystem (an existing
    non-empty file only with `force`: Volume.create).  If it fails, a file
    it created is removed again (a file that was there before is left,
    whatever state it is in)."""
    created = _create_new(path)
    try:
        vol = Volume.create(path, size, rmap=rmap, force=force)
        try:
            inodes = Inodes(vol)
            root = inodes.create(stat.S_IFDIR | 0o755, 0, 0, parent=ROOT_INO, nlink=2,
                                 ino=ROOT_INO)
            root.size = DIR_HEAD_BYTES          # an empty directory (dirs.py)
            inodes.put(root)
            vol.alloc.settle()
            vol.commit()
        finally:
            vol.close()
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise


def _create_new(path: str) -> bool:
    """Create `path` empty (mode 0600) if nothing is there: True if this
    call made it.  Any other error is left to Volume.create to meet."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except OSError:
        return False
    return True


SIZE_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'64M', '1G', '1T', '16777216' -> bytes (binary units)."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    suffix = t[-1:] if t[-1:] in "kmgt" else ""
    num = t[:-1] if suffix else t
    try:
        value = float(num)
    except ValueError:
        raise ValueError(f"cannot read size {text!r} (use e.g. 64M, 1G, 1T)") from None
    return int(value * SIZE_SUFFIXES[suffix])
