"""POSIX ACLs: the xattr form and the mode rules (daxfs/engine/acl.py), the
engine keeping mode and ACLs in step, and a real mount driven by setfacl,
getfacl, chmod, cp -a and an unprivileged user (setpriv) whose access the
kernel decides from the ACL."""

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from daxfs.engine import acl
from daxfs.engine.errors import InvalidArgument, PermissionDenied
from engine_helpers import assert_clean, make_fs

U, G, M = acl.UNDEFINED_ID, acl.GROUP_OBJ, acl.MASK
REG = stat.S_IFREG | 0o644
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def entries(*lines):
    return [list(e) for e in lines]


BASE = entries((acl.USER_OBJ, 6, U), (G, 4, U), (acl.OTHER, 4, U))
NAMED = entries((acl.USER_OBJ, 7, U), (acl.USER, 6, 1000), (G, 5, U), (M, 7, U),
                (acl.OTHER, 0, U))


# ---- the xattr form and the rules ------------------------------------------

def test_encode_parse_round_trip():
    assert acl.parse(acl.encode(NAMED)) == NAMED
    assert acl.parse(acl.encode([])) == []


@pytest.mark.parametrize("bad", [
    b"\x02\x00\x00",                                            # torn header
    acl.encode(BASE)[:-1],                                      # torn entry
    b"\x01\x00\x00\x00" + acl.encode(BASE)[4:],                 # version 1
    acl.encode(BASE[:2]),                                       # no OTHER
    acl.encode(NAMED[:3] + NAMED[4:]),                          # named entry, no mask
    acl.encode([NAMED[0], NAMED[2], NAMED[1]] + NAMED[3:]),     # out of order
    acl.encode(NAMED[:2] + [[acl.USER, 6, 1000]] + NAMED[2:]),  # same user twice
    acl.encode([[acl.USER_OBJ, 9, U]] + BASE[1:]),              # perm beyond rwx
    acl.encode([[0x40, 7, U]] + BASE),                          # unknown tag
])
def test_parse_refuses_what_the_kernel_would(bad):
    with pytest.raises(InvalidArgument):
        acl.parse(bad)


def test_mode_bits_take_the_mask_over_the_group():
    assert acl.mode_bits(BASE) == 0o644
    assert acl.mode_bits(NAMED) == 0o770
    assert acl.is_minimal(BASE) and not acl.is_minimal(NAMED)


def test_chmod_rewrites_owner_mask_other():
    out = acl.chmod(NAMED, 0o640)
    assert out == entries((acl.USER_OBJ, 6, U), (acl.USER, 6, 1000), (G, 5, U), (M, 4, U),
                          (acl.OTHER, 0, U))
    assert acl.mode_bits(out) == 0o640
    assert acl.chmod(BASE, 0o751) == entries((acl.USER_OBJ, 7, U), (G, 5, U), (acl.OTHER, 1, U))


def test_inherit_masks_both_ways():
    mode, access = acl.inherit(NAMED, stat.S_IFREG | 0o666)
    assert mode == stat.S_IFREG | 0o660             # other 0 from the ACL, mask rw from mode
    assert access == entries((acl.USER_OBJ, 6, U), (acl.USER, 6, 1000), (G, 5, U),
                             (M, 6, U), (acl.OTHER, 0, U))
    mode, access = acl.inherit(BASE, stat.S_IFDIR | 0o777)
    assert (mode, access) == (stat.S_IFDIR | 0o644, None)      # minimal: nothing stored


# ---- the engine -----------------------------------------------------------------

