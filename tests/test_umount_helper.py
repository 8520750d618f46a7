"""umount(8) of a daxfs mount behaves as on a kernel filesystem.

`daxfs mount --install-helper` writes /sbin/mount.fuse.daxfs and
/sbin/umount.fuse.daxfs; a mount made with `mount -t fuse.daxfs` is then
unmounted by `umount MNT` through the helper, which returns only once the
daemon has flushed and let go of the image: `umount MNT && daxfs check IMG`
is clean, never "in use".  A busy mount fails as umount(8) fails (status
32, "target is busy"); `umount -l` detaches it.  The helpers run daxfs
under an isolated interpreter, so neither the caller's current directory
nor PYTHONPATH can put other code in their place.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from daxfs import host
from daxfs.cli import mount as cmd_mount

from conftest import MiB, check_image, daxfs, force_unmount, mount_source, run

@pytest.fixture
def hostile_cwd(tmp_path):
    """A directory holding a `daxfs` package that must never be imported."""
    d = tmp_path / "cwd"
    (d / "daxfs" / "cli").mkdir(parents=True)
    for f in ("daxfs/__init__.py", "daxfs/cli/__init__.py", "daxfs/cli/__main__.py"):
        (d / f).write_text("raise SystemExit('the caller\\'s daxfs was imported')\n")
    return d


def _mount(image, mnt, cwd, env=None):
    res = run(["mount", "-t", "fuse.daxfs", image, mnt], timeout=90, cwd=cwd, env=env)
    assert res.returncode == 0, res.stderr
    pids = host.daemon_pids(str(image))
    assert mount_source(mnt) is not None and pids
    return pids


@pytest.mark.timeout(300)
def test_umount_returns_once_the_image_is_flushed_and_unlocked(installed_helpers, image, mnt,
                                                                hostile_cwd):
    text = [p.read_text() for p in installed_helpers]
    for t, sub in zip(text, ("mount", "umount")):
        assert " -I " in t and " -m " not in t and f" {sub} --helper " in t, t
    env = dict(os.environ, PYTHONPATH=str(hostile_cwd))
    for cycle in range(3):
        pids = _mount(image, mnt, hostile_cwd, env)
        try:
            data = os.urandom(MiB) * 24
            Path(mnt, f"f{cycle}").write_bytes(data)
            res = run(["umount", mnt], timeout=90, cwd=hostile_cwd, env=env)
            assert res.returncode == 0, res.stderr
            # on return: no daemon, image unlocked and consistent
            assert [p for p in pids if host.alive(p)] == [], "umount returned before the daemon exited"
            res = daxfs("check", image, timeout=300)
            assert res.returncode == 0 and "in use" not in res.stdout + res.stderr, \
                res.stdout + res.stderr
        finally:
            force_unmount(mnt, pids)
    res = run(["mount", "-t", "fuse.daxfs", image, mnt], timeout=90)
    pids = host.daemon_pids(str(image))
    try:
        for cycle in range(3):
            assert Path(mnt, f"f{cycle}").stat().st_size == 24 * MiB
    finally:
        assert run(["umount", mnt], timeout=90).returncode == 0
        force_unmount(mnt, pids)
    check_image(image)


@pytest.mark.timeout(300)
def test_busy_umount_fails_and_lazy_umount_detaches(installed_helpers, image, mnt):
    pids = _mount(image, mnt, "/")
    user = subprocess.Popen(["sleep", "60"], cwd=mnt)
    try:
        res = run(["umount", mnt], timeout=90)
        assert res.returncode == 32 and "busy" in res.stderr, (res.returncode, res.stderr)
        assert mount_source(mnt) is not None and all(host.alive(p) for p in pids)
        res = run(["umount", "-l", mnt], timeout=90)
        assert res.returncode == 0, res.stderr
        assert mount_source(mnt) is None
        assert all(host.alive(p) for p in pids), "daemon gone while the mount is in use"
    finally:
        user.kill()
        user.wait(timeout=10)
        force_unmount(mnt, pids)
    assert not host.wait_gone(pids, 30)
    check_image(image)


def test_install_helper_never_replaces_a_file_daxfs_did_not_write(tmp_path):
    mount_helper = tmp_path / "mount.fuse.daxfs"
    umount_helper = tmp_path / "umount.fuse.daxfs"
    umount_helper.write_text("#!/bin/sh\nexec true\n")
    with pytest.raises(cmd_mount.UsageError, match="not written by daxfs"):
        cmd_mount.install_helper(str(mount_helper))
    assert not mount_helper.exists()
    assert umount_helper.read_text() == "#!/bin/sh\nexec true\n"
    umount_helper.unlink()
    assert cmd_mount.install_helper(str(mount_helper)) == str(mount_helper)
    first = umount_helper.read_text()
    assert cmd_mount.HELPER_MARK in first and os.access(umount_helper, os.X_OK)
    cmd_mount.install_helper(str(mount_helper))     # its own files: replaced
    assert umount_helper.read_text() == first
