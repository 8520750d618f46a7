"""Phase 3 of a repair, first half: the records nothing else can derive --
inodes, extent maps, extended attributes -- mended and completed.

* Inode records: an impossible inode number or file type drops the record;
  a root that is missing or not a directory is made again.
* Extent maps: a damaged extent map is checked against the rmap, its
  mirror (one rmap record per extent record): when the rmap is intact,
  extent records it does not confirm are dropped, and every file extent
  the rmap holds (inode, file offset, length) is an extent again.  (When
  both trees are intact but disagree, the extent maps are the truth and
  the rmap is rebuilt.)  Records the extent-map record check rejects
  (engine/trees.py), or that overlap metadata, an earlier extent of the
  file, or belong to an inode that cannot hold data, are dropped.
* Lost inodes: an inode whose record is gone but whose data the extent
  maps (or the rmap) still know, or which holds directory entries of its
  own, is made again; so is one that directory entries or extended
  attributes still name when the inode tree may have lost its record.
  What is known is kept (its number, its data, its names, its
  attributes, its file type from the entries naming it); the rest is
  guessed and the report says which attributes are guesses: size from
  the extents, mode 0600 (0700 for a directory; the permission bits of
  its access ACL when it has one), owner root, the repair's time.  A
  symbolic link whose target was lost, a device node (its device number
  is lost), or a regular file known only by its names while its extents
  may have been lost too (it could not be told from an empty file)
  cannot be made again: they are reported lost.
* Extended attributes: each must belong to an inode, have a name used
  once per inode, be filed under its name's hash (else it is refiled), and
  have its value inside the device in blocks nothing else uses.

Reads `state.salv`; fills `state.inodes`, `extents`, `xattrs`, `dirents`
(as salvaged: namespace.py mends them), `orphans`, `meta`, `fixed_meta`,
`data`, `next_ino`, `created`.
"""

from __future__ import annotations

import bisect
import stat

import numpy as np

from daxfs.engine import acl
from daxfs.engine.errors import DaxfsError, MediaError
from daxfs.engine.format import (BLOCK_SIZE as BS, DT_BLK, DT_CHR, DT_DIR, DT_LNK, DT_OF_FMT,
                                 DT_REG, EXT_KNOWN, EXT_UNWRITTEN, FMT_OF_DT, MAX_FILE_BYTES,
                                 OWN_MAX_INO, RMAP_ATTR, RMAP_UNWRITTEN,
                                 ROOT_INO, SYMLINK_MAX, name_hash)
from daxfs.engine.superblock import static_owners
from daxfs.engine.trees import (BmapRec, DirentRec, FreeRec, InodeRec, OrphanRec, RmapRec,
                                XattrRec,
                                check_bmap, check_dirent, check_xattr)

from .report import show

_LOW = 0xFFFFFFFF
_OWNER = "owner root"
_TIMES = "times of the repair"


def run(st) -> None:
    sv = st.salv
    st.inodes = {r.ino: r for r in map(InodeRec._make, sv["inode"].records)}
    st.extents = list(map(BmapRec._make, sv["bmap"].records))
    st.dirents = list(map(DirentRec._make, sv["dir"].records))
    st.xattrs = list(map(XattrRec._make, sv["xattr"].records))
    st.orphans = {r.ino for r in map(OrphanRec._make, sv["orphan"].records)}
    st.next_ino = int(st.sb["next_ino"])
    _counter_messages(st)
    _paths_for_messages(st)
    _meta_mask(st)
    _fix_inode_records(st)
    _recover_extents_from_rmap(st)
    _fix_extents(st)
    _recreate_lost_inodes(st)
    _count_data(st)
    _fix_xattrs(st)


def _counter_messages(st) -> None:
    """Superblock counters that disagree with the trees as found (the
    counters are recomputed in any case)."""
    sb = st.sb
    if not st.salv["inode"].damaged:
        n, top = len(st.inodes), max(st.inodes, default=0)
        if int(sb["inode_count"]) != n:
            st.fix(f"superblock: inode count {int(sb['inode_count'])}, the inode tree"
                   f" holds {n}: corrected")
        if int(sb["next_ino"]) <= top:
            st.fix(f"superblock: next inode number {int(sb['next_ino'])} is not above"
                   f" the largest in use ({top}): corrected")
    fr = st.salv["free"]
    if not fr.damaged:
        n = sum(r.len for r in map(FreeRec._make, fr.records))
        if int(sb["free_blocks"]) != n:
            st.fix(f"superblock: free block count {int(sb['free_blocks'])}, the"
                   f" free-space tree holds {n}: corrected")


