"""Markdown tables of the measured results in ``docs/results/*.json`` (what the docs quote).

    python benchmarks/results_table.py sinusoid        # the sinusoid table
    python benchmarks/results_table.py conjugate       # one natural vs gradient step
    python benchmarks/results_table.py solar           # hvi fit --model bayes_unet, evaluated
    python benchmarks/results_table.py nuts            # full hierarchical VI against NUTS
    python benchmarks/results_table.py meta_step       # a meta-step's time and memory, gradient vs natural
    python benchmarks/results_table.py curvature       # natural update, curvature every step vs every 5th: quality and cost
    python benchmarks/results_table.py one_sided       # natural update, antithetic pairs vs one-sided points: quality and cost
    python benchmarks/results_table.py curvature_noise # why no one-evaluation curvature: each estimate's error on one task
    python benchmarks/results_table.py cli_quickstart  # the README's hvi fit / evaluate / diagnose transcript
    python benchmarks/results_table.py sinusoid_methods  # ABML vs MAML, FOMAML, Reptile, one budget
    python benchmarks/results_table.py sinusoid_abml_screen  # ABML settings screened against MAML, short budget
    python benchmarks/results_table.py glyph_abml_screen  # ABML settings screened on 5-shot glyph episodes
    python benchmarks/results_table.py glyph_abml_step  # why: the first natural step on 1- vs 5-shot glyph episodes
    python benchmarks/results_table.py siren_study     # SIREN meta-initialization: PSNR vs steps, meta vs standard init
    python benchmarks/results_table.py siren_ntk       # the SIREN's NTK: energy of held-out faces in the top-k eigenfunctions
    python benchmarks/results_table.py siren_study_images  # the same study on photo tiles (siren_study.py --data images)
    python benchmarks/results_table.py siren_ntk_images    # its NTK table
    python benchmarks/results_table.py distributed     # hvi fit on 1 and 2 processes (torchrun, gloo)
    python benchmarks/results_table.py solar_headroom  # the best linear blend of the solar baselines vs climatology
    python benchmarks/results_table.py cli_startup     # hvi bare / --help / models --brief, with their times
    python benchmarks/results_table.py cli_threads     # hvi fit at 1 vs 2 threads: wall and CPU s, main thread vs workers
    python benchmarks/results_table.py memory_criteria # peak RSS at 20 vs 2 inner steps (checkpoint), batch 16 vs 1 (chunks)
    python benchmarks/results_table.py memory_modes    # second-order memory: every step's graph vs checkpointed steps
    python benchmarks/results_table.py scaling         # tasks/s and peak RSS vs task batch, inner steps, image size
    python benchmarks/results_table.py scaling_guide   # per memory mode: CPU cost vs none, peak RSS growth per axis
    python benchmarks/results_table.py reference_speed # engine vs the seed reference and the naive loop: #16's speed criteria
    python benchmarks/results_table.py reference_speed_same_net # the same, the engine on the reference's own U-Net
    python benchmarks/results_table.py conv_ceiling    # the step's convolutions alone: the GFLOP/s criterion's ceiling
    python benchmarks/results_table.py layout_ab       # channels-last max-pool and head gradient vs PyTorch's own ops
    python benchmarks/results_table.py net_options     # torch.compile and a bf16 forward: speed and meta-gradient error
    python benchmarks/results_table.py zoo             # every zoo model's defaults: adapted vs prior vs scratch
    python benchmarks/results_table.py --update README.md docs/*.md   # rewrite the marked tables in place

Each table ends with the command and date that produced its numbers.
"""

from __future__ import annotations

import json
import re
import statistics
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def sinusoid() -> str:
    rows = ["| inner update | 0 steps (prior) | 1 step | 5 steps | 10 steps | training |", "|---|---|---|---|---|---|"]
    notes = []
    for name, label in (("sinusoid_tuned.json", "natural, α learned per tensor, fixed σ = 0.1, prior scale 0.03 (the snippet; `hvi fit --model mlp`)"),
                        ("sinusoid.json", "natural, α = 0.1, learned σ, prior scale 0.1 (the earlier `mlp` defaults)"),
                        ("sinusoid_gradient.json", "gradient ascent, α = 0.01")):
        path = RESULTS / name
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        cells = [f"{d['by_inner_steps'][k]['mse']:.3f} ± {d['by_inner_steps'][k]['mse_ci95']:.3f}" for k in ("0", "1", "5", "10")]
        cfg = d["config"]
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {cfg['steps']} steps × {cfg['inner_steps']} inner, {d['fit_seconds']:.0f} s |")
        notes.append(f"`{d['command']}` ({d['date']})")
    other = ""
    for pattern, row in (("sinusoid_tuned_seed*.json", "first"), ("sinusoid_seed*.json", "second")):
        seeds = []
        for path in sorted(RESULTS.glob(pattern)):  # the row's configuration at other seeds
            d = json.loads(path.read_text())
            seeds.append(f"seed {d['config']['seed']}: {d['by_inner_steps']['5']['mse']:.3f} ± "
                         f"{d['by_inner_steps']['5']['mse_ci95']:.3f}")
            notes.append(f"`{d['command']}` ({d['date']})")
        if seeds:
            other += f" The {row} row at other seeds of the network's init and fit, after 5 steps: {'; '.join(seeds)}."
    return "\n".join(rows) + "\n\nQuery MSE ± 95% CI over held-out tasks (seed 0)." + other + " From " + "; ".join(notes) + "."


