"""Free space: the free-space B+tree (start -> length), the reserve pool of
btree blocks, busy extents, the space reserve, and the blocks held in
memory for appending files (speculative preallocation).

* Data extents come from the free-space tree: the blocks at the goal (the
  file's last block + 1) when they are free, else the smallest free extent
  that holds the whole request (nearest the goal among equals), else the
  largest.  An in-memory index of free extents by size (`_by_size`) finds
  them; it follows every change this class makes to the tree, an
  operation's rollback undoes its changes, and each entry is checked
  against the tree before use.
* Speculative preallocation: a file growing at EOF asks for `spec` blocks
  more than it writes (the caller sizes it with the file, `prealloc_for`).
  They are not taken: the free blocks right after the file's new last
  block are held for it in memory (`_held`), and other allocations go
  elsewhere while any other space fits them, so the file's next append
  continues in place.  Nothing of this reaches the image: after a crash
  or unmount the blocks are just free, `df` and `check` count them free,
  and an allocation that finds no other space takes them (a held range
  never causes an ENOSPC).  `release(ino)` forgets a file's range (last
  close, unlink, truncate).
* Btree nodes come from the reserve pool (kept in the superblock, like XFS's
  AGFL), so that splitting the free-space or rmap tree never has to allocate
  from the tree it is changing.  Pool blocks, free-space tree nodes and rmap
  tree nodes share the rmap owner OWN_AG, so moving a block between them
  changes no rmap record; a node taken by any other tree changes owner, and
  that rmap update is queued and done at the next `settle()`.
* `settle()` runs between record-level steps: it applies queued owner
  changes and refills or drains the pool.
* Blocks freed in the running transaction are busy: not handed out again
  until the transaction that freed them is durable (data is stored straight
  into blocks, so reusing them earlier could overwrite what the last
  committed metadata still points at).
* A reserve of blocks is kept back from ordinary allocations so that unlink,
  rmdir and truncate (which may split trees) always succeed on a full device.
* The free-space tree of an image is not trusted blindly: before the first
  allocation from a free extent read from the image, the rmap tree must
  have no record inside it (a crafted image could list a root-only file's
  blocks as free, and a new file would get them); the extents verified, and
  every range this mount frees itself, are remembered as trusted.  The pool
  blocks in the superblock are checked against the rmap once at open.
"""

import bisect
import logging

from .errors import Corrupted, NoSpace
from .format import OWN_AG, own_tree, owner_name

log = logging.getLogger(__name__)

POOL_LOW = 96
POOL_TARGET = 128
POOL_HIGH = 200

PREALLOC_MIN = 16            # blocks: files smaller than this get no speculative blocks
PREALLOC_MAX = 16384         # blocks (64 MiB): the most held ahead of one file
PREALLOC_FILES = 64          # files with held blocks at once (the oldest is forgotten)
FIT_TRIES = 64               # index entries tried before falling back to a tree scan


