"""Where a second-order meta-step's CPU time goes, and CPU seconds per step before and after a change.

Two parts, both at one thread (``torch.set_num_threads(1)``, one task chunk),
exact second order, ``bayes_unet`` base 16, 32×32, 5-shot, K = 5, task
batch 8, the gradient inner update (the benchmark's defaults):

* **breakdown**: ``torch.profiler`` over one meta-step (after two warm-up
  steps) of the code on ``PYTHONPATH`` (this tree by default; each tree in
  ``--trees``), self CPU time summed by kind of operator;
* **fixed overhead**: the same meta-step on a 508-weight U-Net (base 1,
  4×4 images), whose CPU time is Pyro's, Python's and the kernel launches';
* **rounds**: ``benchmarks/meta_step.py --impl engine --steps 4 --warmup 1
  --threads 1 --json --no-matmul`` (``--steps`` sets the 4) run in each tree in turn (``PYTHONPATH``
  set to it), ``--rounds`` alternating rounds, each in a fresh process; the
  median of the per-run ``cpu_s_median`` (CPU seconds of the process per
  meta-step, which a shared machine moves far less than wall time).

Each tree's processes import all of ``hvi`` from that tree: ``pyproject.toml``
maps ``hvi.models`` to ``models/`` and ``hvi.cli`` to ``cli/``, which an
editable install resolves to its own checkout whatever ``PYTHONPATH`` says,
so a ``sitecustomize`` (put first on ``PYTHONPATH``, and so inherited by
``meta_step.py``'s worker processes) maps them to the tree's folders.

Example (``/tmp/before`` a ``git worktree`` of the commit before a change)::

    python benchmarks/speed_profile.py --trees before=/tmp/before,after=. \\
        --rounds 3 --out docs/results/speed_profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from provenance import write_result

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

PROFILE_CODE = r"""
import json, sys, time
import torch, pyro
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
import meta_step as ms
import hvi
import hvi.models.unet
for mod in (hvi, hvi.models.unet):
    assert mod.__file__.startswith(sys.argv[2]), (mod.__file__, sys.argv[2])
hvi.tune_allocator()
args = ms.parse_args(["--impl", "engine", "--threads", "1"])
cfg = dict(vars(args)); cfg.update(impl="engine", task_batch=8, inner_steps=5, first_order=False)
pyro.set_rng_seed(0)
batch = ms.make_batch(cfg)
meta, svi = ms.make_engine(cfg)
svi.step(batch); svi.step(batch)
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    svi.step(batch)
rows = [(e.key, str(e.input_shapes), e.self_cpu_time_total, e.count)
        for e in prof.key_averages(group_by_input_shape=True)]
print(json.dumps({"weights": meta.net.num_weights, "rows": rows}))
"""

# The sitecustomize of tree_env: hvi's subpackages outside hvi/ from $HVI_SPEED_TREE.
TREE_SITE = r"""
import importlib.util, os, sys
_tree = os.environ.get("HVI_SPEED_TREE")
if _tree:
    class _TreePackages:
        MAP = {"hvi.models": "models", "hvi.cli": "cli"}

        @classmethod
        def find_spec(cls, name, path=None, target=None):
            sub = cls.MAP.get(name)
            if sub is None:
                return None
            d = os.path.join(_tree, sub)
            return importlib.util.spec_from_file_location(name, os.path.join(d, "__init__.py"),
                                                          submodule_search_locations=[d])

    sys.meta_path.insert(0, _TreePackages)
