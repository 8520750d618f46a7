"""`daxfs mount IMAGE MOUNTPOINT [-o OPTIONS] [--foreground] [--log FILE]`
and `daxfs mount --install-helper [PATH]`.

What this module owns
---------------------
* checking the arguments the parent can check without touching the image
  (mountpoint exists and is a directory, /dev/fuse exists, options known);
* daemonising: without --foreground the parent starts
  ``python -m daxfs.cli mount --foreground ...`` in a new session with its
  output going to the log file, then waits until the mount shows up in
  /proc/self/mountinfo (success) or the child exits (failure: the child's
  last error line is printed).  The image is opened only in the child:
  its POSIX lock would not survive a fork;
* the one-line error messages (no traceback, exit status 1);
* the mount(8) and umount(8) helpers: `--install-helper` writes
  /sbin/mount.fuse.daxfs, so that ``mount -t fuse.daxfs IMAGE MNT`` and
  fstab lines work, and /sbin/umount.fuse.daxfs, which umount(8) runs for
  such a mount ("EXTERNAL HELPERS" in umount(8)) so that ``umount MNT``
  returns once the daemon has flushed and unlocked the image
  (daxfs/cli/umount.py `helper`).  Each runs this installation's daxfs
  under an isolated interpreter (``python -I``: no PYTHONPATH, no current
  directory on sys.path), whatever the caller's environment.

The mount itself (options, lifecycle, signals) is daxfs/fuse/mount.py's.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shlex
import stat
import subprocess
import sys
import time

from daxfs import host
from daxfs.engine import files
from daxfs.engine.errors import DaxfsError, NeedsRepair
from daxfs.fuse import mount as _mount
from .common import Parser, failed

log = logging.getLogger(__name__)

PROG = "daxfs mount"
HELPER_PATH = "/sbin/mount.fuse.daxfs"
HELPER_MARK = "# written by: daxfs mount --install-helper"
UMOUNT_HELPER_NAME = "umount.fuse.daxfs"
READY_TIMEOUT = 60.0
LOG_DIR = "/var/log/daxfs"

# Options libfuse understands that we pass through.
FUSE_FLAGS = {
    "allow_other", "allow_root", "auto_unmount", "default_permissions",
    "suid", "nosuid", "dev", "nodev", "exec", "noexec", "async", "sync",
    "dirsync", "atime", "noatime",
}
FUSE_KEYS: set[str] = set()
# Options libfuse 3 refuses (fuse_session_new fails) although mount(8) and
# fstab lines pass them: the atime rules are the daemon's (FUSE inodes are
# S_NOATIME in the kernel), so they are taken here and given to the engine
# (daxfs.fuse.mount.ENGINE_OPTIONS), never to libfuse.
ENGINE_FLAGS = _mount.ENGINE_OPTIONS
# Options meant for mount(8)/fstab, not for the filesystem: dropped.
IGNORED = {"rw", "defaults", "auto", "noauto", "user", "users", "nouser",
           "owner", "group", "nofail", "_netdev", "fsname", "subtype"}
# max_read= is refused by libfuse unless init() sets the same value, which
# pyfuse3 cannot do: it is only a hint, so it is dropped.
IGNORED_PREFIXES = ("x-", "comment=", "fsname=", "subtype=", "max_read=")


class UsageError(Exception):
    """A problem with the command line or the environment: one line, exit 1."""


def parse_options(text: str | None) -> tuple[list[str], bool]:
    """-o text -> (options for FUSE, readonly)."""
    opts, readonly = [], False
    for opt in filter(None, (text or "").split(",")):
        key = opt.split("=", 1)[0]
        if opt == "ro":
            readonly = True
        elif opt in IGNORED or opt.startswith(IGNORED_PREFIXES):
            continue
        elif opt in FUSE_FLAGS or opt in ENGINE_FLAGS or ("=" in opt and key in FUSE_KEYS):
            opts.append(opt)
        else:
            raise UsageError(f"unknown mount option {opt!r}")
    return opts, readonly


def _check_environment(image: str, mountpoint: str) -> None:
    if not os.path.exists(image):
        raise UsageError(f"{image}: no such file")
    if os.path.isdir(image):
        raise UsageError(f"{image}: is a directory, not an image")
    if not os.path.exists(mountpoint):
        raise UsageError(f"mountpoint {mountpoint}: no such directory")
    if not os.path.isdir(mountpoint):
        raise UsageError(f"mountpoint {mountpoint}: not a directory")
    if not os.path.exists("/dev/fuse"):
        raise UsageError("/dev/fuse is missing: load the fuse module (modprobe fuse)")
    if host.daxfs_mount_at(mountpoint) is not None:
        raise UsageError(f"{mountpoint}: a daxfs image is already mounted here")


def _default_log(image: str) -> str:
    """The daemon's log when none is given: in a directory only its owner
    (root: /var/log/daxfs) may write, one per image (its name and a hash of
    its absolute path: two images of the same name never share a log)."""
    if os.geteuid() == 0:
        base = LOG_DIR
    else:
        state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        base = os.path.join(state, "daxfs")
    os.makedirs(base, mode=0o700, exist_ok=True)
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise UsageError(f"{base}: the log directory is not a directory that only its owner"
                         " writes; give --log FILE")
    digest = hashlib.sha256(os.fsencode(os.path.abspath(image))).hexdigest()[:12]
    return os.path.join(base, f"{os.path.basename(image)}-{digest}.log")


def _open_log(path: str) -> int:
    """The log, appended to; never a symlink, FIFO or device (files.py)."""
    try:
        return files.open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600,
                                  what="log")
    except DaxfsError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"{path}: cannot open the log: {e.strerror}") from None


def _daemon_of(pid: int, image: str) -> bool:
    """Is `pid` a `daxfs mount --foreground IMAGE ...` daemon?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return b"mount" in args and b"--foreground" in args and os.fsencode(image) in args


