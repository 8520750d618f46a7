"""Real-kernel tests: daxfs mounted with `daxfs mount` and driven by the
programs people use (coreutils, tar, rsync, git, sqlite, mmap, attr tools),
then unmounted and checked clean (see conftest.py).

Each test says what it proves; heavy work runs in subprocesses with
timeouts so that a misbehaving mount fails the test instead of hanging it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from daxfs import host

from conftest import (ROOT, GiB, MiB, check_image, daxfs, force_unmount, make_image, mount_image,
                      mount_source, run)

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
STDLIB = Path("/usr/lib/python3.11")
ZONEINFO = Path("/usr/share/zoneinfo")


def sh(script: str, cwd, timeout=120) -> subprocess.CompletedProcess:
    """Run a bash script with -euo pipefail; fail the test on error."""
    res = run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, timeout=timeout)
    assert res.returncode == 0, f"script failed ({res.returncode}):\n{script}\n" \
                                f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return res


def py(code: str, cwd=None, timeout=120, user=None) -> subprocess.CompletedProcess:
    """Run Python code in a child process (a hang cannot take pytest with it)."""
    cmd = (NOBODY if user == "nobody" else []) + [sys.executable, "-c", textwrap.dedent(code)]
    res = run(cmd, cwd=cwd, timeout=timeout)
    assert res.returncode == 0, f"python failed:\n{code}\nstdout:\n{res.stdout}\n" \
                                f"stderr:\n{res.stderr}"
    return res


def tree_digest(root: Path) -> dict:
    """path -> (type, mode, uid, gid, size, mtime s, sha256 or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                what = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                what = None
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                        st.st_gid, size, int(st.st_mtime) if not stat.S_ISLNK(st.st_mode)
                        else None, what)
    return out


def free_blocks(path) -> int:
    return os.statvfs(path).f_bfree


# ----------------------------------------------------------------- basics

@pytest.mark.timeout(300)
def test_mount_shows_up_and_statfs(mounted, image):
    assert mount_source(mounted) == str(image)
    with open("/proc/mounts") as f:
        line = next(ln for ln in f if f" {mounted} " in ln)
    assert " fuse.daxfs " in line
    assert "default_permissions" in line and "allow_other" in line
    sv = os.statvfs(mounted)
    assert sv.f_bsize == 4096 and sv.f_frsize == 4096
    assert sv.f_namemax == 255
    assert 0 < sv.f_bfree <= sv.f_blocks
    assert sv.f_blocks * 4096 <= 256 * MiB
    assert os.stat(mounted).st_ino == 1
    out = sh("df -P . | tail -1", cwd=mounted).stdout.split()
    assert out[0] == str(image)


@pytest.mark.timeout(300)
def test_coreutils(mounted):
    sh("""
        export TZ=UTC
        mkdir -p src/sub/deeper
        printf 'hello\\n' > src/a.txt
        head -c 300000 /dev/urandom > src/sub/blob
        printf 'x' > src/sub/deeper/x
        chmod 0640 src/a.txt
        chmod 0750 src/sub
        chown 1234:5678 src/sub/blob
        touch -d '2001-02-03 04:05:06.123456789' src/a.txt
        ln -s a.txt src/link
        ln src/a.txt src/hard
        cp -a src copy
        mv copy moved
        truncate -s 1000000 moved/sub/blob.sparse
        truncate -s 3 moved/a.txt
        find . | sort > listing
        du -sk . > du.txt
        df -P . > df.txt
        stat -c '%n %a %u %g %s %h %Y %y' src/a.txt moved/a.txt moved/sub/blob moved/link > stat.txt
        rm -r src
        """, cwd=mounted)
    m = Path(mounted)
    assert not (m / "src").exists()
    st = (m / "moved/a.txt").stat()
    assert st.st_size == 3 and (m / "moved/a.txt").read_bytes() == b"hel"
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_nlink == 2                       # cp -a keeps the hard link
    assert (m / "moved/hard").stat().st_ino == st.st_ino
    assert os.readlink(m / "moved/link") == "a.txt"
    blob = (m / "moved/sub/blob").stat()
    assert (blob.st_uid, blob.st_gid, blob.st_size) == (1234, 5678, 300000)
    assert stat.S_IMODE((m / "moved/sub").stat().st_mode) == 0o750
    assert (m / "moved/sub/blob.sparse").stat().st_size == 1000000
    stats = (m / "stat.txt").read_text().splitlines()
    assert stats[0].startswith("src/a.txt 640 0 0 6 2 981173106 2001-02-03 04:05:06.123456789")
    listing = (m / "listing").read_text().splitlines()
    assert "./moved/sub/deeper/x" in listing and "./src/link" in listing
    assert int((m / "du.txt").read_text().split()[0]) >= 300


