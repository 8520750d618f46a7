"""The wait for the next FUSE request (daxfs/fuse/request_wait.py): the rules
pyfuse3's loop relies on, on a pipe, and that a real mount uses it."""

import os

import trio

from conftest import mount_image
from daxfs.fuse.request_wait import EXTRA_WORKER, SKIP_MAX, _Waiter


def _run(fn):
    r, w = os.pipe()
    try:
        return trio.run(fn, _Waiter(r), w)
    finally:
        os.close(r)
        os.close(w)


def _waiting_task(waiter, out: list):
    """A task that waits once and appends the answer (with `tag`, if given)."""
    async def wait(tag=None):
        got = await waiter.wait_readable()
        out.append(got if tag is None else (tag, got))
    return wait


def test_returns_once_readable():
    async def main(waiter, w):
        got = []
        wait = _waiting_task(waiter, got)
        async with trio.open_nursery() as n:
            n.start_soon(wait)
            await trio.sleep(0.05)
            assert got == []                      # nothing to read: still waiting
            os.write(w, b"x")
        assert got == [True]
        assert await waiter.wait_readable() is True   # still readable: at once
        assert waiter.waiting == 0 and not waiter.lock.locked()
    _run(main)


def test_extra_worker_ends_while_another_waits():
    async def main(waiter, w):
        results = []
        wait = _waiting_task(waiter, results)
        async with trio.open_nursery() as n:
            n.start_soon(wait, "main", name="pyfuse-01")
            await trio.sleep(0.05)
            n.start_soon(wait, "extra", name=EXTRA_WORKER)
            await trio.sleep(0.05)
            assert results == [("extra", False)]  # the main one is waiting
            os.write(w, b"x")
        assert results == [("extra", False), ("main", True)]
    _run(main)


def test_extra_worker_alone_waits_and_workers_take_turns():
    async def main(waiter, w):
        order = []
        wait = _waiting_task(waiter, order)
        async with trio.open_nursery() as n:
            n.start_soon(wait, "extra", name=EXTRA_WORKER)
            await trio.sleep(0.05)
            n.start_soon(wait, "main", name="pyfuse-01")   # queues on the lock
            await trio.sleep(0.05)
            assert order == [] and waiter.waiting == 2
            os.write(w, b"x")                      # both see the fd readable in turn
        assert order == [("extra", True), ("main", True)]
    _run(main)


def test_ending_and_closing_end_the_workers():
    async def main(waiter, w):
        results = []
        wait = _waiting_task(waiter, results)
        async with trio.open_nursery() as n:
            n.start_soon(wait)
            await trio.sleep(0.05)
            trio.lowlevel.notify_closing(waiter.fd)   # what pyfuse3.terminate does
        assert results == [False]
        waiter.ended = True
        os.write(w, b"x")
        assert await waiter.wait_readable() is False
    _run(main)


def test_a_mount_uses_it(image, mnt, tmp_path):
    log = tmp_path / "mount.log"
    with mount_image(image, mnt, log=log) as m:
        (m / "f").write_bytes(b"data")
        assert (m / "f").read_bytes() == b"data"
    assert "request wait: daxfs's" in log.read_text()


def test_queued_requests_skip_the_scheduler_a_few_at_a_time():
    async def main(waiter, w):
        os.write(w, b"x")
        # in a cancelled scope, the first pass through the scheduler raises
        with trio.CancelScope() as scope:
            scope.cancel()
            for _ in range(SKIP_MAX):
                assert await waiter.wait_readable() is True
            assert not scope.cancelled_caught  # readable: no scheduler pass yet
            await waiter.wait_readable()
        assert scope.cancelled_caught          # then one, so other tasks run
        assert waiter.waiting == 0 and not waiter.lock.locked()
    _run(main)
