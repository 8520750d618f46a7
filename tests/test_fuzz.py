"""Fuzzed images (tests/support/image_fuzz.py): damaged copies of a populated
image must be reported by `daxfs check` (exit 0/4/8, no traceback, every
reachable damaged block named), opened or refused cleanly, read back as
the original bytes or EIO, repaired to a clean image; with a real mount,
refused with one line or served with EIO after the first bad block, never
hanging and never leaving a mount behind.

A few dozen cases here, every kind of damage; the script runs thousands
(`scripts/fuzz_images.py --count 1000 --seed S [--mount]`).
"""

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEED = 20240607
ENGINE_CASES_PER_KIND = 5
MOUNT_KINDS = ["flip", "zero", "swap", "truncate", "mixed"]


import image_fuzz as F  # noqa: E402  (tests/support)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    os.chmod(d, 0o755)
    base, inv, expect = F.make_base(str(d), SEED)
    yield d, base, inv, expect
    # nothing of ours may stay mounted
    with open("/proc/mounts") as f:
        left = [ln for ln in f if str(d) in ln]
    assert not left, f"mounts left behind: {left}"



def _report(results):
    out = []
    for r in results:
        if r.failures:
            out.append(f"case {r.case}:\n    " + "\n    ".join(r.failures))
    return "\n".join(out)


@pytest.mark.parametrize("kind", F.KINDS + F.EXTRA_KINDS + F.SEMANTIC_KINDS)
def test_engine(work, kind):
    d, base, inv, expect = work
    results = [F.run_case(case, SEED, base, inv, expect, str(d), repair=True, mount=False,
                          cli=case == 0, keep=None, kind=kind)
               for case in range(ENGINE_CASES_PER_KIND)]
    assert not any(r.failures for r in results), _report(results)


def test_damage_is_noticed(work):
    """The cases above are not vacuous: most damage is seen by check and most
    is repaired (the rest is mended by log replay or refused outright)."""
    d, base, inv, expect = work
    from collections import Counter
    stats = Counter()
    for case in range(8):
        r = F.run_case(100 + case, SEED, base, inv, expect, str(d), repair=True,
                       mount=False, cli=False, keep=None, kind="zero")
        assert not r.failures, _report([r])
        stats.update(r.stats)
    assert stats["check exit 4"] >= 6, stats
    assert stats["repaired"] >= 6, stats


needs_fuse = pytest.mark.skipif(not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"),
                                reason="needs /dev/fuse and fusermount3")


@needs_fuse
@pytest.mark.parametrize("kind", MOUNT_KINDS)
def test_mount(work, kind):
    d, base, inv, expect = work
    r = F.run_case(0, SEED, base, inv, expect, str(d), repair=False, mount=True,
                   cli=False, keep=None, kind=kind)
    assert not r.failures, _report([r])
    assert r.stats["mount served"] + r.stats["mount refused"] == 1, r.stats


@needs_fuse
@pytest.mark.parametrize("kind", F.SEMANTIC_KINDS)
def test_mount_crafted(work, kind):
    """Damage behind valid checksums (issue 16.4), mounted: the daemon
    neither dies nor hangs, reads give the file's bytes or EUCLEAN/EIO,
    and a user's writes never land on the blocks the damage points at."""
    d, base, inv, expect = work
    r = F.run_case(0, SEED, base, inv, expect, str(d), repair=False, mount=True,
                   cli=False, keep=None, kind=kind)
    assert not r.failures, _report([r])
    assert r.stats["mount served"] + r.stats["mount refused"] == 1, r.stats
