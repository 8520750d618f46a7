"""What metadata damage an open image still has, and whether its files can
be served in spite of it -- asked by the mount before it serves anything,
so that a damaged image is never mounted silently with every request
failing.

Two looks, both cheap:

* every bad (poisoned) range the device still has after the open: its
  owners (with duplicated metadata a piece whose other copy is readable
  does not count: it is read from there) (an rmap overlap query; without the rmap, or when the rmap
  itself cannot be read, the scan poison.scan_owners does); a poisoned
  superblock copy does not count (the other copy serves, and a writable
  open rewrites it);
* the root node of every tree, read and verified.

Damage to metadata that reading files does not need -- the free-space and
rmap trees and the reserve pool, the refcount and orphan trees, the log --
still lets a read-only mount serve every file (`readable`); damage to the
inode, directory, extent-map or extended-attribute trees does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Corrupted, MediaError, NeedsRepair, NotSupported
from .format import (OWN_AG, OWN_FS, OWN_LOG, OWN_MAX_INO, TREE_ORPHAN, TREE_REFC,
                     owner_name, own_tree)
from .trees import RmapRec

# owners whose damage leaves every file readable
_NOT_NEEDED_TO_READ = {OWN_AG, OWN_LOG, own_tree(TREE_REFC), own_tree(TREE_ORPHAN)}
_TREES_NOT_NEEDED = {"free", "rmap", "refcount", "orphan"}


@dataclass
class Damage:
    what: list[str] = field(default_factory=list)   # one phrase per damaged piece
    readable: bool = True                             # files can still be read

    def add(self, phrase: str, readable: bool) -> None:
        if phrase not in self.what:
            self.what.append(phrase)
        self.readable = self.readable and readable

    def error(self, image: str) -> NeedsRepair:
        shown = "; ".join(self.what[:3]) + (f"; {len(self.what) - 3} more" if len(self.what) > 3
                                            else "")
        return NeedsRepair(f"{image}: metadata damage ({shown}); run"
                           f" 'daxfs check --repair {image}'", readonly_ok=self.readable)


def _copy_serves(vol, o) -> bool:
    """Dup metadata: is the other copy of this poisoned piece readable
    (a read-only open reads it; a writable one has healed what it could)?"""
    bad = vol.pmem.bad
    if o.owner == OWN_LOG:
        return True          # the log's twin; replay took the newest valid copy
    return bool(o.partner) and bad.first_bad(o.partner, 1) is None


def assess(fs) -> Damage | None:
    """The metadata damage of an open filesystem, or None."""
    from . import poison
    vol = fs.vol
    dmg = Damage()
    for bno, n in list(vol.pmem.bad.ranges()):
        try:
            try:
                owners = poison.owners_of(fs, bno, n, with_paths=False)
            except (Corrupted, MediaError, NotSupported):
                owners = [poison.Owner(r.bno, r.len, r.owner,
                                       "metadata" if r.owner > OWN_MAX_INO else "data")
                          for r in map(RmapRec._make, poison.scan_owners(fs, bno, n))]
        except (Corrupted, MediaError):
            dmg.add(f"blocks {bno}+{n} are poisoned and the trees that say who owns them"
                    " cannot be read", readable=False)
            continue
        for o in owners:
            if vol.dup and _copy_serves(vol, o):
                continue
            if o.kind == "metadata" and o.owner != OWN_FS:
                dmg.add(f"{owner_name(o.owner)} block {o.bno} is on a poisoned (bad) range",
                        readable=o.owner in _NOT_NEEDED_TO_READ)
    for name, tree in vol.trees.items():
        root = next(tree.walk(), None) if tree.height else None
        if root is not None and root.error and not root.poisoned:
            dmg.add(f"{name} tree: {root.error}", readable=name in _TREES_NOT_NEEDED)
    if fs.shutdown_reason and not dmg.what:
        dmg.add(fs.shutdown_reason, readable=False)
    return dmg if dmg.what else None