@pytest.mark.timeout(600)
def test_tar_round_trip_of_stdlib(mounted, tmp_path):
    """~2,800 entries (the Python stdlib and zoneinfo with its symlinks):
    untar onto the mount, compare every byte, mode, owner and mtime with
    the source, tar it back out and compare again."""
    src_tar = tmp_path / "src.tar"
    run(["tar", "-cf", src_tar, "--exclude=*-packages", "-C", "/", str(STDLIB)[1:],
         str(ZONEINFO)[1:]], check=True, timeout=300)
    sh(f"tar -xpf {src_tar}", cwd=mounted, timeout=500)
    ref = tmp_path / "ref"
    ref.mkdir()
    sh(f"tar -xpf {src_tar}", cwd=ref, timeout=300)
    # the parents tar made on its own (not in the archive) get one mtime
    for top in ("usr", "usr/lib", "usr/share"):
        for root in (ref, Path(mounted)):
            os.utime(root / top, ns=(10**18, 10**18))
    want = tree_digest(ref)
    assert len(want) > 2500
    assert tree_digest(Path(mounted)) == want
    back = tmp_path / "back.tar"
    sh(f"tar -cf {back} usr", cwd=mounted, timeout=300)
    out = tmp_path / "out"
    out.mkdir()
    sh(f"tar -xpf {back}", cwd=out, timeout=300)
    for top in ("usr", "usr/lib", "usr/share"):
        os.utime(out / top, ns=(10**18, 10**18))
    assert tree_digest(out) == want


@pytest.mark.timeout(300)
def test_rsync(mounted, tmp_path):
    src = tmp_path / "src"
    sh(f"mkdir -p {src} && cp -a {STDLIB}/email {STDLIB}/json {src}/ && "
       f"ln -s json {src}/jl && ln {src}/json/decoder.py {src}/hard.py", cwd=tmp_path)
    sh(f"rsync -aH {src}/ {mounted}/dst/", cwd=tmp_path)
    assert tree_digest(Path(mounted, "dst")) == tree_digest(src)
    res = sh(f"rsync -aHc --itemize-changes --dry-run {src}/ {mounted}/dst/", cwd=tmp_path)
    assert res.stdout.strip() == "", res.stdout
    assert Path(mounted, "dst/hard.py").stat().st_nlink == 2


@pytest.mark.timeout(300)
def test_git(mounted):
    res = sh("""
        git init -q repo && cd repo
        git config user.email t@example.com && git config user.name tester
        for i in $(seq 1 30); do echo "line $i" > f$i.txt; done
        mkdir d && echo deep > d/deep.txt
        git add -A && git commit -q -m first
        echo changed >> f1.txt && git mv f2.txt renamed.txt
        git commit -q -am second
        git log --oneline | wc -l
        git fsck --strict 2>&1
        git status --porcelain
        git gc -q
        git log -p --stat | wc -l
        """, cwd=mounted)
    lines = res.stdout.split()
    assert lines[0] == "2"


@pytest.mark.timeout(300)
def test_sqlite_wal(mounted):
    """SQLite in WAL mode maps its -shm file MAP_SHARED and fsyncs."""
    res = py("""
        import sqlite3
        db = sqlite3.connect("t.db")
        assert db.execute("pragma journal_mode=wal").fetchone()[0] == "wal"
        db.execute("create table t(k integer primary key, v blob)")
        for i in range(50):
            with db:
                db.executemany("insert into t(v) values (?)", [(bytes([i]) * 700,)] * 40)
        other = sqlite3.connect("t.db")
        assert other.execute("select count(*) from t").fetchone()[0] == 2000
        db.execute("pragma wal_checkpoint(truncate)")
        with db:
            db.execute("delete from t where k % 3 = 0")
        db.execute("vacuum")
        print(db.execute("pragma integrity_check").fetchone()[0],
              other.execute("select count(*) from t").fetchone()[0])
        """, cwd=mounted)
    assert res.stdout.split() == ["ok", "1334"]
    res = run(["sqlite3", "t.db", "pragma integrity_check; select count(*) from t;"],
              cwd=mounted, timeout=60)
    assert res.stdout.split() == ["ok", "1334"], res.stderr


