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


#: InnerConfig field, its run-config key, value -> the message, with {name} what the user typed.
INNER_BAD = [
    ("steps", "inner_steps", -1, "{name}=-1 must be an integer >= 0."),
    ("steps", "inner_steps", 1.5, "{name}=1.5 must be an integer >= 0."),
    ("lr", "inner_lr", 0.0, "{name}=0.0 must be a positive finite number."),
    ("num_samples", "inner_samples", 0, "{name}=0 must be an integer >= 1."),
    ("kl_weight", "kl_weight", -1.0, "{name}=-1.0 must be a finite number >= 0 (e.g. 1e-3 to down-weight the KL)."),
    ("update", "inner_update", "newton", "{name}='newton' is not understood; use one of 'natural', 'gradient'."),
    ("memory", "memory_mode", "recompute",
     "{name}='recompute' is not understood; use one of 'none', 'checkpoint', 'implicit'."),
    ("curvature_every", "curvature_every", 0, "{name}=0 must be an integer >= 1 (1 measures it every step)."),
    ("curvature", "inner_curvature", "two_sided", "{name}='two_sided' is not understood; use one of 'pair', 'one_sided'."),
]


@pytest.mark.parametrize("field, key, value, message", INNER_BAD, ids=[f"{k}={v!r}" for _, k, v, _ in INNER_BAD])
def test_one_message_for_inner_config_and_the_run_config(field, key, value, message):
    """An inner setting is checked once (hvi.settings.check_inner): InnerConfig names the field, the config the key."""
    with pytest.raises(ValueError) as e:
        hvi.InnerConfig(**{field: value})
    assert str(e.value) == message.format(name=f"inner {field}")
    if isinstance(value, float) and field in ("steps", "num_samples", "curvature_every"):
        return  # the config's type check refuses a float for an integer key first
    with pytest.raises(ValueError) as e:
        check_value(key, value, "the command line")
    assert str(e.value) == message.format(name=key)


def test_inner_keys_together_name_the_config_keys():
    from hvi.builders import inner_config
    from hvi.defaults import defaults_for

    cfg = defaults_for("mlp")
    assert inner_config(cfg) == hvi.InnerConfig(
        steps=cfg["inner_steps"], update=cfg["inner_update"], lr=cfg["inner_lr"], learn_lr=cfg["learn_lr"],
        num_samples=cfg["inner_samples"], kl_weight=cfg["kl_weight"], first_order=cfg["first_order"],
        memory=cfg["memory_mode"], curvature_every=cfg["curvature_every"],
    )
    with pytest.raises(ValueError, match=r"^curvature_every=3 needs inner_update='natural' and memory_mode 'none' "
                       r"or 'checkpoint' \(got inner_update='gradient', memory_mode='none'\); use curvature_every=1\.$"):
        inner_config({**cfg, "inner_update": "gradient", "curvature_every": 3})
    with pytest.raises(ValueError, match=r"^memory_mode='implicit' replaces the second-order backward, which "
                       r"first_order=True does not have; use first_order=False, or memory_mode='none' with "
                       r"first_order=True\.$"):
        inner_config({**cfg, "memory_mode": "implicit", "first_order": True})
    old = {k: v for k, v in cfg.items() if k not in ("memory_mode", "curvature_every")}  # a run saved before them
    assert (inner_config(old).memory, inner_config(old).curvature_every) == ("none", 1)


#: method, InnerConfig fields -> the message in Python (MetaModel) and from the run config (keys named).
METHOD_BAD = [
    ("abml", dict(update="gradient", kl_weight=0.0),
     "{kl_weight}=0.0 must be > 0 for the variational objective of method='abml'; use a small value such as 1e-3 "
     "to down-weight the KL."),
    ("maml", dict(update="natural"),
     "method='maml' takes plain gradient steps on a point mass, but {update}='natural'; use {update}='gradient' "
     "with a small step such as {lr}=0.01."),
    ("fomaml", dict(update="gradient", num_samples=3), "method='fomaml' adapts a point mass: {num_samples}=3 must be 1."),
    ("reptile", dict(update="gradient", memory="checkpoint", num_samples=2),
     "method='reptile' adapts a point mass: {num_samples}=2 must be 1."),
    ("maml", dict(update="gradient", memory="implicit", learn_lr=False),
     "method='maml' adapts a point mass without a KL term, which {memory}='implicit' needs; use "
     "{memory}='checkpoint' (or 'none')."),
    ("maml", dict(update="gradient", first_order=True),
     "method='maml' is second order but {first_order}=True; use method='fomaml' (or {first_order}=False)."),
]


@pytest.mark.parametrize("method, fields, message", METHOD_BAD, ids=[f"{m}-{sorted(f)}" for m, f, _ in METHOD_BAD])
def test_one_message_for_the_method_rules_in_meta_model_and_the_run_config(method, fields, message):
    """hvi.settings.check_method_inner: MetaModel names InnerConfig's fields, hvi fit's config its keys."""
    from hvi.builders import inner_config
    from hvi.defaults import defaults_for
    from hvi.settings import INNER_KEYS

    inner = hvi.InnerConfig(**fields)
    python = message.format(**{f: f"inner {f}" for f in INNER_KEYS.values()})
    with pytest.raises(ValueError) as e:
        hvi.MetaModel(nn.Linear(1, 1), inner=inner, method=method)
    assert str(e.value) == python
    keys = {f: k for k, f in INNER_KEYS.items()}
    cfg = {**defaults_for("mlp", method), "method": method, **{keys[f]: v for f, v in fields.items()}}
    with pytest.raises(ValueError) as e:
        inner_config(cfg)
    assert str(e.value) == message.format(**keys)


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
