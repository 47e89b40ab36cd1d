"""Peak memory and time of a second-order meta-step by inner-loop memory mode, as inner steps grow.

Runs ``benchmarks/meta_step.py --impl engine`` (the U-Net meta-step, 8 tasks,
5-shot) at K = 5 and 10 inner steps with ``--memory-mode none`` (every step's
graph kept for the backward) and ``checkpoint`` (each step recomputed in the
backward pass), and ``none`` with the 8 tasks in chunks of 2 (``--chunk 2``,
one backward pass per chunk), one worker process per configuration, and
writes the rows::

    python benchmarks/memory_modes.py --out docs/results/memory_modes.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from provenance import write_result

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/results/memory_modes.json")
    p.add_argument("--inner-steps", default="5,10")
    p.add_argument("--steps", type=int, default=3, help="timed meta-steps per configuration")
    p.add_argument("--update", choices=("gradient", "natural"), default="gradient")
    args = p.parse_args(argv)
    rows = []
    for mode, chunk in (("none", None), ("checkpoint", None), ("none", 2)):
        cmd = [sys.executable, str(HERE / "meta_step.py"), "--impl", "engine", "--inner-steps", args.inner_steps,
               "--task-batch", "8", "--steps", str(args.steps), "--warmup", "1", "--memory-mode", mode,
               "--update", args.update, "--json"] + ([] if chunk is None else ["--chunk", str(chunk)])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows += [r for r in map(json.loads, out.splitlines()) if r.get("impl") == "engine"]
    write_result(args.out, "benchmarks/memory_modes.py", argv, rows)
    for r in rows:
        print(f"{r['memory_mode']:10s} chunk={r.get('chunk')} K={r['inner_steps']:2d}  peak {r['peak_rss_mb']:7.1f} MB "
              f"(+{r['peak_rss_delta_mb']:.1f} over setup)  step {r['step_s_median']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