@pytest.mark.timeout(300)
def test_mmap_shared(mounted):
    """MAP_SHARED stores reach the file (seen by read(2) in another process),
    and pages faulted in come from the file."""
    py("""
        import mmap, os
        size = 3 * 1024 * 1024 + 123
        with open("m.bin", "wb") as f:
            f.write(bytes(range(256)) * (size // 256) + b"t" * (size % 256))
        fd = os.open("m.bin", os.O_RDWR)
        m = mmap.mmap(fd, size, mmap.MAP_SHARED)
        assert m[1000:1004] == bytes(range(1000 % 256, 1004 % 256))
        for off in (0, 4095, 4096, 1 << 20, size - 1):
            m[off] = 0xAB
        m[2 << 20:(2 << 20) + 5] = b"hello"
        m.flush()
        m2 = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        assert m2[(2 << 20):(2 << 20) + 5] == b"hello"
        m.close(); m2.close(); os.close(fd)
        """, cwd=mounted)
    data = Path(mounted, "m.bin").read_bytes()
    for off in (0, 4095, 4096, 1 << 20, len(data) - 1):
        assert data[off] == 0xAB
    assert data[2 << 20:(2 << 20) + 5] == b"hello"
    assert data[5] == 5


@pytest.mark.timeout(300)
def test_xattr_tools(mounted):
    res = sh("""
        touch f && mkdir d
        setfattr -n user.colour -v blue f
        setfattr -n user.bin -v 0x00ff00ff f
        setfattr -n user.dir -v yes d
        setfattr -n trusted.root -v only f
        getfattr -d -m - --absolute-names f d | grep -v '^#' | sort
        setfattr -x user.colour f
        getfattr -n user.colour f 2>&1 || true
        getfattr -n user.daxfs.probe --only-values f; echo
        """, cwd=mounted)
    out = res.stdout
    assert 'user.colour="blue"' in out and "user.bin=0sAP8A/w==" in out
    assert 'user.dir="yes"' in out and 'trusted.root="only"' in out
    assert "No such attribute" in out
    assert "daxfs" in out.splitlines()[-1]
    assert sorted(os.listxattr(Path(mounted, "f"))) == ["trusted.root", "user.bin"]
    # XATTR_CREATE / XATTR_REPLACE
    f = Path(mounted, "f")
    with pytest.raises(OSError) as e:
        os.setxattr(f, "user.bin", b"x", os.XATTR_CREATE)
    assert e.value.errno == errno.EEXIST
    with pytest.raises(OSError) as e:
        os.setxattr(f, "user.none", b"x", os.XATTR_REPLACE)
    assert e.value.errno == errno.ENODATA
    big = os.urandom(65536)
    os.setxattr(f, "user.big", big)
    assert os.getxattr(f, "user.big") == big


@pytest.mark.timeout(300)
def test_sparse_5g(mounted):
    """A 5 GiB file written at both ends occupies (about) what was written."""
    py("""
        import os
        size = 5 << 30
        fd = os.open("sparse", os.O_CREAT | os.O_RDWR, 0o644)
        os.pwrite(fd, b"A" * (1 << 20), 0)
        os.pwrite(fd, b"Z" * (1 << 20), size - (1 << 20))
        os.fsync(fd)
        assert os.fstat(fd).st_size == size
        assert os.pread(fd, 8, size // 2) == bytes(8)
        assert os.pread(fd, 4, size - 4) == b"ZZZZ"
        assert os.pread(fd, 4, 0) == b"AAAA"
        assert os.pread(fd, 10, size) == b""
        os.close(fd)
        """, cwd=mounted)
    time.sleep(0.1)
    du_k = int(run(["du", "-k", "sparse"], cwd=mounted, check=True).stdout.split()[0])
    assert 2048 <= du_k <= 4096, du_k
    assert Path(mounted, "sparse").stat().st_size == 5 * GiB


@pytest.mark.timeout(300)
def test_hard_links_and_rename(mounted):
    m = Path(mounted)
    (m / "a").write_bytes(b"one")
    os.link(m / "a", m / "b")
    os.mkdir(m / "d")
    os.link(m / "a", m / "d/c")
    assert (m / "a").stat().st_nlink == 3
    os.unlink(m / "b")
    assert (m / "a").stat().st_nlink == 2
    assert (m / "d/c").read_bytes() == b"one"
    # rename over an existing file: the old target goes away
    (m / "new").write_bytes(b"two")
    old_ino = (m / "new").stat().st_ino
    os.rename(m / "a", m / "new")
    assert (m / "new").read_bytes() == b"one"
    assert (m / "new").stat().st_ino != old_ino
    assert not (m / "a").exists()
    assert (m / "d/c").stat().st_nlink == 2
    # directory link counts and rename of directories
    os.makedirs(m / "p/q/r")
    assert (m / "p").stat().st_nlink == 3
    os.rename(m / "p/q", m / "q2")
    assert (m / "p").stat().st_nlink == 2
    assert (m / "q2/r").is_dir()
    os.mkdir(m / "empty")
    os.rename(m / "q2", m / "empty")          # over an empty directory
    assert (m / "empty/r").is_dir()
    with pytest.raises(OSError) as e:
        os.rename(m / "p", m / "empty")       # over a non-empty one
    assert e.value.errno in (errno.ENOTEMPTY, errno.EEXIST)
    with pytest.raises(OSError) as e:
        os.rmdir(m / "empty")
    assert e.value.errno == errno.ENOTEMPTY
    # RENAME_NOREPLACE / RENAME_EXCHANGE through the kernel (mv -n, mv --exchange
    # are not in coreutils 9.1: use renameat2 via ctypes)
    (m / "x").write_bytes(b"x")
    (m / "y").write_bytes(b"y")
    py(f"""
        import ctypes, os, errno
        libc = ctypes.CDLL(None, use_errno=True)
        AT = -100
        r = libc.renameat2(AT, b"{m}/x", AT, b"{m}/y", 1)
        assert r == -1 and ctypes.get_errno() == errno.EEXIST, (r, ctypes.get_errno())
        r = libc.renameat2(AT, b"{m}/x", AT, b"{m}/y", 2)
        assert r == 0, ctypes.get_errno()
        """)
    assert (m / "x").read_bytes() == b"y" and (m / "y").read_bytes() == b"x"


