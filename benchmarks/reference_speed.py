#!/usr/bin/env python3
"""The engine against the seed reference (``../shared/reference/seed_reference.py``) and the naive loop.

Issue #16's speed criteria, on one configuration (exact second order,
``bayes_unet`` 32×32 base 16, 5-shot, 5 query points, K = 5 inner steps, the
gradient inner update, which is what the reference's ``higher`` SGD inner loop
on (μ, ρ) and the naive loop both do)::

    engine tasks/s ≥ 2.0× the seed reference and ≥ 2.2× the naive loop at its best task batch
    engine GFLOP/s ≥ 60% of the same-run float32 matmul GFLOP/s
    engine first order ≥ 4.5× the seed reference's second order

Each round runs, each in a fresh process at one thread (``OMP_NUM_THREADS=1``,
``torch.set_num_threads(1)``), in this order: the reference, second and first
order (``seed_reference.py --threads 1``, in its own Python); the engine,
second and first order, at each ``--engine-batch``; the naive loop at each
``--naive-batch`` (both ``benchmarks/meta_step.py --threads 1 --json``); a
2048² float32 matmul. ``--rounds`` rounds alternate the configurations so that a
drift of the machine hits all of them alike; every rate is the median over the
rounds. FLOPs are counted once, in the first round (they do not change).

Two rates per configuration: tasks per wall-clock second, and tasks per CPU
second of the process (wall time on a machine shared with other jobs mostly
measures the other jobs; CPU time far less). The criteria are judged on the CPU
rates; the wall rates are recorded next to them. The reference's per-task
times come from its own ``time.perf_counter()`` calls around each task, to
which this script adds ``time.process_time()`` by handing the script's module a
``time`` that records both; its own printed median is kept for comparison.

The reference needs ``higher`` and its own environment (see
``../shared/reference/README.md``)::

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 higher

Example (the command of ``docs/results/reference_speed.json``)::

    python benchmarks/reference_speed.py --reference-python /tmp/ref/bin/python \\
        --rounds 3 --out docs/results/reference_speed.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference" / "seed_reference.py"

#: The configuration of the criteria, passed to both scripts.
SHAPE = {"size": 32, "base": 16, "k_shot": 5, "k_query": 5, "inner_steps": 5}

#: Issue #16's thresholds.
CRITERIA = {
    "engine_2nd_vs_reference_2nd": 2.0,
    "engine_2nd_vs_best_naive_2nd": 2.2,
    "engine_2nd_gflop_share_of_matmul": 0.60,
    "engine_1st_vs_reference_2nd": 4.5,
}


# ----------------------------------------------------------------------------
# pure parts
# ----------------------------------------------------------------------------
def parse_reference_output(text: str) -> dict[str, Any]:
    """The ``key=value`` pairs that ``seed_reference.py`` prints, numbers as numbers.

    Args:
        text: The reference's standard output.

    Returns:
        E.g. ``{"weights": 109361, ..., "s_per_task_median": 0.8244, "peak_rss_mb": 445}``.
    """
    out: dict[str, Any] = {}
    for line in text.splitlines():
        for token in line.split():
            if "=" not in token:
                continue
            key, _, value = token.partition("=")
            if value in ("True", "False"):
                out[key] = value == "True"
                continue
            try:
                out[key] = int(value)
            except ValueError:
                try:
                    out[key] = float(value)
                except ValueError:
                    out[key] = value
    return out


def per_task_times(marks: list[tuple[float, float]], warmup: int = 1) -> dict[str, list[float]]:
    """Wall and CPU seconds of each task from the reference's paired clock readings.

    The reference reads its clock twice per task (``t0`` before it, ``dt`` after
    it); each reading here is a ``(perf_counter, process_time)`` pair.

    Args:
        marks: The readings in call order (an even number of them).
        warmup: Leading tasks to drop (the reference drops one).

    Returns:
        ``{"wall": [...], "cpu": [...]}`` per timed task.

    Raises:
        ValueError: If the readings do not pair up.
    """
    if len(marks) % 2:
        raise ValueError(f"expected two clock readings per task, got {len(marks)} readings")
    pairs = [(marks[i], marks[i + 1]) for i in range(0, len(marks), 2)][warmup:]
    return {"wall": [b[0] - a[0] for a, b in pairs], "cpu": [b[1] - a[1] for a, b in pairs]}


def rates(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Median tasks per wall second and per CPU second over runs of one configuration.

    Args:
        rows: One dict per run with ``tasks_per_s`` and ``tasks_per_cpu_s``.

    Returns:
        ``{"tasks_per_s": ..., "tasks_per_cpu_s": ...}`` (medians).
    """
    return {k: statistics.median(r[k] for r in rows) for k in ("tasks_per_s", "tasks_per_cpu_s")}


