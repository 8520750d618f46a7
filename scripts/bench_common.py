"""Shared by scripts/bench.py and scripts/bench_engine.py: the figure record,
medians, the terminal table, the JSON file, the PNG chart and hot-spot
summaries of profiles; run as `bench_common.py FILE.json`, a run's figures
as the Markdown table docs/benchmarks.md keeps.  The PNG chart is drawn
with daxfs/picture.py (the canvas, 5x7 font and PNG writer that
`daxfs map --png` uses too).

A figure compares one daxfs value with one peer value, or with an absolute
target:

* `ratio` is a *speed* ratio: daxfs / peer when higher is better (MB/s,
  ops/s), peer / daxfs when lower is better (seconds).  Above 1 daxfs is
  faster, whatever the unit.
* `target_on` says what the target applies to: "ratio" (meets when
  ratio >= target) or "value" (meets when the daxfs value >= target, or
  <= target when lower is better).
* `meets` is true, false, or null (no target, or not measured).  Nothing
  here asserts on time: a missed target is reported, never raised.

JSON: a list with one object per figure, with the keys of FIELDS plus
target_on, group, runs, peer_runs and note.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

from daxfs.picture import Canvas   # needs the checkout on sys.path (bench.py, bench_engine.py)

FIELDS = ("name", "unit", "daxfs", "peer", "peer_value", "ratio", "target",
          "higher_is_better", "meets")


# ---------------------------------------------------------------- figures

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def figure(name: str, unit: str, daxfs=None, *, runs=None, peer: str | None = None,
           peer_value=None, peer_runs=None, target=None, target_on: str = "ratio",
           higher_is_better: bool = True, group: str = "", note: str = "") -> dict:
    """One figure; `runs` (and `peer_runs`) give the medians when the values
    are not given."""
    if daxfs is None and runs:
        daxfs = median(runs)
    if peer_value is None and peer_runs:
        peer_value = median(peer_runs)
    ratio = None
    if daxfs is not None and peer_value is not None and peer is not None:
        if higher_is_better:
            ratio = daxfs / peer_value if peer_value else None
        else:
            ratio = peer_value / daxfs if daxfs else None
    meets = None
    if target is not None:
        if target_on == "ratio" and ratio is not None:
            meets = ratio >= target
        elif target_on == "value" and daxfs is not None:
            meets = daxfs >= target if higher_is_better else daxfs <= target
    return {"name": name, "unit": unit, "daxfs": daxfs, "peer": peer,
            "peer_value": peer_value, "ratio": ratio, "target": target,
            "higher_is_better": higher_is_better, "meets": meets,
            "target_on": target_on if target is not None else None,
            "group": group, "runs": list(runs or []), "peer_runs": list(peer_runs or []),
            "note": note}


def not_measured(name: str, unit: str, why: str, *, peer=None, target=None,
                 target_on="ratio", higher_is_better=True, group="") -> dict:
    return figure(name, unit, None, peer=peer, target=target, target_on=target_on,
                  higher_is_better=higher_is_better, group=group,
                  note="not measured: " + why)


# ---------------------------------------------------------------- text

def fmt(v) -> str:
    """A number in about 3 significant digits."""
    if v is None:
        return "-"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.3g}"
    return f"{v:.2g}"


def ratio_text(r) -> str:
    if r is None:
        return "-"
    return f"{r:.3g}x" if r < 1000 else f"{r:,.0f}x"


def target_text(f: dict) -> str:
    t = f["target"]
    if t is None:
        return "-"
    if f["target_on"] == "ratio":
        return f">={t:g}x"
    return (">=" if f["higher_is_better"] else "<=") + f"{t:g} {f['unit']}"


def meets_text(f: dict) -> str:
    return {True: "yes", False: "NO", None: "-"}[f["meets"]]


def table(figs: list[dict]) -> str:
    head = ("figure", "unit", "daxfs", "peer", "peer value", "ratio", "target", "meets")
    rows = []
    for f in figs:
        rows.append((f["name"], f["unit"], fmt(f["daxfs"]), f["peer"] or "-",
                     fmt(f["peer_value"]), ratio_text(f["ratio"]), target_text(f),
                     meets_text(f)))
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    widths[0] = min(widths[0], 62)
    right = {2, 4, 5}
    out = []

    def line(r):
        cells = []
        for i, c in enumerate(r):
            c = str(c)
            if i == 0 and len(c) > widths[0]:
                c = c[:widths[0] - 1] + "~"
            cells.append(c.rjust(widths[i]) if i in right else c.ljust(widths[i]))
        return "  ".join(cells).rstrip()

    out.append(line(head))
    out.append("  ".join("-" * w for w in widths))
    group = None
    for f, r in zip(figs, rows):
        if group is not None and f.get("group") != group:
            out.append("")
        group = f.get("group")
        out.append(line(r))
    notes = [f for f in figs if f.get("note")]
    if notes:
        out.append("")
        out.append("notes:")
        for f in notes:
            out.append(f"  {f['name']}" + (f" [vs {f['peer']}]" if f["peer"] else "")
                       + f": {f['note']}")
    return "\n".join(out)


def markdown(figs: list[dict]) -> str:
    """The figures as a Markdown table (docs/benchmarks.md), with each
    figure's run values: the same numbers as `table`, for the record."""
    out = ["| figure | unit | daxfs | peer | peer value | ratio | target | meets | runs (daxfs / peer) |",
           "|---|---|---:|---|---:|---:|---|---|---|"]
    for f in figs:
        runs = " ".join(fmt(v) for v in f.get("runs") or [])
        theirs = " ".join(fmt(v) for v in f.get("peer_runs") or [])
        out.append(f"| {f['name']} | {f['unit']} | {fmt(f['daxfs'])} | {f['peer'] or '-'} | "
                   f"{fmt(f['peer_value'])} | {ratio_text(f['ratio'])} | {target_text(f)} | "
                   f"{meets_text(f)} | {runs}{' / ' + theirs if theirs else ''} |")
    return "\n".join(out)


