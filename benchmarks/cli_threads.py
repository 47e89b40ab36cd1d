"""``hvi fit`` at 1 and 2 threads (the CLI's ``--threads``): wall and CPU seconds, alternating rounds.

``--threads N`` runs N task workers, each adapting a chunk of the task batch
with single-threaded kernels, and keeps torch's intra-op threads at one
(``hvi.parallel.set_task_workers``, ``cli/process.py``). Each run is a fresh
process; the script records its wall time, the training time ``hvi fit``
prints, its CPU seconds (user + sys, from ``getrusage`` of the child: a busy
machine distorts them far less than wall time) and the 1-minute load average
before and after. A thread count with an ``i`` (``2i``) runs the meaning
``--threads`` had before: N intra-op threads for torch and one task worker per
intra-op thread, the main thread's kernels on N threads too. The default
(bayes_unet, 100 steps, 2 rounds) takes about 2 minutes on a quiet 2-core
machine::

    python benchmarks/cli_threads.py --out docs/results/cli_threads.json
    python benchmarks/cli_threads.py --model mlp --steps 300 --out docs/results/cli_threads_mlp.json
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import write_result

_TRAINED = re.compile(r"trained \d+ steps .*? in ([0-9.]+)s")

# ``hvi fit`` with the earlier meaning of --threads N: N intra-op threads, as many task workers.
_INTRA_OP = """import sys, torch, hvi.cli.run as run, hvi.parallel as par
configure = run.configure_process
def intra_op(cfg, device):
    configure(cfg, device)
    torch.set_num_threads(cfg["threads"])
    par.set_task_workers(None)
run.configure_process = intra_op
from hvi.cli.main import cli
cli(sys.argv[1:], prog_name="hvi")
"""


def run_fit(model: str, steps: int, threads: str, extra: list[str]) -> dict[str, float | None]:
    """One ``hvi fit`` in a fresh process: wall, training and CPU seconds, and the load around it.

    ``threads``: ``"N"`` for ``--threads N``, ``"Ni"`` for N intra-op threads (the earlier meaning).
    """
    prog = ["-c", _INTRA_OP] if threads.endswith("i") else ["-m", "hvi.cli.main"]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, *prog, "fit", "--model", model, "--steps", str(steps),
               "--threads", threads.rstrip("i"), "--no-progress", "--out", str(Path(tmp) / "run"), *extra]
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"hvi fit failed ({' '.join(cmd[1:])}):\n{done.stderr[-2000:]}")
    trained = _TRAINED.search(done.stdout)
    return {
        "wall_s": wall,
        "train_s": float(trained.group(1)) if trained else None,
        "user_s": after.ru_utime - before.ru_utime,
        "sys_s": after.ru_stime - before.ru_stime,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "load_1min_start": load,
        "load_1min_end": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bayes_unet", help="zoo model (default bayes_unet)")
    p.add_argument("--steps", type=int, default=100, help="fit steps per run (default 100)")
    p.add_argument("--threads", default="1,2",
                   help="comma-separated thread counts, 'Ni' for N intra-op threads (the earlier meaning) (default 1,2)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    p.add_argument("--fit-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for hvi fit, repeatable (e.g. --fit-arg=--task-batch --fit-arg=8)")
    p.add_argument("--out", default="docs/results/cli_threads.json", help="JSON file to write")
    args = p.parse_args(argv)
    threads = [t.strip() for t in args.threads.split(",")]
    for t in threads:
        if not re.fullmatch(r"[1-9][0-9]*i?", t):
            p.error(f"--threads {args.threads!r}: each entry must be a positive integer, optionally with 'i' (e.g. 1,2,2i)")
    runs: dict[str, list[dict[str, float | None]]] = {t: [] for t in threads}
    for _ in range(args.rounds):
        for t in threads:
            r = run_fit(args.model, args.steps, t, args.fit_arg)
            runs[t].append(r)
            print(f"threads={t}: wall {r['wall_s']:.1f} s, train {r['train_s']} s, CPU {r['cpu_s']:.1f} s "
                  f"(load {r['load_1min_start']:.1f} -> {r['load_1min_end']:.1f})", flush=True)

    def median(t: str, key: str) -> float | None:
        vals = [r[key] for r in runs[t] if r[key] is not None]
        return statistics.median(vals) if vals else None

    write_result(args.out, "benchmarks/cli_threads.py", argv, {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "median": {t: {k: median(t, k) for k in ("wall_s", "train_s", "cpu_s", "load_1min_start")} for t in threads},
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
