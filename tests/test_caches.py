"""The engine's in-memory caches never disagree with the trees: decoded
btree nodes (btree.py), the name cache (dirs.py), delayed inode writes
(inodes.py) and the queue of unlinked inodes waiting to be freed (fs.py).
Each test makes a cache hold something, changes the trees under it through
a commit, a rollback or a reopen, and checks what the engine answers."""

import stat

import pytest

from daxfs.engine.errors import Exists, NotFound, NoSpace
from daxfs.engine.format import BLOCK_SIZE as BS, OWN_MAX_INO, RMAP_ATTR
from daxfs.engine.fs import Filesystem
from engine_helpers import assert_clean, make_fs

REG = stat.S_IFREG | 0o644


def _fail_inside_op(fs, body):
    """Run body() as one operation that fails at its end: everything it
    changed must be rolled back."""
    class Boom(Exception):
        pass

    def op(self):
        body()
        raise Boom()

    from daxfs.engine.fs import _op
    with pytest.raises(Boom):
        _op(op)(fs)


def test_delayed_inode_write_is_rolled_back(tmp_path):
    fs = make_fs(tmp_path / "a.img")
    ino = fs.mknod(1, b"f", REG, 0, 0).ino
    fs.setattr(ino, mode=0o600)              # a delayed write that must survive

    def body():
        inode = fs.inodes.get(ino)
        inode.mode = stat.S_IFREG | 0o777
        inode.uid = 4242
        fs.inodes.put(inode)

    _fail_inside_op(fs, body)
    st = fs.getattr(ino)
    assert (st.mode & 0o7777, st.uid) == (0o600, 0)
    fs.commit()
    fs.close()
    fs = Filesystem.open(str(tmp_path / "a.img"))
    st = fs.getattr(ino)
    assert (st.mode & 0o7777, st.uid) == (0o600, 0)
    assert_clean(fs)
    fs.close()


def test_delayed_inode_write_reaches_the_image(tmp_path):
    fs = make_fs(tmp_path / "b.img")
    ino = fs.mknod(1, b"f", REG, 0, 0).ino
    for i in range(50):                       # many puts of one inode, one tree update
        fs.write(ino, i * BS, b"x" * BS)
    fs.setattr(ino, mtime_ns=123_000_000_000)
    fs.close()
    fs = Filesystem.open(str(tmp_path / "b.img"))
    st = fs.getattr(ino)
    assert st.size == 50 * BS and st.mtime_ns == 123_000_000_000
    assert st.blocks == 50
    assert_clean(fs)
    fs.close()


def test_delayed_inode_creation(tmp_path):
    """New inodes reach the inode tree at the commit: thousands created in
    one transaction all arrive (the flush refills the btree block pool as
    it splits leaves), one created and freed before the commit never does,
    and a rolled-back creation leaves nothing to flush."""
    fs = make_fs(tmp_path / "n.img", size=1 << 30)     # (a log big enough for one commit)
    fs.commit()
    tree = fs.vol.trees["inode"]
    before = tree.count
    inos = [fs.mknod(1, b"f%05d" % i, REG, 0, 0).ino for i in range(4000)]
    assert tree.count == before                       # not yet in the tree
    brief = fs.mknod(1, b"brief", REG, 0, 0).ino
    fs.unlink(1, b"brief")
    fs.forget(brief)

    def body():
        fs.mknod(1, b"undone", REG, 0, 0)

    _fail_inside_op(fs, body)
    fs.commit()
    assert tree.count == before + len(inos)
    assert tree.lookup((brief,)) is None
    assert all(tree.lookup((i,)) is not None for i in inos[::397])
    with pytest.raises(NotFound):
        fs.lookup(1, b"undone")
    assert_clean(fs)
    fs.close()


