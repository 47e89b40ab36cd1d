"""The README's main job, measured: ``hvi fit --model bayes_unet`` with its defaults, then ``hvi evaluate``.

Writes the evaluation (adapted posterior and every baseline, mean and 95% CI
over the held-out tasks), the training wall time, the command and the date to
a JSON file; ``--model`` measures another zoo model's defaults the same way::

    python benchmarks/solar_default.py --out docs/results/solar.json
    python benchmarks/solar_default.py --model siren --out docs/results/zoo_siren.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import write_result

from hvi.run_dir import read_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/results/solar.json", help="JSON file to write")
    p.add_argument("--model", default="bayes_unet", help="zoo model whose 'hvi fit' defaults to measure")
    p.add_argument("fit_args", nargs="*", help="extra 'hvi fit' options, e.g. -- --steps 600")
    args = p.parse_args(argv)
    hvi = [sys.executable, "-m", "hvi.cli.main"]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        t0 = time.perf_counter()
        subprocess.run([*hvi, "fit", "--model", args.model, "--out", str(run), "--no-progress", *args.fit_args], check=True)
        seconds = time.perf_counter() - t0
        ev = subprocess.run([*hvi, "evaluate", str(run), "--json"], check=True, capture_output=True, text=True)
        config = read_config(run)
    write_result(args.out, "benchmarks/solar_default.py", argv, {
        "fit_seconds": round(seconds, 1),
        "config": config,
        "evaluation": json.loads(ev.stdout),
    })
    print(f"fit {seconds:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