def judge(summary: dict[str, dict[str, Any]], matmul: dict[str, float], basis: str = "tasks_per_cpu_s") -> dict[str, Any]:
    """Issue #16's four ratios from the per-configuration medians, and whether each is met.

    Args:
        summary: Per configuration name (``reference_2nd``, ``engine_2nd_B8``,
            ``engine_1st_B8``, ``naive_2nd_B1``, ...): medians from :func:`rates`,
            plus ``gflop_per_task`` for the engine's.
        matmul: Same-run matmul medians, ``gflop_per_s`` (wall) and ``gflop_per_cpu_s``.
        basis: ``"tasks_per_cpu_s"`` or ``"tasks_per_s"``.

    Returns:
        Per criterion: ``ratio``, ``threshold``, ``met`` and which configurations it used.
    """
    def best(prefix: str) -> str:
        names = [n for n in summary if n.startswith(prefix)]
        return max(names, key=lambda n: summary[n][basis])

    e2, e1, n2 = best("engine_2nd_B"), best("engine_1st_B"), best("naive_2nd_B")
    ref = summary["reference_2nd"][basis]
    mm = matmul["gflop_per_cpu_s" if basis == "tasks_per_cpu_s" else "gflop_per_s"]
    vals = {
        "engine_2nd_vs_reference_2nd": (summary[e2][basis] / ref, [e2, "reference_2nd"]),
        "engine_2nd_vs_best_naive_2nd": (summary[e2][basis] / summary[n2][basis], [e2, n2]),
        "engine_2nd_gflop_share_of_matmul": (summary[e2][basis] * summary[e2]["gflop_per_task"] / mm, [e2, "matmul"]),
        "engine_1st_vs_reference_2nd": (summary[e1][basis] / ref, [e1, "reference_2nd"]),
    }
    return {k: {"ratio": round(v, 3), "threshold": CRITERIA[k], "met": v >= CRITERIA[k], "of": of}
            for k, (v, of) in vals.items()}


def per_round(criteria: dict[str, Any], runs: dict[str, list[dict[str, Any]]], matmuls: list[dict[str, Any]],
              gflop: dict[str, float], basis: str = "tasks_per_cpu_s") -> dict[str, Any]:
    """Each criterion's ratio within each round (same configurations as ``criteria``), and their median.

    A round's configurations ran minutes apart, so a ratio within a round is
    less exposed to the machine's drift than a ratio of medians over rounds.

    Args:
        criteria: What :func:`judge` returned (its ``of`` names the configurations).
        runs: Per configuration, one row per round with ``basis``.
        matmuls: One matmul row per round.
        gflop: GFLOP per task per configuration.
        basis: ``"tasks_per_cpu_s"`` or ``"tasks_per_s"``.

    Returns:
        Per criterion: ``{"ratios": [...], "median": ...}``.
    """
    mm_key = "gflop_per_cpu_s" if basis == "tasks_per_cpu_s" else "gflop_per_s"
    out = {}
    for k, c in criteria.items():
        a, b = c["of"]
        if b == "matmul":
            ratios = [ra[basis] * gflop[a] / m[mm_key] for ra, m in zip(runs[a], matmuls)]
        else:
            ratios = [ra[basis] / rb[basis] for ra, rb in zip(runs[a], runs[b])]
        out[k] = {"ratios": [round(r, 3) for r in ratios], "median": round(statistics.median(ratios), 3)}
    return out


