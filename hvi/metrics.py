"""Per-task metrics of predictions: regression and classification.

Every function returns one value per task (shape ``(B,)``), so callers can
average over tasks and give confidence intervals across tasks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hvi.predict import Prediction

__all__ = ["regression_metrics", "classification_metrics", "gaussian_crps", "mean_ci"]

_SQRT2 = math.sqrt(2.0)


def _per_task(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).mean(1)


def gaussian_crps(mean: Tensor, std: Tensor, y: Tensor) -> Tensor:
    """Closed-form CRPS of N(mean, std²) at y (Gneiting & Raftery 2007), elementwise."""
    z = (y - mean) / std
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(z / _SQRT2))
    return std * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


def regression_metrics(
    pred: Prediction, y: Tensor, levels: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)
) -> dict[str, Tensor]:
    """RMSE, Gaussian NLL, CRPS and central-interval coverage per task.

    The predictive is moment-matched to a Normal(mean, std²).
    """
    assert pred.std is not None
    err = pred.mean - y
    out = {
        "rmse": _per_task(err**2).sqrt(),
        "mae": _per_task(err.abs()),
        "nll": _per_task(0.5 * (err / pred.std) ** 2 + torch.log(pred.std) + 0.5 * math.log(2 * math.pi)),
        "crps": _per_task(gaussian_crps(pred.mean, pred.std, y)),
    }
    for level in levels:
        z = _SQRT2 * torch.special.erfinv(torch.tensor(level, dtype=y.dtype, device=y.device))
        inside = (err.abs() <= z * pred.std).to(y.dtype)
        out[f"coverage_{round(level * 100)}"] = _per_task(inside)
    return out


def classification_metrics(pred: Prediction, y: Tensor, bins: int = 10) -> dict[str, Tensor]:
    """Accuracy, NLL and expected calibration error (equal-width confidence bins) per task."""
    assert pred.probs is not None
    p = pred.probs.clamp_min(1e-12)
    correct = (pred.mean == y).to(p.dtype)
    nll = -torch.log(p.gather(-1, y.unsqueeze(-1)).squeeze(-1))
    conf = p.max(-1).values
    edges = torch.linspace(0, 1, bins + 1, device=p.device, dtype=p.dtype)
    which = torch.bucketize(conf, edges[1:-1])
    ece = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
    n = conf.shape[1]
    for b in range(bins):
        m = (which == b).to(p.dtype)
        cnt = m.sum(1)
        gap = ((conf - correct) * m).sum(1).abs()
        ece = ece + torch.where(cnt > 0, gap / n, torch.zeros_like(gap))
    return {"accuracy": _per_task(correct), "nll": _per_task(nll), "ece": ece}


def mean_ci(values: Tensor, z: float = 1.959964) -> tuple[float, float, float]:
    """Mean over tasks and a normal-approximation 95% confidence interval ``(mean, lo, hi)``."""
    v = values.double()
    m = float(v.mean())
    half = z * float(v.std(unbiased=True)) / math.sqrt(v.numel()) if v.numel() > 1 else float("nan")
    return m, m - half, m + half
