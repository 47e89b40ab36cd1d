#!/usr/bin/env python3
"""Scaling sweep: tasks/s and peak RSS of a meta-step against task batch, inner steps and image size.

Every configuration is one ``benchmarks/meta_step.py`` worker, a fresh Python
process, so its peak resident memory (``ru_maxrss``) is its own. The sweep
varies one axis at a time from a base configuration (the bayes_unet U-Net,
5-shot, 5 query points):

* ``task_batch`` B at the base size and K,
* ``inner_steps`` K at the base size and B,
* ``size`` (image height = width) at the batch sizes in ``size_batches``,

for each *series*: the engine with every second-order memory mode that
``hvi.choices.MEMORY_MODES`` offers when the sweep runs (``none``,
``checkpoint``, and ``implicit`` where it exists), the engine's first order,
and the naive per-task loop (second order).

Grids:

``--quick`` (what ``docs/results/scaling.json`` holds)
    U-Net base 8, one thread, 1 warm-up + 2 timed steps, no FLOP counting;
    B ∈ {1, 2, 4, 8, 16} at K = 5, K ∈ {1, 2, 5, 10, 20} at B = 2,
    size ∈ {32, 64, 128} at B = 1. About 20 minutes on 2 shared cores.
full (the default)
    U-Net base 16 (issue #16's network), two threads, 2 warm-up + 5 timed
    steps; B ∈ {1, 2, 4, 8, 16} at K = 5, K ∈ {1, 2, 5, 10, 20} at B = 8,
    size ∈ {32, 64, 128} at B = 1 and 8. Hours on 2 CPU cores.

Writes ``docs/results/scaling.csv`` (one row per configuration),
``docs/results/scaling.json`` (the rows with the command, date, grid, the
machine's load averages before and after, and failures) and
``docs/figures/scaling.png``::

    python benchmarks/scaling_sweep.py --quick
    python benchmarks/scaling_sweep.py --plot-only   # redraw the PNG from the JSON
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from provenance import write_result

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: CSV columns (a row's other keys stay in the JSON).
CSV_KEYS = (
    "series", "axes", "impl", "memory_mode", "first_order", "size", "base", "k_shot", "inner_steps",
    "task_batch", "tasks_per_cpu_s", "tasks_per_s", "step_s_median", "cpu_s_median", "peak_rss_mb", "peak_rss_delta_mb", "threads", "loadavg_1m",
    "others_cpu_share", "loss_finite",
)

GRIDS: dict[str, dict[str, Any]] = {
    "quick": {
        "base": 8, "threads": 1, "steps": 2, "warmup": 1, "flops": False, "inner_lr": 1e-5,
        "size": 32, "inner_steps": 5, "task_batch": 2,
        "task_batches": [1, 2, 4, 8, 16], "inner_steps_list": [1, 2, 5, 10, 20],
        "sizes": [32, 64, 128], "size_batches": [1],
    },
    "full": {
        "base": 16, "threads": 2, "steps": 5, "warmup": 2, "flops": True, "inner_lr": 1e-5,
        "size": 32, "inner_steps": 5, "task_batch": 8,
        "task_batches": [1, 2, 4, 8, 16], "inner_steps_list": [1, 2, 5, 10, 20],
        "sizes": [32, 64, 128], "size_batches": [1, 8],
    },
}


def series_list() -> list[dict[str, Any]]:
    """The engine in every second-order memory mode hvi offers now, its first order, and the naive loop."""
    sys.path.insert(0, str(ROOT))
    from hvi.choices import MEMORY_MODES

    out = [{"series": f"engine, memory {m}", "impl": "engine", "memory_mode": m, "first_order": False}
           for m in MEMORY_MODES]
    out.append({"series": "engine, first order", "impl": "engine", "memory_mode": "none", "first_order": True})
    out.append({"series": "naive loop", "impl": "naive", "memory_mode": "none", "first_order": False})
    return out


def points(grid: dict[str, Any]) -> list[tuple[int, int, int]]:
    """The unique (size, K, B) configurations of the grid's three axes."""
    pts = [(grid["size"], grid["inner_steps"], b) for b in grid["task_batches"]]
    pts += [(grid["size"], k, grid["task_batch"]) for k in grid["inner_steps_list"]]
    pts += [(s, grid["inner_steps"], b) for s in grid["sizes"] for b in grid["size_batches"]]
    return list(dict.fromkeys(pts))


