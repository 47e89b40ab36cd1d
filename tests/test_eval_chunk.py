"""How many tasks a prediction call takes: weight draws and, given the query inputs, activations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hvi
from hvi.cli.run import eval_chunk_size
from hvi.functional import FunctionalNet
from models import get_model


def test_activation_bytes_sums_every_submodule_output_and_removes_its_hooks():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    f = FunctionalNet(net)
    # Linear (5x4), ReLU (5x4), Linear (5x2) and the Sequential's own output (5x2), float32.
    assert f.activation_bytes(torch.zeros(5, 3)) == (20 + 20 + 10 + 10) * 4
    assert all(not m._forward_hooks for m in net.modules())


def _meta(net: nn.Module) -> hvi.MetaModel:
    return hvi.MetaModel(net, prior=hvi.get_prior("gaussian", init_scale=0.01), likelihood=hvi.Categorical())


@pytest.mark.parametrize("samples", [10, 100])
def test_conv4_chunks_are_set_by_its_activations(samples):
    torch.manual_seed(0)
    meta = _meta(get_model("conv4", hidden=32))
    x = torch.zeros(25, 1, 28, 28)
    per_draw = meta.net.num_weights * 4 + meta.net.activation_bytes(x)
    assert meta.net.activation_bytes(x) > 50 * meta.net.num_weights * 4  # activations, not weights, set the memory
    weights_only = eval_chunk_size(meta, samples)
    chunk = eval_chunk_size(meta, samples, query_x=x)
    assert chunk == max(1, int(2.5e8 // (per_draw * samples))) and chunk < weights_only
    assert eval_chunk_size(meta, 100, query_x=x) == 1 and weights_only == min(64, int(2.5e8 // (28485 * 4 * samples)))
    assert eval_chunk_size(meta, samples, query_x=x[:0]) == weights_only  # no query points: the weights only
