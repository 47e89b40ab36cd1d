"""The SIREN meta-initialization study and its NTK analysis (issue #15, seed 002) on the faces or photo-tile source.

Meta-learns a SIREN initialization (ω0 = 30; width 256, depth 5 by default)
on the 80 training faces of ``hvi.data`` "faces" (25×25 gray, intensities
scaled to [0, 1] as in the seed; every task fits *all* pixels of one image,
support = query), with MAML, Reptile and ABML, each on hvi's one engine
(``hvi.fit``): 2 inner SGD steps at α = 0.01 on the pixel MSE, batches of 3
images, outer Adam. Then, on the 10 held-out test faces:

* PSNR (over [0, 1] intensities) after 0, 1, 2, 5 and 10 inner SGD steps
  from each meta-learned init (``hvi.predict``), and from the standard SIREN
  init (Sitzmann's, the same network the meta-training started from) with
  the same inner optimizer;
* long standard-init curves (plain SGD at α, which oscillates at the standard
  init of the 256-wide SIREN: α times the top NTK curvature exceeds 2; SGD at
  α/10; and Adam at 1e-4, the SIREN paper's rate) and how many of their steps match the PSNR of 2 steps from
  each meta-learned init (the seed's claim: over 30×);
* ABML's predictive mean and std (the std of the network output over weight
  draws of q(φ), the epistemic part; the likelihood's σ is fixed at √½ so
  that the inner step is MAML's);
* the empirical NTK (``hvi.ntk``) on the 25×25 grid at the standard and each
  learned init: the energy fraction of the test faces in the top-k
  eigenfunctions, and the leading eigenfunctions as images. The fraction is
  reported for the raw faces and for each face minus its mean ("centered"):
  the raw faces' energy is mostly their mean (≈ 0.5²), which sits in the top
  eigenfunction at every init and hides the differences.

Writes ``docs/results/siren_study.json`` and the figures
``docs/figures/siren_study.png`` (PSNR vs steps, reconstructions, ABML std)
and ``docs/figures/siren_ntk.png``. ``--data images`` runs the same study on
``hvi.data`` "images" (32×32 gray tiles of scikit-image's photos, split by
photo: 1650 training tiles; the test images are ``--test-images`` tiles evenly
spaced over the 293 test tiles of coffee, coins and moon) and writes
``docs/results/siren_study_images.json``, ``docs/figures/siren_study_images.png``
and ``docs/figures/siren_ntk_images.png``. Reduced settings (what fits a shared
machine) by default; ``--full`` runs the issue's network, inner loop and
batch with the most outer steps that fit the hour (1500; the seed ran 5000)::

    OMP_NUM_THREADS=1 python benchmarks/siren_study.py            # reduced: 300 outer steps
    OMP_NUM_THREADS=1 python benchmarks/siren_study.py --data images --steps 500 --match-steps 1000
    python benchmarks/siren_study.py --full                       # 1500 outer steps, 2 threads (the hour on 2 quiet cores)

One thread's CPU time per step, measured at width 256 on 25×25 faces: MAML
0.46 s, Reptile 0.26 s, ABML 0.55 s per outer step; 0.33 s per step of a
standard-init curve (10 faces). ``--full`` is then ≈ 1900 + 1000 CPU
seconds, under the hour on one thread of a quiet machine.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import pyro
import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

import hvi
import hvi.data
import hvi.models
from hvi.data.images import pixel_grid
from hvi.functional import FunctionalNet
from hvi.ntk import empirical_ntk, energy_fraction, ntk_spectrum
from hvi.tasks import TaskBatch
from provenance import write_result

#: The inner-step counts of the PSNR table.
STEPS = (0, 1, 2, 5, 10)
#: The k of the NTK energy table.
ENERGY_KS = (1, 2, 5, 10, 20, 50, 100, 200)
#: Per --data: what a test image is called in the figures, the protocol's words, and the output files' suffix.
DATA = {"faces": ("faces", "faces source (scikit-image lfw_subset)", ""),
        "images": ("photo tiles", "images source (gray tiles of scikit-image's photos, split by photo)", "_images")}


def pick_test(n: int, m: int) -> Tensor:
    """``m`` of ``n`` test images, evenly spaced (all of them, in order, when ``m >= n``)."""
    if m >= n:
        return torch.arange(n)
    return torch.linspace(0, n - 1, m).round().long()


def tasks(images: Tensor, index: Tensor, num_tasks: int) -> TaskBatch:
    """Whole-image tasks: support = query = every pixel of each image (values in [0, 1])."""
    b, h, w = images[index].shape
    x = pixel_grid(h, w).expand(b, h * w, 2)
    y = images[index].reshape(b, h * w, 1)
    return TaskBatch(support_x=x, support_y=y, query_x=x, query_y=y, task_index=index, num_tasks=num_tasks)


def psnr(mse: Tensor) -> Tensor:
    """PSNR in dB of intensities in [0, 1]."""
    return -10.0 * torch.log10(mse)


def build(method: str, args: argparse.Namespace) -> hvi.MetaModel:
    """The model of ``method``; every method starts from the same (seeded) SIREN."""
    torch.manual_seed(args.seed)
    net = hvi.models.get_model("siren", width=args.width, depth=args.depth, w0=30.0, hidden_w0=30.0)
    likelihood = hvi.Gaussian(noise=math.sqrt(0.5))  # log p = −(y − f)² + c: the inner step is SGD on the MSE
    if method == "abml":
        inner = hvi.InnerConfig(steps=args.inner_steps, update="gradient", lr=args.inner_lr, kl_weight=args.abml_kl)
        prior = hvi.get_prior("gaussian", init_scale=args.abml_scale)
    else:
        inner = hvi.InnerConfig(steps=args.inner_steps, update="gradient", lr=args.inner_lr)
        prior = hvi.get_prior("gaussian")
    return hvi.MetaModel(net, prior=prior, likelihood=likelihood, inner=inner, method=method)


def learned_init(meta: hvi.MetaModel, batch: TaskBatch) -> dict[str, Tensor]:
    """λ^(0)'s mean: the meta-learned initialization (θ's loc), from the current param store."""
    with torch.no_grad():
        lam = meta.guide(batch, inner_steps=0)["lambda"]
    return {n: lam[n]["loc"][0].detach().clone() for n in meta.net.names}


def curve(net: FunctionalNet, init: dict[str, Tensor], x: Tensor, ys: Tensor, steps: int, optimizer: str,
          lr: float) -> Tensor:
    """PSNR ``(steps + 1, M)`` of M images fitted from ``init`` by full-batch SGD or Adam on the MSE."""
    m = ys.shape[0]
    w = {n: t.expand(m, *t.shape).clone() for n, t in init.items()}

    def loss(wi: dict[str, Tensor], y: Tensor) -> Tensor:
        return (net(wi, x) - y).pow(2).mean()

    step_fn = vmap(grad_and_value(loss))
    state = {n: (torch.zeros_like(t), torch.zeros_like(t)) for n, t in w.items()}
    out = torch.empty(steps + 1, m)
    for s in range(steps + 1):
        g, value = step_fn(w, ys)
        out[s] = psnr(value.detach())
        if s == steps:
            break
        with torch.no_grad():
            for n in w:
                if optimizer == "sgd":
                    w[n] = w[n] - lr * g[n]
                else:  # Adam, torch's defaults
                    m1, m2 = state[n]
                    m1 = 0.9 * m1 + 0.1 * g[n]
                    m2 = 0.999 * m2 + 0.001 * g[n].pow(2)
                    state[n] = (m1, m2)
                    w[n] = w[n] - lr * (m1 / (1 - 0.9 ** (s + 1))) / ((m2 / (1 - 0.999 ** (s + 1))).sqrt() + 1e-8)
    return out


def first_match(mean_curve: Tensor, target: float) -> int | None:
    """The first step whose mean PSNR reaches ``target`` (None: never within the curve)."""
    hit = (mean_curve >= target).nonzero()
    return int(hit[0]) if hit.numel() else None


def ci(values: Tensor) -> dict[str, float]:
    mean, _, hi = hvi.mean_ci(values)
    return {"mean": round(mean, 3), "ci95": round(hi - mean, 3)}


def ntk_summary(net: FunctionalNet, init: dict[str, Tensor], grid: Tensor, ys: Tensor) -> tuple[dict, Tensor, Tensor]:
    """Energy fractions (mean over images) at ENERGY_KS, top eigenvalues; the fraction curve and top eigenvectors."""
    kernel = empirical_ntk(net, init, grid, chunk_size=128)
    spec = ntk_spectrum(kernel)
    raw = energy_fraction(spec.eigenvectors, ys).mean(0)
    frac = energy_fraction(spec.eigenvectors, ys - ys.mean(-1, keepdim=True)).mean(0)
    return ({"energy_fraction_centered": {str(k): round(float(frac[k - 1]), 4) for k in ENERGY_KS if k <= len(frac)},
             "energy_fraction_raw": {str(k): round(float(raw[k - 1]), 4) for k in ENERGY_KS if k <= len(raw)},
             "eigenvalues_top5": [float(f"{v:.5g}") for v in spec.eigenvalues[:5].tolist()]},
            frac, spec.eigenvectors[:, :6])


def figures(args, h, w, test_imgs, recon, std_map, table, curves, ntk_curves, eigvecs) -> list[str]:
    noun, _, suffix = DATA[args.data]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"maml": "C0", "reptile": "C1", "abml": "C2", "standard SGD": "C7", "standard SGD lr/10": "C5",
              "standard Adam": "C3"}
    paths = []
    show = [0, 1, 2]
    cols = ["truth", *recon]
    ncols = max(len(cols) + (1 if std_map is not None else 0), 1)
    fig = plt.figure(figsize=(1.9 * max(ncols, 4), 4.2 + 1.8 * len(show)))
    gs = fig.add_gridspec(1 + len(show), ncols, height_ratios=[2.2] + [1] * len(show))
    ax = fig.add_subplot(gs[0, :])
    for name, c in curves.items():
        xs = torch.arange(c.shape[0])
        ax.plot(xs[1:], c.mean(1)[1:], color=colors.get(name, "k"), label=f"{name} (standard init)", lw=1.5)
    for name, row in table.items():
        ax.plot([max(s, 0.7) for s in STEPS], [row[str(s)]["mean"] for s in STEPS], "o-", color=colors.get(name, "k"),
                label=f"{name} (meta-learned init)", lw=2)
    ax.set_xscale("log")
    top = max(row[str(st)]["mean"] for row in table.values() for st in STEPS) + 20.0
    peak = max(float(c.mean(1).max()) for c in curves.values())
    ax.set_ylim(0, min(top, peak + 2.0))
    if peak > top:
        ax.text(0.99, 0.03, f"y clipped at {top:.0f} dB; the standard-init curves go on to {peak:.0f} dB (JSON)",
                transform=ax.transAxes, ha="right", fontsize=8)
    ax.set_xlabel("steps (SGD at the inner lr, or lr/10; Adam at 1e-4); step 0 drawn at 0.7")
    ax.set_ylabel(f"PSNR (dB), mean of test {noun}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(f"SIREN on held-out {noun} ({h}x{w}): meta-learned vs standard init "
                 f"(width {args.width}, depth {args.depth}, {args.steps} outer steps)", fontsize=10)
    for r, i in enumerate(show):
        imgs = [test_imgs[i]] + [recon[k][i] for k in recon]
        for c, (label, im) in enumerate(zip(cols, imgs)):
            a = fig.add_subplot(gs[1 + r, c])
            a.imshow(im.reshape(h, w).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            a.set_xticks([])
            a.set_yticks([])
            if r == 0:
                a.set_title(label, fontsize=8)
        if std_map is not None:
            a = fig.add_subplot(gs[1 + r, len(cols)])
            im = a.imshow(std_map[i].reshape(h, w).numpy(), cmap="magma")
            a.set_xticks([])
            a.set_yticks([])
            fig.colorbar(im, ax=a, fraction=0.046)
            if r == 0:
                a.set_title("abml std (2 steps)", fontsize=8)
    fig.tight_layout()
    p = os.path.join(args.figure_dir, f"siren_study{suffix}.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)

    labels = list(ntk_curves)
    fig = plt.figure(figsize=(11, 2.2 + 1.5 * len(labels)))
    gs = fig.add_gridspec(len(labels), 8)
    ax = fig.add_subplot(gs[:, :2])
    for name in labels:
        ax.plot(range(1, len(ntk_curves[name]) + 1), ntk_curves[name], color=colors.get(name, "C7"), label=f"{name} init")
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("energy fraction of (image - its mean) in top-k eigenfunctions", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for r, name in enumerate(labels):
        for c in range(6):
            a = fig.add_subplot(gs[r, 2 + c])
            v = eigvecs[name][:, c]
            lim = float(v.abs().max())
            a.imshow(v.reshape(h, w).numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
            a.set_xticks([])
            a.set_yticks([])
            if c == 0:
                a.set_ylabel(name, fontsize=9)
            if r == 0:
                a.set_title(f"eigenfunction #{c + 1}", fontsize=8)
    fig.suptitle(f"empirical NTK of the SIREN on the {h}x{w} grid: standard vs meta-learned init (test {noun})", fontsize=10)
    fig.tight_layout()
    p = os.path.join(args.figure_dir, f"siren_ntk{suffix}.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)
    return paths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the defaults that depend on --data and --full filled in."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=sorted(DATA), default="faces",
                   help="hvi.data source: faces (25x25, the default) or images (32x32 photo tiles)")
    p.add_argument("--full", action="store_true",
                   help="the issue's network and inner loop with the most outer steps that fit the hour on 2 cores: "
                        "1500 outer steps per method, 1000-step standard curves, 2 threads")
    p.add_argument("--steps", type=int, help="outer steps per method (default 300; --full 1500)")
    p.add_argument("--match-steps", type=int, help="length of the standard-init curves (default 1000, also with --full)")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--inner-steps", type=int, default=2, help="inner SGD steps when meta-training (default 2)")
    p.add_argument("--inner-lr", type=float, default=0.01, help="inner SGD step size α on the MSE (default 0.01)")
    p.add_argument("--outer-lr", type=float, default=1e-5, help="outer Adam learning rate (default 1e-5, the seed's)")
    p.add_argument("--task-batch", type=int, default=3, help="images per outer step (default 3)")
    p.add_argument("--methods", default="maml,reptile,abml")
    p.add_argument("--abml-kl", type=float, default=1e-3, help="ABML's KL weight β (default 1e-3)")
    p.add_argument("--abml-scale", type=float, default=3e-4, help="ABML's initial prior scale (default 3e-4)")
    p.add_argument("--abml-samples", type=int, default=16, help="ABML's predictive weight draws (default 16)")
    p.add_argument("--test-images", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default 1; --full 2)")
    p.add_argument("--out", help="the JSON (default docs/results/siren_study.json; --data images: siren_study_images.json)")
    p.add_argument("--figure-dir", default="docs/figures")
    args = p.parse_args(argv)
    args.out = args.out or f"docs/results/siren_study{DATA[args.data][2]}.json"
    args.steps = args.steps if args.steps is not None else (1500 if args.full else 300)
    args.match_steps = args.match_steps if args.match_steps is not None else 1000
    args.threads = args.threads if args.threads is not None else (2 if args.full else 1)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    noun, protocol, _ = DATA[args.data]
    torch.set_num_threads(args.threads)
    hvi.tune_allocator()
    t_start = time.perf_counter()
    load_start = os.getloadavg()

    source = hvi.data.get_source(args.data)
    train = (source.images("train") + 1) / 2  # [0, 1], as in the seed
    test = (source.images("test") + 1) / 2
    test = test[pick_test(test.shape[0], args.test_images)]
    h, w = source.image_shape
    grid = pixel_grid(h, w)
    test_batch = tasks(test, torch.arange(test.shape[0]), test.shape[0])
    ys = test_batch.query_y  # (M, N, 1)

    def sampler(g: torch.Generator) -> TaskBatch:
        return tasks(train, torch.randperm(train.shape[0], generator=g)[: args.task_batch], train.shape[0])

    def scores(meta: hvi.MetaModel, samples: int = 1) -> tuple[dict, dict]:
        row, preds = {}, {}
        for s in STEPS:
            torch.manual_seed(args.seed)
            pred = hvi.predict(meta, test_batch, inner_steps=s, num_samples=samples)
            row[str(s)] = ci(psnr((pred.mean - ys).pow(2).mean(dim=(1, 2))))
            preds[s] = pred
        return row, preds

    table, fits, recon, inits = {}, {}, {}, {}
    # The standard init through the library's own inner loop (an untrained model: θ = the network's init).
    base = build("maml", args)
    pyro.clear_param_store()
    table["standard SGD"], base_preds = scores(base)
    recon["standard, 2 steps"] = base_preds[2].mean.squeeze(-1)
    inits["standard"] = {n: t.clone() for n, t in base.net.init_weights.items()}
    std_map, abml_extra = None, None
    for method in args.methods.split(","):
        meta = build(method, args)
        t0 = time.perf_counter()
        fitted = hvi.fit(meta, sampler, steps=args.steps, lr=args.outer_lr, optimizer=pyro.optim.Adam({"lr": args.outer_lr}),
                         seed=args.seed)
        seconds = time.perf_counter() - t0
        row, preds = scores(meta, args.abml_samples if method == "abml" else 1)
        table[method] = row
        recon[f"{method}, 2 steps"] = preds[2].mean.squeeze(-1)
        inits[method] = learned_init(meta, test_batch)
        losses = torch.tensor(fitted.losses)
        fits[method] = {"fit_seconds": round(seconds, 1), "skipped_steps": len(fitted.skipped),
                        "loss_first_50": round(float(losses[:50].nanmean()), 4),
                        "loss_last_50": round(float(losses[-50:].nanmean()), 4)}
        if method == "abml":
            p2 = preds[2]
            epi = p2.samples.std(0, unbiased=False).squeeze(-1)  # (M, N): std of f over weight draws
            err = (p2.mean - ys).abs().squeeze(-1)
            corr = [float(torch.corrcoef(torch.stack([e, s]))[0, 1]) for e, s in zip(err, epi)]
            std_map = epi
            abml_extra = {"epistemic_std_mean_2_steps": round(float(epi.mean()), 5),
                          "predictive_std_mean_2_steps": round(float(p2.std.mean()), 5),
                          "fixed_noise_sigma": round(math.sqrt(0.5), 5),
                          "corr_abs_error_vs_epistemic_std_2_steps": round(sum(corr) / len(corr), 3),
                          "weight_draws": args.abml_samples}
        print(f"{method}: {args.steps} outer steps in {seconds:.0f} s; PSNR "
              + ", ".join(f"{s}: {row[str(s)]['mean']:.2f}" for s in STEPS), flush=True)

    # Long standard-init curves, and the steps they need to match 2 steps from a meta-learned init.
    net = base.net
    curves = {"standard SGD": curve(net, inits["standard"], grid, ys, args.match_steps, "sgd", args.inner_lr),
              "standard SGD lr/10": curve(net, inits["standard"], grid, ys, args.match_steps, "sgd", args.inner_lr / 10),
              "standard Adam": curve(net, inits["standard"], grid, ys, args.match_steps, "adam", 1e-4)}
    own = curves["standard SGD"].mean(1)
    check = max(abs(float(own[s]) - table["standard SGD"][str(s)]["mean"]) for s in STEPS)
    match = {}
    for method in args.methods.split(","):
        target = table[method]["2"]["mean"]
        match[method] = {"psnr_2_steps": target}
        for name, c in curves.items():
            k = first_match(c.mean(1), target)
            match[method][name] = {"steps": k, "ratio_to_2": None if k is None else k / 2,
                                   "not_reached_in": None if k is not None else args.match_steps}
    for name in ("standard SGD lr/10", "standard Adam"):
        table[name] = {str(s): ci(curves[name][s]) for s in STEPS}
    long = {name: {str(s): round(float(c[s].mean()), 3) for s in (20, 50, 100, 200, 500, 1000, 2000, 3000)
                   if s < c.shape[0]} for name, c in curves.items()}

    ntk, ntk_curves, eigvecs = {}, {}, {}
    for name, init in inits.items():
        ntk[name], ntk_curves[name], eigvecs[name] = ntk_summary(net, init, grid, ys.squeeze(-1))

    os.makedirs(args.figure_dir, exist_ok=True)
    paths = figures(args, h, w, test.reshape(test.shape[0], -1), recon, std_map,
                    {k: v for k, v in table.items() if k in fits}, curves, ntk_curves, eigvecs)
    total = time.perf_counter() - t_start
    write_result(args.out, "benchmarks/siren_study.py", argv, {
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "figure_dir")},
        "protocol": (f"{protocol}, {h}x{w} gray in [0, 1]; each task = one image, support = query = "
                     f"all {h * w} pixels; {train.shape[0]} training {noun}, PSNR (dB) on {test.shape[0]} test {noun} "
                     f"({'the first' if args.data == 'faces' else 'evenly spaced over the'} {source.images('test').shape[0]}); "
                     "siren w0 = hidden_w0 = 30; inner: SGD on the pixel MSE (Gaussian likelihood, sigma^2 = 1/2 fixed); "
                     "outer: Adam; standard init = the siren's Sitzmann init (the same seeded network every method starts from)"),
        "psnr_by_inner_steps": table,
        "standard_curves_psnr": long,
        "steps_to_match_2_meta_steps": match,
        "consistency_max_abs_psnr_diff_own_sgd_vs_hvi_predict": round(check, 5),
        "abml_uncertainty": abml_extra,
        "fits": fits,
        "ntk": ntk,
        "figures": paths,
        "seconds_total": round(total, 1),
        "load_average_start": [round(v, 2) for v in load_start],
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "cpu_count": os.cpu_count(),
    })
    print(f"wrote {args.out} and {', '.join(paths)} in {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
