"""Likelihoods p(y | f_φ(x)): Gaussian (fixed, learned or known noise) and categorical.

A likelihood turns network outputs into a distribution over targets and may
own global sites (a learned noise scale). Add your own by subclassing
:class:`Likelihood` and registering it with :func:`register_likelihood`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from hvi.distributions import Normal
from hvi.registry import Registry
from hvi.sites import GlobalSite

__all__ = [
    "Likelihood",
    "Gaussian",
    "Categorical",
    "register_likelihood",
    "get_likelihood",
    "list_likelihoods",
]


class Likelihood(ABC):
    """Maps network outputs to a distribution over targets.

    Attributes:
        is_classification: Whether targets are int64 class labels.
        needs_noise: Whether a known per-observation noise std must be given.
    """

    is_classification: bool = False
    needs_noise: bool = False

    def global_sites(self) -> dict[str, GlobalSite]:
        """Global parameters of the likelihood (e.g. ``{"noise": ...}``); none by default."""
        return {}

    @abstractmethod
    def dist(
        self, output: Tensor, params: Mapping[str, Tensor], noise: Tensor | None, event_dim: int
    ) -> dist.Distribution:
        """Distribution of the targets.

        Args:
            output: Network output ``(..., N, *out_shape)``.
            params: Values of :meth:`global_sites`, keyed by site name, already
                right-aligned with the output (see :func:`hvi.priors.base.pad_site`).
            noise: Known noise std shaped like the targets, or ``None``.
            event_dim: Number of per-example target dims (``len(y_shape)``).

        Returns:
            A distribution with batch shape ``output.shape[:-len(out_shape)]``
            (so ``(..., N)``) and event shape ``y_shape``.
        """

    def observe(
        self,
        output: Tensor,
        params: Mapping[str, Tensor],
        noise: Tensor | None,
        event_dim: int,
        mask: Tensor | None = None,
    ) -> dist.Distribution:
        """:meth:`dist`, with the unobserved targets (``mask == False``) left out of ``log_prob``.

        ``mask`` is a bool tensor right-aligned with the targets (``(..., N,
        *y_shape)``); masked entries contribute exactly 0 to the log-density
        and nothing to its gradients (their target values must still be
        finite: fill missing values with 0). Per-element masking needs
        :meth:`dist` to return an ``Independent`` over ``event_dim`` dims (or
        ``event_dim == 0``), as the built-in likelihoods do.
        """
        return mask_targets(self.dist(output, params, noise, event_dim), mask, event_dim)

    def check_targets(self, name: str, y: Tensor) -> None:
        """Raises ``ValueError`` if targets ``y`` (argument ``name``) do not fit."""
        if not y.is_floating_point():
            raise ValueError(
                f"{name} has dtype {y.dtype} but a regression likelihood needs floating targets; "
                "cast it with .float() or use likelihood='categorical' for class labels."
            )


def mask_targets(d: dist.Distribution, mask: Tensor | None, event_dim: int) -> dist.Distribution:
    """``d`` (event shape = the targets' ``event_dim`` dims) with the entries where ``mask`` is False left out.

    Raises:
        TypeError: If ``d`` is neither unbatched over targets (``event_dim == 0``)
            nor an ``Independent`` over exactly ``event_dim`` dims.
    """
    if mask is None:
        return d
    if event_dim == 0:
        return d.mask(mask)
    if isinstance(d, torch.distributions.Independent) and d.reinterpreted_batch_ndims == event_dim:
        return d.base_dist.mask(mask).to_event(event_dim)
    raise TypeError(
        f"the likelihood's distribution is a {type(d).__name__}, which cannot be masked per target "
        f"element; return base.to_event({event_dim}) from Likelihood.dist() or drop support_mask/query_mask."
    )


class Gaussian(Likelihood):
    """Gaussian likelihood ``y ~ Normal(f(x), σ)``.

    Args:
        noise: ``"learned"`` (a global positive site, default), ``"known"`` (a
            per-observation std supplied with the data as
            ``support_noise``/``query_noise``), or a positive float (fixed σ).
        init_scale: Initial σ when learned (default None: 1.0). The inner gradient
            scales like 1/σ², so a small initial σ calls for a small inner lr.
            Refused with a fixed or known σ, where it would be silently unused.
        hyperprior: Optional hyperprior on a learned σ (makes it latent).
    """

    def __init__(
        self,
        noise: str | float = "learned",
        init_scale: float | None = None,
        hyperprior: dist.Distribution | None = None,
    ) -> None:
        if isinstance(noise, str):
            if noise not in ("learned", "known"):
                raise ValueError(
                    f"noise={noise!r} is not understood; use 'learned', 'known' or a positive float."
                )
        elif not float(noise) > 0:
            raise ValueError(f"noise={noise} must be a positive standard deviation.")
        if init_scale is not None and noise != "learned":
            raise ValueError(
                f"Gaussian likelihood: init_scale={init_scale} is the initial value of a learned σ, but "
                f"noise={noise!r} is not learned; drop init_scale, or set noise='learned' as well."
            )
        init_scale = 1.0 if init_scale is None else init_scale
        if not init_scale > 0:
            raise ValueError(f"init_scale={init_scale} must be positive.")
        self.noise = noise
        self.init_scale = float(init_scale)
        self.hyperprior = hyperprior
        self.needs_noise = noise == "known"

    def global_sites(self) -> dict[str, GlobalSite]:
        if self.noise != "learned":
            return {}
        return {
            "noise": GlobalSite(
                torch.tensor(self.init_scale), constraints.positive, self.hyperprior
            )
        }

    def scale(self, params: Mapping[str, Tensor], noise: Tensor | None) -> Tensor | float:
        """The observation std σ: learned, known (per observation) or fixed."""
        if self.noise == "learned":
            return params["noise"]
        if self.noise == "known":
            if noise is None:
                raise ValueError(
                    "likelihood Gaussian(noise='known') needs per-observation noise: pass "
                    "support_noise and query_noise in the TaskBatch."
                )
            return noise
        return float(self.noise)

    def dist(self, output, params, noise, event_dim):
        return Normal(output, self.scale(params, noise)).to_event(event_dim)


class Categorical(Likelihood):
    """Categorical likelihood over the last output dim (logits)."""

    is_classification = True

    def dist(self, output, params, noise, event_dim):
        return dist.Categorical(logits=output).to_event(event_dim)

    def check_targets(self, name: str, y: Tensor) -> None:
        if y.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"{name} has dtype {y.dtype} but the categorical likelihood needs int64 class "
                "labels; cast it with .long()."
            )
        if y.numel() and int(y.min()) < 0:
            raise ValueError(f"{name} has negative class labels; labels must be 0..C-1.")


#: The registered likelihoods (see :class:`hvi.registry.Registry`).
LIKELIHOODS: Registry[Likelihood] = Registry("likelihood")


def register_likelihood(name: str) -> Callable[[Callable[..., Likelihood]], Callable[..., Likelihood]]:
    """Decorator registering a likelihood class or builder under ``name`` (duplicates raise)."""
    return LIKELIHOODS.register(name)


register_likelihood("gaussian")(Gaussian)
register_likelihood("categorical")(Categorical)


def get_likelihood(name: str | Likelihood, **cfg) -> Likelihood:
    """Returns ``name`` if it is a :class:`Likelihood`, else builds the registered one."""
    if isinstance(name, Likelihood):
        return name
    return LIKELIHOODS.build(name, **cfg)


def list_likelihoods() -> list[str]:
    """Names of the registered likelihoods, sorted."""
    return LIKELIHOODS.names()
