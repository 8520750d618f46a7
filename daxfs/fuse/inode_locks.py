"""The inodes a long request is working on, step by step.

No request may hold the daemon for long (one worker serves every user): a
clone, a dedupe or the freeing of a truncated file's blocks that touches
many extents runs in bounded steps (the engine's step budget), and between
two steps the handler waits for one turn of trio so that a temporary
worker answers everyone else's requests.  Each step is atomic by itself
(a dedupe step compares and shares one piece in one go).  `hold(*inos)`
keeps two long requests from working on the same file at once.

Ordinary requests (READ, WRITE, SETATTR) never wait here: the kernel holds
their pages locked while they are in flight, and the long request's
cache invalidation waits for those pages; a WRITE held back here would
never let it finish.

Every wait starts a temporary worker first (binding.temporary_worker):
the request that would release the inode may itself need requests
answered.
"""

from __future__ import annotations

import contextlib

import trio

from . import binding


class InodeLocks:
    def __init__(self):
        self._held: dict[int, trio.Event] = {}

    def __bool__(self) -> bool:
        return bool(self._held)

    def busy(self, ino: int) -> bool:
        return ino in self._held

    @contextlib.asynccontextmanager
    async def hold(self, *inos: int):
        """Hold `inos` (after any other holder of them is done) for the
        body of the `async with`."""
        inos = set(inos)
        while True:
            busy = [self._held[i] for i in inos if i in self._held]
            if not busy:
                break
            binding.temporary_worker()
            await busy[0].wait()
        event = trio.Event()
        for ino in inos:
            self._held[ino] = event
        try:
            yield
        finally:
            for ino in inos:
                if self._held.get(ino) is event:
                    del self._held[ino]
            event.set()


async def between_steps() -> None:
    """Let every other request in between two steps of a long one."""
    binding.temporary_worker()
    await trio.sleep(0)
