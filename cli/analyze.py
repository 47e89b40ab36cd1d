"""``hvi analyze``: analyses of a finished run.

``hvi analyze ntk RUN_DIR``: the empirical neural tangent kernel
(:mod:`hvi.ntk`) of a coordinate network on its source's pixel grid, at the
run's learned initialization (λ^(0), the adapted weights before any inner
step) and at the standard initialization of the same architecture (the
network as the run built it before training: the run's seed). Writes the
leading eigenfunctions as images, the energy concentration of held-out
images in the top-k eigenfunctions, and a small JSON table.

This module's imports are light (click only): torch and matplotlib load when
a command runs, so ``hvi --help`` stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = ["analyze_group", "ntk_analysis", "ENERGY_KS"]

#: The k at which the JSON table reports the energy fraction (those ≤ N).
ENERGY_KS = (1, 2, 5, 10, 20, 50, 100, 200)

_NTK_HELP = """Empirical NTK of a coordinate network (e.g. siren on faces/images) at its learned and standard init.

The kernel K = J Jᵀ (J the per-pixel gradient of the output with respect to
every weight) over the source's pixel grid (at most 32×32 pixels), at the
run's learned initialization and at the standard initialization of the same
architecture. Writes into --out: eigenfunctions.png (the leading
eigenvectors as images, standard vs learned), energy.png (the fraction of
held-out images' energy ‖y‖² in the top-k eigenfunctions, vs k) and ntk.json
(that fraction at k = 1, 2, 5, ..., also for each image minus its mean,
whose energy the top eigenfunction otherwise dominates; and the leading
eigenvalues). Files are
written atomically; an error writes none.

\b
Examples:
  hvi analyze ntk runs/siren
  hvi analyze ntk runs/siren --out ntk_plots --images 10 --eigenfunctions 8
"""


def _coordinate_grid(run: Any, source: Any) -> tuple[int, int]:
    """``(H, W)`` of the run's pixel grid, or a one-line ``ValueError`` naming the run and the fix."""
    model = run.config.get("model", "?")
    data = run.config.get("data", "?")
    shape = getattr(source, "image_shape", None)
    if (
        shape is None
        or not hasattr(source, "images")
        or tuple(source.x_shape) != (2,)
        or tuple(source.y_shape) != (1,)
        or run.meta.likelihood.is_classification
    ):
        raise ValueError(
            f"run {run.path}: model {model!r} on data {data!r} is not a coordinate network on a pixel grid "
            "(pixel (row, col) -> one intensity); hvi analyze ntk needs a run like "
            "'hvi fit --model siren --data faces' (or --data images)."
        )
    h, w = (int(s) for s in shape)
    from hvi.ntk import MAX_POINTS

    if h * w > MAX_POINTS:
        raise ValueError(
            f"run {run.path}: its {h}x{w} images make a {h * w}x{h * w} kernel; hvi analyze ntk takes grids of at "
            f"most {MAX_POINTS} pixels (32x32): refit on smaller images (e.g. --data-arg tile_size=32)."
        )
    return h, w


def ntk_analysis(
    run_dir: str | os.PathLike,
    *,
    split: str = "test",
    images: int = 10,
    eigenfunctions: int = 8,
    device: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Computes the NTK study of a run.

    Args:
        run_dir: A finished run of a coordinate network on a pixel-grid source.
        split: Which split's images the energy fractions are measured on.
        images: How many of its images (the first ones; at most all).
        eigenfunctions: How many leading eigenfunctions to draw.
        device: Where to compute (default cpu).

    Returns:
        ``(table, arrays)``: the JSON-ready table, and the tensors the plots need.

    Raises:
        ValueError: If the run is not a coordinate network on a pixel grid,
            or an argument is out of range (one line naming the fix).
    """
    import torch

    from hvi.builders import build_source
    from hvi.cli.config import check_flag
    from hvi.data.images import pixel_grid
    from hvi.ntk import empirical_ntk, energy_fraction, ntk_spectrum
    from hvi.runs import load_run

    check_flag("--images", images, 1)
    check_flag("--eigenfunctions", eigenfunctions, 1)
    run = load_run(run_dir, device)
    source = build_source(run.config)
    h, w = _coordinate_grid(run, source)
    n = h * w
    ys = source.images(split)[:images].to(run.device).reshape(-1, n)
    batch = source.get_tasks(split, torch.arange(1)).to(run.device)
    with run.activate(), torch.no_grad():
        lam = run.meta.guide(batch, inner_steps=0)["lambda"]
    lead = next(iter(lam.values()))["loc"]
    if lead.dim() != len(run.meta.net.shapes[next(iter(lam))]) + 1:
        raise ValueError(
            f"run {run.path}: its q(θ) has Monte Carlo particles (q_theta={run.meta.q_theta!r}); "
            "hvi analyze ntk needs one learned initialization (a run with q_theta='delta')."
        )
    learned = {name: lam[name]["loc"][0].detach() for name in run.meta.net.names}
    standard = {name: t.to(run.device) for name, t in run.meta.net.init_weights.items()}
    grid = pixel_grid(h, w).to(run.device, next(iter(learned.values())).dtype)
    table: dict[str, Any] = {
        "run": str(run.path),
        "model": run.config.get("model"),
        "data": run.config.get("data"),
        "method": run.meta.method,
        "grid": [h, w],
        "split": split,
        "images": int(ys.shape[0]),
        "inits": {},
    }
    arrays: dict[str, Any] = {"shape": (h, w), "images": ys}
    for label, weights in (("standard", standard), ("learned", learned)):
        kernel = empirical_ntk(run.meta.net, weights, grid, chunk_size=256)
        spec = ntk_spectrum(kernel)
        frac = energy_fraction(spec.eigenvectors, ys).mean(0)
        centered = energy_fraction(spec.eigenvectors, ys - ys.mean(-1, keepdim=True)).mean(0)
        ks = [k for k in ENERGY_KS if k <= n]
        table["inits"][label] = {
            "energy_fraction": {str(k): round(float(frac[k - 1]), 6) for k in ks},
            "energy_fraction_centered": {str(k): round(float(centered[k - 1]), 6) for k in ks},
            "eigenvalues_top10": [float(f"{v:.6g}") for v in spec.eigenvalues[:10].tolist()],
            "trace": float(f"{float(kernel.trace()):.6g}"),
        }
        arrays[label] = {"eigenvectors": spec.eigenvectors[:, :eigenfunctions].cpu(), "fraction": frac.cpu(),
                         "centered": centered.cpu()}
    return table, arrays


def _figures(table: dict[str, Any], arrays: dict[str, Any]) -> dict[str, Any]:
    """File name → matplotlib figure (headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = arrays["shape"]
    top = arrays["standard"]["eigenvectors"].shape[1]
    fig_e, axes = plt.subplots(2, top, figsize=(1.4 * top + 0.8, 3.4), squeeze=False)
    for r, label in enumerate(("standard", "learned")):
        vecs = arrays[label]["eigenvectors"]
        for c in range(top):
            ax = axes[r][c]
            lim = float(vecs[:, c].abs().max())
            ax.imshow(vecs[:, c].reshape(h, w).numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{label} init", fontsize=9)
            if r == 0:
                ax.set_title(f"#{c + 1}", fontsize=9)
    fig_e.suptitle(f"leading NTK eigenfunctions ({table['model']} on {table['data']}, method {table['method']})", fontsize=10)
    fig_e.tight_layout()
    fig_f, ax = plt.subplots(figsize=(5.0, 3.6))
    for label, color in (("standard", "C7"), ("learned", "C0")):
        frac = arrays[label]["fraction"].numpy()
        ax.plot(range(1, len(frac) + 1), frac, color=color, label=f"{label} init")
        cen = arrays[label]["centered"].numpy()
        ax.plot(range(1, len(cen) + 1), cen, color=color, ls="--", label=f"{label} init, image minus its mean")
    ax.set_xscale("log")
    ax.set_xlabel("k (top-k NTK eigenfunctions)")
    ax.set_ylabel("fraction of image energy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"energy concentration, {table['images']} {table['split']} images", fontsize=10)
    fig_f.tight_layout()
    return {"eigenfunctions.png": fig_e, "energy.png": fig_f}


def write_ntk_outputs(out: Path, table: dict[str, Any], arrays: dict[str, Any]) -> list[Path]:
    """Writes the figures and ``ntk.json`` into ``out`` (created if missing), each atomically."""
    import matplotlib.pyplot as plt

    from hvi.atomic import atomic_path, write_json

    figures = _figures(table, arrays)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory; pass a directory path.")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for name, fig in figures.items():
            with atomic_path(out / name) as tmp:
                fig.savefig(tmp, format="png", dpi=110)
            written.append(out / name)
    finally:
        for fig in figures.values():
            plt.close(fig)
    write_json(out / "ntk.json", table)
    written.append(out / "ntk.json")
    return written


def format_ntk_table(table: dict[str, Any]) -> str:
    """The energy fractions as a small text table."""
    ks = list(table["inits"]["standard"]["energy_fraction"])
    lines = ["energy fraction in the top-k NTK eigenfunctions (mean over "
             f"{table['images']} {table['split']} images, {table['grid'][0]}x{table['grid'][1]} grid)",
             "init      " + "".join(f"{'k=' + k:>9}" for k in ks)]
    for label, row in table["inits"].items():
        lines.append(f"{label:<10}" + "".join(f"{row['energy_fraction'][k]:>9.3f}" for k in ks))
    return "\n".join(lines)


def analyze_group(context: dict[str, Any], errors: Callable[[Callable[..., Any]], Callable[..., Any]]) -> click.Group:
    """The ``hvi analyze`` command group, with the CLI's context settings and error mapping."""

    @click.group("analyze", context_settings=context)
    def analyze() -> None:
        """Analyses of a finished run: 'hvi analyze ntk RUN_DIR' (the NTK of a coordinate network)."""

    @analyze.command("ntk", help=_NTK_HELP, context_settings=context)
    @click.argument("run_dir", metavar="RUN_DIR")
    @click.option("--out", "out", metavar="DIR", help="Output directory (default: RUN_DIR/ntk).")
    @click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True,
                  help="Whose images the energy fractions are measured on.")
    @click.option("--images", type=click.IntRange(min=1), default=10, show_default=True,
                  help="How many images of the split (the first ones).")
    @click.option("--eigenfunctions", type=click.IntRange(min=1, max=32), default=8, show_default=True,
                  help="Leading eigenfunctions to draw.")
    @click.option("--device", metavar="cpu|cuda", help="Where to compute (default cpu).")
    @errors
    def ntk_cmd(run_dir, out, split, images, eigenfunctions, device) -> None:
        table, arrays = ntk_analysis(run_dir, split=split, images=images, eigenfunctions=eigenfunctions,
                                     device=device)
        target = Path(out) if out else Path(table["run"]) / "ntk"
        written = write_ntk_outputs(target, table, arrays)
        click.echo(format_ntk_table(table))
        click.echo("wrote " + ", ".join(str(p) for p in written), err=True)

    return analyze
