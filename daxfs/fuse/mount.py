"""The life of one mount: open the image, mount it with FUSE, serve requests,
and take everything down again in the right order.

What this module owns
---------------------
* the FUSE mount options (`fuse_options`): fsname=IMAGE (the mount's
  source is the image's path, daxfs/host.py `mount_source`),
  subtype=daxfs, default_permissions always, allow_other when root;
* the lifecycle, built as an `AsyncExitStack` around a trio nursery (the
  way S3QL's mount.py does it): every resource registers its cleanup as
  soon as it exists, so a failure at any step undoes exactly the steps
  before it;
* signals: SIGTERM, SIGINT and SIGHUP end the FUSE main loop
  (`pyfuse3.terminate`), after which the same path as a normal unmount runs.

Teardown order (LIFO of the stack), whether the mount ended by
`fusermount3 -u`, by a signal or by an error:

1. the nursery ends (the background commit task stops);
2. references the kernel never forgot are dropped (`forget_all`), so
   files unlinked while open are freed;
3. `fs.close()`: commit everything, unmap, unlock the image;
4. `pyfuse3.close(unmount=True)`: unmounts if still mounted (libfuse
   skips this when the kernel has already dropped the connection).

It leaves the command line, daemonising and readiness to
daxfs/cli/mount.py, request handling to daxfs/fuse/operations.py.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal

import pyfuse3
import trio

from daxfs import gc_tuning, host
from . import binding
from .operations import Operations

log = logging.getLogger(__name__)

SUBTYPE = "daxfs"


def _escape_opt(value: str) -> str:
    """`value` as libfuse's option parser (fuse_opt.c) reads it back: it
    splits -o on commas, a backslash escapes the next character, and a
    backslash with three octal digits is that byte.  pyfuse3 hands options
    over as ASCII, so every other byte (a non-ASCII path) goes as octal."""
    out = []
    for byte in os.fsencode(value):
        if byte in b"\\,":
            out.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    return "".join(out)


# Atime options the daemon applies itself (libfuse 3 refuses them).
ENGINE_OPTIONS = {
    "nodiratime", "diratime", "relatime", "norelatime", "strictatime",
    "nostrictatime", "lazytime", "nolazytime",
}


def apply_atime_options(fs, extra) -> None:
    """noatime / relatime / strictatime / nodiratime, the last word winning
    as with mount(8); the default is relatime with directory atimes."""
    for opt in extra:
        if opt == "noatime":
            fs.atime = False
        elif opt in ("atime", "relatime", "nostrictatime"):
            fs.atime, fs.strictatime = True, False
        elif opt in ("strictatime", "norelatime"):
            fs.atime, fs.strictatime = True, True
        elif opt in ("nodiratime", "diratime"):
            fs.diratime = opt == "diratime"


def image_is_roots(image: str) -> bool:
    """Could only root have written the image?  Owned by root, not group-
    or world-writable, in a directory only root may change (or one with
    the sticky bit, where others cannot replace it)."""
    try:
        st = os.stat(image)
        dst = os.stat(os.path.dirname(os.path.abspath(image)))
    except OSError:
        return False
    if st.st_uid != 0 or st.st_mode & 0o022:
        return False
    return dst.st_uid == 0 and (not dst.st_mode & 0o022 or bool(dst.st_mode & 0o1000))


def fuse_options(image: str, extra=(), *, readonly: bool = False) -> set[str]:
    """The option set for pyfuse3.init."""
    opts = set(extra) - ENGINE_OPTIONS
    opts.discard("rw")
    opts.add("fsname=" + _escape_opt(host.mount_source(image)))
    opts.add("subtype=" + SUBTYPE)
    # The kernel checks permissions from our st_mode/uid/gid; daxfs has
    # no permission logic of its own.
    opts.add("default_permissions")
    if os.geteuid() == 0:
        opts.add("allow_other")
        # Device nodes and set-id bits: honoured (as a kernel filesystem
        # mounted by root does) only when nobody but root can have written
        # the image; an image another user could prepare gets libfuse's
        # nosuid,nodev.  -o suid / -o dev (or nosuid / nodev) decide
        # explicitly either way.
        trusted = image_is_roots(image)
        if "nodev" not in opts and "dev" not in opts:
            opts.add("dev" if trusted else "nodev")
        if "nosuid" not in opts and "suid" not in opts:
            opts.add("suid" if trusted else "nosuid")
    if readonly:
        opts.add("ro")
    return opts


async def _watch_signals(cancel_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("received %s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def serve(fs, mountpoint: str, options: set[str], ops_factory=Operations) -> None:
    """Mount `fs` at `mountpoint` and serve until unmounted or signalled.

    `fs` is an open Filesystem; it is closed here in every case.
    """
    async with contextlib.AsyncExitStack() as stack:
        closed = False

        def close_fs():
            nonlocal closed
            if not closed:
                closed = True
                fs.close()
                log.info("image closed")

        stack.callback(close_fs)               # runs last: only if init failed
        ops = ops_factory(fs)
        pyfuse3.init(ops, mountpoint, options)
        log.info("mounted on %s (options %s)", mountpoint, ",".join(sorted(options)))
        stack.callback(pyfuse3.close, unmount=True)

        def release():
            ops.forget_all()
            close_fs()

        stack.callback(release)                # runs before pyfuse3.close
        nursery = await stack.enter_async_context(trio.open_nursery())
        ops.nursery = nursery
        ops.mountpoint = os.path.abspath(mountpoint)   # fuse_ops._kernel_size
        nursery.start_soon(ops.commit_loop)
        nursery.start_soon(ops.inactive_loop)
        nursery.start_soon(_watch_signals, nursery.cancel_scope)
        await pyfuse3.main(**binding.main_args())
        log.info("FUSE main loop ended")
        nursery.cancel_scope.cancel()


def refuse_damaged(fs, image: str, readonly: bool, warn=None) -> None:
    """Never serve an image whose metadata damage would fail every request:
    NeedsRepair (the filesystem closed) when the open left damage that it
    could not heal -- unless the mount is read-only and the damage spares
    what reading files needs (then it is logged, said through `warn`, and
    served)."""
    from daxfs.engine import damage
    dmg = damage.assess(fs)
    if dmg is None:
        return
    err = dmg.error(image)
    if readonly and dmg.readable:
        log.warning("%s; serving read-only", err)
        if warn is not None:
            warn(str(err))
        return
    fs.shut_down(str(err))          # (closed without a commit into the damage)
    fs.close()
    raise err


def run(image: str, mountpoint: str, extra_options=(), *, readonly: bool = False,
        opener=None, warn=None) -> None:
    """Open `image`, mount it and serve; returns after unmount.

    Raises the engine's errors (NotAnImage, ImageLocked, Corrupted) before
    anything is mounted, NeedsRepair for metadata damage the open could not
    heal (refuse_damaged; `warn` hears of damage a read-only mount serves
    in spite of), and RuntimeError if FUSE refuses the mount.
    """
    binding.require()
    if opener is None:
        from daxfs.engine.fs import Filesystem
        opener = Filesystem.open
    fs = opener(image, readonly=readonly)
    refuse_damaged(fs, image, readonly, warn)
    if gc_tuning.tune():
        log.info("garbage collector: thresholds %s, %d objects frozen",
                 gc.get_threshold(), gc.get_freeze_count())
    if hasattr(fs, "atime"):
        apply_atime_options(fs, extra_options)
    options = fuse_options(image, extra_options, readonly=readonly)
    trio.run(serve, fs, mountpoint, options)
