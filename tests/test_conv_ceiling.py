"""benchmarks/conv_ceiling.py: the recorded convolution calls are the step's, and their replay counts their FLOPs."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from script_loader import load_script

cc = load_script("benchmarks/conv_ceiling.py", "hvi_bench_conv_ceiling")


def _step():
    x = torch.randn(2, 8, 6, 6).to(memory_format=torch.channels_last)
    w = torch.randn(8, 4, 3, 3, requires_grad=True)  # 2 groups
    y = F.conv2d(x, w, padding=1, groups=2)
    (g,) = torch.autograd.grad(y.square().sum(), w, create_graph=True)
    g.square().sum().backward()
    return x, w


def test_record_sees_each_call_with_its_layout_and_kind():
    calls = cc.record(_step)
    per_kind: dict[str, int] = {}
    for (op, spec), n in calls.items():
        per_kind[cc.kind(op, spec)] = per_kind.get(cc.kind(op, spec), 0) + n
    # the forward; its weight gradient (taken twice: by autograd.grad and again inside the double backward);
    # the double backward's two convolutions
    assert per_kind == {"forward, grouped": 3, "weight grad, grouped": 2}
    fwd = [spec for (op, spec), _ in calls.items() if op == "convolution"]
    x_spec = fwd[0][0]
    assert x_spec.shape == (2, 8, 6, 6) and x_spec.stride == (288, 1, 48, 8)  # channels-last, as recorded


def test_replay_keeps_layout_and_counts_grouped_flops():
    calls = cc.record(_step)
    rows = cc.replay(calls, reps=1)
    fwd = next(r for r in rows if r["op"] == "convolution")
    # 2 * N * H * W * C_out * (C_in / groups) * 3 * 3
    assert fwd["gflop"] * 1e9 == pytest.approx(2 * 2 * 6 * 6 * 8 * 4 * 9)
    args = cc._materialize(next(spec for (op, spec), _ in calls.items() if op == "convolution"), torch.Generator())
    assert args[0].is_contiguous(memory_format=torch.channels_last)
    assert all(r["cpu_s"] >= 0 and r["count"] >= 1 for r in rows)


def test_kind_names_the_output_mask():
    spec = (None,) * 9 + (1, (False, True, True))
    assert cc.kind("convolution_backward", spec) == "weight grad, dense"
    assert cc.kind("convolution", (None,) * 8 + (4,)) == "forward, grouped"
