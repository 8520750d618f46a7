"""The generic B+tree against a sorted model: inserts, deletes, updates,
range and overlap queries, predecessor lookups, across commits."""

import bisect
import random

import pytest

from daxfs.format import RMAP_DTYPE, TREE_RMAP, TREE_FREE, FREE_DTYPE
from daxfs.btree import BTree, TreeSpec
from daxfs.errors import Corrupted
from daxfs.volume import Volume


@pytest.fixture
def vol(tmp_path):
    v = Volume.create(str(tmp_path / "bt.img"), 64 << 20)
    yield v
    v.close()


def _tree(vol, spec):
    t = BTree(spec, vol.journal, vol.sb, vol.alloc, vol.verified)
    return t


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_overlapping_tree_matches_model(vol, seed):
    rnd = random.Random(seed)
    spec = TreeSpec(TREE_RMAP, RMAP_DTYPE, 3, overlap=("bno", "len"))
    # use a scratch tree id slot: the real rmap tree is vol.trees["rmap"]; use it directly
    t = vol.trees["rmap"]
    vol.commit()                       # the volume's own (delayed) rmap records
    base = {r[:3]: r for r in t.scan()}
    model = dict(base)
    for step in range(6000):
        if rnd.random() < 0.6 or len(model) == len(base):
            k = (1 << 40 | rnd.randrange(4000), rnd.randrange(3), rnd.randrange(3))
            if k in model:
                continue
            rec = (*k, rnd.randrange(1, 40), 0)
            t.insert(rec)
            model[k] = rec
        else:
            k = rnd.choice([k for k in model if k not in base] or [None])
            if k is None:
                continue
            assert t.delete(k) == model.pop(k)
        if step % 500 == 0:
            vol.alloc.settle()
            vol.commit()
    vol.commit()
    ours = 1 << 40                     # the volume's pool may have changed meanwhile
    assert [r for r in t.scan() if r[0] >= ours] == [model[k] for k in sorted(model) if k[0] >= ours]
    assert t.count == len(list(t.scan()))
    for _ in range(300):
        lo = (1 << 40) + rnd.randrange(4100)
        hi = lo + rnd.randrange(20)
        want = sorted(r for r in model.values() if r[0] <= hi and r[0] + r[3] - 1 >= lo)
        assert sorted(r for r in t.overlaps(lo, hi) if r[0] >= ours) == want
    keys = sorted(model)
    for _ in range(300):
        k = (1 << 40 | rnd.randrange(4100), rnd.randrange(4), rnd.randrange(4))
        i = bisect.bisect_right(keys, k) - 1
        got = t.last_le(k)
        assert (got if got and got[0] >= ours else None) == (model[keys[i]] if i >= 0 and keys[i][0] >= ours else None)
    for k in [k for k in model if k not in base]:
        t.delete(k)
    vol.commit()
    assert [r for r in t.scan() if r[0] >= ours] == []


def test_duplicate_insert_is_corruption_not_crash(vol):
    t = vol.trees["free"]
    first = t.first()
    with pytest.raises(Corrupted):
        t.insert(first)


def test_scan_bounds_and_update(vol):
    t = vol.trees["refcount"]
    for i in range(2000):
        t.insert((i * 10, 5, 2))
    vol.alloc.settle()
    got = list(t.scan(lo=(995,), hi=(1050,)))
    assert [r[0] for r in got] == [1000, 1010, 1020, 1030, 1040, 1050]
    t.update((1000, 7, 3))
    assert t.lookup((1000,)) == (1000, 7, 3)
    assert t.lookup((1001,)) is None
    for i in range(2000):
        assert t.delete((i * 10,)) is not None
    vol.alloc.settle()
    assert t.height <= 1 and t.count == 0 and list(t.scan()) == []
