"""Per-task metrics of predictions: regression and classification.

Every function returns one value per task (shape ``(B,)``), so callers can
average over tasks and give confidence intervals across tasks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hvi.predict import Prediction

__all__ = ["ci_summary", "skill_score", "point_metrics", "regression_metrics", "classification_metrics", "calibration_error", "gaussian_crps", "mean_ci"]

_SQRT2 = math.sqrt(2.0)


def _per_task(v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of ``v`` over each task's entries (its observed ones when ``mask`` is given)."""
    if mask is None:
        return v.reshape(v.shape[0], -1).mean(1)
    m = mask.expand_as(v).reshape(v.shape[0], -1).to(v.dtype)
    return (v.reshape(v.shape[0], -1) * m).sum(1) / m.sum(1)


def gaussian_crps(mean: Tensor, std: Tensor, y: Tensor) -> Tensor:
    """Closed-form CRPS of N(mean, std²) at y (Gneiting & Raftery 2007), elementwise."""
    z = (y - mean) / std
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(z / _SQRT2))
    return std * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


def point_metrics(pred: Tensor, y: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
    """RMSE, MAE and CRPS per task of a point forecast ``pred`` (its CRPS is its absolute error)."""
    err = pred - y
    mae = _per_task(err.abs(), mask)
    return {"rmse": _per_task(err**2, mask).sqrt(), "mae": mae, "crps": mae}


def regression_metrics(
    pred: Prediction,
    y: Tensor,
    levels: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95),
    mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """RMSE, Gaussian NLL, CRPS and central-interval coverage per task.

    The predictive is moment-matched to a Normal(mean, std²). With ``mask``
    (bool, shaped like ``y``) only the observed targets are scored. A point
    prediction (``pred.std`` None: MAML, first-order MAML, Reptile) has no
    predictive distribution: its NLL, CRPS and coverages are NaN (n/a).
    """
    err = pred.mean - y
    if pred.std is None:
        na = torch.full_like(_per_task(err, mask), math.nan)
        return {"rmse": _per_task(err**2, mask).sqrt(), "mae": _per_task(err.abs(), mask), "nll": na, "crps": na,
                **{f"coverage_{round(level * 100)}": na for level in levels}}
    out = {
        "rmse": _per_task(err**2, mask).sqrt(),
        "mae": _per_task(err.abs(), mask),
        "nll": _per_task(0.5 * (err / pred.std) ** 2 + torch.log(pred.std) + 0.5 * math.log(2 * math.pi), mask),
        "crps": _per_task(gaussian_crps(pred.mean, pred.std, y), mask),
    }
    for level in levels:
        z = _SQRT2 * torch.special.erfinv(torch.tensor(level, dtype=y.dtype, device=y.device))
        inside = (err.abs() <= z * pred.std).to(y.dtype)
        out[f"coverage_{round(level * 100)}"] = _per_task(inside, mask)
    return out


def classification_metrics(
    pred: Prediction, y: Tensor, bins: int = 10, mask: Tensor | None = None
) -> dict[str, Tensor]:
    """Accuracy, NLL and expected calibration error (equal-width confidence bins) per task.

    With ``mask`` (bool, shaped like ``y``) only the observed labels are scored.
    """
    assert pred.probs is not None
    p = pred.probs.clamp_min(1e-12)
    correct = (pred.mean == y).to(p.dtype)
    nll = -torch.log(p.gather(-1, y.unsqueeze(-1)).squeeze(-1))
    B = p.shape[0]
    seen = None if mask is None else mask.reshape(B, -1).to(p.dtype)
    ece = _ece(p.max(-1).values.reshape(B, -1), correct.reshape(B, -1), bins, seen)
    return {"accuracy": _per_task(correct, mask), "nll": _per_task(nll, mask), "ece": ece}


def calibration_error(probs: Tensor, y: Tensor, bins: int = 15) -> Tensor:
    """Pooled expected calibration error of class probabilities over every prediction.

    ECE = Σ_b (n_b/n)·|accuracy_b − confidence_b| over ``bins`` equal-width
    confidence bins (Guo et al. 2017), all predictions of all tasks pooled, as
    few-shot papers report it (:func:`classification_metrics` gives one per task).

    Args:
        probs: Class probabilities ``(..., C)``.
        y: Labels ``(...)``.
        bins: Number of confidence bins (default 15).

    Returns:
        A scalar tensor.
    """
    p = probs.reshape(-1, probs.shape[-1])
    conf, guess = p.max(-1)
    correct = (guess == y.reshape(-1)).to(p.dtype)
    return _ece(conf[None], correct[None], bins)[0]


def _ece(conf: Tensor, correct: Tensor, bins: int, seen: Tensor | None = None) -> Tensor:
    """ECE of each row of ``(R, N)`` confidences and 0/1 hits: Σ_b |Σ_{i∈b} (conf_i − correct_i)| / n.

    ``bins`` equal-width confidence bins on [0, 1]; with ``seen`` (0/1 weights,
    ``(R, N)``) only the seen entries count, and n is their number per row.
    """
    edges = torch.linspace(0, 1, bins + 1, device=conf.device, dtype=conf.dtype)
    which = torch.bucketize(conf, edges[1:-1])
    gaps = conf - correct if seen is None else (conf - correct) * seen
    n = conf.shape[1] if seen is None else seen.sum(1)
    binned = torch.zeros(conf.shape[0], bins, dtype=conf.dtype, device=conf.device).scatter_add_(1, which, gaps)
    return binned.abs().sum(1) / n


def ci_summary(values: Tensor) -> dict[str, float]:
    """``{"value", "ci_low", "ci_high"}``: :func:`mean_ci` of per-task values, as JSON reports it."""
    m, lo, hi = mean_ci(values.detach().double().cpu())
    return {"value": m, "ci_low": lo, "ci_high": hi}


def skill_score(model_rmse: Tensor, ref_rmse: Tensor, seed: int, draws: int = 2000) -> dict[str, float]:
    """1 − mean RMSE_model / mean RMSE_ref with a paired bootstrap 95% CI over tasks (same tasks resampled)."""
    m, r = model_rmse.detach().double().cpu(), ref_rmse.detach().double().cpu()
    value = 1.0 - float(m.mean() / r.mean())
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, m.numel(), (draws, m.numel()), generator=g)
    boot = 1.0 - m[idx].mean(1) / r[idx].mean(1)
    lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=boot.dtype)).tolist()
    return {"value": value, "ci_low": lo, "ci_high": hi}


def mean_ci(values: Tensor, z: float = 1.959964) -> tuple[float, float, float]:
    """Mean over tasks and a normal-approximation 95% confidence interval ``(mean, lo, hi)``."""
    v = values.double()
    m = float(v.mean())
    half = z * float(v.std(unbiased=True)) / math.sqrt(v.numel()) if v.numel() > 1 else float("nan")
    return m, m - half, m + half
