"""Hostile callers on a real mount.

* An unprivileged user (uid/gid 65534, no groups, via setpriv) cannot read
  another user's 0600 file, cannot clone from a file it cannot read (by
  inode number, with a descriptor of another file, an O_PATH descriptor, or
  a descriptor it inherited), cannot clone or dedupe into a file it cannot
  write, cannot use dedupe or FIEMAP as an oracle on files it cannot read,
  cannot inject poison on the live mount nor read the daemon's reports
  and device map (EPERM once the kernel lets the request through).
* Malformed control requests (random bytes, wrong sizes, huge lengths,
  negative offsets encoded as u64, bad magic/version/op/flags, bogus FIEMAP
  and admin names) get EINVAL or the errno control.py documents (EBADF,
  EXDEV, ENODATA, per-destination dedupe statuses) and never hurt the
  daemon: the mount answers afterwards and its log has no traceback or
  error (the `mounted` fixture checks the log and runs `daxfs check`).
* mkfs makes the image 0600, whatever the umask, also over an existing file.
"""

import errno
import json
import os
import random
import struct
import subprocess
import sys

import pytest

from conftest import ROOT, run
from daxfs.control import protocol as control
from daxfs.control import client as rc
from daxfs.control.admin import LIST, MAP, NAMES, POISON, REPORT

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
BS = 4096
pytestmark = pytest.mark.timeout(300)

# Run as nobody: sets up its own descriptors, tries every attack, prints a
# JSON object {attack: errno name or "OK" or a value}.
NOBODY_SNIPPET = r"""
import errno, json, os, sys
from daxfs.control import protocol as control, client as rc
from daxfs.control.admin import LIST, MAP, NAMES, POISON, REPORT
m, secret_ino, hidden_ino, inherited = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = {}
def t(what, fn):
    try:
        r = fn()
        out[what] = "OK" if r is None else r
    except OSError as e:
        out[what] = errno.errorcode.get(e.errno, str(e.errno))
pub = m + "/pub"
own = os.open(pub + "/own", os.O_RDWR | os.O_CREAT, 0o644)
os.write(own, b"n" * 3 * 4096)
dst = os.open(pub + "/dst", os.O_RDWR | os.O_CREAT, 0o644)
dev = os.fstat(dst).st_dev
def forged(ino, fd, op=control.OP_CLONE):
    return control.encode_request(op, dev, ino, 0, 0, 0 if op == control.OP_CLONE else 4096, src_fd=fd)

t("open secret", lambda: os.open(m + "/secret", os.O_RDONLY))
t("open other", lambda: os.open(m + "/other", os.O_RDONLY))
t("open hidden", lambda: os.open(m + "/hidden/inner", os.O_RDONLY))
# clone from files it cannot read
t("clone by ino", lambda: os.setxattr(dst, control.CLONE_NAME, forged(secret_ino, -1)))
t("clone by ino, own fd", lambda: os.setxattr(dst, control.CLONE_NAME, forged(secret_ino, own)))
t("clone hidden, own fd", lambda: os.setxattr(dst, control.CLONE_NAME, forged(hidden_ino, own)))
t("clone hidden by ino", lambda: os.setxattr(dst, control.CLONE_NAME, forged(hidden_ino, -1)))
opath = os.open(m + "/secret", os.O_PATH)
t("clone O_PATH fd (client)", lambda: rc.clone(opath, dst))
t("clone O_PATH fd (raw)", lambda: os.setxattr(dst, control.CLONE_NAME, forged(secret_ino, opath)))
t("clone inherited fd", lambda: rc.clone(inherited, dst))
t("dedupe by ino", lambda: os.setxattr(dst, control.DEDUPE_NAME, forged(secret_ino, own, control.OP_DEDUPE)))
t("dedupe inherited fd", lambda: rc.dedupe(inherited, 0, 4096, [(own, 0)])[0].status)
t("dedupe inherited fd (raw)", lambda: os.setxattr(own, control.DEDUPE_NAME, forged(secret_ino, inherited, control.OP_DEDUPE)))
out["dst size"] = os.fstat(dst).st_size
# clone and dedupe into a file it cannot write
rofd = os.open(m + "/rootfile", os.O_RDONLY)
t("clone into read-only fd (client)", lambda: rc.clone(own, rofd))
t("clone into read-only fd (raw)", lambda: os.setxattr(rofd, control.CLONE_NAME, forged(os.fstat(own).st_ino, own)))
t("clone into rootfile by path", lambda: os.setxattr(m + "/rootfile", control.CLONE_NAME, forged(os.fstat(own).st_ino, own)))
t("dedupe into rootfile", lambda: rc.dedupe(own, 0, 4096, [(rofd, 0)])[0].status)
# oracles on an unreadable file
t("dedupe into secret by path", lambda: os.setxattr(m + "/secret", control.DEDUPE_NAME, forged(os.fstat(own).st_ino, own, control.OP_DEDUPE)))
t("result of secret", lambda: os.getxattr(m + "/secret", control.RESULT_NAME))
t("fiemap of secret", lambda: os.getxattr(m + "/secret", control.fiemap_name(0, 4096)))
t("xattr of secret", lambda: os.getxattr(m + "/secret", "user.note"))
t("link secret", lambda: os.link(m + "/secret", pub + "/stolen"))
# the administrator's requests
t("poison", lambda: os.setxattr(m, POISON, b"0 4096"))
t("poison metadata", lambda: os.setxattr(m, POISON, b"inode-tree"))
t("report", lambda: os.getxattr(m, REPORT))
t("poison list", lambda: os.getxattr(m, LIST))
t("map", lambda: os.getxattr(m, MAP + b"0.0"))
t("names", lambda: os.getxattr(m, NAMES + b"0.0"))
# the same on a file of its own, where the kernel lets every request through
t("poison via own file", lambda: os.setxattr(pub + "/own", POISON, b"0 4096"))
t("map via own file", lambda: os.getxattr(pub + "/own", MAP + b"0.0"))
print(json.dumps(out))
"""