def _wait_for_unmounted_daemon(image: str, timeout: float) -> None:
    """umount(8) of a daxfs mount returns before its daemon has made its
    last commit and let go of the image, and a busy mount detached lazily
    keeps its daemon (and the image) until the last user of the old mount
    lets go: a mount right after it (umount; mount, as scripts and
    xfstests' cycle_mount do) waits for that daemon to exit instead of
    failing with "in use", and says so on stderr when it starts waiting.
    Only a daxfs daemon of this image whose mount is gone is waited for,
    at most `timeout` (then UsageError)."""
    from daxfs.engine.pmem import image_lock_holder
    deadline = time.monotonic() + timeout
    told = None
    while time.monotonic() < deadline:
        pid = image_lock_holder(image)
        if pid is None or not _daemon_of(pid, image):
            return
        if host.daxfs_mount_of(image) is not None:
            return                       # still mounted: the lock error says so
        if told != pid:
            told = pid
            print(f"{PROG}: waiting (at most {timeout:.0f} s) for the daemon (pid {pid}) of "
                  f"an unmounted mount of {image} to flush and exit; if that mount was "
                  "detached while busy, the last user of the old mount must let go first",
                  file=sys.stderr, flush=True)
        time.sleep(0.05)
    if told is not None:
        raise UsageError(f"{image} is still in use by the daemon (pid {told}) of an unmounted "
                         f"mount after {timeout:.0f} s: a process still has a file or its "
                         "working directory on the old mount, "
                         "or the daemon is stuck")


def _log_lines(log_path: str, offset: int) -> list[str]:
    """The non-empty lines the child wrote to its log since offset."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return []
    return [ln for ln in lines if ln]


def _last_error(log_path: str, offset: int) -> str:
    """The child's error line: its last `daxfs mount:` line, else its last line."""
    lines = _log_lines(log_path, offset)
    for ln in reversed(lines):
        if ln.startswith(PROG + ":"):
            return ln
    return lines[-1] if lines else ""


def _said(log_path: str, offset: int) -> list[str]:
    """The `daxfs mount:` lines the child wrote to its log since offset."""
    return [ln for ln in _log_lines(log_path, offset) if ln.startswith(PROG + ":")]


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _spawn(image: str, mountpoint: str, options: str | None, log_path: str,
           timeout: float) -> int:
    cmd = [sys.executable, "-m", "daxfs.cli", "mount", "--foreground", image, mountpoint]
    if options:
        cmd += ["-o", options]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_package_root(), env.get("PYTHONPATH")]))
    fd = _open_log(log_path)
    offset = os.lseek(fd, 0, os.SEEK_END)
    try:
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                 start_new_session=True, cwd="/", env=env, close_fds=True)
    finally:
        os.close(fd)
    deadline = time.monotonic() + timeout
    want = host.mount_source(image)
    while True:
        found = host.daxfs_mount_at(mountpoint)
        if found is not None and found.source == want:
            for line in _said(log_path, offset):       # (a damaged image served read-only)
                print(line, file=sys.stderr)
            return 0
        rc = child.poll()
        if rc is not None:
            line = _last_error(log_path, offset) or f"{PROG}: the daemon exited with status {rc}"
            if not line.startswith(PROG + ":"):
                line = f"{PROG}: {line}"
            print(line, file=sys.stderr)
            return 1
        if time.monotonic() > deadline:
            print(f"{PROG}: the mount did not appear within {timeout:.0f} s "
                  f"(daemon pid {child.pid} left running; see {log_path})", file=sys.stderr)
            return 1
        time.sleep(0.02)


