"""``hvi diagnose``: an ArviZ InferenceData of a run on held-out tasks, the VI checks and their plots.

Everything is computed before anything is written; the netCDF file and the
PNGs are written to temporary names and renamed into place at the end, so an
error leaves no partial output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hvi.cli.config import check_flag
from hvi.cli.evaluate import load_run, run_source
from hvi.cli.run import eval_chunk_size
from hvi.run_dir import read_metrics

__all__ = ["Diagnosis", "diagnose_run", "format_report", "read_elbo_trace", "read_metrics_trace", "run_source"]

#: Default predictive draws per task (fewer than evaluate's 100 would make coverage noisy).
DEFAULT_SAMPLES = 100
#: Draws per task for Pareto k̂ (the tail fit uses the largest min(S/5, 3√S): 52 of 300).
#: A few hundred suffice; the time grows in proportion (benchmarks/diagnose_speed.py).
K_SAMPLES = 300
#: Nominal levels of the central predictive intervals.
LEVELS = (0.5, 0.8, 0.9, 0.95)


@dataclasses.dataclass
class Diagnosis:
    run: str
    data: str
    split: str
    num_tasks: int
    inner_steps: int
    num_samples: int
    k_samples: int
    classification: bool
    pareto: Any
    lppd: float = math.nan
    lppd_se: float = math.nan
    num_points: int = 0
    coverage: Any = None
    pit_ks: float | None = None
    reliability: Any = None
    elbo_steps: int = 0
    elbo_last: float | None = None
    out: Path | None = None
    plots: list[Path] = dataclasses.field(default_factory=list)
    #: Wall-clock seconds per phase: load, idata, pareto_k, checks, figures, write.
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def read_metrics_trace(run_dir: Path) -> dict[str, np.ndarray] | None:
    """The ELBO per step and its parts from ``metrics.jsonl``, or None without one.

    Keys ``elbo`` and, when the run recorded them (runs since the parts were
    added), ``ell``, ``local_kl``, ``global_kl``; NaN for a skipped or missing step.
    """
    from hvi.elbo_parts import PARTS

    rows = read_metrics(run_dir)
    if not rows:
        return None
    # Parts only where recorded (runs before them, or a method without an ELBO, have none).
    keys = ["elbo"] + [k for k in PARTS if any(r.get(k) is not None for r in rows.values())]
    out = {k: np.full(max(rows), np.nan) for k in keys}
    for step, row in rows.items():
        for k in keys:
            v = row.get(k)
            if step >= 1 and v is not None:
                out[k][step - 1] = float(v)
    return out


def read_elbo_trace(run_dir: Path) -> np.ndarray | None:
    """The ELBO per step from ``metrics.jsonl`` (NaN for a skipped or missing step), or None without one."""
    trace = read_metrics_trace(run_dir)
    return None if trace is None else trace["elbo"]


def _check_out(out: Path) -> None:
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file name such as {out / 'idata.nc'}.")
    if not out.parent.is_dir():
        raise ValueError(f"cannot write {out}: directory {out.parent} does not exist.")


def _check_plots(plots: Path) -> None:
    if plots.exists() and not plots.is_dir():
        raise ValueError(f"--plots {plots} exists and is not a directory.")
    if not plots.exists() and not plots.parent.is_dir():
        raise ValueError(f"cannot create --plots {plots}: directory {plots.parent} does not exist.")


def diagnose_run(
    run_dir: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    plots: str | os.PathLike | None = None,
    num_samples: int | None = None,
    max_tasks: int | None = None,
    split: str = "test",
    inner_steps: int | None = None,
    seed: int = 0,
    device: str | None = None,
    k_samples: int = K_SAMPLES,
    data: str | None = None,
) -> Diagnosis:
    """Builds the InferenceData of a run on its held-out tasks, runs the VI checks, writes the outputs.

    Writes ``out`` (default ``RUN_DIR/idata.nc``) and, with ``plots``, PNGs
    into that directory: ``ppc.png``, ``loo_pit.png`` (scalar regression
    targets) or ``pit.png`` (other regression targets) or ``reliability.png``
    (classification), ``pareto_k.png`` and ``elbo.png`` (when the run has a
    metrics.jsonl). ``data`` diagnoses on another source or file of the
    run's shapes (:func:`run_source`) instead of the run's data.
    """
    from hvi import diagnostics as dg

    run_path = Path(os.fspath(run_dir)).expanduser().resolve()
    out_path = Path(os.fspath(out)).expanduser() if out is not None else run_path / "idata.nc"
    plots_path = Path(os.fspath(plots)).expanduser() if plots is not None else None
    check_flag("--num-samples", num_samples, 1)
    check_flag("--inner-steps", inner_steps, 0)
    check_flag("--max-tasks", max_tasks, 1)
    if plots_path is not None:
        _check_plots(plots_path)

    clock = [time.perf_counter()]
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        now = time.perf_counter()
        seconds[name] = now - clock[0]
        clock[0] = now

    run = load_run(run_path, device)
    if run.meta.method != "abml":
        raise ValueError(
            f"run {run_path} was trained with method={run.meta.method!r}, whose point predictions have no "
            "posterior to diagnose; score it with 'hvi evaluate'."
        )
    if out is not None:
        _check_out(out_path)
    cfg = run.cfg
    if num_samples is None:
        num_samples = min(int(cfg.get("eval_samples") or DEFAULT_SAMPLES), DEFAULT_SAMPLES)
    if max_tasks is None:
        max_tasks = cfg.get("eval_tasks")
    cfg, source = run_source(run, data)
    n = source.num_tasks(split)
    if n == 0:
        raise ValueError(f"data {cfg['data']!r} has no {split} tasks; choose another --split.")
    if max_tasks is not None:
        n = min(n, int(max_tasks))
    meta = run.meta
    steps = cfg["inner_steps"] if inner_steps is None else inner_steps
    batch = source.get_tasks(split, torch.arange(n)).to(run.device)
    if batch.query_x.shape[1] == 0:
        raise ValueError(f"the {split} tasks of {cfg['data']!r} have no query points to check predictions on.")
    trace = read_metrics_trace(run_path)
    elbo = None if trace is None else trace["elbo"]
    chunk = eval_chunk_size(meta, num_samples, query_x=batch.query_x[0])
    lap("load")

    idata = dg.to_inference_data(
        meta, batch, num_samples=num_samples, inner_steps=steps, seed=seed, elbo_trace=trace, chunk_tasks=chunk
    )
    idata.posterior.attrs["run"] = str(run_path)
    lap("idata")
    k = dg.pareto_k(
        meta, batch, num_samples=k_samples, inner_steps=steps, seed=seed,
        chunk_tasks=eval_chunk_size(meta, k_samples, query_x=batch.query_x[0]),
    )
    lap("pareto_k")
    classify = meta.likelihood.is_classification
    lppd, lppd_se, _ = dg.heldout_lppd(idata)
    res = Diagnosis(
        run=str(run_path), data=str(cfg["data"]), split=split, num_tasks=n, inner_steps=steps,
        num_samples=num_samples, k_samples=k_samples, classification=classify, pareto=k,
        lppd=lppd, lppd_se=lppd_se, num_points=int(batch.query_x.shape[0] * batch.query_x.shape[1]),
    )
    if classify:
        res.reliability = dg.reliability(idata, bins=15)
    else:
        res.coverage = dg.interval_coverage(idata, LEVELS)
        u = dg.pit(idata).ravel()
        u = np.sort(u[np.isfinite(u)])  # observed targets only
        grid = np.arange(1, u.size + 1) / u.size
        res.pit_ks = float(np.max(np.maximum(grid - u, u - (grid - 1 / u.size))))
    if elbo is not None:
        res.elbo_steps = int(elbo.size)
        finite = elbo[np.isfinite(elbo)]
        res.elbo_last = float(finite[-1]) if finite.size else None

    lap("checks")
    figures = _figures(idata, k, res, seed, meta=meta, batch=batch, source=source) if plots_path is not None else {}
    lap("figures")
    res.out, res.plots = _write(idata, out_path, figures, plots_path)
    lap("write")
    res.seconds = seconds
    return res


@contextlib.contextmanager
def _quiet_arviz():
    """Silences arviz's log line about a one-draw posterior ("Shape validation failed"): not MCMC chains here."""
    import arviz

    log = getattr(arviz, "_log", None) or logging.getLogger("arviz")  # arviz's own Logger, not in logging's tree
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