@pytest.mark.timeout(300)
def test_unlinked_open_file(mounted):
    """An unlinked file stays readable (and writable, truncatable) while open;
    its space comes back once the last user closes it."""
    m = Path(mounted)
    base = free_blocks(m)
    res = py("""
        import os, time
        fd = os.open("doomed", os.O_CREAT | os.O_RDWR, 0o644)
        data = os.urandom(8 << 20)
        os.write(fd, data)
        os.fsync(fd)
        used = os.statvfs(".").f_bfree
        os.unlink("doomed")
        assert not os.path.exists("doomed")
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, len(data), 0) == data
        os.pwrite(fd, b"more", len(data))
        os.ftruncate(fd, 4096)
        os.fsync(fd)
        assert os.pread(fd, 10000, 0) == data[:4096]
        os.close(fd)
        print(used)
        """, cwd=m)
    used = int(res.stdout)
    assert base - used >= 2048
    deadline = time.monotonic() + 10
    while free_blocks(m) < base - 16 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert free_blocks(m) >= base - 16, (base, free_blocks(m))


@pytest.mark.timeout(300)
def test_open_flags(mounted):
    m = Path(mounted)
    p = m / "f"
    p.write_bytes(b"0123456789")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"AB")
    os.write(fd, b"CD")
    os.close(fd)
    assert p.read_bytes() == b"0123456789ABCD"
    fd = os.open(p, os.O_RDWR | os.O_TRUNC)
    assert os.fstat(fd).st_size == 0
    os.write(fd, b"new")
    os.close(fd)
    assert p.read_bytes() == b"new"
    with pytest.raises(FileExistsError):
        os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    fd = os.open(m / "g", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    assert stat.S_IMODE((m / "g").stat().st_mode) == 0o600
    # umask applies to new files and directories
    res = sh("umask 027; touch u; mkdir ud; stat -c %a u ud", cwd=m)
    assert res.stdout.split() == ["640", "750"]
    # reads work on a write-only handle's partial pages (kernel reads to fill)
    fd = os.open(p, os.O_WRONLY)
    os.pwrite(fd, b"X", 1)
    os.close(fd)
    assert p.read_bytes() == b"nXw"
    with pytest.raises(IsADirectoryError):
        os.open(m / "ud", os.O_WRONLY)
    with pytest.raises(NotADirectoryError):
        os.listdir(p)


@pytest.mark.timeout(300)
def test_permissions_as_nobody(mounted):
    m = Path(mounted)
    os.chmod(m, 0o755)
    (m / "secret").write_bytes(b"root only")
    os.chmod(m / "secret", 0o600)
    os.mkdir(m / "pub")
    os.chmod(m / "pub", 0o777)
    os.mkdir(m / "sgid")
    os.chown(m / "sgid", 0, 4321)
    os.chmod(m / "sgid", 0o2777)
    res = run(NOBODY + ["cat", m / "secret"], timeout=30)
    assert res.returncode != 0 and "Permission denied" in res.stderr
    res = run(NOBODY + ["touch", m / "rootdir-file"], timeout=30)
    assert res.returncode != 0 and "Permission denied" in res.stderr
    res = run(NOBODY + ["sh", "-c", f"echo mine > {m}/pub/mine && cat {m}/pub/mine"],
              timeout=30)
    assert res.returncode == 0 and res.stdout == "mine\n", res.stderr
    st = (m / "pub/mine").stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    res = run(NOBODY + ["chown", "0", m / "pub/mine"], timeout=30)
    assert res.returncode != 0 and "Operation not permitted" in res.stderr
    res = run(NOBODY + ["chmod", "0600", m / "secret"], timeout=30)
    assert res.returncode != 0 and "Operation not permitted" in res.stderr
    res = run(NOBODY + ["setfattr", "-n", "user.x", "-v", "1", m / "secret"], timeout=30)
    assert res.returncode != 0
    # setgid directory: new files take the directory's group, new dirs the bit
    res = run(NOBODY + ["sh", "-c", f"touch {m}/sgid/f && mkdir {m}/sgid/d"], timeout=30)
    assert res.returncode == 0, res.stderr
    f, d = (m / "sgid/f").stat(), (m / "sgid/d").stat()
    assert f.st_gid == 4321 and d.st_gid == 4321
    assert d.st_mode & stat.S_ISGID and not f.st_mode & stat.S_ISGID
    # root may still do everything
    assert (m / "secret").read_bytes() == b"root only"
    os.chown(m / "pub/mine", 0, 0)


@pytest.mark.timeout(300)
def test_special_files(mounted):
    m = Path(mounted)
    os.mkfifo(m / "fifo")
    os.mknod(m / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    assert stat.S_ISFIFO((m / "fifo").stat().st_mode)
    st = (m / "null").stat()
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    res = py("""
        import os, threading
        def writer():
            with open("fifo", "wb") as f:
                f.write(b"through the pipe")
        t = threading.Thread(target=writer); t.start()
        with open("fifo", "rb") as f:
            print(f.read().decode())
        t.join()
        """, cwd=m, timeout=30)
    assert res.stdout.strip() == "through the pipe"
    long = "n" * 255
    (m / long).write_bytes(b"")
    with pytest.raises(OSError) as e:
        (m / ("n" * 256)).write_bytes(b"")
    assert e.value.errno == errno.ENAMETOOLONG
    many = m / "many"
    many.mkdir()
    for i in range(600):
        (many / f"file-{i:04d}").write_bytes(b"")
    assert sorted(os.listdir(many)) == [f"file-{i:04d}" for i in range(600)]


# --------------------------------------------------------- across mounts

@pytest.mark.timeout(300)
def test_persistence_across_remount(image, mnt):
    """Bytes, modes, owners, times, xattrs, links and inode numbers survive
    `daxfs umount` + `daxfs mount`."""
    m = Path(mnt)
    with mount_image(image, mnt):
        sh("""
            mkdir -p d/e
            head -c 1234567 /dev/urandom > d/data
            printf 'small' > small
            chmod 4751 small && chown 77:88 small
            touch -d '1999-12-31 23:59:59.5' small
            touch -m -d '2010-01-01 00:00:00.25' d/data
            ln d/data d/e/data2
            ln -s ../small d/sym
            setfattr -n user.keep -v kept small
            mkfifo d/fifo
            truncate -s 100M d/sparse
            """, cwd=m)
        before = tree_digest(m)
        stats = {p: os.lstat(m / p) for p in before}
        xattr_before = os.getxattr(m / "small", "user.keep")
        res = daxfs("umount", mnt, timeout=90)
        assert res.returncode == 0, res.stderr
        assert mount_source(mnt) is None
    check_image(image)
    with mount_image(image, mnt):
        assert tree_digest(m) == before
        for p, old in stats.items():
            new = os.lstat(m / p)
            for f in ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_size",
                      "st_mtime_ns", "st_ctime_ns"):
                assert getattr(new, f) == getattr(old, f), (p, f)
        assert os.lstat(m / "small").st_atime_ns == stats["small"].st_atime_ns
        assert os.getxattr(m / "small", "user.keep") == xattr_before == b"kept"
        assert os.stat(m / "d/data").st_nlink == 2
        assert os.readlink(m / "d/sym") == "../small"
    check_image(image)


@pytest.mark.timeout(300)
def test_readonly_mount(image, mnt):
    with mount_image(image, mnt):
        Path(mnt, "f").write_bytes(b"kept")
    with mount_image(image, mnt, options="ro") as m:
        assert Path(m, "f").read_bytes() == b"kept"
        with pytest.raises(OSError) as e:
            Path(m, "g").write_bytes(b"x")
        assert e.value.errno == errno.EROFS
    check_image(image)


@pytest.mark.timeout(300)
def test_sigterm_unmounts_cleanly(image, mnt):
    from daxfs.host import daemon_pids, wait_gone
    with mount_image(image, mnt) as m:
        Path(m, "f").write_bytes(b"before the signal")
        pids = daemon_pids(image)
        assert len(pids) == 1
        os.kill(pids[0], 15)
        assert not wait_gone(pids, 30)
        assert mount_source(mnt) is None
    check_image(image)
    with mount_image(image, mnt) as m:
        assert Path(m, "f").read_bytes() == b"before the signal"


@pytest.mark.timeout(300)
def test_mount_errors(image, mnt, mount_root, tmp_path):
    """One line, non-zero exit, nothing mounted, the file untouched."""
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(4 << 20))
    digest = hashlib.sha256(junk.read_bytes()).hexdigest()
    res = daxfs("mount", junk, mnt, "--log", tmp_path / "junk.log", timeout=60)
    assert res.returncode != 0
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "Traceback" not in res.stderr and "image" in res.stderr.lower()
    assert mount_source(mnt) is None
    assert hashlib.sha256(junk.read_bytes()).hexdigest() == digest

    image_digest = hashlib.sha256(Path(image).read_bytes()).hexdigest()
    res = daxfs("mount", image, mount_root / "does-not-exist", timeout=60)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1
    assert "no such directory" in res.stderr

    res = daxfs("mount", image, junk, timeout=60)
    assert res.returncode != 0 and "not a directory" in res.stderr

    res = daxfs("mount", tmp_path / "missing.img", mnt, timeout=60)
    assert res.returncode != 0 and "no such file" in res.stderr

    res = daxfs("mount", image, mnt, "-o", "bogus_option", timeout=60)
    assert res.returncode != 0 and "bogus_option" in res.stderr
    assert hashlib.sha256(Path(image).read_bytes()).hexdigest() == image_digest

    other = Path(mnt).parent / (Path(mnt).name + "-2")
    other.mkdir()
    with mount_image(image, mnt) as m:
        Path(m, "f").write_bytes(b"first mount")
        res = daxfs("mount", image, mnt, timeout=60)
        assert res.returncode != 0 and "already mounted" in res.stderr
        res = daxfs("mount", image, other, "--log", tmp_path / "second.log", timeout=60)
        assert res.returncode != 0, "a second mount of a locked image succeeded"
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "Traceback" not in res.stderr
        assert mount_source(other) is None
        assert Path(m, "f").read_bytes() == b"first mount"
    check_image(image)

    res = daxfs("umount", mnt, timeout=60)
    assert res.returncode != 0 and "not a daxfs mount" in res.stderr



