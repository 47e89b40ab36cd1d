"""ArviZ diagnostics of a fitted model: an ``InferenceData``, Pareto k̂ of q(φ_i), calibration.

:func:`to_inference_data` turns a trained :class:`~hvi.MetaModel` and a batch
of held-out tasks into an :class:`arviz.InferenceData` (``az.summary``,
``az.loo``, ``az.waic``, ``az.plot_ppc``, ``az.plot_loo_pit`` run on it, and it
round-trips through ``to_netcdf`` / ``az.from_netcdf``). The VI checks are
:func:`pareto_k` (is each task's q(φ_i) close to its exact conditional
posterior?), :func:`interval_coverage` and :func:`pit` (regression) and
:func:`reliability` (classification). ``docs/diagnostics.md`` says how to read them.

Groups of the InferenceData (every variable leads with ``(chain, draw)``;
there is one chain, since the draws are independent draws from q, not a
Markov chain, so ``r_hat`` is NaN):

* ``posterior``: θ from q(θ) and per-task summaries of the adapted q(φ_i).
  With ``q_theta="normal"``, ``num_samples`` draws of the latent global
  sites; with ``q_theta="delta"`` (point estimates) one draw of every global
  site and the attribute ``point_estimate = 1``. Per task and weight tensor
  (dims ``task``, ``layer``): ``phi_shift`` (root mean square over the
  tensor of E_q[φ_i] − E[φ | θ], how far adaptation moved the weights from
  the prior), ``phi_scale`` (mean std of q(φ_i)) and ``phi_kl``
  (KL(q(φ_i) ‖ p(φ_i | θ)) summed over the tensor; Monte Carlo where not analytic).
  Small models (at most ``max_whole`` weights) with ``q_theta="normal"``
  also get the draws of the group effects themselves, ``phi.<weight>``
  (dims ``task`` and the weight's, none for a one-number weight), each drawn
  from q(φ_i) adapted under that draw of θ: eight schools' ``phi.effect``
  reads like a Stan summary's ``theta[j]`` (:func:`plot_group_effects`).
* ``constant_data``: the query inputs ``x``, ``observed_mask`` when the batch
  has a ``query_mask`` (unobserved targets are left out of ``log_likelihood``,
  coverage, PIT and lppd), and, with ``q_theta="normal"``, the global sites
  that have no hyperprior (point estimates, not drawn).
* ``posterior_predictive``: replicated query targets ``y`` and network outputs
  ``f`` (dims ``task``, ``point`` and the target's dims) from the model's
  predictive path, the sites ``pyro.infer.Predictive`` returns.
* ``observed_data``: the query targets ``y``.
* ``log_likelihood``: ``y``, log p(y_ij | f_φ(x_ij)) per query point (dims
  ``task``, ``point``).
* ``sample_stats``: with an ELBO trace, ``elbo`` per training step (dim
  ``step``) and, from a run's metrics.jsonl, its parts ``ell``, ``local_kl``
  and ``global_kl`` (ELBO = ell − local_kl − global_kl, :mod:`hvi.elbo_parts`);
  ``inner_elbo``, the support objective L_S of each held-out task after
  0, 1, ..., K inner steps (dims ``task``, ``inner_step``; :func:`inner_objective`).

A target of shape ``(1,)`` (one number per point) is stored without its
trailing dim, so that ``y`` and its log-likelihood share their dims (which
``az.plot_loo_pit`` needs); image targets keep theirs (``channel``, ``row``, ``col``).

Names of the global sites. Pyro names them ``theta.<key>`` (a site shared by
all weights), ``theta.<weight>.<key>`` (a site of one weight tensor) and
``likelihood.<key>``; the posterior calls them:

=========================  ===================================================
Pyro site                  posterior variable
=========================  ===================================================
``theta.<key>``            ``<key>``: ``theta.mu`` → ``mu``, ``theta.tau`` → ``tau``
``theta.<weight>.<key>``   small models (at most ``max_whole`` weights): the
                           whole array ``<weight>.<key>`` (``theta.w.loc`` → ``w.loc``);
                           networks: ``<key>_mean`` and ``<key>_rms`` (mean and
                           root mean square over the tensor) with dim ``layer``
                           (coords: the weight names)
``likelihood.<key>``       ``<key>`` (``likelihood.noise`` → ``noise``)
=========================  ===================================================

A name already taken keeps its Pyro name (``theta.<key>_mean`` for a
summary). The attribute ``site_names`` (JSON) maps every posterior variable
back to its Pyro site.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor
from torch.distributions import biject_to, kl_divergence

from hvi import names
from hvi.elbo_parts import PARTS as ELBO_PARTS
from hvi.guide import guide_globals
from hvi.likelihoods import mask_targets
from hvi.meta import MetaModel
from hvi.model import forward
from hvi.priors.base import pad_site
from hvi.tasks import TaskBatch
from hvi.validation import validate_batch

if TYPE_CHECKING:
    import arviz

__all__ = [
    "Coverage",
    "ParetoK",
    "Reliability",
    "heldout_lppd",
    "inner_objective",
    "interval_coverage",
    "log_importance_ratios",
    "pareto_k",
    "pit",
    "plot_elbo",
    "plot_group_effects",
    "plot_image_grid",
    "plot_inner_elbo",
    "plot_pareto_k",
    "plot_pit",
    "plot_reconstructions",
    "plot_reliability",
    "readable_site_names",
    "reliability",
    "to_inference_data",
]

#: Up to this many network weights, per-weight global sites are stored whole.
MAX_WHOLE = 64
#: k̂ thresholds (Yao et al. 2018): below GOOD the importance ratios have a
#: light tail; between GOOD and OK usable; at or above OK the q is unreliable.
K_GOOD, K_OK = 0.5, 0.7
#: Per-task summaries of q(φ_i) in the posterior.
PHI_SUMMARIES = ("phi_shift", "phi_scale", "phi_kl")
#: Bytes of weight draws held at once (tasks × draws × weights × 4).
_BUDGET = 2.5e8
#: Draws per task and inner step of the inner objective trace (``sample_stats.inner_elbo``).
INNER_DRAWS = 16


# --------------------------------------------------------------------------- names


def _whole(meta: MetaModel, max_whole: int) -> bool:
    return meta.net.num_weights <= max_whole


def _names(meta: MetaModel, max_whole: int) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """(variable → Pyro site for whole sites, (key, stat) → variable for per-layer summaries)."""
    prior = meta.prior
    taken = set(PHI_SUMMARIES) | {"x", "y", "f"}
    whole: dict[str, str] = {}
    summary: dict[tuple[str, str], str] = {}

    def free(name: str) -> bool:
        return name not in taken and name not in whole and name not in summary.values()

    for key in prior.shared:
        pyro_name = prior.site_name(None, key)
        whole[key if free(key) else pyro_name] = pyro_name
    if _whole(meta, max_whole):
        for weight, sites in prior.per_weight.items():
            for key in sites:
                name, pyro_name = f"{weight}.{key}", prior.site_name(weight, key)
                whole[name if free(name) else pyro_name] = pyro_name
    else:
        for key in dict.fromkeys(k for sites in prior.per_weight.values() for k in sites):
            for stat in ("mean", "rms"):
                name = f"{key}_{stat}"
                summary[(key, stat)] = name if free(name) else f"theta.{name}"
    for key in meta.likelihood.global_sites():
        pyro_name = f"likelihood.{key}"
        whole[key if free(key) else pyro_name] = pyro_name
    return whole, summary


def readable_site_names(meta: MetaModel, *, max_whole: int = MAX_WHOLE) -> dict[str, str]:
    """Posterior variable → Pyro site name of every global site (see the module docstring).

    For networks (more than ``max_whole`` weights) the per-layer summaries
    ``<key>_mean`` / ``<key>_rms`` map to ``theta.*.<key>`` (``*``: the weight
    named by the ``layer`` coordinate).
    """
    whole, summary = _names(meta, max_whole)
    return {**whole, **{v: f"theta.*.{key}" for (key, _), v in summary.items()}}


def _target_dims(shape: Sequence[int], prefix: str) -> list[str]:
    """Names of a per-point target's dims (after squeezing a lone ``(1,)``)."""
    if len(shape) == 1:
        return [f"{prefix}output" if prefix else "output"]
    if len(shape) == 2:
        return [f"{prefix}row", f"{prefix}col"]
    if len(shape) == 3:
        return [f"{prefix}channel", f"{prefix}row", f"{prefix}col"]
    return [f"{prefix}dim_{i}" for i in range(len(shape))]


