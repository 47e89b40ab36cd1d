"""Tests for the hvi model zoo (hvi.models)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

import hvi.models as models
from hvi.models import describe_model, get_model, list_models, model_defaults, register_model
from hvi.models import registry

# Small configs and per-task input shapes (without the leading task dim).
SMALL = {
    "bayes_unet": ({"in_channels": 2, "out_channels": 3, "base": 4, "depth": 3}, (5, 2, 16, 16), (5, 3, 16, 16)),
    "siren": ({"in_features": 2, "out_features": 3, "width": 16, "depth": 3}, (7, 2), (7, 3)),
    "conv4": ({"in_channels": 1, "num_classes": 5, "hidden": 8, "image_size": 28}, (10, 1, 28, 28), (10, 5)),
    "mlp": ({}, (9, 1), (9, 1)),
}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_list_models_contains_builtins():
    names = list_models()
    assert {"bayes_unet", "siren", "conv4", "mlp"} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_output_shape_and_no_buffers(name):
    torch.manual_seed(0)
    cfg, in_shape, out_shape = SMALL[name]
    net = get_model(name, **cfg)
    x = torch.rand(in_shape) * 2 - 1
    y = net(x)
    assert y.shape == out_shape
    assert torch.isfinite(y).all()
    assert list(net.named_buffers()) == []


def test_default_shapes():
    torch.manual_seed(0)
    assert get_model("bayes_unet")(torch.randn(2, 3, 8, 12)).shape == (2, 1, 8, 12)
    assert get_model("siren")(torch.rand(4, 2) * 2 - 1).shape == (4, 1)
    assert get_model("conv4")(torch.randn(3, 1, 28, 28)).shape == (3, 5)
    assert get_model("conv4", in_channels=3, image_size=84)(torch.randn(2, 3, 84, 84)).shape == (2, 5)
    assert get_model("mlp")(torch.randn(6, 1)).shape == (6, 1)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_vmap_functional_call_matches_loop(name):
    cfg, in_shape, _ = SMALL[name]
    torch.manual_seed(1)
    net = get_model(name, **cfg).double()
    # Three tasks with different weights: independently initialised copies,
    # plus a small perturbation so no two tasks share any tensor.
    per_task = []
    for t in range(3):
        torch.manual_seed(100 + t)
        w = {k: v.detach().clone() for k, v in get_model(name, **cfg).double().named_parameters()}
        per_task.append({k: v + 0.01 * torch.randn_like(v) for k, v in w.items()})
    stacked = {k: torch.stack([w[k] for w in per_task]) for k in per_task[0]}
    assert set(stacked) == {k for k, _ in net.named_parameters()}
    torch.manual_seed(2)
    x = (torch.rand((3, *in_shape), dtype=torch.float64) * 2 - 1)

    batched = vmap(lambda w, xb: functional_call(net, w, (xb,)))(stacked, x)
    looped = torch.stack([functional_call(net, per_task[t], (x[t],)) for t in range(3)])
    torch.testing.assert_close(batched, looped)
    # The tasks really differ.
    assert not torch.allclose(looped[0], looped[1])


def test_bayes_unet_default_parameter_count():
    # Conv2d(cin, cout, 3) has 9*cin*cout + cout parameters; channels 16/32/64.
    enc = (9 * 3 * 16 + 16) + (9 * 16 * 16 + 16)        # level 0:   448 + 2320
    enc += (9 * 16 * 32 + 32) + (9 * 32 * 32 + 32)      # level 1:  4640 + 9248
    enc += (9 * 32 * 64 + 64) + (9 * 64 * 64 + 64)      # level 2: 18496 + 36928
    dec = (9 * (64 + 32) * 32 + 32) + (9 * 32 * 32 + 32)  # up to level 1: 27680 + 9248
    dec += (9 * (32 + 16) * 16 + 16) + (9 * 16 * 16 + 16)  # up to level 0: 6928 + 2320
    head = 16 * 1 + 1                                     # 1x1 conv: 17
    assert enc + dec + head == 118_273
    assert n_params(models.bayes_unet()) == 118_273


def test_default_parameter_counts_other_models():
    # conv4: conv 1->64, 3x conv 64->64, 4x BN(64) affine, linear 64*1*1 -> 5.
    assert n_params(get_model("conv4")) == (9 * 64 + 64) + 3 * (9 * 64 * 64 + 64) + 4 * 128 + (64 * 5 + 5)
    assert n_params(get_model("conv4")) == 112_261
    # siren: 2->256, 4x 256->256, 256->1.
    assert n_params(get_model("siren")) == (2 * 256 + 256) + 4 * (256 * 256 + 256) + 257 == 264_193
    # mlp: 1->40->40->1.
    assert n_params(get_model("mlp")) == 80 + 1640 + 41 == 1_761


def test_unet_shape_error():
    net = get_model("bayes_unet", in_channels=1, base=4, depth=3)
    with pytest.raises(ValueError, match=re.escape("(1, 1, 16, 18)")) as exc:
        net(torch.zeros(1, 1, 16, 18))
    assert "divisible by 2**(depth-1) = 4" in str(exc.value)
    # depth 1 accepts any size
    assert get_model("bayes_unet", in_channels=1, base=4, depth=1)(torch.zeros(1, 1, 5, 7)).shape == (1, 1, 5, 7)


def _unet_nchw_reference(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The U-Net's forward with pooling and upsampling on plain NCHW memory."""
    import torch.nn.functional as F

    skips = []
    for level, block in enumerate(net.down):
        if level > 0:
            x = F.max_pool2d(x, kernel_size=2)
        x = block(x)
        skips.append(x)
    skips.pop()
    for block in net.up:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = block(torch.cat([x, skips.pop()], dim=1))
    return net.head(x)


