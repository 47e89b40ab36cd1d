"""hvi.FitSettings: the one check of the training settings that hvi.fit and hvi fit share."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hvi
from hvi.cli.config import check_value
from hvi.priors import GaussianPrior
from hvi.settings import FitSettings

#: field=value -> the exact message, whichever way the value comes in.
BAD = [
    ("steps", -1, "steps=-1 must be an integer >= 0."),
    ("steps", 1.5, "steps=1.5 must be an integer >= 0."),
    ("task_batch", 0, "task_batch=0 must be an integer >= 1 (tasks per step)."),
    ("lr", 0.0, "lr=0.0 must be a positive finite number."),
    ("lr", float("inf"), "lr=inf must be a positive finite number."),
    ("clip_norm", -2.0, "clip_norm=-2.0 must be a positive finite number (unset: no clipping)."),
    ("seed", -5, "seed=-5 must be an integer >= 0."),
    ("seed", True, "seed=True must be an integer >= 0."),
    ("device", "gpu", "device='gpu' is not understood; use cpu, cuda or cuda:N (N = 0, 1, ...)."),
    ("device", "cuda:99999999999999999999",
     "device='cuda:99999999999999999999' is not understood; use cpu, cuda or cuda:N (N = 0, 1, ...)."),
    ("max_skips", 0, "max_skips=0 must be an integer >= 1."),
    ("chunk", 0, "chunk=0 must be an integer >= 1 (tasks per backward pass; unset: one pass)."),
]


def _meta():
    torch.manual_seed(0)
    return hvi.MetaModel(nn.Linear(1, 1), GaussianPrior(init_scale=0.1), hvi.Gaussian(init_scale=0.5),
                         inner=hvi.InnerConfig(steps=1))


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 1, generator=g)
    return hvi.TaskBatch(x[:, :2], x[:, :2], x[:, 2:], x[:, 2:])


@pytest.mark.parametrize("name, value, message", BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_one_message_for_the_api_and_the_config(name, value, message):
    with pytest.raises(ValueError) as e:
        FitSettings(**{name: value})
    assert str(e.value) == message
    with pytest.raises(ValueError) as e:
        hvi.fit(_meta(), _batch(), **{"steps": 1, name: value})
    assert str(e.value) == message
    if name in ("steps", "max_skips") or isinstance(value, bool) or value == float("inf"):
        return  # steps: the CLI's rule is stricter (below); max_skips is no config key; the config's type
        # check (naming the TOML file or the command line) refuses a bool or inf first
    with pytest.raises(ValueError) as e:
        check_value(name, value, "the command line")
    assert str(e.value) == message


def test_defaults_and_normalisation():
    s = FitSettings(lr=1, clip_norm=2, device=torch.device("cpu"))
    assert (s.steps, s.task_batch, s.seed, s.max_skips, s.chunk) == (1000, None, 0, 10, None)
    assert s.lr == 1.0 and isinstance(s.lr, float) and s.clip_norm == 2.0 and isinstance(s.clip_norm, float)
    assert s.device == torch.device("cpu")
    with pytest.raises(AttributeError):
        s.steps = 3  # frozen
    picked = FitSettings.from_config({"model": "mlp", "steps": 7, "chunk": 2, "inner_lr": 0.5})
    assert (picked.steps, picked.chunk, picked.lr) == (7, 2, 1e-3)


def test_steps_zero_is_a_fit_but_not_a_cli_run():
    """fit(steps=0) is a valid no-op (no step, no loss); hvi fit must train at least one step."""
    assert FitSettings(steps=0).steps == 0
    result = hvi.fit(_meta(), _batch(), steps=0)
    assert result.losses == () and result.skipped == () and result.config["fit"]["steps"] == 0
    with pytest.raises(ValueError, match=r"^steps=0 must be an integer >= 1 \(hvi fit trains at least one step\)\.$"):
        check_value("steps", 0, "the command line")
    assert check_value("steps", 1, "the command line") == 1
