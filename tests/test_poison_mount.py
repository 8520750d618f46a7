"""Poison through a real mount: a media error injected on the live daemon
(or into an unmounted image) reaches every owner the rmap names, as EIO for
read(2) and SIGBUS for mmap loads; free space is cleared; metadata is
healed from its copy (dup, the default) or shuts the filesystem down
(single)."""

import errno
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import check_image, daxfs, make_image, mount_image

BS = 4096
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def inject(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "inject_poison.py"),
                          *map(str, args)], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout


def read_at(path, off, n):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, n, off)
    finally:
        os.close(fd)


def drop_caches():
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def mmap_child_reads(path, off):
    """Exit status of a child that loads one byte at off through mmap."""
    code = ("import mmap,sys,os\n"
            f"fd=os.open({str(path)!r},os.O_RDONLY)\n"
            "m=mmap.mmap(fd,0,mmap.MAP_SHARED,mmap.PROT_READ)\n"
            f"sys.exit(m[{off}] * 0)\n")
    return subprocess.run([sys.executable, "-c", code], timeout=60).returncode


@pytest.fixture
def live(tmp_path, mount_root):
    image = make_image(tmp_path / "poison.img")
    mnt = mount_root / f"mnt-{tmp_path.name}"
    mnt.mkdir()
    os.chmod(mnt, 0o755)
    return image, mnt


def test_shared_extent_poison_through_the_mount(live):
    image, mnt = live
    with mount_image(image, mnt, check_log=False) as m:
        data = os.urandom(8 * BS)
        (m / "A").write_bytes(data)
        (m / "C").write_bytes(data)
        res = daxfs("reflink", m / "A", m / "B")
        assert res.returncode == 0, res.stderr
        out = inject(m / "A", "--offset", 2 * BS, "--length", BS)
        assert "/A" in out and "/B" in out and "/C" not in out
        for name in ("A", "B"):
            with pytest.raises(OSError) as e:
                read_at(m / name, 2 * BS, 10)
            assert e.value.errno == errno.EIO
            assert read_at(m / name, 0, 2 * BS) == data[:2 * BS]
            assert read_at(m / name, 3 * BS, 5 * BS) == data[3 * BS:]
        assert (m / "C").read_bytes() == data
        assert mmap_child_reads(m / "B", 2 * BS + 7) == -signal.SIGBUS
        assert mmap_child_reads(m / "B", 0) == 0
        listing = daxfs("poison", "list", m, "--json")
        owners = json.loads(listing.stdout)[0]["owners"]
        assert sorted(p for o in owners for p in o["paths"]) == ["/A", "/B"]
        assert {o["offset"] for o in owners} == {2 * BS}
        # A overwrites the whole bad block: it gets a healthy block, B does not
        fd = os.open(m / "A", os.O_WRONLY)
        os.pwrite(fd, b"z" * BS, 2 * BS)
        os.fsync(fd)
        os.close(fd)
        drop_caches()
        assert read_at(m / "A", 2 * BS, BS) == b"z" * BS
        with pytest.raises(OSError):
            read_at(m / "B", 2 * BS, 10)
        # the last owner goes: the range is free and cleared
        os.unlink(m / "B")
        drop_caches()
        for _ in range(50):
            if json.loads(daxfs("poison", "list", m, "--json").stdout) == []:
                break
            drop_caches()
        assert json.loads(daxfs("poison", "list", m, "--json").stdout) == []
    check_image(image)


def test_free_space_and_metadata_poison(live):
    """A single image (one copy of metadata): metadata poison shuts down."""
    image, mnt = live
    image = make_image(image.parent / "single.img", dup=False)
    with mount_image(image, mnt, check_log=False) as m:
        (m / "f").write_bytes(b"x" * 10000)
        free_off = 200 * 1024 * 1024                # far past anything a small fs uses
        out = inject(m, "--offset", free_off, "--length", BS)
        assert "cleared" in out
        assert json.loads(daxfs("poison", "list", m, "--json").stdout) == []
        out = inject(m, "--metadata", "inode-tree")
        assert "shut down" in out
        with pytest.raises(OSError) as e:
            os.stat(m / "f")
        assert e.value.errno == errno.EIO
        with pytest.raises(OSError):
            os.listdir(m)
    res = daxfs("check", image)
    assert res.returncode == 4 and "poisoned" in res.stdout


def test_metadata_poison_heals_from_its_copy(live):
    """A dup image: poison on a node, a leaf, the log is healed at once from
    the other copy; nothing shuts down, every file reads back, `poison
    list` says what was healed, and check is clean afterwards."""
    image, mnt = live
    with mount_image(image, mnt, check_log=False) as m:
        for i in range(400):
            (m / f"f{i:03d}").write_bytes(b"%d" % i * 300)
        os.sync()
        for kind in ("inode-tree", "dir-tree:leaf", "extent-map-tree", "rmap-tree:leaf",
                     "free-space-tree", "log"):
            out = inject(m, "--metadata", kind)
            assert "healed from" in out and "shut down" not in out, (kind, out)
        for i in range(400):
            assert (m / f"f{i:03d}").read_bytes() == b"%d" % i * 300
        (m / "after").write_bytes(b"still writable")
        os.sync()
        listing = daxfs("poison", "list", m)
        assert listing.stdout.count("healed from its copy") >= 6, listing.stdout
        assert "no bad ranges" in listing.stdout
    check_image(image)


def test_poison_in_unmounted_image_is_handled_at_mount(live):
    image, mnt = live
    with mount_image(image, mnt) as m:
        (m / "f").write_bytes(b"k" * (4 * BS))
    res = daxfs("map", image)
    line = [ln for ln in res.stdout.splitlines() if "/f" in ln][0]
    dev_off = int(line.split()[0])
    inject(image, "--offset", dev_off + BS, "--length", BS)
    with mount_image(image, mnt, check_log=False) as m:
        with pytest.raises(OSError) as e:
            read_at(m / "f", BS, 1)
        assert e.value.errno == errno.EIO
        assert read_at(m / "f", 2 * BS, BS) == b"k" * BS
    check_image(image)


def test_map_names_owners_and_draws(live, tmp_path):
    image, mnt = live
    with mount_image(image, mnt) as m:
        (m / "a").write_bytes(b"a" * (3 * BS))
        assert daxfs("reflink", m / "a", m / "b").returncode == 0
        res = daxfs("map", m, "--png", tmp_path / "map.png")
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        assert any("/a" in ln and "shared" in ln for ln in lines)
        assert any("/b" in ln and "shared" in ln for ln in lines)
        assert any("superblock" in ln for ln in lines)
        assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"
    check_image(image)
