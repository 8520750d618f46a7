"""What a new user meets (issue 19 part 6), on real mounts where the
behaviour is the mount's: the mount's source is the image's path (so
`umount IMAGE`, `findmnt --source IMAGE` and `df` name it), a busy unmount
and the mount after it say what they wait for."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daxfs import host

from conftest import ROOT, check_image, daxfs, force_unmount, make_image, mount_image, run


def _wait_unmounted(mnt, pids, timeout=30) -> None:
    deadline = time.monotonic() + timeout
    while host.mount_at(mnt) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host.mount_at(mnt) is None
    assert not host.wait_gone(pids, timeout), "the daemon did not exit"


@pytest.mark.timeout(300)
def test_source_is_the_image_path(tmp_path, mnt):
    """A path with a space, a comma and non-ASCII letters: the kernel shows
    it as the mount's source, and the tools that find a mount by its
    device find it by the image."""
    (tmp_path / "ét é,x").mkdir()
    image = make_image(tmp_path / "ét é,x" / "disk ü.img")
    with mount_image(image, mnt) as m:
        found = host.mount_at(m)
        assert found.source == str(image) and found.fstype == "fuse.daxfs"
        res = run(["findmnt", "-n", "-o", "TARGET", "--source", image], timeout=30)
        assert res.returncode == 0 and res.stdout.strip() == str(m), res
        res = run(["df", "--output=source", m], timeout=30)
        assert res.stdout.splitlines()[-1] == str(image), res
        (m / "f").write_bytes(b"kept")
        pids = host.daemon_pids(image)
        res = run(["umount", image], timeout=60)
        assert res.returncode == 0, res.stderr
        _wait_unmounted(m, pids)
    check_image(image)
    with mount_image(image, mnt) as m:
        assert (m / "f").read_bytes() == b"kept"
        pids = host.daemon_pids(image)
        res = daxfs("umount", image, timeout=90)          # daxfs umount IMAGE too
        assert res.returncode == 0, res.stderr
        assert host.mount_at(m) is None and not host.wait_gone(pids, 1)
    check_image(image)


@pytest.mark.timeout(300)
def test_busy_umount_and_the_mount_after_it_say_what_they_wait_for(image, mnt, tmp_path):
    """`daxfs umount` of a busy mount says the image stays in use until the
    last user lets go; a `daxfs mount` of the image meanwhile says, on one
    line, that it waits for the old daemon (by pid) and why, then mounts
    once the user has gone."""
    with mount_image(image, mnt) as m:
        (m / "kept").write_bytes(b"still here")
        pids = host.daemon_pids(image)
        user = subprocess.Popen(["sleep", "120"], cwd=m)
        mounter = None
        try:
            res = daxfs("umount", m, timeout=90)
            assert res.returncode == 0, res.stderr
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1, res.stderr
            assert "busy" in lines[0] and "lazily" in lines[0]
            assert f"pid {pids[0]}" in lines[0] and "in use until the last user" in lines[0]
            assert str(image) in lines[0]
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            mounter = subprocess.Popen(
                [sys.executable, "-m", "daxfs.cli", "mount", image, m,
                 "--log", tmp_path / "second.log"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            first = mounter.stderr.readline()
            assert "waiting" in first and f"pid {pids[0]}" in first, first
            assert "last user of the old mount" in first
            assert mounter.poll() is None, "the mount did not wait for the old daemon"
            user.kill()
            user.wait(timeout=10)
            out, err = mounter.communicate(timeout=90)
            assert mounter.returncode == 0, first + err
            assert err == "", err                    # said once, nothing more
            assert (m / "kept").read_bytes() == b"still here"
        finally:
            if user.poll() is None:
                user.kill()
                user.wait(timeout=10)
            if mounter is not None and mounter.poll() is None:
                mounter.kill()
                mounter.wait(timeout=10)
            force_unmount(m, host.daemon_pids(image))
    check_image(image)