def test_engine_keeps_mode_and_acls_in_step(tmp_path):
    fs = make_fs(tmp_path / "a.img")
    f = fs.mknod(1, b"f", REG, 0, 0).ino
    fs.setxattr(f, acl.ACCESS, acl.encode(NAMED))
    assert stat.S_IMODE(fs.getattr(f).mode) == 0o770
    assert acl.parse(fs.getxattr(f, acl.ACCESS)) == NAMED

    fs.setattr(f, mode=0o604)                         # chmod rewrites the ACL
    assert acl.mode_bits(acl.parse(fs.getxattr(f, acl.ACCESS))) == 0o604

    fs.setxattr(f, acl.ACCESS, acl.encode(BASE))      # minimal: the mode, no ACL
    assert stat.S_IMODE(fs.getattr(f).mode) == 0o644
    assert acl.ACCESS not in fs.listxattr(f)

    with pytest.raises(PermissionDenied):
        fs.setxattr(f, acl.DEFAULT, acl.encode(NAMED))
    with pytest.raises(InvalidArgument):
        fs.setxattr(f, acl.ACCESS, b"junk")

    d = fs.mkdir(1, b"d", 0o2755, 0, 0).ino
    fs.setxattr(d, acl.DEFAULT, acl.encode(NAMED))
    g = fs.mknod(d, b"g", stat.S_IFREG | 0o666, 0, 0).ino
    assert stat.S_IMODE(fs.getattr(g).mode) == 0o660
    assert acl.DEFAULT not in fs.listxattr(g)
    sub = fs.mkdir(d, b"sub", 0o777, 0, 0).ino
    assert acl.parse(fs.getxattr(sub, acl.DEFAULT)) == NAMED
    assert acl.parse(fs.getxattr(sub, acl.ACCESS))[1] == [acl.USER, 6, 1000]
    lnk = fs.symlink(d, b"l", b"g", 0, 0).ino
    assert fs.listxattr(lnk) == []

    # set-gid is dropped by an ACL set from outside the file's group
    fs.setxattr(d, acl.ACCESS, acl.encode(NAMED), fsetid=False, in_group=lambda gid: False)
    assert not fs.getattr(d).mode & stat.S_ISGID
    fs.setxattr(d, acl.DEFAULT, acl.encode([]))       # empty default: removed
    assert acl.DEFAULT not in fs.listxattr(d)
    fs.commit()
    assert_clean(fs)
    fs.close()


def test_engine_applies_the_umask_unless_a_default_acl_replaces_it(tmp_path):
    fs = make_fs(tmp_path / "u.img")
    assert stat.S_IMODE(fs.mknod(1, b"f", stat.S_IFREG | 0o666, 0, 0, umask=0o027).mode) == 0o640
    assert stat.S_IMODE(fs.mkdir(1, b"d", 0o777, 0, 0, umask=0o077).mode) == 0o700
    assert stat.S_IMODE(fs.symlink(1, b"l", b"f", 0, 0).mode) == 0o777
    d = fs.mkdir(1, b"acl", 0o755, 0, 0).ino
    fs.setxattr(d, acl.DEFAULT, acl.encode(NAMED))
    g = fs.mknod(d, b"g", stat.S_IFREG | 0o666, 0, 0, umask=0o777)
    assert stat.S_IMODE(g.mode) == 0o660                   # the ACL, not the umask
    assert_clean(fs)
    fs.close()


# ---- a real mount ---------------------------------------------------------------

def _getfacl(path):
    return subprocess.run(["getfacl", "-cn", path], capture_output=True, text=True,
                          check=True, timeout=30).stdout.split()


def _as_nobody(*cmd):
    return subprocess.run(NOBODY + list(cmd), capture_output=True, text=True, timeout=30)


def test_setfacl_getfacl_and_the_kernel_enforce(mounted):
    f = mounted / "f"
    f.write_text("secret\n")
    os.chmod(f, 0o600)
    assert _as_nobody("cat", str(f)).returncode != 0
    subprocess.run(["setfacl", "-m", "u:65534:r", str(f)], check=True, timeout=30)
    assert "user:65534:r--" in _getfacl(f)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o640          # group bits = the mask
    assert _as_nobody("cat", str(f)).stdout == "secret\n"

    os.chmod(f, 0o600)                                         # the mask goes to ---
    assert "mask::---" in _getfacl(f)
    assert _as_nobody("cat", str(f)).returncode != 0

    subprocess.run(["setfacl", "-b", str(f)], check=True, timeout=30)
    assert _getfacl(f) == ["user::rw-", "group::---", "other::---"]
    with pytest.raises(OSError) as e:
        os.getxattr(f, "system.posix_acl_access")
    assert e.value.errno == errno.ENODATA


