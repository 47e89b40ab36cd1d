"""A normalizing-flow q(θ) over the latent global sites jointly (``q_theta="flow"``).

The diagonal Normal q(θ) of ``q_theta="normal"`` cannot represent a skewed or
correlated posterior of the group-level parameters: the classic case is a
group scale τ, whose posterior in log τ is skewed (a long tail toward τ → 0, a
funnel with the group effects). For such small hierarchical models the flow
is the richer family::

    u ~ N(0, I_D)  →  z = loc + scale ⊙ S_L ∘ … ∘ S_1(u)  →  θ_site = T_site(z[site])

D is the total size of the latent global sites, S_l monotone rational-quadratic
splines (Durkan et al. 2019), autoregressive across the D coordinates (so they
also capture correlations; elementwise when D = 1), identity outside
``[-bound, bound]``, and T_site = ``biject_to(site.constraint)``. The affine
layer starts at the sites' initial values with ``init_scale``, like the
Normal family. Its parameters live in the param store under
``q_theta.flow.*`` (registered with ``pyro.module``).

In the guide, z is an auxiliary sample site (``q_theta.z``) and every latent
site is a ``Delta`` at T_site(z) carrying the log-Jacobian of T_site, the
pattern of Pyro's ``AutoContinuous`` guides, so ``Trace_ELBO`` sees
log q(θ) = log q(z) − log|det ∂T/∂z|.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import biject_to

from hvi import names
from hvi.sites import GlobalSite

__all__ = ["GlobalFlow", "MAX_DIM"]

#: Largest number of latent global numbers a flow covers: its conditioner network has
#: hidden layers of width 10·D, so its size grows like D².
MAX_DIM = 64


class GlobalFlow(nn.Module):
    """q(θ) as a spline flow over the concatenated unconstrained latent sites.

    Args:
        sites: The latent global sites by Pyro name, in a fixed order.
        init_scale: Initial std of the affine layer (per coordinate).
        layers: Spline layers. Defaults to 2.
        bins: Spline segments per coordinate. Defaults to 8.
        bound: Half-width of the spline's domain in standardized units;
            identity outside. Defaults to 4.0.
    """

    def __init__(
        self,
        sites: Mapping[str, GlobalSite],
        init_scale: float,
        layers: int = 2,
        bins: int = 8,
        bound: float = 4.0,
    ) -> None:
        super().__init__()
        if not sites:
            raise ValueError("q_theta='flow' needs latent global sites (a prior with a hyperprior).")
        self.names = list(sites)
        self.shapes = {n: s.shape for n, s in sites.items()}
        self.constraints = {n: s.constraint for n, s in sites.items()}
        ref = next(iter(sites.values())).init
        u0 = torch.cat([biject_to(s.constraint).inv(s.init).reshape(-1) for s in sites.values()])
        self.dim = u0.numel()
        if self.dim > MAX_DIM:
            raise ValueError(
                f"q_theta='flow' covers the latent global sites jointly, here {self.dim} numbers "
                f"({', '.join(self.names[:4])}{', ...' if len(self.names) > 4 else ''}); its autoregressive "
                f"spline is meant for at most {MAX_DIM} (the group-level parameters of a hierarchical model). "
                "Use q_theta='normal' for network-sized latents."
            )
        self.loc = nn.Parameter(u0.detach().clone())
        # softplus⁻¹(init_scale): the scale stays positive by construction.
        self.raw_scale = nn.Parameter(torch.full_like(u0, math.log(math.expm1(init_scale))))
        make = (lambda: T.Spline(1, count_bins=bins, bound=bound)) if self.dim == 1 else (
            lambda: T.spline_autoregressive(self.dim, count_bins=bins, bound=bound)
        )
        self.splines = nn.ModuleList(make() for _ in range(layers))
        self.to(device=ref.device, dtype=ref.dtype)

    def dist(self) -> dist.TransformedDistribution:
        """q(z) over the unconstrained concatenation, event shape ``(D,)``."""
        base = dist.Normal(torch.zeros_like(self.loc), torch.ones_like(self.loc)).to_event(1)
        affine = T.AffineTransform(self.loc, F.softplus(self.raw_scale), event_dim=1)
        return dist.TransformedDistribution(base, [*self.splines, affine])

    def sample_sites(self, name: str = names.FLOW_LATENT) -> dict[str, Tensor]:
        """Samples z (auxiliary site ``name``) and every latent site as a Delta; returns the site values."""
        z = pyro.sample(name, self.dist(), infer={"is_auxiliary": True})
        lead = z.shape[:-1]
        values = {}
        offset = 0
        for n in self.names:
            shape = self.shapes[n]
            size = math.prod(shape)
            u = z[..., offset : offset + size].reshape(lead + shape)
            offset += size
            t = biject_to(self.constraints[n])
            v = t(u)
            k = len(shape)
            log_det = t.log_abs_det_jacobian(u, v)
            log_det = log_det.reshape(lead + (-1,)).sum(-1) if k else log_det
            values[n] = pyro.sample(n, dist.Delta(v, log_density=-log_det, event_dim=k))
        return values
