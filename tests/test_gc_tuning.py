"""The garbage collector set-up of daxfs's long-running processes
(daxfs/gc_tuning.py): what tune() changes, that DAXFS_GC=default keeps
Python's defaults, and that the mount daemon applies it."""

import gc

import pytest

from conftest import mount_image
from daxfs import gc_tuning


@pytest.fixture
def restore_gc():
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tune_freezes_and_raises_the_young_threshold(restore_gc, monkeypatch):
    monkeypatch.delenv("DAXFS_GC", raising=False)
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    assert gc_tuning.tune() is True
    assert gc.get_threshold() == (gc_tuning.YOUNG_THRESHOLD, *gc_tuning.OLDER_THRESHOLDS)
    assert gc.get_freeze_count() > 0
    assert gc.isenabled()                  # collected less often, never switched off


def test_default_keeps_pythons_settings(restore_gc, monkeypatch):
    monkeypatch.setenv("DAXFS_GC", "default")
    gc.unfreeze()
    before = gc.get_threshold()
    assert gc_tuning.tune() is False
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_the_daemon_tunes_it(image, mnt, tmp_path):
    log = tmp_path / "mount.log"
    with mount_image(image, mnt, log=log) as m:
        (m / "f").write_bytes(b"x")
    want = f"thresholds {(gc_tuning.YOUNG_THRESHOLD, *gc_tuning.OLDER_THRESHOLDS)}"
    assert want in log.read_text()
