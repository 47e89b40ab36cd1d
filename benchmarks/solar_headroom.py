"""How much a solar forecast can beat the support-set climatology: the best linear blend of the baselines.

hvi's adapted posterior on the solar source lands at the climatology's RMSE
(docs/results/solar.json). This script measures the headroom the data leave:
least squares on the *train* split's daylight query pixels fits one blend of
the climatology, smart persistence, the previous period's mean profile, the
two input periods' mean profile and a constant, and scores it on the *test*
split like ``hvi evaluate`` does (daylight pixels, RMSE per task, skill vs
climatology with a paired bootstrap 95% CI over tasks)::

    python benchmarks/solar_headroom.py --out docs/results/solar_headroom.json
"""

from __future__ import annotations

import argparse
import sys

import torch

from provenance import write_result

from hvi.data import get_source
from hvi.data.solar import climatology, period_mean_persistence, persistence
from hvi.metrics import ci_summary, point_metrics, skill_score

NAMES = ("climatology", "persistence", "period_mean_persistence", "input_mean_profile")


def _features(batch) -> torch.Tensor:
    """The four baseline forecasts stacked on a last axis, each 0 at night."""
    x = batch.query_x[:, :, :2]  # kt maps of the two input periods
    seen = x > 0
    profile = (x * seen).sum((2, 3)) / seen.sum((2, 3)).clamp(min=1)  # (B, N, W)
    two = profile[:, :, None, None, :].expand_as(batch.query_y)
    two = torch.where(batch.query_mask, two, torch.zeros_like(two))
    return torch.stack([climatology(batch), persistence(batch), period_mean_persistence(batch), two], -1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/results/solar_headroom.json")
    args = p.parse_args(argv)
    src = get_source("solar")
    train = src.get_tasks("train", torch.arange(src.num_tasks("train"))).to("cpu", torch.float64)
    test = src.get_tasks("test", torch.arange(src.num_tasks("test"))).to("cpu", torch.float64)
    f, m = _features(train), train.query_mask
    design = torch.cat([f[m], torch.ones(int(m.sum()), 1, dtype=f.dtype)], 1)
    w = torch.linalg.lstsq(design, train.query_y[m].unsqueeze(1)).solution.squeeze(1)
    ft = _features(test)
    blend = torch.where(test.query_mask, (ft * w[:-1]).sum(-1) + w[-1], torch.zeros_like(test.query_y))
    per = {n: point_metrics(ft[..., i], test.query_y, test.query_mask)["rmse"] for i, n in enumerate(NAMES)}
    per["linear_blend"] = point_metrics(blend, test.query_y, test.query_mask)["rmse"]
    out = {
        "split": "test",
        "num_tasks": test.batch_size,
        "blend_weights": dict(zip([*NAMES, "constant"], w.tolist())),
        "rmse": {n: ci_summary(v) for n, v in per.items()},
        "skill_vs_climatology": {n: skill_score(v, per["climatology"], 0) for n, v in per.items() if n != "climatology"},
    }
    write_result(args.out, "benchmarks/solar_headroom.py", argv, out)
    for n, v in out["rmse"].items():
        print(f"{n:26s} RMSE {v['value']:.4f}")
    s = out["skill_vs_climatology"]["linear_blend"]
    print(f"linear blend skill vs climatology {s['value']:+.4f} [{s['ci_low']:+.4f}, {s['ci_high']:+.4f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