def _paths_for_messages(st) -> None:
    children: dict[int, list] = {}
    for e in st.dirents:
        children.setdefault(e.parent, []).append((e.name, e.ino))
    stack = [ROOT_INO]
    while stack:
        d = stack.pop()
        for name, ino in children.get(d, []):
            if ino not in st.paths:
                st.paths[ino] = st.paths[d].rstrip("/") + "/" + show(name)
                stack.append(ino)


def _meta_mask(st) -> None:
    """Blocks that hold metadata for certain: superblocks, log, verified
    nodes and their twins (and the superblocks and log alone, in `fixed_meta`)."""
    fixed = np.zeros(st.total, dtype=bool)
    for r in map(RmapRec._make, static_owners(st.sb, pool=[])):
        fixed[min(r.bno, st.total):min(r.bno + r.len, st.total)] = True
    meta = fixed.copy()
    for s in st.salv.values():
        blocks = s.good + [s.twin_of[b] for b in s.good if b in s.twin_of
                           and not st.vol.twin_problem(b, s.twin_of[b])]
        if blocks:
            meta[np.array(blocks, dtype=np.int64)] = True
    st.meta, st.fixed_meta = meta, fixed


def new_ino(st) -> int:
    ino = max(st.next_ino, max(st.inodes, default=0) + 1, ROOT_INO + 1)
    st.next_ino = ino + 1
    return ino


def make_inode(st, ino: int, mode: int, parent: int = 0, size: int = 0,
               nlink: int = 1) -> InodeRec:
    now = st.now
    rec = InodeRec(ino=ino, mode=mode, nlink=nlink, uid=0, gid=0, size=size, blocks=0,
                   atime=now, mtime=now, ctime=now, btime=now, rdev=0, parent=parent,
                   flags=0, generation=0)
    st.inodes[ino] = rec
    st.created.add(ino)
    return rec


def _fix_inode_records(st) -> None:
    for ino in sorted(st.inodes):
        rec = st.inodes[ino]
        if not 0 < ino <= OWN_MAX_INO:
            del st.inodes[ino]
            st.fix(f"inode {ino}: impossible inode number, record dropped")
        elif stat.S_IFMT(rec.mode) not in DT_OF_FMT:
            del st.inodes[ino]
            st.fix(f"{st.where(ino)}: bad file type in mode {rec.mode:o}, inode dropped")
    if ROOT_INO in st.inodes and not stat.S_ISDIR(st.inodes[ROOT_INO].mode):
        del st.inodes[ROOT_INO]
        st.fix("inode 1: the root is not a directory, record dropped")
    if ROOT_INO not in st.inodes:
        make_inode(st, ROOT_INO, stat.S_IFDIR | 0o755, parent=ROOT_INO)
        st.report.guessed(ROOT_INO, "root directory (inode 1)", "a directory",
                          ["mode 0755", _OWNER, _TIMES])


def _recover_extents_from_rmap(st) -> None:
    """A damaged extent map is checked against the rmap, its mirror: when
    the rmap is intact, extent records it does not confirm are dropped;
    extent records lost with unreadable nodes come back from the rmap's
    records of file data, where those can be read."""
    bm, rm = st.salv["bmap"], st.salv.get("rmap")
    if not bm.damaged or rm is None or not rm.records:
        return
    data = [r for r in map(RmapRec._make, rm.records)
            if 0 < r.owner <= OWN_MAX_INO and not r.flags & RMAP_ATTR and r.len]
    if not rm.damaged:
        mirror = {(r.owner, r.offset, r.bno, r.len) for r in data}
        kept = [e for e in st.extents if (e.ino, e.foff, e.pblk, e.len) in mirror]
        if len(kept) != len(st.extents):
            st.fix(f"extent maps: {len(st.extents) - len(kept)} extent record(s) in"
                   " damaged nodes disagree with the rmap: dropped")
            st.extents = kept
    per: dict[int, list] = {}
    for e in st.extents:
        per.setdefault(e.ino, []).append((e.foff, e.foff + e.len))
    for v in per.values():
        v.sort()
    added = 0
    for r in data:
        ranges = per.setdefault(r.owner, [])
        i = bisect.bisect_left(ranges, (r.offset, r.offset + r.len))
        if (i > 0 and ranges[i - 1][1] > r.offset) or \
                (i < len(ranges) and ranges[i][0] < r.offset + r.len):
            continue
        ranges.insert(i, (r.offset, r.offset + r.len))
        st.extents.append(BmapRec(r.owner, r.offset, r.bno, r.len,
                                  EXT_UNWRITTEN if r.flags & RMAP_UNWRITTEN else 0))
        added += 1
    if added:
        st.extents.sort(key=lambda e: (e.ino, e.foff))
        st.fix(f"extent maps: {added} extent record(s) lost with unreadable nodes"
               " taken back from the rmap")


