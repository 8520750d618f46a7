"""Errors the daemon answers, logged without flooding its log.

A mount that has shut down (metadata poisoned) answers every request with
EIO, and a bad value on the image can make every request of a kind fail
the same way: logged one line (or one traceback) per request, 35,000 stats
in 10 s grew a log by 27 MB.  `ErrorLog` logs the first `FIRST`
occurrences of each kind (a key such as handler name and exception type)
in full, then counts them and logs one line per `INTERVAL` seconds:

    getattr: ShutDown repeated 34,999 times in the last 10 s

A kind that has been quiet for `INTERVAL` starts over (logged in full
again).  `flush()` (called by the adapter's background commit loop every
second, and at unmount) writes the counts of a storm that has stopped.

Used by daxfs/fuse/operations.py (`_boundary` and the background loops);
it knows nothing of FUSE.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

FIRST = 3           # occurrences of one kind logged in full
INTERVAL = 10.0     # seconds between the count lines of one kind


@dataclass
class _Kind:
    logged: int = 0         # occurrences logged in full
    suppressed: int = 0     # occurrences counted since `since`
    since: float = 0.0
    last: float = 0.0       # the last occurrence


class ErrorLog:
    """Rate-limited logging of repeated errors, per kind."""

    def __init__(self, logger: logging.Logger, *, first: int = FIRST,
                 interval: float = INTERVAL, clock=time.monotonic):
        self.log = logger
        self.first = first
        self.interval = interval
        self.clock = clock
        self._kinds: dict[str, _Kind] = {}

    def error(self, kind: str, level: int, msg: str, *args, exc_info=False) -> None:
        """Log `msg % args` at `level` (with the traceback if `exc_info`)
        if `kind` has not been logged `first` times lately, else count it."""
        now = self.clock()
        k = self._kinds.get(kind)
        if k is None or (not k.suppressed and now - k.last >= self.interval):
            k = self._kinds[kind] = _Kind()
        k.last = now
        if k.logged < self.first:
            k.logged += 1
            self.log.log(level, msg, *args, exc_info=exc_info)
            if k.logged == self.first:
                self.log.log(level, "%s: further occurrences are counted, one line per %.0f s",
                             kind, self.interval)
            return
        if not k.suppressed:
            k.since = now
        k.suppressed += 1
        self._report(kind, k, now)

    def flush(self, everything: bool = False) -> None:
        """Log the counts whose interval has passed (`everything`: all
        counts, as at unmount)."""
        now = self.clock()
        for kind, k in self._kinds.items():
            self._report(kind, k, now, everything)

    def _report(self, kind: str, k: _Kind, now: float, everything: bool = False) -> None:
        if k.suppressed and (everything or now - k.since >= self.interval):
            self.log.warning("%s repeated %s times in the last %.0f s",
                             kind, f"{k.suppressed:,}", now - k.since)
            k.suppressed = 0