"""


def tree_env(tree: Path) -> dict[str, str]:
    """The environment that makes a process (and its children) import all of ``hvi`` from ``tree``."""
    site = Path(tempfile.gettempdir()) / f"hvi_speed_profile_site_{os.getpid()}"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(TREE_SITE)
    return dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{tree}", HVI_SPEED_TREE=str(tree), OMP_NUM_THREADS="1")


VIEWS = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::resize_", "aten::as_strided",
         "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::permute", "aten::expand", "aten::select",
         "aten::slice", "aten::unsqueeze", "aten::squeeze", "aten::t", "aten::transpose", "aten::_unsafe_view",
         "aten::detach", "aten::alias", "aten::narrow", "aten::unbind", "aten::split", "aten::split_with_sizes",
         "aten::movedim", "aten::lift_fresh", "aten::zeros", "aten::zeros_like", "aten::new_zeros"}


def kind(name: str, shapes: str, weights: int) -> str:
    """The kind of an operator for the breakdown."""
    if "conv" in name:
        return "convolution (forward, backward, double backward)"
    if "upsample" in name or "max_pool" in name:
        return "upsample and max-pool"
    if "mm" in name.split("::")[-1]:
        return "matmul"
    if str(weights) in shapes:
        return "elementwise on lambda-sized (B, D) tensors"
    if name in ("aten::copy_", "aten::cat", "aten::clone", "aten::contiguous", "aten::fill_", "aten::stack"):
        return "copies, concatenation, zero-fill of activations"
    if name in VIEWS:
        return "views and allocation"
    if name.startswith("aten::"):
        return "elementwise on activations (relu, likelihood, ...)"
    return "autograd nodes, optimizer, other (self time)"


def breakdown(tree: Path) -> dict:
    """Self CPU time of one profiled meta-step by kind, in ms and shares."""
    env = tree_env(tree)
    # cwd=tree: ``python -c`` puts the working directory first on sys.path, ahead of PYTHONPATH.
    out = subprocess.run([sys.executable, "-c", PROFILE_CODE, str(tree / "benchmarks"), str(tree)], check=True,
                         capture_output=True, text=True, env=env, cwd=tree).stdout
    data = json.loads(out.strip().splitlines()[-1])
    totals: dict[str, float] = {}
    for name, shapes, self_us, _count in data["rows"]:
        k = kind(name, shapes, data["weights"])
        totals[k] = totals.get(k, 0.0) + self_us / 1e3
    total = sum(totals.values())
    return {
        "profiled_self_cpu_ms": round(total, 1),
        "by_kind": {k: {"ms": round(v, 1), "share": round(v / total, 4)}
                    for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
    }


def meta_step(tree: Path, common: list[str]) -> dict:
    env = tree_env(tree)
    cmd = [sys.executable, str(tree / "benchmarks" / "meta_step.py"), "--impl", "engine", "--json", *common]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")][0]


def parse_trees(text: str) -> dict[str, Path]:
    trees = {}
    for item in text.split(","):
        name, _, path = item.partition("=")
        if not name or not path:
            raise argparse.ArgumentTypeError(f"--trees: expected name=path[,name=path], got {item!r}")
        trees[name] = Path(path).resolve()
    return trees


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trees", type=parse_trees, default={"this": REPO},
                   help="name=path[,name=path]: source trees to measure (each put on PYTHONPATH)")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating rounds of meta_step.py per tree (0: the breakdown only)")
    p.add_argument("--steps", type=int, default=4, help="timed meta-steps per meta_step.py run")
    p.add_argument("--out", default=None, help="JSON file to write (benchmarks/provenance.py)")
    args = p.parse_args(argv)
    common = ["--steps", str(args.steps), "--warmup", "1", "--threads", "1", "--no-matmul"]
    runs: dict[str, list[dict]] = {name: [] for name in args.trees}
    for r in range(args.rounds):
        for name, tree in args.trees.items():
            line = meta_step(tree, common)
            runs[name].append({k: line.get(k) for k in ("cpu_s_median", "step_s_median", "gflop_per_task",
                                                         "others_cpu_share", "peak_rss_mb")})
            print(f"round {r + 1} {name}: cpu_s_median {line['cpu_s_median']}", file=sys.stderr, flush=True)
    result: dict = {"config": "engine, exact second order, bayes_unet base 16, 32x32, 5-shot, K=5, task batch 8, "
                              "gradient update, 1 thread",
                    "meta_step_command": " ".join(["python benchmarks/meta_step.py --impl engine --json", *common]),
                    "trees": {}}
    for name, tree in args.trees.items():
        cpu = [r["cpu_s_median"] for r in runs[name]]
        gflop = runs[name][0]["gflop_per_task"] if cpu else None
        med = statistics.median(cpu) if cpu else None
        result["trees"][name] = {
            "cpu_s_per_step_median": med,
            "cpu_s_per_step_runs": cpu,
            "gflop_per_task": gflop,
            # FLOPs per CPU second: the rate one core reaches, free of others' load.
            "gflop_per_cpu_s": None if gflop is None else round(gflop * 8 / med, 2),
            "runs": runs[name],
            "breakdown": breakdown(tree),
            # The same step on a 508-weight U-Net (base 1, 4×4 images): the same 44 φ sites,
            # Pyro messages and kernel launches with next to no arithmetic, i.e. the
            # per-step cost of Pyro, Python and dispatch.
            "fixed_overhead_cpu_s_per_step": meta_step(tree, [*common, "--no-flops", "--size", "4", "--base", "1"])[
                "cpu_s_median"],
        }
    names = list(args.trees)
    if len(names) == 2 and args.rounds:
        a, b = (result["trees"][n]["cpu_s_per_step_median"] for n in names)
        result["speedup_cpu_s"] = {f"{names[0]}/{names[1]}": round(a / b, 3)}
    if args.out:
        write_result(args.out, "benchmarks/speed_profile.py", argv, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
