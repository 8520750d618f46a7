"""Byte ranges a caller supplies, at their boundaries (issue 16.1).

Every operation that takes offsets and lengths (clone, dedupe, FIEMAP,
read, write, truncate, poison) is driven with values at the edges (0, a
block less one, the largest file offset, 2**63, 2**64-1, negatives, zero
meaning "to the end") through the engine API, by property tests: each call
either succeeds or raises a DaxfsError with the kernel's errno for it, and
afterwards every file's attributes fit what stat(2) and FUSE can carry and
the image passes every check.  The audit's own example (a clone to offset
2**63-4096 of an 8 KiB file into an empty one) is replayed on a real mount
by an unprivileged user: EINVAL, and the directory stays listable.
"""

import errno
import os
import subprocess

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from conftest import run
from daxfs.engine import ranges
from daxfs.engine.errors import DaxfsError
from engine_helpers import assert_clean, make_fs

BS = 4096
MAX = (1 << 63) - 1
EDGES = [0, 1, BS - 1, BS, 2 * BS, 3 * BS + 17, MAX - BS + 1, MAX - 2 * BS, MAX - 1, MAX,
         MAX + 1, (1 << 64) - BS, (1 << 64) - 1, -1, -BS, -(1 << 63)]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]

edge = st.one_of(st.sampled_from(EDGES), st.integers(0, 64 * BS))
aligned_edge = st.one_of(st.sampled_from([e - e % BS for e in EDGES if e >= 0] + [-BS]),
                         st.integers(0, 16).map(lambda k: k * BS))

# the errno each operation may answer for a bad range
ALLOWED = {
    "read": {errno.EINVAL},
    "write": {errno.EINVAL, errno.EFBIG, errno.ENOSPC},
    "truncate": {errno.EINVAL, errno.EFBIG, errno.ENOSPC},
    "clone": {errno.EINVAL, errno.EFBIG, errno.ENOSPC},
    "dedupe": {errno.EINVAL, errno.EFBIG, errno.ENOSPC},
    "fiemap": {errno.EINVAL, errno.EFBIG},
    "poison": {errno.EINVAL},
}


@pytest.fixture(scope="module")
def fs(tmp_path_factory):
    fs = make_fs(tmp_path_factory.mktemp("ranges") / "img", 64 << 20)
    a = fs.create(1, b"a", 0o644, 0, 0).ino
    fs.write(a, 0, os.urandom(2 * BS))             # two blocks
    fs.write(a, 5 * BS, os.urandom(BS + 100))      # a hole, then a partial last block
    b = fs.create(1, b"b", 0o644, 0, 0).ino
    fs.write(b, 0, os.urandom(3 * BS))
    yield fs
    fs.close()


def _attempt(kind, fn):
    try:
        fn()
    except DaxfsError as e:
        assert e.errno in ALLOWED[kind], f"{kind}: {e!r} ({errno.errorcode.get(e.errno)})"


def _sane(fs):
    """Every value the adapter hands pyfuse3 fits its signed 64-bit field,
    and the image is consistent."""
    for ent in fs.readdir(1):
        a = ent.attr
        assert 0 <= a.size <= MAX and 0 <= a.st_blocks <= MAX, ent
    assert_clean(fs)


def _scratch(fs, name, data=b""):
    ino = fs.create(1, name, 0o644, 0, 0).ino
    if data:
        fs.write(ino, 0, data)
    return ino


def _drop(fs, name):
    try:
        fs.unlink(1, name)
    except DaxfsError:
        pass


SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(off=edge, n=edge)
@example(off=MAX - 1, n=3)
@example(off=MAX, n=1)
def test_read_write_truncate_edges(fs, off, n):
    a = fs.lookup(1, b"a").ino
    _attempt("read", lambda: fs.read(a, off, n))
    t = _scratch(fs, b"t")
    try:
        _attempt("write", lambda: fs.write(t, off, b"x" * (n % 5000)))
        _attempt("truncate", lambda: fs.setattr(t, size=off))
        _sane(fs)
    finally:
        _drop(fs, b"t")


@SETTINGS
@given(s_off=aligned_edge, d_off=aligned_edge, n=edge)
@example(s_off=0, d_off=MAX + 1 - BS, n=0)          # the audit's example
@example(s_off=0, d_off=MAX + 1 - 2 * BS, n=0)
@example(s_off=0, d_off=MAX + 1 - BS, n=BS)
@example(s_off=BS, d_off=0, n=0)
def test_clone_edges(fs, s_off, d_off, n):
    a = fs.lookup(1, b"a").ino
    d = _scratch(fs, b"d")
    try:
        _attempt("clone", lambda: fs.clone_range(a, s_off, d, d_off, n))
        _attempt("clone", lambda: fs.clone_range(a, s_off, a, d_off, n))   # within one file
        _sane(fs)
    finally:
        _drop(fs, b"d")


