"""Keeps scripts/bench.py from rotting: run two cheap groups of
`bench.py --quick` (sequential I/O through every peer's mount, and the
engine's in-place compare) and check that the JSON and the PNG have the
right shape.  The values themselves are not checked: benchmarks never assert
on time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {"name", "unit", "daxfs", "peer", "peer_value", "ratio", "target",
          "higher_is_better", "meets"}


def test_turn_order_rotates_fairly():
    """The meta and untar groups' turns (bench.turn_order): over as many
    turns as there are systems every system holds every place once, and
    no system ever runs two turns back to back (the alternating order did
    at every reversal, and two identical daxfs mounts read 0.72x of each
    other: docs/benchmarks.md)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_script", ROOT / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    systems = ["daxfs", "ceiling", "daxfs-single", "passthrough", "tmpfs", "xfs"]
    k = len(systems)
    turns = [bench.turn_order(systems, t) for t in range(5 * k)]
    flat = [s for turn in turns for s in turn]
    assert all(a != b for a, b in zip(flat, flat[1:]))
    for first in range(0, 5 * k, k):
        places = {s: sorted(turn.index(s) for turn in turns[first:first + k]) for s in systems}
        assert all(p == list(range(k)) for p in places.values()), places
    assert all(sorted(turn) == sorted(systems) for turn in turns)
    assert bench.turn_order([], 3) == [] and bench.turn_order(["a"], 5) == ["a"]


def _fuse_mounts(workdir) -> list[str]:
    """The benchmark's mounts under this test's work directory (another
    benchmark running on the machine at the same time is not ours)."""
    with open("/proc/mounts") as f:
        return [ln for ln in f if f"{workdir}/daxfs-bench-" in ln]


@pytest.mark.timeout(240)
@pytest.mark.skipif(os.geteuid() != 0, reason="bench.py mounts: needs root")
@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")
def test_bench_quick_json_shape(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    before = _fuse_mounts(tmp_path)
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--only", "seq,compare",
         "--json", str(out), "--png", str(png), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=200, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    figs = json.loads(out.read_text())
    assert isinstance(figs, list) and figs
    for f in figs:
        assert FIELDS <= set(f), f
        assert isinstance(f["name"], str) and isinstance(f["unit"], str)
        assert isinstance(f["higher_is_better"], bool)
        for k in ("daxfs", "peer_value", "ratio", "target"):
            assert f[k] is None or isinstance(f[k], (int, float)), (k, f)
        assert f["meets"] in (True, False, None)
        assert f["peer"] is None or isinstance(f["peer"], str)
    names = " | ".join(f["name"] for f in figs)
    assert "seq write" in names and "seq read" in names and "compare" in names, names
    peers = {f["peer"] for f in figs if f["name"].startswith("seq")}
    assert {"passthrough", "tmpfs"} <= peers, peers
    # the comparisons that have targets carry them (write >= 0.8x, read >= 1x)
    seq_pt = [f for f in figs if f["name"].startswith("seq") and f["peer"] == "passthrough"
              and f["target"] is not None]
    assert len(seq_pt) >= 2 and all(f["meets"] is not None for f in seq_pt
                                    if f["daxfs"] is not None and f["peer_value"] is not None), seq_pt
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "figure" in res.stdout and "ratio" in res.stdout     # the table was printed
    # nothing left mounted, no loop device left on our image
    assert _fuse_mounts(tmp_path) == before
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, timeout=30).stdout
    assert str(tmp_path) not in loops


@pytest.mark.timeout(240)
def test_bench_ops_runs(tmp_path):
    """scripts/bench_ops.py prints every figure (values not checked)."""
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_ops.py"), "--runs", "1",
                          "--n", "200", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=200)
    assert res.returncode == 0, res.stderr
    for name in ("create", "lookup, name and inode cached", "unlink + getattr + forget",
                 "4 KiB overwrite", "16 KiB appending write"):
        assert name in res.stdout, res.stdout


@pytest.mark.timeout(240)
@pytest.mark.skipif(os.geteuid() != 0, reason="mounts: needs root")
@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")
def test_bench_daemon_cpu_runs(tmp_path):
    """scripts/bench_daemon_cpu.py measures every system and leaves
    nothing mounted (values not checked)."""
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_daemon_cpu.py"),
                          "--runs", "1", "--files", "50", "--pool",
                          "--gc-default", "--daxfs-loop", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=200)
    assert res.returncode == 0, res.stderr
    systems = ["daxfs", "daxfs (pyfuse3 pool)", "daxfs (gc default)",
               "passthrough", "passthrough (daxfs loop)"]
    lines = [ln.strip() for ln in res.stdout.splitlines()]
    for op in ("create", "stat", "unlink"):
        at = lines.index(op)
        rows = lines[at + 1:at + 1 + len(systems)]
        assert [r.rsplit(None, 3)[0] for r in rows] == systems, res.stdout
        assert all(float(r.split()[-1]) > 0 for r in rows), res.stdout
    with open("/proc/mounts") as f:
        assert str(tmp_path) not in f.read()
