"""What a new user meets (issue 19 part 6), on real mounts where the
behaviour is the mount's: the mount's source is the image's path (so
`umount IMAGE`, `findmnt --source IMAGE` and `df` name it), a busy unmount
and the mount after it say what they wait for."""

from __future__ import annotations

import os
import subprocess
import sys
import time

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


# ------------------------------------------------------------------ logging

class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_error_log_counts_repeats_after_the_first():
    """The first occurrences of a kind in full, then one count line per
    interval; a kind quiet for an interval starts over."""
    import logging
    from daxfs.fuse.error_log import ErrorLog

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("test_error_log")
    logger.propagate = False
    logger.addHandler(Keep())
    clock = _Clock()
    errors = ErrorLog(logger, first=2, interval=10, clock=clock)
    for i in range(35000):
        clock.now = 1000 + i * (9.99 / 35000)
        errors.error("getattr: Shutdown", logging.WARNING, "getattr(%d): shut down", i)
    texts = [r.getMessage() for r in records]
    assert texts == ["getattr(0): shut down", "getattr(1): shut down",
                     "getattr: Shutdown: further occurrences are counted, one line per 10 s"]
    clock.now = 1010.5
    errors.flush()
    assert records[-1].getMessage() == "getattr: Shutdown repeated 34,998 times in the last 10 s"
    errors.flush()
    assert len(records) == 4                          # nothing more to say
    errors.error("other", logging.ERROR, "x")         # another kind: in full
    assert records[-1].getMessage() == "x"
    clock.now = 1030
    errors.error("getattr: Shutdown", logging.WARNING, "again")   # quiet for long: in full
    assert records[-1].getMessage() == "again"
    errors.error("getattr: Shutdown", logging.WARNING, "counted")
    errors.error("getattr: Shutdown", logging.WARNING, "counted")
    errors.flush(everything=True)
    assert records[-1].getMessage().startswith("getattr: Shutdown repeated 1 times")


def test_a_request_is_logged_without_pyfuse3_reprs():
    import pyfuse3
    from daxfs.fuse.operations import _request_text
    text = _request_text((1, b"name", b"x" * 4096, pyfuse3.RequestContext()))
    assert text == "(1, b'name', <4096 bytes>) from pid 0 uid 0"


@pytest.mark.timeout(300)
def test_a_shut_down_mount_hammered_with_requests_keeps_a_small_log(mnt, tmp_path):
    """After metadata poison shuts the filesystem down (one copy of
    metadata), every request is answered EIO: thousands of them add a few
    lines to the log, not one (or a traceback) per request, and never a
    RequestContext repr."""
    image = make_image(tmp_path / "single.img", dup=False)
    log = tmp_path / "mount.log"
    with mount_image(image, mnt, log=log, check_log=False) as m:
        (m / "f").write_bytes(b"x")
        res = daxfs("poison", "inject", m, "--metadata", "inode-tree")
        assert res.returncode == 0 and "shut down" in res.stdout, res.stdout + res.stderr
        size0 = log.stat().st_size
        code = ("import os, sys, time\n"
                "n, end = 0, time.monotonic() + 3\n"
                "while time.monotonic() < end:\n"
                "    for name in ('f', 'g%d' % n):\n"
                "        try: os.stat(os.path.join(sys.argv[1], name))\n"
                "        except OSError: pass\n"
                "    n += 1\n"
                "print(n)\n")
        res = run([sys.executable, "-c", code, m], timeout=60)
        asked = int(res.stdout)
        assert asked > 1000, res
        deadline = time.monotonic() + 20           # the count line comes within 10 s
        while "repeated" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        text = log.read_text()[size0:]
        assert "RequestContext" not in text
        assert "repeated" in text, text[-2000:]
        assert len(text) < 20_000, f"{len(text)} bytes logged for {asked} requests"


# ------------------------------------------------------- errors and --help