def test_names_with_one_hash(tmp_path):
    """Two names whose hashes collide (crc32c, 31 bits) share a hash range
    and get different collision indexes, however lookups, creates,
    removals and a rollback interleave with the remembered empty ranges
    (dirs.py: a create after a lookup in vain does not search again)."""
    from daxfs.engine.dirs import name_hash
    a, b = b"c1371838", b"c2000402"
    assert name_hash(a) == name_hash(b)
    fs = make_fs(tmp_path / "h.img")
    with pytest.raises(NotFound):
        fs.lookup(1, a)                          # the range is empty: remembered
    with pytest.raises(NotFound):
        fs.lookup(1, b)
    ib = fs.mknod(1, b, REG, 0, 0).ino           # takes the empty range's index 0
    ia = fs.mknod(1, a, REG, 0, 0).ino           # must not take index 0 again
    assert fs.lookup(1, a).ino == ia and fs.lookup(1, b).ino == ib
    fs.unlink(1, b)

    def body():
        fs.mknod(1, b, REG, 0, 0)

    _fail_inside_op(fs, body)
    with pytest.raises(NotFound):
        fs.lookup(1, b)
    ib = fs.mknod(1, b, REG, 0, 0).ino
    fs.dirs.forget_cache()                       # answers come from the tree
    assert fs.lookup(1, a).ino == ia and fs.lookup(1, b).ino == ib
    assert sorted(e.name for e in fs.readdir(1) if e.name in (a, b)) == [a, b]
    assert_clean(fs)
    fs.close()


def test_new_directory_answers_from_its_cache(tmp_path, monkeypatch):
    """A directory made by this mount is complete in the name cache
    (dirs.py): a missing name is answered without the tree, and colliding
    names still get distinct collision indexes, reused after a removal;
    after a rollback or a full cache the tree answers again, the same."""
    from daxfs.engine import dirs as dirs_mod
    from daxfs.engine.dirs import name_hash
    a, b = b"c1371838", b"c2000402"
    assert name_hash(a) == name_hash(b)
    fs = make_fs(tmp_path / "n.img")
    d = fs.mkdir(1, b"d", 0o755, 0, 0).ino
    assert d in fs.dirs._complete
    searched = []
    real = fs.dirs._same_hash
    monkeypatch.setattr(fs.dirs, "_same_hash",
                        lambda p, n: searched.append(n) or real(p, n))
    with pytest.raises(NotFound):
        fs.lookup(d, a)
    ia = fs.mknod(d, a, REG, 0, 0).ino
    ib = fs.mknod(d, b, REG, 0, 0).ino
    assert searched == []                         # no tree search at all
    pa, pb = fs.dirs.lookup(d, a)[0], fs.dirs.lookup(d, b)[0]
    assert pa >> 32 == pb >> 32 and {pa & 0xFFFFFFFF, pb & 0xFFFFFFFF} == {0, 1}
    fs.unlink(d, a)
    ic = fs.mknod(d, a, REG, 0, 0).ino            # index 0 is free again
    assert fs.dirs.lookup(d, a)[0] == pa and ic != ia
    fs.rename(d, b, 1, b"moved", 0, 0, 0)         # out of the complete directory
    fs.rename(1, b"moved", d, b"back", 0, 0, 0)   # and into it

    def body():
        fs.mknod(d, b, REG, 0, 0)

    _fail_inside_op(fs, body)                     # forgets completeness
    assert d not in fs.dirs._complete
    with pytest.raises(NotFound):
        fs.lookup(d, b)
    assert searched                                # the tree answered
    assert fs.lookup(d, a).ino == ic and fs.lookup(d, b"back").ino == ib
    e = fs.mkdir(1, b"e", 0o755, 0, 0).ino
    monkeypatch.setattr(dirs_mod, "CACHE_MAX", len(fs.dirs._cache) + 1)
    fs.mknod(e, b"one", REG, 0, 0)
    fs.mknod(e, b"two", REG, 0, 0)                 # the cache was full: cleared
    assert e not in fs.dirs._complete
    assert sorted(x.name for x in fs.readdir(e))[2:] == [b"one", b"two"]
    assert sorted(x.name for x in fs.readdir(d))[2:] == sorted([a, b"back"])
    assert_clean(fs)
    fs.close()


def test_name_cache_follows_rollback(tmp_path):
    fs = make_fs(tmp_path / "c.img")
    fs.mknod(1, b"keep", REG, 0, 0)
    with pytest.raises(NotFound):
        fs.lookup(1, b"ghost")                # cached as absent

    def body():
        fs.dirs.add(1, b"ghost", 99, 1)      # cached as present, then rolled back
        fs.dirs.remove(1, fs.dirs.lookup(1, b"keep")[0], b"keep")

    _fail_inside_op(fs, body)
    with pytest.raises(NotFound):
        fs.lookup(1, b"ghost")
    assert fs.lookup(1, b"keep").ino > 1
    with pytest.raises(Exists):
        fs.mknod(1, b"keep", REG, 0, 0)
    assert_clean(fs)
    fs.close()