# --------------------------------------------------------------------------- sampling helpers


def _chunks(n: int, size: int | None) -> Iterator[slice]:
    size = n if size is None else max(1, int(size))
    for a in range(0, n, size):
        yield slice(a, min(a + size, n))


@contextlib.contextmanager
def _seeded(batch: TaskBatch, seed: int) -> Iterator[None]:
    """Forks torch's RNG (and the batch device's) and seeds it: the caller's stream is untouched."""
    devices = [batch.support_x.device.index or 0] if batch.support_x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _np(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64 if t.is_floating_point() else t.dtype).numpy()


def _kl(q, p, phi: Tensor) -> Tensor:
    """KL(q ‖ p) per batch element: analytic where known, else one-sample Monte Carlo at ``phi``."""
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return q.log_prob(phi) - p.log_prob(phi)


def _rms(t: Tensor, ndim: int) -> Tensor:
    return t.square().flatten(t.dim() - ndim).mean(-1).sqrt() if ndim else t.abs()


def _mean(t: Tensor, ndim: int) -> Tensor:
    return t.flatten(t.dim() - ndim).mean(-1) if ndim else t


# --------------------------------------------------------------------------- InferenceData


def to_inference_data(
    meta: MetaModel,
    batch: TaskBatch,
    *,
    num_samples: int = 200,
    inner_steps: int | None = None,
    seed: int = 0,
    elbo_trace: Sequence[float] | Any | None = None,
    chunk_tasks: int | None = None,
    max_whole: int = MAX_WHOLE,
    inner_draws: int = INNER_DRAWS,
) -> "arviz.InferenceData":
    """An ``arviz.InferenceData`` of a trained model on held-out tasks (groups: module docstring).

    Each task is adapted to its support set (``inner_steps`` steps, default
    the training value) and its query targets are predicted by
    ``num_samples`` draws: of φ_i from q(φ_i), and of θ from q(θ) when
    ``q_theta="normal"`` (then every task chunk shares the same θ draws). The
    draws are those of ``pyro.infer.Predictive(meta.model, guide=meta.guide,
    parallel=True)``, taken in one vectorized guide pass per chunk.

    Args:
        meta: A trained model (θ is read from the Pyro param store).
        batch: Held-out tasks with support and query sets; the query targets
            must be known (finite). With no query points the predictive groups
            are left out.
        num_samples: Draws S (default 200).
        inner_steps: Adaptation steps (default: the training value).
        seed: Seed of the draws (torch's RNG is forked, the caller's is untouched).
        elbo_trace: The ELBO per training step (``FitResult.elbo``, or a
            :class:`~hvi.FitResult`, whose losses are negated), stored as
            ``sample_stats.elbo``; NaN marks a skipped step. A mapping
            ``{"elbo": ..., "ell": ..., "local_kl": ..., "global_kl": ...}``
            (:func:`read_metrics_trace` of a run's metrics.jsonl) stores the
            ELBO's parts next to it (:mod:`hvi.elbo_parts`).
        chunk_tasks: Adapt this many tasks at a time (default: all).
        max_whole: Networks with more weights get per-layer summaries of θ.
        inner_draws: Draws per task and inner step for ``sample_stats.inner_elbo``,
            the support objective after 0, 1, ..., K inner steps
            (:func:`inner_objective`); 0 leaves it out.

    Returns:
        The InferenceData; its groups carry the attributes ``hvi_version``,
        ``hvi_config`` (JSON of ``meta.config()``), ``q_theta``,
        ``point_estimate`` (1 for ``q_theta="delta"``), ``num_samples``,
        ``inner_steps``, ``seed`` and ``site_names`` (JSON, variable → Pyro site).
    """
    import arviz as az

    from hvi import __version__

    if not (isinstance(num_samples, int) and num_samples >= 1):
        raise ValueError(f"num_samples={num_samples!r} must be an integer >= 1.")
    validate_batch(batch, meta.likelihood, query_targets=True)
    S, B, Nq = num_samples, batch.batch_size, batch.query_x.shape[1]
    normal = meta.q_theta == "normal"
    layers = list(meta.net.shapes)

    ys, fs, lls, summaries = [], [], [], {k: [] for k in PHI_SUMMARIES}
    phi_draws: dict[str, list[Tensor]] = {}
    theta_draws: dict[str, Tensor] = {}
    with _seeded(batch, seed), torch.no_grad(), pyro.validation_enabled(False):
        if normal:
            # θ ~ q(θ) once, shared by every chunk of tasks.
            with pyro.plate("draws", S, dim=-3):
                tr = poutine.trace(guide_globals).get_trace(meta)
            theta_draws = {
                n: tr.nodes[n]["value"] for n, s in meta.sites.items() if s.latent
            }
        for s in _chunks(B, chunk_tasks):
            sub = batch.tasks(s)
            guide = poutine.condition(meta.guide, data=theta_draws)
            model = poutine.condition(meta.model, data=theta_draws)
            with pyro.plate("draws", S, dim=-3):
                gtr = poutine.trace(guide).get_trace(sub, inner_steps=inner_steps, predict=True)
                if Nq:  # the model's predictive path needs query points
                    mtr = poutine.trace(poutine.replay(model, gtr)).get_trace(
                        sub, inner_steps=inner_steps, predict=True
                    )
            if Nq:
                y_site = mtr.nodes["y"]
                f = mtr.nodes["f"]["value"]
                ys.append(y_site["value"].expand((S,) + y_site["value"].shape[-(sub.query_y.dim()):]))
                fs.append(f.expand((S,) + f.shape[1:]))
                ll = mask_targets(y_site["fn"], sub.query_mask, sub.query_y.dim() - 2).log_prob(sub.query_y)
                lls.append(ll.expand(S, *sub.query_y.shape[:2]))
            per: dict[str, list[Tensor]] = {k: [] for k in PHI_SUMMARIES}
            theta = {n: gtr.nodes[n]["value"] for n in meta.sites}  # θ's draws or params, as the guide saw them
            lam = gtr.nodes["_RETURN"]["value"]["lambda"]  # (B, *w), or (S, B, *w) under θ's draws
            for w, shape in meta.net.shapes.items():
                k, lead = len(shape), (S, sub.batch_size)
                # q(φ_i) from λ, not the site's fn, which the draws plate expands S-fold: with a
                # point-mass θ every draw has the same q, and its summaries are computed once.
                q = meta.prior.family.dist({key: v.unsqueeze(-k - 1) for key, v in lam[w].items()}).to_event(k)
                phi = gtr.nodes[f"phi.{w}"]["value"]
                phi = phi if normal else phi[:1]
                p = meta.prior.local(w, theta, event_ndim=k)  # p(φ | θ), as in the model
                p = p.expand(torch.broadcast_shapes(p.batch_shape, q.batch_shape + q.event_shape)).to_event(k)
                # (S | 1, B, 1, *w) → (S, B)
                per["phi_shift"].append(_rms(q.mean - p.mean, k).reshape(-1, sub.batch_size).expand(lead))
                per["phi_scale"].append(_mean(q.stddev, k).reshape(-1, sub.batch_size).expand(lead))
                per["phi_kl"].append(_kl(q, p, phi).reshape(-1, sub.batch_size).expand(lead))
            for key, v in per.items():
                summaries[key].append(torch.stack(v, -1))  # (S, b, layer)
            if normal and _whole(meta, max_whole):  # small models: the group effects φ_i themselves
                for w, shape in meta.net.shapes.items():
                    v = gtr.nodes[f"phi.{w}"]["value"].expand((S, sub.batch_size, 1) + tuple(shape))
                    phi_draws.setdefault(w, []).append(v.reshape((S, sub.batch_size) + tuple(shape)))

    # ---- posterior
    draws = S if normal else 1
    posterior: dict[str, np.ndarray] = {}
    constant: dict[str, np.ndarray] = {}
    dims: dict[str, list[str]] = {}
    coords: dict[str, Any] = {"task": _np(batch.task_index), "layer": layers}
    for key in PHI_SUMMARIES:
        v = torch.cat(summaries[key], 1)  # (S, B, layer)
        posterior[key] = _np(v if normal else v.mean(0, keepdim=True))[None]
        dims[key] = ["task", "layer"]
    for w, parts in phi_draws.items():  # φ_i ~ q(φ_i) given θ's draw: a weight of one number is (task,)
        v = torch.cat(parts, 1)
        v = v.reshape(S, B) if v[0, 0].numel() == 1 else v
        posterior[f"phi.{w}"] = _np(v)[None]
        dims[f"phi.{w}"] = ["task"] + [f"phi.{w}_dim_{i}" for i in range(v.dim() - 2)]

    def site_value(n: str) -> Tensor:
        """(draws, *site) of global site ``n``: q(θ)'s draws, or its point estimate as one draw."""
        site = meta.sites[n]
        if normal and site.latent:
            return theta_draws[n].reshape((S,) + tuple(site.shape))
        return pyro.param(names.q_theta_point(n) if site.latent else n).detach().reshape((1,) + tuple(site.shape))

    def put(var: str, value: Tensor, latent: bool, var_dims: list[str]) -> None:
        # With q_theta="normal" a site without a hyperprior is a point estimate, not drawn.
        if normal and not latent:
            constant[var] = _np(value[0])
        else:
            posterior[var] = _np(value)[None]
        dims[var] = var_dims

    whole_names, summary_names = _names(meta, max_whole)
    for var, n in whole_names.items():
        v = site_value(n)
        put(var, v, meta.sites[n].latent, [f"{var}_dim_{i}" for i in range(v.dim() - 1)])
    keys = dict.fromkeys(key for key, _ in summary_names)
    for key in keys:
        stats: dict[str, list[Tensor]] = {"mean": [], "rms": []}
        sites = {w: meta.prior.per_weight[w].get(key) for w in layers}
        latent = all(meta.sites[meta.prior.site_name(w, key)].latent for w, s in sites.items() if s is not None)
        n_draw = draws if latent else 1
        for w, site in sites.items():
            if site is None:  # this weight has no such site
                nan = torch.full((n_draw,), float("nan"), dtype=torch.float64)
                stats["mean"].append(nan)
                stats["rms"].append(nan)
                continue
            v = site_value(meta.prior.site_name(w, key)).double()
            stats["mean"].append(_mean(v, v.dim() - 1))
            stats["rms"].append(_rms(v, v.dim() - 1))
        for stat, vals in stats.items():
            # On the CPU (numpy next): the NaN rows are CPU tensors, the params may live on a GPU.
            put(summary_names[(key, stat)], torch.stack([t.cpu().expand(n_draw) for t in vals], -1), latent, ["layer"])

    groups: dict[str, Any] = {"posterior": posterior}
    # ---- predictive groups
    y_shape = tuple(batch.query_y.shape[2:])
    squeeze = y_shape == (1,)
    ydims = ["task", "point"] + ([] if squeeze or not y_shape else _target_dims(y_shape, "y_"))
    x_shape = tuple(batch.query_x.shape[2:])
    xsq = x_shape == (1,)
    xdims = ["task", "point"] + ([] if xsq else [f"x_dim_{i}" for i in range(len(x_shape))])
    if Nq:
        y_rep = torch.cat(ys, 1)
        f = torch.cat(fs, 1)
        y_obs = batch.query_y
        if squeeze:
            y_rep, y_obs = y_rep.squeeze(-1), y_obs.squeeze(-1)
            if tuple(f.shape[3:]) == (1,):
                f = f.squeeze(-1)
        fdims = ["task", "point"]
        extra = tuple(f.shape[3:])
        if meta.likelihood.is_classification and len(extra) == 1:
            fdims.append("class")
        elif extra == tuple(y_obs.shape[2:]):
            fdims += ydims[2:]
        else:
            fdims += [f"f_dim_{i}" for i in range(len(extra))]
        groups["posterior_predictive"] = {"y": _np(y_rep)[None], "f": _np(f)[None]}
        groups["observed_data"] = {"y": _np(y_obs)}
        log_lik = {"y": _np(torch.cat(lls, 1))[None]}
        dims["y"] = ydims
        dims["f"] = fdims
        coords["point"] = np.arange(Nq)
        x = batch.query_x.squeeze(-1) if xsq else batch.query_x
        constant["x"] = _np(x)
        dims["x"] = xdims
        if batch.query_mask is not None:  # which query targets are observed (e.g. solar daylight)
            mask = batch.query_mask.squeeze(-1) if squeeze else batch.query_mask
            constant["observed_mask"] = _np(mask)
            dims["observed_mask"] = ydims
    if constant:
        groups["constant_data"] = constant

    # ---- ELBO trace and its parts; the inner objective per inner step
    stats: dict[str, np.ndarray] = {}
    if elbo_trace is not None:
        trace = dict(elbo_trace) if isinstance(elbo_trace, Mapping) else {"elbo": getattr(elbo_trace, "elbo", elbo_trace)}
        if "elbo" not in trace:
            raise ValueError(f"elbo_trace has keys {sorted(trace)}; it needs 'elbo' (and optionally {ELBO_PARTS}).")
        n_steps = len(trace["elbo"])
        for key in ("elbo", *ELBO_PARTS):
            if key not in trace:
                continue
            v = np.asarray([np.nan if x is None else float(x) for x in trace[key]], dtype=np.float64)
            if v.size != n_steps:
                raise ValueError(f"elbo_trace[{key!r}] has {v.size} steps, elbo has {n_steps}.")
            stats[key] = v[None, None]
            dims[key] = ["step"]
        coords["step"] = np.arange(1, n_steps + 1)
    if inner_draws:
        k_inner = meta.inner.steps if inner_steps is None else int(inner_steps)
        stats["inner_elbo"] = inner_objective(
            meta, batch, inner_steps=k_inner, num_samples=inner_draws, seed=seed, chunk_tasks=chunk_tasks
        )[None, None]
        dims["inner_elbo"] = ["task", "inner_step"]
        coords["inner_step"] = np.arange(k_inner + 1)
    if stats:
        groups["sample_stats"] = stats

    idata = az.from_dict(**groups, dims=dims, coords=coords)
    if Nq:
        # One value per query point: its dims are the observed y's only for scalar targets.
        ll_coords = {"task": coords["task"], "point": coords["point"]}
        idata.add_groups(log_likelihood=az.dict_to_dataset(log_lik, dims={"y": ["task", "point"]}, coords=ll_coords))
    attrs = {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "hvi_version": __version__,
        "hvi_config": json.dumps(meta.config()),
        "q_theta": meta.q_theta,
        "point_estimate": 0 if normal else 1,
        "num_samples": S,
        "inner_steps": meta.inner.steps if inner_steps is None else int(inner_steps),
        "seed": int(seed),
        "site_names": json.dumps(readable_site_names(meta, max_whole=max_whole)),
    }
    empirical_bayes = [n for n, site in meta.sites.items() if normal and not site.latent]
    if empirical_bayes:
        attrs["empirical_bayes_sites"] = json.dumps(empirical_bayes)
    for g in idata.groups():
        idata[g].attrs.update(attrs)
    return idata