def _foreground(image: str, mountpoint: str, options: list[str], readonly: bool,
                log_path: str | None) -> int:
    if log_path:
        handler = logging.StreamHandler(os.fdopen(_open_log(log_path), "a", buffering=1))
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)

    def warn(damage: str) -> None:
        print(f"{PROG}: {damage}; mounted read-only (unmount before repairing)",
              file=sys.stderr, flush=True)

    try:
        try:
            _mount.run(image, mountpoint, options, readonly=readonly, warn=warn)
        except NeedsRepair as exc:
            if readonly or not exc.readonly_ok:
                raise
            # what is damaged is not needed to read files: serve them read-only
            _mount.run(image, mountpoint, options, readonly=True, warn=warn)
    except DaxfsError as exc:
        msg = str(exc) if image in str(exc) else f"{image}: {exc}"
        print(f"{PROG}: {msg}", file=sys.stderr, flush=True)
        return 1
    except RuntimeError as exc:
        print(f"{PROG}: cannot mount on {mountpoint}: {exc}", file=sys.stderr, flush=True)
        return 1
    except OSError as exc:
        print(failed(PROG, f"mount {exc.filename or image}", exc), file=sys.stderr, flush=True)
        return 1
    return 0


def _daxfs_command() -> list[str]:
    """The command that runs this installation's daxfs under an isolated
    interpreter (python -I ignores PYTHONPATH and puts neither the current
    directory nor a script's directory on sys.path): the installed `daxfs`
    program beside the interpreter when it is this checkout's, else this
    checkout named explicitly."""
    root = _package_root()
    script = os.path.join(os.path.dirname(sys.executable), "daxfs")
    if os.path.isfile(script):
        try:
            found = subprocess.run(
                [sys.executable, "-I", "-c",
                 "import daxfs, os; print(os.path.dirname(os.path.dirname("
                 "os.path.realpath(daxfs.__file__))))"],
                capture_output=True, text=True, timeout=30, cwd="/").stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            found = ""
        if found == os.path.realpath(root):
            return [sys.executable, "-I", script]
    code = f"import sys; sys.path.insert(0, {root!r}); from daxfs.cli import main; sys.exit(main())"
    return [sys.executable, "-I", "-c", code]


def _umount_helper_path(path: str) -> str:
    """The umount(8) helper beside the mount(8) helper at `path`."""
    return os.path.join(os.path.dirname(path) or ".", UMOUNT_HELPER_NAME)


def install_helper(path: str = HELPER_PATH) -> str:
    """Write the mount(8) helper script at `path` and the umount(8) helper
    beside it; returns `path`.  A file there that daxfs did not write is
    never replaced (nothing is written then)."""
    helpers = {path: "mount", _umount_helper_path(path): "umount"}
    for target in helpers:
        if os.path.lexists(target):
            with open(target, errors="replace") as f:
                if HELPER_MARK not in f.read():
                    raise UsageError(f"{target} exists and was not written by daxfs:"
                                     " not replacing it")
    command = " ".join(shlex.quote(word) for word in _daxfs_command())
    for target, sub in helpers.items():
        text = (
            "#!/bin/sh\n"
            f"{HELPER_MARK}\n"
            f"exec {command} {sub} --helper \"$@\"\n"
        )
        tmp = target + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    return path


def _hand_umount_to_helper(mountpoint: str) -> None:
    """Make umount(8) run umount.fuse.daxfs for the mount just made by
    mount(8) through this helper.  umount(8) (libmount) learns a mount's
    type from statfs(2), which says only "fuse", and so would look for
    umount.fuse, unless utab (/run/mount/utab) has an entry for the
    mountpoint: then it reads the type fuse.daxfs from mountinfo and runs
    umount.fuse.daxfs.  The entry (helper=fuse.daxfs: "redirect all unmount
    requests to umount.fuse.daxfs", umount(8)) is written through libmount
    (``mount -i -f``, as libmount-based helpers do), and libmount removes
    it when umount(8) unmounts.  Best effort: without it umount(8) still
    unmounts, only it does not wait for the daemon."""
    found = host.daxfs_mount_at(mountpoint)
    if found is None or os.geteuid() != 0:
        return
    cmd = ["mount", "-i", "-f", "--no-canonicalize", "-t", host.FSTYPE,
           "-o", f"helper={host.FSTYPE}", found.source, found.mountpoint]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        why = res.stderr.strip() if res.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = str(exc)
    if why:
        print(f"{PROG}: umount(8) of {mountpoint} will not wait for the daemon"
              f" ({' '.join(cmd[:3])}...: {why})", file=sys.stderr)