def test_default_acl_is_inherited_and_cp_a_keeps_acls(mounted):
    d = mounted / "shared"
    d.mkdir(mode=0o700)
    subprocess.run(["setfacl", "-m", "u:65534:rwx", "-d", "-m", "u:65534:rwx", str(d)],
                   check=True, timeout=30)
    r = _as_nobody("sh", "-c", f"umask 022; echo made > {d}/by-nobody && mkdir {d}/sub")
    assert r.returncode == 0, r.stderr
    assert (d / "by-nobody").read_text() == "made\n"
    sub = _getfacl(d / "sub")
    assert "default:user:65534:rwx" in sub and "user:65534:rwx" in sub

    (d / "copy-src").write_text("x")
    subprocess.run(["setfacl", "-m", "u:65534:r", str(d / "copy-src")], check=True,
                   timeout=30)
    subprocess.run(["cp", "-a", str(d / "copy-src"), str(mounted / "copy")], check=True,
                   timeout=30)
    assert _getfacl(mounted / "copy") == _getfacl(d / "copy-src")


def test_permits_follows_the_kernels_order():
    nobody_in = lambda gid: gid in (100,)      # noqa: E731
    acl_ = entries((acl.USER_OBJ, 0, U), (acl.USER, 7, 1000), (G, 4, U), (acl.GROUP, 2, 100),
                   (M, 6, U), (acl.OTHER, 1, U))
    assert not acl.permits(acl_, 0, nobody_in, 0, 0, 4)          # the owner: owner entry only
    assert acl.permits(acl_, 1000, nobody_in, 0, 0, 6)           # named user, within the mask
    assert not acl.permits(acl_, 1000, nobody_in, 0, 0, 1)       # x is masked off
    assert acl.permits(acl_, 5, nobody_in, 0, 0, 2)              # a named group grants w
    assert not acl.permits(acl_, 5, nobody_in, 0, 0, 1)          # in a group: never other
    assert acl.permits(acl_, 5, lambda gid: False, 0, 0, 1)      # nobody else: other


def test_clone_by_a_user_the_acl_lets_read(mounted):
    """The control protocol's read check of a clone's source (control_server)
    goes by the ACL, as the kernel's would."""
    src = mounted / "src"
    src.write_bytes(os.urandom(64 << 10))
    os.chmod(src, 0o600)
    dst = mounted / "dst"
    dst.touch()
    os.chown(dst, 65534, 65534)
    daxfs = [str(Path(sys.executable).parent / "daxfs"), "reflink", str(src), str(dst)]
    denied = _as_nobody(*daxfs)
    assert denied.returncode != 0 and dst.stat().st_size == 0
    subprocess.run(["setfacl", "-m", "u:65534:r", str(src)], check=True, timeout=30)
    r = _as_nobody(*daxfs)
    assert r.returncode == 0, r.stderr
    assert dst.read_bytes() == src.read_bytes()


def test_umask_is_applied_unless_a_default_acl_replaces_it(mounted):
    """The kernel leaves the umask to daxfs (FUSE_DONT_MASK, asked for at INIT): daxfs
    applies it to files, directories and fifos, and not under a default
    ACL, which takes its place (xfstests generic/099's umask 722 case)."""
    script = (f"cd {mounted} && umask 027 && touch f && mkdir d && mkfifo p && "
              "mkdir acl && setfacl -d -m u::r-x,g::r--,o::--- acl && "
              "umask 722 && touch acl/g && mkdir acl/e")
    subprocess.run(["sh", "-c", script], check=True, timeout=30)
    modes = {n: stat.S_IMODE(os.stat(mounted / n).st_mode)
             for n in ("f", "d", "p", "acl/g", "acl/e")}
    assert modes == {"f": 0o640, "d": 0o750, "p": 0o640, "acl/g": 0o440, "acl/e": 0o540}


def test_the_daemon_got_the_umask_from_the_kernel(mounted, image):
    log = Path(f"{image}.mount.log")
    assert "umask: left to daxfs (FUSE_DONT_MASK)" in log.read_text()
