"""The names hvi gives its Pyro params: one place for the guide, checkpoints, diagnostics and tests.

* ``theta.<weight>.<site>``, ``theta.<site>``, ``likelihood.<site>``: a
  point-estimated global site's own name (the model's ``pyro.param``);
* ``q_theta.<site>``: q(θ)'s point mass of a latent site (``q_theta="delta"``);
* ``q_theta.<site>.loc`` / ``.scale``: its diagonal Normal (``q_theta="normal"``);
* ``q_theta.flow$$$<parameter>``: the flow's parameters (``q_theta="flow"``,
  registered with ``pyro.module`` under :data:`FLOW_MODULE`);
* ``inner_lr.<weight>.<key>``: a learned inner step size (``learn_lr``).
"""

from __future__ import annotations

__all__ = ["FLOW_MODULE", "FLOW_LATENT", "q_theta_point", "q_theta_normal", "q_theta_flow", "inner_lr"]

#: ``pyro.module`` name of the flow q(θ).
FLOW_MODULE = "q_theta.flow"
#: The flow's auxiliary sample site (the unconstrained concatenation of the latent sites).
FLOW_LATENT = "q_theta.z"


def q_theta_point(site: str) -> str:
    """The param of q(θ)'s point mass at latent ``site``."""
    return f"q_theta.{site}"


def q_theta_normal(site: str) -> tuple[str, str]:
    """The ``(loc, scale)`` params of q(θ)'s Normal over latent ``site`` (unconstrained space)."""
    return f"q_theta.{site}.loc", f"q_theta.{site}.scale"


def q_theta_flow(parameter: str) -> str:
    """The param-store name of the flow's module ``parameter`` (Pyro's ``module$$$param`` rule)."""
    return f"{FLOW_MODULE}$$${parameter}"


def inner_lr(weight: str, key: str) -> str:
    """The param of a learned inner step size α of ``weight``'s λ tensor ``key``."""
    return f"inner_lr.{weight}.{key}"
