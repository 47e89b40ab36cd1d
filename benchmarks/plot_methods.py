"""Figures of the two method studies' JSON (issue #15): ABML against MAML, first-order MAML and Reptile.

    python benchmarks/plot_methods.py
    python benchmarks/plot_methods.py --sinusoid docs/results/sinusoid_methods.json \\
        --glyph docs/results/glyph_methods.json --figure-dir docs/figures

Writes ``sinusoid_methods.png`` (query MSE ± 95% CI against inner steps, one
line per method row, log y) and ``glyph_methods.png`` (5-way 1-shot and 5-shot
query accuracy with its 95% CI against inner steps, and the pooled ECE after 3
steps with its bootstrap CI). It plots only what the JSON holds, every inner
step count it has; the legends use the row labels of ``results_table.py``, so
a line is named as its row in the README's tables. Nothing is measured here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from results_table import SINUSOID_LABELS, glyph_label

ROOT = Path(__file__).resolve().parent.parent

#: One colour per method family; a variant (a second row of the same method) is dashed in its family's colour.
COLOURS = {"maml": "C0", "fomaml": "C1", "reptile": "C2", "abml": "C3"}
MARKERS = {"maml": "o", "fomaml": "s", "reptile": "^", "abml": "D"}


#: Variants that need a style of their own beside their family's dashed one (linestyle, colour, bar hatch).
VARIANT_STYLES = {"abml_ls_2nd": ("-.", "darkred", "xx")}


def _look(name: str) -> tuple[str, str, str | None]:
    """(linestyle, colour, bar hatch) of a method row."""
    family, variant = name.split("_")[0], name not in COLOURS
    default = ("--" if variant else "-", COLOURS.get(family, "C4"), "//" if variant else None)
    return VARIANT_STYLES.get(name, default)


def _style(name: str) -> dict[str, Any]:
    line, colour, _ = _look(name)
    family, variant = name.split("_")[0], name not in COLOURS
    return {"color": colour, "marker": MARKERS.get(family, "v"), "linestyle": line,
            "markerfacecolor": "white" if variant else colour, "markersize": 5, "capsize": 3, "linewidth": 1.5}


def load(path: str | Path, key: str, script: str) -> dict[str, Any]:
    """The JSON at ``path``, which must hold ``key`` (as ``script`` writes it); ValueError with a one-line reason."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (write it with `python {script} --out {path}`)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror})") from None
    if not isinstance(d, dict) or not isinstance(d.get(key), dict) or not d[key]:
        raise ValueError(f"{path}: has no '{key}' results; is it a {script} result?")
    return d


def _steps(by_steps: dict[str, Any], path: Path, row: str) -> list[str]:
    try:
        return sorted(by_steps, key=int)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: row '{row}' has inner step keys {list(by_steps)}, not integers") from None


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return matplotlib, plt


def plot_sinusoid(path: str | Path, out: str | Path) -> dict[str, dict[str, list[float]]]:
    """Writes the sinusoid figure to ``out``; returns {row label: {"steps", "mse", "ci95"}} as plotted."""
    path = Path(path)
    d = load(path, "methods", "benchmarks/sinusoid_methods.py")
    series: dict[str, dict[str, list[float]]] = {}
    try:
        for name, r in d["methods"].items():
            b = r["by_inner_steps"]
            ks = _steps(b, path, name)
            series[SINUSOID_LABELS.get(name, name)] = {
                "name": name, "steps": [int(k) for k in ks],
                "mse": [float(b[k]["mse"]) for k in ks], "ci95": [float(b[k]["mse_ci95"]) for k in ks]}
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: a method row lacks {e} (by_inner_steps / mse / mse_ci95)") from None
    matplotlib, plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    for label, s in series.items():
        ax.errorbar(s["steps"], s["mse"], yerr=s["ci95"], label=label, **_style(s["name"]))
    steps = sorted({k for s in series.values() for k in s["steps"]})
    ax.set_xscale("symlog", linthresh=1, linscale=0.6)
    ax.set_xticks(steps)
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(alpha=0.3)
    ax.set_xlabel("inner steps at test time")
    ax.set_ylabel("query MSE ± 95% CI (lower is better)")
    cfg = d.get("config", {})
    ax.set_title(f"Sinusoid regression, 10-shot: {cfg.get('test_tasks', '?')} held-out tasks, "
                 f"{cfg.get('steps', '?')} outer steps per method", fontsize=11)
    ax.legend(fontsize=9, loc="lower left", framealpha=0.9)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return series


