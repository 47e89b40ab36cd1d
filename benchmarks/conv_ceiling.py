#!/usr/bin/env python3
"""The second-order step's own convolutions, timed alone: the ceiling of issue #16's GFLOP/s criterion.

Records every convolution call (``aten.convolution`` and
``aten.convolution_backward``) of one exact second-order meta-step of the
criteria's configuration (``meta_step.py``'s engine: 32×32 U-Net base 16,
5-shot, 5 query points, K = 5 gradient steps, task batch 8, one thread) with
a ``TorchDispatchMode``, then replays each distinct call alone, on tensors of
the same sizes, strides and dtype, and times it in CPU seconds. In the same
process it times whole meta-steps and a 2048² float32 matmul.

The step's FLOPs are almost all convolution FLOPs, and a step cannot take
less time than its convolutions, so ``step FLOPs / convolution time`` bounds
the step's GFLOP per CPU second from above, whatever the rest of the step
(elementwise work, copies, Pyro) is made to cost. Replayed alone, each call
finds its operands in cache and its kernel warm, so the replay is if anything
faster than inside the step and the bound holds a fortiori. Printed: the
convolutions' own rate, the bound as a share of the matmul (the criterion
needs 0.60), the convolutions' share of the step's time, and the time by
kind of call.

Example (the command of ``docs/results/conv_ceiling.json``)::

    python benchmarks/conv_ceiling.py --rounds 5 --out docs/results/conv_ceiling.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


class TensorSpec(NamedTuple):
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str


def _spec(args: tuple) -> tuple:
    """A hashable description of a convolution call's arguments (tensors by size, strides and dtype)."""
    import torch

    def one(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return TensorSpec(tuple(x.shape), tuple(x.stride()), str(x.dtype).removeprefix("torch."))
        return tuple(x) if isinstance(x, list) else x

    return tuple(one(a) for a in args)


def _materialize(spec: tuple, gen: Any) -> list:
    import torch

    def one(x: Any) -> Any:
        if isinstance(x, TensorSpec):
            return torch.empty_strided(x.shape, x.stride, dtype=getattr(torch, x.dtype)).normal_(generator=gen)
        return list(x) if isinstance(x, tuple) else x

    return [one(a) for a in spec]


def record(step) -> Counter:
    """Every convolution call of ``step()``: ``Counter`` of ``(op name, args spec)``."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    ops = {torch.ops.aten.convolution.default: "convolution",
           torch.ops.aten.convolution_backward.default: "convolution_backward"}
    calls: Counter = Counter()

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in ops:
                calls[(ops[func], _spec(args))] += 1
            return func(*args, **(kwargs or {}))

    with Recorder():
        step()
    return calls


def kind(op: str, args: tuple) -> str:
    """``forward``, ``input grad``, ``weight grad`` or ``input + weight grad``; ``grouped`` or not."""
    groups = args[8] if op == "convolution" else args[9]
    grouped = "grouped" if groups > 1 else "dense"
    if op == "convolution":
        return f"forward, {grouped}"
    mask = args[10]
    what = {(True, False): "input grad", (False, True): "weight grad", (True, True): "input + weight grad"}
    return f"{what[(bool(mask[0]), bool(mask[1]))]}, {grouped}"


def replay(calls: Counter, reps: int) -> list[dict[str, Any]]:
    """CPU seconds (median of ``reps``) and FLOPs of each distinct call, replayed alone."""
    import meta_step as ms
    import torch

    gen = torch.Generator().manual_seed(0)
    rows = []
    for (op, spec), count in calls.items():
        fn = getattr(torch.ops.aten, op).default
        args = _materialize(spec, gen)
        flops = ms.count_flops(lambda: fn(*args))
        fn(*args)  # warm-up
        times = []
        for _ in range(reps):
            c0 = time.process_time()
            fn(*args)
            times.append(time.process_time() - c0)
        rows.append({"op": op, "kind": kind(op, spec), "count": count, "cpu_s": statistics.median(times),
                     "gflop": flops / 1e9,
                     "shapes": [list(s.shape) for s in spec if isinstance(s, TensorSpec)]})
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="conv_ceiling.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task-batch", type=int, default=8, help="tasks per meta-step")
    p.add_argument("--upsample", choices=("bilinear", "nearest_1x1"), default="bilinear", help="the U-Net's decoder")
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds of (meta-steps, convolution replay, matmul); every figure is the median over them")
    p.add_argument("--steps", type=int, default=3, help="timed meta-steps per round (after 1 warm-up)")
    p.add_argument("--reps", type=int, default=5, help="timed replays of each distinct call per round")
    p.add_argument("--out", default=None, help="JSON file to write (docs/results/conv_ceiling.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import meta_step as ms
    import pyro
    import torch

    import hvi
    from provenance import write_result
    from reference_speed import matmul_worker

    torch.set_num_threads(1)
    hvi.tune_allocator()
    cfg = dict(vars(ms.parse_args(["--impl", "engine", "--threads", "1", "--upsample", args.upsample])))
    cfg.update(impl="engine", task_batch=args.task_batch, inner_steps=5, first_order=False)
    pyro.set_rng_seed(0)
    batch = ms.make_batch(cfg)
    _meta, svi = ms.make_engine(cfg)

    def step() -> None:
        svi.step(batch)

    step()  # warm-up
    calls = record(step)
    step_gflop = ms.count_flops(step) / 1e9
    rounds = []
    for r in range(args.rounds):
        step()
        cpu = []
        for _ in range(args.steps):
            c0 = time.process_time()
            step()
            cpu.append(time.process_time() - c0)
        rows = replay(calls, args.reps)
        rounds.append({"step_cpu_s": statistics.median(cpu), "rows": rows, "matmul_gflop_per_cpu_s": matmul_worker(2048)["gflop_per_cpu_s"],
                       "loadavg_1m": round(os.getloadavg()[0], 2)})
        conv_s = sum(x["count"] * x["cpu_s"] for x in rows)
        print(f"round {r}: step {rounds[-1]['step_cpu_s']:.3f} CPU-s, its convolutions alone {conv_s:.3f} CPU-s, "
              f"matmul {rounds[-1]['matmul_gflop_per_cpu_s']:.0f} GFLOP/CPU-s", flush=True)

    def med(f) -> float:
        return statistics.median(f(rd) for rd in rounds)

    conv_gflop = sum(x["count"] * x["gflop"] for x in rounds[0]["rows"])
    conv_s = med(lambda rd: sum(x["count"] * x["cpu_s"] for x in rd["rows"]))
    matmul = med(lambda rd: rd["matmul_gflop_per_cpu_s"])
    step_s = med(lambda rd: rd["step_cpu_s"])
    kinds: dict[str, dict[str, float]] = {}
    for i, x in enumerate(rounds[0]["rows"]):
        k = kinds.setdefault(x["kind"], {"calls": 0, "gflop": 0.0, "cpu_s": 0.0})
        k["calls"] += x["count"]
        k["gflop"] += x["count"] * x["gflop"]
        k["cpu_s"] += x["count"] * statistics.median(rd["rows"][i]["cpu_s"] for rd in rounds)
    for k in kinds.values():
        k["gflop_per_cpu_s"] = k["gflop"] / k["cpu_s"] if k["cpu_s"] else float("nan")
    summary = {
        "step_gflop": step_gflop, "conv_gflop": conv_gflop, "step_cpu_s": step_s, "conv_cpu_s": conv_s,
        "conv_share_of_step_time": conv_s / step_s,
        "step_gflop_per_cpu_s": step_gflop / step_s, "conv_gflop_per_cpu_s": conv_gflop / conv_s,
        "matmul_gflop_per_cpu_s": matmul,
        "step_share_of_matmul": step_gflop / step_s / matmul,
        "ceiling_share_of_matmul": step_gflop / conv_s / matmul,
        "distinct_calls": len(calls), "calls": sum(calls.values()),
    }
    for key, val in summary.items():
        print(f"{key}: {val:.4g}" if isinstance(val, float) else f"{key}: {val}")
    if args.out:
        write_result(args.out, "benchmarks/conv_ceiling.py", argv, {
            "config": {"task_batch": args.task_batch, "upsample": args.upsample, "rounds": args.rounds,
                       "steps": args.steps, "reps": args.reps, "size": 32, "base": 16, "k_shot": 5, "k_query": 5,
                       "inner_steps": 5, "threads": 1, "order": "second"},
            "summary": summary, "kinds": kinds, "rounds": rounds})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
