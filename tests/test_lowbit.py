"""mpcourse.lowbit: simulated MX matmuls (forward, backward); BF16 training without masters."""

import pytest
import torch
from torch import nn

from mpcourse.data import digits
from mpcourse.formats import BF16, FP4_E2M1, FP8_E4M3, round_to
from mpcourse.fp8 import FP8Linear
from mpcourse.lowbit import (
    MX_RECIPES,
    BF16AdamTrainer,
    MXLinear,
    bytes_per_parameter,
    convert_linears,
    mx_matmul_quantize,
    train_bf16,
)
from mpcourse.master import ledger
from mpcourse.models import MLP, SimpleModel
from mpcourse.mx import mx_fake_quantize


def test_mx_matmul_quantize_pads_with_zeros_and_crops():
    x = torch.randn(3, 50)
    padded = torch.nn.functional.pad(x, (0, 14))
    assert torch.equal(mx_matmul_quantize(x, FP4_E2M1), mx_fake_quantize(padded, FP4_E2M1)[:, :50])


def test_mx_linear_forward_and_backward_quantize_along_each_reduction_dim():
    torch.manual_seed(0)
    fmts = (FP8_E4M3, FP4_E2M1, FP8_E4M3)
    layer = MXLinear(40, 24, fmts)
    x = torch.randn(36, 40, requires_grad=True)
    y = layer(x)
    q = mx_matmul_quantize
    expected = q(x, FP8_E4M3) @ q(layer.weight, FP4_E2M1).T + layer.bias
    assert torch.equal(y, expected)
    dy = torch.randn_like(y)
    y.backward(dy)
    dx = q(dy, FP8_E4M3) @ q(layer.weight.T, FP4_E2M1).T
    dw = q(dy.T, FP8_E4M3) @ q(x.T, FP8_E4M3).T
    assert torch.equal(x.grad, dx) and torch.equal(layer.weight.grad, dw)
    assert torch.equal(layer.bias.grad, dy.sum(0))
    # and it is not the FP32 product
    assert not torch.equal(y, x @ layer.weight.T + layer.bias)


def test_convert_linears_keeps_weights_and_convolutions():
    torch.manual_seed(0)
    model = SimpleModel()
    x = torch.randn(2, 3, 32, 32)
    for recipe in MX_RECIPES:
        new = convert_linears(model, recipe)
        kinds = {type(m) for m in new.modules()}
        assert nn.Conv2d in kinds and torch.equal(new.fc1.weight, model.fc1.weight)
        if recipe == "fp32":
            assert torch.equal(new(x), model(x))
        elif recipe == "fp8 per-tensor":
            assert isinstance(new.fc1, FP8Linear) and new.fc1.scaling == "current"
        else:
            assert isinstance(new.fc2, MXLinear) and new.fc2.fmts == MX_RECIPES[recipe]
            assert new.fc2.scale_mode == ("rceil" if recipe.endswith("rceil") else "floor")
            assert (new(x) - model(x)).abs().max() < 0.5
    assert type(model.fc1) is nn.Linear  # the original is untouched
    with pytest.raises(ValueError, match="recipe must be one of"):
        convert_linears(model, "mxfp2")
    with pytest.raises(TypeError, match="nn.Module"):
        convert_linears("model", "mxfp8")


def test_bf16_updates_nearest_loses_stochastic_and_kahan_keep_on_average():
    w0 = torch.ones(4_000)

    def run(update, steps=32):
        model = nn.Linear(1, 4_000, bias=False)
        with torch.no_grad():
            model.weight.copy_(w0[:, None])
        tr = BF16AdamTrainer(model, update, lr=2.0**-11, seed=0)  # a quarter of BF16's ulp at 1
        for _ in range(steps):
            tr.zero_grad()
            model.weight.grad = torch.full_like(model.weight, -1.0)  # Adam: u = +lr each step
            tr.step()
        return model.weight.float().flatten(), tr

    target = 1 + 32 * 2.0**-11  # 1.015625
    nearest, _ = run("nearest")
    assert (nearest == 1.0).all()  # every update rounded away: the stall
    stochastic, _ = run("stochastic")
    assert abs(stochastic.double().mean().item() - target) < 1.5e-3
    kahan, tr = run("kahan")
    assert (kahan == round_to(torch.tensor([target]), BF16)).all()
    assert kahan.dtype == torch.float32 and tr.comp[0].dtype == torch.bfloat16
    exact, _ = run("fp32")
    assert torch.allclose(exact, torch.full_like(exact, target), atol=1e-6)


def test_train_bf16_and_measured_bytes_match_the_ledger():
    torch.manual_seed(0)
    model = MLP(64, (32,))
    train_set, test_set = digits("train"), digits("test")
    runs = {
        u: train_bf16(model, train_set, test_set, u, lr=1e-3, steps=30) for u in ("fp32", "kahan")
    }
    assert runs["fp32"].losses[-1] < runs["fp32"].losses[0]
    assert sum(runs["fp32"].bytes.values()) == sum(bytes_per_parameter("fp32").values()) == 16
    assert sum(runs["kahan"].bytes.values()) == sum(bytes_per_parameter("bf16 kahan").values())
    assert sum(bytes_per_parameter("bf16 stochastic").values()) == 12
    assert sum(bytes_per_parameter("master").values()) == sum(ledger("master", "adam").values())
    assert all(0 <= v <= 1 for v in runs["kahan"].lost)


def test_bad_input_to_the_trainers():
    with pytest.raises(ValueError, match="update must be one of"):
        BF16AdamTrainer(nn.Linear(2, 2), "truncate")
    with pytest.raises(ValueError, match="lr must be"):
        BF16AdamTrainer(nn.Linear(2, 2), "kahan", lr=0)
    with pytest.raises(ValueError, match="steps must be"):
        train_bf16(nn.Linear(64, 10), digits("train"), digits("test"), "fp32", steps=0)
    with pytest.raises(ValueError, match="recipe must be one of"):
        bytes_per_parameter("fp16")


def test_mx_linear_rceil_quantizes_with_the_rceil_rule():
    torch.manual_seed(0)
    fmts = (FP4_E2M1, FP4_E2M1, FP4_E2M1)
    layer = MXLinear(64, 8, fmts, scale_mode="rceil")
    x = torch.randn(32, 64)
    q = mx_matmul_quantize
    expected = q(x, FP4_E2M1, 32, "rceil") @ q(layer.weight, FP4_E2M1, 32, "rceil").T + layer.bias
    assert torch.equal(layer(x), expected)
    floor = q(x, FP4_E2M1) @ q(layer.weight, FP4_E2M1).T + layer.bias
    assert not torch.equal(layer(x), floor)
