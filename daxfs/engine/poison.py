"""Media errors: who owns a bad range, and what the filesystem does about it.

This is the reviewers' design from the 2020 dax-rmap thread: the device
reports a bad physical range; the filesystem asks its on-disk rmap btree who
owns it (one overlap query, nothing tracked at run time) and acts by owner:

* file data (every sharer of a reflinked or deduped block): reported; loads
  of those blocks fail (EIO, or SIGBUS through mmap) until an owner
  overwrites whole blocks (its copy moves to a healthy block: CoW, or a
  recovery write in place when it is the only owner) or the last owner goes,
  which frees and clears the range (filemap._free_data);
* a superblock copy: rewritten from the good copy (a whole-block store
  clears the poison);
* any other metadata (a btree node, the log, the reserve pool): the
  filesystem shuts down; every later request gets EIO; check reports it;
* free space: zeroed and cleared at once; nobody is affected.

Without the rmap feature the owners are found by scanning every extent map
and walking every tree: the comparison that shows what the rmap buys.
The bad-range list itself belongs to the device (badblocks.py).
"""

import logging
import time
from dataclasses import dataclass, field

from .errors import Corrupted, MediaError, Shutdown
from .format import BLOCK_SIZE as BS, OWN_FS, OWN_LOG, OWN_MAX_INO, RMAP_ATTR, owner_name, own_tree
from .superblock import secondary_bno, static_owners
from .trees import BmapRec, DirentRec, RmapRec, XattrRec

log = logging.getLogger(__name__)


@dataclass
class Owner:
    bno: int               # first bad block of this owner's piece
    nblocks: int
    owner: int             # inode number or a metadata owner code
    kind: str              # "data", "xattr" or "metadata"
    offset: int = 0        # byte offset in the file (data) of the bad piece
    partner: int = 0       # metadata of a dup filesystem: the block's twin
    paths: list = field(default_factory=list)

    def describe(self) -> str:
        if self.kind == "metadata":
            return f"blocks {self.bno}+{self.nblocks}: {owner_name(self.owner)}"
        where = ", ".join(self.paths) if self.paths else "(no name: unlinked)"
        what = "extended attribute value" if self.kind == "xattr" else \
            f"file offset {self.offset} length {self.nblocks * BS}"
        return f"blocks {self.bno}+{self.nblocks}: inode {self.owner} {where}: {what}"


@dataclass
class Report:
    bno: int
    nblocks: int
    owners: list
    action: str            # what the handler did
    seconds: float = 0.0
    healed: bool = False   # a metadata copy mended from its twin (no longer bad)

    @property
    def data_inodes(self) -> list[int]:
        return sorted({o.owner for o in self.owners if o.kind in ("data", "xattr")})

    def lines(self) -> list[str]:
        head = f"bad range blocks {self.bno}+{self.nblocks} (bytes {self.bno * BS}+" \
               f"{self.nblocks * BS}): {self.action}"
        return [head] + ["  owner " + o.describe() for o in self.owners]


# ---- who owns a range ---------------------------------------------------------
def owners_of(fs, bno: int, n: int, *, with_paths: bool = True) -> list[Owner]:
    """Every owner of blocks [bno, bno+n): one rmap overlap query."""
    vol = fs.vol
    if vol.has_rmap:
        recs = vol.rmap.owners(bno, bno + n - 1)
    else:
        recs = scan_owners(fs, bno, n)
    out = []
    for rb, owner, off, length, flags in recs:
        lo, hi = max(rb, bno), min(rb + length, bno + n)
        if owner <= OWN_MAX_INO:
            kind = "xattr" if flags & RMAP_ATTR else "data"
            foff = (off + lo - rb) * BS if kind == "data" else 0
            out.append(Owner(lo, hi - lo, owner, kind, foff))
        else:
            out.append(Owner(lo, hi - lo, owner, "metadata", partner=off))
    if with_paths:
        _fill_paths(fs, out)
    return out


