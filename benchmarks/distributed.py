#!/usr/bin/env python3
"""Data-parallel meta-training throughput: ``hvi fit`` on 1 and on N processes (torchrun, gloo, CPU).

Each configuration is one ``python -m torch.distributed.run --standalone
--nproc-per-node P -m hvi.cli.main fit ...`` run (``P = 1`` is a plain single
process: torchrun sets ``WORLD_SIZE=1``) with ``OMP_NUM_THREADS=1`` and
``--threads 1`` per process, on the same global task batch. The reported rate
is the median over steps (after ``--warmup``) of the global tasks/s that rank 0
writes to ``metrics.jsonl``, and the wall time of the whole command
(interpreter start-up and process-group set-up included).

Output: ``docs/results/distributed.json`` (benchmarks/provenance.py), e.g.::

    python benchmarks/distributed.py --procs 1,2 --steps 60 --task-batch 16,64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import write_result  # noqa: E402

from hvi.run_dir import CONFIG_FILE, DISTRIBUTED_KEY, read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run(procs: int, batch: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
            "-m", "hvi.cli.main", "-q", "fit", "--model", args.model, "--steps", str(args.steps),
            "--task-batch", str(batch), "--inner-steps", str(args.inner_steps), "--threads", "1",
            "--val-every", str(args.steps), "--no-progress", "--out", str(out),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"Error: {procs} process(es) failed:\n{proc.stderr[-2000:]}")
        rows = list(read_metrics(out).values())
        cfg = json.loads((out / CONFIG_FILE).read_text())  # as written: with its "distributed" record
    rates = [r["tasks_per_s"] for r in rows[args.warmup:]]
    return {
        "processes": procs,
        "world_size": cfg.get(DISTRIBUTED_KEY, {}).get("world_size", 1),
        "task_batch": batch,
        "task_batch_per_rank": cfg.get(DISTRIBUTED_KEY, {}).get("task_batch_per_rank", [batch]),
        "tasks_per_s_median": statistics.median(rates),
        "steps_timed": len(rates),
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--procs", default="1,2", help="comma-separated process counts (default 1,2)")
    p.add_argument("--model", default="mlp")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the median")
    p.add_argument("--task-batch", default="16", help="comma-separated global task batches (default 16)")
    p.add_argument("--inner-steps", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "docs/results/distributed.json"))
    args = p.parse_args(argv)
    if args.warmup >= args.steps:
        raise SystemExit(f"Error: --warmup {args.warmup} must be below --steps {args.steps}.")
    results = []
    for batch in (int(x) for x in args.task_batch.split(",")):
        rows = []
        for n in (int(x) for x in args.procs.split(",")):
            rows.append(run(n, batch, args))
            rows[-1]["speedup"] = rows[-1]["tasks_per_s_median"] / rows[0]["tasks_per_s_median"]
            print(json.dumps(rows[-1]), flush=True)
        results += rows
    write_result(args.out, "benchmarks/distributed.py", sys.argv[1:] if argv is None else argv, {
        "machine": {"cpus": os.cpu_count(), "loadavg_1m_at_end": os.getloadavg()[0]},
        "backend": "gloo (CPU), one thread per process",
        "results": results,
    })


if __name__ == "__main__":
    main()