def as_nobody(mnt, secret_ino, hidden_ino, inherited_fd) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([*NOBODY, sys.executable, "-c", NOBODY_SNIPPET, str(mnt),
                          str(secret_ino), str(hidden_ino), str(inherited_fd)],
                         capture_output=True, text=True, timeout=120, env=env,
                         pass_fds=(inherited_fd,), cwd="/")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_unprivileged_user(mounted):
    m = mounted
    secret, other, inner, rootfile = (os.urandom(3 * BS) for _ in range(4))
    (m / "secret").write_bytes(secret)
    os.chmod(m / "secret", 0o600)
    os.setxattr(m / "secret", "user.note", b"private")
    (m / "other").write_bytes(other)
    os.chmod(m / "other", 0o600)
    os.chown(m / "other", 1000, 1000)
    (m / "hidden").mkdir(mode=0o700)
    (m / "hidden" / "inner").write_bytes(inner)
    os.chmod(m / "hidden" / "inner", 0o644)
    (m / "rootfile").write_bytes(b"n" * BS + rootfile[BS:])   # first block equals nobody's
    os.chmod(m / "rootfile", 0o644)
    (m / "pub").mkdir()
    os.chown(m / "pub", 65534, 65534)

    inherited = os.open(m / "secret", os.O_RDONLY)
    try:
        got = as_nobody(m, os.stat(m / "secret").st_ino, os.stat(m / "hidden" / "inner").st_ino,
                        inherited)
    finally:
        os.close(inherited)
    want = {
        "open secret": {"EACCES"}, "open other": {"EACCES"}, "open hidden": {"EACCES"},
        "clone by ino": {"EBADF"}, "clone by ino, own fd": {"EBADF"},
        "clone hidden, own fd": {"EBADF"}, "clone hidden by ino": {"EBADF"},
        "clone O_PATH fd (client)": {"EBADF"}, "clone O_PATH fd (raw)": {"EBADF"},
        "clone inherited fd": {"EACCES", "EBADF"},
        "dedupe by ino": {"EBADF"},
        # the client cannot even probe the source (reading its xattrs needs
        # read permission): it takes it for a file of another file system
        "dedupe inherited fd": {-errno.EACCES, -errno.EBADF, "ENOTSUP"},
        "dedupe inherited fd (raw)": {"EACCES", "EBADF"},
        "dst size": {0},
        "clone into read-only fd (client)": {"EBADF"},
        "clone into read-only fd (raw)": {"EACCES"},
        "clone into rootfile by path": {"EACCES"},
        "dedupe into rootfile": {-errno.EPERM},
        "dedupe into secret by path": {"EACCES"}, "result of secret": {"EACCES"},
        "fiemap of secret": {"EACCES"}, "xattr of secret": {"EACCES"},
        "link secret": {"EPERM"},
        # the mount's root is 0755: the kernel refuses before the daemon sees it
        "poison": {"EACCES", "EPERM"}, "poison metadata": {"EACCES", "EPERM"},
        "report": {"EPERM"}, "poison list": {"EPERM"}, "map": {"EPERM"}, "names": {"EPERM"},
        "poison via own file": {"EPERM"}, "map via own file": {"EPERM"},
    }
    wrong = {k: (got.get(k), sorted(map(str, v))) for k, v in want.items() if got.get(k) not in v}
    assert not wrong, f"attack: (got, wanted): {wrong}"

    # with the root writable by everyone the request reaches the daemon: EPERM
    os.chmod(m, 0o777)
    try:
        inherited = os.open(m / "secret", os.O_RDONLY)
        try:
            got = as_nobody(m, 0, 0, inherited)
        finally:
            os.close(inherited)
    finally:
        os.chmod(m, 0o755)
    assert got["poison"] == "EPERM" and got["poison metadata"] == "EPERM", got

    # nothing changed, nothing poisoned
    assert (m / "secret").read_bytes() == secret
    assert (m / "other").read_bytes() == other
    assert (m / "hidden" / "inner").read_bytes() == inner
    assert (m / "rootfile").read_bytes() == b"n" * BS + rootfile[BS:]
    assert (m / "pub" / "dst").read_bytes() == b""
    assert not (m / "pub" / "stolen").exists()
    assert json.loads(os.getxattr(m, LIST)) == []
    for name in ("secret", "rootfile"):
        fd = os.open(m / name, os.O_RDONLY)
        try:
            assert not any(e.flags & control.FIEMAP_EXTENT_SHARED for e in rc.fiemap(fd)), name
        finally:
            os.close(fd)


