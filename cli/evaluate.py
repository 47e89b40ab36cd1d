"""``hvi evaluate`` and ``hvi predict``: meta-test metrics with baselines, and predictions to netCDF."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import Tensor

from hvi.builders import build_meta, build_source
from hvi.cli.config import check_flag
from hvi.cli.process import configure_process
from hvi.cli.run import eval_chunk_size

__all__ = ["evaluate_run", "format_table", "predict_files", "load_run"]

#: Order of the metrics in the table.
REGRESSION = ("rmse", "mae", "nll", "crps", "coverage_50", "coverage_80", "coverage_90", "coverage_95")
CLASSIFICATION = ("accuracy", "nll", "ece")
#: Deterministic baselines a source may offer as ``source.<name>(batch)``.
POINT_BASELINES = ("persistence", "climatology")


@dataclasses.dataclass
class LoadedRun:
    cfg: dict[str, Any]
    info: dict[str, Any]
    meta: Any
    device: torch.device


def load_run(run_dir: str | os.PathLike, device: str | None = None) -> LoadedRun:
    """Rebuilds a complete run's model (:func:`hvi.load_run`) and installs its final params in the param store."""
    from hvi.runs import load_run as load

    run = load(run_dir, device)
    configure_process(run.config, run.device)
    run.install()  # the store holds exactly the run's params
    return LoadedRun(dict(run.config), dict(run.info), run.meta, run.device)


def run_source(run, data: str | None = None, verb: str = "diagnose"):
    """The task source to ``verb`` ``run`` on: the run's data, or ``data`` (a source name or a file).

    Another source starts from its default data_args (the run's are kept when
    ``data`` is the run's own source or file). The source must give inputs and
    targets of the run's shapes and its kind of likelihood (regression or
    classification); otherwise a one-line ``ValueError`` says so.
    """
    from hvi.settings import is_path

    cfg = dict(run.cfg)
    if data is not None:
        if not str(data).strip():
            raise ValueError("--data is empty; give a registered source (see 'hvi sources') or a .nc/.zarr file.")
        new = str(Path(data).expanduser().resolve()) if is_path(data) else data
        if is_path(data) and not Path(new).exists():
            raise ValueError(f"--data {data}: no such file; give an existing .nc/.zarr file or a registered source.")
        if new != cfg["data"]:
            cfg["data_args"] = {}
        cfg["data"] = new
    source = build_source(cfg)
    for key in ("x_shape", "y_shape"):
        if key in run.info and list(getattr(source, key)) != list(run.info[key]):
            raise ValueError(
                f"data {cfg['data']!r} has {key} {tuple(getattr(source, key))} but the run was trained on "
                f"{tuple(run.info[key])}; {verb} on data of the same shape."
            )
    if "likelihood" in run.info and source.likelihood != run.info["likelihood"]:
        raise ValueError(
            f"data {cfg['data']!r} is {source.likelihood} data but the run was trained on {run.info['likelihood']} data."
        )
    return cfg, source


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    data: str | None = None,
    num_samples: int | None = None,
    inner_steps: int | None = None,
    split: str = "test",
    max_tasks: int | None = None,
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Meta-test metrics of a run with 95% CIs over tasks, and its baselines.

    Baselines: ``prior`` (the same model without adaptation, 0 inner steps),
    ``scratch`` (same network and prior family from a fresh initialisation,
    not meta-learned, adapted per task with the same inner steps) and, when
    the source offers them, ``persistence``/``climatology`` (with a skill score).
    """
    from hvi.metrics import ci_summary, classification_metrics, point_metrics, regression_metrics, skill_score
    from hvi.predict import predict

    check_flag("--num-samples", num_samples, 1)
    check_flag("--inner-steps", inner_steps, 0)
    check_flag("--max-tasks", max_tasks, 2, " (a CI needs two tasks)")
    run = load_run(run_dir, device)
    cfg = dict(run.cfg)
    if num_samples is None:
        num_samples = int(cfg.get("eval_samples") or 100)
    if max_tasks is None:
        max_tasks = cfg.get("eval_tasks")
    cfg, source = run_source(run, data, verb="evaluate")
    n = source.num_tasks(split)
    if max_tasks is not None:
        n = min(n, max_tasks)
    meta = run.meta
    steps = cfg["inner_steps"] if inner_steps is None else inner_steps
    classify = meta.likelihood.is_classification
    query_x = source.get_tasks(split, torch.arange(1)).query_x[0].to(run.device) if n else None
    chunk = eval_chunk_size(meta, num_samples, query_x=query_x)

    # The non-meta-learned baseline: a fresh network's init as θ, in its own param store.
    store = pyro.get_param_store()
    scratch_meta = build_meta(cfg, run.device, seed=cfg["seed"] + 1)
    scratch_state: dict[str, Any] = {"params": {}, "constraints": {}}  # filled at init values on first use

    baselines = [b for b in POINT_BASELINES if callable(getattr(source, b, None)) and not classify]
    per: dict[str, dict[str, list[Tensor]]] = {
        k: {} for k in ("model", "prior", "scratch", *baselines)
    }

    def add(name: str, metrics: Mapping[str, Tensor]) -> None:
        for k, v in metrics.items():
            per[name].setdefault(k, []).append(v.detach())

    def score(pred, y, mask) -> dict[str, Tensor]:
        if classify:
            return classification_metrics(pred, y, mask=mask)
        return regression_metrics(pred, y, mask=mask)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"evaluate ({split})", unit="task", leave=False)
    devices = [run.device.index or 0] if run.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False):
            torch.manual_seed(seed)
            for start in range(0, n, chunk):
                idx = torch.arange(start, min(start + chunk, n))
                batch = source.get_tasks(split, idx).to(run.device)
                y, mask = batch.query_y, batch.query_mask
                add("model", score(predict(meta, batch, inner_steps=steps, num_samples=num_samples), y, mask))
                add("prior", score(predict(meta, batch, inner_steps=0, num_samples=num_samples), y, mask))
                with store.scope(scratch_state):
                    add("scratch", score(predict(scratch_meta, batch, inner_steps=steps, num_samples=num_samples), y, mask))
                for b in baselines:
                    add(b, point_metrics(getattr(source, b)(batch).to(y.dtype), y, mask))
                if bar is not None:
                    bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()

    order = CLASSIFICATION if classify else REGRESSION
    cat = {name: {k: torch.cat(v) for k, v in d.items()} for name, d in per.items()}

    def table(name: str) -> dict[str, dict[str, float]]:
        return {k: ci_summary(cat[name][k]) for k in order if k in cat[name]}

    def per_task(name: str) -> dict[str, dict[str, float]]:
        """Each task's metric values, keyed by its index in the split (as a string: JSON keys)."""
        cols = {k: cat[name][k].detach().double().cpu().tolist() for k in order if k in cat[name]}
        return {str(i): {k: v[i] for k, v in cols.items()} for i in range(n)}

    from hvi import __version__

    out: dict[str, Any] = {
        "run": str(Path(os.fspath(run_dir)).expanduser().resolve()),
        "data": cfg["data"],
        "split": split,
        "num_tasks": n,
        "inner_steps": steps,
        "num_samples": num_samples,
        "seed": seed,
        "hvi_version": __version__,
        "metrics": table("model"),
        "baselines": {
            "prior": {"description": "same model, no adaptation (0 inner steps)", "metrics": table("prior")},
            "scratch": {
                "description": f"fresh network init as prior mean, not meta-learned, {steps} inner steps per task",
                "metrics": table("scratch"),
            },
        },
    }
    for b in baselines:
        out["baselines"][b] = {"description": f"the source's {b} forecast", "metrics": table(b)}
    out["per_task"] = per_task("model")
    for name, entry in out["baselines"].items():
        entry["per_task"] = per_task(name)
    if baselines:
        out["skill"] = {
            b: skill_score(cat["model"]["rmse"], cat[b]["rmse"], seed) for b in baselines
        }
    return out


