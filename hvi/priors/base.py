"""The hierarchical-prior interface and its registry.

A prior says two things:

* what the global latents θ are: per weight tensor (:meth:`weight_sites`)
  and shared by all weights (:meth:`shared_sites`), each a
  :class:`~hvi.sites.GlobalSite` (initial value, constraint, optional
  hyperprior p(θ));
* how p(φ | θ) is built for a weight tensor from θ (:meth:`local`), as any
  distribution with ``rsample`` whose batch shape broadcasts to the weight.

The guide family q(φ; λ) is :attr:`family` (diagonal Normal by default) and
the inner loop adapts λ; KL(q ‖ p) is analytic where PyTorch/Pyro know it and
Monte Carlo otherwise. :meth:`HierarchicalPrior.bind` checks a prior against a
network once, at construction, so mistakes surface as one clear error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor
from torch.distributions import kl_divergence

from hvi.families import GuideFamily, NormalFamily
from hvi.registry import Registry
from hvi.sites import GlobalSite

__all__ = ["HierarchicalPrior", "BoundPrior", "check_hyperparameter", "constant_like", "loc_scale_sites", "register_prior", "get_prior", "list_priors", "PRIORS"]


class HierarchicalPrior(ABC):
    """Base class for p(θ) p(φ | θ) over the weights of a network.

    Subclasses implement :meth:`weight_sites` and :meth:`local`; optionally
    :meth:`shared_sites` and :attr:`family`. Register one with
    :func:`register_prior` to use it by name. A minimal prior::

        @register_prior("my-normal")
        class MyNormal(HierarchicalPrior):
            '''Normal p(φ|θ) = N(μ, σ²), μ per weight, one σ per tensor.'''

            def weight_sites(self, name, weight):
                return {"loc": GlobalSite(weight.detach().clone()),
                        "scale": GlobalSite(weight.new_tensor(0.1), constraints.positive)}

            def local(self, name, theta):
                return dist.Normal(theta["loc"], theta["scale"])

    The guide's q(φ_i; λ_i) is :attr:`family`, a diagonal Normal unless the
    prior sets another :class:`~hvi.families.GuideFamily` as a class
    attribute. A family names its λ tensors (``param_names``), starts them
    from p(φ | θ) (``init``), builds q (``dist``, which should have
    ``rsample``) and draws φ from standard-normal noise (``sample``, the
    reparameterization); the inner loop adapts λ by gradient ascent, so no
    gradient code is written by hand. KL(q ‖ p) is analytic where
    ``torch.distributions.kl_divergence`` knows the pair and Monte Carlo otherwise.
    """

    #: The variational family of q(φ_i; λ_i); Normal unless a prior says otherwise.
    family: GuideFamily = NormalFamily()

    def shared_sites(self, weights: Mapping[str, Tensor]) -> dict[str, GlobalSite]:
        """Global latents shared by all weight tensors (e.g. a global shrinkage scale).

        Their shapes must broadcast to every weight's shape. None by default.
        """
        return {}

    @abstractmethod
    def weight_sites(self, name: str, weight: Tensor) -> dict[str, GlobalSite]:
        """Global latents belonging to weight tensor ``name`` (initial value ``weight``).

        Each site's shape must broadcast to ``weight.shape`` (e.g. ``weight.shape``
        for a per-weight mean, ``()`` for one scale per tensor).
        """

    @abstractmethod
    def local(self, name: str, theta: Mapping[str, Tensor]) -> dist.Distribution:
        """p(φ | θ) for weight ``name``.

        Args:
            name: The weight tensor's name.
            theta: This weight's sites (by the keys of :meth:`weight_sites`)
                and the shared sites (by the keys of :meth:`shared_sites`).
                Values may carry extra leading batch dims; broadcast, don't index.

        Returns:
            A distribution without ``to_event`` whose batch shape broadcasts to
            the weight's shape.
        """

    def bind(self, weights: Mapping[str, Tensor]) -> "BoundPrior":
        """Checks this prior against a network's weights and fixes its sites."""
        return BoundPrior(self, weights)


def check_hyperparameter(name: str, value: Any, what: str = "positive") -> float:
    """A prior's scale, rate or shape argument as a float, checked to be ``> 0`` (NaN is not).

    Raises:
        ValueError: ``"{name}={value} must be {what}."``, e.g. ``what="a positive standard deviation"``.
    """
    if not value > 0:
        raise ValueError(f"{name}={value} must be {what}.")
    return float(value)


def constant_like(weight: Tensor, value: float) -> Tensor:
    """``value`` in the shape of ``weight``, stored once (an expanded scalar), not once per weight."""
    return weight.new_full((), value).expand(weight.shape)


