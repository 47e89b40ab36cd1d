"""What a new user sees first, measured: ``hvi`` bare, ``hvi --help`` and ``hvi models --brief``.

Runs each command through the installed ``hvi`` entry point (or ``python -m
hvi.cli.main`` if it is not on PATH), keeps its output and the median wall time
of ``--repeat`` runs, and writes them to a JSON file::

    python benchmarks/cli_startup.py --out docs/results/cli_startup.json
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

from provenance import write_result

COMMANDS = (["hvi"], ["hvi", "--help"], ["hvi", "models", "--brief"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/results/cli_startup.json")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    exe = shutil.which("hvi")
    rows = []
    for cmd in COMMANDS:
        argv_ = ([exe] if exe else [sys.executable, "-m", "hvi.cli.main"]) + cmd[1:]
        times, out = [], None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            res = subprocess.run(argv_, capture_output=True, text=True, check=True)
            times.append(time.perf_counter() - t0)
            out = res.stdout
        rows.append({"command": " ".join(cmd), "seconds_median": round(statistics.median(times), 3), "stdout": out})
        print(f"{' '.join(cmd):22s} {statistics.median(times):.2f} s")
    write_result(args.out, "benchmarks/cli_startup.py", argv, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