class _NCHWUNet(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _unet_nchw_reference(self.net, x)


def test_unet_channels_last_pooling_matches_nchw_reference_under_vmap():
    # Pooling and upsampling run on channels-last memory for speed: values and
    # gradients must be those of the plain NCHW forward, directly and when the
    # engine vmaps the net over tasks with per-task weights.
    torch.manual_seed(0)
    net = get_model("bayes_unet", in_channels=2, out_channels=1, base=4, depth=3).double()
    x = torch.randn(3, 4, 2, 8, 12, dtype=torch.float64)
    torch.testing.assert_close(net(x[0]), _unet_nchw_reference(net, x[0]), rtol=0, atol=1e-12)
    weights = {n: (p.detach() + 0.1 * torch.randn(3, *p.shape, dtype=torch.float64)).requires_grad_()
               for n, p in net.named_parameters()}
    out = vmap(lambda w, xx: functional_call(net, w, (xx,)))(weights, x)
    grads = torch.autograd.grad((out**2).sum(), list(weights.values()))
    ref = _NCHWUNet(net)
    ref_out = torch.stack([
        functional_call(ref, {f"net.{n}": w[i] for n, w in weights.items()}, (x[i],)) for i in range(3)
    ])
    ref_grads = torch.autograd.grad((ref_out**2).sum(), list(weights.values()))
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_unet_no_batchnorm():
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in get_model("bayes_unet").modules())
    widths = [m.out_channels for m in get_model("bayes_unet").down.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [16, 16, 32, 32, 64, 64]


def test_conv4_batchnorm_uses_batch_statistics():
    net = get_model("conv4", hidden=8)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 4 and all(not bn.track_running_stats for bn in bns)
    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(net.train()(x), net.eval()(x))


def test_siren_initialisation_bounds():
    torch.manual_seed(0)
    net = get_model("siren", in_features=2, width=64, depth=3, hidden_w0=30.0)
    first = net.layers[0].linear.weight
    assert first.abs().max() <= 1 / 2
    hidden_bound = math.sqrt(6 / 64) / 30.0
    for w in (net.layers[1].linear.weight, net.layers[2].linear.weight, net.out.weight):
        assert w.abs().max() <= hidden_bound
        assert w.abs().max() > 0.9 * hidden_bound  # actually uses the range


def test_siren_sine_layers():
    torch.manual_seed(0)
    net = get_model("siren", in_features=1, out_features=1, width=4, depth=1, w0=2.0)
    x = torch.tensor([[0.3], [-0.7]])
    lin = net.layers[0].linear
    expected = net.out(torch.sin(2.0 * lin(x)))
    torch.testing.assert_close(net(x), expected)


def test_mlp_activation():
    torch.manual_seed(0)
    net = get_model("mlp", hidden=(3,), activation="tanh")
    x = torch.randn(5, 1)
    l0, l1 = net.layers
    torch.testing.assert_close(net(x), l1(torch.tanh(l0(x))))
    with pytest.raises(ValueError, match=r"unknown activation 'swish'; choices: elu, gelu, relu, sigmoid, silu, softplus, tanh\."):
        get_model("mlp", activation="swish")


def test_unknown_model_message():
    with pytest.raises(ValueError) as exc:
        get_model("resnet9000")
    assert str(exc.value) == f"unknown model 'resnet9000'; registered models: {', '.join(list_models())}."
    assert "bayes_unet, conv4, mlp, siren" in str(exc.value)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        describe_model("nope")


def test_unknown_config_key_message():
    with pytest.raises(ValueError) as exc:
        get_model("mlp", hiden=(8,))
    assert str(exc.value) == (
        "unknown config key 'hiden' for model 'mlp'; "
        "accepted keys: in_features, out_features, hidden, activation."
    )


def test_describe_and_defaults():
    assert describe_model("mlp").startswith("Sinusoid-benchmark MLP")
    assert "\n" not in describe_model("bayes_unet")
    assert model_defaults("bayes_unet") == {"in_channels": 3, "out_channels": 1, "base": 16, "depth": 3, "upsample": "bilinear"}
    assert model_defaults("siren") == {
        "in_features": 2, "out_features": 1, "width": 256, "depth": 5, "w0": 30.0, "hidden_w0": 30.0,
    }
    assert model_defaults("conv4") == {"in_channels": 1, "num_classes": 5, "hidden": 64, "image_size": 28}
    assert model_defaults("mlp") == {"in_features": 1, "out_features": 1, "hidden": (40, 40), "activation": "relu"}


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="'mlp' is already registered"):
        register_model("mlp")(lambda: nn.Linear(1, 1))
    assert registry.MODELS.builder("mlp") is models.mlp


def test_user_registered_model():
    name = "test_user_net"

    try:
        @register_model(name)
        def user_net(width: int = 8, *, bias: bool = True) -> nn.Module:
            """A user network.

            More text.
            """
            return nn.Sequential(nn.Linear(2, width, bias=bias), nn.Tanh(), nn.Linear(width, 1, bias=bias))

        assert name in list_models()
        assert describe_model(name) == "A user network."
        assert model_defaults(name) == {"width": 8, "bias": True}
        net = get_model(name, width=5, bias=False)
        assert n_params(net) == 2 * 5 + 5
        with pytest.raises(ValueError, match="accepted keys: width, bias"):
            get_model(name, depth=2)
        with pytest.raises(ValueError, match="already registered"):
            register_model(name)(user_net)
    finally:
        registry.MODELS.unregister(name)
    assert name not in list_models()


def test_builder_must_return_module():
    name = "test_not_a_module"
    try:
        register_model(name)(lambda: 3)
        with pytest.raises(TypeError, match="not nn.Module"):
            get_model(name)
    finally:
        registry.MODELS.unregister(name)