def scan_owners(fs, bno: int, n: int) -> list[tuple]:
    """The same answer without an rmap: scan every extent map and walk every
    tree (what a filesystem without rmap must do)."""
    vol = fs.vol
    end = bno + n
    out = []
    for e in map(BmapRec._make, vol.trees["bmap"].scan()):
        if e.pblk < end and e.pblk + e.len > bno:
            out.append((e.pblk, e.ino, e.foff, e.len, 0))
    for x in map(XattrRec._make, vol.trees["xattr"].scan()):
        if x.vblk:
            k = -(-x.vlen // BS)
            if x.vblk < end and x.vblk + k > bno:
                out.append((x.vblk, x.ino, x.pos, k, RMAP_ATTR))
    fixed = static_owners(vol.sb)
    for tree in vol.trees.values():
        owner = own_tree(tree.tid)
        fixed.extend((b, owner, 0, 1, 0) for b in tree.node_blocks())
    out += [tuple(r) for r in map(RmapRec._make, fixed) if r.bno < end and r.bno + r.len > bno]
    return out


def _fill_paths(fs, owners: list[Owner]) -> None:
    """Names of the data owners (one scan of the directory tree)."""
    want = {o.owner for o in owners if o.kind != "metadata"}
    if not want:
        return
    try:
        found = paths_of(((d.parent, d.ino, d.name) for d in
                          map(DirentRec._make, fs.vol.trees["dir"].scan())), want)
    except (Corrupted, MediaError):
        return
    for o in owners:
        o.paths = found.get(o.owner, [])


def paths_of(entries, want) -> dict[int, list[str]]:
    """The paths of the inodes in `want` (every hard link), from the
    directory entries (parent, ino, name) of the whole tree in any order;
    names are bytes or already decoded."""
    names: dict[int, list[tuple[int, str]]] = {}
    parents: dict[int, tuple[int, str]] = {}
    for parent, ino, name in entries:
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        if ino in want:
            names.setdefault(ino, []).append((parent, name))
        parents.setdefault(ino, (parent, name))

    def path_of(parent: int, name: str) -> str:
        parts = [name]
        seen = 0
        while parent != 1 and parent in parents and seen < 4096:
            parent, nm = parents[parent]
            parts.append(nm)
            seen += 1
        return "/" + "/".join(reversed(parts))

    return {ino: [path_of(p, nm) for p, nm in links] for ino, links in names.items()}


# ---- the failure handler ---------------------------------------------------------
def handle(fs, bno: int, n: int) -> Report:
    """React to a bad range the device reported: rmap query, then act."""
    t0 = time.perf_counter()
    vol = fs.vol
    try:
        owners = owners_of(fs, bno, n)
    except (Corrupted, MediaError) as e:
        fs.shut_down(f"cannot look up the owners of bad blocks {bno}+{n}: {e}")
        return Report(bno, n, [], "the rmap itself is unreadable: filesystem shut down")
    meta = [o for o in owners if o.kind == "metadata"]
    actions = []
    if vol.dup and vol.journal.dirty and not fs.shutdown_reason and not vol.pmem.readonly \
            and any(o.owner != OWN_FS for o in meta):
        # a node changed since the last commit has its new bytes only in
        # the running transaction: commit first, so that both copies of
        # every node are on the device to heal one from the other
        try:
            fs.commit()
        except Shutdown as e:
            actions.append(f"the commit before healing failed ({e})")
    for o in meta:
        if o.owner == OWN_FS:
            _rewrite_superblocks(fs)
            actions.append(f"superblock copy at block {o.bno} rewritten from the good copy")
            continue
        healed = _heal_from_twin(fs, o) if vol.dup else None
        if healed:
            actions.append(healed)
        else:
            fs.shut_down(f"media error in metadata: {o.describe()}")
            actions.append(f"metadata ({owner_name(o.owner)}) damaged: filesystem shut down")
    data = [o for o in owners if o.kind != "metadata"]
    for o in data:
        log.error("media error: %s", o.describe())
    if data:
        actions.append(f"{len({o.owner for o in data})} file(s) lose the bad range (EIO/SIGBUS)")
    # what nobody owns is free space: clear it now
    owned = sorted((o.bno, o.bno + o.nblocks) for o in owners)
    pos = bno
    cleared = 0
    for s, e in owned + [(bno + n, bno + n)]:
        if s > pos:
            vol.pmem.blocks(pos, s - pos)[:] = 0
            vol.pmem.flush([(pos, s - pos)])
            vol.pmem.bad.clear(pos, s - pos)
            cleared += s - pos
        pos = max(pos, e)
    if cleared:
        actions.append(f"{cleared} free block(s) zeroed and cleared")
    if not actions:
        actions.append("nothing to do")
    report = Report(bno, n, owners, "; ".join(actions), time.perf_counter() - t0)
    for line in report.lines():
        log.warning("%s", line)
    return report


def _heal_from_twin(fs, o: Owner) -> str | None:
    """Mend a poisoned metadata block of a dup filesystem from its twin
    (the rmap names it: the record's offset); what was done, or None if
    it could not be (both copies bad: the caller shuts down)."""
    vol = fs.vol
    if o.owner == OWN_LOG:
        log1, log2 = int(vol.sb["log_start"]), int(vol.sb["log2_start"])
        for b in range(o.bno, o.bno + o.nblocks):
            twin = b - log1 + log2 if b < log2 else b - log2 + log1
            if not vol.heal_block(b, twin, "log", node=False):
                return None
        return f"log blocks {o.bno}+{o.nblocks} healed from their copy"
    if not o.partner:
        return None
    if (o.bno, o.partner) in set(vol.alloc.pool_records()):
        # an unused pool block: nothing to mend, the next node written
        # there is stored whole
        vol.pmem.block(o.bno)[:] = 0
        vol.pmem.flush([(o.bno, 1)])
        vol.pmem.bad.clear(o.bno, 1)
        return f"unused reserve pool block {o.bno} cleared"
    if vol.heal_block(o.bno, o.partner, owner_name(o.owner)):
        return f"{owner_name(o.owner)} block {o.bno} healed from its copy at block {o.partner}"
    return None


def _rewrite_superblocks(fs) -> None:
    vol = fs.vol
    if fs.shutdown_reason or vol.pmem.readonly:
        return
    vol.mark_dirty_sb()
    vol.commit()
    for b in (0, secondary_bno(vol.total_blocks)):
        vol.pmem.bad.clear(b, 1)


def inject(fs, bno: int, n: int) -> Report:
    """Mark [bno, bno+n) bad on the device and run the handler."""
    if bno < 0 or n <= 0 or bno + n > fs.vol.total_blocks:
        from .errors import InvalidArgument
        raise InvalidArgument(f"range {bno}+{n} is outside the device"
                              f" ({fs.vol.total_blocks} blocks)")
    fs.vol.pmem.bad.add(bno, n)
    return handle(fs, bno, n)


def handle_all(fs) -> list[Report]:
    """Run the handler for every bad range the device has (at mount)."""
    reports = []
    for b, n in list(fs.vol.pmem.bad.ranges()):
        reports.append(handle(fs, b, n))
    return reports


def listing(fs) -> list[Report]:
    """Every bad range with its owners, without acting; then every metadata
    block this open healed from its copy (dup), no longer bad."""
    out = []
    for b, n in fs.vol.pmem.bad.ranges():
        try:
            owners = owners_of(fs, b, n)
            state = "bad"
        except (Corrupted, MediaError, Shutdown) as e:
            owners, state = [], f"owners unknown ({e})"
        out.append(Report(b, n, owners, state))
    for b, twin, what in fs.vol.healed:
        out.append(Report(b, 1, [], f"{what} healed from its copy at block {twin}",
                          healed=True))
    return out
