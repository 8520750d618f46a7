"""`daxfs check --repair`: mend a damaged image and lose nothing it still
holds, as xfs_repair rebuilds its btrees.

The phases, each in its own module, run in this order over one
`RepairState` (state.py):

1. check (check.py): a clean image is left untouched.  With duplicated
   metadata, heal (heal.py) then mends every node copy that its twin can
   mend, as a mount does: what remains is left to the phases below.
2. salvage (salvage.py): every tree walked; the leaves a lost node hid
   found through the rmap and a scan of the device; every record of every
   intact leaf kept.
3. primary records (primary.py): inodes, extent maps (from the rmap's data
   records when the extent map lost nodes), extended attributes; inodes
   whose records were lost made again from what is known of them, with
   the guessed attributes said.  Then the namespace (namespace.py):
   directory entries, /lost+found, link counts, the orphan list.
4. derive (derive.py): refcount, the rmap records of data and attribute
   values, the blocks owned for certain.
5. layout (layout.py): which trees are written anew and into which fresh
   blocks; then write (write.py): bulk-load them and switch both
   superblocks in one commit.  Until that commit point the old image is
   unchanged, so a crash during a repair leaves the image as it was;
   rerun the repair.

What each phase did is one line in the report (report.py), which ends
with a summary: inodes recovered exactly, recreated with guessed
attributes, kept with losses, lost.  Afterwards the checker runs again and
whatever it still reports is returned.  A second repair of the result
finds nothing to do.

It does not repair an image whose two superblock copies are both unusable
(and not mended by replaying the log): that is an operational error (the
caller exits 8), as is an image that is locked or not a daxfs image.  When
the free space cannot hold the rebuilt trees nothing is written and the
repair says so among the problems left.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from daxfs.engine.errors import NoSpace

from . import derive, heal, layout, namespace, primary, salvage, write
from .check import Checker
from .state import RepairState

log = logging.getLogger(__name__)


@dataclass
class RepairResult:
    left: list[str]                  # problems check still finds afterwards
    fixed: list[str]                 # one line per fix
    found: list[str] = field(default_factory=list)   # problems check found before
    summary: str = ""                # inodes recovered / recreated / lost ("" if nothing done)
    details: dict = field(default_factory=dict)   # the report's per-inode outcomes


def _check(path: str) -> list[str]:
    from daxfs.engine.volume import Volume
    vol = Volume.open(path)
    try:
        return Checker(vol).run()
    finally:
        vol.pmem.close()


def repair(path: str) -> RepairResult:
    """Check the image; if it has problems, repair it and check again.
    Raises DaxfsError when the image cannot be opened at all."""
    from daxfs.engine.volume import Volume
    problems = _check(path)
    if not problems:
        return RepairResult([], [])
    vol = Volume.open(path)
    st = RepairState(vol)
    try:
        if vol.note:
            st.fix(f"superblock: {vol.note}; both copies rewritten")
        heal.run(st)
        salvage.run(st)
        primary.run(st)
        namespace.run(st)
        derive.run(st)
        layout.plan(st)
        write.run(st)
    except NoSpace as e:
        # nothing was committed: the image is as it was
        return RepairResult(problems + [f"repair: {e}; nothing changed"], [], problems)
    finally:
        vol.pmem.close()
    rep = st.report
    fixed = rep.lines or ["superblocks rewritten"]
    details = {"guessed": dict(rep.guesses), "partial": dict(rep.losses),
               "lost": {i: w for i, w in rep.gone.items() if i not in st.inodes},
               "moved": set(rep.moved)}
    return RepairResult(_check(path), fixed, problems, rep.summary(st.inodes), details)


def repair_image(path: str) -> tuple[list[str], list[str]]:
    """repair() as (problems left, one line per fix)."""
    res = repair(path)
    return res.left, res.fixed
