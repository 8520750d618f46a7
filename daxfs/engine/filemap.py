"""What extent-map records mean, and the data path built on them: read,
write with copy-on-write of shared extents, truncate, clone, dedupe,
preallocation (unwritten extents), hole punching, SEEK_DATA/SEEK_HOLE and
FIEMAP.

Extent record (ino, file block) -> (physical block, length, flags).  Every
change to a file's mapping is mirrored in the rmap (one rmap record per
extent record, with RMAP_UNWRITTEN for an unwritten one) and, for shared
ranges, in the refcount tree; blocks whose owner count falls to zero go
back to free space.  File data is loaded and stored straight from the
mapping (DAX): nothing is cached here.

Unwritten extents (EXT_UNWRITTEN, made by fallocate) are allocated blocks
whose bytes were never written: they read as zeros whatever the blocks
hold, so preallocating costs no stores.  A write into one stores its data
with zeros around it in the blocks it touches (flushed before the commit,
like any new block) and converts just those blocks to written.  Unwritten
blocks are never shared: a clone leaves a hole where its source is
unwritten (the same bytes: zeros).

Invariants kept for every file: bytes past EOF inside the last written
block are zero; a newly allocated block is fully written (data or zeros)
before the commit that maps it as written; blocks past EOF are unwritten
(preallocated), or left by a crash (fs._drop_post_eof drops those).
"""

import itertools

import numpy as np

from .attrs import (FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_SHARED, FIEMAP_EXTENT_UNWRITTEN,
                    FiemapExtent)
from .errors import DamagedFile, MediaError, NoSpace
from .format import (BLOCK_SIZE as BS, EXT_KNOWN, EXT_UNWRITTEN, FEAT_UNWRITTEN, OWN_MAX_INO,
                     RMAP_ATTR, RMAP_UNWRITTEN, owner_name)

_END = (1 << 64) - 1
TRUSTED_MAX = 1 << 18        # extent records remembered as verified
UNMAP_STEP = 16              # extents unmapped between consistent points
_UNKNOWN = object()


def _rmap_flags(ext_flags: int) -> int:
    """The rmap record flags that mirror an extent record's flags."""
    return RMAP_UNWRITTEN if ext_flags & EXT_UNWRITTEN else 0


