"""copy_file_range, fallocate and SEEK_DATA/SEEK_HOLE on a real mount,
driven by the tools people use: coreutils `cp`, util-linux `fallocate`,
xfsprogs `xfs_io`, Python's os.copy_file_range / os.lseek, as root and as
an unprivileged user; every scenario ends in a clean `daxfs check` (the
`mounted` fixture) or checks the image itself.

None of these needs `daxfs exec`: the kernel forwards COPY_FILE_RANGE,
FALLOCATE and LSEEK to the daemon.  `daxfs exec -- filefrag -v` (FIEMAP,
which the kernel does not forward) only shows what was shared.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import MiB, check_image, daxfs, make_image, mount_image, run
from test_reflink_tools import settle as commit, uncached_read as read   # (the daemon's bytes)

BS = 4096
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def ok(cmd, *, cwd="/", timeout=120, user=None) -> subprocess.CompletedProcess:
    if user == "nobody":
        cmd = NOBODY + list(cmd)
    res = run(cmd, timeout=timeout, cwd=cwd)
    assert res.returncode == 0, f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


def py(code: str, *args, user=None, check=True) -> subprocess.CompletedProcess:
    """Python in a child process (a hung mount fails the test, not pytest)."""
    cmd = [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]
    if user == "nobody":
        cmd = NOBODY + cmd
    res = run(cmd, timeout=120, cwd="/")
    if check:
        assert res.returncode == 0, f"python failed:\n{code}\n{res.stdout}\n{res.stderr}"
    return res


def filefrag(path) -> list[tuple[int, int, set[str]]]:
    """(first block, block count, flags) of each extent filefrag -v shows
    (FIEMAP: through `daxfs exec`)."""
    res = daxfs("exec", "--", "filefrag", "-v", str(path))
    assert res.returncode == 0, res.stderr
    out = []
    for line in res.stdout.splitlines():
        m = re.match(r"\s*\d+:\s+(\d+)\.\.\s*(\d+):\s+\d+\.\.\s*\d+:\s+(\d+):\s*(?:\d+:)?\s*(.*)$",
                     line)
        if m:
            flags = {f for f in m.group(4).replace(",", " ").split() if f}
            out.append((int(m.group(1)), int(m.group(3)), flags))
    return out


def blocks_with(path, flag) -> int:
    return sum(n for _, n, flags in filefrag(path) if flag in flags)


# ---- copy_file_range: cp shares without daxfs exec ----------------------------------

def test_cp_shares_extents_without_daxfs_exec(mounted):
    src = mounted / "src"
    data = os.urandom(24 * MiB + 1234)              # a partial last block too
    src.write_bytes(data)
    commit(mounted)
    free0 = os.statvfs(mounted).f_bfree
    ok(["cp", src, mounted / "plain"])                          # coreutils 9.1: copy_file_range
    ok(["cp", "--reflink=auto", src, mounted / "auto"])
    commit(mounted)
    assert free0 - os.statvfs(mounted).f_bfree < 64, "cp copied the blocks"
    nblocks = -(-len(data) // BS)
    for name in ("plain", "auto"):
        assert read(mounted / name) == data
        assert blocks_with(mounted / name, "shared") == nblocks
    # a write into the copy: copy-on-write, the source keeps its bytes
    with open(mounted / "plain", "r+b") as f:
        f.seek(5 * MiB + 7)
        f.write(b"!")
    assert read(src) == data
    assert read(mounted / "plain") == data[:5 * MiB + 7] + b"!" + data[5 * MiB + 8:]
    assert blocks_with(mounted / "plain", "shared") == nblocks - 1


def test_cp_keeps_holes(mounted):
    """cp finds the holes of a sparse file with SEEK_DATA/SEEK_HOLE: they
    stay holes in the copy.  (coreutils 9.1 copies the data segments of a
    sparse file with read/write, not copy_file_range: they are not shared.)"""
    src = mounted / "sparse"
    with open(src, "wb") as f:
        for off in (0, 5 * MiB, 9 * MiB + 100):
            f.seek(off)
            f.write(os.urandom(MiB))
        f.truncate(16 * MiB)
    ok(["cp", src, mounted / "copy"])
    assert read(mounted / "copy") == read(src)
    st = os.stat(mounted / "copy")
    assert st.st_size == 16 * MiB and st.st_blocks * 512 <= 3 * MiB + 2 * BS
    assert [(a, n) for a, n, _ in filefrag(mounted / "copy")] == \
        [(a, n) for a, n, _ in filefrag(src)]


def test_python_copy_file_range_semantics(mounted):
    py("""
        import errno, os, sys
        m = sys.argv[1]
        data = os.urandom(3 * 4096 + 100)
        with open(f"{m}/a", "wb") as f:
            f.write(data)
        a = os.open(f"{m}/a", os.O_RDWR)
        b = os.open(f"{m}/b", os.O_RDWR | os.O_CREAT, 0o644)
        # short at EOF, 0 at and past it; the destination grows
        assert os.copy_file_range(a, b, 1 << 30, 4096, 8192) == len(data) - 4096
        assert os.fstat(b).st_size == 8192 + len(data) - 4096
        assert os.copy_file_range(a, b, 10, len(data), 0) == 0
        assert os.copy_file_range(a, b, 10, len(data) + 1, 0) == 0
        assert os.pread(b, 1 << 20, 0) == bytes(8192) + data[4096:]
        # unaligned offsets: bytes copied
        assert os.copy_file_range(a, b, 5000, 3, 1) == 5000
        assert os.pread(b, 5000, 1) == data[3:5003]
        # the file position moves when no offset is given
        os.lseek(a, 0, os.SEEK_SET); os.lseek(b, 0, os.SEEK_SET)
        assert os.copy_file_range(a, b, 4096) == 4096 and os.lseek(b, 0, os.SEEK_CUR) == 4096
        # within one file: overlapping ranges are EINVAL, others work
        try:
            os.copy_file_range(a, a, 8192, 0, 4096)
            raise SystemExit("overlap accepted")
        except OSError as e:
            assert e.errno == errno.EINVAL, e
        assert os.copy_file_range(a, a, 4096, 0, 16384) == 4096
        assert os.pread(a, 4096, 16384) == data[:4096]
        # a destination not open for writing: EBADF (the VFS's check)
        r = os.open(f"{m}/b", os.O_RDONLY)
        try:
            os.copy_file_range(a, r, 10)
            raise SystemExit("read-only destination accepted")
        except OSError as e:
            assert e.errno == errno.EBADF, e
        # a copy is shortened at the largest file size (generic_write_check_limits)
        big = os.open(f"{m}/big", os.O_RDWR | os.O_CREAT, 0o644)
        assert os.copy_file_range(a, big, 10, 0, (1 << 63) - 5) == 4
        assert os.fstat(big).st_size == (1 << 63) - 1
        assert os.pread(big, 4, (1 << 63) - 5) == data[:4]
        """, mounted)


def test_copy_between_two_mounts_copies_bytes(mounted, mount_root, tmp_path):
    """Another daxfs mount is another filesystem: the kernel copies through
    the page cache (splice) instead of asking either daemon."""
    img2 = make_image(tmp_path / "second.img")
    mnt2 = mount_root / "second"
    mnt2.mkdir()
    data = os.urandom(2 * MiB + 5)
    (mounted / "a").write_bytes(data)
    with mount_image(img2, mnt2):
        py("""
            import os, sys
            a = os.open(sys.argv[1], os.O_RDONLY)
            b = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT, 0o644)
            left = os.fstat(a).st_size
            while left:
                n = os.copy_file_range(a, b, left)
                assert n > 0
                left -= n
            """, mounted / "a", mnt2 / "b")
        assert read(mnt2 / "b") == data
    check_image(img2)


def test_copy_file_range_drops_privileges_like_a_write(mounted):
    """The kernel drops set-user-ID (and a file capability) before sending
    COPY_FILE_RANGE or FALLOCATE, for a caller without CAP_FSETID."""
    src, dst = mounted / "s", mounted / "suid"
    src.write_bytes(b"s" * 3 * BS)
    dst.write_bytes(b"d" * BS)
    os.chown(dst, 65534, 65534)
    os.chmod(dst, 0o4755)
    os.setxattr(dst, "security.capability",
                bytes.fromhex("0100000201000000000000000000000000000000"))
    os.chmod(src, 0o644)
    py("""
        import os, sys
        a, b = os.open(sys.argv[1], os.O_RDONLY), os.open(sys.argv[2], os.O_WRONLY)
        assert os.copy_file_range(a, b, 3 * 4096, 0, 0) == 3 * 4096
        """, src, dst, user="nobody")
    st = os.stat(dst)
    assert not st.st_mode & 0o6000 and "security.capability" not in os.listxattr(dst)
    assert read(dst) == b"s" * 3 * BS
    os.chmod(dst, 0o4755)
    ok(["fallocate", "-l", str(8 * BS), dst], user="nobody")
    assert not os.stat(dst).st_mode & 0o6000 and os.stat(dst).st_size == 8 * BS
    # nobody cannot copy into or fallocate a file it may not write
    (mounted / "roots").write_bytes(b"r")
    res = py("""
        import os, sys
        os.open(sys.argv[1], os.O_WRONLY)
        """, mounted / "roots", user="nobody", check=False)
    assert "PermissionError" in res.stderr
    res = run(NOBODY + ["fallocate", "-l", "1M", mounted / "roots"], timeout=60)
    assert res.returncode != 0 and os.stat(mounted / "roots").st_size == 1


def test_copy_file_range_against_concurrent_readers(mounted):
    """The kernel drops the destination's cached pages once COPY_FILE_RANGE
    has changed the file: after each copy, buffered readers (racing it, and
    through a descriptor open all along) see the new bytes."""
    py("""
        import os, sys, threading
        m = sys.argv[1]
        pats = [bytes([c]) * (1 << 20) for c in b"AB"]
        for i, p in enumerate(pats):
            with open(f"{m}/p{i}", "wb") as f:
                f.write(p)
        with open(f"{m}/dst", "wb") as f:
            f.write(pats[0])
        stop = False
        def reader():
            while not stop:
                fd = os.open(f"{m}/dst", os.O_RDONLY)
                os.pread(fd, 1 << 20, 0)
                os.close(fd)
        ts = [threading.Thread(target=reader) for _ in range(2)]
        for t in ts:
            t.start()
        held = os.open(f"{m}/dst", os.O_RDONLY)
        srcs = [os.open(f"{m}/p{i}", os.O_RDONLY) for i in range(2)]
        bad = 0
        try:
            for r in range(200):
                k = (r + 1) % 2
                out = os.open(f"{m}/dst", os.O_WRONLY)
                done = 0
                while done < 1 << 20:
                    done += os.copy_file_range(srcs[k], out, (1 << 20) - done, done, done)
                os.close(out)
                if os.pread(held, 1 << 20, 0) != pats[k]:
                    bad += 1
        finally:
            stop = True
            for t in ts:
                t.join()
        assert bad == 0, f"{bad} stale reads"
        """, mounted)


# ---- fallocate ---------------------------------------------------------------------

def test_util_linux_fallocate(mounted):
    f = mounted / "f"
    ok(["fallocate", "-l", "8M", f])
    st = os.stat(f)
    assert st.st_size == 8 * MiB and st.st_blocks * 512 == 8 * MiB
    assert read(f) == bytes(8 * MiB)
    assert blocks_with(f, "unwritten") == 2048
    # -n: keep the size
    ok(["fallocate", "-n", "-o", "8M", "-l", "4M", f])
    st = os.stat(f)
    assert st.st_size == 8 * MiB and st.st_blocks * 512 == 12 * MiB
    data = os.urandom(8 * MiB)
    with open(f, "r+b") as fh:
        fh.write(data)
    # -p: punch (whole blocks freed, partial edges zeroed)
    ok(["fallocate", "-p", "-o", str(BS + 10), "-l", str(3 * BS), f])
    want = data[:BS + 10] + bytes(3 * BS) + data[4 * BS + 10:]
    assert read(f) == want and os.stat(f).st_size == 8 * MiB
    assert os.stat(f).st_blocks * 512 == 12 * MiB - 2 * BS
    # -z: zero a range (reads zeros, stays allocated), growing the file
    ok(["fallocate", "-z", "-o", str(6 * MiB + 3), "-l", str(4 * MiB), f])
    want = want[:6 * MiB + 3] + bytes(4 * MiB)
    assert os.stat(f).st_size == 10 * MiB + 3 and read(f) == want
    # -d (dig holes) finds the zeroed blocks with SEEK_DATA and punches them
    ok(["fallocate", "-d", f])
    assert read(f) == want
    # an unsupported mode: EOPNOTSUPP, never ENOSYS (the kernel would stop asking)
    res = run(["fallocate", "-c", "-o", "0", "-l", str(BS), f], timeout=60)
    assert res.returncode != 0 and "not supported" in res.stderr.lower(), res.stderr
    ok(["fallocate", "-l", str(BS), f])                 # still answered after that
    res = run(["fallocate", "-l", "1M", mounted], timeout=60)
    assert res.returncode != 0


def test_xfs_io_falloc_fpunch_fzero_seek(mounted):
    f = mounted / "x"
    res = ok(["xfs_io", "-f", "-c", "pwrite -S 0x61 0 64k", "-c", "falloc 1m 1m",
              "-c", "fpunch 16k 8k", "-c", "fzero 32k 4k", "-c", "falloc -k 4m 1m",
              "-c", "seek -a -r 0", "-c", "stat", f])
    seek = re.findall(r"^(DATA|HOLE)\s+(\d+)$", res.stdout, re.M)
    assert seek == [("DATA", "0"), ("HOLE", str(16 * 1024)), ("DATA", str(24 * 1024)),
                    ("HOLE", str(32 * 1024)), ("DATA", str(36 * 1024)),
                    ("HOLE", str(64 * 1024))], res.stdout
    st = os.stat(f)
    assert st.st_size == 2 * MiB
    assert st.st_blocks * 512 == 64 * 1024 - 8 * 1024 + MiB + MiB
    got = read(f)
    assert got == b"a" * 16384 + bytes(8192) + b"a" * 8192 + bytes(4096) + b"a" * 28672 + \
        bytes(2 * MiB - 65536)
    # xfs_io's own zero/punch/seek through an fd kept open
    res = ok(["xfs_io", "-c", "seek -d 0", "-c", "seek -h 0", "-c", "seek -d 40k",
              "-c", "seek -h 1m", f])
    offs = re.findall(r"^(?:DATA|HOLE)\s+(\d+|EOF)$", res.stdout, re.M)
    assert offs == ["0", str(16 * 1024), str(40 * 1024), str(MiB)], res.stdout


def test_python_lseek_data_and_hole(mounted):
    py("""
        import errno, os, sys
        p = sys.argv[1] + "/s"
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
        runs = []
        for i in range(0, 3000, 3):                  # 1000 extents, a hole after each
            os.pwrite(fd, b"d" * 4096, i * 4096)
            runs.append(i)
        size = 3000 * 4096 + 10
        os.ftruncate(fd, size)
        for i in (0, 1, 2, 1500, 2996, 2997):
            off = i * 4096 + 5
            data = i if i % 3 == 0 else i + 3 - i % 3
            want_d = max(off, data * 4096)
            want_h = (i + 1) * 4096 if i % 3 == 0 else off
            assert os.lseek(fd, off, os.SEEK_DATA) == want_d, (i, os.lseek(fd, off, os.SEEK_DATA))
            assert os.lseek(fd, off, os.SEEK_HOLE) == want_h, i
        assert os.lseek(fd, 2999 * 4096, os.SEEK_HOLE) == 2999 * 4096
        for off in (size, size + 4096):
            for whence in (os.SEEK_DATA, os.SEEK_HOLE):
                try:
                    os.lseek(fd, off, whence)
                    raise SystemExit("ENXIO expected")
                except OSError as e:
                    assert e.errno == errno.ENXIO, e
        try:
            os.lseek(fd, 2998 * 4096, os.SEEK_DATA)      # only a hole follows
            raise SystemExit("ENXIO expected")
        except OSError as e:
            assert e.errno == errno.ENXIO, e
        # a reader that may not write sees the same
        """, mounted)
    os.chmod(mounted / "s", 0o644)
    py("""
        import os, sys
        fd = os.open(sys.argv[1], os.O_RDONLY)
        assert os.lseek(fd, 5, os.SEEK_HOLE) == 4096 and os.lseek(fd, 4097, os.SEEK_DATA) == 12288
        """, mounted / "s", user="nobody")


# ---- a full device ---------------------------------------------------------------

@pytest.mark.timeout(300)
def test_enospc_on_a_small_image_changes_nothing(tmp_path, mnt):
    image = make_image(tmp_path / "small.img", size=24 * MiB)
    with mount_image(image, mnt) as m:
        (m / "a").write_bytes(b"a" * (2 * MiB))
        ok(["cp", m / "a", m / "shared"])
        res = run(["fallocate", "-l", "64M", m / "big"], timeout=60)
        assert res.returncode != 0 and "No space" in res.stderr
        assert os.stat(m / "big").st_size == 0 and os.stat(m / "big").st_blocks == 0
        # fill it
        res = run(["dd", "if=/dev/zero", f"of={m}/fill", "bs=1M", "count=64"], timeout=120)
        assert "No space" in res.stderr
        before = {n: (os.stat(m / n).st_size, os.stat(m / n).st_blocks, read(m / n))
                  for n in ("a", "shared")}
        for cmd in (["fallocate", "-n", "-o", "4M", "-l", "8M", m / "a"],
                    ["fallocate", "-z", "-o", "0", "-l", "2M", m / "a"],   # shared blocks to replace
                    ["fallocate", "-l", "16M", m / "a"]):
            res = run(cmd, timeout=60)
            assert res.returncode != 0 and "No space" in res.stderr, (cmd, res.stderr)
            after = {n: (os.stat(m / n).st_size, os.stat(m / n).st_blocks, read(m / n))
                     for n in ("a", "shared")}
            assert after == before, cmd
        os.unlink(m / "fill")
        ok(["fallocate", "-z", "-o", "0", "-l", "2M", m / "a"])
        assert read(m / "a") == bytes(2 * MiB) and read(m / "shared") == b"a" * (2 * MiB)
    check_image(image)


def test_punch_of_many_extents_goes_in_steps(mounted):
    """A punch over more extents than one step's budget frees them in steps
    (other requests served in between) and frees them all."""
    a, b = mounted / "frag", mounted / "other"
    with open(a, "wb") as fa, open(b, "wb") as fb:
        for i in reversed(range(400)):    # interleaved, last block first: one extent per block
            os.pwrite(fa.fileno(), os.urandom(BS), i * BS)
            os.pwrite(fb.fileno(), b"o" * BS, i * BS)
    assert len(filefrag(a)) > 200
    ok(["fallocate", "-p", "-o", "100", "-l", str(400 * BS), a])
    assert read(a) == read(a)[:100] + bytes(400 * BS - 100) and os.stat(a).st_blocks == 8
    assert read(b) == b"o" * (400 * BS)
