"""``MetaModel``: the thin object layer tying network, prior, likelihood and inner loop."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from torch import Tensor, nn

from hvi.adapt import InnerConfig, InnerLoop
from hvi.choices import OBJECTIVES, Q_THETAS
from hvi.families import GuideFamily, PointMassFamily
from hvi.flows import GlobalFlow
from hvi.functional import FunctionalNet
from hvi.guide import guide as _guide
from hvi.likelihoods import Likelihood, get_likelihood
from hvi.methods import Method, is_deterministic, method_inner_config
from hvi.model import model as _model
from hvi.priors.base import HierarchicalPrior, get_prior
from hvi.settings import check_choice, check_method_theta
from hvi.sites import GlobalSite
from hvi.tasks import TaskBatch

__all__ = ["MetaModel"]


class MetaModel:
    """A hierarchical Bayesian meta-learning model: θ → φ_i → D_i.

    Args:
        net: Any ``nn.Module`` mapping ``(N, *x_shape)`` to outputs; its
            current weights initialise the prior mean.
        prior: A :class:`~hvi.priors.HierarchicalPrior` or a registered name
            (default ``"gaussian"``).
        likelihood: A :class:`~hvi.likelihoods.Likelihood` or a registered
            name (default ``"gaussian"``: learned noise).
        q_theta: ``"delta"`` (point mass / empirical Bayes, default),
            ``"normal"`` (diagonal Normal over latent θ; needs a hyperprior)
            or ``"flow"`` (a spline normalizing flow over all latent global
            sites jointly, for skewed or correlated group-level posteriors of
            small hierarchical models; see :mod:`hvi.flows`).
        inner: Inner-loop settings (default :class:`~hvi.adapt.InnerConfig`).
        objective: ``"query"`` (outer ELBO on the query set, default) or
            ``"support+query"``.
        q_theta_init_scale: Initial std of a Normal q(θ) (default 0.01).
        method: ``"abml"`` (default: the Bayesian model above), or one of the
            deterministic baselines on the same inner loop: ``"maml"``,
            ``"fomaml"`` (first-order MAML) or ``"reptile"``. Those adapt a
            point mass q(φ_i) = δ(φ_i) by plain gradient steps (``inner``
            must then have ``update="gradient"``; None gives α = 0.01) without
            a KL term, and :func:`hvi.fit` trains them on their own outer
            update (see :mod:`hvi.methods`). Their predictions are point
            predictions.

    Call :meth:`model` and :meth:`guide` with a :class:`~hvi.TaskBatch`; they
    are the Pyro model and guide (``pyro.infer.SVI(m.model, m.guide, ...)``).
    """

    def __init__(
        self,
        net: nn.Module,
        prior: HierarchicalPrior | str = "gaussian",
        likelihood: Likelihood | str = "gaussian",
        *,
        q_theta: Literal["delta", "normal", "flow"] = "delta",
        inner: InnerConfig | None = None,
        objective: Literal["query", "support+query"] = "query",
        q_theta_init_scale: float = 0.01,
        method: Method = "abml",
    ) -> None:
        check_choice("q_theta", q_theta, Q_THETAS)
        check_choice("objective", objective, OBJECTIVES)
        if not q_theta_init_scale > 0:
            raise ValueError(f"q_theta_init_scale={q_theta_init_scale} must be positive.")
        self.inner = method_inner_config(method, inner)
        #: The meta-learning method (see :mod:`hvi.methods`).
        self.method: str = method
        check_method_theta(method, q_theta)
        self.net = FunctionalNet(net, parallel_tasks=self.inner.parallel_tasks)
        self.prior = get_prior(prior).bind(self.net.init_weights)
        #: q(φ_i)'s family: the prior's, or a point mass for the deterministic methods.
        self.family: GuideFamily = PointMassFamily() if is_deterministic(method) else self.prior.family
        self.likelihood = get_likelihood(likelihood)
        self.q_theta = q_theta
        self.objective = objective
        self.q_theta_init_scale = float(q_theta_init_scale)
        ref = next(iter(self.net.init_weights.values()))
        sites = dict(self.prior.sites())
        sites.update({f"likelihood.{k}": s for k, s in self.likelihood.global_sites().items()})
        self.sites: dict[str, GlobalSite] = {
            n: dataclasses.replace(s, init=s.init.to(device=ref.device, dtype=ref.dtype))
            for n, s in sites.items()
        }
        if q_theta != "delta" and not any(s.latent for s in self.sites.values()):
            raise ValueError(
                f"q_theta={q_theta!r} needs latent global sites, but the prior has no hyperprior; "
                "use a prior with a hyperprior (e.g. GaussianPrior(hyperprior=True)) or q_theta='delta'."
            )
        #: q(θ) as a flow over the latent sites (``q_theta="flow"``), else None.
        self.flow: GlobalFlow | None = None
        if q_theta == "flow":
            self.flow = GlobalFlow({n: s for n, s in self.sites.items() if s.latent}, self.q_theta_init_scale)
        self._loops: dict[int, InnerLoop] = {}

    @property
    def kl_weight(self) -> float:
        """β: the weight of KL(q(φ_i) ‖ p(φ_i | θ)), inner and outer.

        The deterministic methods have no KL (their inner loop runs with
        ``kl_weight=0``); 1.0 here only scales the φ sites of their Pyro
        program, which no outer loss of theirs reads (Pyro needs a scale > 0).
        """
        return self.inner.kl_weight if self.method == "abml" else 1.0

    def inner_loop(self, y_event_dim: int) -> InnerLoop:
        """The inner loop for targets with ``y_event_dim`` per-example dims."""
        if y_event_dim not in self._loops:
            self._loops[y_event_dim] = InnerLoop(
                self.net, self.prior, self.likelihood, self.inner, y_event_dim, family=self.family
            )
        return self._loops[y_event_dim]

    def model(self, batch: TaskBatch, *, inner_steps: int | None = None, predict: bool = False) -> Tensor | None:
        """The Pyro model (see :mod:`hvi.model`)."""
        return _model(self, batch, inner_steps=inner_steps, predict=predict)

    def guide(self, batch: TaskBatch, *, inner_steps: int | None = None, predict: bool = False) -> dict[str, Any]:
        """The Pyro guide (see :mod:`hvi.guide`)."""
        return _guide(self, batch, inner_steps=inner_steps, predict=predict)

    def config(self) -> dict[str, Any]:
        """The settings that define this model, JSON-serialisable."""
        return {
            "method": self.method,
            "q_theta": self.q_theta,
            "objective": self.objective,
            "q_theta_init_scale": self.q_theta_init_scale,
            "inner": dataclasses.asdict(self.inner),
            "prior": type(self.prior.prior).__name__,
            "likelihood": type(self.likelihood).__name__,
            "num_weights": self.net.num_weights,
        }
