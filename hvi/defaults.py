"""Per-model defaults of ``hvi fit``: one table, overridden by the TOML config and the CLI.

Precedence (lowest first): :data:`COMMON` < :data:`MODEL_DEFAULTS` [model]
(< :data:`DATA_DEFAULTS` [model, source] for the run's built-in source)
< ``--config run.toml`` < command-line options.

Every row takes the natural-gradient step (``inner_update = "natural"``), with
α = ``inner_lr`` a fraction of a full step (docs/inner_loop.md). A diagonal
step overshoots by about the number of weights that feed each output, so a
row's α shrinks as its network couples more outputs (the solar U-Net's 128
outputs per example take 0.3, the cloud maps' 1,024 take 0.1), and a row
whose posterior would stay at its prior (conv4: 28k weights, 5 images)
tempers the KL term (``kl_weight``). Where the step still overshoots at
the row's α (conv4 on glyphs, where 10 inner steps score below 3), the row
takes the line search (``inner_line_search``), which shrinks each task's
step by the curvature along it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["COMMON", "DATA_DEFAULTS", "MODEL_DEFAULTS", "defaults_for"]

#: Defaults shared by every model (a model row overrides them).
COMMON: dict[str, Any] = {
    "data_args": {},
    "model_args": {},
    "prior": "gaussian",
    "prior_args": {},
    "likelihood": None,  # None: the data source's (gaussian / categorical)
    "likelihood_args": {},
    "method": "abml",
    "q_theta": "delta",
    "objective": "query",
    "inner_steps": 5,
    "inner_update": "natural",
    "inner_lr": 0.1,
    "learn_lr": False,
    "first_order": False,
    "kl_weight": 1.0,
    "inner_samples": 1,
    "curvature_every": 1,
    "inner_curvature": "pair",
    "inner_line_search": False,
    "memory_mode": "none",
    "chunk": None,
    "steps": 1000,
    "task_batch": 8,
    "lr": 1e-3,
    "clip_norm": None,
    "seed": 0,
    "device": "cpu",
    "threads": 1,  # task workers; a second costs more CPU than it saves (docs/performance.md#threads-the-cli-default)
    "val_every": None,  # None: steps // 10
    "val_tasks": 32,
    "val_samples": 20,
    "checkpoint_every": None,  # None: steps // 10
    "keep_checkpoints": 2,  # the newest N in checkpoint/; a damaged newest one falls back to the next
    "eval_samples": 100,  # hvi evaluate --num-samples default
    "eval_tasks": None,  # hvi evaluate --max-tasks default (None: every test task)
}

#: One row per zoo model: its default data source and everything tuned for it.
#: ``likelihood_args`` apply to the Gaussian likelihood only.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    # Sinusoid regression (MAML benchmark): 1 output per example. From the sinusoid
    # screen (docs/methods.md): a prior scale of 0.03 and a learned per-tensor α
    # reach a query MSE of 0.08 after 5 steps where α = 0.1 fixed, prior scale 0.1
    # and 10 steps reached 0.45 (docs/results/sinusoid*.json).
    "mlp": {
        "data": "sinusoid",
        "model_args": {"hidden": [40, 40]},
        "prior_args": {"init_scale": 0.03},
        "likelihood_args": {"init_scale": 0.3},
        "inner_steps": 5,
        "learn_lr": True,
        "steps": 5000,
        "task_batch": 8,
        "lr": 3e-3,
        "eval_tasks": 200,
    },
    # LFW faces as implicit neural representations: 156 support pixels.
    # The prior's scale must sit far below the SIREN's own weights (~0.01 at width
    # 64, ω0 = 30): at 0.01 every φ draw was a different random network and the
    # adapted RMSE stayed at the support mean's; at 1e-3 three natural steps at
    # α = 1 cut the prior's RMSE by 30%.
    "siren": {
        "data": "faces",
        "model_args": {"width": 64, "depth": 3},
        "prior_args": {"init_scale": 0.001},
        "likelihood_args": {"init_scale": 0.1},
        "inner_steps": 3,
        "inner_lr": 1.0,
        "steps": 300,
        "task_batch": 4,
        "lr": 1e-3,
        "val_tasks": 10,
    },
    # 5-way 1-shot glyph classification (categorical likelihood).
    "conv4": {
        "data": "glyphs",
        "model_args": {"hidden": 32},
        # A 28k-weight network and a 5-image support set: at kl_weight 1 the
        # posterior stays at the prior and accuracy at chance (0.18-0.19 after
        # 300 steps); a tempered posterior (β = 1e-3) adapts. Prior scale 0.01
        # sits below the weights' own scale (~0.06), so draws are one network.
        "prior_args": {"init_scale": 0.01},
        "inner_steps": 3,
        "inner_lr": 0.3,
        # The diagonal natural step overshoots on glyphs; the line search
        # shrinks it where the curvature along the step says so. 1-shot,
        # 300 steps (docs/results/glyph_methods.json, abml_ls vs abml):
        # accuracy after 1/3/10 inner steps 0.684/0.894/0.856 with it,
        # 0.627/0.876/0.696 without.
        "inner_line_search": True,
        "kl_weight": 1e-3,
        # Second order (COMMON's): differentiating through the line-searched
        # steps is what makes the init adapt in few steps, as for MAML against
        # first-order MAML. `hvi fit --model conv4` evaluated on 100 1-shot
        # episodes (docs/results/zoo_conv4*.json): accuracy 0.938 against
        # first order's 0.894, NLL 0.224 against 0.286, at 2x the fit time.
        "steps": 500,
        "task_batch": 4,
        "lr": 1e-3,
        "val_tasks": 16,
        "val_samples": 5,
        "eval_samples": 10,
        "eval_tasks": 100,
    },
    # Solar clear-sky-index maps (3 x 8 x 16 -> 1 x 8 x 16): 128 outputs per example.
    # Solar (night pixels masked): 600 steps at lr 3e-3 and α = 0.3 reach the
    # support climatology's RMSE (300 steps at 1e-3, α = 0.1 stayed above it).
    "bayes_unet": {
        "data": "solar",
        "model_args": {"base": 8, "depth": 3},
        "prior_args": {"init_scale": 0.03},
        "likelihood_args": {"init_scale": 0.3},
        "inner_steps": 3,
        "inner_lr": 0.3,
        "steps": 600,
        "task_batch": 4,
        "lr": 3e-3,
        "val_tasks": 12,
    },
}


#: (model, source) -> what changes when a model trains on that built-in source,
#: its row's default source included (ABML only; a command-line or TOML value
#: still wins). A setting that suits one source's data, not the model, goes here,
#: so that the same model on other data (a user's file) does not inherit it.
DATA_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    # The sinusoid is noiseless: a learned σ shrinks during training and the
    # adapted MSE degraded from 2,000 to 8,000 outer steps (docs/methods.md); a
    # fixed σ = 0.1 is the modelling choice (MAML's MSE is itself a Gaussian with
    # a fixed σ). Data of unknown noise keeps the row's learned σ.
    ("mlp", "sinusoid"): {"likelihood_args": {"noise": 0.1}},
    # 32 x 32 cloud maps have 1,024 outputs per example against solar's 128: a
    # diagonal step couples 8x more outputs per weight, and α = 0.3 diverged in
    # the first 10 steps; α = 0.1 adapts (docs/results.md, every zoo model).
    ("bayes_unet", "clouds"): {"inner_lr": 0.1},
}


def defaults_for(model: str, method: str = "abml", data: str | None = None) -> dict[str, Any]:
    """The defaults of ``model``: :data:`COMMON` updated by its row (deep-copied), for ``method``.

    The deterministic methods (``maml``, ``fomaml``, ``reptile``; see
    :mod:`hvi.methods`) take plain gradient steps: a row tuned for the
    natural step gets ``inner_update = "gradient"`` and MAML's ``inner_lr =
    0.01`` (a row already on gradient steps keeps its tuned ``inner_lr``; the
    natural step's own keys, ``inner_line_search``, ``inner_curvature`` and
    ``curvature_every``, go back to :data:`COMMON`'s) and
    a fixed α (``learn_lr = False``); ``first_order`` is false for maml and true for the others; Reptile's
    ``lr`` is its outer step size ε of plain SGD, 0.1. The run's source
    (``data``, or the row's own when ``None``) applies its :data:`DATA_DEFAULTS`
    entry.
    """
    import copy

    out = copy.deepcopy(COMMON)
    row = copy.deepcopy(MODEL_DEFAULTS.get(model, {}))
    out.update(row)
    out.setdefault("data", None)
    if method == "abml":
        out.update(copy.deepcopy(DATA_DEFAULTS.get((model, data if data is not None else out["data"]), {})))
    else:
        out["method"] = method
        if out["inner_update"] == "natural":
            out["inner_update"], out["inner_lr"] = "gradient", 0.01
            # the natural step's own keys go back to COMMON's (conv4's line search would be refused)
            for k in ("inner_line_search", "inner_curvature", "curvature_every"):
                out[k] = COMMON[k]
        out["first_order"] = method != "maml"
        out["learn_lr"] = False  # the methods as published: one fixed α (Meta-SGD is learn_lr = true)
        if method == "reptile":
            out["lr"] = 0.1
    return out