def test_decoded_nodes_follow_commit_and_rollback(tmp_path):
    fs = make_fs(tmp_path / "d.img", size=64 << 20)
    d = fs.mkdir(1, b"d", 0o755, 0, 0).ino
    names = [b"n%05d" % i for i in range(3000)]   # splits the dir and inode trees
    for i, n in enumerate(names):
        fs.mknod(d, n, REG, 0, 0)
        if i % 700 == 0:
            fs.commit()

    def body():                                # many node changes, then undone
        for n in names[:1500]:
            fs.unlink(d, n)
        for i in range(500):
            fs.mknod(d, b"new%04d" % i, REG, 0, 0)

    _fail_inside_op(fs, body)
    fs.dirs.forget_cache()                     # answers come from the trees
    for n in names[::97]:
        assert fs.lookup(d, n).ino > 1
    with pytest.raises(NotFound):
        fs.lookup(d, b"new0001")
    assert sorted(e.name for e in fs.readdir(d))[2:] == sorted(names)
    assert_clean(fs)
    fs.close()


def test_deferred_inactive_inodes_are_freed(tmp_path):
    fs = make_fs(tmp_path / "e.img", size=16 << 20)
    fs.defer_inactive = True
    free0 = fs.statfs().free_blocks
    inos = []
    for i in range(20):
        ino = fs.mknod(1, b"f%d" % i, REG, 0, 0).ino
        fs.write(ino, 0, b"y" * (64 * BS))
        inos.append(ino)
    for i, ino in enumerate(inos):
        fs.unlink(1, b"f%d" % i)
        fs.forget(ino)
    assert fs.pending_inactive() == 20            # queued, not freed yet
    fs.reap_inactive(5)
    assert fs.pending_inactive() == 15
    assert fs.statfs().free_blocks == free0       # statfs frees the rest first
    assert fs.pending_inactive() == 0
    assert_clean(fs)
    fs.close()


def test_enospc_frees_queued_inodes_and_retries(tmp_path):
    fs = make_fs(tmp_path / "g.img", size=16 << 20)
    fs.defer_inactive = True
    big = fs.mknod(1, b"big", REG, 0, 0).ino
    chunk = b"z" * (1 << 20)
    off = 0
    while True:
        try:
            n = fs.write(big, off, chunk)
        except NoSpace:
            break
        off += n
        if n < len(chunk):
            break
    fs.unlink(1, b"big")
    fs.forget(big)
    assert fs.pending_inactive() == 1
    other = fs.mknod(1, b"other", REG, 0, 0).ino
    assert fs.write(other, 0, chunk) == len(chunk)   # space of the queued inode
    assert fs.pending_inactive() == 0
    assert_clean(fs)
    fs.close()


def test_queued_inodes_are_freed_at_close_and_after_a_crash(tmp_path):
    path = tmp_path / "h.img"
    fs = make_fs(path, size=16 << 20)
    fs.defer_inactive = True
    free0 = fs.statfs().free_blocks
    ino = fs.mknod(1, b"f", REG, 0, 0).ino
    fs.write(ino, 0, b"q" * (32 * BS))
    fs.unlink(1, b"f")
    fs.forget(ino)
    fs.commit()
    fs.vol.pmem.close()                        # a crash: the orphan is on disk
    fs = Filesystem.open(str(path))
    assert fs.statfs().free_blocks == free0
    assert_clean(fs)
    fs.close()


def test_deferred_rmap_answers_owners_before_and_after_commit(tmp_path):
    fs = make_fs(tmp_path / "r.img")
    a = fs.mknod(1, b"a", REG, 0, 0).ino
    fs.write(a, 0, b"a" * (4 * BS))
    b = fs.mknod(1, b"b", REG, 0, 0).ino
    fs.clone_range(a, 0, b, 0, 4 * BS)
    pblk = fs.fiemap(a, 0, BS)[0].physical // BS
    assert fs.vol.rmap.pending()                      # not in the tree yet
    owners = {r[1] for r in fs.vol.rmap.owners(pblk + 1, pblk + 1)}
    assert owners == {a, b}
    fs.commit()
    assert not fs.vol.rmap.pending()
    assert {r[1] for r in fs.vol.rmap.owners(pblk + 1, pblk + 1)} == {a, b}
    fs.unlink(1, b"b")
    fs.forget(b)                                       # its rmap records: pending deletes
    assert {r[1] for r in fs.vol.rmap.owners(pblk, pblk + 3)} == {a}
    assert_clean(fs)
    fs.close()