def _fix_extents(st) -> None:
    out = []
    last_end: dict[int, int] = {}
    for e in st.extents:
        if e.flags & ~EXT_KNOWN:
            st.fix(f"{st.where(e.ino)}: extent at file block {e.foff}: unknown flags"
                   f" {e.flags & ~EXT_KNOWN:#x} cleared")
            e = e._replace(flags=e.flags & EXT_KNOWN)
        why = check_bmap(e, st.total)
        if why is None:
            inode = st.inodes.get(e.ino)
            what = f"{st.where(e.ino)}: extent at file block {e.foff}"
            if st.meta[e.pblk:e.pblk + e.len].any():
                why = f"{what} overlaps metadata (block {e.pblk}+{e.len})"
            elif e.ino in last_end and e.foff < last_end[e.ino]:
                why = f"{what} overlaps the previous extent of the file"
            elif inode is not None and not (stat.S_ISREG(inode.mode) or stat.S_ISLNK(inode.mode)):
                why = f"{what} belongs to an inode that cannot hold data"
        if why:
            st.fix(f"{why}: dropped")
            continue
        last_end[e.ino] = e.foff + e.len
        out.append(e)
    st.extents = out


def _recreate_lost_inodes(st) -> None:
    """Make again the inodes whose records are gone but which the image
    still knows: by their data, by entries of their own, or (when the
    inode tree may have lost their record) by the entries naming them
    or their attributes."""
    inodes, lacks = st.inodes, st.salv["inode"].may_lack
    data_end: dict[int, int] = {}
    for e in st.extents:
        if e.ino not in inodes:
            data_end[e.ino] = max(data_end.get(e.ino, 0), e.foff + e.len)
    named: dict[int, list[int]] = {}
    holders = set()
    for d in st.dirents:
        if check_dirent(mended_entry(d), st.total) is None:
            if d.ino not in inodes:
                named.setdefault(d.ino, []).append(d.ftype)
            if d.parent not in inodes:
                holders.add(d.parent)
    xattrs: dict[int, dict] = {}
    for x in st.xattrs:
        if x.ino not in inodes and check_xattr(x, st.total) is None:
            xattrs.setdefault(x.ino, {})[x.name] = x
    candidates = set(data_end) | holders
    candidates |= {i for i in set(named) | set(xattrs) if lacks((i,))}
    for ino in sorted(candidates):
        if ino in st.orphans and ino not in named and ino not in holders:
            # unlinked, waiting to be freed: what it held is freed now
            st.extents = [e for e in st.extents if e.ino != ino]
            st.fix(f"inode {ino}: unlinked (on the orphan list) and its record was lost:"
                   " its data is freed")
            continue
        _recreate(st, ino, data_end.get(ino), named.get(ino, []), ino in holders,
                  xattrs.get(ino, {}))


def _recreate(st, ino: int, data_end, ftypes: list[int], holder: bool, xattrs: dict) -> None:
    where = st.where(ino)
    kinds = set(ftypes)
    guesses = []
    if data_end is not None:
        if DT_LNK in kinds:
            fmt, perm, what = stat.S_IFLNK, 0o777, "a symbolic link"
            size = symlink_len(st, ino)
            guesses.append("size from its target")
        else:
            fmt, perm, what = stat.S_IFREG, 0o600, "a regular file"
            size = min(data_end * BS, MAX_FILE_BYTES)
            guesses.append(f"size {size} from its extents")
    elif holder or DT_DIR in kinds:
        fmt, perm, what, size = stat.S_IFDIR, 0o700, "a directory", 0
    else:
        kind = min(kinds) if kinds else DT_REG
        if kind in (DT_CHR, DT_BLK):
            st.report.lost(ino, "a device node whose device number was lost with its record")
            return
        if kind == DT_LNK:
            st.report.lost(ino, "a symbolic link whose target was lost with its record")
            return
        fmt, perm, size = FMT_OF_DT[kind], 0o600, 0
        if fmt == stat.S_IFREG and not _no_data_lost(st, ino):
            st.report.lost(ino, "a file whose record and data were lost with unreadable nodes")
            return
        what = {stat.S_IFREG: "an empty regular file", stat.S_IFIFO: "a FIFO",
                stat.S_IFSOCK: "a socket"}[fmt]
        if fmt == stat.S_IFREG:
            guesses.append("size 0 (it has no data)")
    access = xattrs.get(acl.ACCESS)
    mode_from = f"mode {perm:04o}"
    if access is not None and not access.vblk and fmt != stat.S_IFLNK:
        try:
            perm = acl.mode_bits(acl.parse(access.inline.ljust(access.vlen, b"\0")[:access.vlen]))
            mode_from = f"mode {perm:04o} from its access ACL"
        except DaxfsError:
            pass
    if fmt != stat.S_IFLNK:
        guesses.append(mode_from)
    guesses += [_OWNER, _TIMES]
    make_inode(st, ino, fmt | perm, size=size)
    st.report.guessed(ino, where, what, guesses)