# ----------------------------------------------------------------------------
# workers
# ----------------------------------------------------------------------------
def _busy_cpu_s() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):  # pragma: no cover
        return None
    return (sum(vals[:8]) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


def _others_share(busy0: float | None, busy1: float | None, own: float, wall: float) -> float | None:
    if busy0 is None or busy1 is None or wall <= 0:
        return None
    return round(max(0.0, (busy1 - busy0) - own) / (wall * (os.cpu_count() or 1)), 3)


def reference_worker(script: str, argv: list[str], count_flops: bool) -> dict[str, Any]:
    """Runs ``seed_reference.py``'s ``main()`` here with a ``time`` that also reads CPU time.

    Runs under the reference's Python (it imports ``higher``). With
    ``count_flops`` the whole run is counted by ``FlopCounterMode`` and
    divided by its tasks (the run then is not timed).
    """
    import contextlib
    import io

    import torch

    spec = importlib.util.spec_from_file_location("seed_reference", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    marks: list[tuple[float, float]] = []

    def perf_counter() -> float:
        marks.append((time.perf_counter(), time.process_time()))
        return marks[-1][0]

    mod.time = types.SimpleNamespace(perf_counter=perf_counter)
    sys.argv = ["seed_reference.py", *argv]
    out = io.StringIO()
    busy0, own0, wall0 = _busy_cpu_s(), time.process_time(), time.perf_counter()
    with contextlib.redirect_stdout(out):
        if count_flops:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                mod.main()
        else:
            mod.main()
    busy1, own1, wall1 = _busy_cpu_s(), time.process_time(), time.perf_counter()
    printed = parse_reference_output(out.getvalue())
    times = per_task_times(marks)
    row = {"printed": printed, "tasks": len(times["wall"]), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "weights": printed.get("weights")}
    if count_flops:
        row["gflop_per_task"] = round(counter.get_total_flops() / (len(times["wall"]) + 1) / 1e9, 4)
        return row
    wall, cpu = statistics.median(times["wall"]), statistics.median(times["cpu"])
    row.update({
        "s_per_task_median": round(wall, 5), "cpu_s_per_task_median": round(cpu, 5),
        "tasks_per_s": round(1 / wall, 4), "tasks_per_cpu_s": round(1 / cpu, 4),
        "others_cpu_share": _others_share(busy0, busy1, own1 - own0, wall1 - wall0),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    })
    return row


def matmul_worker(n: int, repeats: int = 9) -> dict[str, Any]:
    """Median float32 ``n×n @ n×n`` throughput at one thread, per wall and per CPU second."""
    import torch

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a @ b
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        a @ b
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    flop = 2 * n**3 / 1e9
    return {"n": n, "repeats": repeats, "gflop_per_s": round(flop / statistics.median(wall), 2),
            "gflop_per_cpu_s": round(flop / statistics.median(cpu), 2), "loadavg_1m": round(os.getloadavg()[0], 2)}


# ----------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _json_line(cmd: list[str], timeout: float) -> dict[str, Any]:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def run_reference(python: str, script: str, tasks: int, first_order: bool, count_flops: bool,
                  timeout: float) -> dict[str, Any]:
    """One fresh reference process; its row (see :func:`reference_worker`)."""
    argv = ["--tasks", str(tasks), "--size", str(SHAPE["size"]), "--base", str(SHAPE["base"]),
            "--k-shot", str(SHAPE["k_shot"]), "--k-query", str(SHAPE["k_query"]),
            "--inner-steps", str(SHAPE["inner_steps"]), "--threads", "1"] + (["--first-order"] if first_order else [])
    cmd = [python, str(Path(__file__).resolve()), "--_reference-worker", json.dumps(
        {"script": script, "argv": argv, "count_flops": count_flops})]
    row = _json_line(cmd, timeout)
    row["command"] = " ".join(["python", "seed_reference.py", *argv])
    return row


def run_meta_step(impl: str, batch: int, first_order: bool, steps: int, warmup: int, count_flops: bool,
                  timeout: float, upsample: str = "bilinear") -> dict[str, Any]:
    """One ``benchmarks/meta_step.py`` configuration (itself a fresh worker process); its JSON line."""
    args = ["--impl", impl, "--task-batch", str(batch), "--size", str(SHAPE["size"]), "--base", str(SHAPE["base"]),
            "--upsample", upsample,
            "--k-shot", str(SHAPE["k_shot"]), "--k-query", str(SHAPE["k_query"]),
            "--inner-steps", str(SHAPE["inner_steps"]), "--update", "gradient", "--threads", "1",
            "--steps", str(steps), "--warmup", str(warmup), "--json", "--no-matmul"]
    args += ["--first-order"] if first_order else []
    args += [] if count_flops else ["--no-flops"]
    row = _json_line([sys.executable, str(HERE / "meta_step.py"), *args], timeout)
    row["tasks_per_cpu_s"] = round(row["task_batch"] / row["cpu_s_median"], 4)
    row["command"] = " ".join(["python", "benchmarks/meta_step.py", *args])
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="reference_speed.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--reference-python", default="/tmp/ref/bin/python",
                   help="a Python with torch and higher: python3 -m venv /tmp/ref && "
                        "/tmp/ref/bin/pip install torch==2.13.0 higher")
    p.add_argument("--reference-script", default=str(DEFAULT_REFERENCE), help="seed_reference.py")
    p.add_argument("--reference-tasks", type=int, default=12, help="timed tasks per reference run (after 1 warm-up)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; every rate is the median over them")
    p.add_argument("--engine-batch", default="8", help="engine task batches, comma-separated")
    p.add_argument("--naive-batch", default="1,8", help="naive-loop task batches, comma-separated")
    p.add_argument("--steps", type=int, default=5, help="timed meta-steps per meta_step.py run (after 1 warm-up)")
    p.add_argument("--upsample", choices=("bilinear", "nearest_1x1"), default="bilinear",
                   help="the engine's and the naive loop's U-Net decoder: bilinear (hvi's default, 118,273 "
                        "weights) or nearest_1x1 (the reference's own network, 109,361 weights)")
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per process")
    p.add_argument("--out", default=None, help="JSON file to write (docs/results/reference_speed.json)")
    p.add_argument("--_reference-worker", dest="reference_worker", help=argparse.SUPPRESS)
    p.add_argument("--_matmul-worker", dest="matmul_worker", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.reference_worker:
        w = json.loads(args.reference_worker)
        print(json.dumps(reference_worker(w["script"], w["argv"], w["count_flops"])))
        return 0
    if args.matmul_worker:
        print(json.dumps(matmul_worker(args.matmul_worker)))
        return 0
    if not Path(args.reference_python).exists():
        sys.exit(f"no {args.reference_python}: make it with python3 -m venv /tmp/ref && "
                 "/tmp/ref/bin/pip install torch==2.13.0 higher (or pass --reference-python)")
    engine_b = [int(b) for b in args.engine_batch.split(",")]
    naive_b = [int(b) for b in args.naive_batch.split(",")]
    configs: list[tuple[str, Any]] = [
        ("reference_2nd", lambda fl: run_reference(args.reference_python, args.reference_script, args.reference_tasks,
                                                    False, fl, args.timeout)),
        ("reference_1st", lambda fl: run_reference(args.reference_python, args.reference_script, args.reference_tasks,
                                                    True, fl, args.timeout)),
    ]
    for b in engine_b:
        for fo in (False, True):
            configs.append((f"engine_{'1st' if fo else '2nd'}_B{b}",
                            lambda fl, b=b, fo=fo: run_meta_step("engine", b, fo, args.steps, 1, fl, args.timeout,
                                                                 args.upsample)))
    for b in naive_b:
        # The naive loop costs B tasks a step; fewer steps at large B keep a round short.
        steps = max(2, args.steps if b == 1 else args.steps // 2 + 1)
        configs.append((f"naive_2nd_B{b}", lambda fl, b=b, s=steps: run_meta_step("naive", b, False, s, 1, fl,
                                                                                  args.timeout, args.upsample)))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in configs}
    matmuls: list[dict[str, Any]] = []
    flops: dict[str, float] = {}
    for name, fn in configs[:2]:  # the reference's FLOPs: one counted run of 1 + 1 tasks
        flops[name] = run_reference(args.reference_python, args.reference_script, 1, name.endswith("1st"), True,
                                    args.timeout)["gflop_per_task"]
    for rnd in range(args.rounds):
        for name, fn in configs:
            count = rnd == 0 and not name.startswith("reference")
            row = fn(count)
            if count:
                flops[name] = row["gflop_per_task"]
            runs[name].append(row)
            print(f"round {rnd}: {name}: {row['tasks_per_s']:.3f} tasks/s, {row['tasks_per_cpu_s']:.3f} tasks/CPU-s "
                  f"(others {row.get('others_cpu_share')}, load {row.get('loadavg_1m')})", flush=True)
        matmuls.append(_json_line([sys.executable, str(Path(__file__).resolve()), "--_matmul-worker",
                                   str(args.matmul_size)], args.timeout))
        print(f"round {rnd}: matmul {matmuls[-1]['gflop_per_s']} GFLOP/s, {matmuls[-1]['gflop_per_cpu_s']} GFLOP/CPU-s",
              flush=True)
    summary = {}
    for name, rows in runs.items():
        s = rates(rows)
        s["gflop_per_task"] = flops[name]
        s["gflop_per_s"] = round(s["tasks_per_s"] * flops[name], 2)
        s["gflop_per_cpu_s"] = round(s["tasks_per_cpu_s"] * flops[name], 2)
        s["tasks_per_s"], s["tasks_per_cpu_s"] = round(s["tasks_per_s"], 4), round(s["tasks_per_cpu_s"], 4)
        s["tasks_per_cpu_s_runs"] = [r["tasks_per_cpu_s"] for r in rows]
        s["tasks_per_s_runs"] = [r["tasks_per_s"] for r in rows]
        s["others_cpu_share_runs"] = [r.get("others_cpu_share") for r in rows]
        s["weights"] = rows[0].get("weights")
        summary[name] = s
    matmul = {k: statistics.median(m[k] for m in matmuls) for k in ("gflop_per_s", "gflop_per_cpu_s")}
    result = {
        "config": {**SHAPE, "upsample": args.upsample, "threads": 1, "rounds": args.rounds, "engine_batches": engine_b, "naive_batches": naive_b,
                   "update": "gradient", "meta_step_steps": args.steps, "reference_tasks": args.reference_tasks},
        "basis": "tasks_per_cpu_s",
        "criteria": judge(summary, matmul, "tasks_per_cpu_s"),
        "criteria_wall": judge(summary, matmul, "tasks_per_s"),
        "criteria_per_round": {},
        "summary": summary,
        "matmul": {**matmul, "n": args.matmul_size, "runs": matmuls},
        "machine": {"cpus": os.cpu_count()},
        "runs": runs,
    }
    result["criteria_per_round"] = per_round(result["criteria"], runs, matmuls, flops)
    for k, c in result["criteria"].items():
        w, r = result["criteria_wall"][k], result["criteria_per_round"][k]
        print(f"{k}: {c['ratio']:.2f} (CPU time; per round {r['ratios']}; wall {w['ratio']:.2f}), "
              f"needs {c['threshold']}: {'met' if c['met'] else 'NOT met'}")
    if args.out:
        sys.path.insert(0, str(HERE))
        from provenance import write_result

        write_result(args.out, "benchmarks/reference_speed.py", argv, result)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