def conjugate() -> str:
    d = json.loads((RESULTS / "natural_conjugate.json").read_text())
    rows = ["| prior sd / noise sd | natural, α = 1: mean, sd | gradient, α = 0.01: mean, sd | gradient, α = 0.1: mean, sd |", "|---|---|---|---|"]
    for r in d["rows"]:
        cells = [f"{r[k]['mean_rel_err']:.1e}, {r[k]['sd_rel_err']:.1e}" for k in ("natural_alpha_1", "gradient_alpha_0.01", "gradient_alpha_0.1")]
        rows.append(f"| {r['prior_scale_over_noise']:g} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + f"\n\nLargest relative error after one step ({d['setup']}). From `{d['command']}` ({d['date']})."


def solar() -> str:
    d = json.loads((RESULTS / "solar.json").read_text())
    ev = d["evaluation"]
    cols = [("adapted posterior", ev["metrics"])] + [
        (name, ev["baselines"][key]["metrics"])
        for key, name in (("prior", "prior (0 steps)"), ("scratch", "scratch (no meta-learning)"),
                          ("persistence", "persistence"), ("climatology", "climatology"))
        if key in ev["baselines"]
    ]

    def cell(m, key):
        if key not in m or m[key]["value"] is None:
            return "–"
        v = m[key]
        return f"{v['value']:.3f} ({v['ci_low']:.3f}–{v['ci_high']:.3f})"

    rows = ["| metric | " + " | ".join(c for c, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for key, label in (("rmse", "RMSE"), ("crps", "CRPS"), ("coverage_90", "90% interval coverage")):
        rows.append(f"| {label} | " + " | ".join(cell(m, key) for _, m in cols) + " |")
    skill = "; ".join(
        f"skill against {k}: {v['value']:.3f} (95% CI {v['ci_low']:.3f} to {v['ci_high']:.3f})" for k, v in ev.get("skill", {}).items()
    )
    seeds, cmds = [], [f"`{d['command']}` ({d['date']})"]
    for path in sorted(RESULTS.glob("solar_seed*.json")):  # the same defaults, other seeds of the fit
        other = json.loads(path.read_text())
        v, seed = other["evaluation"]["skill"]["climatology"], other["config"]["seed"]
        seeds.append(f"seed {seed}: {v['value']:.3f} ({v['ci_low']:.3f} to {v['ci_high']:.3f}), "
                     f"RMSE {other['evaluation']['metrics']['rmse']['value']:.3f}")
        cmds.append(f"`{other['command']}` ({other['date']})")
    others = f" Skill against climatology at other seeds of the fit: {'; '.join(seeds)}." if seeds else ""
    return (
        "\n".join(rows)
        + f"\n\nMean and 95% CI over {ev['num_tasks']} held-out tasks (seed {d['config']['seed']}); {skill}. "
        + f"Training took {d['fit_seconds']:.0f} s.{others} From {'; '.join(cmds)}."
    )


def zoo() -> str:
    """Every zoo model's ``hvi fit`` defaults: adapted posterior vs the prior (0 steps) and a scratch network."""
    paths = [RESULTS / "solar.json", *sorted(RESULTS.glob("zoo_*.json"))]
    rows = ["| model | data | metric | adapted | prior (0 steps) | scratch | fit time |", "|---|---|---|---|---|---|---|"]
    cmds = []
    for path in paths:
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        ev, cfg = d["evaluation"], d["config"]
        key = "accuracy" if "accuracy" in ev["metrics"] else "rmse"

        def cell(m):
            v = m.get(key)
            return "–" if v is None or v["value"] is None else f"{v['value']:.3f} ± {v['value'] - v['ci_low']:.3f}"

        # a row run with options beyond its defaults (other than --data) says which
        extra = shlex.split(d["command"].partition(" -- ")[2])
        extra = [a for i, a in enumerate(extra) if a != "--data" and (i == 0 or extra[i - 1] != "--data")]
        model = f"{cfg['model']} (`{' '.join(extra)}`)" if extra else cfg["model"]
        rows.append(f"| {model} | {cfg['data']} | {key} | {cell(ev['metrics'])} | "
                    f"{cell(ev['baselines']['prior']['metrics'])} | {cell(ev['baselines']['scratch']['metrics'])} | "
                    f"{d['fit_seconds']:.0f} s |")
        cmds.append(f"`{d['command']}` ({d['date']})")
    return "\n".join(rows) + "\n\nMean ± 95% CI half-width over the held-out tasks. From " + "; ".join(cmds) + "."


def curvature() -> str:
    """The natural update with the curvature measured every step against every 5th step: quality and cost."""
    cost = json.loads((RESULTS / "meta_step_updates.json").read_text())["summary"]
    ratio = {s["curvature_every"]: s["cpu_ratio_to_gradient"] for s in cost.values()
             if s["update"] == "natural" and s.get("curvature", "pair") == "pair"}
    rows = ["| source | metric | every step | every 5 steps |", "|---|---|---|---|"]
    cmds = []
    pairs = (("solar", "solar.json", "solar_curvature_every5.json"),
             ("sinusoid", "sinusoid.json", "sinusoid_curvature_every5.json"))
    for name, a, b in pairs:
        da, db = (json.loads((RESULTS / f).read_text()) for f in (a, b))
        cmds += [f"`{d['command']}` ({d['date']})" for d in (da, db)]
        if name == "solar":
            for key in ("rmse", "crps", "coverage_90"):
                va, vb = (d["evaluation"]["metrics"][key] for d in (da, db))
                rows.append(f"| solar (`hvi fit --model bayes_unet`, K = 3) | {key} | {va['value']:.4f} "
                            f"[{va['ci_low']:.4f}, {va['ci_high']:.4f}] | {vb['value']:.4f} [{vb['ci_low']:.4f}, {vb['ci_high']:.4f}] |")
        else:
            for k in ("1", "5", "10"):
                va, vb = (d["by_inner_steps"][k] for d in (da, db))
                rows.append(f"| sinusoid (MLP, trained with K = 10) | query MSE after {k} step{'s' if k != '1' else ''} | {va['mse']:.3f} ± "
                            f"{va['mse_ci95']:.3f} | {vb['mse']:.3f} ± {vb['mse_ci95']:.3f} |")
    rows.append(f"| meta-step cost (U-Net, K = 5, second order) | CPU time vs a gradient step | {ratio[1]:.2f}× | {ratio[5]:.2f}× |")
    return ("\n".join(rows) + "\n\nMean [95% CI] over the held-out tasks (solar) or ± 95% CI half-width (sinusoid). "
            "From " + "; ".join(cmds) + "; cost from `docs/results/meta_step_updates.json` (`results_table.py meta_step`).")


def one_sided() -> str:
    """The natural update's curvature from antithetic pairs (default) vs one-sided points: sinusoid quality and cost."""
    dc = json.loads((RESULTS / "meta_step_one_sided.json").read_text())
    runs = {s["curvature"]: s for s in dc["summary"].values() if s["update"] == "natural" and s["curvature_every"] == 1}
    assert all(s["loss_finite"] for s in runs.values()), "meta_step_one_sided.json: an inner loop diverged"
    cost = {k: s["cpu_ratio_to_gradient"] for k, s in runs.items()}
    da, db = (json.loads((RESULTS / f).read_text()) for f in ("sinusoid_tuned.json", "sinusoid_one_sided.json"))
    rows = ["| source | metric | pairs m ± σ·r (default) | one-sided m + σ·r |", "|---|---|---|---|"]
    for k in ("1", "5", "10"):
        va, vb = (d["by_inner_steps"][k] for d in (da, db))
        rows.append(f"| sinusoid (README setting, K = 5) | query MSE after {k} step{'s' if k != '1' else ''} | "
                    f"{va['mse']:.3f} ± {va['mse_ci95']:.3f} | {vb['mse']:.3f} ± {vb['mse_ci95']:.3f} |")
    rows.append(f"| sinusoid | training time | {da['fit_seconds']:.0f} s | {db['fit_seconds']:.0f} s |")
    rows.append(f"| meta-step cost (U-Net, K = 5, second order, α = {runs['pair']['inner_lr']:g}) | CPU time vs a "
                f"gradient step | {cost['pair']:.2f}× | {cost['one_sided']:.2f}× |")
    cmds = [f"`{d['command']}` ({d['date']})" for d in (da, db, dc)]
    per_round = {k: [r["cpu_s_median"] for r in dc["results"] if r["impl"] == "engine" and r["update"] == u
                     and r.get("curvature_every", 1) == 1 and r.get("curvature", "pair") == c]
                 for k, u, c in (("gradient", "gradient", "pair"), ("pair", "natural", "pair"),
                                 ("one_sided", "natural", "one_sided"))}
    rounds = ", ".join(f"{o / g:.2f}" for o, g in zip(per_round["one_sided"], per_round["gradient"]))
    return ("\n".join(rows) + "\n\nMean ± 95% CI half-width over the held-out tasks. Cost: medians of CPU s per "
            f"meta-step over {dc['config']['rounds']} alternating rounds (one-sided vs gradient by round: {rounds}; "
            f"load average {dc['loadavg_1m_start']:.1f} at the start, {dc['loadavg_1m_end']:.1f} at the end). From "
            + "; ".join(cmds) + ".")


def curvature_noise() -> str:
    """Why no one-evaluation curvature estimate: each estimate's error on one task (benchmarks/curvature_noise.py)."""
    d = json.loads((RESULTS / "curvature_noise.json").read_text())
    names = ["pair", "one_sided", "one_sided, last-step baseline", "one_sided, exact baseline"]
    evals = {"pair": 2, "one_sided": 1, "one_sided, last-step baseline": 1, "one_sided, exact baseline": 2}
    label = {"pair": "pair m ± σ·r (default)", "one_sided": "one-sided m + σ·r",
             "one_sided, last-step baseline": "one-sided, last step's g as baseline",
             "one_sided, exact baseline": "one-sided, ∇ℓ(m) as baseline (oracle)"}
    rows = ["| network | where | estimate | evaluations | error of h | error of the mean's step |", "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        net = "U-Net (meta_step.py, random images)" if r["model"] == "bayes_unet" else "sinusoid MLP"
        net += f", prior scale {r['prior_scale']:g}"
        for where in ("start", "after one step"):
            w = r[where]
            place = "λ^(0)" if where == "start" else f"after one step (α = {r['alpha']:g}; mean moved {w['mean_moved_in_sigmas_rms']:.2f} σ rms)"
            for n in names:
                if n in w["relative_error"]:
                    rows.append(f"| {net} | {place} | {label[n]} | {evals[n]} | {w['relative_error'][n]:.2f} | "
                                f"{w['mean_step_relative_error'][n]:.2f} |")
    c = d["config"]
    return ("\n".join(rows) + "\n\nRelative error ‖estimate − reference‖/‖reference‖ of h, and of the mean's natural step "
            f"that the estimate gives, mean over {c['trials']} draws; the reference is the mean of {c['ref_pairs']} pairs. From "
            f"`{d['command']}` ({d['date']}).")


def nuts() -> str:
    ref = json.loads((RESULTS.parent.parent / "tests" / "data" / "nuts_reference.json").read_text())
    runs = []
    paths = [RESULTS / "hierarchical_nuts.json", *sorted(RESULTS.glob("hierarchical_nuts_flow*.json")),
             RESULTS / "hierarchical_nuts_gradient.json"]
    for path in paths:
        if path.exists():
            runs.append(json.loads(path.read_text()))
    rows = ["| data | fit | μ mean ± sd | τ mean ± sd | log τ mean ± sd | θ_j: worst \\|z\\|, worst \\|sd ratio − 1\\| |",
            "|---|---|---|---|---|---|"]
    for data in ("eight_schools", "baseball"):
        entry = ref["datasets"][data]
        for label, block in (("NUTS", entry["nuts"]), ("best diagonal Normal q(μ)q(log τ)", entry["gaussian_vi_optimum"])):
            cells = [f"{block[k]['mean']:.3f} ± {block[k]['sd']:.3f}" for k in ("mu", "tau", "log_tau")]
            rows.append(f"| {data} | {label} | " + " | ".join(cells) + " | |")
        for run in runs:
            for r in run["results"]:
                if r["data"] != data:
                    continue
                inner = r["inner"]
                label = f"hvi, q_theta={r.get('q_theta', 'normal')}, {inner['update']} (K = {inner['steps']}, α = {inner['lr']})"
                cells = []
                for k in ("mu", "tau", "log_tau"):
                    v, c = r["summary"][k], r["vs_nuts"][k]
                    cells.append(f"{v['mean']:.3f} ± {v['sd']:.3f} (z {c['mean_z']:+.2f}, ×{1 + c['sd_rel']:.2f})")
                th = r["vs_nuts"]["theta"]
                rows.append(f"| {data} | {label} | " + " | ".join(cells)
                            + f" | {th['max_abs_mean_z']:.2f}, {th['max_abs_sd_rel']:.2f} |")
    cmds = "; ".join(f"`{run['command']}` ({run['date']})" for run in runs)
    return ("\n".join(rows) + "\n\nz = (mean − NUTS mean)/NUTS sd; × = sd / NUTS sd. NUTS: "
            f"`{ref.get('command', 'python scripts/nuts_reference.py')}`; hvi: {cmds}.")


#: The row labels of the glyph_methods and sinusoid_methods tables (benchmarks/plot_methods.py uses them too).
GLYPH_LABELS = {"abml": "ABML", "maml": "MAML", "fomaml": "first-order MAML", "reptile": "Reptile",
                "abml_ls": "ABML, line search", "abml_ls_2nd": "ABML, line search, second order"}
SINUSOID_LABELS = {"abml": "ABML", "maml": "MAML", "fomaml": "first-order MAML", "reptile": "Reptile",
                   "maml_k5": "MAML, K = 5 in training", "abml_k1": "ABML, K = 1 in training"}


def glyph_label(name: str) -> str:
    """A glyph_methods.py method's row label."""
    return GLYPH_LABELS.get(name, f"ABML ({name})" if name.startswith("abml_") else name)


def _glyph_setting(s: dict) -> str:
    """A glyph_methods.py settings row in words."""
    if s["method"] != "abml":
        order = "first order" if s["first_order"] else "second order"
        return f"{s['inner_update']} α = {s['inner_lr']:g}, {order}, outer {s['outer_optimizer']} {s['outer_lr']:g}"
    alpha = f"α learned per tensor from {s['inner_lr']:g}" if s.get("learn_lr") else f"α = {s['inner_lr']:g}"
    if s.get("inner_lr_rho") is not None:
        alpha += f" (precision {s['inner_lr_rho']:g})"
    extra = "".join([", line search" if s.get("line_search") else "",
                     f", {s['inner_samples']} draws a step" if s.get("inner_samples", 1) > 1 else ""])
    order = "first order" if s["first_order"] else "second order"
    return f"{s['inner_update']} {alpha}{extra}, β = {s['kl_weight']:g}, {order}, outer {s['outer_optimizer']} {s['outer_lr']:g}"


def _glyph_rows(d: dict, label) -> tuple[list[str], dict[str, list[str]]]:
    """The table rows of a glyph_methods.py JSON and {"`command` (date)": the row labels it measured}."""
    rows, sources = [], {}
    for shots, block in d["results"].items():
        for name, r in block.items():
            b = r["by_inner_steps"]
            acc = [f"{b[k]['accuracy']:.3f} [{b[k]['accuracy_ci95'][0]:.3f}, {b[k]['accuracy_ci95'][1]:.3f}]" for k in ("1", "3", "10")]
            ece = f"{b['3']['ece']:.3f} [{b['3']['ece_ci95'][0]:.3f}, {b['3']['ece_ci95'][1]:.3f}]"
            rows.append(f"| 5-way {shots} | {label(name)} | {_glyph_setting(r['settings'])} | " + " | ".join(acc)
                        + f" | {ece} | {r['fit_seconds']:.0f} s |")
            sources.setdefault(f"`{r.get('command', d['command'])}` ({r.get('date', d['date'])})", []).append(
                f"{shots} {label(name)}")
    return rows, sources


def glyph_methods() -> str:
    """ABML, MAML, first-order MAML and Reptile on 5-way glyph episodes: accuracy and pooled ECE."""
    d = json.loads((RESULTS / "glyph_methods.json").read_text())
    rows = ["| episodes | method | settings | accuracy, 1 step | accuracy, 3 steps | accuracy, 10 steps | ECE, 3 steps | training |",
            "|---|---|---|---|---|---|---|---|"]
    body, sources = _glyph_rows(d, glyph_label)
    cfg = d["config"]
    done = "" if d["complete"] else " The run was stopped before every setting finished; the missing rows were not measured."
    origin = ("; ".join(f"{c} ({', '.join(rs)})" for c, rs in sources.items()) if len(sources) > 1
              else next(iter(sources)))
    return ("\n".join(rows + body) + f"\n\nQuery accuracy [95% CI over {cfg['test_tasks']} held-out episodes] after 1, 3, 10 inner "
            f"steps and the pooled 15-bin ECE [bootstrap 95% CI] after 3; every method {cfg['steps']} outer steps of "
            f"{cfg['task_batch']} episodes with 3 inner steps, one CPU thread.{done} From {origin}.{_glyph_runs(d)}")


def _glyph_runs(d: dict) -> str:
    """Each glyph_methods.py command's wall time, as its JSON keeps it under "runs"."""
    runs = d.get("runs")
    if not runs:
        return ""
    parts = [f"`{c}` {r['wall_seconds'] / 60:.0f} min (load {r['loadavg_1m_start']:g} → {r['loadavg_1m_end']:g})"
             + ("" if r["complete"] else ", stopped early") for c, r in runs.items()]
    return (" Each command's wall time, training and evaluation, with the 1-min load average at its start and end "
            "(2 cores): " + "; ".join(parts) + ".")


def glyph_abml_screen() -> str:
    """ABML settings screened on 5-way 5-shot glyph episodes (benchmarks/glyph_methods.py --merge, one variant a run)."""
    d = json.loads((RESULTS / "glyph_abml_screen.json").read_text())
    rows = ["| episodes | variant | settings | accuracy, 1 step | accuracy, 3 steps | accuracy, 10 steps | ECE, 3 steps | training |",
            "|---|---|---|---|---|---|---|---|"]
    body, sources = _glyph_rows(d, lambda n: n)
    cfg = d["config"]
    dates = sorted({s.rsplit("(", 1)[1].rstrip(")") for s in sources})
    return ("\n".join(rows + body) + f"\n\nQuery accuracy [95% CI over the first {cfg['test_tasks']} of the held-out episodes] "
            f"after 1, 3, 10 inner steps and the pooled 15-bin ECE [bootstrap 95% CI] after 3; every variant "
            f"{cfg['steps']} outer steps of {cfg['task_batch']} episodes with 3 inner steps, one CPU thread on a shared "
            "2-core machine (training times only rough). Each row: `python benchmarks/glyph_methods.py --methods VARIANT "
            f"--shots 5 --test-tasks {cfg['test_tasks']} --merge --out docs/results/glyph_abml_screen.json` "
            f"({', '.join(dates)}; each row's command is in the JSON).")


def glyph_abml_step() -> str:
    """The first natural step on 1- and 5-shot glyph episodes at conv4's initialisation (benchmarks/glyph_abml_step.py)."""
    d = json.loads((RESULTS / "glyph_abml_step.json").read_text())
    rows = ["| episodes | weights with α·h/β > c_p | line search t: median [min, max] | support cross-entropy after 0 / 1 / 3 steps | the same with the line search |",
            "|---|---|---|---|---|"]
    for shots, r in d["results"].items():
        ce = r["support_cross_entropy"]
        cells = [" / ".join(f"{ce[v][k]['mean']:.2f}" for k in ("0", "1", "3")) for v in ("abml", "abml_ls")]
        t = r["line_t"]
        rows.append(f"| 5-way {shots} | {r['newton_fraction']:.1%} | {t['median']:.2f} [{t['min']:.2f}, {t['max']:.2f}] | "
                    + " | ".join(cells) + " |")
    s = next(iter(d["results"].values()))["settings"]
    return ("\n".join(rows) + f"\n\nThe conv4 defaults (α = {s['alpha']:g}, β = {s['kl_weight']:g}, prior scale "
            f"{s['prior_scale']:g}) at the shared, untrained initialisation, on {d['config']['tasks']} held-out episodes "
            f"({d['config']['samples']} weight draws each); the first two columns are the first inner step's. "
            f"From `{d['command']}` ({d['date']}).")


def sinusoid_methods() -> str:
    d = json.loads((RESULTS / "sinusoid_methods.json").read_text())
    labels = SINUSOID_LABELS
    rows = ["| method | settings | 1 step | 5 steps | 10 steps | training |", "|---|---|---|---|---|---|"]
    sources: dict[str, list[str]] = {}  # "command (date)" -> the rows it measured (rows merged in later carry their own)
    for name, r in d["methods"].items():
        s = r["settings"]
        cells = [f"{r['by_inner_steps'][k]['mse']:.3f} ± {r['by_inner_steps'][k]['mse_ci95']:.3f}" for k in ("1", "5", "10")]
        beta = f", β = {s['kl_weight']:g}" if s.get("method", name) == "abml" else ""
        alpha = f"α learned per tensor from {s['inner_lr']:g}" if s.get("learn_lr") else f"α = {s['inner_lr']:g}"
        lik = s.get("likelihood", "")
        noise = (f"noise σ learned from {lik.split('init ')[1].rstrip(')')}" if "learned" in lik
                 else f"fixed noise σ = {lik.split('sigma = ')[-1]}")
        model = f", {noise}, prior scale from {s['prior_init_scale']:g}" if "prior_init_scale" in s else ""
        setting = (f"{s['inner_update']} {alpha}{beta}{model}, K = {s['train_inner_steps']} in training, "
                   f"outer {s['outer_optimizer']} {s['outer_lr']:g}")
        rows.append(f"| {labels.get(name, name)} | {setting} | " + " | ".join(cells) + f" | {r['fit_seconds']:.0f} s |")
        sources.setdefault(f"`{r.get('command', d['command'])}` ({r.get('date', d['date'])})", []).append(labels.get(name, name))
    cfg = d["config"]
    cover = ["/".join(f"{r['by_inner_steps'][k]['coverage_90']:.2f}" for k in ("1", "5", "10")) + f" ({labels.get(n, n)})"
             for n, r in d["methods"].items() if "coverage_90" in r["by_inner_steps"]["1"]]
    cover = (f" ABML's 90% predictive intervals covered {', '.join(cover)} of the query points after 1/5/10 steps."
             if cover else "")
    origin = "; ".join(f"{c} ({', '.join(rs)})" for c, rs in sources.items()) if len(sources) > 1 else next(iter(sources))
    return ("\n".join(rows) + f"\n\nQuery MSE ± 95% CI over {cfg['test_tasks']} held-out tasks after 1, 5, 10 inner steps; "
            f"every method {cfg['steps']} outer steps of {cfg['task_batch']} tasks, one CPU thread.{cover} "
            f"From {origin}.")


def sinusoid_abml_screen() -> str:
    """ABML settings screened against MAML at a short budget (benchmarks/sinusoid_abml_screen.py)."""
    d = json.loads((RESULTS / "sinusoid_abml_screen.json").read_text())
    rows = ["| variant | settings | 1 step | 5 steps | 10 steps | 90% coverage (5 steps) | training |", "|---|---|---|---|---|---|---|"]
    for budget, runs in d["runs"].items():
        for name, r in runs.items():
            s = r["settings"]
            if s.get("method") == "maml":
                setting = "MAML: gradient α = 0.01, K = 1, fixed σ² = 1/2"
            else:
                noise = f"σ learned from {s['noise_init']:g}" if s["noise"] == "learned" else f"fixed σ = {s['noise']:.3g}"
                alpha = f"α learned from {s['lr']:g}" if s["learn_lr"] else f"α = {s['lr']:g}"
                setting = (f"{s['update']} {alpha}, K = {s['steps']}, {noise}, prior scale {s['prior_scale']:g}, "
                           f"β = {s['beta']:g}")
            if r.get("diverged_in_training"):
                rows.append(f"| {name} | {setting} | diverged in training | | | | {budget.split('x')[0]} steps |")
                continue
            b = r["by_inner_steps"]
            cells = [f"{b[k]['mse']:.3f} ± {b[k]['mse_ci95']:.3f}" for k in ("1", "5", "10")]
            cov = f"{b['5']['coverage_90']:.2f}" if "coverage_90" in b["5"] else "n/a"
            steps, rest = budget.split("x")
            batch, tests = rest.split("/")
            rows.append(f"| {name} | {setting} | " + " | ".join(cells)
                        + f" | {cov} | {steps} steps × {batch} tasks, {r['fit_seconds']:.0f} s; {tests} test tasks |")
    return ("\n".join(rows) + "\n\nQuery MSE ± 95% CI of the predictive mean; wall times on a shared 2-core machine "
            f"(load 2 to 5), so only rough. The 2000-step rows: `benchmarks/sinusoid_abml_screen.py` runs, one variant each "
            f"({d['date']}); the 8000-step rows: `benchmarks/sinusoid_methods.py` with its ABML row set to the variant "
            "(commands in `docs/results/sinusoid_abml_screen.json`).")


def _siren_data(d: dict) -> tuple[str, str]:
    """A siren_study.py JSON's test images in words and their size ("faces", "25×25"); runs before --data were faces."""
    noun = {"faces": "faces", "images": "photo tiles"}[d["config"].get("data", "faces")]
    size = re.search(r"(\d+)x(\d+) gray", d["protocol"])
    return noun, f"{size[1]}×{size[2]}"


def siren_study(file: str = "siren_study.json") -> str:
    d = json.loads((RESULTS / file).read_text())
    noun, size = _siren_data(d)
    t, match, cfg = d["psnr_by_inner_steps"], d["steps_to_match_2_meta_steps"], d["config"]
    curves = ("standard SGD", "standard SGD lr/10", "standard Adam")
    alpha = cfg["inner_lr"]
    labels = {"standard SGD": f"standard init, SGD α = {alpha:g}", "standard SGD lr/10": f"standard init, SGD α = {alpha / 10:g}",
              "standard Adam": "standard init, Adam 1e-4", "maml": "MAML init, SGD α", "reptile": "Reptile init, SGD α",
              "abml": "ABML init (predictive mean), SGD α"}
    rows = ["| init, inner optimizer | 0 steps | 1 step | 2 steps | 5 steps | 10 steps | standard-init steps to match its 2 steps: "
            + " / ".join(labels[c].split(", ")[1] for c in curves) + " | meta-training |", "|---" * 8 + "|"]

    def reach(m: dict) -> str:
        return "never" if m["steps"] is None else f"{m['steps']} ({m['steps'] / 2:g}×)"

    for name, row in t.items():
        cells = [f"{row[k]['mean']:.2f} ± {row[k]['ci95']:.2f}" for k in ("0", "1", "2", "5", "10")]
        if name in match:
            tail = " / ".join(reach(match[name][c]) for c in curves)
            fit = f"{d['fits'][name]['fit_seconds']:.0f} s"
        else:
            tail, fit = "", "–"
        rows.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + f" | {tail} | {fit} |")
    u = d.get("abml_uncertainty")
    abml = ""
    if u:
        abml = (f" ABML's std of the network output over {u['weight_draws']} weight draws after 2 steps averages "
                f"{u['epistemic_std_mean_2_steps']:.4f} (intensity in [0, 1]); its correlation with the absolute error, per image, "
                f"averages {u['corr_abs_error_vs_epistemic_std_2_steps']:.2f} (its likelihood σ is fixed at √½, so the "
                "predictive std is that σ).")
    return ("\n".join(rows)
            + f"\n\nPSNR (dB) ± 95% CI over {cfg['test_images']} held-out {noun} ({size}, all pixels fitted). 'never': not within "
            f"the {cfg['match_steps']} steps of the standard-init curves. Meta-training: siren width {cfg['width']}, depth "
            f"{cfg['depth']}, ω0 = 30, {cfg['steps']} outer Adam steps at {cfg['outer_lr']:g} of {cfg['task_batch']} {noun}, "
            f"{cfg['inner_steps']} inner SGD steps at α = {alpha:g}; ABML β = {cfg['abml_kl']:g}, initial prior scale "
            f"{cfg['abml_scale']:g}.{abml} The whole study took {d['seconds_total'] / 60:.0f} min on {cfg['threads']} thread(s) "
            f"(load average {d['load_average_start'][0]:.1f} at the start, {d['load_average_end'][0]:.1f} at the end). "
            f"From `{d['command']}` ({d['date']}).")


def siren_ntk(file: str = "siren_study.json") -> str:
    d = json.loads((RESULTS / file).read_text())
    noun, size = _siren_data(d)
    ks = ("1", "2", "5", "10", "20", "50", "100", "200")
    rows = ["| init | " + " | ".join(f"k = {k}" for k in ks) + " | top eigenvalue |", "|---" * (len(ks) + 2) + "|"]
    for name, r in d["ntk"].items():
        f = r["energy_fraction_centered"]
        rows.append(f"| {name} | " + " | ".join(f"{f[k]:.3f}" for k in ks) + f" | {r['eigenvalues_top5'][0]:.4g} |")
    raw = ", ".join(f"{n} {r['energy_fraction_raw']['1']:.3f}" for n, r in d["ntk"].items())
    one = noun[:-1]  # "face", "photo tile"
    return ("\n".join(rows) + f"\n\nFraction of the held-out {noun}' energy (each {one} minus its mean) in the span of the top-k "
            f"eigenvectors of the empirical NTK on the {size} grid, mean over {d['config']['test_images']} {noun}. The raw {noun}' "
            f"fraction at k = 1 (their mean, mostly): {raw}. From `{d['command']}` ({d['date']}).")


def siren_study_images() -> str:
    """The SIREN study on photo tiles (benchmarks/siren_study.py --data images)."""
    return siren_study("siren_study_images.json")


def siren_ntk_images() -> str:
    """The NTK table of the SIREN study on photo tiles."""
    return siren_ntk("siren_study_images.json")


def meta_step() -> str:
    d = json.loads((RESULTS / "meta_step_updates.json").read_text())
    rows = ["| inner update | curvature measured | step s (median) | vs gradient | CPU s per step | vs gradient "
            "| GFLOP per task | peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    for s in d["summary"].values():
        every = s["curvature_every"]
        measured = "n/a" if s["update"] == "gradient" else ("every step" if every == 1 else f"every {every} steps")
        if s.get("curvature", "pair") != "pair":
            measured += f", {s['curvature'].replace('_', '-')}"
        if not all(r.get("loss_finite", True) for r in d["results"] if r["impl"] == "engine"
                   and (r["update"], r.get("curvature_every", 1), r.get("curvature", "pair"))
                   == (s["update"], every, s.get("curvature", "pair"))):
            measured += " (inner loop diverged: loss not finite, cost not comparable)"
        rows.append(f"| {s['update']} | {measured} | {s['step_s_median']:.3f} | {s['step_ratio_to_gradient']:.2f}× "
                    f"| {s['cpu_s_median']:.3f} | {s['cpu_ratio_to_gradient']:.2f}× | {s['gflop_per_task']:.1f} "
                    f"| {s['peak_rss_mb']:.0f} |")
    r = next(x for x in d["results"] if x["impl"] == "engine")
    mm = d["matmul_gflop_per_s_median"]
    return ("\n".join(rows) + f"\n\nEngine, `{r['model']}` base {r['base']} ({r['weights']} weights), task batch "
            f"{r['task_batch']}, {r['k_shot']}-shot {r['size']}×{r['size']}, K = {r['inner_steps']} second-order steps, one "
            f"Monte Carlo sample, {r['threads']} thread(s); medians of {d['config']['rounds']} alternating rounds (same-run "
            f"float32 matmul: {mm:.1f} GFLOP/s). From `{d['command']}` ({d['date']}).")


def memory_modes() -> str:
    d = json.loads((RESULTS / "memory_modes.json").read_text())
    rows = ["| memory mode | task chunk | inner steps K | peak RSS MB | over setup MB | step s (median) |",
            "|---|---|---|---|---|---|"]
    for r in d["results"]:
        rows.append(f"| {r['memory_mode']} | {r.get('chunk') or 'whole batch'} | {r['inner_steps']} | {r['peak_rss_mb']:.0f} "
                    f"| {r['peak_rss_delta_mb']:.0f} | {r['step_s_median']:.2f} |")
    r = d["results"][0]
    return ("\n".join(rows) + f"\n\nSecond-order {r['update']} inner steps, `{r['model']}` ({r['weights']} weights), "
            f"task batch {r['task_batch']}, {r['k_shot']}-shot {r['size']}×{r['size']}. From `{d['command']}` ({d['date']}).")


def solar_headroom() -> str:
    d = json.loads((RESULTS / "solar_headroom.json").read_text())
    sk = d["skill_vs_climatology"]
    rows = ["| forecast | RMSE | skill vs climatology (95% CI) |", "|---|---|---|"]
    for name, v in d["rmse"].items():
        s = sk.get(name)
        cell = "–" if s is None else f"{s['value']:+.3f} ({s['ci_low']:+.3f} to {s['ci_high']:+.3f})"
        rows.append(f"| {name.replace('_', ' ')} | {v['value']:.4f} | {cell} |")
    return ("\n".join(rows) + f"\n\nDaylight pixels of the {d['num_tasks']} {d['split']} tasks; the linear blend's weights are "
            f"fitted by least squares on the train split. From `{d['command']}` ({d['date']}).")


def memory_criteria() -> str:
    rows = ["| criterion | setting | small | large | peak RSS small → large | ratio |", "|---|---|---|---|---|---|"]
    notes = []
    # memory_criteria.json, then the runs of single criteria (--only) in files of their own.
    for path in sorted(RESULTS.glob("memory_criteria*.json")):
        d = json.loads(path.read_text())
        notes.append(f"`{d['command']}` ({d['date']})")
        by: dict = {}
        for r in d["results"]:
            key = (r["criterion"], r["memory_mode"], r.get("chunk"))
            by.setdefault(key, {})[r["inner_steps"] if r["criterion"].endswith(" steps") else r["task_batch"]] = r
        for (crit, mode, chunk), rs in by.items():
            lo, hi = min(rs), max(rs)
            a, b = rs[lo]["peak_rss_mb"], rs[hi]["peak_rss_mb"]
            what = "K" if crit.endswith(" steps") else "B"
            setting = f"memory {mode}" + (f", chunk {chunk}" if chunk else "")
            size = f"{rs[lo]['size']}×{rs[lo]['size']} base {rs[lo]['base']}"
            rows.append(f"| {crit} ({size}) | {setting} | {what} = {lo} | {what} = {hi} | {a:.0f} → {b:.0f} MB | {b / a:.2f}× |")
    return ("\n".join(rows) + "\n\nSecond order, one fresh worker process per configuration. From " + "; ".join(notes) + ".")


def cli_startup() -> str:
    d = json.loads((RESULTS / "cli_startup.json").read_text())
    rows = {r["command"]: r for r in d["results"]}
    bare, brief = rows["hvi"], rows["hvi models --brief"]
    same = bare["stdout"] == rows["hvi --help"]["stdout"]
    head = "$ hvi" + ("            # the same as hvi --help; its usage, examples and options omitted here" if same else "")
    text = bare["stdout"]
    commands = text[text.index("Commands:"):] if "Commands:" in text else text
    times = ", ".join(f"`{c}` {r['seconds_median']:.2f} s" for c, r in rows.items())
    return (f"```text\n{head}\n{commands.rstrip()}\n$ hvi models --brief\n{brief['stdout'].rstrip()}\n```\n\n"
            f"Median wall time of {times} (help does not import torch). From `{d['command']}` ({d['date']}).")


def cli_quickstart() -> str:
    d = json.loads((RESULTS / "cli_quickstart.json").read_text())
    lines = []
    for step in d["steps"]:
        lines += [f"$ {step['command']}", step["stdout"].rstrip()]
    times = ", ".join(f"{s['command'].split()[1]} {s['seconds']:.0f} s" for s in d["steps"])
    return ("```text\n" + "\n".join(lines) + "\n```\n\n"
            + f"Wall times on 2 shared CPU cores: {times}. From `{d['command']}` ({d['date']}).")


def distributed() -> str:
    d = json.loads((RESULTS / "distributed.json").read_text())
    rows = ["| processes | global task batch | tasks per process | tasks/s (median) | speed-up | wall s |",
            "|---|---|---|---|---|---|"]
    for r in d["results"]:
        rows.append(f"| {r['processes']} | {r['task_batch']} | {'/'.join(map(str, r['task_batch_per_rank']))} "
                    f"| {r['tasks_per_s_median']:.0f} | {r['speedup']:.2f} | {r['wall_s']:.1f} |")
    m = d["machine"]
    return ("\n".join(rows) + f"\n\n{d['backend']}; {m['cpus']} CPU cores shared with other work (1-minute load "
            f"average {m['loadavg_1m_at_end']:.1f} at the end). From `{d['command']}` ({d['date']}).")


def _sweep_source(d: dict) -> str:
    """The commands that wrote scaling.json: the first run, then each rerun (of some sizes or series) in order."""
    runs = [*d.get("previous", []), {"command": d["command"], "date": d["date"]}]
    first, *later = [f"`{r['command']}` ({r['date']})" for r in runs]
    return first + "".join(f", then {c} replaced what it reran" for c in later)


def scaling() -> str:
    """Tasks/s and peak RSS of every series against task batch, inner steps and image size (scaling_sweep.py)."""
    d = json.loads((RESULTS / "scaling.json").read_text())
    g, rows = d["grid"], d["results"]
    series = list(dict.fromkeys(r["series"] for r in rows))
    out = []
    for axis, label, fixed in (
        ("task_batch", "task batch B", f"K = {g['inner_steps']}, {g['size']}×{g['size']}"),
        ("inner_steps", "inner steps K", f"B = {g['task_batch']}, {g['size']}×{g['size']}"),
        ("size", "image size", f"K = {g['inner_steps']}, B = {min(g['size_batches'])}"),
    ):
        on = [r for r in rows if axis in r["axes"].split("+") and (axis != "size" or r["task_batch"] == min(g["size_batches"]))]
        values = sorted({r[axis] for r in on})
        table = [f"| {label} ({fixed}) | " + " | ".join(series) + " |", "|---" * (len(series) + 1) + "|"]
        for v in values:
            cells = []
            for s in series:
                hit = [r for r in on if r["series"] == s and r[axis] == v]
                cells.append(f"{hit[0]['task_batch'] / hit[0]['cpu_s_median']:.2f} · {hit[0]['peak_rss_mb']:.0f} MB"
                             if hit else "–")
            table.append(f"| {v} | " + " | ".join(cells) + " |")
        out.append("\n".join(table))
    m = d["machine"]
    loads = [r["loadavg_1m"][-1] for r in rows if r.get("loadavg_1m")]
    failed = "; ".join(f"{f['series']} at {f['call']}: {f['error'][:80]}" for f in d.get("failures", []))
    return ("\n\n".join(out) + "\n\nTasks per CPU-second of the worker (task batch / median CPU time of a step: wall "
            "time on this busy machine mostly measured other jobs) · peak RSS, per configuration; second order unless "
            f"the series says first; "
            f"`bayes_unet` base {g['base']}, 5-shot, 5 query points, {g['threads']} thread(s), {g['warmup']} warm-up + "
            f"{g['steps']} timed meta-steps, one fresh process per configuration; inner step size α = {g['inner_lr']:g} at "
            f"{g['size']}×{g['size']}, scaled by (size / {g['size']})⁻² so that a step moves the weights as far per pixel "
            f"(the support log-likelihood sums over pixels). Taken under load on {m['cpus']} shared "
            f"CPU cores: 1-minute load average {min(loads):.1f}–{max(loads):.1f} during the runs"
            + ("" if d.get("complete", True) else "; the sweep was interrupted (incomplete)")
            + (f"; failed: {failed}" if failed else "") + f". From {_sweep_source(d)}.")


def scaling_guide() -> str:
    """Per series: its CPU cost against the engine's default, and how its peak RSS grows along each axis."""
    d = json.loads((RESULTS / "scaling.json").read_text())
    g, rows = d["grid"], d["results"]

    def at(series, size, k, b):
        hit = [r for r in rows if r["series"] == series and (r["size"], r["inner_steps"], r["task_batch"]) == (size, k, b)]
        return hit[0] if hit else None

    def cpu(r):
        return r["cpu_s_median"] / r["task_batch"]

    def growth(series, lo, hi):
        a, b = at(series, *lo), at(series, *hi)
        if not (a and b):
            return "–"
        return (f"{a['peak_rss_mb']:.0f} → {b['peak_rss_mb']:.0f} MB ({b['peak_rss_mb'] / a['peak_rss_mb']:.2f}×; "
                f"+{a['peak_rss_delta_mb']:.0f} → +{b['peak_rss_delta_mb']:.0f} over setup)")

    s0, k0, b0, b_min = g["size"], g["inner_steps"], g["task_batch"], min(g["size_batches"])
    k_lo, k_hi = min(g["inner_steps_list"]), max(g["inner_steps_list"])
    B_lo, B_hi = min(g["task_batches"]), max(g["task_batches"])
    z_lo, z_hi = min(g["sizes"]), max(g["sizes"])
    ref_base, ref_long = at("engine, memory none", s0, k0, b0), at("engine, memory none", s0, k_hi, b0)
    table = [f"| series | CPU per task vs memory none (K = {k0} · K = {k_hi}) | peak RSS, K = {k_lo} → {k_hi} (B = {b0}) "
             f"| peak RSS, B = {B_lo} → {B_hi} (K = {k0}) | peak RSS, {z_lo}² → {z_hi}² pixels (B = {b_min}) |",
             "|---|---|---|---|---|"]
    for series in dict.fromkeys(r["series"] for r in rows):
        costs = []
        for ref, k in ((ref_base, k0), (ref_long, k_hi)):
            r = at(series, s0, k, b0)
            costs.append(f"{cpu(r) / cpu(ref):.2f}×" if r and ref else "–")
        table.append(f"| {series} | {' · '.join(costs)} | {growth(series, (s0, k_lo, b0), (s0, k_hi, b0))} "
                     f"| {growth(series, (s0, k0, B_lo), (s0, k0, B_hi))} | {growth(series, (z_lo, k0, b_min), (z_hi, k0, b_min))} |")
    return ("\n".join(table) + f"\n\nFrom the sweep above (CPU seconds per task of a meta-step; peak RSS of the whole "
            f"process, and its growth over the process's RSS after setup, about 300 MB of which is torch and Pyro; "
            f"{g['size']}×{g['size']} `bayes_unet` base {g['base']} unless the column says otherwise). "
            f"From {_sweep_source(d)}.")


def reference_speed() -> str:
    """Issue #16's speed criteria: the engine against the seed reference and the naive loop (reference_speed.py)."""
    return _reference_speed(json.loads((RESULTS / "reference_speed.json").read_text()))


def _reference_speed(d: dict) -> str:
    label = {"reference": "seed reference (`higher`, one task at a time)", "engine": "engine", "naive": "naive loop"}
    rows = ["| implementation | order | task batch | tasks per CPU-s (runs) | tasks/s wall | GFLOP per task | GFLOP per CPU-s |",
            "|---|---|---|---|---|---|---|"]
    for name, s in d["summary"].items():
        impl, order, *rest = name.split("_")
        runs = ", ".join(f"{v:.2f}" for v in s["tasks_per_cpu_s_runs"])
        rows.append(f"| {label[impl]} | {'second' if order == '2nd' else 'first'} | {rest[0][1:] if rest else 1} "
                    f"| {s['tasks_per_cpu_s']:.2f} ({runs}) | {s['tasks_per_s']:.2f} | {s['gflop_per_task']:.1f} "
                    f"| {s['gflop_per_cpu_s']:.1f} |")
    crit = ["| criterion (issue #16) | needs | CPU time | CPU time, per round (median) | wall time | met (CPU time) |",
            "|---|---|---|---|---|---|"]
    names = {"engine_2nd_vs_reference_2nd": "engine second order / reference second order",
             "engine_2nd_vs_best_naive_2nd": "engine second order / naive loop at its best batch",
             "engine_2nd_gflop_share_of_matmul": "engine second-order GFLOP/s / same-run matmul",
             "engine_1st_vs_reference_2nd": "engine first order / reference second order"}
    for k, c in d["criteria"].items():
        w, r = d["criteria_wall"][k], d.get("criteria_per_round", {}).get(k)
        rounds = "–" if r is None else ", ".join(f"{v:.2f}" for v in r["ratios"]) + f" ({r['median']:.2f})"
        crit.append(f"| {names[k]} | ≥ {c['threshold']:g} | {c['ratio']:.2f} | {rounds} | {w['ratio']:.2f} "
                    f"| {'yes' if c['met'] else 'no'} |")
    cfg, mm = d["config"], d["matmul"]
    others = [v for s in d["summary"].values() for v in s["others_cpu_share_runs"] if v is not None]
    return ("\n".join(rows) + "\n\n" + "\n".join(crit)
            + f"\n\n{cfg['size']}×{cfg['size']} U-Net base {cfg['base']}, {cfg['k_shot']}-shot, {cfg['k_query']} query "
            f"points, K = {cfg['inner_steps']} gradient steps, one thread, each configuration in a fresh process; medians "
            f"of {cfg['rounds']} alternating rounds (and each criterion's ratio within each round). Tasks per CPU second of the process (the criteria's basis: other jobs "
            f"took {min(others):.0%}–{max(others):.0%} of the machine's CPU during the runs, which wall time mostly "
            f"measures); same-run 2048² float32 matmul {mm['gflop_per_cpu_s']:.0f} GFLOP per CPU-s "
            f"({mm['gflop_per_s']:.0f} per wall second; {min(r['gflop_per_cpu_s'] for r in mm['runs']):.0f}–"
            f"{max(r['gflop_per_cpu_s'] for r in mm['runs']):.0f} across the rounds). " + _reference_nets(d) + f" From `{d['command']}` ({d['date']}).")


def _reference_nets(d: dict) -> str:
    ref_w = d["summary"]["reference_2nd"]["weights"]
    eng_w = next(s["weights"] for name, s in d["summary"].items() if name.startswith("engine"))
    if d["config"].get("upsample", "bilinear") == "nearest_1x1":
        return (f"The same network on both sides: the engine and the naive loop run `bayes_unet` with "
                f"`upsample=\"nearest_1x1\"` ({eng_w:,} weights; the reference's {ref_w:,}), the reference's decoder "
                f"of nearest upsampling and a 1×1 convolution; the engine runs that convolution before the "
                f"upsampling (the same values, a quarter of its FLOPs), hence its fewer GFLOP per task.")
    return (f"The two U-Nets differ (the reference's {ref_w:,} weights upsample by nearest neighbour and a 1×1 "
            f"convolution; the engine's {eng_w:,} bilinearly), hence their GFLOP per task.")


def reference_speed_same_net() -> str:
    """Issue #16's speed criteria with the engine on the reference's own U-Net (``--upsample nearest_1x1``)."""
    same = json.loads((RESULTS / "reference_speed_same_net.json").read_text())
    text = _reference_speed(same)
    first = RESULTS / "reference_speed_same_net_first_sitting.json"
    if not first.exists():
        return text
    d = json.loads(first.read_text())
    key = "engine_2nd_vs_reference_2nd"
    later = same["criteria_per_round"][key]["ratios"]
    rounds = d["criteria_per_round"][key]["ratios"]
    both = sorted(rounds + later)
    return (text + f" An earlier sitting the same day (`{d['command']}`, its file renamed to {first.name}): "
            f"engine second order / reference second order {d['criteria'][key]['ratio']:.2f} "
            f"(per round {', '.join(f'{v:.2f}' for v in rounds)}); over both sittings' {len(both)} rounds the "
            f"per-round ratio's median is {statistics.median(both):.2f}, and {sum(v >= 2 for v in both)} of "
            f"{len(both)} rounds reach 2.")


def layout_ab() -> str:
    """Paired CPU seconds with the channels-last max-pool and head gradient against PyTorch's own (layout_ab.py)."""
    d = json.loads((RESULTS / "layout_ab.json").read_text())
    rows = ["| model | order | CPU s, PyTorch's ops | CPU s, channels-last gradients | plain / new, median of rounds "
            "| rounds faster |", "|---|---|---|---|---|---|"]
    for r in d["results"]:
        sp = r["speedup_vs_plain"]
        rows.append(f"| `{r['model']}` | {r['order']} | {r['cpu_s_median']['plain']:.3f} | {r['cpu_s_median']['new']:.3f} "
                    f"| {sp['median']:.3f}× | {sp['faster_rounds']} of {r['rounds']} |")
    loads = [d["loadavg_1m_start"]] + [r["loadavg_1m"] for r in d["results"]]
    return ("\n".join(rows) + "\n\nOne meta-step of each variant per round, in one process at one thread, the order "
            "reversed every other round; `bayes_unet`: meta_step.py's engine (base 16, 32×32, 5-shot, K = 5, task batch "
            "8), `conv4`: the glyph study's SVI step (hidden 32, 5-way 5-shot, 4 episodes, 3 natural steps with the line "
            f"search). 1-minute load {min(loads):.1f}–{max(loads):.1f}. From `{d['command']}` ({d['date']}).")


def conv_ceiling() -> str:
    """The second-order step's convolutions timed alone: the ceiling of #16's GFLOP/s criterion (conv_ceiling.py)."""
    d = json.loads((RESULTS / "conv_ceiling.json").read_text())
    s, cfg = d["summary"], d["config"]
    ref = json.loads((RESULTS / "reference_speed.json").read_text())["summary"]
    naive = max(v["tasks_per_cpu_s"] for k, v in ref.items() if k.startswith("naive_2nd"))
    rows = ["| convolution calls | calls per step | GFLOP per step | CPU s alone | GFLOP per CPU-s | vs matmul |",
            "|---|---|---|---|---|---|"]
    for name, k in sorted(d["kinds"].items(), key=lambda kv: -kv[1]["cpu_s"]):
        rows.append(f"| {name} | {k['calls']} | {k['gflop']:.1f} | {k['cpu_s']:.3f} | {k['gflop_per_cpu_s']:.0f} "
                    f"| {k['gflop_per_cpu_s'] / s['matmul_gflop_per_cpu_s']:.2f} |")
    rows.append(f"| **all, alone** | {s['calls']} | {s['conv_gflop']:.1f} | {s['conv_cpu_s']:.3f} "
                f"| {s['conv_gflop_per_cpu_s']:.0f} | {s['conv_gflop_per_cpu_s'] / s['matmul_gflop_per_cpu_s']:.2f} |")
    rows.append(f"| **the whole step** | | {s['step_gflop']:.1f} | {s['step_cpu_s']:.3f} | {s['step_gflop_per_cpu_s']:.0f} "
                f"| {s['step_share_of_matmul']:.2f} |")
    loads = [r["loadavg_1m"] for r in d["rounds"]]
    return ("\n".join(rows) + f"\n\nOne exact second-order meta-step, task batch {cfg['task_batch']} (32×32 U-Net base 16, "
            f"`upsample=\"{cfg['upsample']}\"`, 5-shot, K = 5, one thread): its {s['calls']} convolution calls "
            f"({s['distinct_calls']} distinct) replayed alone, medians of {cfg['rounds']} rounds; same-process 2048² "
            f"float32 matmul {s['matmul_gflop_per_cpu_s']:.0f} GFLOP per CPU-s. The convolutions take "
            f"{s['conv_share_of_step_time']:.0%} of the step's CPU time; were everything else free, the step would run "
            f"at {s['ceiling_share_of_matmul']:.2f} of the matmul (the criterion needs 0.60): for 0.60 everything "
            f"else would have to cost at most {s['ceiling_share_of_matmul'] / 0.6 - 1:.0%} of the convolutions' "
            f"time; it costs {1 / s['conv_share_of_step_time'] - 1:.0%}. With nothing but its convolutions the step "
            f"would run at {cfg['task_batch'] / s['conv_cpu_s']:.1f} tasks per CPU-s, "
            f"{cfg['task_batch'] / s['conv_cpu_s'] / naive:.1f}× the naive loop's best in reference_speed.json "
            f"({naive:.2f} tasks per CPU-s, another run); for 2.2× everything else would have to cost at most "
            f"{cfg['task_batch'] / s['conv_cpu_s'] / naive / 2.2 - 1:.0%} of the convolutions' time. 1-minute load "
            f"{min(loads):.1f}–{max(loads):.1f}. From `{d['command']}` ({d['date']}).")


def net_options() -> str:
    """The network's speed options (FunctionalNet.configure): tasks/s, and bf16/fp16 meta-gradients vs float32."""
    d = json.loads((RESULTS / "net_options.json").read_text())
    rows = ["| order | network forward | tasks per CPU-s | vs plain | wall tasks/s | peak RSS MB | loss finite | 1-min load |",
            "|---|---|---|---|---|---|---|---|"]
    base = {r["first_order"]: r for r in d["results"] if r["options"] == "none" and "error" not in r}
    for r in d["results"]:
        order = "first" if r["first_order"] else "second"
        if "error" in r:
            rows.append(f"| {order} | `{r['options']}` | failed: {r['error'][:100]} | | | | | |")
            continue
        b = base.get(r["first_order"])
        cpu = r["task_batch"] / r["cpu_s_median"]
        ratio = f"{cpu / (b['task_batch'] / b['cpu_s_median']):.2f}×" if b else "–"
        rows.append(f"| {order} | `{r['options']}` | {cpu:.2f} | {ratio} | {r['tasks_per_s']:.2f} | {r['peak_rss_mb']:.0f} "
                    f"| {'yes' if r['loss_finite'] else 'no'} | {r['loadavg_1m'][-1]:.1f} |")
    acc = ["| order | precision | ‖g − g_fp32‖ / ‖g_fp32‖ | max \\|g − g_fp32\\| / max \\|g_fp32\\| | finite |", "|---|---|---|---|---|"]
    for a in d["accuracy"]:
        acc.append(f"| {'first' if a['first_order'] else 'second'} | {a['autocast']} | {a['rel_grad_diff']:.1e} "
                   f"| {a['max_abs_rel_diff']:.1e} | {'yes' if a['finite'] else 'no'} |")
    r0 = next((r for r in d["results"] if "error" not in r), None)
    setup = (f"`bayes_unet` base {r0['base']}, {r0['size']}×{r0['size']}, K = {r0['inner_steps']}, task batch "
             f"{r0['task_batch']}, one thread, {r0['steps']} timed steps after 1 warm-up (which compiles)") if r0 else ""
    return ("\n".join(rows) + f"\n\n{setup}; under load. Meta-gradient of one step in reduced precision against float32 "
            f"({d['accuracy'][0]['setup']}):\n\n" + "\n".join(acc) + f"\n\nFrom `{d['command']}` ({d['date']}).")


def cli_threads() -> str:
    """hvi fit at 1 and 2 threads (task workers), and the earlier intra-op meaning: wall and CPU seconds, per-step shares."""
    rows = ["| run | `--threads` | wall s | training s | CPU s (user + sys) | 1-min load at start |", "|---|---|---|---|---|---|"]
    sources, loads, cpus = [], [], set()
    for name in ("cli_threads", "cli_threads_intraop", "cli_threads_mlp"):
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        cfg = d["config"]
        cpus.add(d["cpu_count"])
        loads += [r[k] for runs in d["runs"].values() for r in runs for k in ("load_1min_start", "load_1min_end")]
        for t, m in d["median"].items():
            label = f"{t[:-1]} intra-op (earlier)" if t.endswith("i") else t
            rows.append(f"| `{cfg['model']}`, {cfg['steps']} steps, {len(d['runs'][t])} run(s) | {label} | {m['wall_s']:.1f} "
                        f"| {m['train_s']:.1f} | {m['cpu_s']:.1f} | {m['load_1min_start']:.1f} |")
        sources.append(f"`{d['command']}` ({d['date']})")
    share = ["| model | `--threads` | CPU s / step | main thread | task workers | wall s / step | CPU vs 1 thread |",
             "|---|---|---|---|---|---|---|"]
    for name in ("thread_share", "thread_share_mlp"):
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        cpus.add(d["cpu_count"])
        for r in d["results"]:
            loads += [x[k] for x in r["runs"].values() for k in ("load_1min_start", "load_1min_end")]
            p = r["per_step"]
            share.append(f"| `{d['config']['model']}` | {r['threads']} | {p['cpu_s']:.3f} | {p['main_thread_cpu_s']:.3f} "
                         f"| {p['worker_cpu_s']:.3f} | {p['wall_s']:.3f} | {r['cpu_vs_one_thread']:.2f} |")
        sources.append(f"`{d['command']}` ({d['date']})")
    return ("\n".join(rows) + "\n\nMedians per setting; each run a fresh `hvi fit` process with the model's defaults."
            + "\n\n" + "\n".join(share) + "\n\nPer step: the difference of two runs' totals (start-up and the final "
            "validation cancel), the main thread's CPU by `time.thread_time`, the workers' the rest of the process's. "
            f"{'/'.join(map(str, sorted(cpus)))} CPU cores shared with other jobs (1-minute load average "
            f"{min(loads):.1f}–{max(loads):.1f} during the runs), so the CPU seconds are the evidence, not the "
            "wall seconds. From " + "; ".join(sources) + ".")


#: A generated table in a Markdown page: between these markers (tests/test_docs.py checks them).
MARKED = re.compile(r"^<!-- results_table\.py (\w+) -->\n(.*?)^<!-- end -->$", re.S | re.M)


def update(paths: list[str], tables: dict) -> int:
    """Rewrites every marked table in ``paths`` with the script's current output; returns how many changed."""
    changed = 0
    for path in map(Path, paths):
        text = path.read_text()

        def fill(m: re.Match) -> str:
            return f"<!-- results_table.py {m.group(1)} -->\n{tables[m.group(1)]()}\n<!-- end -->"

        new = MARKED.sub(fill, text)
        if new != text:
            path.write_text(new)
            changed += 1
            print(f"updated {path}")
    return changed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    tables = {"cli_threads": cli_threads, "reference_speed": reference_speed, "reference_speed_same_net": reference_speed_same_net, "conv_ceiling": conv_ceiling, "layout_ab": layout_ab, "scaling": scaling, "scaling_guide": scaling_guide, "net_options": net_options, "memory_criteria": memory_criteria, "solar_headroom": solar_headroom, "cli_startup": cli_startup, "memory_modes": memory_modes, "zoo": zoo, "sinusoid": sinusoid, "conjugate": conjugate, "solar": solar, "nuts": nuts, "meta_step": meta_step, "curvature": curvature, "one_sided": one_sided, "curvature_noise": curvature_noise, "cli_quickstart": cli_quickstart, "sinusoid_methods": sinusoid_methods, "sinusoid_abml_screen": sinusoid_abml_screen, "glyph_methods": glyph_methods, "glyph_abml_screen": glyph_abml_screen, "glyph_abml_step": glyph_abml_step, "distributed": distributed, "siren_study": siren_study, "siren_ntk": siren_ntk,
              "siren_study_images": siren_study_images, "siren_ntk_images": siren_ntk_images}
    if args[:1] == ["--update"] and len(args) > 1:
        update(args[1:], tables)
        return 0
    if len(args) != 1 or args[0] not in tables:
        print(f"usage: results_table.py {{{','.join(tables)}}}  |  results_table.py --update PAGE.md ...", file=sys.stderr)
        return 2
    print(tables[args[0]]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