# --------------------------------------------------------------------------- Pareto k̂


@dataclasses.dataclass(frozen=True)
class ParetoK:
    """Pareto k̂ of each task's importance ratios (see :func:`pareto_k`).

    Attributes:
        k: k̂ per task, shape ``(B,)``; ``-inf`` where the ratios are constant
            to working precision (spread below √ε relative: q(φ_i) is the exact
            conditional posterior, there is no tail to fit), ``inf`` where no
            tail could be fitted (non-finite ratios, or a failed fit).
        task: The tasks' indices (``batch.task_index``).
        num_samples: Draws S per task.
    """

    k: np.ndarray
    task: np.ndarray
    num_samples: int

    def counts(self) -> dict[str, int]:
        """How many tasks read good (k̂ < 0.5), ok (0.5 ≤ k̂ < 0.7) and bad (k̂ ≥ 0.7 or not finite)."""
        k = np.where(np.isnan(self.k), np.inf, self.k)
        return {
            "good": int((k < K_GOOD).sum()),
            "ok": int(((k >= K_GOOD) & (k < K_OK)).sum()),
            "bad": int((k >= K_OK).sum()),
        }

    @property
    def bad_tasks(self) -> list[int]:
        """The indices of the tasks whose k̂ is 0.7 or more (or could not be estimated)."""
        k = np.where(np.isnan(self.k), np.inf, self.k)
        return [int(t) for t in self.task[k >= K_OK]]

    def verdict(self) -> str:
        """One line: the counts and the bad tasks (at most ten named)."""
        c = self.counts()
        line = f"k̂ over {self.k.size} tasks ({self.num_samples} draws each): {c['good']} good (< {K_GOOD}), " \
            f"{c['ok']} ok (< {K_OK}), {c['bad']} bad"
        bad = self.bad_tasks
        if bad:
            more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            line += f"; bad tasks: {', '.join(map(str, bad[:10]))}{more}"
        return line