def mended_entry(d: DirentRec) -> DirentRec:
    """A directory entry with what repair mends without a word of its own
    (the name's length; the key's hash half, which namespace.py refiles)."""
    if d.name and d.namelen != len(d.name):
        d = d._replace(namelen=len(d.name))
    return d._replace(pos=name_hash(d.name) << 32 | (d.pos & _LOW))


def _no_data_lost(st, ino: int) -> bool:
    """Can no extent of this inode have been lost (so that having none
    means it had none)?  Its extent records sit in no gap of the extent
    map, or the rmap, which mirrors them, lost nothing."""
    rmap = st.salv.get("rmap")
    return not st.salv["bmap"].may_lack((ino,)) or (rmap is not None and not rmap.lost)


def symlink_len(st, ino: int) -> int:
    for e in st.extents:
        if e.ino == ino and e.foff == 0:
            try:
                st.pmem.check_load(e.pblk)
            except MediaError:
                return 0
            data = st.pmem.block(e.pblk).tobytes()[:SYMLINK_MAX]
            return data.find(b"\0") if b"\0" in data else len(data)
    return 0


def _count_data(st) -> None:
    """How many extents map each block (`state.data`)."""
    data = np.zeros(st.total + 1, dtype=np.int32)
    if st.extents:
        arr = np.array([(e.pblk, e.len) for e in st.extents], dtype=np.int64)
        np.add.at(data, arr[:, 0], 1)
        np.add.at(data, arr[:, 0] + arr[:, 1], -1)
    st.data = np.cumsum(data[:-1], dtype=np.int32)


def _fix_xattrs(st) -> None:
    taken = st.meta | (st.data > 0)
    out = []
    names: set[tuple] = set()
    for x in st.xattrs:
        x = x._replace(pad=(0, 0, 0))
        if x.namelen != len(x.name) and 0 < len(x.name):
            x = x._replace(namelen=len(x.name))
        what = f"{st.where(x.ino)}: extended attribute {show(x.name)!r}"
        if x.ino not in st.inodes:
            why = f"{what} belongs to a missing inode"
        elif (x.ino, x.name) in names:
            why = f"{what} has a repeated name"
        else:       # (a name filed under the wrong hash is refiled below)
            why = check_xattr(x._replace(pos=name_hash(x.name) << 32 | (x.pos & _LOW)), st.total)
        if why is None and x.vblk:
            n = -(-x.vlen // BS)
            if taken[x.vblk:x.vblk + n].any():
                why = f"{what}: value blocks {x.vblk}+{n} are used by something else"
            else:
                taken[x.vblk:x.vblk + n] = True
        if why:
            st.fix(f"{why}: dropped")
            continue
        names.add((x.ino, x.name))
        out.append(x)
    # the key's hash half must be the name's, or lookups cannot find it
    used = {(x.ino, x.pos) for x in out}
    for i, x in enumerate(out):
        h = name_hash(x.name) << 32
        if x.pos >> 32 != h >> 32:
            seq = 0
            while (x.ino, h | seq) in used:
                seq += 1
            used.discard((x.ino, x.pos))
            used.add((x.ino, h | seq))
            out[i] = x._replace(pos=h | seq)
            st.fix(f"{st.where(x.ino)}: extended attribute {show(x.name)!r} was filed"
                   " under the wrong hash: moved")
    out.sort(key=lambda x: (x.ino, x.pos))
    st.xattrs = out
