"""The README's command-line quickstart, run: ``hvi fit``, ``hvi evaluate``, ``hvi diagnose`` on the solar tasks.

Runs the three commands exactly as the README shows them, in a fresh temporary
folder, and writes what each printed on stdout (the folder's path replaced by
``.``), its wall time, the run's ``evaluation.json``, the command and the date
to a JSON file; the diagnostic plots named by ``--plots`` are copied to
``--figures``::

    python benchmarks/cli_quickstart.py --out docs/results/cli_quickstart.json --figures docs/figures
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import write_result

from hvi.run_dir import EVALUATION_FILE, read_config

#: The README's commands, run from a fresh folder.
COMMANDS = (
    ["fit", "--model", "bayes_unet"],
    ["evaluate", "runs/bayes_unet"],
    ["diagnose", "runs/bayes_unet", "--plots", "runs/bayes_unet/plots"],
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/results/cli_quickstart.json", help="JSON file to write")
    p.add_argument("--figures", default=None, help="copy the diagnose plots named by --plots here as solar_<name>.png")
    p.add_argument("--plots", default="images,pareto_k", help="which plots to copy (comma list of names)")
    args = p.parse_args(argv)
    hvi = [sys.executable, "-m", "hvi.cli.main"]
    steps = []
    with tempfile.TemporaryDirectory() as tmp:
        for cmd in COMMANDS:
            t0 = time.perf_counter()
            res = subprocess.run([*hvi, *cmd], cwd=tmp, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            if res.returncode != 0:
                print(res.stderr, file=sys.stderr)
                print(f"Error: 'hvi {' '.join(cmd)}' exited {res.returncode}; nothing written.", file=sys.stderr)
                return 1
            steps.append({"command": "hvi " + " ".join(cmd), "seconds": round(seconds, 1),
                          "stdout": res.stdout.replace(str(Path(tmp).resolve()), ".").replace(tmp, ".")})
        run = Path(tmp) / "runs" / "bayes_unet"
        evaluation = json.loads((run / EVALUATION_FILE).read_text())
        evaluation.pop("per_task", None)  # each task's values: in the run directory, too long for the docs
        for baseline in evaluation.get("baselines", {}).values():
            baseline.pop("per_task", None)
        config = read_config(run)
        plots = sorted((run / "plots").glob("*.png"))
        if args.figures:
            Path(args.figures).mkdir(parents=True, exist_ok=True)
            for png in plots:
                if png.stem in args.plots.split(","):
                    shutil.copy2(png, Path(args.figures) / f"solar_{png.name}")
    write_result(args.out, "benchmarks/cli_quickstart.py", argv, {
        "steps": steps, "config": config, "evaluation": evaluation, "plots": [p.name for p in plots],
    })
    print(f"wrote {args.out}" + (f" and the plots {args.plots} to {args.figures}" if args.figures else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
