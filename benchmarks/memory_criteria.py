"""Issue #16's two memory criteria, each configuration a fresh ``meta_step.py`` worker process.

* checkpointed inner steps: peak RSS at 20 inner steps against 2, on the
  64×64, base-32 U-Net at task batch 1 (second order, ``--memory-mode checkpoint``;
  the unchecked loop beside it);
* implicit meta-gradients: the same, ``--memory-mode implicit``;
* the same checkpoint criterion under the natural update (``natural checkpoint steps``);
* task chunks: peak RSS at task batch 16 against 1, second order, 32×32 base 16,
  in chunks of 1 task (``--chunk 1``; the unchunked batch beside it).

::

    python benchmarks/memory_criteria.py --out docs/results/memory_criteria.json
    python benchmarks/memory_criteria.py --only "implicit steps" --out docs/results/memory_criteria_implicit.json
    python benchmarks/memory_criteria.py --only "natural checkpoint steps" --out docs/results/memory_criteria_natural.json

``--only`` runs the named criteria alone (into a file of their own: each file
holds one run of its command).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from provenance import write_result

HERE = Path(__file__).resolve().parent

# The U-Net at 64×64 on random data: at the benchmark's default inner lr (1e-5) the
# gradient steps diverge by K = 20, the guide raises, and SVI skips the step, backward
# pass included, so the peak would miss the backward. 2e-6 stays finite through K = 20.
STEPS = ["--size", "64", "--base", "32", "--task-batch", "1", "--inner-steps", "2,20", "--inner-lr", "2e-6"]

# The natural update (the library's default), at a step fraction that stays finite through K = 20.
NATURAL = [*STEPS[:-2], "--update", "natural", "--inner-lr", "0.01"]

RUNS = (
    ("checkpoint steps", [*STEPS, "--memory-mode", "checkpoint"]),
    ("natural checkpoint steps", [*NATURAL, "--memory-mode", "checkpoint"]),
    ("checkpoint steps", STEPS),
    ("implicit steps", [*STEPS, "--memory-mode", "implicit"]),
    ("task chunks", ["--task-batch", "1,16", "--inner-steps", "5", "--chunk", "1"]),
    ("task chunks", ["--task-batch", "1,16", "--inner-steps", "5"]),
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/results/memory_criteria.json")
    p.add_argument("--steps", type=int, default=2, help="timed meta-steps per configuration")
    p.add_argument("--only", action="append", choices=sorted({label for label, _ in RUNS}),
                   help="run only this criterion (repeatable; default: all)")
    args = p.parse_args(argv)
    rows = []
    for label, extra in RUNS:
        if args.only and label not in args.only:
            continue
        cmd = [sys.executable, str(HERE / "meta_step.py"), "--impl", "engine", "--steps", str(args.steps),
               "--warmup", "1", "--json", *extra]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        for r in map(json.loads, out.splitlines()):
            if r.get("impl") == "engine":
                rows.append({"criterion": label, **r})
                print(f"{label:16s} mode={r['memory_mode']:10s} chunk={r.get('chunk')} B={r['task_batch']:2d} "
                      f"K={r['inner_steps']:2d} size={r['size']} base={r['base']}  peak {r['peak_rss_mb']:.0f} MB")
    finite = all(r["loss_finite"] for r in rows)
    print("every step finite (a skipped step has no backward pass):", finite)
    write_result(args.out, "benchmarks/memory_criteria.py", [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)],
                 rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