def test_pending_rmap_records_are_the_records_the_commit_writes(tmp_path):
    """owners() answers from the pending changes with the whole record
    (length and flags too) that the flush then puts in the tree: a
    multi-block extent, a one-block extent grown in place, and an xattr
    value's blocks (RMAP_ATTR)."""
    fs = make_fs(tmp_path / "p.img")
    ino = fs.mknod(1, b"f", REG, 0, 0).ino
    fs.write(ino, 0, b"a" * (5 * BS))
    fs.write(ino, 9 * BS, b"b" * BS)
    fs.write(ino, 10 * BS, b"c" * BS)
    fs.setxattr(ino, b"user.big", b"v" * (3 * BS))
    total = fs.vol.total_blocks
    mine = lambda recs: sorted(r for r in recs if r[1] == ino)   # noqa: E731
    before = mine(fs.vol.rmap.owners(0, total - 1))
    assert {r[4] for r in before} == {0, RMAP_ATTR}
    assert max(r[3] for r in before) > 1
    fs.commit()
    assert not fs.vol.rmap.pending()
    assert mine(fs.vol.trees["rmap"].scan()) == before
    assert mine(fs.vol.rmap.owners(0, total - 1)) == before
    assert_clean(fs)
    fs.close()


def test_short_lived_file_leaves_no_rmap_work(tmp_path):
    fs = make_fs(tmp_path / "s.img")
    fs.commit()
    data0 = [r for r in fs.vol.trees["rmap"].scan() if r[1] <= OWN_MAX_INO]
    for i in range(50):
        ino = fs.mknod(1, b"t%d" % i, REG, 0, 0).ino
        fs.write(ino, 0, b"t" * (3 * BS))
        fs.write(ino, 8 * BS, b"u" * BS)
        fs.unlink(1, b"t%d" % i)
        fs.forget(ino)
    data_keys = [k for k in fs.vol.rmap._pending if k[1] <= OWN_MAX_INO]
    assert data_keys == []                             # made and removed: cancelled
    assert_clean(fs)
    assert [r for r in fs.vol.trees["rmap"].scan() if r[1] <= OWN_MAX_INO] == data0
    fs.close()


def test_background_commit_leaves_overwrites_to_fsync(tmp_path):
    """A background commit (durable=False) makes metadata and new blocks
    durable but leaves data overwritten in place to writeback; fsync makes
    it durable.  Power losses are simulated on a private mapping."""
    path = tmp_path / "o.img"
    make_fs(path).close()
    fs = Filesystem.open(str(path), private=True)
    ino = fs.mknod(1, b"f", REG, 0, 0).ino
    fs.write(ino, 0, b"A" * (8 * BS))
    fs.commit(durable=False)                   # new blocks: flushed anyway
    fs.write(ino, 2 * BS, b"B" * BS)           # in place
    fs.commit(durable=False)
    fs.vol.pmem.close()                        # power loss
    fs = Filesystem.open(str(path), private=True)
    data = fs.read(ino, 0, 8 * BS)
    assert data[:2 * BS] == b"A" * (2 * BS) and data[3 * BS:] == b"A" * (5 * BS)
    assert data[2 * BS:3 * BS] in (b"A" * BS, b"B" * BS)
    assert_clean(fs)
    fs.write(ino, 2 * BS, b"C" * BS)
    fs.fsync(ino)                              # durable: the overwrite too
    fs.vol.pmem.close()
    fs = Filesystem.open(str(path))
    assert fs.read(ino, 2 * BS, BS) == b"C" * BS
    assert_clean(fs)
    fs.close()