def write_json(figs: list[dict], path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(figs, fh, indent=1, default=float)
        fh.write("\n")
    os.replace(tmp, path)


def read_json(path: str) -> list[dict]:
    with open(path) as fh:
        return json.load(fh)


# ---------------------------------------------------------------- PNG

GREEN, RED, GREY, BLUE = (46, 160, 67), (214, 60, 50), (150, 150, 150), (70, 110, 200)
BLACK, LIGHT, MID = (0, 0, 0), (235, 235, 235), (200, 200, 200)


def _bar_value(f: dict):
    """(position on the log axis, what it is) or None when nothing to draw."""
    if f["ratio"] is not None:
        return f["ratio"], "ratio"
    if f["target"] is not None and f["target_on"] == "value" and f["daxfs"]:
        v, t = f["daxfs"], f["target"]
        return (v / t if f["higher_is_better"] else t / v), "headroom"
    return None


def write_png(figs: list[dict], path: str, title: str = "daxfs benchmark",
              subtitle: str = "") -> None:
    """One row per figure: the speed ratio against its peer (or, for an
    absolute target, value/target) as a bar on a log axis from 1x, the
    target as a black tick; green meets, red misses, blue no target."""
    S = 2                                    # font scale
    label_w = 50 * 6 * S
    lo, hi = -2, 4                           # 0.01x .. 10000x
    axis_w = 100 * (hi - lo)
    text_w = 44 * 6 * S
    pad = 16
    row_h = 11 * S
    head_h = 5 * row_h + 10
    width = pad + label_w + 10 + axis_w + 14 + text_w + pad
    nrows = len(figs) + sum(1 for a, b in zip(figs, figs[1:]) if a.get("group") != b.get("group"))
    height = head_h + nrows * row_h + 3 * row_h + pad
    cv = Canvas(width, height)
    ax0 = pad + label_w + 10

    def xpos(r: float) -> int:
        r = min(max(r, 10.0 ** lo), 10.0 ** hi)
        return ax0 + int(round((math.log10(r) - lo) * 100))

    cv.text(pad, pad, title, BLACK, 3)
    cv.text(pad, pad + 8 * 3 + 4, subtitle, (60, 60, 60), S)
    cv.text(pad, pad + 8 * 3 + 4 + row_h,
            "bar: speed ratio daxfs/peer (log axis; right of 1x = daxfs faster), "
            "or value/target for absolute targets.", (60, 60, 60), S)
    legend_y = pad + 8 * 3 + 4 + 2 * row_h
    x = cv.text(pad, legend_y, "target ", (60, 60, 60), S)
    cv.rect(x, legend_y - 2, x + 3, legend_y + 7 * S + 2, BLACK)
    x += 12
    for color, word in ((GREEN, "meets"), (RED, "misses"), (BLUE, "no target"),
                        (GREY, "not measured")):
        cv.rect(x, legend_y, x + 7 * S, legend_y + 7 * S, color)
        x = cv.text(x + 7 * S + 6, legend_y, word, (60, 60, 60), S) + 14

    top = head_h
    bottom = top + nrows * row_h
    for d in range(lo, hi + 1):              # grid and decade labels
        gx = xpos(10.0 ** d)
        cv.rect(gx, top - 4, gx + 1, bottom, MID if d else BLACK)
        lab = f"{10.0 ** d:g}x"
        cv.text(gx - Canvas.text_width(lab, S) // 2, bottom + 6, lab, (60, 60, 60), S)

    y = top
    prev = None
    for f in figs:
        if prev is not None and f.get("group") != prev:
            y += row_h
        prev = f.get("group")
        name = f["name"] + (f" vs {f['peer']}" if f["peer"] else "")
        if len(name) > 50:
            name = name[:49] + "~"
        if (figs.index(f) % 2) == 0:
            cv.rect(pad, y - 2, width - pad, y + row_h - 4, (248, 248, 248))
        cv.text(pad, y + 1, name, BLACK, S)
        bv = _bar_value(f)
        if f["daxfs"] is None:
            color = GREY
        elif f["meets"] is None:
            color = BLUE
        else:
            color = GREEN if f["meets"] else RED
        if bv is not None:
            bx = xpos(bv[0])
            x0, x1 = sorted((xpos(1.0), bx))
            cv.rect(x0, y + 1, max(x1, x0 + 2), y + row_h - 6, color)
        if f["target"] is not None:
            tr = f["target"] if f["target_on"] == "ratio" else 1.0
            tx = xpos(tr)
            cv.rect(tx - 1, y - 2, tx + 2, y + row_h - 3, BLACK)
        if f["daxfs"] is None:
            txt = (f.get("note") or "not measured")[:44]
        else:
            txt = f"{fmt(f['daxfs'])} {f['unit']}"
            if f["peer"]:
                txt += f" vs {fmt(f['peer_value'])}: {ratio_text(f['ratio'])}"
            if f["target"] is not None:
                txt += f" ({target_text(f)})"
        cv.text(ax0 + axis_w + 14, y + 1, txt[:44], color if color != BLUE else BLACK, S)
        y += row_h
    cv.write(path)


# ---------------------------------------------------------------- profiles

def find_pyspy() -> str | None:
    """py-spy from the venv (next to this Python) or PATH."""
    return shutil.which("py-spy", path=os.pathsep.join(
        [os.path.dirname(sys.executable), os.environ.get("PATH", "")]))


@contextlib.contextmanager
def pyspy_attached(pid: int, out: str, rate: int = 250):
    """Sample process `pid` with py-spy (raw collapsed stacks into `out`)
    for the duration of the with-block.  Yields False, doing nothing, when
    py-spy is not installed or cannot attach."""
    spy = find_pyspy()
    if not spy:
        yield False
        return
    proc = subprocess.Popen([spy, "record", "--pid", str(pid), "-r", str(rate), "-f", "raw",
                             "-o", out], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.7)                       # let it attach
    if proc.poll() is not None:
        print(f"py-spy could not attach to {pid}: "
              f"{proc.stderr.read().decode(errors='replace').strip()[:200]}", flush=True)
        yield False
        return
    try:
        yield True
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def print_pyspy(out: str, title: str, top: int = 25) -> None:
    if not os.path.exists(out):
        print(f"{title}: no profile written", flush=True)
        return
    rows, total = pyspy_hotspots(out, top)
    print("\n".join(hotspot_lines(rows, f"{title}: {total} busy samples -> {out}")))
    rows, _ = pyspy_hotspots(out, top, only="daxfs")
    print("\n".join(hotspot_lines(rows, f"{title}: daxfs package functions only")))
    rows, _ = pyspy_self_hotspots(out, 15)
    print(f"{title}: where the busy samples end (self %)")
    for name, pct in rows:
        print(f"  {pct:6.1f}  {name}")
    print(flush=True)


def _short(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'func (file.py)' ; keeps the package dir."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{name} ({short})"


def _matches(frame: str, only: str) -> bool:
    """Does a py-spy frame 'func (path:line)' lie in a file whose path has
    the directory `only` (e.g. 'daxfs'), whether py-spy shortened the path
    to 'daxfs/x.py' or kept '/abs/daxfs/x.py'?"""
    where = frame.partition(" (")[2]
    return where.startswith(only + "/") or f"/{only}/" in where


def pyspy_hotspots(raw_path: str, top: int = 25, only: str | None = None):
    """From py-spy's raw (collapsed) output: [(function, inclusive %, self %)]
    sorted by inclusive share of the busy samples.  `only` keeps functions
    whose file lies in that directory (e.g. 'daxfs')."""
    incl = collections.Counter()
    selfc = collections.Counter()
    total = 0
    with open(raw_path, errors="replace") as fh:
        for line in fh:
            line = line.rstrip("\n")
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = stack.split(";")
            seen = set()
            for fr in frames:
                if only and not _matches(fr, only):
                    continue
                key = _short(fr)
                if key not in seen:
                    seen.add(key)
                    incl[key] += n
            leaf = _short(frames[-1])
            if not only or _matches(frames[-1], only):
                selfc[leaf] += n
    if not total:
        return [], 0
    rows = [(k, 100.0 * v / total, 100.0 * selfc.get(k, 0) / total)
            for k, v in incl.most_common(top)]
    return rows, total


def pyspy_self_hotspots(raw_path: str, top: int = 15):
    """Leaf functions by share of busy samples (where the time is spent)."""
    selfc = collections.Counter()
    total = 0
    with open(raw_path, errors="replace") as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            total += int(count)
            selfc[_short(stack.split(";")[-1])] += int(count)
    return [(k, 100.0 * v / total) for k, v in selfc.most_common(top)], total


def cprofile_hotspots(prof_path: str, top: int = 25, only: str | None = None):
    """From a cProfile file: [(function, cumulative %, self %)] of the total
    profiled time, by cumulative time."""
    import pstats
    st = pstats.Stats(prof_path)
    total = st.total_tt or 1e-9
    rows = []
    for (fname, line, func), (cc, nc, tt, ct, callers) in st.stats.items():
        if only and only not in fname:
            continue
        base = "/".join(fname.split("/")[-2:])
        rows.append((f"{func} ({base}:{line})", 100.0 * ct / total, 100.0 * tt / total, nc))
    rows.sort(key=lambda r: -r[1])
    return rows[:top], total


def hotspot_lines(rows, header: str) -> list[str]:
    out = [header, f"  {'incl%':>6} {'self%':>6}  function"]
    for r in rows:
        out.append(f"  {r[1]:6.1f} {r[2]:6.1f}  {r[0]}")
    return out


if __name__ == "__main__":
    # `bench_common.py FILE.json`: a run's figures (bench.py --json) as Markdown
    print(markdown(read_json(sys.argv[1])))
