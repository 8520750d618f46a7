"""One generic B+tree over device blocks, used by every index.

A tree is described by a `TreeSpec` (record dtype, number of leading key
fields, magic, and for trees whose records overlap, like the rmap, the
start/length fields that give each record's high key).  This module never
names a field of any particular tree.

Nodes are 4 KiB blocks: a 64-byte header (format.NODE_HDR_DTYPE) followed by
packed records.  Leaves hold records; internal nodes hold entries of
(key fields..., [hi,] child).  Each entry's key is a lower bound of every key
in its child's subtree and greater than every key in the previous child's
subtree; for overlapping trees `hi` is the largest record end (start+len-1)
in the subtree, so an interval query prunes whole subtrees (XFS's
"overlapped" btrees keep the same low/high keys).

Records are numpy structured arrays viewed on the block; shifting is one
move of bytes.  Every key field is a little-endian u64 at a multiple of 8
bytes in a record whose size is a multiple of 8, so each key field (and an
entry's child and twin) is also a strided memoryview of u64 over the block
(`Node.cols`): searching a node bisects those columns in C, one field after
the other, with nothing decoded, and the columns follow every change of
the bytes by themselves.  Each tree keeps its nodes (`_inner`, `_cache`:
bno -> Node), and a cached node is used only while the journal still hands
out the very buffer it views (a shadow, or the mapping for a clean block),
so a commit, a rollback or a new shadow makes a new one.  Callers pass keys
and records as tuples of Python ints/bytes and get tuples back.  Node blocks
come from and return to the allocator passed in (`node_alloc`, `node_free`);
all writes go through the journal's shadows.

Tree-wide work sits at the end: `walk` (every node verified, with its
bounds; unreadable nodes reported, not raised), `node_blocks`,
`query_range` (a callback that can stop the walk; `overlaps` on it),
`bulk_load` with `level_sizes` (whole sealed nodes written outside the
journal: the one place besides the journal's path that formats a node),
and `find_nodes` (a scan of the device for node headers).  check, repair,
poison and the tests use these; nothing outside this module reads a node.
"""

import errno
import os
import struct
import sys
from bisect import bisect_left, bisect_right
from collections import OrderedDict, namedtuple

import numpy as np

from .errors import Corrupted, MediaError
from .format import BLOCK_SIZE, NODE_HDR_DTYPE, NODE_HDR_SIZE, TREE_MAGICS, TREE_NAMES
from .checksum import seal, sealed_ok

MAX_HEIGHT = 16
_LEVEL_NRECS = struct.Struct("<HI")     # format.NODE_HDR_DTYPE: level u16 at 10, nrecs u32 at 12
_TWIN = struct.Struct("<Q")             # format.NODE_HDR_DTYPE: twin u64 at 32
_NRECS = struct.Struct("<I")
_INT_FORMATS = {("u", 1): "B", ("u", 2): "H", ("u", 4): "I", ("u", 8): "Q",
                ("i", 1): "b", ("i", 2): "h", ("i", 4): "i", ("i", 8): "q"}
NODE_CACHE_MAX = 32768      # leaves kept per tree (about 1.1 KB of views each)
INNER_CACHE_MAX = 65536     # decoded internal nodes kept per tree (all, in practice)