def _fmt(d: Mapping[str, float] | None) -> str:
    if d is None:
        return "-"
    v, lo, hi = d["value"], d["ci_low"], d["ci_high"]
    if v is None or math.isnan(v):  # no predictive distribution (a point prediction: maml, fomaml, reptile)
        return "n/a"
    if math.isnan(lo):
        return f"{v:.4f}"
    return f"{v:.4f} ± {(hi - lo) / 2:.4f}"


def format_table(res: Mapping[str, Any]) -> str:
    """The human-readable table of :func:`evaluate_run`'s result."""
    cols = ["model", *res["baselines"]]
    heads = {"model": "adapted", "prior": "prior (0 steps)", "scratch": "scratch"}
    rows = [["metric", *[heads.get(c, c) for c in cols]]]
    metrics = list(res["metrics"])
    for m in metrics:
        row = [m, _fmt(res["metrics"].get(m))]
        for c in cols[1:]:
            row.append(_fmt(res["baselines"][c]["metrics"].get(m)))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols) + 1)]
    lines = [
        f"{res['num_tasks']} {res['split']} tasks of {res['data']!r}; {res['inner_steps']} inner steps, "
        f"{res['num_samples']} samples; mean ± 95% CI half-width over tasks",
    ]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for b, s in res.get("skill", {}).items():
        lines.append(
            f"skill vs {b} (1 - RMSE/RMSE_{b}): {s['value']:.3f}  [95% CI {s['ci_low']:.3f}, {s['ci_high']:.3f}]"
        )
    return "\n".join(lines)