@SETTINGS
@given(s_off=aligned_edge, d_off=aligned_edge, n=edge)
@example(s_off=0, d_off=MAX + 1 - BS, n=(1 << 64) - 1)
@example(s_off=0, d_off=0, n=0)
def test_dedupe_edges(fs, s_off, d_off, n):
    a = fs.lookup(1, b"a").ino
    d = _scratch(fs, b"e", fs.read(a, 0, 7 * BS))
    try:
        for res in (fs.dedupe_range(a, s_off, n, [(d, d_off)]) if n >= 0 else []):
            assert res.status in (0, 1) or -res.status in ALLOWED["dedupe"], res
        _attempt("dedupe", lambda: fs.dedupe_range(a, s_off, n, [(d, d_off), (a, d_off)]))
        _sane(fs)
    finally:
        _drop(fs, b"e")


@SETTINGS
@given(start=edge, n=edge)
@example(start=(1 << 64) - 1, n=1)
@example(start=MAX, n=MAX)
def test_fiemap_edges(fs, start, n):
    a = fs.lookup(1, b"a").ino
    try:
        exts = fs.fiemap(a, start, n)
    except DaxfsError as e:
        assert e.errno in ALLOWED["fiemap"], e
        return
    for e in exts:
        assert 0 <= e.logical <= MAX and 0 < e.length <= MAX, e


@SETTINGS
@given(bno=edge, n=edge)
def test_poison_request_edges(fs, bno, n):
    from daxfs.engine import poison
    total = fs.vol.total_blocks
    try:
        poison.inject(fs, bno, n) if (bno < 0 or n <= 0 or bno + n > total) else None
    except DaxfsError as e:
        assert e.errno in ALLOWED["poison"], e
    else:
        assert 0 <= bno and 0 < n and bno + n <= total


def test_ranges_module_boundaries():
    assert ranges.span(0, MAX) == MAX
    for off, n in ((-1, 0), (0, -1), (MAX, 1), (1 << 63, 0), (0, 1 << 64)):
        with pytest.raises(DaxfsError) as e:
            ranges.span(off, n)
        assert e.value.errno == errno.EINVAL
    assert ranges.write_limit(MAX - 1, 10) == 1
    with pytest.raises(DaxfsError) as e:
        ranges.write_limit(MAX, 1)
    assert e.value.errno == errno.EFBIG
    assert ranges.write_limit(MAX, 0) == 0
    with pytest.raises(DaxfsError) as e:
        ranges.new_size(MAX + 1)
    assert e.value.errno == errno.EFBIG


def test_clone_to_the_top_resolves_the_length_first(tmp_path):
    """The audit's example in the engine: an 8 KiB source of two
    non-contiguous blocks cloned with length 0 ("to the end") at 2**63-4096
    into an empty file is EINVAL; nothing changes."""
    fs = make_fs(tmp_path / "img")
    try:
        s = _scratch(fs, b"s", b"a" * BS)
        _scratch(fs, b"pad", b"p" * BS)             # the second block lands elsewhere
        fs.write(s, BS, b"b" * BS)
        d = _scratch(fs, b"d")
        with pytest.raises(DaxfsError) as e:
            fs.clone_range(s, 0, d, MAX + 1 - BS, 0)
        assert e.value.errno == errno.EINVAL
        assert fs.getattr(d).size == 0
        assert_clean(fs)
    finally:
        fs.close()


@pytest.mark.timeout(300)
def test_unprivileged_clone_past_the_largest_offset(mounted):
    """On a real mount, as an unprivileged user: `daxfs reflink
    --dst-offset 9223372036854771712 s d` is refused with EINVAL, and `ls`
    of the directory and `rm d` work for everyone afterwards."""
    pub = mounted / "pub"
    pub.mkdir(mode=0o777)
    os.chmod(pub, 0o777)
    env = dict(os.environ, PYTHONPATH=str(os.path.dirname(os.path.dirname(__file__))))
    r = subprocess.run(NOBODY + ["sh", "-c", f"head -c 8192 /dev/urandom > {pub}/s &&"
                                 f" : > {pub}/d"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    import sys
    r = subprocess.run(NOBODY + [sys.executable, "-m", "daxfs.cli", "reflink", "--dst-offset",
                                 str(MAX + 1 - BS), str(pub / "s"), str(pub / "d")],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1 and "invalid argument" in r.stderr, (r.returncode, r.stderr)
    assert sorted(os.listdir(pub)) == ["d", "s"]
    assert os.stat(pub / "d").st_size == 0
    r = run(NOBODY + ["rm", str(pub / "d")])
    assert r.returncode == 0, r.stderr