def axes_of(grid: dict[str, Any], size: int, k: int, b: int) -> list[str]:
    """The axes a configuration lies on (the base configuration lies on all three)."""
    out = []
    if size == grid["size"] and k == grid["inner_steps"] and b in grid["task_batches"]:
        out.append("task_batch")
    if size == grid["size"] and b == grid["task_batch"] and k in grid["inner_steps_list"]:
        out.append("inner_steps")
    if k == grid["inner_steps"] and b in grid["size_batches"] and size in grid["sizes"]:
        out.append("size")
    return out


def invocations(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """One meta_step.py call per (size, K) with the task batches it needs (one worker process each)."""
    calls: dict[tuple[int, int], list[int]] = {}
    for size, k, b in points(grid):
        calls.setdefault((size, k), []).append(b)
    return [{"size": size, "inner_steps": [k], "task_batch": bs} for (size, k), bs in calls.items()]


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def inner_lr(grid: dict[str, Any], size: int) -> float:
    """α at ``size``: the base size's α scaled by (base size / size)², so that a step moves
    the weights as far per pixel (a support image's log-likelihood sums over its pixels;
    at 1e-5 the 128×128 inner loop diverges)."""
    return grid["inner_lr"] * (grid["size"] / size) ** 2


def run_meta_step(series: dict[str, Any], call: dict[str, Any], grid: dict[str, Any],
                  timeout: float | None) -> tuple[list[dict[str, Any]], str | None]:
    """The rows one meta_step.py call printed (one fresh worker per configuration), and its error if it failed."""
    cmd = [
        sys.executable, str(HERE / "meta_step.py"), "--json", "--impl", series["impl"],
        "--model", "bayes_unet", "--base", str(grid["base"]), "--size", str(call["size"]),
        "--inner-steps", ",".join(map(str, call["inner_steps"])),
        "--task-batch", ",".join(map(str, call["task_batch"])),
        "--threads", str(grid["threads"]), "--steps", str(grid["steps"]), "--warmup", str(grid["warmup"]),
        "--no-matmul", "--inner-lr", f"{inner_lr(grid, call['size']):.6g}",
    ]
    if series["impl"] == "engine":
        cmd += ["--memory-mode", series["memory_mode"]]
    if series["first_order"]:
        cmd.append("--first-order")
    if not grid["flops"]:
        cmd.append("--no-flops")
    if timeout is not None:
        cmd += ["--timeout", str(timeout)]
    env = {**os.environ, "OMP_NUM_THREADS": str(grid["threads"])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    rows = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            if r.get("impl") != "matmul":
                axes = axes_of(grid, r["size"], r["inner_steps"], r["task_batch"])
                rows.append({"series": series["series"], "axes": "+".join(axes), **r})
    error = None
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-3:]
        error = " | ".join(tail) or f"exit status {proc.returncode}"
    return rows, error


def tasks_per_cpu_s(row: dict[str, Any]) -> float:
    """Tasks per second of the worker's own CPU time (median step): what a busy machine distorts least.

    On one thread it is the step's compute; wall-clock tasks/s also counts the
    time other processes held the cores (``others_cpu_share``).
    """
    return round(row["task_batch"] / row["cpu_s_median"], 4)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_KEYS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            r = {**r, "tasks_per_cpu_s": tasks_per_cpu_s(r)}
            w.writerow({k: (r.get(k)[-1] if k == "loadavg_1m" and isinstance(r.get(k), list) else r.get(k))
                        for k in CSV_KEYS})
    os.replace(tmp, path)


def plot(result: dict[str, Any], path: Path) -> None:
    """Tasks per CPU-second (top) and peak RSS (bottom) against each axis, one line per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, grid = result["results"], result["grid"]
    axes = [("task_batch", "task batch B", f"K = {grid['inner_steps']}, {grid['size']}×{grid['size']}"),
            ("inner_steps", "inner steps K", f"B = {grid['task_batch']}, {grid['size']}×{grid['size']}"),
            ("size", "image size (pixels a side)", f"K = {grid['inner_steps']}, B = {min(grid['size_batches'])}")]
    fig, ax = plt.subplots(2, 3, figsize=(13, 7.5), constrained_layout=True)
    series = list(dict.fromkeys(r["series"] for r in rows))
    styles = {s: dict(marker="os^Dv*"[i % 6], color=f"C{i}") for i, s in enumerate(series)}
    for j, (axis, label, fixed) in enumerate(axes):
        for s in series:
            pts = [r for r in rows if r["series"] == s and axis in r["axes"].split("+")]
            if axis == "size":
                pts = [r for r in pts if r["task_batch"] == min(grid["size_batches"])]
            pts.sort(key=lambda r: r[axis])
            if not pts:
                continue
            xs = [r[axis] for r in pts]
            ax[0, j].plot(xs, [tasks_per_cpu_s(r) for r in pts], label=s, **styles[s])
            ax[1, j].plot(xs, [r["peak_rss_mb"] for r in pts], label=s, **styles[s])
        for i in range(2):
            ax[i, j].set_xscale("log", base=2)
            ax[i, j].set_xticks(sorted({r[axis] for r in rows if axis in r["axes"].split("+")}))
            ax[i, j].get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax[i, j].grid(alpha=0.3)
        ax[0, j].set_yscale("log")
        ax[0, j].yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax[0, j].yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax[0, j].yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax[0, j].set_title(f"vs {label} ({fixed})", fontsize=10)
        ax[1, j].set_xlabel(label)
    ax[0, 0].set_ylabel("tasks per CPU-second (higher is better)")
    ax[1, 0].set_ylabel("peak RSS, MB (lower is better)")
    handles, labels = ax[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=10)
    loads = [v for r in rows for v in (r.get("loadavg_1m") or []) if v is not None]
    fig.suptitle(
        f"Meta-step of a U-Net (base {grid['base']}, 5-shot), {grid['threads']} thread(s), one process per point; "
        f"{result['machine']['cpus']} shared CPU cores, 1-min load {min(loads):.1f}–{max(loads):.1f} while timing",
        fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save(args, argv, name, grid, rows, failures, load_before, t0, complete: bool,
         previous: list[dict[str, str]]) -> dict[str, Any]:
    """Writes the JSON (with provenance) and the CSV of the rows so far."""
    machine = {
        "cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": _loadavg(),
        "wall_s": round(time.time() - t0, 1),
        "note": "a machine shared with other jobs: timings were taken under load (see each row's loadavg_1m "
                "and others_cpu_share)",
    }
    result = write_result(args.out, "benchmarks/scaling_sweep.py", argv,
                          {"complete": complete, **({"previous": previous} if previous else {}),
                           "grid": {"name": name, **grid}, "machine": machine,
                           "failures": failures, "results": rows})
    write_csv(Path(args.csv), rows)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the small grid (base-8 U-Net, 2 timed steps, one thread)")
    p.add_argument("--out", default=str(ROOT / "docs/results/scaling.json"), help="the JSON results")
    p.add_argument("--csv", default=str(ROOT / "docs/results/scaling.csv"), help="the CSV table")
    p.add_argument("--png", default=str(ROOT / "docs/figures/scaling.png"), help="the figure")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per worker process")
    p.add_argument("--series", default=None,
                   help="semicolon list of series to run (default all), e.g. 'naive loop;engine, first order'")
    p.add_argument("--plot-only", action="store_true", help="redraw the PNG (and CSV) from the JSON")
    p.add_argument("--replace-sizes", default=None, metavar="S1,S2",
                   help="rerun only the configurations at these image sizes and replace them in the existing "
                        "JSON (whose earlier commands are kept under 'previous')")
    p.add_argument("--replace-series", default=None, metavar="A;B",
                   help="rerun only these series (semicolon list, as --series) on the whole grid and replace "
                        "their rows in the existing JSON, keeping the other series' rows and commands")
    args = p.parse_args(argv)
    if args.replace_series and (args.replace_sizes or args.series):
        p.error("--replace-series reruns whole series: use it without --replace-sizes and --series")
    if args.plot_only:
        result = json.loads(Path(args.out).read_text())
        write_csv(Path(args.csv), result["results"])
        plot(result, Path(args.png))
        print(f"wrote {args.csv} and {args.png}")
        return 0
    name = "quick" if args.quick else "full"
    grid = GRIDS[name]
    series = series_list()
    kept: list[dict[str, Any]] = []
    previous: list[dict[str, str]] = []
    calls = invocations(grid)
    def earlier(flag: str) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """The rows of the existing --out (same grid) and its commands so far, for a partial rerun."""
        old = json.loads(Path(args.out).read_text())
        if old["grid"]["name"] != name:
            p.error(f"{flag}: {args.out} holds the {old['grid']['name']!r} grid, not {name!r}")
        return old["results"], old.get("previous", []) + [{"command": old["command"], "date": old["date"]}]

    if args.replace_sizes:
        sizes = {int(v) for v in args.replace_sizes.split(",")}
        old_rows, previous = earlier("--replace-sizes")
        kept = [r for r in old_rows if r["size"] not in sizes]
        calls = [c for c in calls if c["size"] in sizes]
    if args.replace_series:
        wanted = [s.strip() for s in args.replace_series.split(";")]
        unknown = sorted(set(wanted) - {s["series"] for s in series})
        if unknown:
            p.error(f"--replace-series: unknown series {unknown[0]!r}; the series are "
                    + "; ".join(s["series"] for s in series))
        old_rows, previous = earlier("--replace-series")
        kept = [r for r in old_rows if r["series"] not in wanted]
        series = [s for s in series if s["series"] in wanted]
    if args.series:
        wanted = [s.strip() for s in args.series.split(";")]
        series = [s for s in series if s["series"] in wanted]
    load_before, t0 = _loadavg(), time.time()
    rows: list[dict[str, Any]] = list(kept)
    failures: list[dict[str, Any]] = []
    for call in calls:
        for s in series:
            got, error = run_meta_step(s, call, grid, args.timeout)
            rows += got
            for r in got:
                print(f"{s['series']:24s} size={r['size']:3d} K={r['inner_steps']:2d} B={r['task_batch']:2d} "
                      f"{r['tasks_per_s']:8.3f} tasks/s  peak {r['peak_rss_mb']:6.0f} MB  load {r['loadavg_1m']}",
                      flush=True)
            if error:
                failures.append({"series": s["series"], "call": call, "error": error})
                print(f"{s['series']} {call}: FAILED {error}", file=sys.stderr, flush=True)
            if args.replace_series:  # the replaced series back in their place among the kept ones
                order = {s["series"]: i for i, s in enumerate(series_list())}
                rows.sort(key=lambda r: order.get(r["series"], len(order)))
            # Written after every call: an interrupted sweep keeps what it measured ("complete": false).
            result = save(args, argv, name, grid, rows, failures, load_before, t0, False, previous)
    result = save(args, argv, name, grid, rows, failures, load_before, t0, True, previous)
    plot(result, Path(args.png))
    print(f"wrote {args.out}, {args.csv} and {args.png} ({result['machine']['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
