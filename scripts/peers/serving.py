"""What the benchmark peers (passthrough.py, memfs.py) share: logging, the
mount options daxfs mounts with, and serving until SIGTERM or SIGINT.
A peer is a script, so this sits beside it and is imported by name."""

import logging
import signal

import pyfuse3
import trio


def setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def mount_options(fsname: str, subtype: str, as_root: bool) -> set:
    """daxfs's own options: the kernel checks permissions, and a root
    daemon serves every user."""
    opts = {f"fsname={fsname}", f"subtype={subtype}", "default_permissions"}
    if as_root:
        opts.add("allow_other")
    return opts


async def _serve(loop_args: dict) -> None:
    async with trio.open_nursery() as nursery:

        async def on_signal():
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    pyfuse3.terminate()
                    return

        nursery.start_soon(on_signal)
        await pyfuse3.main(**loop_args)
        nursery.cancel_scope.cancel()


def serve(ops, mountpoint: str, opts: set, loop_args: dict | None = None) -> int:
    """Mount `ops` at `mountpoint`, serve until a signal, always unmount."""
    pyfuse3.init(ops, mountpoint, opts)
    try:
        trio.run(_serve, loop_args or {})
    finally:
        pyfuse3.close(unmount=True)
    return 0
