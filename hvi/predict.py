"""Meta-testing: adapt to each task's support set, then predict its query inputs.

For every task, λ* = adapt(θ, D^S) with M_eval steps, then S weight draws
φ_s ~ q(φ; λ*) give outputs f_s = f_{φ_s}(x^Q). The Gaussian predictive is
summarised by its mean and std (Var = Var_s f_s + E σ²); classification by
class probabilities (mean of softmax). Everything is vectorized over tasks
and samples; θ comes from the current Pyro param store.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor

from hvi.meta import MetaModel
from hvi.tasks import TaskBatch
from hvi.validation import validate_for_model

__all__ = ["Prediction", "predict"]

#: The value :func:`predict` gives the model's replicated-target site "y" instead of drawing it.
_NOT_DRAWN = torch.zeros(())


@dataclass(frozen=True)
class Prediction:
    """Predictions for the query inputs of a batch of tasks.

    Attributes:
        mean: Predictive mean ``(B, Nq, *y_shape)``; for classification the
            most probable class ``(B, Nq)``.
        std: Predictive std (regression) or None; None too for the point
            predictions of a deterministic method (``meta.method`` "maml",
            "fomaml", "reptile"), which have no predictive distribution.
        probs: Class probabilities ``(B, Nq, C)`` (classification) or None.
        samples: Network outputs per weight draw ``(S, B, Nq, *out_shape)``.
        noise_std: Observation std σ (root mean over draws), shaped like ``mean``
            (regression) or None.
    """

    mean: Tensor
    std: Tensor | None
    probs: Tensor | None
    samples: Tensor
    noise_std: Tensor | None = None


@torch.no_grad()
def predict(
    meta: MetaModel,
    batch: TaskBatch,
    *,
    inner_steps: int | None = None,
    num_samples: int = 100,
) -> Prediction:
    """Adapts to each task's support set and predicts its query inputs.

    Args:
        meta: A trained model (θ is read from the Pyro param store).
        batch: Tasks with support sets; ``query_y`` is not read (it may be NaN).
        inner_steps: Adaptation steps M_eval (default: the training value).
        num_samples: Weight draws S per task (default 100).

    Returns:
        A :class:`Prediction`. With ``q_theta="normal"`` each draw also
        samples θ from q(θ) and adapts to it, so θ's uncertainty is included.
        A deterministic method gives the point prediction f_{φ_K}(x^Q) (one
        draw whatever ``num_samples``) with ``std = None``.
    """
    if not (isinstance(num_samples, int) and num_samples >= 1):
        raise ValueError(f"num_samples={num_samples!r} must be an integer >= 1.")
    point = meta.method != "abml"
    if point:  # q(φ) is a point mass: every draw is the same
        num_samples = 1
    validate_for_model(batch, meta, query_targets=False)
    # Draws share a particle plate (dim -3), as in pyro.infer.Predictive(parallel=True).
    # The model's predictive path also draws replicated targets at "y"; the summaries
    # below are exact in f and σ², so that draw is skipped (conditioned on a placeholder):
    # no memory for it, and the random stream is the one the weight draws always had.
    with pyro.plate("predictive_samples", num_samples, dim=-3):
        guide_trace = poutine.trace(meta.guide).get_trace(batch, inner_steps=inner_steps, predict=True)
        model = poutine.condition(poutine.replay(meta.model, guide_trace), data={"y": _NOT_DRAWN})
        model_trace = poutine.trace(model).get_trace(batch, inner_steps=inner_steps, predict=True)
    f = model_trace.nodes["f"]["value"]
    f = f.expand((num_samples,) + f.shape[1:]) if f.shape[0] == 1 else f
    if meta.likelihood.is_classification:
        probs = torch.softmax(f, dim=-1).mean(0)
        return Prediction(probs.argmax(-1), None, probs, f)
    obs_var = model_trace.nodes["obs_var"]["value"].expand_as(f)
    mean = f.mean(0)
    if point:
        return Prediction(mean, None, None, f, None)
    # Law of total variance over the weight draws.
    std = (f.var(0, unbiased=False) + obs_var.mean(0)).sqrt()
    return Prediction(mean, std, None, f, obs_var.mean(0).sqrt())