class Allocator:
    def __init__(self, vol):
        self.vol = vol
        self.sb = vol.sb
        self._pool_n = vol.sb_arr["pool_count"]    # (an array view reads faster than sb["..."])
        self._free_n = vol.sb_arr["free_blocks"]
        self.free_tree = vol.trees["free"]
        self.rmap = vol.rmap
        self._busy_s: list[int] = []
        self._busy_e: list[int] = []
        self._owner_changes: dict[int, list[int]] = {}   # bno -> [old owner, new owner]
        self._settling = False
        self.reserve = max(POOL_HIGH * 2, vol.total_blocks // 100)
        self.dup = vol.dup
        # node blocks freed while the pool's array was full: given back to
        # free space at the next settle (which comes before any commit)
        self._overflow: list[tuple[int, int]] = []
        self._rotor = 0
        self._trusted_s: list[int] = []      # free ranges known not to be owned:
        self._trusted_e: list[int] = []      # sorted, disjoint [s, e)
        # free extents by size: sorted (length, start), None until first needed
        self._by_size: list[tuple[int, int]] | None = None
        self._size_undo: list[tuple[bool, int, int]] = []   # (added, length, start) this op
        # speculative preallocation: ino -> (start, end) of free blocks held for it
        self._held: dict[int, tuple[int, int]] = {}

    # ---- counters -------------------------------------------------------------
    @property
    def free_blocks(self) -> int:
        return self._free_n.item(0)

    def _add_free(self, d: int) -> None:
        self._free_n[0] = self._free_n.item(0) + d

    def available(self) -> int:
        """Blocks an ordinary allocation may still take."""
        return max(0, self.free_blocks - self.reserve)

    def save_state(self):
        """What rollback needs: busy extents are only ever added during an
        operation, so remembering the ones added since is enough (copying
        the lists made every operation cost O(blocks freed since commit))."""
        self._busy_added = []
        self._size_undo = []
        return ({k: list(v) for k, v in self._owner_changes.items()}, list(self._overflow),
                dict(self._held) if self._held else {})

    def restore_state(self, state) -> None:
        for start in reversed(getattr(self, "_busy_added", [])):
            i = bisect.bisect_left(self._busy_s, start)
            while i < len(self._busy_s) and self._busy_s[i] == start:
                del self._busy_s[i]
                del self._busy_e[i]
                break
        self._busy_added = []
        for added, n, start in reversed(self._size_undo):
            if added is None:
                self._by_size = None
                break
            if added:
                self._size_del(start, n, undo=False)
            else:
                self._size_add(start, n, undo=False)
        self._size_undo = []
        self._owner_changes, self._overflow, self._held = state

    def has_busy(self) -> bool:
        """Are blocks freed by the running transaction waiting for its commit?"""
        return bool(self._busy_s)

    def busy_blocks(self) -> int:
        """How many free blocks cannot be handed out before the next commit."""
        return sum(e - s for s, e in zip(self._busy_s, self._busy_e))

    def clear_busy(self) -> None:
        """The freeing transaction is durable: busy blocks may be reused."""
        self._busy_s.clear()
        self._busy_e.clear()

    def _first_idle(self, s: int, e: int) -> tuple[int, int] | None:
        """The first sub-range of [s, e) that is not busy."""
        if not self._busy_s:
            return (s, e)
        while s < e:
            i = bisect.bisect_right(self._busy_s, s) - 1
            # any busy range starting at or before s that covers s?
            covered = False
            for k in range(max(0, i - 8), min(len(self._busy_s), i + 1)):
                if self._busy_s[k] <= s < self._busy_e[k]:
                    s = self._busy_e[k]
                    covered = True
            if covered:
                continue
            j = bisect.bisect_left(self._busy_s, s)
            nxt = self._busy_s[j] if j < len(self._busy_s) else e
            return (s, min(e, nxt))
        return None

    # ---- data extents ---------------------------------------------------------
    def alloc(self, want: int, goal: int = 0, *, use_reserve: bool = False,
              minlen: int = 1, owner: int = 0, spec: int = 0) -> tuple[int, int]:
        """Allocate between `minlen` and `want` contiguous blocks: at `goal`
        if free, else best fit by size near it.  `owner` (an inode) may use
        the blocks held for it; `spec` > 0 (it appends) holds up to that
        many free blocks after the ones allocated for its next append.
        Returns (start, count)."""
        avail = self.free_blocks if use_reserve else self.available()
        if avail < minlen or avail <= 0:
            raise NoSpace("no space left on device")
        want = min(want, avail)
        got = self._fit(want, goal, minlen, owner, spec)
        if got is None:
            raise NoSpace("no space left on device (free space is busy until the next commit)")
        s, n, rec = got
        self._take(s, n, rec)
        self._after_take(s, n, owner, spec, rec[0] + rec[1])
        return s, n

    def _idle_pieces(self, s: int, e: int):
        while s < e:
            idle = self._first_idle(s, e)
            if idle is None:
                return
            yield idle
            s = idle[1]

    def _find(self, want: int, goal: int, minlen: int = 1, owner: int | None = None):
        """(start, count, the free record holding them) or None: the first
        idle blocks at or after `goal`, then from the start (the reserve
        pool's way, and the last resort of data allocations).  With
        `owner` not None, blocks held for other files are passed over."""
        tree = self.free_tree
        pieces = self._idle_pieces if owner is None else \
            (lambda a, b: self._usable_pieces(a, b, owner))
        if goal:
            r = tree.last_le((goal,))
            if r and r[0] + r[1] > goal:
                for a, b in pieces(goal, r[0] + r[1]):
                    if b - a >= minlen:
                        return a, min(want, b - a), r
        for start in ((goal,), None) if goal else (None,):
            for s, n in tree.scan(lo=start):
                if n < minlen:
                    continue
                for a, b in pieces(s, s + n):
                    if b - a >= minlen:
                        return a, min(want, b - a), (s, n)
        return None

    # ---- best fit -------------------------------------------------------------
    def _fit(self, want: int, goal: int, minlen: int, owner: int, spec: int):
        """Data allocation: (start, count, record) or None.  The blocks at
        `goal` if free (a file continuing where it ends); else the smallest
        free extent that holds want + spec, then want, nearest the goal
        among equals; else the largest; blocks held for other files last."""
        tree = self.free_tree
        if goal:
            r = tree.last_le((goal,))
            if r and r[0] + r[1] > goal:
                a, b = next(self._usable_pieces(goal, r[0] + r[1], owner), (0, 0))
                if a == goal and b - a >= minlen:
                    return a, min(want, b - a), r
        sizes = [want + spec, want] if spec else [want]
        for size in sizes:
            got = self._smallest(size, goal, owner)
            if got:
                return got[0], want, got[1]
        got = self._largest(minlen, owner)
        if got:
            return got[0], min(want, got[2]), got[1]
        got = self._find(want, goal, minlen, owner)
        if got is not None:
            return got
        return self._find(want, goal, minlen)     # (what is held for others, if nothing else)

    def _sizes(self) -> list[tuple[int, int]]:
        if self._by_size is None:
            self._by_size = sorted((n, s) for s, n in self.free_tree.scan())
            # (built mid-operation, it holds changes a rollback takes back
            # but has no undo for: rebuilt then)
            self._size_undo.append((None, 0, 0))
        return self._by_size

    def _size_add(self, s: int, n: int, undo: bool = True) -> None:
        if self._by_size is not None:
            bisect.insort(self._by_size, (n, s))
            if undo:
                self._size_undo.append((True, n, s))

    def _size_del(self, s: int, n: int, undo: bool = True) -> None:
        idx = self._by_size
        if idx is not None:
            i = bisect.bisect_left(idx, (n, s))
            if i < len(idx) and idx[i] == (n, s):
                del idx[i]
                if undo:
                    self._size_undo.append((False, n, s))
            else:                           # (out of step: rebuilt when next needed)
                self._by_size = None

    def _entry(self, n: int, s: int):
        """The free record of index entry (n, s), or None if the tree has
        another (then the index is rebuilt)."""
        r = self.free_tree.last_le((s,))
        if r is None or r[0] != s or r[1] != n:
            log.warning("free-space size index out of step at %d+%d: rebuilt", s, n)
            self._by_size = None
            return None
        return r

    def _smallest(self, size: int, goal: int, owner: int):
        """(start, record) of `size` usable blocks in the smallest free
        extent that has them, nearest `goal` among extents of that size."""
        idx = self._sizes()
        i = bisect.bisect_left(idx, (size, 0))
        tries = 0
        while i < len(idx) and tries < FIT_TRIES:
            n = idx[i][0]
            j = bisect.bisect_left(idx, (n + 1, 0))       # [i, j): extents of length n
            k = bisect.bisect_left(idx, (n, goal), i, j)
            # nearest the goal first: alternate after and before it
            order = []
            lo, hi = k - 1, k
            while (lo >= i or hi < j) and len(order) < FIT_TRIES - tries:
                if hi < j:
                    order.append(hi)
                    hi += 1
                if lo >= i:
                    order.append(lo)
                    lo -= 1
            for m in order:
                tries += 1
                _, s = idx[m]
                for a, b in self._usable_pieces(s, s + n, owner):
                    if b - a >= size:
                        r = self._entry(n, s)
                        return (a, r) if r else None
            i = j
        return None

    def _largest(self, minlen: int, owner: int):
        """(start, record, usable length) of the most usable blocks in one of
        the largest free extents."""
        idx = self._sizes()
        best = None
        for m in range(len(idx) - 1, max(-1, len(idx) - 1 - FIT_TRIES), -1):
            n, s = idx[m]
            if best and n <= best[2]:
                break
            for a, b in self._usable_pieces(s, s + n, owner):
                if b - a >= minlen and (best is None or b - a > best[2]):
                    best = (a, (n, s), b - a)
        if best is None:
            return None
        r = self._entry(*best[1])
        return (best[0], r, best[2]) if r else None

    # ---- blocks held for appending files ---------------------------------------
    def _usable_pieces(self, s: int, e: int, owner: int):
        """The idle sub-ranges of [s, e) not held for a file other than `owner`."""
        held = [(a, b) for o, (a, b) in self._held.items() if o != owner and a < e and b > s]
        if not held:
            yield from self._idle_pieces(s, e)
            return
        held.sort()
        for a, b in self._idle_pieces(s, e):
            for ha, hb in held:
                if hb <= a or ha >= b:
                    continue
                if ha > a:
                    yield a, ha
                a = max(a, hb)
                if a >= b:
                    break
            if a < b:
                yield a, b

    def _after_take(self, s: int, n: int, owner: int, spec: int, free_end: int = 0) -> None:
        """[s, s+n) was allocated (from a free extent that ended at
        `free_end`): no held range covers it any more; an appending owner
        holds the free blocks after it."""
        e = s + n
        for o, (a, b) in list(self._held.items()):
            if a < e and b > s and not (o == owner and spec):
                if a >= s:
                    del self._held[o]       # (its file cannot continue in place now)
                else:
                    self._held[o] = (a, s)
        if not (owner and spec):
            return
        self._held.pop(owner, None)
        if free_end <= e:
            return                          # the blocks after are not free
        hold_end = min(free_end, e + spec)
        for a, _ in self._held.values():
            if e <= a < hold_end:
                hold_end = a
        j = bisect.bisect_right(self._busy_s, e - 1)
        if j > 0 and self._busy_e[j - 1] > e:
            return
        if j < len(self._busy_s):
            hold_end = min(hold_end, self._busy_s[j])
        if hold_end > e:
            if len(self._held) >= PREALLOC_FILES:
                del self._held[next(iter(self._held))]
            self._held[owner] = (e, hold_end)

    def prealloc_for(self, blocks: int) -> int:
        """How many blocks to hold after a file growing to `blocks` blocks:
        as many as it has (doubling), at most PREALLOC_MAX, none for a small
        file or when space is low."""
        if blocks < PREALLOC_MIN:
            return 0
        return max(0, min(blocks, PREALLOC_MAX, self.available() // 16))

    def release(self, ino: int) -> None:
        """Forget the blocks held for file `ino` (last close, unlink,
        truncate): they are free, for anyone."""
        self._held.pop(ino, None)

    def held(self, ino: int) -> tuple[int, int] | None:
        """The free blocks [start, end) held for file `ino`, if any."""
        return self._held.get(ino)

    # ---- trusting the free-space tree ---------------------------------------------
    def _is_trusted(self, s: int, e: int) -> bool:
        i = bisect.bisect_right(self._trusted_s, s) - 1
        return i >= 0 and self._trusted_e[i] >= e

    def _trust(self, s: int, e: int) -> None:
        ts, te = self._trusted_s, self._trusted_e
        i = bisect.bisect_left(te, s)
        j = bisect.bisect_right(ts, e)
        if i < j:
            s, e = min(s, ts[i]), max(e, te[j - 1])
        ts[i:j] = [s]
        te[i:j] = [e]

    def _verify_free(self, rs: int, rn: int) -> None:
        """A free extent read from the image: the rmap must own none of it
        (pending changes included: blocks freed by the running transaction
        are free while their rmap records wait for the commit)."""
        if self.rmap.enabled:
            owned = self.rmap.owners(rs, rs + rn - 1) if rn else []
            if owned:
                b, owner = owned[0][0], owned[0][1]
                raise Corrupted(rs, f"free-space tree lists blocks {rs}+{rn} as free, but block"
                                    f" {max(b, rs)} belongs to {owner_name(owner)}")
        self._trust(rs, rs + rn)

    def verify_pool(self) -> None:
        """At open: every pool block must be the pool's in the rmap, and
        nobody else's."""
        if not self.rmap.enabled:
            return
        for b, partner in self.pool_records():
            owners = self.rmap.tree.overlaps(b, b)
            if b <= 0 or b >= self.vol.total_blocks - 1 or \
                    [(r[0], r[1], r[2], r[3]) for r in owners] != [(b, OWN_AG, partner, 1)]:
                raise Corrupted(b, f"reserve pool block {b} is not the pool's in the rmap")

    def _take(self, s: int, n: int, r=None) -> None:
        """Remove [s, s+n) from the free-space tree (it must be free).  `r`,
        if the caller has it, is the free record holding [s, s+n)."""
        tree = self.free_tree
        if r is None:
            r = tree.last_le((s,))
        if r is None or r[0] + r[1] < s + n:
            raise Corrupted(0, f"allocating blocks {s}+{n} that are not free")
        if not self._is_trusted(s, s + n):
            self._verify_free(r[0], r[1])
        self.vol.pmem.back(s, n)            # (BackingFull before anything changed)
        rs, rl = r
        re = rs + rl
        if rs == s:
            if re > s + n:      # (the next free extent starts after re)
                tree.rekey((rs,), (s + n, re - s - n))
            else:
                tree.discard((rs,))
        else:
            tree.update((rs, s - rs))
            if re > s + n:
                tree.insert((s + n, re - s - n))
        self._add_free(-n)
        self._size_del(rs, rl)
        if rs < s:
            self._size_add(rs, s - rs)
        if re > s + n:
            self._size_add(s + n, re - s - n)

    def free(self, s: int, n: int, *, busy: bool = True) -> None:
        """Return [s, s+n) to free space (merging with neighbours)."""
        tree = self.free_tree
        fs_, fe_ = s, s + n
        e = s + n
        prev = tree.last_le((s,))
        if prev and prev[0] + prev[1] > s:
            raise Corrupted(s, f"freeing blocks {s}+{n}: already free ({prev[0]}+{prev[1]})")
        nxt = None
        for r in tree.scan(lo=(s,)):
            nxt = r
            break
        if nxt and nxt[0] < e:
            raise Corrupted(s, f"freeing blocks {s}+{n}: overlaps free extent {nxt[0]}+{nxt[1]}")
        if prev and prev[0] + prev[1] == s:
            s = prev[0]
            self._size_del(*prev)
            if nxt and nxt[0] == e:
                tree.discard(nxt[:1])
                self._size_del(*nxt)
                e = nxt[0] + nxt[1]
            tree.update((s, e - s))
        elif nxt and nxt[0] == e:
            tree.discard(nxt[:1])
            self._size_del(*nxt)
            e = nxt[0] + nxt[1]
            tree.insert((s, e - s))
        else:
            tree.insert((s, n))
        self._size_add(s, e - s)
        self._add_free(n)
        self._trust(fs_, fe_)
        if busy:
            i = bisect.bisect_left(self._busy_s, fs_)
            self._busy_s.insert(i, fs_)
            self._busy_e.insert(i, fe_)
            added = getattr(self, "_busy_added", None)
            if added is not None:
                added.append(fs_)

    # ---- btree nodes (reserve pool) ------------------------------------------
    # With duplicated metadata (dup) the pool holds pairs: entries 2i and
    # 2i+1 are a block and its twin, handed out and given back together;
    # the rmap records each with the other as its offset, so that either
    # names its twin (poison.py heals one from the other).
    def _pool_count(self) -> int:
        return self._pool_n.item(0)

    def node_alloc(self, tree_id: int) -> tuple[int, int]:
        """A block for a new node of tree `tree_id`, and its twin (0 without
        dup)."""
        c = self._pool_count()
        step = 2 if self.dup else 1
        if c < step:
            raise NoSpace("btree reserve pool exhausted")
        pool = self.sb["pool"]
        bno, twin = (int(pool[c - 2]), int(pool[c - 1])) if self.dup else (int(pool[c - 1]), 0)
        self.sb["pool_count"] = c - step
        owner = own_tree(tree_id)
        if owner != OWN_AG:
            self._queue_owner(bno, OWN_AG, owner, twin)
            if twin:
                self._queue_owner(twin, OWN_AG, owner, bno)
        return bno, twin

    def node_free(self, tree_id: int, bno: int, twin: int = 0) -> None:
        c = self._pool_count()
        step = 2 if self.dup else 1
        owner = own_tree(tree_id)
        if c + step > len(self.sb["pool"]):
            self._overflow.append((bno, twin))
            if owner != OWN_AG:
                self._queue_owner(bno, owner, OWN_AG, twin)
                if twin:
                    self._queue_owner(twin, owner, OWN_AG, bno)
            return
        self.sb["pool"][c] = bno
        if self.dup:
            self.sb["pool"][c + 1] = twin
        self.sb["pool_count"] = c + step
        owner = own_tree(tree_id)
        if owner != OWN_AG:
            self._queue_owner(bno, owner, OWN_AG, twin)
            if twin:
                self._queue_owner(twin, owner, OWN_AG, bno)

    def _queue_owner(self, bno: int, old: int, new: int, offset: int = 0) -> None:
        ch = self._owner_changes.get(bno)
        if ch is None:
            self._owner_changes[bno] = [old, new, offset]
        else:
            ch[1] = new

    def settle(self) -> None:
        """Apply queued rmap owner changes and bring the pool back to size."""
        if self._settling or (not self._owner_changes and not self._overflow
                              and POOL_LOW <= self._pool_n.item(0) <= POOL_HIGH):
            return
        self._settling = True
        try:
            while self._owner_changes:
                changes, self._owner_changes = self._owner_changes, {}
                for bno, (old, new, offset) in changes.items():
                    if old != new:
                        self.rmap.change_owner(bno, old, new, offset)
            while self._overflow:
                pairs, self._overflow = self._overflow, []
                self._give_back([(b, t) for b, t in pairs] + [(t, b) for b, t in pairs if t])
            c = self._pool_count()
            if c < POOL_LOW:
                self._refill()
            elif c > POOL_HIGH:
                self._drain()
        finally:
            self._settling = False

    def _add_to_pool(self, b: int, partner: int = 0) -> None:
        c = self._pool_count()
        self.sb["pool"][c] = b
        self.sb["pool_count"] = c + 1
        self.rmap.map_meta(b, OWN_AG, offset=partner)

    def _take_run(self, want: int, goal: int) -> list[int] | None:
        got = self._find(want, goal, owner=0) or self._find(want, goal)
        if got is None:
            return None
        s, n, rec = got
        self._take(s, n, rec)
        self._after_take(s, n, 0, 0)
        return list(range(s, s + n))

    def _refill(self) -> None:
        while self._pool_count() < POOL_TARGET:
            need = POOL_TARGET - self._pool_count()
            if self.free_blocks <= 0:
                if self._pool_count() == 0:
                    raise NoSpace("no space left for metadata")
                return
            if not self.dup:
                run = self._take_run(need, self._rotor)
                if run is None:
                    return
                self._rotor = run[-1] + 1
                for b in run:
                    self._add_to_pool(b)
                continue
            # pairs: the blocks near the rotor, their twins half a device away
            firsts = self._take_run(max(1, need // 2), self._rotor)
            if firsts is None:
                return
            self._rotor = firsts[-1] + 1
            twins: list[int] = []
            goal = (firsts[0] + self.vol.total_blocks // 2) % self.vol.total_blocks
            while len(twins) < len(firsts):
                run = self._take_run(len(firsts) - len(twins), goal)
                if run is None:
                    break
                twins += run
                goal = run[-1] + 1
            for b in firsts[len(twins):]:          # no twin found: give back
                self.free(b, 1, busy=False)
            if not twins:
                return
            for b, t in zip(firsts, twins):
                self._add_to_pool(b, t)
                self._add_to_pool(t, b)

    def _drain(self) -> None:
        """Give the pool's excess back to free space, adjacent blocks as
        one extent (a free-space tree change per run, not per block)."""
        while self._pool_count() > POOL_TARGET:
            c = self._pool_count()
            pool = self.sb["pool"]
            excess = [(int(pool[i]), self._partner(i)) for i in range(POOL_TARGET, c)]
            self.sb["pool_count"] = POOL_TARGET
            self._give_back(excess)

    def _give_back(self, blocks: list[tuple[int, int]]) -> None:
        """Pool blocks (block, twin) to free space, adjacent blocks as one
        extent (a free-space tree change per run, not per block)."""
        for bno, partner in blocks:
            self.rmap.unmap_meta(bno, OWN_AG, offset=partner)
            self.vol.journal.discard(bno)
        excess = sorted(b for b, _ in blocks)
        start = prev = excess[0]
        for bno in excess[1:] + [None]:
            if bno != prev + 1:
                self.free(start, prev + 1 - start)
                start = bno
            prev = bno

    def _partner(self, i: int) -> int:
        """The twin of pool entry i (dup), else 0."""
        if not self.dup:
            return 0
        return int(self.sb["pool"][i ^ 1])

    def pool_blocks(self) -> list[int]:
        return [int(b) for b in self.sb["pool"][:self._pool_count()]]

    def pool_records(self) -> list[tuple[int, int]]:
        """(block, its twin or 0) for every pool block: their rmap records
        are (block, OWN_AG, twin)."""
        return [(int(self.sb["pool"][i]), self._partner(i)) for i in range(self._pool_count())]