def _limited_file_size(limit: int):
    """preexec_fn: files may grow to `limit` bytes (RLIMIT_FSIZE), and a
    write past it fails with EFBIG instead of killing the process."""
    def apply():
        import resource
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _daxfs_limited(*args, limit: int):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "daxfs.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=60,
                          preexec_fn=_limited_file_size(limit))


def _one_sentence(res, status=1) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == status and len(lines) == 1, res
    assert "[Errno" not in lines[0] and "Traceback" not in res.stderr, lines[0]
    return lines[0]


def test_a_failed_mkfs_says_why_and_leaves_nothing_it_made(tmp_path):
    image = tmp_path / "big.img"
    line = _one_sentence(_daxfs_limited("mkfs", image, "--size", "64M", limit=1 << 20))
    assert line.startswith(f"daxfs mkfs: cannot make {image} 64 MiB large: ")
    assert "--size" in line                         # what to do
    assert not image.exists()
    # a file that was there before stays, untouched (also with --force)
    image.write_bytes(b"precious")
    _one_sentence(_daxfs_limited("mkfs", image, "--size", "64M", limit=1 << 20))
    _one_sentence(_daxfs_limited("mkfs", "--force", image, "--size", "64M", limit=1 << 20))
    assert image.read_bytes() == b"precious"
    # a directory, a missing directory: said in words, nothing made
    line = _one_sentence(daxfs("mkfs", tmp_path, "--size", "64M"))
    assert "is a directory" in line
    line = _one_sentence(daxfs("mkfs", tmp_path / "no" / "x.img", "--size", "64M"))
    assert f"the directory {tmp_path}/no does not exist" in line
    line = _one_sentence(daxfs("mkfs", tmp_path / "small.img", "--size", "1M"))
    assert not (tmp_path / "small.img").exists()


def test_commands_say_what_failed_in_words(tmp_path):
    """One line naming what failed and on what, no "[Errno N] ..." text."""
    d = tmp_path / "plain-dir"
    d.mkdir()
    missing = tmp_path / "none"
    for args, names in ((("map", d), d), (("poison", "list", d), d), (("check", d), d),
                        (("reflink", "/etc/hostname", d), d), (("dedupe", missing, d), missing),
                        (("poison", "inject", missing, "--offset", "0", "--length", "4K"),
                         missing), (("map", missing), missing)):
        line = _one_sentence(daxfs(*args), 8 if args[0] == "check" else 1)
        assert str(names) in line, line


def test_every_command_has_useful_help():
    texts = {}
    for name in ("mkfs", "check", "mount", "umount", "exec", "reflink", "dedupe", "poison",
                 "map"):
        res = daxfs(name, "--help")
        assert res.returncode == 0 and res.stderr == "", res
        texts[name] = res.stdout
        assert len(res.stdout.splitlines()) > 6, f"daxfs {name} --help:\n{res.stdout}"
        assert "Exit status" in res.stdout or "exit status" in res.stdout.lower(), name
    check = texts["check"]
    for code, words in (("0", "clean"), ("4", "problems"), ("8", "could not check")):
        assert any(ln.split()[:1] == [code] and words in ln for ln in check.splitlines()), check
    assert "lost+found" in check                    # what --repair does to files
    for name in ("reflink", "dedupe", "poison"):
        assert "in bytes" in texts[name] and "64K" in texts[name], texts[name]
    res = daxfs("poison", "inject", "--help")
    assert "--offset BYTES" in res.stdout and "in bytes" in res.stdout
    ex = texts["exec"]
    for word in ("LD_PRELOAD", "FICLONE", "FIDEDUPERANGE", "FIEMAP", "cp --reflink=always",
                 "duperemove", "filefrag", "xfs_io"):
        assert word in ex, word


# ------------------------------------------------------- directory sizes

def _sizes_from_entries(fs) -> dict[int, int]:
    from daxfs.engine.dirs import dir_sizes
    return dir_sizes((r[0], r[5]) for r in fs.vol.trees["dir"].scan())


