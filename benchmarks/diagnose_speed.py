"""How long ``hvi diagnose`` takes on the default ``bayes_unet`` run, and where the time goes.

Trains the default run (``hvi fit --model bayes_unet``) unless ``--run`` names
one, then times the whole command ``hvi diagnose RUN --out ... --plots ...``
(a fresh process: imports, loading, every computation, the netCDF file and the
PNGs) ``--repeats`` times, and once more in-process for the seconds of each
phase (``Diagnosis.seconds``: load, idata, pareto_k, checks, figures, write).
``--k-samples 1000`` also times the command at the earlier default of 1000 k̂
draws. The machine's load average is recorded before and after: on a shared
machine the wall time grows with it. Writes::

    python benchmarks/diagnose_speed.py --out docs/results/diagnose_speed.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import write_result


def _time_cli(hvi: list[str], run: Path, tmp: Path, extra: list[str]) -> tuple[float, str]:
    out, plots = tmp / "idata.nc", tmp / "plots"
    t0 = time.perf_counter()
    res = subprocess.run([*hvi, "diagnose", str(run), "--out", str(out), "--plots", str(plots), *extra],
                         capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"hvi diagnose failed: {res.stderr.strip()}")
    seconds = time.perf_counter() - t0
    out.unlink()
    for p in plots.iterdir():
        p.unlink()
    plots.rmdir()
    return seconds, res.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/results/diagnose_speed.json", help="JSON file to write")
    p.add_argument("--run", help="an existing bayes_unet run directory (default: train the default run)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of the command (default 2)")
    p.add_argument("--k-samples", type=int, nargs="*", default=[], help="also time these --k-samples values")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    hvi = [sys.executable, "-m", "hvi.cli.main"]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        fit_seconds = None
        if args.run is None:
            run = tmp / "run"
            t0 = time.perf_counter()
            subprocess.run([*hvi, "fit", "--model", "bayes_unet", "--out", str(run), "--no-progress"], check=True)
            fit_seconds = round(time.perf_counter() - t0, 1)
        else:
            run = Path(args.run).resolve()
        walls, report = [], ""
        for _ in range(args.repeats):
            seconds, report = _time_cli(hvi, run, tmp, [])
            walls.append(round(seconds, 1))
        other = {}
        for k in args.k_samples:
            other[str(k)] = round(_time_cli(hvi, run, tmp, ["--k-samples", str(k)])[0], 1)

        import torch

        from hvi.cli.diagnose import diagnose_run

        res = diagnose_run(run, out=tmp / "idata.nc", plots=tmp / "plots")
        phases = {k: round(v, 2) for k, v in res.seconds.items()}
        plots = sorted(p.name for p in res.plots)
        size_mb = round((tmp / "idata.nc").stat().st_size / 1e6, 1)
    write_result(args.out, "benchmarks/diagnose_speed.py", argv, {
        "model": "bayes_unet",
        "trained_here": args.run is None,
        "fit_seconds": fit_seconds,
        "tasks": res.num_tasks,
        "inner_steps": res.inner_steps,
        "predictive_draws": res.num_samples,
        "k_samples": res.k_samples,
        "wall_seconds": walls,
        "wall_seconds_by_k_samples": other,
        "phase_seconds": phases,
        "plots": plots,
        "idata_mb": size_mb,
        "report": report.splitlines()[:8],
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    })
    print(f"hvi diagnose: {walls} s wall; phases {phases}; by k-samples {other}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
