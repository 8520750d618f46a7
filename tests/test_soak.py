"""The crash soak (tests/support/crash_soak.py), short: 20 crash points -- the
daemon of a real mount killed with SIGKILL under a mixed workload of
several processes (16 times) and power losses of the engine on a private
mapping (4 times) -- each followed by a clean `daxfs check`, a mount, and
the proof that every fsync'd file holds exactly its fsync'd bytes and every
file renamed over another is the old or the new one.

Run it longer by hand: scripts/crash_soak.py --iterations 1000.
"""

import os
import re
import sys

import pytest

from conftest import ROOT, run

ITERATIONS = int(os.environ.get("DAXFS_SOAK_ITERATIONS", 20))


@pytest.mark.timeout(600)
def test_crash_soak(tmp_path):
    work = tmp_path / "soak"
    res = run([sys.executable, ROOT / "scripts" / "crash_soak.py",
               "--iterations", ITERATIONS, "--seed", 20261124, "--power-loss-every", 5,
               "--workdir", work, "--size", "96M"],
              timeout=540, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    out = res.stdout + res.stderr
    with open("/proc/mounts") as f:
        assert str(work) not in f.read(), "the soak left a mount behind"
    assert res.returncode == 0, out[-6000:]
    m = re.search(r"(\d+) crash points .* (\d+) survived, (\d+) failures", out)
    assert m, out[-3000:]
    crashes, survived, failures = map(int, m.groups())
    assert crashes == survived == ITERATIONS and failures == 0, out[-3000:]
    m = re.search(r"verified: (\d+) fsync'd files", out)
    assert m and int(m.group(1)) > 0, "the soak verified no fsync'd file"
