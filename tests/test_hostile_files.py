"""What root opens, parses and writes on behalf of others (issue 16.2, 16.3).

An image may sit in a directory another user can write, so everything
beside it is hostile: `IMAGE.badblocks` (a symlink, a FIFO, garbage, a
negative sector), the temporary file its update goes through, the target of
`daxfs mkfs` (a symlink, a FIFO, a hard link, someone else's data).  Root's
tools refuse with one line, follow no symlink, block on no FIFO, and change
nothing they were not asked to.  A crafted image's symlink record that
claims 2 GiB costs one refused readlink, not 4 GiB of daemon memory.
"""

import os
import stat
import time

import pytest

from conftest import daxfs, make_image, mount_image

BS = 4096


def _one_line_refusal(res, *words):
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode != 0, res.stdout
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------- mkfs target

def test_mkfs_never_follows_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious" * 100)
    link = tmp_path / "img"
    link.symlink_to(victim)
    for force in ((), ("--force",)):
        res = daxfs("mkfs", link, "--size", "32M", *force)
        _one_line_refusal(res, "symbolic link")
    assert victim.read_bytes() == b"precious" * 100 and link.is_symlink()


def test_mkfs_refuses_data_that_is_not_an_image(tmp_path):
    target = tmp_path / "img"
    target.write_bytes(b"someone's data")
    _one_line_refusal(daxfs("mkfs", target, "--size", "32M"), "not a daxfs image", "--force")
    assert target.read_bytes() == b"someone's data"
    assert daxfs("mkfs", target, "--size", "32M", "--force").returncode == 0
    _one_line_refusal(daxfs("mkfs", target, "--size", "32M"), "daxfs image", "--force")