#: Labels of the image grid per data source: the input channel shown, its label, y's name and units.
IMAGE_LABELS = {
    "solar": {"x_channel": 1, "x_label": "input: kt of period p−1 [1]", "y_label": "clear-sky index kt", "units": "1"},
}


def _figures(idata, k, res: Diagnosis, seed: int, *, meta=None, batch=None, source=None) -> dict[str, Any]:
    """Name → matplotlib figure (headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import arviz as az
    import matplotlib.pyplot as plt

    from hvi import diagnostics as dg

    figs: dict[str, Any] = {}

    def new(figsize=(6.4, 4.0)):
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax

    with warnings.catch_warnings(), _quiet_arviz():
        # arviz 0.23's KDE plots call a matplotlib helper deprecated in 3.11 (MatplotlibDeprecationWarning).
        warnings.filterwarnings("ignore", message=".*alias_mapping.*")
        fig, ax = new()
        az.plot_ppc(idata, num_pp_samples=min(50, res.num_samples), random_seed=seed, ax=ax)
        ax.set_title(f"Posterior predictive check: {res.num_tasks} {res.split} tasks' query targets", fontsize=10)
        ax.set_xlabel("y (query target)" if not res.classification else "class")
        ax.set_ylabel("density")
        figs["ppc.png"] = fig
        if res.classification:
            fig, ax = new((5.0, 5.0))
            dg.plot_reliability(res.reliability, ax=ax)
            figs["reliability.png"] = fig
        elif idata.observed_data["y"].dims == ("task", "point"):
            fig, ax = new()
            az.plot_loo_pit(idata, y="y", ax=ax)
            ax.set_title("LOO-PIT of the query targets (uniform if calibrated)", fontsize=10)
            ax.set_xlabel("LOO-PIT")
            ax.set_ylabel("density")
            figs["loo_pit.png"] = fig
        else:
            fig, ax = new()
            dg.plot_pit(idata, ax=ax)
            figs["pit.png"] = fig
    fig, ax = new()
    dg.plot_pareto_k(k, ax=ax)
    figs["pareto_k.png"] = fig
    stats = idata.sample_stats if "sample_stats" in idata.groups() else {}
    panels = [p for p in ("elbo", "inner_elbo") if p in stats]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.2), layout="constrained", squeeze=False)
        for ax, p in zip(axes[0], panels):
            (dg.plot_elbo if p == "elbo" else dg.plot_inner_elbo)(idata, ax=ax)
        figs["elbo.png"] = fig
    if "observed_data" in idata.groups() and idata.observed_data["y"].ndim >= 4:  # image targets
        figs["images.png"] = dg.plot_image_grid(idata, **IMAGE_LABELS.get(res.data, {}))
    shape = getattr(source, "image_shape", None)
    if meta is not None and shape is not None and batch.query_x.shape[1] == shape[0] * shape[1]:
        figs["reconstructions.png"] = dg.plot_reconstructions(
            meta, batch, tuple(shape), inner_steps=res.inner_steps, units="scaled to [−1, 1]"
        )
    if any(v.startswith("phi.") for v in idata.posterior.data_vars):
        with warnings.catch_warnings(), _quiet_arviz():
            warnings.filterwarnings("ignore", message=".*alias_mapping.*")
            axes = dg.plot_group_effects(idata)
        figs["forest.png"] = np.ravel(axes)[0].figure
    return figs


def _write(idata, out: Path, figures: dict[str, Any], plots: Path | None) -> tuple[Path, list[Path]]:
    """Writes everything to temporary names, then renames it into place (nothing left behind on error)."""
    import matplotlib.pyplot as plt

    tmps: list[tuple[Path, Path]] = []
    made_dir = False
    try:
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        tmps.append((Path(tmp), out))
        idata.to_netcdf(tmp)
        if plots is not None and figures:
            if not plots.exists():
                plots.mkdir()
                made_dir = True
            for name, fig in figures.items():
                fd, tmp = tempfile.mkstemp(dir=plots, prefix=f".{name}.", suffix=".tmp")
                os.close(fd)
                tmps.append((Path(tmp), plots / name))
                fig.savefig(tmp, format="png", dpi=110)
    except BaseException:
        for tmp, _ in tmps:
            tmp.unlink(missing_ok=True)
        if made_dir:
            try:
                plots.rmdir()
            except OSError:
                pass
        raise
    finally:
        for fig in figures.values():
            plt.close(fig)
    for tmp, final in tmps:
        os.replace(tmp, final)
    return out, [final for _, final in tmps[1:]]


def format_report(res: Diagnosis) -> str:
    """The short table ``hvi diagnose`` prints."""
    k = res.pareto
    c = k.counts()
    finite = k.k[np.isfinite(k.k)]
    lines = [
        (
            f"{res.num_tasks} {res.split} tasks of {res.data!r}; {res.inner_steps} inner steps, "
            f"{res.num_samples} predictive draws, {res.k_samples} draws for k̂"
        ),
        "",
        (
            f"Pareto k̂ of q(φ_i)   good (< 0.5) {c['good']}   ok (< 0.7) {c['ok']}   bad {c['bad']}"
            + (f"   max {finite.max():.2f}" if finite.size else "")
            + (f"   exact (k̂ = -inf) {int(np.isneginf(k.k).sum())}" if np.isneginf(k.k).any() else "")
        ),
    ]
    bad = k.bad_tasks
    if bad:
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        lines.append(f"  bad tasks: {', '.join(map(str, bad[:10]))}{more}")
    lines.append(
        f"held-out lppd        {res.lppd:.1f} ± {res.lppd_se:.1f} over {res.num_points} query points "
        f"({res.lppd / max(res.num_points, 1):.3f} per point)"
    )
    if res.coverage is not None:
        cov = "   ".join(f"{round(lv * 100)}% {v:.3f}" for lv, v in zip(res.coverage.levels, res.coverage.observed))
        lines.append(f"interval coverage    {cov}")
        lines.append(f"PIT                  KS distance from uniform {res.pit_ks:.3f}")
    if res.reliability is not None:
        lines.append(f"calibration          ECE {res.reliability.ece:.4f} (15 bins, pooled)")
    if res.elbo_steps:
        last = "n/a" if res.elbo_last is None or not math.isfinite(res.elbo_last) else f"{res.elbo_last:.4g}"
        lines.append(f"ELBO trace           {res.elbo_steps} steps (last {last})")
    else:
        lines.append("ELBO trace           none (no metrics.jsonl)")
    lines.append("")
    lines.append(f"wrote {res.out}")
    for p in res.plots:
        lines.append(f"wrote {p}")
    return "\n".join(lines)
