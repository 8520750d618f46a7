"""Crash safety of the engine: a child process runs crash_workload.py and is
killed with SIGKILL at random moments.

* mode "shared": the image is mapped MAP_SHARED, so a kill -9 loses only
  what the daemon had not stored into the mapping (its in-memory journal);
* mode "private": the image is mapped MAP_PRIVATE and only flushed pages
  reach the file, so a kill is a power loss at a random flush boundary.

After each kill: check is clean, the image opens, and every tracked file
holds at least the bytes recorded at its last completed fsync.
"""

import hashlib
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from daxfs.fsck.check import check_image
from daxfs.engine.fs import Filesystem
from daxfs.engine.mkfs import mkfs

HERE = os.path.dirname(os.path.abspath(__file__))
ITERATIONS = int(os.environ.get("DAXFS_CRASH_ITERATIONS", 10))


def last_fsync(journal):
    """The entries of the last complete BEGIN..END group."""
    if not os.path.exists(journal):
        return {}
    groups, cur = [], None
    with open(journal) as f:
        for line in f:
            if line.startswith("BEGIN"):
                cur = {}
            elif line.startswith("END"):
                if cur is not None:
                    groups.append(cur)
                cur = None
            elif cur is not None and line.count(" ") == 2 and line.endswith("\n"):
                path, size, digest = line.split()
                cur[path] = (int(size), digest)
    return groups[-1] if groups else {}


def run_and_kill(image, seed, mode, journal, delay):
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "support", "crash_workload.py"),
                             image, str(seed), mode, journal],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(delay)
        if proc.poll() is not None:
            err = proc.stderr.read().decode()
            pytest.fail(f"workload exited early ({proc.returncode}): {err[-2000:]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def verify(image, expected):
    problems = check_image(image)
    assert problems == [], "\n".join(problems)
    fs = Filesystem.open(image)
    try:
        for path, (size, digest) in expected.items():
            d, name = path.split("/")
            dino = fs.lookup(1, d.encode()).ino
            a = fs.lookup(dino, name.encode())
            assert a.size >= size, f"{path}: {a.size} bytes, fsync'd {size}"
            got = fs.read(a.ino, 0, size)
            assert hashlib.sha256(got).hexdigest() == digest, f"{path}: fsync'd bytes lost"
    finally:
        fs.close()


@pytest.mark.parametrize("mode", ["shared", "private"])
def test_kill_at_random_points(tmp_path, mode):
    image = str(tmp_path / "crash.img")
    mkfs(image, 64 << 20)
    rnd = random.Random(1234 if mode == "shared" else 4321)
    survived = 0
    for i in range(ITERATIONS):
        journal = str(tmp_path / f"journal-{i}")
        run_and_kill(image, 1000 * i + rnd.randrange(1000), mode, journal,
                     delay=rnd.uniform(1.0, 2.5))
        verify(image, last_fsync(journal))
        survived += 1
    assert survived == ITERATIONS