def parse_quantiles(text: str | None) -> list[float]:
    """``"0.05,0.5,0.95"`` as a list of probability levels in (0, 1) (empty for None or "")."""
    if not text:
        return []
    out = []
    for item in str(text).split(","):
        try:
            q = float(item)
        except ValueError:
            raise ValueError(f"--quantiles {text!r}: {item.strip()!r} is not a number; pass e.g. 0.05,0.5,0.95.") from None
        if not 0 < q < 1:
            raise ValueError(f"--quantiles {text!r}: {q} is not in (0, 1); pass e.g. 0.05,0.5,0.95.")
        out.append(q)
    return out


def mixture_quantiles(f: Tensor, sigma: Tensor, levels: list[float], iters: int = 60) -> Tensor:
    """Quantiles of the equal-weight mixture of Normal(f[s], sigma) over the draws s (dim 0), by bisection.

    Returns a tensor ``(len(levels), *f.shape[1:])`` (float64; exact to about
    2**-iters of the search interval).
    """
    f = f.double()
    sigma = sigma.double().clamp_min(1e-12).expand_as(f[0])
    lo = (f - 10 * sigma).amin(0)
    hi = (f + 10 * sigma).amax(0)
    normal = torch.distributions.Normal(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64))
    out = []
    for q in levels:
        a, b = lo.clone(), hi.clone()
        for _ in range(iters):
            m = 0.5 * (a + b)
            below = normal.cdf((m - f) / sigma).mean(0) < q
            a, b = torch.where(below, m, a), torch.where(below, b, m)
        out.append(0.5 * (a + b))
    return torch.stack(out)


