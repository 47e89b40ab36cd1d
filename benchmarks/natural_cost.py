"""Cost of one second-order meta-step: gradient inner update against the natural one, alternating rounds.

Runs ``benchmarks/meta_step.py --impl engine`` (one fresh process per
configuration and round) for the gradient update, the natural update with the
curvature measured every step, the natural update with
``InnerConfig(curvature_every=n)``, and the natural update with the one-sided
curvature estimate (``InnerConfig(curvature="one_sided")``: one network
evaluation per sample instead of an antithetic pair's two); keeps every run's
JSON line and the medians per configuration::

    python benchmarks/natural_cost.py --out docs/results/meta_step_updates.json

CPU seconds per step (``cpu_s``) are reported beside wall seconds: on a shared
machine they move far less than wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from provenance import write_result

HERE = Path(__file__).resolve().parent


def run(extra: list[str], common: list[str]) -> list[dict]:
    cmd = [sys.executable, str(HERE / "meta_step.py"), "--impl", "engine", "--json", *common, *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    lines = []
    for line in out.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--every", type=int, default=5, help="curvature_every of the third configuration (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--steps", type=int, default=4, help="timed meta-steps per run (default 4)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--natural-lr", type=float, default=None,
                   help="inner α of the natural configurations (default: meta_step.py's, 0.1)")
    p.add_argument("--out", default="docs/results/meta_step_updates.json", help="JSON file to write")
    args = p.parse_args(argv)
    load_start = os.getloadavg()[0]
    common = ["--steps", str(args.steps), "--warmup", "1", "--threads", str(args.threads)]
    configs = {
        "gradient": ["--update", "gradient"],
        "natural": ["--update", "natural"],
        f"natural, curvature_every={args.every}": ["--update", "natural", "--curvature-every", str(args.every)],
        "natural, one_sided": ["--update", "natural", "--curvature", "one_sided"],
    }
    if args.natural_lr is not None:
        configs = {k: v + (["--inner-lr", str(args.natural_lr)] if "natural" in v else []) for k, v in configs.items()}
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    matmul = []
    for _ in range(args.rounds):
        for name, extra in configs.items():
            lines = run(extra + ["--no-matmul"], common)
            runs[name] += [d for d in lines if d.get("impl") == "engine"]
            print(name, runs[name][-1]["step_s_median"], runs[name][-1]["cpu_s_median"], flush=True)
        matmul += [d for d in run(["--update", "gradient", "--steps", "1", "--warmup", "0", "--no-flops"], common)
                   if d.get("impl") == "matmul"]
    summary = {}
    base = None
    for name, rs in runs.items():
        step = statistics.median(d["step_s_median"] for d in rs)
        cpu = statistics.median(d["cpu_s_median"] for d in rs)
        if base is None:
            base = (step, cpu)
        last = rs[-1]
        summary[name] = {
            "update": last["update"], "curvature_every": last.get("curvature_every", 1),
            "curvature": last.get("curvature", "pair"), "inner_lr": last.get("inner_lr"),
            # A diverging inner loop (loss not finite) makes a step's cost meaningless.
            "loss_finite": all(d.get("loss_finite", True) for d in rs),
            "step_s_median": round(step, 4), "cpu_s_median": round(cpu, 4),
            "step_ratio_to_gradient": round(step / base[0], 3), "cpu_ratio_to_gradient": round(cpu / base[1], 3),
            "gflop_per_task": last["gflop_per_task"], "peak_rss_mb": statistics.median(d["peak_rss_mb"] for d in rs),
            "tasks_per_s": round(last["task_batch"] / step, 3),
        }
    write_result(args.out, "benchmarks/natural_cost.py", argv, {
        "config": vars(args),
        "loadavg_1m_start": load_start,
        "loadavg_1m_end": os.getloadavg()[0],
        "summary": summary,
        "matmul_gflop_per_s_median": statistics.median(d["gflop_per_s"] for d in matmul) if matmul else None,
        "results": [d for rs in runs.values() for d in rs] + matmul,
    })
    for name, s in summary.items():
        print(f"{name}: {s['step_s_median']:.3f} s/step ({s['step_ratio_to_gradient']:.2f}×), "
              f"{s['cpu_s_median']:.3f} CPU s ({s['cpu_ratio_to_gradient']:.2f}×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