def plot_glyph(path: str | Path, out: str | Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Writes the glyph figure to ``out``; returns {episodes: {row label: {"steps", "accuracy", "ci95", "ece_3", ...}}}."""
    path = Path(path)
    d = load(path, "results", "benchmarks/glyph_methods.py")
    series: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        for shots, block in d["results"].items():
            for name, r in block.items():
                b = r["by_inner_steps"]
                ks = _steps(b, path, f"{shots} {name}")
                series.setdefault(shots, {})[glyph_label(name)] = {
                    "name": name, "steps": [int(k) for k in ks],
                    "accuracy": [float(b[k]["accuracy"]) for k in ks],
                    "ci95": [[float(v) for v in b[k]["accuracy_ci95"]] for k in ks],
                    "ece_3": float(b["3"]["ece"]) if "3" in b else None,
                    "ece_3_ci95": [float(v) for v in b["3"]["ece_ci95"]] if "3" in b else None}
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: a method row lacks {e} (by_inner_steps / accuracy / accuracy_ci95 / ece)") from None
    matplotlib, plt = _plt()
    panels = list(series)
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5.2 * len(panels) + 4.6, 5),
                             gridspec_kw={"width_ratios": [1.0] * len(panels) + [0.8]}, constrained_layout=True)
    for ax, shots in zip(axes, panels):
        for label, s in series[shots].items():
            lo = [s["accuracy"][i] - s["ci95"][i][0] for i in range(len(s["steps"]))]
            hi = [s["ci95"][i][1] - s["accuracy"][i] for i in range(len(s["steps"]))]
            ax.errorbar(s["steps"], s["accuracy"], yerr=[lo, hi], label=label, **_style(s["name"]))
        steps = sorted({k for s in series[shots].values() for k in s["steps"]})
        ax.set_xscale("log")
        ax.set_xticks(steps)
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.axhline(0.2, color="0.5", linewidth=0.8, linestyle=":")
        ax.set_ylim(0.15, 1.0)
        ax.grid(alpha=0.3)
        ax.set_xlabel("inner steps at test time")
        ax.set_title(f"5-way {shots}", fontsize=11)
    axes[0].set_ylabel("query accuracy, 95% CI (higher is better; dotted: chance)")
    # The ECE panel: one bar group per episode kind, one bar per method row.
    ax = axes[-1]
    labels = list(dict.fromkeys(lab for shots in panels for lab in series[shots]))
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        for i, shots in enumerate(panels):
            s = series[shots].get(label)
            if s is None or s["ece_3"] is None:
                continue
            _, colour, hatch = _look(s["name"])
            ax.bar(i + (j - (len(labels) - 1) / 2) * width, s["ece_3"], width * 0.9, color=colour,
                   hatch=hatch, edgecolor="white" if hatch else None,
                   yerr=[[s["ece_3"] - s["ece_3_ci95"][0]], [s["ece_3_ci95"][1] - s["ece_3"]]], capsize=2,
                   label=label if i == 0 else None)
    ax.set_xticks(range(len(panels)), [f"5-way {p}" for p in panels])
    ax.set_ylabel("pooled 15-bin ECE after 3 steps, 95% CI (lower is better)")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title("calibration after 3 steps\n(hatched: the variant rows)", fontsize=10)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=len(names), fontsize=9)
    cfg = d.get("config", {})
    fig.suptitle(f"Few-shot glyphs with conv4, held-out scripts: {cfg.get('test_tasks', '?')} episodes, "
                 f"{cfg.get('steps', '?')} outer steps per method, 3 inner steps in training", fontsize=11)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return series


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sinusoid", default=str(ROOT / "docs/results/sinusoid_methods.json"),
                   help="benchmarks/sinusoid_methods.py's JSON (default docs/results/sinusoid_methods.json)")
    p.add_argument("--glyph", default=str(ROOT / "docs/results/glyph_methods.json"),
                   help="benchmarks/glyph_methods.py's JSON (default docs/results/glyph_methods.json)")
    p.add_argument("--figure-dir", default=str(ROOT / "docs/figures"), help="where the PNGs go (default docs/figures)")
    args = p.parse_args(argv)
    fig_dir = Path(args.figure_dir)
    if not fig_dir.is_dir():
        print(f"plot_methods.py: error: --figure-dir {fig_dir}: no such directory", file=sys.stderr)
        return 2
    try:  # both files checked before either figure is written
        load(args.sinusoid, "methods", "benchmarks/sinusoid_methods.py")
        load(args.glyph, "results", "benchmarks/glyph_methods.py")
        plot_sinusoid(args.sinusoid, fig_dir / "sinusoid_methods.png")
        plot_glyph(args.glyph, fig_dir / "glyph_methods.png")
    except ValueError as e:
        print(f"plot_methods.py: error: {e}", file=sys.stderr)
        return 2
    for name in ("sinusoid_methods.png", "glyph_methods.png"):
        print(f"wrote {fig_dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