class TreeSpec:
    """What the generic B+tree needs to know about one tree."""

    def __init__(self, tree_id: int, rec_dtype: np.dtype, nkey: int,
                 overlap: tuple[str, str] | None = None, *, record=None, check=None):
        self.tree_id = tree_id
        # a namedtuple type of the record's fields (for code that names them),
        # and check(record, total_blocks) -> what is wrong with it, or None
        self.record = record or namedtuple("Record", rec_dtype.names)
        self.check = check
        # fields that are arrays (numpy's tolist() gives them as arrays,
        # which do not compare as values): walk() hands them out as tuples
        self.array_fields = [i for i, n in enumerate(rec_dtype.names)
                             if rec_dtype.fields[n][0].shape]
        self.name = TREE_NAMES[tree_id]
        self.magic = TREE_MAGICS[tree_id]
        self.rec_dtype = rec_dtype
        names = rec_dtype.names
        self.key_fields = names[:nkey]
        self.nkey = nkey
        self.overlap = overlap
        fields = [(n, rec_dtype.fields[n][0]) for n in self.key_fields]
        # key view of a record: the key fields at their offsets, record itemsize
        self.rec_key_view = np.dtype({
            "names": list(self.key_fields),
            "formats": [f[1] for f in fields],
            "offsets": [rec_dtype.fields[n][1] for n in self.key_fields],
            "itemsize": rec_dtype.itemsize})
        self.key_dtype = np.dtype(fields)
        ent = list(fields)
        if overlap:
            ent.append(("hi", "<u8"))
        ent.append(("child", "<u8"))
        ent.append(("twin", "<u8"))     # the child's second copy (dup metadata), else 0
        self.ent_dtype = np.dtype(ent)
        self.ent_key_view = np.dtype({
            "names": list(self.key_fields),
            "formats": [f[1] for f in fields],
            "offsets": [self.ent_dtype.fields[n][1] for n in self.key_fields],
            "itemsize": self.ent_dtype.itemsize})
        self.leaf_cap = (BLOCK_SIZE - NODE_HDR_SIZE) // rec_dtype.itemsize
        self.node_cap = (BLOCK_SIZE - NODE_HDR_SIZE) // self.ent_dtype.itemsize
        assert self.leaf_cap >= 4 and self.node_cap >= 4
        self.leaf_third = self.leaf_cap // 3
        self.node_third = self.node_cap // 3
        self.single = nkey == 1
        self.kf0 = self.key_fields[0]
        self.rec_struct = _int_struct(rec_dtype)
        self.ent_struct = _int_struct(self.ent_dtype)
        # the u64 columns (Node.cols): (record stride, key field indexes),
        # (entry stride, key field indexes, child index, twin index)
        self.rec_cols = (rec_dtype.itemsize // 8, _u64_columns(rec_dtype, self.key_fields))
        self.ent_cols = (self.ent_dtype.itemsize // 8,
                         _u64_columns(self.ent_dtype, self.key_fields),
                         self.ent_dtype.fields["child"][1] // 8,
                         self.ent_dtype.fields["twin"][1] // 8)
        # left(cols, k, lo, hi) / right(...): bisect_left / bisect_right of
        # a decoded key (int, or a tuple that may be a prefix) in columns
        if nkey == 1:
            self.left, self.right = _left1, _right1
        else:
            self.left, self.right = _left_n, _right_n


def _u64_columns(dt: np.dtype, names) -> tuple:
    """The u64 index of each named field in a record of `dt` seen as u64s;
    a field that is not a little-endian u64 at a multiple of 8 (or a record
    whose size is not one) cannot be a column: ValueError."""
    if dt.itemsize % 8 or sys.byteorder != "little":
        raise ValueError(f"{dt}: records of whole u64 words on a little-endian host only")
    out = []
    for name in names:
        f, off = dt.fields[name][:2]
        if f.kind != "u" or f.itemsize != 8 or f.byteorder == ">" or off % 8:
            raise ValueError(f"key field {name} of {dt} is not a little-endian u64 at a"
                             " multiple of 8 bytes")
        out.append(off // 8)
    return tuple(out)


def _left1(cols, k, lo, hi):
    return bisect_left(cols[0], k, lo, hi)


def _right1(cols, k, lo, hi):
    return bisect_right(cols[0], k, lo, hi)


def _narrow(cols, k, lo, hi):
    """(lo, hi): the records of [lo, hi) equal to k in all but k's last
    field (records are sorted, so they are one run), each field bisected
    in its column inside the run of the fields before it."""
    for f in range(len(k) - 1):
        col, v = cols[f], k[f]
        lo = bisect_left(col, v, lo, hi)
        hi = bisect_right(col, v, lo, hi)
        if lo == hi:
            break
    return lo, hi


def _left_n(cols, k, lo, hi):
    if len(k) == 2:             # (the usual case, inline)
        c0, v = cols[0], k[0]
        if not (lo < hi and c0[lo] == v == c0[hi - 1]):    # (often all of a leaf)
            lo = bisect_left(c0, v, lo, hi)
            hi = bisect_right(c0, v, lo, hi)
    else:
        lo, hi = _narrow(cols, k, lo, hi)
    return bisect_left(cols[len(k) - 1], k[-1], lo, hi) if lo < hi else lo


def _right_n(cols, k, lo, hi):
    if len(k) == 2:
        c0, v = cols[0], k[0]
        if not (lo < hi and c0[lo] == v == c0[hi - 1]):
            lo = bisect_left(c0, v, lo, hi)
            hi = bisect_right(c0, v, lo, hi)
    else:
        lo, hi = _narrow(cols, k, lo, hi)
    return bisect_right(cols[len(k) - 1], k[-1], lo, hi) if lo < hi else lo


def _int_struct(dt: np.dtype) -> struct.Struct | None:
    """A struct that unpacks one record of `dt` to the tuple numpy's
    .item() gives, when every field is a little-endian integer (several
    times faster than .item()); None otherwise."""
    fmt, at = "<", 0
    for name in dt.names:
        f, off = dt.fields[name][:2]
        code = _INT_FORMATS.get((f.kind, f.itemsize))
        if code is None or f.byteorder == ">" or off < at:
            return None
        fmt += "x" * (off - at) + code
        at = off + f.itemsize
    return struct.Struct(fmt + "x" * (dt.itemsize - at))


class Node:
    """A view of one node block: header fields, its key columns (and an
    internal node's child and twin columns), and its record array."""

    __slots__ = ("bno", "twin", "buf", "level", "n", "cap", "dt", "cols", "child", "twinc",
                 "token", "mv", "_recs")

    def __init__(self, spec: TreeSpec, bno: int, buf: np.ndarray, token):
        self.bno = bno
        self.token = token        # the journal's shadow this views, or None
        # header fields read straight from the bytes; a structured view costs more
        self.level, self.n = _LEVEL_NRECS.unpack_from(buf, 10)
        # the block holding this node's second copy (dup), or 0: from the
        # header, so that every write of the node knows where both go
        self.twin = _TWIN.unpack_from(buf, 32)[0]
        if self.level == 0:
            self.dt, self.cap = spec.rec_dtype, spec.leaf_cap
        else:
            self.dt, self.cap = spec.ent_dtype, spec.node_cap
        self._view(spec, buf)

    def _view(self, spec: TreeSpec, buf: np.ndarray) -> None:
        self.buf = buf
        mv = self.mv = memoryview(buf)
        words = mv[NODE_HDR_SIZE:NODE_HDR_SIZE + self.cap * self.dt.itemsize].cast("Q")
        if self.level == 0:
            stride, at = spec.rec_cols
            self.child = self.twinc = None
        else:
            stride, at, child, twin = spec.ent_cols
            self.child = words[child::stride]
            self.twinc = words[twin::stride]
        self.cols = tuple([words[i::stride] for i in at])
        self._recs = None

    @property
    def recs(self) -> np.ndarray:
        """The records (entries) as a numpy structured array on the block."""
        recs = self._recs
        if recs is None:
            recs = self._recs = self.buf[NODE_HDR_SIZE:NODE_HDR_SIZE + self.cap
                                         * self.dt.itemsize].view(self.dt)
        return recs

    def repoint(self, spec: TreeSpec, buf: np.ndarray) -> None:
        """Read the same bytes from `buf` instead (a committed shadow's
        block in place)."""
        self.token = None
        self._view(spec, buf)

    def set_n(self, n: int) -> None:
        self.n = n
        _NRECS.pack_into(self.mv, 12, n)


def _shift(node: Node, a: int, b: int, by: int) -> None:
    """Move records [a, b) of a node by `by` places, as bytes through a
    memoryview (which moves overlapping ranges right, several times faster
    than numpy's slice copy, itself faster than a structured one)."""
    sz = node.dt.itemsize
    mv = node.mv
    o = NODE_HDR_SIZE
    mv[o + (a + by) * sz:o + (b + by) * sz] = mv[o + a * sz:o + b * sz]


def touched_bound(shape: tuple, nrecs: int) -> int:
    """An upper bound of the nodes that changing `nrecs` records of a tree
    of `shape` (BTree.touch_shape) may dirty: no more leaves than the tree
    has and than records, plus splits and the internal levels."""
    if not nrecs:
        return 0
    leaves, node_third, leaf_third, levels = shape
    touched = nrecs if nrecs < leaves else leaves
    return touched + touched // node_third + nrecs // leaf_third + levels


class BTree:
    """Lookup, range query, insert, delete and update over one tree."""

    def __init__(self, spec: TreeSpec, journal, sb, alloc, verified: set):
        self.spec = spec
        self.j = journal
        self.sb = sb                  # numpy record of the in-core superblock
        self.alloc = alloc
        self.verified = verified      # block numbers whose checksum was verified
        self.tid = spec.tree_id
        self._cache: OrderedDict[int, Node] = OrderedDict()   # bno -> decoded leaf, oldest first
        self._inner: dict[int, Node] = {}     # bno -> decoded internal node
        self._roots = sb["roots"]
        self._roots2 = sb["roots2"]
        self._heights = sb["heights"]
        self.on_heal = None           # (bno, twin, tree name) -> None: a node mended from its twin
        self._nrecs = sb["nrecs"]
        self._bad = journal.pmem.bad.starts   # non-empty when the device has bad blocks

    # ---- root state (kept in the superblock) -------------------------------
    # (views of the superblock's arrays: a rollback restores them in place)
    @property
    def root(self) -> int:
        return self._roots.item(self.tid)

    @property
    def root_twin(self) -> int:
        return self._roots2.item(self.tid)

    @property
    def height(self) -> int:
        return self._heights.item(self.tid)

    @property
    def count(self) -> int:
        return self._nrecs.item(self.tid)

    def touch_shape(self) -> tuple:
        """What `touched_bound` needs to know of the tree as it is now:
        no more leaves than it has (nodes are at least a third full), and
        its height for the splits and internal levels.  Constant while
        the tree is not changed, so callers may keep it."""
        spec = self.spec
        return (self._nrecs.item(self.tid) // spec.leaf_third + 1, spec.node_third,
                spec.leaf_third, 2 * self._heights.item(self.tid) + 2)

    def _set_root(self, bno: int, height: int, twin: int = 0) -> None:
        self._roots[self.tid] = bno
        self._roots2[self.tid] = twin
        self._heights[self.tid] = height

    def _add_count(self, d: int) -> None:
        self._nrecs[self.tid] = self._nrecs.item(self.tid) + d

    # ---- node access --------------------------------------------------------
    def _node(self, bno: int, level: int, twin: int = 0) -> Node:
        """The node at `bno` (its second copy at `twin`, 0 if none): decoded
        and verified on first use; a copy that fails verification or sits on
        a poisoned range is mended from its twin (`_heal`) when it can be,
        or on a read-only device read from the twin each time."""
        try:
            return self._read_node(bno, level, twin)
        except Corrupted:
            if not twin or bno in self.j.dirty:
                raise
            if self.j.pmem.readonly:            # nothing may be written: read the twin
                return self._read_verified(bno, level, at=twin)
            if not self._heal(bno, twin, level):
                raise
            return self._read_node(bno, level, twin)

    def _read_node(self, bno: int, level: int, twin: int) -> Node:
        j = self.j
        shadow = j.dirty.get(bno)
        node = (self._inner if level else self._cache).get(bno)
        if node is None or node.token is not shadow:
            blk = j.read(bno)
            if bno not in self.verified and shadow is None:
                self._verify(bno, blk, level)
                self.verified.add(bno)
            node = Node(self.spec, bno, blk, shadow)
            self._remember(node)
        elif shadow is None and self._bad:
            j.read(bno)             # a poisoned block is an error even when decoded
        if node.level != level:
            raise Corrupted(bno, f"{self.spec.name} btree node has level {node.level},"
                                 f" expected {level}")
        return node

    def _heal(self, bno: int, twin: int, level: int) -> bool:
        """Mend node `bno` from its twin: if the twin verifies as that node,
        its bytes are stored over `bno` (a whole-block recovery write, which
        also clears a poisoned range) and made durable.  Both copies hold
        the last committed node (a commit writes them together; until its
        home flush the log restores both)."""
        pmem = self.j.pmem
        if twin >= pmem.nblocks or pmem.bad.first_bad(twin, 1) is not None:
            return False
        copy = pmem.block(twin)
        try:
            self._verify(bno, copy, level)
        except Corrupted:
            return False
        pmem.block(bno)[:] = copy
        pmem.flush([(bno, 1)])
        if pmem.bad.first_bad(bno, 1) is not None:
            pmem.bad.clear(bno, 1)
        self._forget_node(bno)
        self.verified.add(bno)
        if self.on_heal is not None:
            self.on_heal(bno, twin, self.spec.name)
        return True

    def heal(self, bno: int, twin: int) -> bool:
        """Mend a node of this tree from its twin (a poison event on it);
        True if the twin was good.  Its level is read from the twin."""
        pmem = self.j.pmem
        if twin >= pmem.nblocks or pmem.bad.first_bad(twin, 1) is not None:
            return False
        level = _LEVEL_NRECS.unpack_from(pmem.block(twin), 10)[0]
        return self._heal(bno, twin, level)

    def _remember(self, node: Node) -> None:
        """Keep a decoded node: internal nodes (about one per hundred
        leaves, on every path) all; leaves up to NODE_CACHE_MAX, the
        oldest making room."""
        if node.level:
            inner = self._inner
            if len(inner) >= INNER_CACHE_MAX and node.bno not in inner:
                inner.clear()
            inner[node.bno] = node
            return
        cache = self._cache
        if len(cache) >= NODE_CACHE_MAX and node.bno not in cache:
            cache.popitem(last=False)           # the oldest decoded leaf
        cache[node.bno] = node

    def _forget_node(self, bno: int) -> None:
        self._cache.pop(bno, None)
        self._inner.pop(bno, None)

    def committed(self, shadows: dict) -> None:
        """After a commit wrote `shadows` (bno -> block image) in place:
        the nodes decoded from them stay decoded and read the blocks in
        place, instead of being decoded again on their next use."""
        pmem, spec = self.j.pmem, self.spec
        for cache in (self._cache, self._inner):
            if not cache:
                continue
            for bno, shadow in shadows.items():
                node = cache.get(bno)
                if node is not None and node.token is shadow:
                    node.repoint(spec, pmem.block(bno))

    def drop_cache(self) -> None:
        """Forget every decoded node (before the mapping goes away, or after
        nodes were rewritten behind the tree's back, as repair does)."""
        self._cache.clear()
        self._inner.clear()

    def _verify(self, bno: int, blk: np.ndarray, level: int | None) -> None:
        spec = self.spec
        if blk.size != BLOCK_SIZE:
            raise Corrupted(bno, f"{spec.name} btree node pointer beyond the end of the device")
        hdr = blk[:NODE_HDR_SIZE].view(NODE_HDR_DTYPE)[0]
        if bytes(hdr["magic"]) != spec.magic:
            raise Corrupted(bno, f"bad magic {bytes(hdr['magic'])!r} for a {spec.name}"
                                 f" btree node (expected {spec.magic!r})")
        if not sealed_ok(blk):
            raise Corrupted(bno, f"{spec.name} btree node checksum mismatch")
        if int(hdr["blkno"]) != bno:
            raise Corrupted(bno, f"{spec.name} btree node claims to be block {int(hdr['blkno'])}")
        if int(hdr["tree_id"]) != spec.tree_id:
            raise Corrupted(bno, f"node belongs to tree {int(hdr['tree_id'])}, not {spec.name}")
        lv = int(hdr["level"])
        cap = spec.leaf_cap if lv == 0 else spec.node_cap
        if int(hdr["nrecs"]) > cap or lv >= MAX_HEIGHT:
            raise Corrupted(bno, f"{spec.name} btree node has {int(hdr['nrecs'])} records"
                                 f" (capacity {cap}) at level {lv}")

    def _w(self, node: Node) -> Node:
        """The writable version of a node.  Always asks the journal, which
        shadows the block and records how to undo the current operation."""
        blk = self.j.write(node.bno, node.twin)
        if blk is not node.buf:
            # the same node on the shadow (same bytes): views rebuilt in place
            node.token = blk
            node._view(self.spec, blk)
        return node

    def _new_node(self, level: int) -> Node:
        bno, twin = self.alloc.node_alloc(self.tid)
        blk = self.j.new(bno, twin)
        hdr = blk[:NODE_HDR_SIZE].view(NODE_HDR_DTYPE)[0]
        hdr["magic"] = self.spec.magic
        hdr["tree_id"] = self.tid
        hdr["level"] = level
        hdr["nrecs"] = 0
        hdr["blkno"] = bno
        hdr["twin"] = twin
        node = Node(self.spec, bno, blk, blk)
        self._remember(node)
        return node

    def _free_node(self, node: Node) -> None:
        self._forget_node(node.bno)
        self.j.discard(node.bno)
        self.verified.discard(node.bno)
        self.alloc.node_free(self.tid, node.bno, node.twin)

    # ---- key helpers --------------------------------------------------------
    def _search(self, node: Node, key, side: str) -> int:
        """Index of the first record >= key ('left') or > key ('right'),
        comparing lexicographically; key may be a prefix of the key fields
        (records that start with it count as equal to it)."""
        spec = self.spec
        k = int(key[0]) if spec.single else tuple(int(v) for v in key)
        find = spec.left if side == "left" else spec.right
        return find(node.cols, k, 0, node.n)

    def _key_at(self, node: Node, i: int) -> tuple:
        """The key of record (entry) i, as a tuple."""
        return tuple([c[i] for c in node.cols])

    def _decoded_at(self, node: Node, i: int):
        """The key of record (entry) i as decoded keys are (`_key`)."""
        cols = node.cols
        if self.spec.single:
            return cols[0][i]
        return tuple([c[i] for c in cols])

    # ---- descent ------------------------------------------------------------
    def _key(self, key):
        """A key as searches take it (int, or tuple of ints)."""
        return int(key[0]) if self.spec.single else tuple(map(int, key))

    def _leaf(self, k, path: list | None = None):
        """(leaf, index of the first record >= k) for a decoded key k; with
        `path`, every node on the way and the index taken is appended."""
        tid = self.tid
        bno = self._roots.item(tid)
        twin = self._roots2.item(tid)
        dirty, inner, bad = self.j.dirty, self._inner, self._bad
        right = self.spec.right
        for level in range(self._heights.item(tid) - 1, 0, -1):
            # the cached, clean-or-current case inline; everything else
            # (decode, verify, poison, level mismatch) in _node
            node = inner.get(bno)
            if node is None or node.token is not dirty.get(bno) or node.level != level or bad:
                node = self._node(bno, level, twin)
            i = right(node.cols, k, 0, node.n) - 1
            if i < 0:
                i = 0
            if path is not None:
                path.append([node, i])
            bno = node.child[i]
            twin = node.twinc[i]
        leaf = self._cache.get(bno)
        if leaf is None or leaf.token is not dirty.get(bno) or leaf.level or bad:
            leaf = self._node(bno, 0, twin)
        i = self.spec.left(leaf.cols, k, 0, leaf.n)
        if path is not None:
            path.append([leaf, i])
        return leaf, i

    def _child(self, node: Node, i: int) -> Node:
        """Child i of an internal node."""
        return self._node(node.child[i], node.level - 1, node.twinc[i])

    def _descend(self, key) -> list:
        """Path from root to leaf as [(node, index)]; the leaf index is the
        position of the first record >= key."""
        path = []
        self._leaf(self._key(key), path)
        return path

    # ---- queries ------------------------------------------------------------
    def lookup(self, key) -> tuple | None:
        """The record with exactly this key, or None."""
        if not self._heights.item(self.tid):
            return None
        k = self._key(key)
        leaf, i = self._leaf(k)
        if i < leaf.n:
            rec = self._record(leaf, i)
            if (rec[0] if self.spec.single else rec[:self.spec.nkey]) == k:
                return rec
        return None

    def _record(self, node: Node, i: int) -> tuple:
        """Record i of a leaf as a tuple (what numpy's .item() gives)."""
        st = self.spec.rec_struct
        if st is None:
            return node.recs[i].item()
        return st.unpack_from(node.mv, NODE_HDR_SIZE + i * st.size)

    def scan(self, lo=None, hi=None):
        """Records with lo <= key <= hi in key order (prefix keys allowed for
        hi: records whose key prefix equals hi are included).  A generator:
        do not modify the tree while it runs."""
        if not self.height:
            return
        if lo is None:
            path = self._leftmost_path()
            start = 0
        else:
            path = self._descend(lo)
            start = path[-1][1]
        while True:
            leaf = path[-1][0]
            n = leaf.n
            end = n if hi is None else self._search(leaf, hi, "right")
            if start < end:
                yield from leaf.recs[start:end].tolist()
            if end < n or not self._next_leaf(path):
                return
            start = 0

    def short_range(self, lo: tuple, hi: tuple) -> list:
        """scan(lo, hi) as a list, for full-length keys bounding a range
        that usually holds a record or two (a name's hash): one descent,
        no generator; a range that may go on past the leaf takes scan()."""
        if not self._heights.item(self.tid):
            return []
        leaf, i = self._leaf(self._key(lo))
        j = self.spec.right(leaf.cols, self._key(hi), i, leaf.n)
        if j < leaf.n:
            return [self._record(leaf, x) for x in range(i, j)]
        return list(self.scan(lo, hi))

    def around(self, key: tuple, hi: tuple):
        """(the record with the greatest key <= key, the records with
        key < k <= hi) for full-length keys, with one descent, when one
        leaf holds them all and the first exists; else None (ask last_le
        and scan): what a file's extent lookup needs, in its usual case."""
        if not self._heights.item(self.tid):
            return None
        k, khi = self._key(key), self._key(hi)
        path = []
        leaf, i = self._leaf(k, path)
        j = i if i < leaf.n and self._decoded_at(leaf, i) == k else i - 1
        if j < 0:
            return None
        stop = self.spec.right(leaf.cols, khi, j + 1, leaf.n)
        if stop >= leaf.n:
            limit = self._limit(path)       # the next leaf's keys start there
            if limit is not None and limit <= khi:
                return None
        rec = self._record
        return rec(leaf, j), [rec(leaf, x) for x in range(j + 1, stop)]

    def _leftmost_path(self) -> list:
        node = self._node(self.root, self.height - 1, self.root_twin)
        path = [[node, 0]]
        while node.level:
            node = self._child(node, 0)
            path.append([node, 0])
        return path

    def _next_leaf(self, path) -> bool:
        d = len(path) - 2
        while d >= 0 and path[d][1] + 1 >= path[d][0].n:
            d -= 1
        if d < 0:
            return False
        path[d][1] += 1
        for k in range(d, len(path) - 1):
            node, i = path[k]
            path[k + 1] = [self._child(node, i), 0]
        return True

    def _prev_leaf(self, path) -> bool:
        d = len(path) - 2
        while d >= 0 and path[d][1] == 0:
            d -= 1
        if d < 0:
            return False
        path[d][1] -= 1
        for k in range(d, len(path) - 1):
            node, i = path[k]
            child = self._child(node, i)
            path[k + 1] = [child, child.n - 1 if child.level else child.n]
        return True

    def last_le(self, key) -> tuple | None:
        """The record with the greatest key <= key, or None."""
        if not self.height:
            return None
        path = self._descend(key)
        leaf = path[-1][0]
        i = self._search(leaf, key, "right") - 1
        while i < 0:
            if not self._prev_leaf(path):
                return None
            leaf = path[-1][0]
            i = leaf.n - 1
        return self._record(leaf, i)

    def first(self) -> tuple | None:
        for r in self.scan():
            return r
        return None

    # ---- modification -------------------------------------------------------
    def insert(self, rec: tuple) -> None:
        """Add a record; its key must not be present."""
        spec = self.spec
        if not self._heights.item(self.tid):
            leaf = self._new_node(0)
            leaf.recs[0] = rec
            leaf.set_n(1)
            self._set_root(leaf.bno, 1, leaf.twin)
            self._add_count(1)
            return
        k = int(rec[0]) if spec.single else tuple(map(int, rec[:spec.nkey]))
        path = []
        leaf, i = self._leaf(k, path)
        # keep entry-0 keys lower bounds along the leftmost path
        for d in range(len(path) - 1):
            node, j = path[d]
            if j == 0 and node.n and k < self._decoded_at(node, 0):
                node = path[d][0] = self._w(node)
                for f, v in zip(spec.key_fields, rec[:spec.nkey]):
                    node.recs[0][f] = v
        n = leaf.n
        if i < n and self._decoded_at(leaf, i) == k:
            raise Corrupted(leaf.bno, f"{spec.name} btree: duplicate key {tuple(rec[:spec.nkey])}")
        if n < leaf.cap:                # (the usual case, inline: no split)
            leaf = path[-1][0] = self._w(leaf)
            _shift(leaf, i, n, 1)
            self._put(leaf, i, rec)
            leaf.set_n(n + 1)
            if spec.overlap:
                self._fix_hi(path, len(path) - 1)
        else:
            self._insert_at(path, len(path) - 1, i, rec)
        self._add_count(1)

    def _put(self, node: Node, i: int, item) -> None:
        """Store record (entry) i of a writable node: packed by struct when
        every field is an integer (several times faster than numpy's
        structured assignment), else, or for a value struct refuses, by
        numpy (which raises for a value the field cannot hold)."""
        st = self.spec.ent_struct if node.level else self.spec.rec_struct
        if st is not None:
            try:
                st.pack_into(node.mv, NODE_HDR_SIZE + i * st.size, *item)
                return
            except struct.error:
                pass
        node.recs[i] = item

    def _insert_at(self, path, depth: int, i: int, item) -> None:
        """Insert item at index i of path[depth]'s node, splitting upwards."""
        node = path[depth][0] = self._w(path[depth][0])
        n = node.n
        if n < node.cap:
            _shift(node, i, n, 1)
            self._put(node, i, item)
            node.set_n(n + 1)
            self._fix_hi(path, depth)
            return
        # split: left keeps `half`, right gets the rest, then place the item
        right = self._new_node(node.level)
        half = (n + 1) // 2
        allrecs = np.empty(n + 1, dtype=node.recs.dtype)
        allrecs[:i] = node.recs[:i]
        allrecs[i] = item
        allrecs[i + 1:] = node.recs[i:n]
        node.recs[:half] = allrecs[:half]
        node.set_n(half)
        right.recs[:n + 1 - half] = allrecs[half:]
        right.set_n(n + 1 - half)
        sep = self._key_at(right, 0)
        if depth == 0:
            root = self._new_node(node.level + 1)
            root.recs[0] = self._entry(self._key_at(node, 0), node)
            root.recs[1] = self._entry(sep, right)
            root.set_n(2)
            self._set_root(root.bno, self.height + 1, root.twin)
            return
        parent, pi = path[depth - 1]
        parent = path[depth - 1][0] = self._w(parent)
        if self.spec.overlap:
            parent.recs["hi"][pi] = self._node_hi(node)
        self._insert_at(path, depth - 1, pi + 1, self._entry(sep, right))

    def _entry(self, key, child: Node) -> tuple:
        if self.spec.overlap:
            return (*key, self._node_hi(child), child.bno, child.twin)
        return (*key, child.bno, child.twin)

    def _node_hi(self, node: Node) -> int:
        n = node.n
        if n == 0:
            return 0
        if node.level:
            return int(node.recs["hi"][:n].max())
        sf, lf = self.spec.overlap
        return int((node.recs[sf][:n] + node.recs[lf][:n] - np.uint64(1)).max())

    def _fix_hi(self, path, depth: int) -> None:
        """Propagate a changed high key from path[depth] towards the root."""
        if not self.spec.overlap:
            return
        while depth > 0:
            node = path[depth][0]
            parent, pi = path[depth - 1]
            h = self._node_hi(node)
            if int(parent.recs["hi"][pi]) == h:
                return
            parent = path[depth - 1][0] = self._w(parent)
            parent.recs["hi"][pi] = h
            depth -= 1

    def update(self, rec: tuple) -> None:
        """Replace the record with the same key."""
        key = rec[:self.spec.nkey]
        path = self._descend(key) if self.height else []
        if not path:
            raise KeyError(key)
        leaf, i = path[-1]
        if not (i < leaf.n and self._key_at(leaf, i) == tuple(key)):
            raise KeyError(key)
        leaf = path[-1][0] = self._w(leaf)
        leaf.recs[i] = rec
        self._fix_hi(path, len(path) - 1)

    def rekey(self, key, rec: tuple) -> None:
        """Replace the record with key `key` by `rec`, whose key is greater
        but still below the key of the record after it (a free extent that
        loses its first blocks): one descent and one leaf write instead of
        a delete and an insert.  A parent's entry for this leaf stays a
        valid lower bound, since the key only grows.  A key that would
        reach the entry of the next leaf (which may lie below that leaf's
        first record: entries are lower bounds) must move to that leaf:
        then it is a delete and an insert after all."""
        path = self._path_to(key)
        if path is None:
            raise KeyError(key)
        leaf, i = path[-1]
        new = tuple(int(v) for v in rec[:self.spec.nkey])
        if not new > tuple(int(v) for v in key) or \
                (i + 1 < leaf.n and not new < self._key_at(leaf, i + 1)):
            raise ValueError(f"rekey {tuple(key)} -> {new} would break the key order")
        if i + 1 == leaf.n:
            for node, j in reversed(path[:-1]):    # the next leaf's entry, if any
                if j + 1 < node.n:
                    if not new < self._key_at(node, j + 1):
                        self.discard(key)         # (rare: a second descent is fine)
                        self.insert(rec)
                        return
                    break
        leaf = path[-1][0] = self._w(leaf)
        leaf.recs[i] = rec
        self._fix_hi(path, len(path) - 1)

    def _path_to(self, key) -> list | None:
        """Path to the record with exactly this key, or None."""
        if not self.height:
            return None
        path = self._descend(key)
        leaf, i = path[-1]
        if i < leaf.n and self._key_at(leaf, i) == tuple(key):
            return path
        return None

    def delete(self, key) -> tuple | None:
        """Remove the record with this key; returns it, or None if absent."""
        path = self._path_to(key)
        if path is None:
            return None
        old = self._record(*path[-1])
        self._remove_at(path, len(path) - 1, path[-1][1])
        self._add_count(-1)
        return old

    def discard(self, key) -> bool:
        """delete() for a caller that does not need the record back: True
        if it was there."""
        path = self._path_to(key)
        if path is None:
            return False
        self._remove_at(path, len(path) - 1, path[-1][1])
        self._add_count(-1)
        return True

    def _remove_at(self, path, depth: int, i: int) -> None:
        node = path[depth][0] = self._w(path[depth][0])
        n = node.n
        _shift(node, i + 1, n, -1)
        node.set_n(n - 1)
        if depth == 0:
            # an empty root leaf stays: freeing it would make the next
            # insert allocate it again (and move its rmap owner twice)
            if node.level and node.n == 1:
                child, twin = int(node.recs["child"][0]), int(node.recs["twin"][0])
                self._free_node(node)
                self._set_root(child, self.height - 1, twin)
            return
        if node.n >= node.cap // 3:
            self._fix_hi(path, depth)
            return
        self._rebalance(path, depth)

    def _rebalance(self, path, depth: int) -> None:
        node = path[depth][0]
        parent, pi = path[depth - 1]
        if parent.n < 2:
            self._fix_hi(path, depth)
            return
        parent = path[depth - 1][0] = self._w(parent)
        if pi > 0:
            li = pi - 1
            left = self._w(self._child(parent, li))
            right = node
        else:
            li = pi
            left = node
            right = self._w(self._child(parent, pi + 1))
        ln, rn = left.n, right.n
        if ln + rn <= left.cap:
            left.recs[ln:ln + rn] = right.recs[:rn]
            left.set_n(ln + rn)
            if self.spec.overlap:
                parent.recs["hi"][li] = self._node_hi(left)
            self._free_node(right)
            path[depth - 1][1] = li
            path[depth][0] = left
            self._remove_at(path, depth - 1, li + 1)
            return
        total = ln + rn
        want = total // 2
        if ln > want:           # move the tail of left to the front of right
            k = ln - want
            right.recs[k:k + rn] = right.recs[:rn].copy()
            right.recs[:k] = left.recs[want:ln]
        else:                   # move the head of right to the end of left
            k = want - ln
            left.recs[ln:want] = right.recs[:k]
            right.recs[:rn - k] = right.recs[k:rn].copy()
        left.set_n(want)
        right.set_n(total - want)
        for f, v in zip(self.spec.key_fields, self._key_at(right, 0)):
            parent.recs[li + 1][f] = v
        if self.spec.overlap:
            parent.recs["hi"][li] = self._node_hi(left)
            parent.recs["hi"][li + 1] = self._node_hi(right)
            self._fix_hi(path, depth - 1)

    # ---- batches in key order (the commit's delayed records) ----------------
    # Each keeps the path to the leaf it last changed and stays there while
    # the next key belongs to that leaf and the change needs no split, merge
    # or new lower bound; anything else takes the general path and the next
    # key descends again.  The caller must not touch the tree in between.
    def _limit(self, path) -> object:
        """The smallest key that belongs right of path's leaf (None: no
        leaf is right of it)."""
        for d in range(len(path) - 2, -1, -1):
            node, i = path[d]
            if i + 1 < node.n:
                return self._decoded_at(node, i + 1)
        return None

    def _cursor(self, k, path, limit):
        """(path, limit, found) with path's leaf holding the place of
        decoded key k and the leaf index set to it (keys come in ascending
        order, so only the upper end needs checking); found: k is there."""
        if path is None or (limit is not None and k >= limit):
            path = []
            self._leaf(k, path)
            limit = self._limit(path)
        leaf = path[-1][0]
        i = path[-1][1] = self.spec.left(leaf.cols, k, 0, leaf.n)
        return path, limit, i < leaf.n and self._decoded_at(leaf, i) == k

    def insert_sorted(self, recs) -> None:
        """insert() of each record, keys ascending and not present.  The
        records that fall in one leaf and fit in it go in together."""
        nkey = self.spec.nkey
        recs = list(recs)
        path = limit = None
        at, total = 0, len(recs)
        while at < total:
            rec = recs[at]
            if self.height:
                k = self._key(rec[:nkey])
                path, limit, found = self._cursor(k, path, limit)
                leaf, i = path[-1]
                if 0 < i and leaf.n < leaf.cap:
                    if found:
                        raise Corrupted(leaf.bno, f"{self.spec.name} btree: duplicate key {k}")
                    keys = [k]
                    end = min(total, at + leaf.cap - leaf.n)
                    for j in range(at + 1, end):
                        kj = self._key(recs[j][:nkey])
                        if limit is not None and kj >= limit:
                            break
                        keys.append(kj)
                    if len(keys) == 1:
                        self._insert_at(path, len(path) - 1, i, rec)
                    else:
                        self._merge_into_leaf(path, keys, recs[at:at + len(keys)])
                    self._add_count(len(keys))
                    at += len(keys)
                    continue
            self.insert(rec)
            path = None
            at += 1

    def _merge_into_leaf(self, path, keys: list, recs: list) -> None:
        """Put ascending records, all of which belong in path's leaf (none
        below its first key) and fit there, into it at once."""
        leaf = path[-1][0] = self._w(path[-1][0])
        n = leaf.n
        left, cols = self.spec.left, leaf.cols
        at = [left(cols, k, 0, n) for k in keys]
        for k, i in zip(keys, at):
            if i < n and self._decoded_at(leaf, i) == k:
                raise Corrupted(leaf.bno, f"{self.spec.name} btree: duplicate key {k}")
        merged = np.insert(leaf.recs[:n], at, np.array(recs, dtype=leaf.dt))
        leaf.recs[:n + len(recs)] = merged
        leaf.set_n(n + len(recs))
        self._fix_hi(path, len(path) - 1)

    def update_sorted(self, recs) -> None:
        """update() of each record, keys ascending and present."""
        nkey = self.spec.nkey
        overlap = self.spec.overlap
        path = limit = written = None
        for rec in recs:
            k = self._key(rec[:nkey])
            if not self.height:
                raise KeyError(k)
            path, limit, found = self._cursor(k, path, limit)
            if not found:
                raise KeyError(k)
            leaf, i = path[-1]
            if leaf is not written:                 # (once per leaf: _w asks the journal)
                leaf = written = path[-1][0] = self._w(leaf)
            self._put(leaf, i, rec)
            if overlap:
                self._fix_hi(path, len(path) - 1)

    def delete_sorted(self, keys_in) -> list:
        """delete() of each key, ascending; the keys found absent.  The
        keys that fall in one leaf go out together, as long as the leaf
        stays at least a third full; the rest take the general path."""
        keys_in = list(keys_in)
        missing = []
        path = limit = None
        at, total = 0, len(keys_in)
        while at < total:
            key = keys_in[at]
            if not self.height:
                missing.append(key)
                at += 1
                continue
            path, limit, found = self._cursor(self._key(key), path, limit)
            leaf, i = path[-1]
            if not found:
                missing.append(key)
                at += 1
                continue
            room = leaf.n - leaf.cap // 3 if len(path) > 1 else leaf.n
            if room < 1:
                self.delete(key)            # rebalances: the general path
                path = None
                at += 1
                continue
            left, cols = self.spec.left, leaf.cols
            gone, absent = [i], []
            at += 1
            while at < total and len(gone) < room:
                kj = self._key(keys_in[at])
                if limit is not None and kj >= limit:
                    break
                j = left(cols, kj, gone[-1] + 1, leaf.n)
                if j < leaf.n and self._decoded_at(leaf, j) == kj:
                    gone.append(j)
                else:
                    absent.append(keys_in[at])
                at += 1
            missing += absent
            self._cut_from_leaf(path, gone)
        return missing

    def _cut_from_leaf(self, path, gone: list) -> None:
        """Remove the records at ascending indexes `gone` of path's leaf,
        which stays at least a third full (or is the root)."""
        leaf = path[-1][0] = self._w(path[-1][0])
        n = leaf.n
        if len(gone) == 1:
            _shift(leaf, gone[0] + 1, n, -1)
        else:
            keep = np.ones(n, dtype=bool)
            keep[gone] = False
            leaf.recs[:n - len(gone)] = leaf.recs[:n][keep]
        leaf.set_n(n - len(gone))
        self._add_count(-len(gone))
        self._fix_hi(path, len(path) - 1)

    def apply_sorted(self, changes) -> list:
        """A delayed delta, as (key, record or None, in_tree) in ascending
        key order: None deletes a key the tree holds, a record replaces
        one it holds or is added.  Returns the keys to delete found absent."""
        changes = list(changes)
        missing = self.delete_sorted([k for k, rec, in_tree in changes
                                      if rec is None and in_tree])
        self.update_sorted([rec for _, rec, in_tree in changes if rec is not None and in_tree])
        self.insert_sorted([rec for _, rec, in_tree in changes if rec is not None and not in_tree])
        return missing

    # ==== tree-wide work (check, repair, poison, the device map) =============
    # Everything outside this module that looks at a tree as a whole uses
    # these; nothing outside it touches a node (Node, recs, _node, _verify).

    def walk(self, *, leaves: bool = True, start=None):
        """Every node of the tree, depth first in key order, as NodeVisit.

        Each node is read and verified on its own (not through the node
        caches): poisoned, a bad checksum, magic, self block number, tree
        id, level or record count make the visit's `error` (its subtree is
        not walked, the walk goes on with the rest); a pointer to block 0,
        beyond the device or to a block met before is `dangling`.  For each
        readable node the walk checks its shape (keys in order, inside the
        bounds its parent gives, the overlap high key, no empty node) into
        `problems`, and for each leaf record the tree's record check into
        `bad`.  `leaves=False` lists leaves without reading them.  `start`:
        [(block, level or None[, twin])] walks the subtrees of those blocks instead
        of the tree from its root (what repair does with nodes found by a
        scan); None takes the level the node says it has."""
        spec = self.spec
        total = int(self.sb["total_blocks"])
        if start is None:
            height = self.height
            if not height:
                return
            if height > MAX_HEIGHT:
                v = NodeVisit(self.root, height - 1, None, None, None, None)
                v.error = f"tree height {height} is beyond {MAX_HEIGHT}"
                yield v
                return
            stack = [(self.root, height - 1, None, None, None, None, self.root_twin)]
        else:
            stack = [(e[0], e[1], None, None, None, None, e[2] if len(e) > 2 else 0)
                     for e in reversed(list(start))]
        seen: set[int] = set()
        prev_last = None          # the last key of the previous leaf (a walk from the root)
        nkey, overlap, check = spec.nkey, spec.overlap, spec.check
        make = spec.record._make
        child_at = spec.ent_dtype.names.index("child")          # (entry fields by name)
        twin_at = spec.ent_dtype.names.index("twin")
        hi_at = spec.ent_dtype.names.index("hi") if overlap else None
        while stack:
            bno, level, parent, low, high, hi, twin = stack.pop()
            v = NodeVisit(bno, level, parent, low, high, hi)
            v.twin = twin
            if bno == 0 or bno >= total or bno in seen:
                v.error = f"block {bno} referenced twice or out of range"
                v.dangling = True
                yield v
                continue
            seen.add(bno)
            if level == 0 and not leaves:
                yield v
                continue
            try:
                try:
                    node = self._read_verified(bno, level)
                except (MediaError, Corrupted) as e:
                    if not twin:
                        raise
                    # the second copy, read (never written: a walk only
                    # looks); the visit says the first copy is bad
                    node = self._read_verified(bno, level, at=twin)
                    v.copy_error = (f"block {bno} is poisoned" if isinstance(e, MediaError)
                                    else str(e))
            except MediaError:
                v.error = f"block {bno} is poisoned"
                v.poisoned = True
                yield v
                continue
            except Corrupted as e:
                v.error = str(e)
                yield v
                continue
            level = v.level = node.level
            n = v.n = node.n
            v.cap = node.cap
            rows = node.recs[:n].tolist()
            if level == 0 and spec.array_fields:
                rows = [_plain(r, spec.array_fields) for r in rows]
            if overlap and n:
                v.top = self._node_hi(node)
            del node                      # (no view of the mapping outlives a visit)
            keys = [r[:nkey] for r in rows]
            problems = v.problems
            if n == 0 and not (start is None and bno == self.root and level == 0):
                problems.append(f"block {bno}: empty node")
            if any(keys[i] >= keys[i + 1] for i in range(n - 1)):
                problems.append(f"block {bno}: records out of order")
            if n and low is not None and keys[0] < low:
                problems.append(f"block {bno}: first key {keys[0]} below the parent's {low}")
            if n and high is not None and keys[-1] >= high:
                problems.append(f"block {bno}: last key {keys[-1]} not below the next"
                                f" sibling's {high}")
            if n and hi is not None and v.top > hi:
                problems.append(f"block {bno}: high key {v.top} above the parent's {hi}")
            if level:
                v.children = [r[child_at] for r in rows]
                for i in range(n - 1, -1, -1):
                    stack.append((rows[i][child_at], level - 1, bno,
                                  keys[i] if (i or low is not None) else None,
                                  keys[i + 1] if i + 1 < n else high,
                                  rows[i][hi_at] if overlap else None, rows[i][twin_at]))
            else:
                if start is None and n:
                    if prev_last is not None and keys[0] <= prev_last:
                        problems.append(f"block {bno}: keys overlap the previous leaf")
                    prev_last = keys[-1]
                v.records = rows
                if check is not None:
                    for i, r in enumerate(rows):
                        why = check(make(r), total)
                        if why:
                            v.bad.append((i, why))
            yield v

    def _read_verified(self, bno: int, level: int | None, at: int = 0) -> Node:
        """A node read and verified now, whatever the caches hold: the
        running transaction's shadow if there is one, else the block on
        the device (MediaError when it is poisoned); `at`: read node `bno`
        from its second copy, at that block, instead."""
        shadow = self.j.dirty.get(bno)
        if shadow is None:
            self.j.pmem.check_load(at or bno)
            blk = self.j.pmem.block(at or bno)
            self._verify(bno, blk, level)
        else:
            blk = shadow
        node = Node(self.spec, bno, blk, shadow)
        if level is not None and node.level != level:
            raise Corrupted(bno, f"{self.spec.name} btree node has level {node.level},"
                                 f" expected {level}")
        return node

    def header_blkno(self, bno: int) -> int | None:
        """The block number a node header at `bno` names as its node (a
        dup twin's names the first copy), if the block is readable and
        carries this tree's magic; else None.  Not verified: a hint."""
        pmem = self.j.pmem
        if not 0 < bno < pmem.nblocks or pmem.bad.first_bad(bno, 1) is not None:
            return None
        hdr = pmem.block(bno)[:NODE_HDR_SIZE].view(NODE_HDR_DTYPE)[0]
        if bytes(hdr["magic"]) != self.spec.magic:
            return None
        return int(hdr["blkno"])

    def node_blocks(self) -> list[int]:
        """Every node block of the tree; a node that cannot be read is
        still listed, its subtree is not."""
        return [v.bno for v in self.walk(leaves=False) if not v.dangling]

    def query_range(self, lo: int, hi: int, fn) -> bool:
        """Overlapping trees (the rmap): call fn(record) for every record
        whose [start, start+len-1] meets [lo, hi], in key order, as libxfs's
        query_range does.  Subtrees whose high key is below lo are skipped.
        fn returns False to stop the walk; query_range then returns False
        (True when every record was seen)."""
        assert self.spec.overlap
        if not self.height:
            return True
        sf, lf = self.spec.overlap
        stack = [(self.root, self.height - 1, self.root_twin)]
        while stack:
            bno, level, twin = stack.pop()
            node = self._node(bno, level, twin)
            n = node.n
            if level:
                recs = node.recs
                mask = (recs[sf][:n] <= hi) & (recs["hi"][:n] >= lo)
                if n:
                    mask[0] = recs["hi"][0] >= lo
                kids = recs["child"][:n][mask].tolist()
                twins = recs["twin"][:n][mask].tolist()
                stack.extend(zip(reversed(kids), [level - 1] * len(kids), reversed(twins)))
                continue
            starts = node.recs[sf][:n].astype(np.uint64)
            ends = starts + node.recs[lf][:n].astype(np.uint64) - np.uint64(1)
            mask = (starts <= hi) & (ends >= lo)
            if mask.any():
                for rec in node.recs[:n][mask].tolist():
                    if fn(rec) is False:
                        return False
        return True

    def overlaps(self, lo: int, hi: int) -> list:
        """Every record whose [start, start+len-1] meets [lo, hi] (query_range)."""
        out: list = []
        self.query_range(lo, hi, out.append)
        return out

    def level_sizes(self, n: int) -> list[int]:
        """Nodes per level (leaves first) of a tree of n records bulk-loaded
        by bulk_load (nodes about 3/4 full)."""
        spec = self.spec
        if n == 0:
            return []
        k = -(-n // _fill(spec.leaf_cap))
        sizes = [k]
        while k > 1:
            k = -(-k // _fill(spec.node_cap))
            sizes.append(k)
        return sizes

    def bulk_load(self, records, blocks: list[int], twins: list[int] | None = None
                  ) -> tuple[int, int]:
        """Write `records` (sorted by key, keys unique) as a whole new tree
        into `blocks` (fresh: nothing the committed image uses; exactly
        sum(level_sizes(len(records))) of them, leaves first), outside the
        journal: sealed node images stored straight into the blocks, which
        the next commit flushes before it commits (like new file data).
        `twins` (dup): the block of each node's second copy, as fresh,
        given the same bytes; the root's twin is twins[-1].
        Returns (root, height) for the superblock; the tree itself is not
        switched over (the caller commits the new roots).  The one place
        outside the journal's path that formats nodes."""
        spec = self.spec
        sizes = self.level_sizes(len(records))
        if sum(sizes) != len(blocks) or (twins is not None and len(twins) != len(blocks)):
            raise ValueError(f"{spec.name} tree of {len(records)} records needs"
                             f" {sum(sizes)} blocks, not {len(blocks)}")
        if not sizes:
            return 0, 0
        pmem, j = self.j.pmem, self.j
        items = np.array(records, dtype=spec.rec_dtype)
        seq = j.seq + 1
        bi = 0
        for level, k in enumerate(sizes):
            ents = np.zeros(k, dtype=spec.ent_dtype)
            bounds = np.linspace(0, len(items), k + 1).astype(np.int64)
            for i in range(k):
                sub = items[int(bounds[i]):int(bounds[i + 1])]
                bno = blocks[bi]
                twin = twins[bi] if twins is not None else 0
                bi += 1
                pmem.back(bno)
                blk = pmem.block(bno)
                _format_node(blk, spec, level, bno, seq, sub, twin)
                if twin:
                    pmem.back(twin)
                    pmem.block(twin)[:] = blk
                    j.note_data(twin, 1)
                for f in spec.key_fields:
                    ents[i][f] = sub[0][f]
                if spec.overlap:
                    if level == 0:
                        sf, lf = spec.overlap
                        ents[i]["hi"] = int((sub[sf] + sub[lf] - np.uint64(1)).max())
                    else:
                        ents[i]["hi"] = int(sub["hi"].max())
                ents[i]["child"] = bno
                ents[i]["twin"] = twin
                j.note_data(bno, 1)
            items = ents
        return blocks[-1], len(sizes)


class NodeVisit:
    """One node as BTree.walk met it (see there)."""

    __slots__ = ("bno", "level", "parent", "low", "high", "hi", "error", "poisoned",
                 "dangling", "n", "cap", "top", "problems", "records", "children", "bad",
                 "twin", "copy_error")

    def __init__(self, bno, level, parent, low, high, hi):
        self.bno = bno              # the node's block
        self.level = level          # 0 for a leaf (as read; as expected if unreadable)
        self.parent = parent        # the parent's block, None where the walk started
        self.low = low              # every key of the node must be >= low (None: no bound)
        self.high = high            # ... and < high, the next sibling's key
        self.hi = hi                # overlapping trees: the parent's high key for it
        self.error = None           # why the node cannot be read, or None
        self.poisoned = False       # it is on a bad (poisoned) range
        self.dangling = False       # the pointer is impossible: no node of this tree there
        self.n = None               # records (entries) in the node
        self.cap = None             # how many it can hold
        self.top = None             # overlapping trees: its highest record end
        self.problems = []          # what is wrong with its shape
        self.records = None         # a leaf's records (plain tuples)
        self.children = None        # an internal node's child blocks
        self.bad = []               # (index, why): leaf records the record check rejects
        self.twin = 0               # dup: the block of the node's second copy (from its parent)
        self.copy_error = None      # dup: why the first copy is bad (read from the twin), or None


def _plain(row: tuple, array_fields: list[int]) -> tuple:
    """A record with its array fields as tuples."""
    row = list(row)
    for i in array_fields:
        row[i] = tuple(row[i].tolist())
    return tuple(row)


def _fill(cap: int) -> int:
    """Records per node when bulk-loading: about 3/4 full, at least 2."""
    return max(2, cap * 3 // 4)


def _format_node(blk: np.ndarray, spec: TreeSpec, level: int, bno: int, seq: int,
                 items: np.ndarray, twin: int = 0) -> None:
    """Store a whole sealed node (header, then `items`) into a block."""
    blk[:] = 0
    hdr = blk[:NODE_HDR_SIZE].view(NODE_HDR_DTYPE)
    hdr["magic"] = spec.magic
    hdr["tree_id"] = spec.tree_id
    hdr["level"] = level
    hdr["nrecs"] = len(items)
    hdr["blkno"] = bno
    hdr["seq"] = seq
    hdr["twin"] = twin
    raw = np.ascontiguousarray(items).view(np.uint8)
    if raw.size > BLOCK_SIZE - NODE_HDR_SIZE:
        raise ValueError(f"{len(items)} records do not fit one {spec.name} btree node")
    blk[NODE_HDR_SIZE:NODE_HDR_SIZE + raw.size] = raw
    seal(blk)


_SCAN_CHUNK = 16384           # blocks whose headers one step of find_nodes reads
_HDR_IDS = struct.Struct("<HHI")     # format.NODE_HDR_DTYPE: tree_id, level, nrecs at 8


def find_nodes(pmem, specs, skip=None) -> dict[int, list[tuple[int, int]]]:
    """Every block of the device that holds a node of one of these trees by
    its own header (the tree's magic and id, its own block number, a level
    and record count the tree allows, a good checksum), as xfs_repair finds
    btree blocks by scanning: {tree_id: [(block, level)]}.  Blocks on bad
    ranges and those `skip` (a boolean array, True: do not read) marks are
    not read; holes of the sparse image are skipped without reading."""
    by_id = {s.tree_id: s for s in specs}
    out: dict[int, list[tuple[int, int]]] = {tid: [] for tid in by_id}
    if not by_id:
        return out
    magics = {int.from_bytes(s.magic, "little"): s for s in specs}
    total = pmem.nblocks
    bad = np.zeros(total, dtype=bool)
    for b, n in pmem.bad.ranges():
        bad[b:min(b + n, total)] = True
    if skip is not None:
        bad |= skip[:total]
    for a, b in _data_runs(pmem, total):
        for c in range(a, b, _SCAN_CHUNK):
            d = min(b, c + _SCAN_CHUNK)
            heads = np.ascontiguousarray(
                pmem.buf[c * BLOCK_SIZE:d * BLOCK_SIZE].reshape(d - c, BLOCK_SIZE)[:, :24])
            magic = heads[:, 0:4].copy().view("<u4")[:, 0]
            selfno = heads[:, 16:24].copy().view("<u8")[:, 0]
            hit = np.isin(magic, list(magics)) & (selfno == np.arange(c, d, dtype=np.uint64))
            hit &= ~bad[c:d]
            for i in np.nonzero(hit)[0]:
                bno = c + int(i)
                spec = magics[int(magic[i])]
                tree_id, level, nrecs = _HDR_IDS.unpack_from(heads[i].tobytes(), 8)
                if tree_id != spec.tree_id or level >= MAX_HEIGHT:
                    continue
                if nrecs > (spec.leaf_cap if level == 0 else spec.node_cap):
                    continue
                if not sealed_ok(pmem.block(bno)):
                    continue
                out[tree_id].append((bno, level))
    return out


def _data_runs(pmem, total: int) -> list[tuple[int, int]]:
    """[start, end) block runs of the image file that hold data (the rest
    are holes, which read as zeros), by SEEK_DATA / SEEK_HOLE; the whole
    device when the host cannot say."""
    runs = []
    off, end = 0, total * BLOCK_SIZE
    try:
        while off < end:
            try:
                d = os.lseek(pmem.fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:        # no data after off
                    break
                raise
            if d >= end:
                break
            h = min(os.lseek(pmem.fd, d, os.SEEK_HOLE), end)
            runs.append((d // BLOCK_SIZE, -(-h // BLOCK_SIZE)))
            off = h
    except OSError:
        return [(0, total)]
    return runs