def test_checkpoint_waits_for_the_next_commit_and_the_log_covers_it(tmp_path):
    """A commit's checkpoint (the block images in place) is flushed with
    the next commit's first flush, not at once: after a power loss right
    after a commit the file holds the log but not the checkpoint, and both
    a read-write and a read-only open replay it (the read-only one in
    memory).  A clean close leaves the checkpoint flushed."""
    path = tmp_path / "k.img"
    make_fs(path).close()
    fs = Filesystem.open(str(path), private=True)
    ino = fs.mknod(1, b"f", REG, 0, 0).ino
    fs.write(ino, 0, b"K" * BS)
    fs.commit()
    home = sorted(b for b, _ in fs.vol.journal.home_ranges)
    assert home                                    # waiting for the next commit
    on_file = [fs.vol.pmem.mm[b * BS:(b + 1) * BS] for b in home]
    fs.vol.pmem.close()                            # power loss
    with open(path, "rb") as f:                    # the images never reached the file
        assert any(f.seek(b * BS) is not None and f.read(BS) != img
                   for b, img in zip(home, on_file))
    ro = Filesystem.open(str(path), readonly=True)
    assert ro.read(ro.lookup(1, b"f").ino, 0, BS) == b"K" * BS
    ro.close()
    with open(path, "rb") as f:                    # read-only left the file alone
        assert any(f.seek(b * BS) is not None and f.read(BS) != img
                   for b, img in zip(home, on_file))
    fs = Filesystem.open(str(path), private=True)  # replays and flushes
    assert fs.read(fs.lookup(1, b"f").ino, 0, BS) == b"K" * BS
    g = fs.mknod(1, b"g", REG, 0, 0).ino
    fs.commit()
    j = fs.vol.journal
    fs.close()                                     # clean: checkpoint flushed too
    assert j.home_ranges == []
    fs = Filesystem.open(str(path))
    assert fs.lookup(1, b"g").ino == g
    assert_clean(fs)
    fs.close()


def test_blocks_past_eof_left_by_a_crash_never_show(tmp_path):
    """A crash in the middle of a long write can leave blocks mapped past
    EOF (their data committed, the new size not).  When the file grows
    again, after a remount, neither a write nor a truncate may show them;
    the check is made once per inode and mount."""
    path = tmp_path / "p.img"
    fs = make_fs(path)
    ino = fs.mknod(1, b"f", REG, 0, 0).ino
    fs.write(ino, 0, b"S" * (8 * BS))
    inode = fs.inodes.get(ino)
    inode.size = BS + 100                    # as if the size never got committed
    fs.inodes.put(inode)
    fs.close()
    fs = Filesystem.open(str(path))
    fs.write(ino, 3 * BS, b"N" * 10)         # grows the file, leaving a gap
    data = fs.read(ino, 0, 4 * BS)
    assert data[:BS + 100] == b"S" * (BS + 100)
    assert data[BS + 100:3 * BS] == bytes(2 * BS - 100)
    assert data[3 * BS:3 * BS + 10] == b"N" * 10
    fs.write(ino, 3 * BS + 10, b"M" * 10)    # the second extension: no new look
    fs.setattr(ino, size=6 * BS)
    assert fs.read(ino, 3 * BS + 20, 3 * BS - 20) == bytes(3 * BS - 20)
    assert_clean(fs)
    fs.close()


def test_deferred_orphan_records(tmp_path):
    """The orphan list's changes wait for the commit: an unlinked, still
    referenced inode is listed on disk by the commit after its unlink (a
    crash then frees it at the next open), and one unlinked and freed
    before any commit never touches the orphan tree."""
    path = tmp_path / "o.img"
    fs = make_fs(path, size=16 << 20)
    fs.commit()
    free0 = fs.statfs().free_blocks
    tree = fs.vol.trees["orphan"]
    n0 = tree.count
    quick = fs.mknod(1, b"quick", REG, 0, 0).ino
    fs.write(quick, 0, b"q" * (4 * BS))
    fs.unlink(1, b"quick")
    fs.forget(quick)
    kept = fs.mknod(1, b"kept", REG, 0, 0).ino
    fs.write(kept, 0, b"k" * (16 * BS))
    fs.unlink(1, b"kept")                      # still "open": no forget
    assert fs.orphans.contains(kept) and not fs.orphans.contains(quick)
    assert tree.count == n0                    # nothing written yet
    fs.commit()
    assert tree.count == n0 + 1 and tree.lookup((kept,)) is not None
    fs.vol.pmem.close()                        # crash with the orphan listed
    fs = Filesystem.open(str(path))
    assert fs.statfs().free_blocks == free0    # reaped at open
    assert fs.vol.trees["orphan"].count == n0
    assert_clean(fs)
    fs.close()