# ------------------------------------------------------------ malformed requests

def _errno_of(fn, *args):
    try:
        fn(*args)
        return 0
    except OSError as e:
        return e.errno


def test_malformed_control_requests(mounted):
    m = mounted
    (m / "src").write_bytes(os.urandom(2 * BS))
    (m / "dst").write_bytes(b"d" * BS)
    fds = [os.open(m / "src", os.O_RDONLY), os.open(m / "dst", os.O_RDWR)]
    try:
        _malformed(m, *fds)
    finally:
        for fd in fds:
            os.close(fd)


def _malformed(m, s, d):
    st = os.fstat(s)
    U64 = (1 << 64) - 1

    def req(op=control.OP_CLONE, dev=st.st_dev, ino=st.st_ino, so=0, do=0, ln=0, flags=0,
            fd=s, res=0, magic=control.MAGIC, ver=control.VERSION):
        return control.REQUEST_STRUCT.pack(magic, ver, op, dev, ino, so, do, ln, flags, fd, res)

    EINVAL, EBADF, EXDEV, ENODATA = errno.EINVAL, errno.EBADF, errno.EXDEV, errno.ENODATA
    bad_requests = {
        "empty": (b"", EINVAL), "63 bytes": (req()[:63], EINVAL),
        "65 bytes": (req() + b"\0", EINVAL), "64 KiB": (b"\0" * 65536, EINVAL),
        "bad magic": (req(magic=0x12345678), EINVAL), "version 2": (req(ver=2), EINVAL),
        "op 3": (req(op=3), EINVAL), "op 0": (req(op=0), EINVAL),
        "flags": (req(flags=1), EINVAL), "reserved": (req(res=7), EINVAL),
        "src_fd -5": (req(fd=-5), EINVAL), "no src_fd": (req(fd=-1), EBADF),
        "closed src_fd": (req(fd=999), EBADF),
        "negative src_off": (req(so=U64 - BS + 1), EINVAL),
        "negative dst_off": (req(do=U64 - BS + 1), EINVAL),
        "negative length": (req(ln=U64), EINVAL),
        "offset+length overflows": (req(so=1 << 62, ln=1 << 62), EINVAL),
        "huge length": (req(ln=1 << 62), EINVAL),
        "huge offset": (req(so=(1 << 63) - BS), EINVAL),
        "unaligned": (req(so=1, ln=BS), EINVAL),
        "beyond EOF": (req(so=8 * BS, ln=BS), EINVAL),
        "other device": (req(dev=st.st_dev + 12345), EXDEV),
        "other inode": (req(ino=st.st_ino + 1000), EBADF),
    }
    for what, (value, want) in bad_requests.items():
        got = _errno_of(os.setxattr, d, control.CLONE_NAME, value)
        assert got == want, f"clone, {what}: {errno.errorcode.get(got, got)}"
        # the same as a dedupe request (op 2); it never leaves a result behind
        if len(value) == control.REQUEST_SIZE and value[:8] == req()[:8]:
            value = value[:6] + struct.pack("<H", control.OP_DEDUPE) + value[8:]
        got = _errno_of(os.setxattr, d, control.DEDUPE_NAME, value)
        if got == 0:
            # a well-formed request for a bad range: the destination's status
            # (length 0 dedupes nothing and says SAME, as the kernel does)
            res = control.decode_result(os.getxattr(d, control.RESULT_NAME))
            length = control.decode_request(value).length
            assert res.bytes_deduped == 0, (what, res)
            assert res.status == (-errno.EINVAL if length else 0), (what, res)
        else:
            assert got in (want, EINVAL), f"dedupe, {what}: {errno.errorcode.get(got, got)}"
            assert _errno_of(os.getxattr, d, control.RESULT_NAME) == ENODATA, what
    assert _errno_of(os.setxattr, d, control.CLONE_NAME,
                     req(op=control.OP_DEDUPE)) == EINVAL          # op does not match the name
    assert _errno_of(os.setxattr, d, control.DEDUPE_NAME, req(ln=BS)) == EINVAL

    # random bytes of every size, and random 64-byte requests with a valid head
    rnd = random.Random(7)
    for k in range(300):
        n = rnd.choice([0, 1, 8, 63, 64, 65, 128, rnd.randrange(300), 64])
        value = rnd.randbytes(n)
        if n == 64 and k % 2:
            value = req()[:8] + value[8:]
        for name in (control.CLONE_NAME, control.DEDUPE_NAME):
            got = _errno_of(os.setxattr, d, name, value)
            assert got in (0, EINVAL, EBADF, EXDEV, errno.EACCES), \
                f"{name!r} {value.hex()}: {errno.errorcode.get(got, got)}"

    # other control names
    bogus_get = [b"user.daxfs.bogus", b"user.daxfs.", b"user.daxfs.clone", b"user.daxfs.dedupe"]
    for name in bogus_get:
        assert _errno_of(os.getxattr, d, name) == ENODATA, name
    for name in (b"user.daxfs.bogus", b"user.daxfs.probe", b"user.daxfs.result",
                 b"user.daxfs.fiemap.0.4096.0"):
        assert _errno_of(os.setxattr, d, name, b"x") == EINVAL, name
    assert _errno_of(os.removexattr, d, control.CLONE_NAME) == ENODATA

    # FIEMAP names: exactly those parse_fiemap_name accepts are answered
    # (a start at or past the largest file size with EFBIG, as fiemap_prep)
    prefix = control.FIEMAP_PREFIX
    names = [prefix, prefix + b"1.2", prefix + b"-1.5.0", prefix + b"01.5.0",
             prefix + b"0.0.0", prefix + b"0.5.2", prefix + b"0.5.4294967297",
             prefix + b"99999999999999999999.1.0", prefix + b"0.99999999999999999999.0",
             prefix + b"123456789012345678901.1.0", prefix + b"0.5.0\xff", prefix + b"0.5.0.",
             prefix + b" 0.5.0", prefix + b"0.5.0\n", prefix + b"+0.5.0",
             prefix + b"0.18446744073709551615.1", prefix + b"18446744073709551615.1.0"]
    alphabet = b"0123456789.-+x \xff"
    names += [prefix + bytes(rnd.choice(alphabet) for _ in range(rnd.randrange(1, 30)))
              for _ in range(200)]
    for name in names:
        try:
            start = control.parse_fiemap_name(name)[0]
            want = 0 if start < (1 << 63) - 1 else errno.EFBIG
        except control.InvalidArgument:
            want = EINVAL
        got = _errno_of(os.getxattr, d, name)
        assert got == want, f"{name!r}: {errno.errorcode.get(got, got)}"

    # the administrator's requests, malformed (as root: none may inject anything)
    for value in (b"", b"abc", b"1", b"1 2 3", b"-1 4096", b"0 0", b"0 -5", b"4096 +1",
                  b"99999999999999999999999 4096", b"18446744073709551615 1",
                  b"\xff\xfe", b"superblockX", b"inode-treeX", b"64 1" * 1000,
                  str(256 << 20).encode() + b" 4096"):
        got = _errno_of(os.setxattr, m, POISON, value)
        assert got == EINVAL, f"poison {value[:40]!r}: {errno.errorcode.get(got, got)}"
    assert _errno_of(os.setxattr, m, b"user.daxfs.admin.nope", b"0 1") == EINVAL
    for name in (MAP + b"x", MAP + b"-1", MAP + b"+1", MAP + b"1_0", MAP, MAP + b" 5",
                 MAP + b"9" * 30, MAP + b"0", MAP + b"0.0.0", MAP + b"0.-1", MAP + b"0.9" * 30,
                 NAMES, NAMES + b"1", NAMES + b"1.x", NAMES + b"-1.0", NAMES + b"1.2.3",
                 b"user.daxfs.admin.nope"):
        got = _errno_of(os.getxattr, m, name)
        assert got == EINVAL, f"{name!r}: {errno.errorcode.get(got, got)}"
    assert json.loads(os.getxattr(m, LIST)) == []
    assert json.loads(os.getxattr(m, REPORT)) is None

    # the daemon still serves, and serves correctly
    assert (m / "dst").read_bytes() == b"d" * BS
    rc.clone(s, d)
    assert os.pread(d, 3 * BS, 0) == (m / "src").read_bytes()
    (m / "after").write_bytes(b"still here")
    assert sorted(p.name for p in m.iterdir()) == ["after", "dst", "src"]