def loc_scale_sites(weight: Tensor, scale0: Tensor, *, hyperprior: bool, loc_scale: float) -> dict[str, GlobalSite]:
    """The usual pair of sites: a mean per weight and a positive scale (shape of ``scale0``).

    With ``hyperprior`` both are latent: μ ~ N(0, loc_scale²), σ ~ LogNormal(log scale0, 1).
    """
    loc_hp = dist.Normal(constant_like(weight, 0.0), loc_scale) if hyperprior else None
    scale_hp = dist.LogNormal(scale0.log(), 1.0) if hyperprior else None
    return {
        # No copy: ``weight`` is the network's private snapshot (FunctionalNet.init_weights),
        # and a site's init is only ever read (GlobalSite.fresh_init copies it).
        "loc": GlobalSite(weight.detach(), constraints.real, loc_hp),
        "scale": GlobalSite(scale0, constraints.positive, scale_hp),
    }


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(reversed(shape), reversed(target)))


def pad_site(value: Tensor, site_shape: torch.Size, event_ndim: int) -> Tensor:
    """Right-aligns a site value ``(*pre, *site_shape)`` with ``event_ndim`` event dims.

    Leading batch dims ``pre`` (Monte Carlo particles, plates) stay in front,
    so a scalar per-tensor scale broadcasts correctly against a batched weight.
    """
    pad = event_ndim - len(site_shape)
    if pad <= 0:
        return value
    pre = value.shape[: value.dim() - len(site_shape)]
    return value.reshape(pre + (1,) * pad + tuple(site_shape))