def log_importance_ratios(
    meta: MetaModel,
    batch: TaskBatch,
    *,
    num_samples: int = 1000,
    inner_steps: int | None = None,
    seed: int = 0,
    chunk_tasks: int | None = None,
) -> Tensor:
    """log r_s = log p(D_i^S | φ_s)/β + log p(φ_s | θ) − log q(φ_s; λ_i), φ_s ~ q(φ_i): ``(B, S)``.

    D_i^S is task i's support set, the data q(φ_i) was adapted to, so the
    target is the conditional posterior p(φ_i | θ, D_i^S) (tempered by the KL
    weight β, as the inner objective is). θ is q(θ)'s point mass, or for
    ``q_theta="normal"`` q(θ)'s median (the Normal's mean mapped to the
    constrained space).
    """
    if not (isinstance(num_samples, int) and num_samples >= 2):
        raise ValueError(f"num_samples={num_samples!r} must be an integer >= 2.")
    validate_batch(batch, meta.likelihood, query_targets=False)
    beta = meta.kl_weight
    event_dim = batch.support_y.dim() - 2
    per_draw = max(1, meta.net.num_weights) * 4 * max(1, batch.batch_size if chunk_tasks is None else chunk_tasks)
    draw_chunk = int(max(1, min(num_samples, _BUDGET // per_draw)))
    out = []
    with _seeded(batch, seed), torch.no_grad(), pyro.validation_enabled(False):
        fixed: dict[str, Tensor] = {}
        if meta.q_theta == "normal":
            with poutine.block():
                guide_globals(meta)  # creates q(θ)'s params if this param store has none yet
            for n, site in meta.sites.items():
                if site.latent:
                    fixed[n] = biject_to(site.constraint)(pyro.param(names.q_theta_normal(n)[0]).detach())
        for s in _chunks(batch.batch_size, chunk_tasks):
            sub = batch.tasks(s)
            tr = poutine.trace(poutine.condition(meta.guide, data=fixed)).get_trace(sub, inner_steps=inner_steps)
            lam = tr.nodes["_RETURN"]["value"]["lambda"]
            theta = {
                n: tr.nodes[n]["value"] if n in tr.nodes else pyro.param(n).detach()
                for n in meta.sites
            }
            lik = {
                k: pad_site(theta[f"likelihood.{k}"], site.shape, event_dim)
                for k, site in meta.likelihood.global_sites().items()
            }
            chunks = []
            for d in _chunks(num_samples, draw_chunk):
                n_d = d.stop - d.start
                log_r: Tensor | float = 0.0
                phi = {}
                for w, shape in meta.net.shapes.items():
                    q = meta.prior.family.dist(lam[w])  # batch (B, *w)
                    v = q.rsample((n_d,))  # (n, B, *w)
                    p = meta.prior.local(w, theta, event_ndim=len(shape))
                    dims = tuple(range(2, v.dim()))
                    log_r = log_r + p.log_prob(v).sum(dims) - q.log_prob(v).sum(dims)
                    phi[w] = v.unsqueeze(2)  # (n, B, 1, *w), the data plate's dim
                f, _ = forward(meta, phi, sub.support_x)
                ll = meta.likelihood.observe(f, lik, sub.support_noise, event_dim, sub.support_mask).log_prob(sub.support_y)
                chunks.append(log_r + ll.sum(-1) / beta)
            out.append(torch.cat(chunks, 0).T)  # (b, S)
    return torch.cat(out, 0)


def inner_objective(
    meta: MetaModel,
    batch: TaskBatch,
    *,
    inner_steps: int | None = None,
    num_samples: int = INNER_DRAWS,
    seed: int = 0,
    chunk_tasks: int | None = None,
) -> np.ndarray:
    """The support objective L_S(λ^(m)) of each task after m = 0, 1, ..., K inner steps: ``(B, K + 1)``.

    L_S(λ) = (E_q[log p(D_i^S | φ)] − β·KL(q(φ; λ) ‖ p(φ | θ))) / Ns, the
    objective the inner loop ascends (:mod:`hvi.adapt`), in nats per support
    example. Estimated with ``num_samples`` draws φ_s ~ q(φ; λ^(m)) as
    β·mean_s log r_s / Ns (:func:`log_importance_ratios`), an estimator whose
    variance vanishes as q approaches the exact conditional posterior; then
    Ns·L_S is log p(D_i^S | θ) (β = 1). Every m adapts afresh with the same
    seed, and the inner loop's noise is drawn step by step from per-task
    streams seeded once, so the K + 1 values are the points of one trajectory.
    θ is taken as in :func:`pareto_k`. Cost: K(K + 1)/2 inner steps and K + 1
    evaluations of ``num_samples`` draws per task.
    """
    if not (isinstance(num_samples, int) and num_samples >= 2):
        raise ValueError(f"num_samples={num_samples!r} must be an integer >= 2.")
    k = meta.inner.steps if inner_steps is None else int(inner_steps)
    if k < 0:
        raise ValueError(f"inner_steps={k} must be >= 0.")
    ns = max(1, batch.support_x.shape[1])
    out = [
        log_importance_ratios(meta, batch, num_samples=num_samples, inner_steps=m, seed=seed, chunk_tasks=chunk_tasks)
        .mean(1).mul(meta.kl_weight / ns)
        for m in range(k + 1)
    ]
    return _np(torch.stack(out, 1))


def pareto_k(
    meta: MetaModel,
    batch: TaskBatch,
    *,
    num_samples: int = 1000,
    inner_steps: int | None = None,
    seed: int = 0,
    chunk_tasks: int | None = None,
) -> ParetoK:
    """Pareto k̂ of q(φ_i) per task (Yao, Vehtari, Simpson & Gelman 2018, "Yes, but did it work?").

    For each task, S draws φ_s ~ q(φ_i) (after adapting to the support set)
    give importance ratios r_s = p(D_i^S, φ_s | θ) / q(φ_s)
    (:func:`log_importance_ratios`); ``az.psislw`` fits a generalized Pareto
    distribution to their largest values, and its shape k̂ says how heavy
    the ratios' right tail is, i.e. how badly q misses mass of the exact
    conditional posterior p(φ_i | θ, D_i^S):

    * k̂ < 0.5, **good**: the ratios have finite variance; q is close to the
      posterior (importance sampling with q would converge fast).
    * 0.5 ≤ k̂ < 0.7, **ok**: finite mean, infinite variance; q is usable, and
      PSIS would still correct it, but it under-covers some of the posterior.
    * k̂ ≥ 0.7, **bad**: q misses a large part of the posterior (too narrow,
      or in the wrong place); its uncertainties for that task are unreliable.
      Typical causes: too few or too small inner steps, a prior much wider
      than the data's information, a diverging inner loop.

    k̂ estimates need a few hundred draws (the tail fit uses the largest
    min(S/5, 3√S) ratios); ``num_samples`` defaults to 1000. The reading is
    about q(φ_i) given θ; q(θ) itself is not checked.

    Returns:
        A :class:`ParetoK` (``k``, ``counts()``, ``bad_tasks``, ``verdict()``).
    """
    import arviz as az

    log_r = log_importance_ratios(
        meta, batch, num_samples=num_samples, inner_steps=inner_steps, seed=seed, chunk_tasks=chunk_tasks
    )
    lw = _np(log_r)
    k = np.empty(lw.shape[0])
    finite = np.isfinite(lw).all(1)
    spread = np.where(finite, lw.max(1) - lw.min(1), np.inf)
    # Ratios constant to working precision (q is the exact conditional): there is no
    # tail, and a Pareto fit to rounding noise reads anything (inf where the noise
    # ties). A spread below √ε relative is such noise: weights equal to ~1e-8 (float64).
    flat = spread <= math.sqrt(torch.finfo(log_r.dtype).eps) * (1.0 + np.abs(lw).max(1))
    k[flat] = -np.inf
    k[~finite] = np.inf
    todo = finite & ~flat
    if todo.any():
        # Draws from q are independent: relative efficiency 1.
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            _, kk = az.psislw(lw[todo], reff=1.0)
        k[todo] = np.where(np.isnan(kk), np.inf, kk)
    return ParetoK(k=k, task=_np(batch.task_index).astype(np.int64), num_samples=num_samples)


# --------------------------------------------------------------------------- calibration


def _observed(idata) -> tuple[np.ndarray, np.ndarray]:
    """(y (task, point, ...), replicated y (S, task, point, ...)) from an InferenceData."""
    if "posterior_predictive" not in idata.groups() or "observed_data" not in idata.groups():
        raise ValueError("the InferenceData has no posterior_predictive / observed_data groups (no query points).")
    y = idata.observed_data["y"].values
    rep = idata.posterior_predictive["y"].values
    return y, rep.reshape((-1,) + y.shape)


def _mask(idata, y: np.ndarray) -> np.ndarray:
    """Which query targets are observed (``constant_data.observed_mask``; all when absent), shaped like ``y``."""
    if "constant_data" in idata.groups() and "observed_mask" in idata.constant_data:
        return idata.constant_data["observed_mask"].values.astype(bool)
    return np.ones(y.shape, dtype=bool)


def _is_classification(idata) -> bool:
    _observed(idata)
    return "class" in idata.posterior_predictive["f"].dims


def heldout_lppd(idata) -> tuple[float, float, np.ndarray]:
    """Log pointwise predictive density of the query points: ``(total, standard error, per point)``.

    lppd_ij = log (1/S) Σ_s p(y_ij | φ_s), from ``log_likelihood.y``. The query
    points are held out (q(φ_i) was adapted to the support set only), so this
    is already an out-of-sample estimate of the expected log predictive
    density; PSIS-LOO (``az.loo``) would remove each point's influence on a
    posterior it never had, and its k̂ and elpd_loo are then not meaningful.
    The standard error is √n · sd of the pointwise values, as ``az.loo`` reports.
    """
    if "log_likelihood" not in idata.groups():
        raise ValueError("the InferenceData has no log_likelihood group (no query points).")
    ll = idata.log_likelihood["y"].values
    ll = ll.reshape((-1,) + ll.shape[2:])
    m = ll.max(0)
    point = m + np.log(np.exp(ll - m).mean(0))
    return float(point.sum()), float(math.sqrt(point.size) * point.std()), point


@dataclasses.dataclass(frozen=True)
class Coverage:
    """Central predictive interval coverage (see :func:`interval_coverage`).

    Attributes:
        levels: Nominal levels, e.g. ``(0.5, 0.8, 0.9, 0.95)``.
        observed: Fraction of query targets inside each level's interval, pooled over tasks.
        per_task: The same per task, shape ``(tasks, levels)``.
    """

    levels: tuple[float, ...]
    observed: np.ndarray
    per_task: np.ndarray


def interval_coverage(idata, levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95)) -> Coverage:
    """How often the query targets fall inside the central predictive intervals (regression).

    The interval at level ℓ runs between the (1−ℓ)/2 and (1+ℓ)/2 quantiles of
    the replicated targets ``posterior_predictive.y``. A calibrated
    predictive covers a fraction ℓ; less is over-confident, more under-confident.
    """
    if _is_classification(idata):
        raise ValueError("interval coverage is for regression; use reliability() for classification.")
    levels = tuple(float(v) for v in levels)
    if not all(0 < v < 1 for v in levels):
        raise ValueError(f"levels {levels} must lie in (0, 1).")
    y, rep = _observed(idata)
    seen = _mask(idata, y).reshape(y.shape[0], -1)
    obs, per = [], []
    for level in levels:
        lo, hi = np.quantile(rep, [(1 - level) / 2, (1 + level) / 2], axis=0)
        inside = ((y >= lo) & (y <= hi)).reshape(y.shape[0], -1)
        obs.append(inside[seen].mean())
        per.append((inside & seen).sum(1) / np.maximum(seen.sum(1), 1))
    return Coverage(levels, np.asarray(obs), np.stack(per, 1))


def pit(idata) -> np.ndarray:
    """Probability integral transform of each query target under its predictive (regression).

    u = P(y_rep < y) + ½ P(y_rep = y), from the replicated targets; shaped
    like ``observed_data.y``. Calibrated predictives give uniform u: a
    U-shaped histogram means over-confident (too narrow), a hump in the
    middle under-confident, a slope a biased mean. Unobserved targets
    (``constant_data.observed_mask``) are NaN.
    """
    if _is_classification(idata):
        raise ValueError("PIT values are for regression; use reliability() for classification.")
    y, rep = _observed(idata)
    u = (rep < y).mean(0) + 0.5 * (rep == y).mean(0)
    return np.where(_mask(idata, y), u, np.nan)


@dataclasses.dataclass(frozen=True)
class Reliability:
    """Reliability diagram data and the expected calibration error (see :func:`reliability`).

    Attributes:
        edges: Bin edges of the confidence, ``(bins + 1,)``.
        count: Query points per bin.
        confidence: Mean confidence (predicted class probability) per bin (NaN if empty).
        accuracy: Fraction correct per bin (NaN if empty).
        ece: Σ_b (n_b / N) |accuracy_b − confidence_b|, pooled over all query points.
    """

    edges: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float


def reliability(idata, bins: int = 15) -> Reliability:
    """Reliability diagram and pooled ECE (classification), from ``posterior_predictive.f``.

    The predictive class probabilities are the mean over draws of softmax(f);
    each query point falls in the equal-width bin of its top probability
    (confidence). A calibrated classifier is right as often as it is
    confident (accuracy = confidence in every bin, ECE = 0).
    """
    if not _is_classification(idata):
        raise ValueError("reliability() is for classification; use interval_coverage() and pit() for regression.")
    f = idata.posterior_predictive["f"].values
    y = idata.observed_data["y"].values.reshape(-1)
    f = f.reshape((-1,) + f.shape[2:])
    z = f - f.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    probs = p.mean(0).reshape(-1, f.shape[-1])
    conf = probs.max(-1)
    correct = (probs.argmax(-1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, conf, bins) / count
        accuracy = np.bincount(which, correct, bins) / count
    filled = count > 0
    ece = float((count[filled] / conf.size * np.abs(accuracy[filled] - confidence[filled])).sum())
    return Reliability(edges, count, confidence, accuracy, ece)


# --------------------------------------------------------------------------- plots (matplotlib)


def _axes(ax, figsize=(6.4, 4.0)):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, layout="constrained")[1]


def plot_pareto_k(k: ParetoK, ax=None):
    """k̂ per task with the 0.5 / 0.7 thresholds; exact tasks (k̂ = −∞) are counted in the title."""
    ax = _axes(ax)
    kk = np.asarray(k.k, dtype=np.float64)
    x = np.arange(kk.size)
    exact = np.isneginf(kk)
    top = max(1.0, float(np.nanmax(np.where(np.isfinite(kk), kk, np.nan), initial=1.0)) * 1.05)
    shown = np.where(np.isposinf(kk) | np.isnan(kk), top, kk)
    colors = np.where(shown < K_GOOD, "tab:green", np.where(shown < K_OK, "tab:orange", "tab:red"))
    ax.scatter(x[~exact], shown[~exact], c=colors[~exact], s=14)
    ax.axhline(K_GOOD, color="tab:orange", lw=1, ls="--", label=f"{K_GOOD} (good below)")
    ax.axhline(K_OK, color="tab:red", lw=1, ls="--", label=f"{K_OK} (bad above)")
    c = k.counts()
    title = f"Pareto k̂ of q(φ_i) per task: {c['good']} good, {c['ok']} ok, {c['bad']} bad"
    if exact.any():
        title += f"\n({int(exact.sum())} exact: ratios constant, k̂ = −∞, not shown)"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"task (position in the batch; {k.num_samples} draws each)")
    ax.set_ylabel("k̂")
    ax.legend(fontsize=8, loc="best")
    return ax


def plot_pit(idata, ax=None, bins: int = 20):
    """Histogram of the PIT values (:func:`pit`) against the uniform density of a calibrated predictive."""
    ax = _axes(ax)
    u = pit(idata).ravel()
    u = u[np.isfinite(u)]  # unobserved targets are NaN
    ax.hist(u, bins=bins, range=(0, 1), density=True, color="tab:blue", alpha=0.7, label=f"{u.size} query targets")
    ax.axhline(1.0, color="k", lw=1, ls="--", label="uniform (calibrated)")
    ax.set_xlim(0, 1)
    ax.set_xlabel("PIT = P(y_rep < y)")
    ax.set_ylabel("density")
    ax.set_title("PIT of the query targets (U: over-confident, ∩: under-confident)", fontsize=10)
    ax.legend(fontsize=8)
    return ax


def plot_reliability(rel: Reliability, ax=None):
    """Reliability diagram: accuracy against confidence per bin, with the pooled ECE."""
    ax = _axes(ax, figsize=(5.0, 5.0))
    centers = (rel.edges[:-1] + rel.edges[1:]) / 2
    filled = rel.count > 0
    width = np.diff(rel.edges)
    ax.bar(centers[filled], rel.accuracy[filled], width=width[filled], edgecolor="k", color="tab:blue",
           alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    ax.plot(rel.confidence[filled], rel.accuracy[filled], "o", color="tab:red", ms=4, label="(confidence, accuracy)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top predictive class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability, {len(rel.count)} bins: ECE = {rel.ece:.3f} ({int(rel.count.sum())} query points)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    return ax


def plot_elbo(idata, ax=None):
    """The ELBO per training step from ``sample_stats.elbo`` (gaps: skipped steps), with its parts when stored.

    The parts are drawn as ``ell``, ``−local_kl`` and ``−global_kl`` (so the
    ELBO is their sum) on a symmetric-log axis when the run recorded them.
    """
    ax = _axes(ax)
    stats = idata.sample_stats
    elbo = stats["elbo"]
    step = elbo["step"].values
    ax.plot(step, elbo.values.reshape(-1), lw=1.2, color="k", label="ELBO")
    parts = [k for k in ELBO_PARTS if k in stats]
    zero = [k for k in parts if np.all(np.nan_to_num(stats[k].values) == 0)]  # e.g. no latent θ: no global KL
    parts = [k for k in parts if k not in zero]
    if parts:
        styles = {"ell": ("tab:blue", "E_q[log p(D | φ)]"), "local_kl": ("tab:orange", "−β·KL(q(φ_i) ‖ p(φ_i | θ))"),
                  "global_kl": ("tab:green", "−KL(q(θ) ‖ p(θ))")}
        for k in parts:
            v = stats[k].values.reshape(-1)
            color, label = styles[k]
            ax.plot(step, v if k == "ell" else -v, lw=0.8, color=color, label=label)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.legend(fontsize=7, loc="best")
    ax.set_xlabel("training step")
    ax.set_ylabel("nats per step's batch (M/B and β applied)")
    title = "ELBO trace" + (" = sum of its parts" if parts else "")
    if zero:
        title += "\n(" + ", ".join(zero) + " = 0 at every step: not drawn)"
    ax.set_title(title, fontsize=10)
    return ax


def plot_inner_elbo(idata, ax=None):
    """The support objective after 0, 1, ..., K inner steps (``sample_stats.inner_elbo``): tasks and their median."""
    ax = _axes(ax)
    v = idata.sample_stats["inner_elbo"]
    steps = v["inner_step"].values
    per_task = v.values.reshape((-1,) + v.shape[-2:])[0]  # (task, inner_step)
    ax.plot(steps, per_task.T, color="tab:blue", lw=0.6, alpha=0.35)
    ax.plot(steps, np.median(per_task, 0), color="k", lw=2, marker="o", label=f"median of {per_task.shape[0]} tasks")
    ax.set_xticks(steps)
    ax.set_xlabel("inner step m (0: q(φ_i) = p(φ | θ))")
    ax.set_ylabel("support ELBO L_S (nats per support example)")
    ax.set_title("Inner-loop objective of the held-out tasks", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return ax


def plot_group_effects(idata, *, max_tasks: int = 8, **kwargs):
    """``az.plot_forest`` of a small hierarchical model: θ's scalar latent draws and the group effects ``phi.*``.

    Needs the ``phi.<weight>`` variables (:func:`to_inference_data` of a small
    model with ``q_theta="normal"``). Shows the first ``max_tasks`` tasks; the
    figure's height follows the number of rows. Keyword arguments go to
    ``az.plot_forest``. Returns its axes.
    """
    import arviz as az

    post = idata.posterior
    phis = [v for v in post.data_vars if v.startswith("phi.")]
    if not phis:
        raise ValueError("the posterior has no group effects phi.<weight> (a small model with q_theta='normal').")
    names = json.loads(post.attrs.get("site_names", "{}"))
    theta = [v for v in names if v in post.data_vars and post[v].sizes.get("draw", 1) > 1 and post[v].ndim == 2]
    tasks = post["task"].values[:max_tasks]
    rows = len(theta) + sum(int(post[v].isel(chain=0, draw=0).size) // post.sizes["task"] for v in phis) * len(tasks)
    kwargs.setdefault("combined", True)
    kwargs.setdefault("hdi_prob", 0.94)
    kwargs.setdefault("textsize", 8)
    kwargs.setdefault("figsize", (6.4, 1.2 + 0.2 * rows))
    axes = az.plot_forest(idata, var_names=theta + phis, coords={"task": tasks}, **kwargs)
    ax = np.ravel(axes)[0]
    ax.figure.set_layout_engine("constrained")
    ax.set_title(f"Posterior of θ and the group effects ({int(kwargs['hdi_prob'] * 100)}% HDI, IQR thick)",
                 fontsize=10)
    ax.set_xlabel("value (the parameter's own units)")
    return axes


def plot_image_grid(idata, *, tasks: int = 4, point: int = 0, x_channel: int = 0, x_label: str | None = None,
                    y_label: str = "y", units: str = ""):
    """For image targets: input, truth, predictive mean and predictive std of a few held-out tasks.

    One row per task (the first ``tasks``), query point ``point``; columns: the
    input's channel ``x_channel``, the observed target, the mean and the
    standard deviation of the replicated targets ``posterior_predictive.y``
    (noise included). Truth and mean share one colour scale; each column has
    its colour bar, labelled with ``units``. Returns the figure.
    """
    import matplotlib.pyplot as plt

    y = idata.observed_data["y"].values
    if y.ndim < 4:
        raise ValueError(f"image grids need image targets (task, point, [channel,] row, col); y has dims {y.shape}.")
    rep = idata.posterior_predictive["y"].values
    rep = rep.reshape((-1,) + rep.shape[2:])
    x = idata.constant_data["x"].values if "constant_data" in idata.groups() and "x" in idata.constant_data else None
    n = min(tasks, y.shape[0])
    task_ids = idata.observed_data["task"].values

    def image(a):  # (channel?, row, col) → (row, col): the first channel
        return a.reshape((-1,) + a.shape[-2:])[0]

    truth = [image(y[i, point]) for i in range(n)]
    mean = [image(rep[:, i, point].mean(0)) for i in range(n)]
    std = [image(rep[:, i, point].std(0)) for i in range(n)]
    cols = ["input", "truth", "predictive mean", "predictive std"] if x is not None else [
        "truth", "predictive mean", "predictive std"]
    fig, axes = plt.subplots(n, len(cols), figsize=(2.6 * len(cols) + 0.6, 1.9 * n + 0.6), layout="constrained",
                             squeeze=False)
    lo = float(min(a.min() for a in truth + mean))
    hi = float(max(a.max() for a in truth + mean))
    smax = float(max(a.max() for a in std))
    u = f" [{units}]" if units else ""
    for i in range(n):
        row = []
        if x is not None:
            xi = x[i, point]
            row.append((xi.reshape((-1,) + xi.shape[-2:])[x_channel], "viridis", None, None, x_label or f"x[{x_channel}]"))
        row += [(truth[i], "viridis", lo, hi, f"{y_label}{u}"), (mean[i], "viridis", lo, hi, f"{y_label}{u}"),
                (std[i], "magma", 0.0, smax, f"std of {y_label}{u}")]
        for j, (img, cmap, vmin, vmax, label) in enumerate(row):
            ax = axes[i, j]
            im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
            cb = fig.colorbar(im, ax=ax, shrink=0.9)
            cb.set_label(label, fontsize=7)
            cb.ax.tick_params(labelsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(f"task {task_ids[i]}", fontsize=8)
    fig.suptitle(f"Held-out tasks, query point {point}: predictive from {rep.shape[0]} draws", fontsize=10)
    return fig


def plot_reconstructions(
    meta: MetaModel,
    batch: TaskBatch,
    image_shape: tuple[int, int],
    *,
    inner_steps: int | None = None,
    num_samples: int = 20,
    tasks: int = 3,
    units: str = "",
    seed: int = 0,
):
    """Implicit-representation tasks (``siren``): the predictive mean image after 0, 1, ..., K inner steps.

    Needs tasks whose query set is every pixel in raster order (``k_query=None``
    of the pixel sources). One row per task: the truth with the support pixels
    marked, then the reconstruction (predictive mean of ``num_samples`` draws,
    :func:`hvi.predict`, torch's RNG seeded with ``seed`` for each) after each
    number of inner steps, on the truth's colour scale. Returns the figure.
    """
    import matplotlib.pyplot as plt

    from hvi.predict import predict

    h, w = image_shape
    if batch.query_x.shape[1] != h * w:
        raise ValueError(f"reconstructions need all {h * w} pixels as query points; the tasks have {batch.query_x.shape[1]}.")
    k = meta.inner.steps if inner_steps is None else int(inner_steps)
    sub = batch.tasks(slice(0, min(tasks, batch.batch_size)))
    recon = []
    for m in range(k + 1):
        with _seeded(sub, seed), torch.no_grad():  # the same draws for every m
            recon.append(_np(predict(meta, sub, inner_steps=m, num_samples=num_samples).mean).reshape(sub.batch_size, h, w))
    truth = _np(sub.query_y).reshape(sub.batch_size, h, w)
    # Support pixels: where a support input equals a query input.
    fig, axes = plt.subplots(sub.batch_size, k + 2, figsize=(1.9 * (k + 2) + 0.8, 2.0 * sub.batch_size + 0.5),
                             layout="constrained", squeeze=False)
    lo, hi = float(truth.min()), float(truth.max())
    for i in range(sub.batch_size):
        hit = (sub.support_x[i][:, None, :] == sub.query_x[i][None, :, :]).all(-1).any(0)
        mask = _np(hit).reshape(h, w)
        ax = axes[i, 0]
        ax.imshow(truth[i], cmap="gray", vmin=lo, vmax=hi)
        ys, xs = np.nonzero(mask)
        ax.scatter(xs, ys, s=3, c="tab:red", marker="s", linewidths=0)
        ax.set_title("truth, support in red" if i == 0 else "", fontsize=8)
        ax.set_ylabel(f"task {int(sub.task_index[i])}", fontsize=8)
        for m in range(k + 1):
            ax = axes[i, m + 1]
            im = ax.imshow(recon[m][i], cmap="gray", vmin=lo, vmax=hi)
            if i == 0:
                ax.set_title(f"after {m} inner step{'s' if m != 1 else ''}", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    cb = fig.colorbar(im, ax=axes[:, -1].tolist(), shrink=0.8)
    cb.set_label("intensity" + (f" [{units}]" if units else ""), fontsize=8)
    rmse = [float(np.sqrt(((r - truth) ** 2).mean())) for r in recon]
    fig.suptitle("Predictive mean after m inner steps; RMSE " + ", ".join(f"{v:.3f}" for v in rmse), fontsize=9)
    return fig
