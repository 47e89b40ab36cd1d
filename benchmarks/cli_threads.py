"""``hvi fit`` wall time at 1 and 2 torch threads (the CLI's ``--threads``), alternating rounds.

With more than one thread the engine splits the task batch into one chunk per
thread and adapts the chunks in parallel (``InnerConfig.parallel_tasks``)::

    python benchmarks/cli_threads.py --out docs/results/cli_threads.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import write_result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bayes_unet", help="zoo model (default bayes_unet)")
    p.add_argument("--steps", type=int, default=100, help="fit steps per run (default 100)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    p.add_argument("--out", default="docs/results/cli_threads.json", help="JSON file to write")
    args = p.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    times: dict[int, list[float]] = {t: [] for t in threads}
    loads = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for t in threads:
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, "-m", "hvi.cli.main", "fit", "--model", args.model, "--steps", str(args.steps),
                       "--threads", str(t), "--no-progress", "--out", str(Path(tmp) / "run")]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                times[t].append(time.perf_counter() - t0)
            print(f"threads={t}: {times[t][-1]:.1f} s", flush=True)
    loads.append(os.getloadavg()[0])
    write_result(args.out, "benchmarks/cli_threads.py", argv, {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "cpu_count": os.cpu_count(),
        "load_average_1min": {"start": loads[0], "end": loads[1]},
        "seconds": {str(t): v for t, v in times.items()},
        "median_seconds": {str(t): statistics.median(v) for t, v in times.items()},
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