class BoundPrior:
    """A prior checked against one network: every site named and validated.

    Site names in the Pyro model are ``theta.<weight>.<site>`` for per-weight
    sites and ``theta.<site>`` for shared ones.

    Raises:
        ValueError: naming the weight tensor and the problem, if a site does not
            broadcast to its weight, p(φ | θ) has the wrong shape or no
            ``rsample``, a scale is declared unconstrained, or the guide family
            cannot start from the prior.
    """

    def __init__(self, prior: HierarchicalPrior, weights: Mapping[str, Tensor]) -> None:
        self.prior = prior
        self.family = prior.family
        self.weight_shapes = {n: w.shape for n, w in weights.items()}
        self.shared = dict(prior.shared_sites(weights))
        self.per_weight: dict[str, dict[str, GlobalSite]] = {}
        for name, w in weights.items():
            sites = dict(prior.weight_sites(name, w))
            for key, site in sites.items():
                self._check_site(f"weight '{name}' site '{key}'", site, w.shape)
                if key in self.shared:
                    raise ValueError(
                        f"weight '{name}': site '{key}' clashes with a shared site of the same "
                        "name; rename one of them."
                    )
            self.per_weight[name] = sites
        for key, site in self.shared.items():
            for name, w in weights.items():
                self._check_site(f"shared site '{key}' (against weight '{name}')", site, w.shape)
        self.analytic_kl: dict[str, bool] = {}
        for name, w in weights.items():
            self._check_local(name, w)

    # -- names ---------------------------------------------------------------
    def site_name(self, weight: str | None, key: str) -> str:
        return f"theta.{key}" if weight is None else f"theta.{weight}.{key}"

    def sites(self) -> dict[str, GlobalSite]:
        """Every global site of the prior by its Pyro name."""
        out = {self.site_name(None, k): s for k, s in self.shared.items()}
        for name, sites in self.per_weight.items():
            out.update({self.site_name(name, k): s for k, s in sites.items()})
        return out

    def theta_for(self, name: str, values: Mapping[str, Tensor], event_ndim: int | None = None) -> dict[str, Tensor]:
        """The θ dict :meth:`HierarchicalPrior.local` receives for weight ``name``.

        ``values`` maps Pyro site names to values. With ``event_ndim`` the
        values are right-aligned to that many weight dims (see :func:`pad_site`).
        """
        out = {}
        for key, site in self.shared.items():
            out[key] = values[self.site_name(None, key)]
            if event_ndim is not None:
                out[key] = pad_site(out[key], site.shape, event_ndim)
        for key, site in self.per_weight[name].items():
            out[key] = values[self.site_name(name, key)]
            if event_ndim is not None:
                out[key] = pad_site(out[key], site.shape, event_ndim)
        return out

    def local(self, name: str, values: Mapping[str, Tensor], event_ndim: int | None = None) -> dist.Distribution:
        return self.prior.local(name, self.theta_for(name, values, event_ndim))

    def kl(self, q: dist.Distribution, p: dist.Distribution, phi: Tensor | None) -> Tensor:
        """Σ KL(q ‖ p) over one weight tensor: analytic if known, else MC at samples ``phi``.

        ``phi`` is ``(S, *w)`` draws from q used for the Monte Carlo estimate.
        """
        try:
            return kl_divergence(q, p).sum()
        except NotImplementedError:
            assert phi is not None
            return (q.log_prob(phi) - p.log_prob(phi)).sum() / phi.shape[0]

    def has_analytic_kl(self, q: dist.Distribution, p: dist.Distribution) -> bool:
        try:
            kl_divergence(q, p)
        except NotImplementedError:
            return False
        return True

    # -- checks --------------------------------------------------------------
    @staticmethod
    def _check_site(what: str, site: GlobalSite, weight_shape: torch.Size) -> None:
        if not isinstance(site, GlobalSite):
            raise ValueError(f"{what}: expected a hvi.GlobalSite, got {type(site).__name__}.")
        if not _broadcasts_to(site.shape, weight_shape):
            raise ValueError(
                f"{what} has shape {tuple(site.shape)}, which does not broadcast to the weight's "
                f"shape {tuple(weight_shape)}; use the weight's shape, a trailing sub-shape, or ()."
            )
        if not bool(site.constraint.check(site.init).all()):
            raise ValueError(f"{what}: initial value lies outside its constraint {site.constraint}.")
        if site.hyperprior is not None:
            hp = site.hyperprior
            if not _broadcasts_to(hp.batch_shape + hp.event_shape, site.shape):
                raise ValueError(
                    f"{what}: hyperprior has shape {tuple(hp.batch_shape + hp.event_shape)}, "
                    f"which does not broadcast to the site's shape {tuple(site.shape)}."
                )

    def _init_values(self) -> dict[str, Tensor]:
        return {n: s.init for n, s in self.sites().items()}

    def _check_local(self, name: str, w: Tensor) -> None:
        values = self._init_values()
        with pyro.validation_enabled(True):
            try:
                p = self.local(name, values)
            except (ValueError, RuntimeError) as e:
                raise ValueError(f"weight '{name}': building p(φ | θ) failed: {e}") from e
        if not isinstance(p, torch.distributions.Distribution):
            raise ValueError(
                f"weight '{name}': local() must return a distribution, got {type(p).__name__}."
            )
        if p.event_shape:
            raise ValueError(
                f"weight '{name}': p(φ | θ) has event shape {tuple(p.event_shape)}; return it "
                "without .to_event(), hvi adds the event dims for you."
            )
        if torch.broadcast_shapes(p.batch_shape, w.shape) != w.shape:
            raise ValueError(
                f"weight '{name}': p(φ | θ) has batch shape {tuple(p.batch_shape)}, which does not "
                f"broadcast to the weight's shape {tuple(w.shape)}; check the shapes of its sites."
            )
        if not p.has_rsample:
            raise ValueError(
                f"weight '{name}': p(φ | θ) is {type(p).__name__}, which has no rsample; use a "
                "reparameterizable distribution (Normal, Laplace, StudentT, LogNormal, ...)."
            )
        self._check_unconstrained_scales(name, values)
        try:
            lam = self.family.init(p)
            lam = {k: v.expand(w.shape) for k, v in lam.items()}
        except (NotImplementedError, RuntimeError, ValueError) as e:
            raise ValueError(
                f"weight '{name}': the guide family {type(self.family).__name__} cannot start from "
                f"p(φ | θ) = {type(p).__name__}: {e}"
            ) from e
        bad = [k for k, v in lam.items() if not bool(torch.isfinite(v).all())]
        if bad:
            raise ValueError(
                f"weight '{name}': λ^(0) {bad} from p(φ | θ) = {type(p).__name__} is not finite "
                "(no finite mean/stddev?); give the prior a guide family whose init() handles it."
            )
        q = self.family.dist(lam)
        self.analytic_kl[name] = self.has_analytic_kl(q, p.expand(w.shape))

    def _check_unconstrained_scales(self, name: str, values: dict[str, Tensor]) -> None:
        # A site declared real but used as a scale breaks once training makes it
        # negative: probe by flipping each real site's sign under validation.
        sites = {self.site_name(None, k): s for k, s in self.shared.items()}
        sites.update({self.site_name(name, k): s for k, s in self.per_weight[name].items()})
        for full, site in sites.items():
            if site.constraint is not constraints.real:
                continue
            probe = dict(values)
            probe[full] = -site.init.abs() - 1.0
            with pyro.validation_enabled(True):
                try:
                    self.local(name, probe)
                except ValueError as e:
                    raise ValueError(
                        f"weight '{name}': site '{full}' is declared unconstrained "
                        "(constraints.real) but p(φ | θ) rejects negative values for it; declare "
                        f"constraint=constraints.positive. ({str(e).splitlines()[0]})"
                    ) from None


#: The registered priors (see :class:`hvi.registry.Registry`).
PRIORS: Registry[HierarchicalPrior] = Registry("prior")


def register_prior(name: str) -> Callable[[Callable[..., HierarchicalPrior]], Callable[..., HierarchicalPrior]]:
    """Decorator registering a prior class or builder under ``name`` (duplicates raise)."""
    return PRIORS.register(name)


def get_prior(name: str | HierarchicalPrior, **cfg) -> HierarchicalPrior:
    """Returns ``name`` if it is a prior, else builds the registered prior ``name``."""
    if isinstance(name, HierarchicalPrior):
        return name
    return PRIORS.build(name, **cfg)


def list_priors() -> list[str]:
    """Names of the registered priors, sorted."""
    return PRIORS.names()


def describe_prior(name: str) -> str:
    """First line of the registered prior's docstring."""
    return PRIORS.describe(name)