# ------------------------------------------------------------ the image file

def test_image_is_0600(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    old = os.umask(0)
    try:
        for cmd, img in (([sys.executable, "-m", "daxfs.cli", "mkfs"], "a.img"),
                         ([sys.executable, str(ROOT / "mkfs_daxfs.py")], "b.img")):
            res = run([*cmd, tmp_path / img, "--size", "16M"], env=env, timeout=60)
            assert res.returncode == 0, res.stderr
            assert os.stat(tmp_path / img).st_mode & 0o7777 == 0o600, img
        # over an existing world-readable file
        (tmp_path / "c.img").write_bytes(b"")
        os.chmod(tmp_path / "c.img", 0o666)
        res = run([sys.executable, "-m", "daxfs.cli", "mkfs", tmp_path / "c.img", "--size", "16M"],
                  env=env, timeout=60)
        assert res.returncode == 0, res.stderr
        assert os.stat(tmp_path / "c.img").st_mode & 0o7777 == 0o600
        res = run([sys.executable, "-m", "daxfs.cli", "mkfs", tmp_path / "a.img", "--size", "16M",
                   "--force"], env=env, timeout=60)
        assert res.returncode == 0, res.stderr
        assert os.stat(tmp_path / "a.img").st_mode & 0o7777 == 0o600
    finally:
        os.umask(old)
