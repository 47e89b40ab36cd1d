"""The accepted values of hvi's string settings, in one torch-free module.

The engine validates against these (``InnerConfig``, ``MetaModel``,
:mod:`hvi.methods`) and the CLI offers and checks the same tuples
(``cli/config.py``, ``cli/main.py``) without importing torch, so ``hvi
--help`` stays fast and no list is spelled twice.
"""

from __future__ import annotations

__all__ = ["INNER_UPDATES", "INNER_CURVATURES", "MEMORY_MODES", "Q_THETAS", "OBJECTIVES", "METHODS"]

#: ``InnerConfig.update``: the natural-gradient step (Bayesian learning rule) or plain gradient ascent.
INNER_UPDATES: tuple[str, ...] = ("natural", "gradient")
#: ``InnerConfig.curvature``: the natural step's g and h from antithetic sign pairs m ± σ·r (2 evaluations per sample) or from m + σ·r alone (1).
INNER_CURVATURES: tuple[str, ...] = ("pair", "one_sided")
#: ``InnerConfig.memory``: keep every inner step's graph, recompute each step in the backward pass, or differentiate the converged λ implicitly.
MEMORY_MODES: tuple[str, ...] = ("none", "checkpoint", "implicit")
#: ``MetaModel(q_theta=...)``: point mass, diagonal Normal or spline flow over the latent global sites.
Q_THETAS: tuple[str, ...] = ("delta", "normal", "flow")
#: ``MetaModel(objective=...)``: the outer ELBO's data.
OBJECTIVES: tuple[str, ...] = ("query", "support+query")
#: ``MetaModel(method=...)``: ABML, or the deterministic baselines on the same inner loop.
METHODS: tuple[str, ...] = ("abml", "maml", "fomaml", "reptile")
