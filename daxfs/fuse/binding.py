"""The one place that knows which pyfuse3 daxfs runs on.

daxfs needs pyfuse3 3.5.0 with the repository's patch
(third_party/pyfuse3/README.md): the fallocate, copy_file_range and lseek
handlers, `want_capability` (FUSE_DONT_MASK at INIT) and
`start_temporary_worker`.  `require()` checks the binding's `FEATURES` once
and says, in one line, what to do when they are missing; every other module
of daxfs.fuse then uses pyfuse3's public names only.

How requests are served: ONE worker serves requests back to back
(`main_args`; pyfuse3's pool would hand a lock and the fd between tasks for
every request), and a handler that must await something the kernel may
only finish after other requests are answered starts a temporary worker
first (`temporary_worker`).  DAXFS_PYFUSE3_POOL=1 keeps pyfuse3's worker
pool instead, for the A/B measurement of scripts/bench_daemon_cpu.py.
"""

from __future__ import annotations

import os

import pyfuse3

NEEDED = frozenset({"fallocate", "copy_file_range", "lseek", "want_capability",
                    "start_temporary_worker"})
POOL = os.environ.get("DAXFS_PYFUSE3_POOL") == "1"


class BindingError(RuntimeError):
    """pyfuse3 lacks what daxfs needs."""


def require() -> None:
    """Raise BindingError unless pyfuse3 is the patched 3.5.0."""
    missing = NEEDED - getattr(pyfuse3, "FEATURES", frozenset())
    if missing:
        raise BindingError(
            f"pyfuse3 at {pyfuse3.__file__} lacks {', '.join(sorted(missing))}: daxfs needs"
            " pyfuse3 3.5.0 with the patch in third_party/pyfuse3 (run scripts/setup.sh)")


def main_args() -> dict:
    """Arguments for pyfuse3.main: one worker, or pyfuse3's pool."""
    return {} if POOL else {"min_tasks": 1, "max_tasks": 1}


def temporary_worker() -> None:
    """Make sure requests keep being served while the calling handler
    waits (no-op with pyfuse3's pool, which keeps spare workers itself)."""
    if not POOL:
        pyfuse3.start_temporary_worker()


def want_dont_mask() -> bool:
    """From Operations.init(): ask the kernel to leave the umask to the
    filesystem (FUSE_DONT_MASK); True if it agreed."""
    return pyfuse3.want_capability(pyfuse3.FUSE_CAP_DONT_MASK)