class FileMap:
    def __init__(self, vol, step=None):
        self.vol = vol
        self.tree = vol.trees["bmap"]
        self.rmap = vol.rmap
        self.refc = vol.refcount
        self.alloc = vol.alloc
        self.pmem = vol.pmem
        self.journal = vol.journal
        self.step = step or (lambda: None)
        self._trusted: set[tuple] = set()    # extent records verified or written here

    # ---- mapping ------------------------------------------------------------
    def extents(self, ino: int, start: int, end: int) -> list[tuple[int, int, int]]:
        """(file block, physical block, length) of every extent meeting
        file blocks [start, end), clipped to that range, in order (written
        and unwritten alike: what the file owns)."""
        return [e[:3] for e in self._extents(ino, start, end)[0]]

    def mapping(self, ino: int, start: int, end: int) -> list[tuple[int, int, int, int]]:
        """extents() with each extent's flags: (file block, physical block,
        length, flags); an extent with EXT_UNWRITTEN reads as zeros."""
        return self._extents(ino, start, end)[0]

    def _extents(self, ino: int, start: int, end: int):
        """mapping(), and the file's record with the greatest key <= start
        (None if the file has none).  Every record used is verified first
        (`_verify`)."""
        out = []
        near = self.tree.around((ino, start), (ino, end - 1))
        if near is None:                    # (the extents span leaves)
            prev = self.tree.last_le((ino, start))
            after = self.tree.scan(lo=(ino, start), hi=(ino,))
        else:
            prev, after = near
        if prev and prev[0] != ino:
            prev = None
        trusted = self._trusted
        if prev and prev[1] < start < prev[1] + prev[3]:
            if prev not in trusted:
                self._verify(prev)
            f, p, n = prev[1], prev[2], prev[3]
            cut = start - f
            out.append((start, p + cut, min(n - cut, end - start), prev[4]))
        elif near is not None and prev and prev[1] == start:
            after.insert(0, prev)           # (around gives a key equal to start as prev)
        for rec in after:
            f, p, n = rec[1], rec[2], rec[3]
            if f >= end:
                break
            if rec not in trusted:
                self._verify(rec)
            out.append((f, p, min(n, end - f), rec[4]))
        return out, prev

    def _trust(self, rec: tuple) -> None:
        """A record this mount wrote itself: no need to verify it."""
        trusted = self._trusted
        if len(trusted) >= TRUSTED_MAX:
            trusted.clear()
        trusted.add(rec)

    def _verify(self, rec: tuple) -> None:
        """Before the first load or store through an extent record read
        from the image: it must lie on the device outside the superblocks
        and the log, the rmap must hold exactly its record, every other
        owner of its blocks must be file data counted in the refcount tree,
        and no block of it may be free.  Anything else is a damaged file
        (EUCLEAN for it, never a place to write): a crafted image must not
        turn a user's write into a write over metadata or another file."""
        ino, f, p, n, flags = rec
        vol = self.vol
        total = vol.total_blocks
        where = f"extent at file block {f} (blocks {p}+{n})"
        if n == 0 or p == 0 or p + n > total - 1 or flags & ~EXT_KNOWN:
            raise DamagedFile(ino, f"{where} is not a valid extent of this device")
        log_start = int(vol.sb["log_start"])
        if p < log_start + int(vol.sb["log_blocks"]) and p + n > log_start:
            raise DamagedFile(ino, f"{where} lies over the log")
        free = self.alloc.free_tree.last_le((p + n - 1,))
        if free is not None and free[0] + free[1] > p:
            raise DamagedFile(ino, f"{where} overlaps free space ({free[0]}+{free[1]})")
        if self.rmap.enabled:
            if self.rmap.record(p, ino, f) != (n, _rmap_flags(flags)):
                raise DamagedFile(ino, f"{where} has no matching rmap record")
            sharers = np.zeros(n, dtype=np.int64)
            for rb, owner, _off, rlen, rflags in self.rmap.owners(p, p + n - 1):
                if owner > OWN_MAX_INO or rflags & RMAP_ATTR:
                    raise DamagedFile(ino, f"{where} lies over {owner_name(owner)}"
                                           f" blocks {rb}+{rlen}")
                lo, hi = max(rb, p), min(rb + rlen, p + n)
                sharers[lo - p:hi - p] += 1
            for s, k, rc in self.refc.segments(p, n):
                if (sharers[s - p:s - p + k] != (rc if rc > 1 else 1)).any():
                    raise DamagedFile(ino, f"{where}: blocks {s}+{k} have other owners than"
                                           f" the refcount tree counts ({rc})")
                if rc > 1 and flags & EXT_UNWRITTEN:
                    raise DamagedFile(ino, f"{where}: an unwritten extent is shared")
        self._trust(rec)

    def last_block(self, ino: int) -> int:
        """One past the last mapped file block (0 if none)."""
        rec = self.tree.last_le((ino, _END))
        if rec and rec[0] == ino:
            return rec[1] + rec[3]
        return 0

    def map(self, ino: int, foff: int, pblk: int, n: int, prev=_UNKNOWN,
            flags: int = 0) -> tuple:
        """Map file blocks [foff, foff+n) to [pblk, pblk+n) (a hole now),
        with extent `flags`.  `prev`, when the caller knows it, is the
        file's record with the greatest key below foff (or None).  Returns
        the record that now maps foff."""
        if foff:
            if prev is _UNKNOWN:
                prev = self.tree.last_le((ino, foff - 1))
            if (prev and prev[0] == ino and prev[1] + prev[3] == foff
                    and prev[2] + prev[3] == pblk and prev[4] == flags):
                rec = (ino, prev[1], prev[2], prev[3] + n, flags)
                self.tree.update(rec)
                self._trust(rec)
                self.rmap.resize(prev[2], ino, prev[1], prev[3] + n, _rmap_flags(flags))
                return rec
        if flags & EXT_UNWRITTEN:
            self._note_unwritten()
        rec = (ino, foff, pblk, n, flags)
        self.tree.insert(rec)
        self._trust(rec)
        self.rmap.map(pblk, ino, foff, n, _rmap_flags(flags))
        return rec

    def _note_unwritten(self) -> None:
        """The image holds unwritten extents from now on: say so in the
        superblock's features, so that a daxfs that does not know them
        refuses the image instead of reading their stale blocks."""
        sb = self.vol.sb
        if not int(sb["features"]) & FEAT_UNWRITTEN:
            sb["features"] = int(sb["features"]) | FEAT_UNWRITTEN
            self.vol.mark_dirty_sb()


    def unmap(self, ino: int, start: int, end: int, limit: int = 0) -> tuple[list, int]:
        """Remove the mapping of file blocks [start, end).  Returns the
        physical (block, count) ranges removed and the file block reached
        (== end unless `limit` extents were done first)."""
        removed = []
        reached = end
        todo = self._iter_extents(ino, start, end)
        todo = list(itertools.islice(todo, limit + 1)) if limit else list(todo)
        for k, (f, p, n) in enumerate(todo):
            if limit and k >= limit:
                reached = f
                break
            rec = self.tree.last_le((ino, f))
            rf, rp, rn, rfl = rec[1], rec[2], rec[3], rec[4]
            a, b = f, f + n
            if rf < a:
                self.tree.update((ino, rf, rp, a - rf, rfl))
                self._trust((ino, rf, rp, a - rf, rfl))
                self.rmap.resize(rp, ino, rf, a - rf, _rmap_flags(rfl))
            else:
                self.tree.discard((ino, rf))
                self.rmap.unmap(rp, ino, rf)
            if b < rf + rn:
                self.tree.insert((ino, b, rp + (b - rf), rf + rn - b, rfl))
                self._trust((ino, b, rp + (b - rf), rf + rn - b, rfl))
                self.rmap.map(rp + (b - rf), ino, b, rf + rn - b, _rmap_flags(rfl))
            removed.append((p, n))
        return removed, reached

    def release(self, ranges) -> None:
        """Drop one owner from each physical range; free what nobody owns."""
        for p, n in ranges:
            for s, k in self.refc.adjust(p, n, -1):
                self._free_data(s, k)

    def _free_data(self, s: int, k: int) -> None:
        bad = self.pmem.bad
        if bad and bad.first_bad(s, k) is not None:
            # nobody owns these bytes any more: clear the poison (a recovery write)
            for b, n in bad.ranges():
                lo, hi = max(b, s), min(b + n, s + k)
                if lo < hi:
                    self.pmem.blocks(lo, hi - lo)[:] = 0
                    self.journal.note_data(lo, hi - lo)
                    bad.clear(lo, hi - lo)
        self.alloc.free(s, k)

    # ---- loads and stores -----------------------------------------------------
    def _load_check(self, p: int, n: int) -> None:
        self.pmem.check_load(p, n)

    def read(self, ino: int, off: int, size: int, file_size: int) -> bytes:
        end = min(off + size, file_size)
        if off >= end:
            return b""
        b0, b1 = off // BS, (end + BS - 1) // BS
        exts = self.mapping(ino, b0, b1)
        pmem = self.pmem
        if len(exts) == 1 and exts[0][0] == b0 and exts[0][2] == b1 - b0 and not exts[0][3]:
            p = exts[0][1]
            self._load_check(p, b1 - b0)
            return pmem.load(p * BS + (off - b0 * BS), end - off)
        out = bytearray(end - off)
        view = memoryview(out)
        for f, p, n, flags in exts:
            if flags & EXT_UNWRITTEN:
                continue                    # reads as zeros
            self._load_check(p, n)
            lo = max(off, f * BS)
            hi = min(end, (f + n) * BS)
            pmem.load_into(view[lo - off:hi - off], p * BS + (lo - f * BS))
        return bytes(out)

    def _store(self, p: int, boff: int, data, d0: int, d1: int) -> None:
        """Store data[d0:d1] at byte boff of physical block p onwards.
        Whole pages go in with one pwrite (Pmem.store_pages): a store
        through the mapping into a page that is not resident would first
        read it from the image file, only to overwrite all of it."""
        o = p * BS + boff
        n = d1 - d0
        head = -o % BS
        whole = (n - head) // BS * BS if n >= head + BS else 0
        if whole:
            mv = memoryview(data)[d0:d1]
            buf = self.pmem.buf
            if head:
                buf[o:o + head] = np.frombuffer(mv[:head], dtype=np.uint8)
            self.pmem.store_pages(o + head, mv[head:head + whole])
            rest = n - head - whole
            if rest:
                t = o + head + whole
                buf[t:t + rest] = np.frombuffer(mv[head + whole:], dtype=np.uint8)
            return
        self.pmem.buf[o:o + n] = np.frombuffer(data, dtype=np.uint8, count=n, offset=d0)

    def write(self, inode, off: int, data) -> int:
        """Store data at byte off of the file; allocates holes, copies shared
        blocks on write.  Returns bytes written (short only on ENOSPC after
        some progress).  Does not change the size; the caller does."""
        ino = inode.ino
        n = len(data)
        end = off + n
        b0, b1 = off // BS, (end + BS - 1) // BS
        pos = b0
        goal = 0
        self._reached = b0         # file block up to which the write is stored
        exts, prev = self._extents(ino, b0, b1)
        if prev is not None:       # allocate right after the block before b0
            goal = prev[2] + prev[3] + (b0 - prev[1] - prev[3])
        try:
            for f, p, k, flags in exts + [(b1, 0, 0, 0)]:
                if pos < f:
                    # (prev is the record before b0: known only for a hole at b0)
                    goal = self._fill_hole(inode, pos, f, off, end, data, goal,
                                           prev if pos == b0 else _UNKNOWN)
                if k:
                    if flags & EXT_UNWRITTEN:
                        self._write_unwritten(inode, f, p, k, off, end, data)
                    else:
                        self._overwrite(inode, f, p, k, off, end, data)
                    goal = p + k
                pos = f + k
                self._reached = pos
        except NoSpace:
            done = self._reached * BS - off
            if done > 0:
                return min(done, n)
            raise
        return n

    def _fill_hole(self, inode, f0: int, f1: int, off: int, end: int, data, goal: int,
                   prev=_UNKNOWN) -> int:
        ino = inode.ino
        if not goal:
            goal = self._goal(ino, f0)
        # a write that extends the file and ends in this hole appends: hold
        # free blocks after it for the next append (alloc.py)
        spec = self.alloc.prealloc_for(f1) if end > inode.size and f1 * BS >= end else 0
        while f0 < f1:
            p, k = self.alloc.alloc(f1 - f0, goal, owner=ino, spec=spec)
            self._fill_new(p, f0, k, off, end, data, None)
            prev = self.map(ino, f0, p, k, prev)
            inode.blocks += k
            f0 += k
            self._reached = f0
            self.step()
            goal = p + k
        return goal

    def _goal(self, ino: int, f: int) -> int:
        prev = self.tree.last_le((ino, f))
        if prev and prev[0] == ino:
            return prev[2] + prev[3] + (f - prev[1] - prev[3])
        return 0

    def _fill_new(self, p: int, f: int, k: int, off: int, end: int, data, old_p) -> None:
        """Write new blocks [p, p+k) standing for file blocks [f, f+k): the
        data where it falls, the old blocks' bytes (old_p, CoW) or zeros
        elsewhere."""
        lo = f * BS
        hi = (f + k) * BS
        buf = self.pmem.buf
        d_lo, d_hi = max(off, lo), min(end, hi)
        if d_lo > lo:
            if old_p is None:
                buf[p * BS:p * BS + d_lo - lo] = 0
            else:
                self._load_check(old_p, 1)
                buf[p * BS:p * BS + d_lo - lo] = buf[old_p * BS:old_p * BS + d_lo - lo]
        if d_hi < hi:
            t = p * BS + (d_hi - lo)
            if old_p is None:
                buf[t:(p + k) * BS] = 0
            else:
                last = old_p + k - 1
                self._load_check(last, 1)
                s = old_p * BS + (d_hi - lo)
                buf[t:(p + k) * BS] = buf[s:(old_p + k) * BS]
        if d_lo < d_hi:
            self._store(p, d_lo - lo, data, d_lo - off, d_hi - off)
        self.journal.note_data(p, k)

    def _write_unwritten(self, inode, f: int, p: int, k: int, off: int, end: int,
                         data) -> None:
        """Store into file blocks [f, f+k), unwritten on blocks [p, p+k):
        the blocks the write touches get its data with zeros around it
        (what they read as until now), then become written."""
        lo_f = max(f, off // BS)
        hi_f = min(f + k, (end + BS - 1) // BS)
        q, n = p + (lo_f - f), hi_f - lo_f      # (never shared: _verify, clone)
        self._fill_new(q, lo_f, n, off, end, data, None)
        self._clear_bad(q, n)           # whole blocks stored: a recovery write
        self.set_flags(inode.ino, lo_f, hi_f, 0)

    def _clear_bad(self, p: int, k: int) -> None:
        """Blocks [p, p+k) were stored whole: their bad ranges are gone."""
        bad = self.pmem.bad
        if bad and bad.first_bad(p, k) is not None:
            for b in range(p, p + k):
                if bad.first_bad(b, 1) is not None:
                    bad.clear(b, 1)

    def set_flags(self, ino: int, f0: int, f1: int, flags: int) -> None:
        """Give every extent of file blocks [f0, f1) the flags `flags`
        (written <-> unwritten), keeping the blocks."""
        pieces = self.extents(ino, f0, f1)
        self.unmap(ino, f0, f1)
        for f, p, n in pieces:
            self.map(ino, f, p, n, flags=flags)

    def _overwrite(self, inode, f: int, p: int, k: int, off: int, end: int, data) -> None:
        for s, length, rc in self.refc.segments(p, k):
            sf = f + (s - p)
            if rc == 1:
                self._store_in_place(s, sf, length, off, end, data)
            else:
                self._cow(inode, sf, s, length, off, end, data)

    def _store_in_place(self, p: int, f: int, k: int, off: int, end: int, data) -> None:
        lo, hi = f * BS, (f + k) * BS
        d_lo, d_hi = max(off, lo), min(end, hi)
        bad = self.pmem.bad
        if bad:
            first = bad.first_bad(p, k)
            if first is not None:
                # whole aligned blocks stored over a bad range clear it; a
                # partial store would have to load the bad bytes: EIO
                for b in range(p, p + k):
                    if bad.first_bad(b, 1) is None:
                        continue
                    bl, bh = lo + (b - p) * BS, lo + (b - p + 1) * BS
                    if d_lo > bl or d_hi < bh:
                        raise MediaError(b)
                self._store(p, d_lo - lo, data, d_lo - off, d_hi - off)
                for b in range(p, p + k):
                    if bad.first_bad(b, 1) is not None:
                        bad.clear(b, 1)
                self.journal.note_data(p, k)
                return
        self._store(p, d_lo - lo, data, d_lo - off, d_hi - off)
        self.journal.note_overwrite(p, k)

    def _cow(self, inode, f: int, p: int, k: int, off: int, end: int, data) -> None:
        """Copy-on-write: give file blocks [f, f+k) (now on shared blocks
        [p, p+k)) new blocks holding the old bytes plus this write."""
        ino = inode.ino
        # only the blocks the write touches are copied
        lo_f = max(f, off // BS)
        hi_f = min(f + k, (end + BS - 1) // BS)
        while lo_f < hi_f:
            old = p + (lo_f - f)
            np_, got = self.alloc.alloc(hi_f - lo_f, old + k)
            self._fill_new(np_, lo_f, got, off, end, data, old)
            removed, _ = self.unmap(ino, lo_f, lo_f + got)
            self.release(removed)
            self.map(ino, lo_f, np_, got)
            lo_f += got
            self._reached = lo_f
            self.step()

    def zero_tail(self, inode, size: int) -> None:
        """Zero the bytes from size to the end of its block (truncate)."""
        if size % BS == 0:
            return
        b = size // BS
        m = self.mapping(inode.ino, b, b + 1)
        if not m or m[0][3] & EXT_UNWRITTEN:
            return                      # a hole or unwritten: reads as zeros
        self.write(inode, size, bytes(BS - size % BS))

    def truncate_blocks(self, inode, first_block: int, budget: int | None = None) -> bool:
        """Unmap and release every block of the file from first_block on, in
        steps that each leave the file consistent; with `budget`, at most
        that many extents.  True when nothing is mapped from first_block
        on any more."""
        return self.punch(inode, first_block, _END, budget)

    def truncate_written(self, inode, first_block: int, budget: int | None = None) -> bool:
        """Unmap and release the written blocks of the file from first_block
        on, keeping the unwritten (preallocated) ones; in steps, at most
        `budget` extents with one.  True when no written block is left
        there."""
        done = 0
        while True:
            # (read lazily, and only before the tree changes)
            left = ((f, n) for f, _, n, fl in self._iter_mapping(inode.ino, first_block, _END)
                    if not fl & EXT_UNWRITTEN)
            if budget is not None and done >= budget:
                return next(left, None) is None
            step = UNMAP_STEP if budget is None else min(UNMAP_STEP, budget - done)
            batch = list(itertools.islice(left, step))
            if not batch:
                return True
            for f, n in batch:
                removed, _ = self.unmap(inode.ino, f, f + n)
                self.release(removed)
                inode.blocks -= sum(k for _, k in removed)
            done += len(batch)
            first_block = batch[-1][0] + batch[-1][1]
            self.step()

    # ---- preallocation and holes ---------------------------------------------
    def holes(self, ino: int, start: int, end: int) -> list[tuple[int, int]]:
        """The unmapped runs [a, b) of file blocks [start, end)."""
        out = []
        pos = start
        for f, _, n in self.extents(ino, start, end):
            if pos < f:
                out.append((pos, f))
            pos = f + n
        if pos < end:
            out.append((pos, end))
        return out

    def preallocate(self, inode, holes) -> None:
        """Give each hole [a, b) of the file unwritten blocks (which read
        as zeros: nothing is stored), in steps."""
        ino = inode.ino
        for a, b in holes:
            goal = self._goal(ino, a)
            while a < b:
                p, k = self.alloc.alloc(b - a, goal)
                self.map(ino, a, p, k, flags=EXT_UNWRITTEN)
                inode.blocks += k
                a += k
                goal = p + k
                self.step()

    def punch(self, inode, start: int, end: int, budget: int | None = None) -> bool:
        """Unmap file blocks [start, end) and drop the file's owner count of
        their blocks (shared ones stay with their other owners), in steps
        that each leave the file consistent; with `budget`, at most that
        many extents.  True when nothing is mapped there any more."""
        if not inode.blocks:        # no blocks, no extents (check verifies it)
            return True
        done = 0
        while True:
            limit = UNMAP_STEP if budget is None else max(1, min(UNMAP_STEP, budget - done))
            removed, reached = self.unmap(inode.ino, start, end, limit=limit)
            self.release(removed)
            inode.blocks -= sum(n for _, n in removed)
            done += len(removed)
            if reached == end:
                return True
            start = reached
            self.step()
            if budget is not None and done >= budget:
                return False

    def shared_blocks(self, ino: int, start: int, end: int) -> int:
        """How many blocks of file blocks [start, end) are shared (written:
        unwritten blocks never are)."""
        n = 0
        for _, p, k in self.extents(ino, start, end):
            n += sum(length for _, length, rc in self.refc.segments(p, k) if rc > 1)
        return n

    def unshare_or_unwrite(self, inode, start: int, end: int) -> None:
        """Make file blocks [start, end) read as zeros without storing: a
        block the file alone owns becomes unwritten in place, a shared one
        is given up (a hole, for preallocate to fill), in steps."""
        ino = inode.ino
        pos = start
        while pos < end:
            step_end = pos + self.extent_span(ino, pos, end, UNMAP_STEP)
            for f, p, n, flags in self.mapping(ino, pos, step_end):
                if flags & EXT_UNWRITTEN:
                    continue
                for s_, k, rc in self.refc.segments(p, n):
                    sf = f + (s_ - p)
                    if rc > 1:
                        removed, _ = self.unmap(ino, sf, sf + k)
                        self.release(removed)
                        inode.blocks -= sum(m for _, m in removed)
                    else:
                        self.set_flags(ino, sf, sf + k, EXT_UNWRITTEN)
            pos = step_end
            self.step()

    # ---- SEEK_DATA / SEEK_HOLE -------------------------------------------------
    def _written_runs(self, ino: int, start: int):
        """(first block, end block) of the written extents meeting file
        blocks [start, ...), in order, adjacent ones joined; lazily."""
        run = None
        for f, _, n, flags in self._iter_mapping(ino, start, _END):
            if flags & EXT_UNWRITTEN:
                continue
            if run and run[1] == f:
                run = (run[0], f + n)
                continue
            if run:
                yield run
            run = (f, f + n)
        if run:
            yield run

    def seek_data(self, ino: int, off: int, size: int) -> int | None:
        """The first offset >= off inside a written extent and before
        `size`, or None (no data there: ENXIO)."""
        for a, b in self._written_runs(ino, off // BS):
            pos = max(off, a * BS)
            return pos if pos < size else None
        return None

    def seek_hole(self, ino: int, off: int, size: int) -> int:
        """The first offset >= off (off < size) in a hole or unwritten
        extent, or `size` (the hole every file has at its end)."""
        pos = off
        for a, b in self._written_runs(ino, off // BS):
            if a * BS > pos:
                break
            pos = max(pos, b * BS)
            if pos >= size:
                break
        return min(pos, size)

    # ---- sharing -------------------------------------------------------------
    def clone(self, src, s_blk: int, dst, d_blk: int, nblk: int,
              budget: int | None = None) -> int:
        """Make dst's file blocks [d_blk, d_blk+nblk) share src's blocks
        [s_blk, s_blk+nblk) (holes stay holes; unwritten extents, which
        read as zeros and are never shared, become holes).  With `budget`,
        stops after about that many extents (of dst unmapped and of src
        shared) at a block where the part done is whole.  Returns the
        blocks done."""
        limit = None if budget is None else max(1, budget)
        written = (e[:3] for e in self._iter_mapping(src.ino, s_blk, s_blk + nblk)
                   if not e[3] & EXT_UNWRITTEN)
        pieces = list(itertools.islice(written, limit + 1 if limit else None))
        done = nblk
        if limit and len(pieces) > limit:
            done = pieces[limit][0] - s_blk          # up to the first piece left out
            pieces = pieces[:limit]
        pos = d_blk
        while pos < d_blk + done:                    # dst's old blocks there, in steps
            removed, reached = self.unmap(dst.ino, pos, d_blk + done, limit=UNMAP_STEP)
            self.release(removed)
            dst.blocks -= sum(n for _, n in removed)
            pos = reached
            if limit is not None:
                limit -= len(removed)
                if limit <= 0 and pos < d_blk + done:
                    done = pos - d_blk
                    pieces = [pc for pc in pieces if pc[0] < s_blk + done]
                    if pieces and pieces[-1][0] + pieces[-1][2] > s_blk + done:
                        f, p, n = pieces[-1]
                        pieces[-1] = (f, p, s_blk + done - f)
                    break
            self.step()
        for f, p, n in pieces:
            self.refc.adjust(p, n, +1)
            self.map(dst.ino, d_blk + (f - s_blk), p, n)
            dst.blocks += n
            self.step()
        return done

    def view(self, ino: int, off: int, length: int, file_size: int):
        """The bytes [off, off+length) as a numpy array: a view on the mapping
        when they are contiguous on the device, else a copy."""
        b0, b1 = off // BS, (off + length + BS - 1) // BS
        exts = self.mapping(ino, b0, b1)
        if len(exts) == 1 and exts[0][0] == b0 and exts[0][2] == b1 - b0 and not exts[0][3]:
            p = exts[0][1]
            self._load_check(p, b1 - b0)
            o = p * BS + off - b0 * BS
            return self.pmem.buf[o:o + length]
        return np.frombuffer(self.read(ino, off, length, file_size), dtype=np.uint8)

    def _pieces(self, ino: int, b0: int, b1: int) -> list[tuple[int, int, int]]:
        """File blocks [b0, b1) as (file block, physical block or 0 for a
        hole, count), in order, holes (and unwritten extents, which read
        as zeros) included."""
        out, pos = [], b0
        for f, p, n, flags in self._iter_mapping(ino, b0, b1):
            if flags & EXT_UNWRITTEN:
                continue
            if f > pos:
                out.append((pos, 0, f - pos))
            out.append((f, p, n))
            pos = f + n
        if pos < b1:
            out.append((pos, 0, b1 - pos))
        return out

    def same_bytes(self, a, a_off: int, b, b_off: int, length: int) -> bool:
        """Compare two ranges in place: extent by extent, where both are
        holes without reading anything, where one is a hole by checking the
        other for zeros (bytes past EOF in a last block are zeros too)."""
        if a_off % BS or b_off % BS:
            return self._same_bytes_copied(a, a_off, b, b_off, length)
        buf = self.pmem.buf
        nb = -(-length // BS)
        pa = self._pieces(a.ino, a_off // BS, a_off // BS + nb)
        pb = self._pieces(b.ino, b_off // BS, b_off // BS + nb)
        ia = ib = 0
        pos = 0                                   # blocks compared
        while pos < nb:
            fa, xa, na = pa[ia]
            fb, xb, nb_ = pb[ib]
            sa, sb = pos - (fa - a_off // BS), pos - (fb - b_off // BS)
            k = min(na - sa, nb_ - sb)
            nbytes = min(k * BS, length - pos * BS)
            if xa or xb:
                if xa:
                    self._load_check(xa + sa, k)
                if xb:
                    self._load_check(xb + sb, k)
                va = buf[(xa + sa) * BS:(xa + sa) * BS + nbytes] if xa else None
                vb = buf[(xb + sb) * BS:(xb + sb) * BS + nbytes] if xb else None
                if va is None:
                    if np.count_nonzero(vb):
                        return False
                elif vb is None:
                    if np.count_nonzero(va):
                        return False
                elif not np.array_equal(va, vb):
                    return False
            pos += k
            if sa + k == na:
                ia += 1
            if sb + k == nb_:
                ib += 1
        return True

    def _same_bytes_copied(self, a, a_off: int, b, b_off: int, length: int) -> bool:
        step = 64 << 20
        done = 0
        while done < length:
            n = min(step, length - done)
            va = self.view(a.ino, a_off + done, n, a.size)
            vb = self.view(b.ino, b_off + done, n, b.size)
            if va.shape != vb.shape or not np.array_equal(va, vb):
                return False
            done += n
        return True

    def _iter_extents(self, ino: int, start: int, end: int):
        """extents(), one at a time (see _iter_mapping)."""
        for f, p, n, _ in self._iter_mapping(ino, start, end):
            yield f, p, n

    def _iter_mapping(self, ino: int, start: int, end: int):
        """mapping(), one at a time, each record verified before it is
        used (a caller that stops early reads no more of the tree than it
        used).  The tree must not change while it runs."""
        prev = self.tree.last_le((ino, start))
        head = [prev] if prev and prev[0] == ino and prev[1] < start < prev[1] + prev[3] else []
        trusted = self._trusted
        for rec in itertools.chain(head, self.tree.scan(lo=(ino, start), hi=(ino,))):
            f, p, n = rec[1], rec[2], rec[3]
            if f >= end:
                return
            if rec not in trusted:
                self._verify(rec)
            if f < start:
                f, p, n = start, p + start - f, n - (start - f)
            yield f, p, min(n, end - f), rec[4]

    def extent_span(self, ino: int, start: int, end: int, most: int) -> int:
        """How many blocks from `start` (up to `end`) hold at most `most`
        extents of the file (at least one block)."""
        for k, (f, _, _) in enumerate(self._iter_extents(ino, start, end)):
            if k == most:
                return max(1, f - start)
        return end - start

    def fiemap(self, ino: int, start: int, length: int, file_size: int,
               limit: int | None = None) -> list[FiemapExtent]:
        """The extents (merged where physically contiguous with the same
        flags) overlapping [start, start+length) inside the file, at most
        `limit` of them: the walk stops there."""
        b0 = start // BS
        b1 = -(-min(start + length, max(file_size, 0)) // BS)
        out = []
        for f, p, n, ext_flags in self._iter_mapping(ino, b0, max(b1, b0)):
            for s, k, rc in self.refc.segments(p, n):
                flags = FIEMAP_EXTENT_SHARED if rc > 1 else 0
                if ext_flags & EXT_UNWRITTEN:
                    flags |= FIEMAP_EXTENT_UNWRITTEN
                logical = (f + (s - p)) * BS
                if out and flags == out[-1].flags and \
                        out[-1].logical + out[-1].length == logical and \
                        out[-1].physical + out[-1].length == s * BS:
                    last = out.pop()
                    out.append(FiemapExtent(last.logical, last.physical,
                                            last.length + k * BS, flags))
                else:
                    out.append(FiemapExtent(logical, s * BS, k * BS, flags))
            if limit is not None and len(out) > limit:
                break
        if limit is not None:
            out = out[:limit]
        if out:
            end_blk = self.last_block(ino)
            last = out[-1]
            if (last.logical + last.length) // BS >= end_blk:
                out[-1] = FiemapExtent(last.logical, last.physical, last.length,
                                       last.flags | FIEMAP_EXTENT_LAST)
        return out