def predict_files(
    run_dir: str | os.PathLike,
    support: str | os.PathLike,
    query: str | os.PathLike,
    out: str | os.PathLike,
    *,
    inner_steps: int | None = None,
    num_samples: int = 100,
    device: str | None = None,
    seed: int = 0,
    draws: int | None = None,
    quantiles: str | list[float] | None = None,
) -> Path:
    """Adapts to the support file's tasks and writes predictions for the query file (netCDF, atomic).

    The output keeps the query file's ``task`` and ``sample`` coordinates and
    the support file's names and coordinates of y's further dims (no dim is
    added when y has none), with CF-style ``long_name`` and ``units`` (those of
    the input y, where it has them). Regression: ``mean`` and ``std``;
    classification: ``label`` (the most probable class) and ``probs`` (dims
    ``task, sample, class``). ``draws`` adds ``samples``: that many draws of
    y from the posterior predictive (dim ``draw`` first; weight draw
    ``n % num_samples`` plus its observation noise, or a class drawn from its
    probabilities), and ``quantiles`` (regression only) adds ``quantiles``
    with dim ``quantile``: the quantiles of the predictive mixture over the
    weight draws, each Normal with the predictive noise std.
    """
    import xarray as xr

    from hvi import __version__
    from hvi.data.files import clean_attrs, read_support_query, write_dataset
    from hvi.predict import predict

    check_flag("--num-samples", num_samples, 1)
    check_flag("--inner-steps", inner_steps, 0)
    check_flag("--samples", draws, 1)
    levels = parse_quantiles(quantiles) if isinstance(quantiles, (str, type(None))) else parse_quantiles(
        ",".join(map(str, quantiles))
    )
    out_path = Path(os.fspath(out)).expanduser()
    if not out_path.parent.is_dir():
        raise ValueError(f"cannot write {out_path}: directory {out_path.parent} does not exist.")
    run = load_run(run_dir, device)
    classify = run.meta.likelihood.is_classification
    if classify and levels:
        raise ValueError("--quantiles needs a regression run; a classification run writes probs (and --samples).")
    if run.meta.method != "abml" and not classify and (levels or draws):
        raise ValueError(
            f"the run was trained with method={run.meta.method!r}, whose point predictions have no predictive "
            "distribution to draw --samples or --quantiles from; drop them (the file holds the mean)."
        )
    batch, layout = read_support_query(support, query, layout=True)
    xs = list(batch.x_shape)
    if "x_shape" in run.info and xs != list(run.info["x_shape"]):
        raise ValueError(
            f"{support} has x examples of shape {tuple(xs)} but the run was trained on {tuple(run.info['x_shape'])}."
        )
    if classify != (not batch.support_y.is_floating_point()):
        kind = "class labels" if classify else "float targets"
        raise ValueError(f"the run was trained on {kind} but {support} holds the other kind of y.")
    # The query targets are not used by prediction (and may be absent: NaN / -1 fill).
    batch = dataclasses.replace(batch, query_y=torch.zeros_like(batch.query_y)).to(run.device)
    steps = run.cfg["inner_steps"] if inner_steps is None else inner_steps
    chunk = eval_chunk_size(run.meta, num_samples, query_x=batch.query_x[0])
    parts: dict[str, list[Tensor]] = {"mean": [], "std": [], "probs": [], "samples": [], "quantiles": []}
    devices = [run.device.index or 0] if run.device.type == "cuda" else []
    gen = torch.Generator().manual_seed(seed + 1)  # the draws' own stream: mean/std do not depend on --samples
    with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False):
        torch.manual_seed(seed)
        for start in range(0, batch.batch_size, chunk):
            sub = _slice(batch, start, start + chunk)
            p = predict(run.meta, sub, inner_steps=steps, num_samples=num_samples)
            parts["mean"].append(p.mean.cpu())
            for name in ("std", "probs"):
                if getattr(p, name) is not None:
                    parts[name].append(getattr(p, name).cpu())
            f = p.samples.cpu()
            if draws:
                fd = f[torch.arange(draws) % f.shape[0]]
                if classify:
                    pr = torch.softmax(fd, -1)
                    idx = torch.multinomial(pr.reshape(-1, pr.shape[-1]), 1, generator=gen)
                    parts["samples"].append(idx.reshape(pr.shape[:-1]))
                else:
                    noise = torch.randn(fd.shape, generator=gen, dtype=fd.dtype)
                    parts["samples"].append(fd + p.noise_std.cpu() * noise)
            if levels:
                parts["quantiles"].append(mixture_quantiles(f, p.noise_std.cpu(), levels).float())
    cat = {k: torch.cat(v, dim=1 if k in ("samples", "quantiles") else 0).numpy() for k, v in parts.items() if v}
    y_dims = tuple(layout["y_dims"])
    squeeze = not classify and not y_dims  # y had no dims beyond (task, sample): drop the added one
    yd = ("task", "sample", *y_dims)
    y_attrs = layout["y_attrs"]
    what = str(y_attrs.get("long_name") or "y")
    units = {"units": str(y_attrs["units"])} if "units" in y_attrs else {}

    def shaped(a):
        return a[..., 0] if squeeze else a

    data: dict[str, Any] = {}
    if classify:
        data["label"] = (("task", "sample"), cat["mean"].astype("int64"), {"long_name": f"most probable class of {what}"})
        data["probs"] = (("task", "sample", "class"), cat["probs"].astype("float32"),
                         {"long_name": f"predictive class probabilities of {what}", "units": "1"})
    else:
        data["mean"] = (yd, shaped(cat["mean"]).astype("float32"), {"long_name": f"predictive mean of {what}", **units})
        if "std" in cat:  # not for the point predictions of maml, fomaml, reptile
            data["std"] = (yd, shaped(cat["std"]).astype("float32"),
                           {"long_name": f"predictive standard deviation of {what}", **units})
    if "samples" in cat:
        dims = ("draw", "task", "sample") if classify else ("draw", *yd)
        arr = cat["samples"].astype("int64") if classify else shaped(cat["samples"]).astype("float32")
        data["samples"] = (dims, arr, {"long_name": f"posterior predictive draws of {what}", **({} if classify else units)})
    if "quantiles" in cat:
        data["quantiles"] = (("quantile", *yd), shaped(cat["quantiles"]),
                             {"long_name": f"posterior predictive quantiles of {what}", **units})
    coords: dict[str, Any] = {}
    for dim in ("task", "sample"):
        if layout.get(dim) is not None:
            coords[dim] = layout[dim]
    for dim, values in layout["y_coords"].items():
        coords[dim] = values
    if "probs" in cat:
        coords["class"] = ("class", range(cat["probs"].shape[-1]), {"long_name": "class label"})
    if "samples" in cat:
        coords["draw"] = ("draw", range(draws), {"long_name": "posterior predictive draw"})
    if levels:
        coords["quantile"] = ("quantile", levels, {"long_name": "probability level of the quantile", "units": "1"})
    attrs = {
        "title": f"hvi predict: posterior predictive of {what}",
        "source": f"hvi {__version__}",
        "run": str(Path(os.fspath(run_dir)).expanduser().resolve()),
        "model": run.cfg["model"],
        "inner_steps": steps,
        "num_samples": num_samples,
        "seed": seed,
        "support_file": str(support),
        "query_file": str(query),
    }
    ds = xr.Dataset(data, coords=coords, attrs=clean_attrs(attrs))
    return write_dataset(ds, out_path)


def _slice(batch, a: int, b: int):
    """Tasks a..b as a batch of their own (task indices and count relative to the slice)."""
    sub = batch.tasks(slice(a, b))
    return dataclasses.replace(sub, task_index=sub.task_index - a, num_tasks=min(b, batch.batch_size) - a)
