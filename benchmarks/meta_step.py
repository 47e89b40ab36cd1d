#!/usr/bin/env python3
"""Meta-training step benchmark: the hvi engine vs a naive per-task PyTorch loop.

One *meta-step* is one SVI step on a batch of B tasks: the inner loop (K
gradient steps on each task's support ELBO, starting from θ), the outer
``Trace_ELBO`` loss on the query sets, its backward pass and one Adam step.

Two implementations of the same math are timed:

``engine``
    ``hvi.MetaModel`` + ``hvi.SVI`` (``pyro.infer.SVI`` whose step frees the
    gradients instead of zero-filling them) with ``Trace_ELBO``: a flat-λ inner
    loop, one vmapped forward and one ``torch.autograd.grad`` per step for all
    tasks, split into one chunk of tasks per thread (``hvi.parallel``; FLOPs
    are counted unsplit, since ``FlopCounterMode`` only sees its own thread).
``naive``
    The obvious plain-PyTorch reference: for each task in turn, λ = θ,
    K steps ``λ ← λ + α ∇_λ L_S(λ)`` with
    ``torch.autograd.grad(..., create_graph=not first_order)``, then the outer
    loss ``−(M/B)[log p(y^Q|φ) + β(log p(φ|θ) − log q(φ|λ))]`` at one
    reparameterized draw φ ~ q(φ; λ), ``backward()`` accumulated over the
    tasks, one ``torch.optim.Adam`` step.

Both use the same prior (diagonal Normal p(φ|θ) with a learned mean and scale
per weight, scale initialised to ``--prior-scale``), the same Gaussian
likelihood with a learned noise scale, the same K, α, β and one Monte Carlo
draw per inner step, and the same parameterisation (positive sites are stored
as logs, σ_q = softplus(ρ)); ``tests/test_benchmark.py`` checks that their
losses and gradients agree for identical noise.

Every (implementation, configuration) runs in a fresh Python subprocess so
that its peak resident memory (``ru_maxrss``) is its own. By default each
worker first calls ``hvi.tune_allocator()``, as ``hvi fit`` does on CPU: glibc
then keeps freed memory instead of returning it to the kernel and faulting
it back in on the next inner step (``--malloc default`` leaves glibc as it is;
every JSON line says which, and its system CPU time and minor page faults).
Data are random tensors of the right shapes drawn with a fixed seed: images
``x: (B, k, 3, size, size)``, ``y: (B, k, 1, size, size)`` for ``bayes_unet``,
sinusoid-shaped ``(B, k, 1)`` pairs for ``mlp``.

Output: one JSON line (``--json``) or table row per (impl, configuration), plus
an ``impl: "matmul"`` line with the machine's float32 matmul throughput
measured in the same run. Example::

    python benchmarks/meta_step.py --model bayes_unet --size 32 --base 16 \\
        --k-shot 5 --k-query 5 --inner-steps 5 --task-batch 1,8 --steps 10 --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

# Keys every per-(impl, configuration) JSON line carries.
RESULT_KEYS = (
    "impl", "model", "size", "base", "upsample", "weights", "k_shot", "k_query", "inner_steps",
    "task_batch", "first_order", "tasks_per_s", "peak_rss_mb", "peak_rss_delta_mb",
    "gflop_per_task", "gflop_per_s", "sys_s_per_step", "minflt_per_step", "malloc",
)
MATMUL_KEYS = ("impl", "n", "gflop_per_s", "threads", "malloc")


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}")
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return vals


def _rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover - non-Linux
        return float("nan")


def _peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (``ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _busy_cpu_s() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):  # pragma: no cover
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        return None


# ----------------------------------------------------------------------------
# problem setup (shared by both implementations)
# ----------------------------------------------------------------------------
def build_net(cfg: dict[str, Any]):
    import torch

    from hvi.models import get_model

    torch.manual_seed(cfg["seed"])
    if cfg["model"] == "bayes_unet":
        return get_model("bayes_unet", in_channels=3, out_channels=1, base=cfg["base"], depth=cfg["depth"],
                         upsample=cfg.get("upsample", "bilinear"))
    if cfg["model"] == "mlp":
        return get_model("mlp")
    raise ValueError(f"unknown model {cfg['model']!r}")


def make_batch(cfg: dict[str, Any]):
    """A fixed-seed random TaskBatch of the configured shapes."""
    import torch

    from hvi import TaskBatch

    g = torch.Generator().manual_seed(cfg["seed"] + 1)
    B, ks, kq = cfg["task_batch"], cfg["k_shot"], cfg["k_query"]
    if cfg["model"] == "bayes_unet":
        s = cfg["size"]
        sx = torch.randn(B, ks, 3, s, s, generator=g)
        sy = torch.randn(B, ks, 1, s, s, generator=g)
        qx = torch.randn(B, kq, 3, s, s, generator=g)
        qy = torch.randn(B, kq, 1, s, s, generator=g)
    else:  # sinusoid-shaped regression
        amp = torch.rand(B, 1, 1, generator=g) * 4.9 + 0.1
        phase = torch.rand(B, 1, 1, generator=g) * math.pi
        sx = torch.rand(B, ks, 1, generator=g) * 10 - 5
        qx = torch.rand(B, kq, 1, generator=g) * 10 - 5
        sy, qy = amp * torch.sin(sx - phase), amp * torch.sin(qx - phase)
    return TaskBatch(sx, sy, qx, qy)


def make_engine(cfg: dict[str, Any]):
    """(MetaModel, SVI) for ``cfg``; clears the Pyro param store."""
    import pyro

    from hvi import SVI, InnerConfig, MetaModel
    from hvi.fit import make_elbo
    from hvi.likelihoods import Gaussian
    from hvi.priors.gaussian import GaussianPrior

    pyro.clear_param_store()
    net = build_net(cfg)
    meta = MetaModel(
        net,
        GaussianPrior(init_scale=cfg["prior_scale"]),
        Gaussian(init_scale=cfg["noise_scale"]),
        inner=InnerConfig(
            steps=cfg["inner_steps"], lr=cfg["inner_lr"], kl_weight=cfg["kl_weight"],
            first_order=cfg["first_order"], update=cfg.get("update", "gradient"),
            memory=cfg.get("memory_mode", "none"), curvature_every=cfg.get("curvature_every", 1),
            curvature=cfg.get("curvature", "pair"),
        ),
    )
    # --compile / --autocast: the network's forward (FunctionalNet.configure).
    compile_opt = cfg.get("compile") or False
    meta.net.configure(compile=True if compile_opt == "inductor" else compile_opt, autocast=cfg.get("autocast", "none"))
    svi = SVI(meta.model, meta.guide, pyro.optim.Adam({"lr": cfg["lr"]}), loss=make_elbo())
    return meta, svi


class NaiveMeta:
    """The reference: a plain-PyTorch, one-task-at-a-time meta-step.

    Parameters (unconstrained, as Pyro stores them): ``loc[n]`` and
    ``log_scale[n]`` per weight tensor (p(φ|θ) = N(loc, exp(log_scale))), and
    ``log_noise`` (the Gaussian likelihood's σ). λ = (loc, ρ) with
    σ_q = softplus(ρ), starting at λ^(0) = (θ_loc, softplus⁻¹(θ_scale)).
    """

    def __init__(self, net, cfg: dict[str, Any]) -> None:
        import torch

        self.torch = torch
        self.net = net
        self.cfg = cfg
        self.names = [n for n, _ in net.named_parameters()]
        self.loc = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}
        self.log_scale = {
            n: torch.full_like(p, math.log(cfg["prior_scale"])).requires_grad_()
            for n, p in net.named_parameters()
        }
        self.log_noise = torch.tensor(math.log(cfg["noise_scale"])).requires_grad_()
        params = [*self.loc.values(), *self.log_scale.values(), self.log_noise]
        self.opt = torch.optim.Adam(params, lr=cfg["lr"])

    @property
    def num_weights(self) -> int:
        return sum(v.numel() for v in self.loc.values())

    def f(self, w, x):
        from torch.func import functional_call

        return functional_call(self.net, w, (x,))

    @staticmethod
    def normal_log_prob(x, loc, scale):
        return -((x - loc) ** 2) / (2 * scale**2) - scale.log() - 0.5 * math.log(2 * math.pi)

    @staticmethod
    def kl_normal(q_loc, q_scale, p_loc, p_scale):
        """KL(N(q_loc, q_scale²) ‖ N(p_loc, p_scale²)), elementwise."""
        var_ratio = (q_scale / p_scale) ** 2
        t1 = ((q_loc - p_loc) / p_scale) ** 2
        return 0.5 * (var_ratio + t1 - 1 - var_ratio.log())

    def task_loss(self, xs, ys, xq, yq, scale_factor, inner_eps=None, outer_eps=None):
        """−(M/B)·ELBO_i for one task (a differentiable scalar).

        ``inner_eps[n]`` is ``(K, *w)`` and ``outer_eps[n]`` is ``(*w)``
        standard-normal noise; drawn here when not given.
        """
        torch = self.torch
        F = torch.nn.functional
        cfg = self.cfg
        K, alpha, beta = cfg["inner_steps"], cfg["inner_lr"], cfg["kl_weight"]
        create_graph = not cfg["first_order"]
        theta_loc = self.loc
        theta_scale = {n: v.exp() for n, v in self.log_scale.items()}
        sigma = self.log_noise.exp()
        # λ^(0) = θ
        lam_loc = dict(theta_loc)
        lam_rho = {n: s + torch.log(-torch.expm1(-s)) for n, s in theta_scale.items()}
        Ns = xs.shape[0]
        for k in range(K):
            q_scale = {n: F.softplus(r) for n, r in lam_rho.items()}
            phi = {}
            for n in self.names:
                e = torch.randn_like(lam_loc[n]) if inner_eps is None else inner_eps[n][k]
                phi[n] = lam_loc[n] + q_scale[n] * e
            loglik = self.normal_log_prob(ys, self.f(phi, xs), sigma).sum()
            kl = sum(
                self.kl_normal(lam_loc[n], q_scale[n], theta_loc[n], theta_scale[n]).sum()
                for n in self.names
            )
            objective = (loglik - beta * kl) / Ns
            grads = torch.autograd.grad(
                objective,
                [lam_loc[n] for n in self.names] + [lam_rho[n] for n in self.names],
                create_graph=create_graph,
            )
            g_loc, g_rho = grads[: len(self.names)], grads[len(self.names):]
            lam_loc = {n: lam_loc[n] + alpha * g for n, g in zip(self.names, g_loc)}
            lam_rho = {n: lam_rho[n] + alpha * g for n, g in zip(self.names, g_rho)}
        q_scale = {n: F.softplus(r) for n, r in lam_rho.items()}
        phi = {}
        for n in self.names:
            e = torch.randn_like(lam_loc[n]) if outer_eps is None else outer_eps[n]
            phi[n] = lam_loc[n] + q_scale[n] * e
        loglik = self.normal_log_prob(yq, self.f(phi, xq), sigma).sum()
        log_p = sum(self.normal_log_prob(phi[n], theta_loc[n], theta_scale[n]).sum() for n in self.names)
        log_q = sum(self.normal_log_prob(phi[n], lam_loc[n], q_scale[n]).sum() for n in self.names)
        return -scale_factor * (loglik + beta * (log_p - log_q))

    def loss_and_grads(self, batch, noise=None) -> float:
        """Accumulates the gradient of the meta-loss over the tasks; returns the loss."""
        B = batch.batch_size
        scale_factor = batch.num_tasks / B
        total = 0.0
        for i in range(B):
            inner = None if noise is None else {n: e[i] for n, e in noise["inner"].items()}
            outer = None if noise is None else {n: e[i] for n, e in noise["outer"].items()}
            loss = self.task_loss(
                batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i],
                scale_factor, inner, outer,
            )
            loss.backward()
            total += loss.item()
        return total

    def step(self, batch, noise=None) -> float:
        """One meta-step: zero grads, per-task losses and backward, one Adam step."""
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_and_grads(batch, noise)
        self.opt.step()
        return loss


# ----------------------------------------------------------------------------
# one (impl, configuration) -- runs inside a fresh subprocess
# ----------------------------------------------------------------------------
def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                        transposed, _output_padding, groups, output_mask, out_shape=None, **kwargs) -> int:
    """``aten.convolution_backward`` FLOPs, correct for grouped convolutions.

    torch's built-in formula counts the weight gradient of a grouped conv as if
    it were dense, i.e. ``groups`` times too many FLOPs. vmap over tasks turns
    every per-task conv into one grouped conv (``groups = B``), so without this
    fix the engine's count grows with B although its arithmetic does not.
    """
    from torch.utils.flop_counter import conv_flop_count

    def t(shape):
        return [shape[1], shape[0]] + list(shape[2:])

    flops = 0
    if output_mask[0]:
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:
        if transposed:
            dense = conv_flop_count(t(grad_out_shape), t(x_shape), t(out_shape[1]), transposed=False)
        else:
            dense = conv_flop_count(t(x_shape), t(grad_out_shape), t(out_shape[1]), transposed=False)
        flops += dense // groups
    return flops


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` by ``FlopCounterMode`` (with the grouped-conv backward fix)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


def run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    import pyro
    import torch

    torch.set_num_threads(cfg["threads"])
    pyro.set_rng_seed(cfg["seed"])
    batch = make_batch(cfg)
    if cfg["impl"] == "engine":
        meta, svi = make_engine(cfg)
        weights = meta.net.num_weights

        def step() -> float:
            chunk = cfg.get("chunk")
            return svi.step(batch) if not chunk else svi.step_chunked(batch, chunk)
    elif cfg["impl"] == "naive":
        naive = NaiveMeta(build_net(cfg), cfg)
        weights = naive.num_weights

        def step() -> float:
            return naive.step(batch)
    else:
        raise ValueError(f"unknown impl {cfg['impl']!r}")

    load_before = _loadavg()
    rss_setup = _rss_mb()
    for _ in range(cfg["warmup"]):
        step()
    times, cpu_times, losses = [], [], []
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    busy0, own0, wall0 = _busy_cpu_s(), time.process_time(), time.perf_counter()
    for _ in range(cfg["steps"]):
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(step())
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak = _peak_rss_mb()  # read before the FLOP-counted step
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    busy1, own1, wall1 = _busy_cpu_s(), time.process_time(), time.perf_counter()
    others = None
    if busy0 is not None and busy1 is not None:
        # Share of the machine's CPU time that other processes took while we ran.
        others = max(0.0, (busy1 - busy0) - (own1 - own0)) / ((wall1 - wall0) * (os.cpu_count() or 1))
    flops = count_flops(step) if cfg.get("count_flops", True) else None

    B = cfg["task_batch"]
    med = statistics.median(times) if times else float("nan")
    tasks_per_s = B / med if times else float("nan")
    gflop_per_task = None if flops is None else flops / B / 1e9
    return {
        "impl": cfg["impl"],
        "model": cfg["model"],
        "size": cfg["size"] if cfg["model"] != "mlp" else None,
        "base": cfg["base"] if cfg["model"] != "mlp" else None,
        "upsample": cfg.get("upsample", "bilinear") if cfg["model"] != "mlp" else None,
        "weights": weights,
        "k_shot": cfg["k_shot"],
        "k_query": cfg["k_query"],
        "inner_steps": cfg["inner_steps"],
        "task_batch": B,
        "first_order": cfg["first_order"],
        "update": cfg.get("update", "gradient"),
        "memory_mode": cfg.get("memory_mode", "none"),
        "curvature_every": cfg.get("curvature_every", 1),
        "curvature": cfg.get("curvature", "pair"),
        "chunk": cfg.get("chunk"),
        "compile": cfg.get("compile"),
        "autocast": cfg.get("autocast", "none"),
        "tasks_per_s": round(tasks_per_s, 4),
        "step_s_median": round(med, 5),
        "step_s_min": round(min(times), 5) if times else None,
        "step_s_max": round(max(times), 5) if times else None,
        "cpu_s_median": round(statistics.median(cpu_times), 5) if cpu_times else None,
        # Kernel time and page faults per step: the cost of memory the allocator gave back.
        "sys_s_per_step": round((usage1.ru_stime - usage0.ru_stime) / max(1, len(times)), 5),
        "minflt_per_step": round((usage1.ru_minflt - usage0.ru_minflt) / max(1, len(times))),
        "steps": cfg["steps"],
        "warmup": cfg["warmup"],
        "peak_rss_mb": round(peak, 1),
        "rss_setup_mb": round(rss_setup, 1),
        "peak_rss_delta_mb": round(peak - rss_setup, 1),
        "gflop_per_task": None if flops is None else round(gflop_per_task, 6),
        "gflop_per_s": None if flops is None else round(gflop_per_task * tasks_per_s, 3),
        "loss_last": losses[-1] if losses else None,
        "loss_finite": all(math.isfinite(v) for v in losses),
        "inner_lr": cfg["inner_lr"],
        "kl_weight": cfg["kl_weight"],
        "threads": cfg["threads"],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "nice": os.nice(0),
        "others_cpu_share": None if others is None else round(others, 3),
        "loadavg_1m": [load_before, _loadavg()],
        "torch": torch.__version__,
    }


def measure_matmul(n: int, threads: int, repeats: int = 9) -> dict[str, Any]:
    """Median float32 ``n×n @ n×n`` throughput in GFLOP/s."""
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "impl": "matmul",
        "n": n,
        "dtype": "float32",
        "gflop_per_s": round(2 * n**3 / med / 1e9, 2),
        "gflop_per_s_best": round(2 * n**3 / min(times) / 1e9, 2),
        "threads": threads,
        "repeats": repeats,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "nice": os.nice(0),
        "loadavg_1m": _loadavg(),
    }


# ----------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------
def _run_child(payload: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", json.dumps(payload)]
    env = dict(os.environ)
    if payload.get("omp_wait_policy") in ("passive", "active"):
        env["OMP_WAIT_POLICY"] = payload["omp_wait_policy"].upper()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        errors = [ln for ln in lines if "Error" in ln or "error" in ln]
        tail = "\n".join(lines[-8:] + errors[-3:])
        raise RuntimeError(f"benchmark worker failed for {payload}:\n{tail}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def _print_table(rows: list[dict[str, Any]], matmul: dict[str, Any] | None) -> None:
    cols = [
        ("impl", "impl", "{}"), ("order", None, "{}"), ("K", "inner_steps", "{}"),
        ("B", "task_batch", "{}"), ("tasks/s", "tasks_per_s", "{:.3f}"),
        ("step s", "step_s_median", "{:.3f}"), ("GFLOP/task", "gflop_per_task", "{:.4g}"),
        ("GFLOP/s", "gflop_per_s", "{:.2f}"), ("peak MB", "peak_rss_mb", "{:.0f}"),
        ("Δpeak MB", "peak_rss_delta_mb", "{:.0f}"), ("others", None, "{}"),
    ]
    table = []
    for r in rows:
        cells = []
        for head, key, fmt in cols:
            if head == "order":
                cells.append("1st" if r["first_order"] else "2nd")
            elif head == "others":
                share = r.get("others_cpu_share")
                cells.append("?" if share is None else f"{100 * share:.0f}%")
            else:
                cells.append("–" if r[key] is None else fmt.format(r[key]))
        table.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in table)) for i, (h, _, _) in enumerate(cols)]
    if rows:
        r0 = rows[0]
        shape = f"size={r0['size']} base={r0['base']} " if r0["model"] != "mlp" else ""
        print(f"model={r0['model']} {shape}weights={r0['weights']} k_shot={r0['k_shot']} "
              f"k_query={r0['k_query']} threads={r0['threads']} steps={r0['steps']} warmup={r0['warmup']}")
    print("  ".join(h.rjust(w) for (h, _, _), w in zip(cols, widths)))
    for cells in table:
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    by = {(r["impl"], r["inner_steps"], r["task_batch"], r["first_order"]): r for r in rows}
    for (impl, K, B, fo), r in sorted(by.items(), key=lambda kv: str(kv[0])):
        if impl != "engine":
            continue
        base = [v for (i2, K2, _, fo2), v in by.items() if i2 == "naive" and K2 == K and fo2 == fo]
        if base:
            best = max(v["tasks_per_s"] for v in base)
            print(f"engine K={K} B={B} {'1st' if fo else '2nd'} order: "
                  f"{r['tasks_per_s'] / best:.2f}x the best naive ({best:.3f} tasks/s)")
    print("others: share of the machine's CPU other processes used during the timed steps "
          "(timings are only meaningful near 0%)")
    if matmul is not None:
        print(f"matmul {matmul['n']}x{matmul['n']} float32: {matmul['gflop_per_s']:.1f} GFLOP/s "
              f"(median of {matmul['repeats']}, {matmul['threads']} threads)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="meta_step.py",
        description=(
            "Time meta-training steps (inner loop + outer Trace_ELBO + backward + Adam step) "
            "of the hvi engine and of a naive per-task PyTorch loop computing the same loss. "
            "Each (impl, configuration) runs in its own subprocess so its peak RSS is its own. "
            "Prints one result per (impl, configuration) and one 'matmul' line "
            "(float32 matmul GFLOP/s on this machine)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", choices=("bayes_unet", "mlp"), default="bayes_unet",
                   help="network: bayes_unet (random 3->1 channel images) or mlp "
                        "(1-40-40-1 on sinusoid-shaped data; --size/--base are ignored)")
    p.add_argument("--size", type=int, default=32, help="image height = width (bayes_unet)")
    p.add_argument("--base", type=int, default=16, help="channels at the first U-Net level")
    p.add_argument("--depth", type=int, default=3, help="U-Net levels")
    p.add_argument("--upsample", choices=("bilinear", "nearest_1x1"), default="bilinear",
                   help="U-Net decoder: bilinear (hvi's default) or nearest_1x1 (the seed reference's: "
                        "nearest upsampling and a 1x1 conv; 109,361 weights at base 16)")
    p.add_argument("--k-shot", type=int, default=5, help="support examples per task (Ns)")
    p.add_argument("--k-query", type=int, default=5, help="query examples per task")
    p.add_argument("--inner-steps", type=_int_list, default=[5],
                   help="inner gradient steps K; a comma list sweeps, e.g. 1,5")
    p.add_argument("--task-batch", type=_int_list, default=[8],
                   help="tasks per meta-step B; a comma list sweeps, e.g. 1,8")
    p.add_argument("--first-order", action="store_true",
                   help="first-order inner loop (no gradient through the inner gradients)")
    p.add_argument("--impl", choices=("engine", "naive", "both"), default="both",
                   help="which implementation(s) to time")
    p.add_argument("--steps", type=int, default=10, help="timed meta-steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed meta-steps before timing")
    p.add_argument("--repeat", type=int, default=1,
                   help="run every configuration this many times, each in a fresh process, "
                        "interleaved round by round, and report the run with the median "
                        "tasks/s (with all runs' tasks/s and peaks listed)")
    p.add_argument("--chunk", type=int, default=None,
                   help="engine only: tasks per backward pass (SVI.step_chunked; same step, less memory)")
    p.add_argument("--memory-mode", choices=__import__("hvi.choices").choices.MEMORY_MODES, default="none",
                   help="engine only: InnerConfig(memory=...), recompute inner steps in the backward pass")
    p.add_argument("--update", choices=("gradient", "natural"), default="gradient",
                   help="the engine's inner update (the naive reference implements 'gradient' only)")
    p.add_argument("--curvature-every", type=int, default=1,
                   help="natural update: InnerConfig(curvature_every=n), measure the curvature every n-th inner step")
    p.add_argument("--curvature", choices=__import__("hvi.choices").choices.INNER_CURVATURES, default="pair",
                   help="natural update: InnerConfig(curvature=...), antithetic sign pairs (2 evaluations per "
                        "sample) or one-sided points (1)")
    p.add_argument("--inner-lr", type=float, default=None,
                   help="inner step size α: per support example for 'gradient' (default 1e-5, small "
                        "enough that random image data do not diverge), a fraction of a full step "
                        "for 'natural' (default 0.1)")
    p.add_argument("--kl-weight", type=float, default=1.0, help="β")
    p.add_argument("--prior-scale", type=float, default=0.01, help="initial σ of p(φ|θ)")
    p.add_argument("--noise-scale", type=float, default=0.1, help="initial likelihood σ")
    p.add_argument("--lr", type=float, default=1e-4,
                   help="outer Adam learning rate (small enough that θ stays finite over the "
                        "timed steps on random data)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every worker")
    p.add_argument("--omp-wait-policy", choices=("inherit", "active", "passive"), default="inherit",
                   help="OMP_WAIT_POLICY of the workers: 'inherit' (default) leaves the environment "
                        "as it is (spinning OpenMP threads, the fastest on a quiet machine); "
                        "'passive' makes idle threads sleep, which survives a busy machine but "
                        "slows every parallel op")
    p.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                   help="glibc allocator of the workers: 'tuned' (default) calls "
                        "hvi.tune_allocator() first, as 'hvi fit' does on CPU; 'default' leaves "
                        "glibc's trimming on (every inner step then refaults its pages)")
    p.add_argument("--nice", type=int, default=0,
                   help="os.nice() increment for the workers; on a machine shared with other jobs, "
                        "-20 (needs root) keeps them from descheduling the benchmark's OpenMP "
                        "threads, which otherwise wait on each other and run 10-80x slower")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="engine only: torch.compile the network's forward (FunctionalNet.configure; default "
                        "backend inductor). The second-order inner loop's forward stays uncompiled: "
                        "AOTAutograd's compiled backward is not differentiable twice")
    p.add_argument("--autocast", choices=("none", "bf16", "fp16"), default="none",
                   help="engine only: the network's forward in reduced precision (bf16 on CPU)")
    p.add_argument("--no-matmul", action="store_true", help="skip the matmul reference worker")
    p.add_argument("--no-flops", action="store_true",
                   help="skip the FLOP-counted extra step (FlopCounterMode, slow): GFLOP columns are empty")
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the n×n matmul reference")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data and noise")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per worker")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("size", "base", "depth", "k_shot", "k_query", "threads", "matmul_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.steps < 1 or args.warmup < 0 or args.repeat < 1:
        p.error("--steps and --repeat must be >= 1 and --warmup >= 0")
    if any(b < 1 for b in args.task_batch) or any(k < 0 for k in args.inner_steps):
        p.error("--task-batch values must be >= 1 and --inner-steps values >= 0")
    if args.model == "bayes_unet" and args.size % 2 ** (args.depth - 1):
        p.error(f"--size must be divisible by 2**(depth-1) = {2 ** (args.depth - 1)}")
    if args.update == "natural" and args.impl != "engine":
        p.error("--update natural: the naive reference implements only the gradient update; add --impl engine")
    if args.curvature_every < 1 or (args.curvature_every > 1 and args.update != "natural"):
        p.error("--curvature-every must be >= 1, and > 1 only with --update natural")
    if args.curvature != "pair" and args.update != "natural":
        p.error("--curvature one_sided needs --update natural")
    if (args.compile or args.autocast != "none") and args.impl != "engine":
        p.error("--compile and --autocast configure the engine's network; add --impl engine")
    if args.inner_lr is None:
        args.inner_lr = 0.1 if args.update == "natural" else 1e-5
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._worker:
        payload = json.loads(args._worker)
        if payload.get("nice"):
            try:
                os.nice(payload["nice"])
            except OSError as e:
                print(f"meta_step.py: os.nice({payload['nice']}) failed ({e}); running at the "
                      "default priority", file=sys.stderr)
        malloc = payload.get("malloc", "tuned")
        if malloc == "tuned":
            from hvi.allocator import tune_allocator

            if not tune_allocator():
                print("meta_step.py: no glibc mallopt here; --malloc tuned runs as default",
                      file=sys.stderr)
        if payload["impl"] == "matmul":
            row = measure_matmul(payload["n"], payload["threads"])
        else:
            row = run_config(payload)
        row["malloc"] = malloc
        print(json.dumps(row), flush=True)
        return 0
    impls = ["engine", "naive"] if args.impl == "both" else [args.impl]
    cfgs = []
    for K in args.inner_steps:
        for B in args.task_batch:
            for impl in impls:
                cfgs.append({
                    "impl": impl, "model": args.model, "size": args.size, "base": args.base,
                    "upsample": args.upsample, "depth": args.depth, "k_shot": args.k_shot, "k_query": args.k_query,
                    "inner_steps": K, "task_batch": B, "first_order": args.first_order,
                    "steps": args.steps, "warmup": args.warmup, "inner_lr": args.inner_lr,
                    "update": args.update, "memory_mode": args.memory_mode, "chunk": args.chunk,
                    "curvature_every": args.curvature_every, "curvature": args.curvature,
                    "kl_weight": args.kl_weight, "prior_scale": args.prior_scale,
                    "noise_scale": args.noise_scale, "lr": args.lr, "threads": args.threads,
                    "seed": args.seed, "omp_wait_policy": args.omp_wait_policy,
                    "nice": args.nice, "malloc": args.malloc, "count_flops": not args.no_flops,
                    "compile": args.compile, "autocast": args.autocast,
                })
    # --repeat R: R rounds over all configurations (interleaved, so slow drifts of the
    # machine hit every configuration alike); each configuration reports its median run.
    runs: list[list[dict[str, Any]]] = [[] for _ in cfgs]
    for rnd in range(args.repeat):
        for i, cfg in enumerate(cfgs):
            runs[i].append(_run_child(cfg, args.timeout))
            if args.json and args.repeat == 1:
                print(json.dumps(runs[i][-1]), flush=True)
    rows = []
    for rs in runs:
        ordered = sorted(rs, key=lambda r: r["tasks_per_s"])
        row = dict(ordered[(len(ordered) - 1) // 2])
        if args.repeat > 1:
            row["repeat"] = args.repeat
            row["tasks_per_s_runs"] = [r["tasks_per_s"] for r in rs]
            row["peak_rss_mb_runs"] = [r["peak_rss_mb"] for r in rs]
            if args.json:
                print(json.dumps(row), flush=True)
        rows.append(row)
    matmul = None if args.no_matmul else _run_child(
        {"impl": "matmul", "n": args.matmul_size, "threads": args.threads,
         "omp_wait_policy": args.omp_wait_policy, "nice": args.nice, "malloc": args.malloc},
        args.timeout,
    )
    if args.json:
        if matmul is not None:
            print(json.dumps(matmul), flush=True)
    else:
        _print_table(rows, matmul)
    return 0


if __name__ == "__main__":
    sys.exit(main())