def build_parser() -> Parser:
    p = Parser(prog=PROG, description=(
        "Mount a daxfs image with FUSE.  The daemon starts in the background and\n"
        "the command returns once the mount is there (or with the daemon's error\n"
        "on one line).  The mount's source is the image's path, so `umount IMAGE`,\n"
        "`findmnt --source IMAGE` and df name it; unmount with `daxfs umount`,\n"
        "which waits until the image is flushed and unlocked."),
        epilog=("Options (-o, comma-separated): ro, nosuid, nodev, noexec, noatime,\n"
                "relatime, strictatime, nodiratime, sync, dirsync, allow_root...;\n"
                "fstab-only words (defaults, nofail, _netdev, x-*) are ignored.  As\n"
                "root the mount always has allow_other and default_permissions.\n"
                "Exit status: 0 mounted (or helper installed), 1 failed (one line on\n"
                "stderr), 2 usage."))
    p.add_argument("image", nargs="?", metavar="IMAGE", help="the image file (daxfs mkfs)")
    p.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT", help="an existing directory")
    p.add_argument("-o", dest="options", metavar="OPTIONS",
                   help="comma-separated mount options (see below)")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="serve in this process until unmounted (log to stderr unless --log)")
    p.add_argument("--log", metavar="FILE",
                   help="the daemon's log (default /var/log/daxfs/IMAGENAME-HASH.log as"
                        " root, ~/.local/state/daxfs/ otherwise)")
    p.add_argument("--timeout", type=float, default=READY_TIMEOUT, help=argparse.SUPPRESS)
    p.add_argument("--install-helper", nargs="?", const=HELPER_PATH, metavar="PATH",
                   help=f"write the mount(8) helper (default {HELPER_PATH}) and the umount(8)"
                   f" helper beside it ({UMOUNT_HELPER_NAME}), then exit")
    # Flags mount(8) passes to helpers: -n (no mtab), -s (sloppy), -v (verbose).
    p.add_argument("--helper", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-n", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-s", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-v", action="store_true", help=argparse.SUPPRESS)
    return p


REMOUNT_TIMEOUT = 60.0


def remount(mountpoint: str, text: str) -> int:
    """`mount -o remount,...` of a daxfs mount: the kernel changes the
    mount's flags (ro/rw, nosuid, noexec, atime words...) itself, as for
    every filesystem; mount(8) is asked to do it without calling this
    helper again (-i).  The daemon stays as it is: a read-only remount
    makes the kernel refuse writes with EROFS before they reach it."""
    if host.daxfs_mount_at(mountpoint) is None:
        raise UsageError(f"{mountpoint}: not a daxfs mount point (remount)")
    words = [w for w in (text or "").split(",") if w and w != "remount"
             and (w == "rw" or w not in IGNORED) and not w.startswith(IGNORED_PREFIXES)]
    try:
        res = subprocess.run(["mount", "-i", "-o", ",".join(["remount"] + words), mountpoint],
                             capture_output=True, text=True, timeout=REMOUNT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"remount of {mountpoint} failed: {exc}") from None
    if res.returncode != 0:
        raise UsageError(f"remount of {mountpoint} failed: {res.stderr.strip() or res.returncode}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.install_helper:
            path = install_helper(args.install_helper)
            print(f"installed {path} and {_umount_helper_path(path)}")
            return 0
        if "remount" in (args.options or "").split(",") and args.mountpoint:
            return remount(os.path.abspath(args.mountpoint), args.options)
        if not args.image or not args.mountpoint:
            raise UsageError("usage: daxfs mount IMAGE MOUNTPOINT [-o OPTIONS] [--foreground]")
        image = os.path.abspath(args.image)
        mountpoint = os.path.abspath(args.mountpoint)
        options, readonly = parse_options(args.options)
        _check_environment(image, mountpoint)
        _wait_for_unmounted_daemon(image, args.timeout)
        if args.foreground:
            return _foreground(image, mountpoint, options, readonly, args.log)
        rc = _spawn(image, mountpoint, args.options, args.log or _default_log(image),
                    args.timeout)
        if rc == 0 and args.helper:
            _hand_umount_to_helper(mountpoint)
        return rc
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
