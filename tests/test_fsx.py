"""The fsx-style exerciser (tests/support/fsx.py) on a real mount: seeded
random writes, mapped writes, reads, truncates, fallocate in all four
modes, punch, zero range, copy_file_range, clone and SEEK_DATA/SEEK_HOLE on
one file, compared with an in-memory model after every operation; then the
image must check clean (the `mounted` fixture).  Bounded: a few thousand
operations per seed.  (xfstests' fsx is not packaged for Debian 12.)"""

from __future__ import annotations

import pytest

from support.fsx import Exerciser, daxfs_clone

OPS = 2500


@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", [11, 12])
def test_fsx_against_a_model(mounted, seed):
    counts = Exerciser(mounted / f"fsx{seed}", seed, clone=daxfs_clone).run(OPS)
    assert sum(counts.values()) == OPS
    assert set(counts) == set(Exerciser.OPS), counts      # every operation ran


@pytest.mark.timeout(600)
def test_fsx_on_a_filesystem_without_reflink(tmp_path, mnt):
    """--no-rmap: copy_file_range copies bytes; everything else as above."""
    from conftest import check_image, mount_image
    from daxfs.engine.mkfs import mkfs
    image = tmp_path / "norm.img"
    mkfs(str(image), 64 << 20, rmap=False)
    with mount_image(image, mnt) as m:
        counts = Exerciser(m / "fsx", 13).run(1500)
        assert counts["copy_range"] and "clone" not in counts
    check_image(image)