def test_directory_sizes_follow_their_entries(tmp_path):
    """Every change of a directory's entries changes its size by the bytes
    of the entry (XFS's short-form count: 6 + 8 + name length per entry)."""
    from daxfs.engine import fs as fsmod
    from engine_helpers import assert_clean, make_fs
    fs = make_fs(tmp_path / "d.img")
    try:
        assert fs.getattr(1).size == 6
        d = fs.mkdir(1, b"d", 0o755, 0, 0).ino
        e = fs.mkdir(1, b"e", 0o755, 0, 0).ino
        assert fs.getattr(d).size == 6 and fs.getattr(1).size == 6 + 9 + 9
        a = fs.create(d, b"a", 0o644, 0, 0).ino
        fs.create(d, b"hello", 0o644, 0, 0)
        fs.mkdir(d, b"sub", 0o755, 0, 0)
        assert fs.getattr(d).size == 39                       # as XFS: 6 + 9 + 13 + 11
        fs.symlink(d, b"verylongname_here", b"x", 0, 0)
        assert fs.getattr(d).size == 64
        fs.link(a, e, b"alink")
        assert fs.getattr(e).size == 6 + 13
        fs.rename(d, b"hello", e, b"hi")                       # across directories
        assert (fs.getattr(d).size, fs.getattr(e).size) == (51, 6 + 13 + 10)
        fs.rename(e, b"hi", e, b"alink")                       # over another name
        assert fs.getattr(e).size == 6 + 13
        fs.rename(d, b"a", e, b"alink", fsmod.RENAME_EXCHANGE)  # names stay: sizes too
        assert (fs.getattr(d).size, fs.getattr(e).size) == (51, 19)
        fs.rename(d, b"a", d, b"b", fsmod.RENAME_WHITEOUT)     # a whiteout takes the name
        assert fs.getattr(d).size == 51 + 9
        fs.unlink(d, b"verylongname_here")
        fs.rmdir(d, b"sub")
        assert fs.getattr(d).size == 60 - 25 - 11
        assert {ino: fs.getattr(ino).size for ino in (1, d, e)} == \
            {ino: _sizes_from_entries(fs).get(ino, 6) for ino in (1, d, e)}
        assert_clean(fs)
    finally:
        fs.close()


def test_check_finds_and_repair_mends_a_wrong_directory_size(tmp_path):
    from engine_helpers import make_fs
    image = tmp_path / "s.img"
    fs = make_fs(image)
    try:
        d = fs.mkdir(1, b"dir", 0o755, 0, 0).ino
        fs.create(d, b"file", 0o644, 0, 0)
        inode = fs.inodes.get(d)
        inode.size = 0                                         # as images before sizes
        fs.inodes.put(inode)
        fs.commit()
    finally:
        fs.close()
    res = daxfs("check", image)
    assert res.returncode == 4 and "(/dir): directory size 0, its entries make 18" in res.stdout, \
        res.stdout
    res = daxfs("check", "--repair", image)
    assert res.returncode == 0 and "directory size 0 set to 18" in res.stdout, res.stdout
    check_image(image)


@pytest.mark.timeout(300)
def test_ls_shows_a_directory_size_as_xfs_does(mounted):
    """The sizes XFS gives these directories (measured on a loop-mounted
    XFS, mkfs.xfs defaults): 6 empty, 39 and 64 after the names below."""
    d = mounted / "d"
    d.mkdir()
    assert os.stat(d).st_size == 6
    (d / "a").touch()
    (d / "hello").touch()
    (d / "sub").mkdir()
    res = run(["ls", "-ld", "--time-style=+", d], timeout=30)
    assert res.returncode == 0 and res.stdout.split()[4] == "39", res.stdout
    os.symlink("x", d / "verylongname_here")
    assert os.stat(d).st_size == 64
    os.rename(d / "hello", mounted / "hello")
    os.unlink(d / "verylongname_here")
    os.rmdir(d / "sub")
    assert os.stat(d).st_size == 6 + 9
    res = run(["stat", "-c", "%s", d, mounted], timeout=30)
    assert res.stdout.split() == ["15", str(6 + 9 + 13)], res.stdout
