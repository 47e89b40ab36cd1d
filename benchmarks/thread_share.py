"""Where a default ``hvi fit`` step's CPU time goes at ``--threads 1`` and ``--threads N``: main thread vs task workers.

Each configuration runs ``hvi fit`` in a fresh process (in-process CLI call)
at two step counts, with validation and checkpoints pushed past the end; the
differences between the two runs are per-step figures free of start-up and the
final validation. Per step: the process's CPU seconds (user + sys), the main
thread's (``time.thread_time``: Pyro's sites, the query likelihood, the Adam
step, and the wait for the workers), the task workers' (the rest: the chunks'
inner loops, query forwards and their backward passes) and wall seconds. CPU
seconds are the evidence on a busy machine; wall seconds only on a quiet one::

    python benchmarks/thread_share.py --out docs/results/thread_share.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import write_result

_MARK = "thread_share:"


def child(model: str, steps: int, threads: int, extra: list[str]) -> None:
    """Runs one ``hvi fit`` here and prints its CPU and wall seconds as one marked JSON line on stderr."""
    from hvi.cli.main import cli

    with tempfile.TemporaryDirectory() as tmp:
        r0, main0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.thread_time(), time.perf_counter()
        cli(["fit", "--model", model, "--steps", str(steps), "--threads", str(threads), "--no-progress",
             "--val-every", "1000000", "--checkpoint-every", "1000000", "--out", str(Path(tmp) / "run"), *extra],
            prog_name="hvi", standalone_mode=False)
        wall, main = time.perf_counter() - t0, time.thread_time() - main0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(_MARK + json.dumps({"wall_s": wall, "cpu_s": cpu, "main_thread_cpu_s": main}), file=sys.stderr)


def run(model: str, steps: int, threads: int, extra: list[str]) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", "--model", model, "--threads", str(threads), *(f"--fit-arg={a}" for a in extra)]
    load = os.getloadavg()[0]
    done = subprocess.run([*cmd, "--steps", str(steps)], check=True, capture_output=True, text=True)
    line = [x for x in done.stderr.splitlines() if x.startswith(_MARK)][-1]
    return {**json.loads(line[len(_MARK):]), "load_1min_start": load, "load_1min_end": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bayes_unet", help="zoo model (default bayes_unet)")
    p.add_argument("--steps", default="10,40", help="the two step counts whose difference is measured (default 10,40)")
    p.add_argument("--threads", default="1,2", help="comma-separated --threads values (default 1,2)")
    p.add_argument("--fit-arg", action="append", default=[], metavar="ARG", help="extra argument for hvi fit, repeatable")
    p.add_argument("--out", default="docs/results/thread_share.json", help="JSON file to write")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.model, int(args.steps), int(args.threads), args.fit_arg)
        return 0
    lo, hi = (int(s) for s in args.steps.split(","))
    if not 1 <= lo < hi:
        p.error(f"--steps {args.steps!r}: two step counts, the first >= 1 and smaller than the second (e.g. 10,40)")
    results = []
    for t in (int(x) for x in args.threads.split(",")):
        short, long = run(args.model, lo, t, args.fit_arg), run(args.model, hi, t, args.fit_arg)
        n = hi - lo
        per = {k: (long[k] - short[k]) / n for k in ("wall_s", "cpu_s", "main_thread_cpu_s")}
        per["worker_cpu_s"] = per["cpu_s"] - per["main_thread_cpu_s"] if t > 1 else 0.0
        results.append({"threads": t, "per_step": per, "runs": {str(lo): short, str(hi): long}})
        print(f"threads={t}: per step CPU {per['cpu_s']:.3f} s (main thread {per['main_thread_cpu_s']:.3f}, "
              f"workers {per['worker_cpu_s']:.3f}), wall {per['wall_s']:.3f} s", flush=True)
    one = next((r["per_step"] for r in results if r["threads"] == 1), None)
    for r in results:
        per = r["per_step"]
        r["cpu_vs_one_thread"] = per["cpu_s"] / one["cpu_s"] if one else None
        r["worker_share_of_cpu"] = per["worker_cpu_s"] / per["cpu_s"]
    write_result(args.out, "benchmarks/thread_share.py", argv, {
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "child")},
        "cpu_count": os.cpu_count(),
        "results": results,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