@pytest.mark.timeout(300)
def test_mkfs_force_refuses_a_mounted_image(image, mnt):
    """`daxfs mkfs --force` of an image a mount is using fails with one
    line and leaves the image alone, as mkfs.xfs -f refuses a mounted
    device; it used to truncate the image under the daemon before it
    noticed the lock, which shut the mount down and lost every file."""
    with mount_image(image, mnt) as m:
        Path(m, "f").write_bytes(b"still here")
        os.sync()
        size = os.path.getsize(image)
        res = daxfs("mkfs", "--force", image, "--size", "64M", timeout=60)
        assert res.returncode == 1 and "in use" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert os.path.getsize(image) == size
        fd = os.open(Path(m, "f"), os.O_RDONLY)
        try:                                 # the daemon's bytes, not the page cache's
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            assert os.pread(fd, 100, 0) == b"still here"
        finally:
            os.close(fd)
        Path(m, "g").write_bytes(b"and writable")
    check_image(image)
    with mount_image(image, mnt) as m:
        assert Path(m, "f").read_bytes() == b"still here"


@pytest.mark.timeout(300)
def test_mount_right_after_umount_waits_for_the_old_daemon(image, mnt):
    """umount(8) returns before the daemon has made its last commit and
    let go of the image; `umount; mount` (xfstests' cycle_mount) must wait
    for it instead of failing with "in use" (xfstests generic/093 failed
    so after a big write).  Here the old daemon is held stopped across
    the umount and let go a second after the new mount started."""
    from daxfs.host import daemon_pids, wait_gone
    with mount_image(image, mnt) as m:
        Path(m, "f").write_bytes(b"first")
        old = daemon_pids(image)
        assert len(old) == 1
        os.kill(old[0], signal.SIGSTOP)
        try:
            # umount(2) itself: umount(8) stats the mountpoint, which the
            # stopped daemon would never answer
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.umount2(os.fsencode(m), 0) == 0, os.strerror(ctypes.get_errno())
            again = subprocess.Popen([sys.executable, "-m", "daxfs.cli", "mount", image, m,
                                      "--log", f"{image}.mount2.log"],
                                     env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(1)
        finally:
            os.kill(old[0], signal.SIGCONT)
        out, err = again.communicate(timeout=90)
        assert again.returncode == 0, err
        assert wait_gone(old, 30) == []
        new = daemon_pids(image)
        try:
            assert Path(m, "f").read_bytes() == b"first"
        finally:
            force_unmount(m, new)
    check_image(image)

@pytest.mark.timeout(300)
def test_enospc_on_a_small_image(tmp_path, mnt):
    image = make_image(tmp_path / "small.img", 32 * MiB)
    with mount_image(image, mnt) as m:
        res = run(["dd", "if=/dev/zero", "of=fill", "bs=1M", "count=64"], cwd=m, timeout=120)
        assert res.returncode != 0 and "No space left on device" in res.stderr
        size = Path(m, "fill").stat().st_size
        assert 8 * MiB < size < 32 * MiB
        # small files and metadata may still fail; none of it may break anything
        for i in range(50):
            try:
                Path(m, f"small{i}").write_bytes(b"x" * 5000)
            except OSError as e:
                assert e.errno == errno.ENOSPC
        assert Path(m, "fill").read_bytes()[:4096] == bytes(4096)
    check_image(image)
    with mount_image(image, mnt) as m:
        os.unlink(Path(m, "fill"))
        # the space comes back when the kernel's FORGET for the inode
        # arrives, a moment after unlink returns (asynchronous, like XFS's
        # background inactivation): wait for it, boundedly
        deadline = time.monotonic() + 10
        while os.statvfs(m).f_bavail * 4096 <= 16 * MiB and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.statvfs(m).f_bavail * 4096 > 16 * MiB
        # space freed a moment ago must be usable now, as on XFS (which
        # forces the log when only busy extents are left), not after the
        # next background commit
        try:
            Path(m, "after").write_bytes(b"y" * (4 * MiB))
        except OSError as e:
            pytest.fail(f"{e.strerror} writing 4 MiB right after freeing 28 MiB "
                        "(freed extents stay busy until the next commit)")
    check_image(image)


@pytest.mark.timeout(300)
def test_mount_helper(image, mnt, tmp_path, installed_helpers):
    """`daxfs mount --install-helper` makes `mount -t fuse.daxfs` work."""
    helper = installed_helpers[0]
    text = helper.read_text()
    assert len(text.splitlines()) == 3 and os.access(helper, os.X_OK)
    res = run(["mount", "-t", "fuse.daxfs", "-o", "noatime,nofail", image, mnt],
              timeout=90)
    assert res.returncode == 0, res.stderr
    from daxfs.host import daemon_pids
    pids = daemon_pids(image)
    try:
        assert mount_source(mnt) == str(image)
        Path(mnt, "via-helper").write_bytes(b"ok")
        res = run(["umount", mnt], timeout=60)
        assert res.returncode == 0, res.stderr
    finally:
        force_unmount(mnt, pids)
    check_image(image)
    with mount_image(image, mnt) as m:
        assert Path(m, "via-helper").read_bytes() == b"ok"


@pytest.mark.timeout(300)
def test_fstab_line(image, mnt, tmp_path, installed_helpers):
    """An fstab line of type fuse.daxfs mounts through the helper
    (mount --fstab reads an alternative fstab file)."""
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{image} {mnt} fuse.daxfs defaults,nofail,noexec,x-test=1 0 0\n")
    from daxfs.host import daemon_pids
    pids = []
    try:
        res = run(["mount", "--fstab", fstab, str(mnt)], timeout=90)
        assert res.returncode == 0, res.stderr
        pids = daemon_pids(image)
        with open("/proc/mounts") as f:
            line = next(ln for ln in f if f" {mnt} " in ln)
        assert "noexec" in line and "fuse.daxfs" in line
        Path(mnt, "f").write_bytes(b"fstab")
    finally:
        force_unmount(mnt, pids)
    check_image(image)


@pytest.mark.timeout(300)
def test_umount_busy_detaches_lazily(image, mnt):
    """`daxfs umount` of a busy mount detaches it and says so; the daemon
    finishes (and the image checks clean) once the last user leaves."""
    from daxfs.host import daemon_pids, wait_gone
    with mount_image(image, mnt) as m:
        Path(m, "kept").write_bytes(b"still here")
        pids = daemon_pids(image)
        user = subprocess.Popen(["sleep", "60"], cwd=m)
        try:
            res = daxfs("umount", m, timeout=90)
            assert res.returncode == 0, res.stderr
            assert "lazily" in res.stderr and len(res.stderr.strip().splitlines()) == 1
            assert mount_source(m) is None
            assert pids and wait_gone(pids, 0.5) == pids, "daemon gone while the mount is in use"
        finally:
            user.kill()
            user.wait(timeout=10)
        assert not wait_gone(pids, 30)
    check_image(image)
    with mount_image(image, mnt) as m:
        assert Path(m, "kept").read_bytes() == b"still here"


@pytest.mark.timeout(120)
def test_mount_without_dev_fuse(image, mnt, monkeypatch, capsys):
    """No /dev/fuse: one line, exit 1 (checked before any daemon starts)."""
    from daxfs.cli import mount as cmd_mount
    real_exists = os.path.exists
    monkeypatch.setattr(cmd_mount.os.path, "exists",
                        lambda p: False if str(p) == "/dev/fuse" else real_exists(p))
    assert cmd_mount.main([str(image), str(mnt)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/dev/fuse" in err
    assert mount_source(mnt) is None


@pytest.mark.timeout(300)
def test_concurrent_clients(mounted):
    """Several processes creating, writing, reading, listing and removing at
    once: every byte comes back and the mount stays healthy."""
    code = """
        import os, sys, hashlib
        me = int(sys.argv[1])
        os.makedirs(f"w{me}", exist_ok=True)
        for round in range(3):
            for i in range(40):
                data = hashlib.sha256(f"{me}-{round}-{i}".encode()).digest() * (97 * (i + 1))
                with open(f"w{me}/f{i}", "wb") as f:
                    f.write(data)
            for i in range(40):
                data = hashlib.sha256(f"{me}-{round}-{i}".encode()).digest() * (97 * (i + 1))
                with open(f"w{me}/f{i}", "rb") as f:
                    assert f.read() == data, (me, round, i)
            assert len(os.listdir(f"w{me}")) == 40
            for i in range(0, 40, 2):
                os.unlink(f"w{me}/f{i}")
                os.rename(f"w{me}/f{i + 1}", f"w{me}/g{i}")
            for name in os.listdir(f"w{me}"):
                os.unlink(f"w{me}/{name}")
        print("ok")
        """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(n)],
                              cwd=mounted, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for n in range(4)]
    lister = subprocess.Popen(["bash", "-c", "for i in $(seq 200); do ls -laR . >/dev/null; "
                               "done"], cwd=mounted)
    try:
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0 and out.strip() == "ok", err
        assert lister.wait(timeout=120) == 0
    finally:
        for p in procs + [lister]:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    assert all(os.listdir(Path(mounted, f"w{n}")) == [] for n in range(4))


def test_option_parsing_and_mountinfo_escapes():
    """No mount: -o handling and the mountinfo decoding the tools rely on."""
    from daxfs.cli import mount as cmd_mount
    from daxfs.fuse import mount
    assert cmd_mount.parse_options("rw,defaults,nofail,_netdev,x-systemd.automount,noexec") \
        == (["noexec"], False)
    assert cmd_mount.parse_options("ro,nosuid,allow_root") == (["nosuid", "allow_root"], True)
    with pytest.raises(cmd_mount.UsageError):
        cmd_mount.parse_options("uid=5")
    assert host.unescape(r"/a\040b\134c\011d") == "/a b\\c\td"
    opts = mount.fuse_options("/x/a,b\\é.img", ["noexec"], readonly=True)
    assert r"fsname=/x/a\,b\\\303\251.img" in opts and "subtype=daxfs" in opts
    assert {"default_permissions", "ro", "noexec"} <= opts


def _wakeups(pid: int) -> int:
    """Voluntary context switches of every thread of `pid` so far."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def test_an_idle_mount_sleeps(image, mnt):
    """With nothing to do, the daemon wakes up about once a second (the
    commit timer), not every few milliseconds: the reaper of unlinked
    inodes sleeps until one is queued (it used to look every 5 ms, about
    200 wake-ups a second)."""
    from daxfs.host import daemon_pids
    with mount_image(image, mnt) as m:
        (m / "f").write_bytes(b"x")
        os.unlink(m / "f")                   # one inode queued, freed, then idle
        time.sleep(1)
        pid = daemon_pids(image)[0]
        before = _wakeups(pid)
        time.sleep(2)
        woke = _wakeups(pid) - before
        assert woke < 20, f"an idle daemon woke up {woke} times in 2 s"


@pytest.mark.timeout(300)
def test_unlinked_file_is_freed_and_committed_while_idle(image, mnt):
    """An unlinked, closed file is freed by the daemon on its own once no
    request has come for a moment (no statfs, no unmount to drain the
    queue), and the background commit makes that durable: after a SIGKILL
    the image has no orphan left and the file's inode is gone."""
    from daxfs.host import daemon_pids, wait_gone
    from daxfs.engine.volume import Volume
    with mount_image(image, mnt, check_log=False) as m:
        p = Path(m, "big")
        p.write_bytes(os.urandom(16 * MiB))
        ino = os.stat(p).st_ino
        os.sync()
        os.unlink(p)
        time.sleep(3)                        # idle: freed, then committed (1 s timer)
        pids = daemon_pids(image)
        os.kill(pids[0], 9)
        assert not wait_gone(pids, 30)
        force_unmount(m, pids)
    vol = Volume.open(str(image), readonly=True)
    try:
        assert vol.trees["orphan"].count == 0
        assert vol.trees["inode"].lookup((ino,)) is None
    finally:
        vol.pmem.close()
    check_image(image)
