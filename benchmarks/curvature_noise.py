"""How noisy is each curvature estimate of the natural step, on a network? One task, fixed data.

The default natural step measures h = E_q[−∇²ℓ] from an antithetic pair of
points m ± σ·r (two network evaluations per sample). A one-evaluation estimate
would make the step as cheap as a gradient step; this script measures why the
ones tried are not accurate enough (hvi.natural's docstring has the algebra):

* ``pair``: the default, 2 evaluations;
* ``one_sided``: the point m + σ·r alone (``InnerConfig(curvature="one_sided")``),
  1 evaluation, noise −∇ℓ(m)·r/σ;
* ``one_sided, last-step baseline``: the same point with the previous step's g
  subtracted (h = −(∇ℓ(φ) − g_prev)·r/σ; unbiased), 1 evaluation, noise
  −(∇ℓ(m) − g_prev)·r/σ: small only if the mean moved less than σ;
* ``one_sided, exact baseline ∇ℓ(m)``: the oracle (needs ∇ℓ(m): 2 evaluations).

Each is compared with a reference h from many pairs, at λ^(0) (m = θ's mean,
σ = the prior's scale) and after one natural step with the pair (α as given),
as relative error ‖h − h_ref‖/‖h_ref‖ (mean over trials), the same for the
mean's natural step at α that each estimate gives, the share of weights whose
estimate is clipped at 0, the median noise-to-signal |∇ℓ(m)|/(σ·|h_ref|) of the
one-sided estimate, and how far the step moved the mean (rms, in units of the
new σ), which sets the last-step baseline's error::

    python benchmarks/curvature_noise.py --out docs/results/curvature_noise.json
"""

from __future__ import annotations

import argparse
import os
import statistics

from meta_step import build_net, make_batch
from provenance import write_result

SETTINGS = {
    # meta_step.py's U-Net on random data (where one-sided diverges at α = 0.1)
    "unet": {"model": "bayes_unet", "size": 32, "base": 16, "depth": 3, "prior_scale": 0.01, "noise": 0.1},
    # the sinusoid MLP at its defaults (prior scale 0.03, fixed σ = 0.1)
    "mlp": {"model": "mlp", "prior_scale": 0.03, "noise": 0.1},
}


def measure(setting: str, alpha: float, ref_pairs: int, trials: int, seed: int) -> dict:
    import torch
    from torch.func import functional_call, grad

    from hvi import natural

    spec = SETTINGS[setting]
    cfg = {"seed": seed, "task_batch": 1, "k_shot": 10 if spec["model"] == "mlp" else 5, "k_query": 1, **spec}
    net = build_net(cfg)
    batch = make_batch(cfg)
    x, y = batch.support_x[0], batch.support_y[0]
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    sizes = [p.numel() for _, p in net.named_parameters()]
    m0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    buffers = dict(net.named_buffers())

    def loglik(flat):
        params = {n: t.reshape(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
        out = functional_call(net, (params, buffers), (x,))
        return torch.distributions.Normal(out, spec["noise"]).log_prob(y).sum()

    grad_l = grad(loglik)
    gen = torch.Generator().manual_seed(seed + 7)

    def signs(n):
        return natural.probes(torch.randn(n, m0.numel(), generator=gen), antithetic=False)

    def estimate(m, sigma, r, pairs, baseline=None):
        points = torch.cat([r, -r]) if pairs else r
        g_phi = torch.stack([grad_l(m + sigma * p) for p in points])
        _, h = natural.moments(g_phi if baseline is None else g_phi - baseline, points, sigma)
        return g_phi.mean(0), h

    s_p = torch.full_like(m0, spec["prior_scale"] ** -2)
    out = {}
    m, s, g_prev = m0, s_p, None
    for where in ("start", "after one step"):
        sigma = s.rsqrt()
        g_ref, h_ref = estimate(m, sigma, signs(ref_pairs), pairs=True)
        g_mean = grad_l(m)
        ref_norm = h_ref.norm()
        errors: dict[str, list[float]] = {}
        clipped: dict[str, list[float]] = {}
        step_errors: dict[str, list[float]] = {}
        prior_grad = (m - m0).mul(s_p).neg()

        def mean_step(g, h):
            return natural.step(m, s, g, h, prior_grad, s_p, alpha, alpha, 1.0)[0] - m

        dm_ref = mean_step(g_ref, h_ref)

        def record(name, gh):
            g, h = gh
            errors.setdefault(name, []).append(float((h - h_ref).norm() / ref_norm))
            clipped.setdefault(name, []).append(float((h < 0).float().mean()))
            step_errors.setdefault(name, []).append(float((mean_step(g, h) - dm_ref).norm() / dm_ref.norm()))

        for _ in range(trials):
            r = signs(1)
            record("pair", estimate(m, sigma, r, pairs=True))
            record("one_sided", estimate(m, sigma, r, pairs=False))
            record("one_sided, exact baseline", estimate(m, sigma, r, pairs=False, baseline=g_mean))
            if g_prev is not None:
                record("one_sided, last-step baseline", estimate(m, sigma, r, pairs=False, baseline=g_prev))
        noise_to_signal = (g_mean.abs() / (sigma * h_ref.abs().clamp_min(1e-30))).median()
        move = None if where == "start" else float(((m - m0) / sigma).square().mean().sqrt())
        out[where] = {
            "relative_error": {k: round(statistics.mean(v), 4) for k, v in errors.items()},
            "mean_step_relative_error": {k: round(statistics.mean(v), 4) for k, v in step_errors.items()},
            "clipped_share": {k: round(statistics.mean(v), 4) for k, v in clipped.items()},
            "noise_to_signal_median": round(float(noise_to_signal), 3),
            "mean_moved_in_sigmas_rms": None if move is None else round(move, 3),
        }
        if where == "start":  # one natural step with the reference pair estimate (prior term 0 at m = μ_p)
            g_prev = g_ref
            m, s, _, _ = natural.step(m, s, g_ref, h_ref, torch.zeros_like(m), s_p, alpha, alpha, 1.0)
    return {"setting": setting, "weights": m0.numel(), **{k: v for k, v in spec.items()}, "alpha": alpha, **out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default="unet,mlp", help="comma-separated, from: " + ", ".join(SETTINGS))
    p.add_argument("--alpha", type=float, default=0.1, help="the natural step's α between the two measurements")
    p.add_argument("--ref-pairs", type=int, default=64, help="pairs of the reference h (default 64)")
    p.add_argument("--trials", type=int, default=16, help="draws per estimator (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/results/curvature_noise.json")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows = [measure(s, args.alpha, args.ref_pairs, args.trials, args.seed) for s in args.settings.split(",")]
    config = {"alpha": args.alpha, "ref_pairs": args.ref_pairs, "trials": args.trials, "seed": args.seed}
    write_result(args.out, "benchmarks/curvature_noise.py", argv, {"config": config, "rows": rows})
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