def test_mkfs_refuses_fifos_and_hard_links(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    _one_line_refusal(daxfs("mkfs", fifo, "--size", "32M", "--force", timeout=30), "FIFO")
    assert time.monotonic() - started < 20
    other = tmp_path / "other"
    other.write_bytes(b"x" * 10)
    os.link(other, tmp_path / "alias")
    _one_line_refusal(daxfs("mkfs", tmp_path / "alias", "--size", "32M", "--force"),
                      "hard links")
    assert other.read_bytes() == b"x" * 10


# ------------------------------------------------------- the bad-block list

@pytest.fixture
def img(tmp_path):
    return make_image(tmp_path / "img", 32 << 20)


@pytest.mark.parametrize("content, words", [
    (b"-8 8\n", ["line 1"]),
    (b"8 8\nabc def\n", ["line 2", "first_sector sector_count"]),
    (b"8 0\n", ["0 sectors"]),
    (b"\xd9\xa3 8\n", ["line 1"]),                 # an Arabic-Indic digit
    (b"99999999999 8\n", ["beyond the end of the device"]),
    (b"1 2 3\n", ["line 1"]),
])
def test_malformed_badblocks_are_refused(img, mnt, content, words):
    """check and mount refuse with one line naming the line; nothing of
    the image changes (a negative sector once zeroed a block)."""
    side = img.parent / (img.name + ".badblocks")
    side.write_bytes(content)
    before = img.read_bytes()
    _one_line_refusal(daxfs("check", img), "badblocks", *words)
    _one_line_refusal(daxfs("mount", img, mnt, "--log", img.parent / "log", timeout=60),
                      "badblocks", *words)
    assert img.read_bytes() == before
    side.unlink()
    assert daxfs("check", img).returncode == 0


def test_badblocks_symlink_and_fifo_are_not_followed(img, mnt):
    victim = img.parent / "victim"
    victim.write_bytes(b"keep me\n")
    side = img.parent / (img.name + ".badblocks")
    side.symlink_to(victim)
    _one_line_refusal(daxfs("check", img), "symbolic link")
    # an injection into the image replaces the list; it never writes the target
    _one_line_refusal(daxfs("poison", "inject", img, "--offset", str(100 * BS), "--length",
                            str(BS)), "symbolic link")
    assert victim.read_bytes() == b"keep me\n"
    side.unlink()
    os.mkfifo(side)
    started = time.monotonic()
    _one_line_refusal(daxfs("check", img, timeout=30), "FIFO")
    assert time.monotonic() - started < 20
    side.unlink()


def test_badblocks_update_goes_through_a_fresh_temporary_file(img):
    """The old fixed name IMAGE.badblocks.tmp planted as a symlink to a
    victim: the update neither follows it nor removes it."""
    victim = img.parent / "victim"
    victim.write_bytes(b"keep me\n")
    planted = img.parent / (img.name + ".badblocks.tmp")
    planted.symlink_to(victim)
    res = daxfs("poison", "inject", img, "--offset", str(100 * BS), "--length", str(BS))
    assert res.returncode == 0, res.stderr
    assert victim.read_bytes() == b"keep me\n" and planted.is_symlink()
    side = img.parent / (img.name + ".badblocks")
    assert stat.S_ISREG(side.lstat().st_mode) and side.read_text() == f"{100 * 8} 8\n"
    assert not [p for p in img.parent.iterdir() if p.name.startswith(f".{img.name}.badblocks.")]


def test_poison_request_takes_ascii_digits_only(img, mnt):
    from daxfs.control.admin import POISON
    with mount_image(img, mnt) as m:
        for bad in ("\u0663\u0660\u0660 4096", "-4096 4096", "4096 -1", "+4096 4096",
                    "4096 4096 extra", "1" * 30 + " 4096", "4096\n4096"):
            with pytest.raises(OSError) as e:
                os.setxattr(m, POISON, bad.encode())
            assert e.value.errno == 22, bad
        assert os.listdir(m) == []


# ------------------------------------------------------ crafted image records

def test_symlink_claiming_two_gib_is_refused_cheaply(img, mnt):
    """A symlink record whose size says 2 GiB: readlink fails with EUCLEAN
    at once; the daemon does not try to read 2 GiB."""
    from daxfs.engine.fs import Filesystem
    fs = Filesystem.open(str(img))
    ino = fs.symlink(1, b"l", b"target", 0, 0).ino
    fs.close()
    from daxfs.engine.volume import Volume
    vol = Volume.open(str(img))
    try:
        tree = vol.trees["inode"]
        rec = list(tree.lookup((ino,)))
        rec[5] = 2 << 30
        tree.update(tuple(rec))
        vol.commit()
    finally:
        vol.close()
    with mount_image(img, mnt, check_log=False) as m:
        started = time.monotonic()
        with pytest.raises(OSError) as e:
            os.readlink(m / "l")
        assert e.value.errno == 117 and time.monotonic() - started < 5     # EUCLEAN
        assert os.listdir(m) == ["l"]          # the directory stays listable
        with pytest.raises(OSError) as e:
            os.lstat(m / "l")
        assert e.value.errno == 117
        (m / "ok").write_bytes(b"still serving")
        assert (m / "ok").read_bytes() == b"still serving"


# ----------------------------------------------------------------- the log

def test_default_logs_are_per_image_and_root_only(tmp_path, mount_root):
    """Two images of the same name get two logs, in a directory only root
    writes; a log path that is a symlink is refused, its target untouched."""
    import hashlib
    from daxfs.cli.mount import LOG_DIR
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    logs = []
    for d in (a, b):
        img = make_image(d / "disk.img", 32 << 20)
        mnt = mount_root / d.name
        mnt.mkdir()
        res = daxfs("mount", img, mnt, timeout=90)
        assert res.returncode == 0, res.stderr
        try:
            digest = hashlib.sha256(str(img).encode()).hexdigest()[:12]
            logs.append(os.path.join(LOG_DIR, f"disk.img-{digest}.log"))
            assert os.path.isfile(logs[-1])
        finally:
            assert daxfs("umount", mnt).returncode == 0
    assert logs[0] != logs[1]
    st = os.stat(LOG_DIR)
    assert st.st_uid == 0 and not st.st_mode & 0o022
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in logs)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me\n")
    link = tmp_path / "log"
    link.symlink_to(victim)
    img = a / "disk.img"
    mnt = mount_root / "c"
    mnt.mkdir()
    _one_line_refusal(daxfs("mount", img, mnt, "--log", link, timeout=90), "symbolic link")
    assert victim.read_bytes() == b"keep me\n"


# ------------------------------------------- set-id files and device nodes

def _mount_line(m) -> str:
    with open("/proc/mounts") as f:
        return next(ln for ln in f if f" {m} " in ln)


def test_suid_and_dev_only_for_images_only_root_could_write(tmp_path, mnt):
    """An image root alone could have written is mounted like a kernel
    filesystem (suid, dev); one another user owns (or could replace) gets
    nosuid,nodev unless -o suid,dev says otherwise: a user must not get a
    set-uid root program or a device node of his making honoured."""
    img = make_image(tmp_path / "img", 32 << 20)
    with mount_image(img, mnt) as m:
        opts = _mount_line(m).split()[3].split(",")
        assert "nosuid" not in opts and "nodev" not in opts
    os.chown(img, 65534, 65534)
    with mount_image(img, mnt) as m:
        opts = _mount_line(m).split()[3].split(",")
        assert "nosuid" in opts and "nodev" in opts
    with mount_image(img, mnt, options="suid,dev") as m:
        opts = _mount_line(m).split()[3].split(",")
        assert "nosuid" not in opts and "nodev" not in opts
    os.chown(img, 0, 0)
    os.chmod(tmp_path, 0o777)                 # others could replace the image
    try:
        with mount_image(img, mnt) as m:
            opts = _mount_line(m).split()[3].split(",")
            assert "nosuid" in opts and "nodev" in opts
    finally:
        os.chmod(tmp_path, 0o700)
