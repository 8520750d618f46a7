"""`daxfs exec -- COMMAND ARGS...`: run an unmodified program (cp --reflink,
duperemove, filefrag, xfs_io...) with the control-protocol library
(daxfs/control/preload/libdaxfs_preload.so) preloaded, so that its FICLONE,
FICLONERANGE, FIDEDUPERANGE, FS_IOC_FIEMAP and copy_file_range calls on
daxfs files reach the daemon.  Owns: finding or building the library and
setting up the environment (LD_PRELOAD, DAXFS_FAKE_XFS=1 unless set).

The command replaces this process (exec), so its exit status, signals and
terminal are its own.

DAXFS_FAKE_XFS=1 makes statfs report XFS's magic on daxfs mounts, which
duperemove needs.  xfs_io, however, then believes the file system is XFS,
asks XFS_IOC_FSGEOMETRY and gives up; run it as
``DAXFS_FAKE_XFS=0 daxfs exec -- xfs_io ...`` (an existing value is kept).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .common import failed

PRELOAD_DIR = Path(__file__).resolve().parent.parent / "control" / "preload"
LIBRARY = PRELOAD_DIR / "libdaxfs_preload.so"
BUILD_TIMEOUT = 120

USAGE = "usage: daxfs exec [--] COMMAND [ARGS...]"

HELP = USAGE + """

Run COMMAND with daxfs's LD_PRELOAD library, so that the ioctls the kernel
never forwards to a FUSE filesystem reach the daxfs daemon: FICLONE and
FICLONERANGE (reflink), FIDEDUPERANGE (dedupe) and FS_IOC_FIEMAP (extent
maps).  On files elsewhere the library falls through to the real ioctl.
COMMAND replaces this process: its exit status, signals and terminal are
its own.

Tools that need it:
  cp --reflink=always SRC DST             FICLONE
  duperemove -dr -b 4096 DIR              FIEMAP, FIDEDUPERANGE (duperemove
                                          skips files under its 128 KiB
                                          default block size without -b)
  filefrag -v FILE                        FIEMAP ("shared" extents)
  xfs_io -c "reflink SRC" / "dedupe" / "fiemap"   (with DAXFS_FAKE_XFS=0)
Programs that only read and write, and copy_file_range (plain cp), reach
the daemon through the kernel and need nothing.

Environment: DAXFS_FAKE_XFS=1 (the default here) makes statfs report XFS's
magic on daxfs mounts, which duperemove needs; xfs_io then asks for XFS
geometry and gives up, so run it with DAXFS_FAKE_XFS=0.  The library is
built with make on first use if missing (scripts/setup.sh builds it).

Exit status: COMMAND's own; 127 if COMMAND is not found, 126 if it cannot
be run, 1 if the library cannot be built, 2 usage."""


class BuildError(Exception):
    """The preload library is missing and could not be built."""


def library_path() -> Path:
    return LIBRARY


def _up_to_date(lib: Path) -> bool:
    try:
        built = lib.stat().st_mtime
    except FileNotFoundError:
        return False
    for source in (PRELOAD_DIR / "daxfs_preload.c", PRELOAD_DIR / "Makefile"):
        try:
            if source.stat().st_mtime > built:
                return False
        except FileNotFoundError:
            pass            # an installed copy without sources: use what is built
    return True


def ensure_library() -> Path:
    """The path of the built library, running make first if it is missing
    or older than its source.  Raises BuildError with a one-line reason."""
    lib = library_path()
    if _up_to_date(lib):
        return lib
    if not (PRELOAD_DIR / "Makefile").exists():
        raise BuildError(f"{lib} is missing and there is no Makefile in {PRELOAD_DIR}")
    if shutil.which("make") is None:
        raise BuildError("make is not installed (run scripts/setup.sh)")
    try:
        proc = subprocess.run(["make", "-s", "-C", str(PRELOAD_DIR)],
                              stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BuildError(f"make -C {PRELOAD_DIR} did not finish in {BUILD_TIMEOUT} s") from None
    if proc.returncode != 0 or not lib.exists():
        lines = [l for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
        errors = [l for l in lines if "error" in l.lower()]
        reason = (errors or lines or [f"make exited with status {proc.returncode}"])[0]
        raise BuildError(f"make -C {PRELOAD_DIR} failed: {reason.strip()}")
    return lib


def environment(lib: Path, base=None) -> dict[str, str]:
    """The environment a preloaded command runs in."""
    env = dict(os.environ if base is None else base)
    old = env.get("LD_PRELOAD", "").strip()
    env["LD_PRELOAD"] = f"{lib}:{old}" if old else str(lib)
    env.setdefault("DAXFS_FAKE_XFS", "1")
    return env


def main(argv) -> int:
    argv = list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(HELP)
        return 0
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        lib = ensure_library()
    except BuildError as e:
        print(f"daxfs exec: cannot build the preload library: {e}", file=sys.stderr)
        return 1
    env = environment(lib)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        hint = "is it installed and on PATH?" if e.errno == errno.ENOENT else ""
        print(failed("daxfs exec", f"run {argv[0]}", e, hint), file=sys.stderr)
        return 127 if e.errno == errno.ENOENT else 126
    return 1  # not reached
