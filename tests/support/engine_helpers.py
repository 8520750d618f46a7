"""Helpers shared by the engine tests (no mount): make an image, run check."""

from daxfs.fsck.check import Checker
from daxfs.engine.fs import Filesystem
from daxfs.engine.mkfs import mkfs


def make_fs(path, size=32 << 20, rmap=True, dup=True):
    mkfs(str(path), size, rmap=rmap, dup=dup)
    return Filesystem.open(str(path))


def assert_clean(fs):
    """Run every check on the live filesystem (after a commit)."""
    fs.commit()
    problems = Checker(fs.vol).run()
    assert problems == [], "\n".join(problems)
