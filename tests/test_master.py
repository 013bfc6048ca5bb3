"""mpcourse.master: FP16 working model + FP32 master weights, and the memory ledger."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpcourse.master import (
    OPTIMIZER_STATES,
    RECIPES,
    MasterWeights,
    ledger,
    lost_update_sizes,
    measure_bytes_per_parameter,
    tensor_bytes,
    train_master,
)
from mpcourse.models import SimpleModel
from mpcourse.scaling import DynamicLossScaler, StaticLossScaler


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))


def sgd(lr: float = 0.1):
    return lambda params: torch.optim.SGD(params, lr=lr)


def test_copies_are_made_and_converted() -> None:
    model = net()
    original = [p.detach().clone() for p in model.parameters()]
    mw = MasterWeights(model, sgd())
    assert mw.model is model and mw.dtype == torch.float16
    assert all(p.dtype == torch.float16 for p in model.parameters())
    for m, w, o in zip(mw.master_params, mw.working_params, original, strict=True):
        assert m.dtype == torch.float32 and torch.equal(m, o)  # master is the exact FP32 value
        assert torch.equal(w, o.half())  # working copy is its FP16 rounding
    assert mw.optimizer.param_groups[0]["params"] == mw.master_params


def test_one_step_is_the_paper_recipe() -> None:
    """w32 <- w32 - lr * float32(g16); w16 <- fp16(w32), computed by hand."""
    mw = MasterWeights(net(), sgd(0.25))
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    before = [m.detach().clone() for m in mw.master_params]
    mw.zero_grad()
    mw.backward(F.cross_entropy(mw.model(x.half()).float(), y))
    grads16 = [w.grad.clone() for w in mw.working_params]
    assert mw.step() is True
    for m, w, b, g in zip(mw.master_params, mw.working_params, before, grads16, strict=True):
        expected = b - 0.25 * g.float()
        assert torch.equal(m.detach(), expected)
        assert torch.equal(w.detach(), expected.half())
    assert (mw.steps_taken, mw.steps_skipped) == (1, 0)


def test_small_updates_accumulate_in_master_but_vanish_in_fp16() -> None:
    """lr * g = 1e-4 is below half of FP16's spacing at 1.0 (2^-11): lost in FP16, kept in FP32."""
    lin16 = nn.Linear(1, 1, bias=False)
    nn.init.ones_(lin16.weight)
    mw = MasterWeights(copy.deepcopy(lin16), sgd(1e-4))
    lin16 = lin16.half()
    pure = torch.optim.SGD(lin16.parameters(), lr=1e-4)
    x = torch.ones(1, 1, dtype=torch.float16)
    for _ in range(20):
        pure.zero_grad()
        lin16(x).sum().backward()  # gradient 1
        pure.step()
        mw.zero_grad()
        mw.backward(mw.model(x).sum())
        mw.step()
    assert lin16.weight.item() == 1.0  # every one of the 20 updates was lost
    assert math.isclose(mw.master_params[0].item(), 1 - 20e-4, rel_tol=1e-6)
    assert mw.working_params[0].item() == torch.tensor(1 - 20e-4).half().item() < 1.0


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_with_our_scaler_equals_with_gradscaler(opt: str) -> None:
    """Master weights + DynamicLossScaler == master weights + torch.amp.GradScaler, bit for bit,
    including skipped steps from injected inf/NaN gradients."""

    def make(params):
        return torch.optim.SGD(params, lr=0.1) if opt == "sgd" else torch.optim.Adam(params, 1e-2)

    a = MasterWeights(net(1), make, scaler=DynamicLossScaler(2.0**20, growth_interval=3))
    b = MasterWeights(
        net(1), make, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**20, growth_interval=3)
    )
    gen = torch.Generator().manual_seed(0)
    for step in range(25):
        x, y = torch.randn(16, 5, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        results = []
        for mw in (a, b):
            mw.zero_grad()
            mw.backward(F.cross_entropy(mw.model(x.half()).float(), y))
            if step % 7 == 3:
                mw.working_params[step % 4].grad.view(-1)[0] = math.nan if step % 2 else math.inf
            results.append(mw.step(max_grad_norm=5.0 if step % 2 else None))
        assert results[0] == results[1]
        if step % 7 == 3:
            assert results[0] is False  # the injected inf/NaN step is skipped
        assert a.scaler.get_scale() == b.scaler.get_scale()
        for pa, pb in zip(a.master_params + a.working_params, b.master_params + b.working_params):
            assert torch.equal(pa, pb)
    # 2^20 also overflows FP16 gradients by itself at first: skips beyond the 4 injected ones
    assert a.steps_skipped == b.steps_skipped > 4
    assert a.steps_taken == b.steps_taken > 10


def test_skipped_step_leaves_both_copies_untouched() -> None:
    mw = MasterWeights(net(), sgd(), scaler=StaticLossScaler(2.0**10))
    masters = [m.detach().clone() for m in mw.master_params]
    workings = [w.detach().clone() for w in mw.working_params]
    mw.zero_grad()
    mw.backward(mw.model(torch.full((2, 5), 60000.0, dtype=torch.float16)).sum())  # overflows
    assert mw.step() is False and mw.steps_skipped == 1
    assert all(torch.equal(m, c) for m, c in zip(mw.master_params, masters, strict=True))
    assert all(torch.equal(w, c) for w, c in zip(mw.working_params, workings, strict=True))


def test_clipping_acts_on_unscaled_master_grads() -> None:
    mw = MasterWeights(net(), sgd(0.0), scaler=DynamicLossScaler(2.0**12))
    mw.zero_grad()
    mw.backward(
        F.cross_entropy(mw.model(torch.randn(8, 5).half() * 10).float(), torch.ones(8).long())
    )
    mw.step(max_grad_norm=0.01)
    norm = torch.linalg.vector_norm(torch.stack([m.grad.norm() for m in mw.master_params]))
    assert norm.item() == pytest.approx(0.01, rel=1e-3)


def test_bfloat16_and_master_state_dict() -> None:
    model = net()
    reference = copy.deepcopy(model)
    mw = MasterWeights(model, sgd(), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in mw.model.parameters())
    reference.load_state_dict(mw.master_state_dict())
    for p, m in zip(reference.parameters(), mw.master_params, strict=True):
        assert p.dtype == torch.float32 and torch.equal(p, m)


@pytest.mark.parametrize(
    "args, error, match",
    [
        (("not a model", sgd()), TypeError, "nn.Module"),
        ((nn.Linear(2, 2).half(), sgd()), ValueError, "start in float32"),
        ((nn.ReLU(), sgd()), ValueError, "no trainable"),
        ((nn.Linear(2, 2), lambda p: 3), TypeError, "not a torch.optim"),
    ],
)
def test_bad_input(args, error, match) -> None:
    with pytest.raises(error, match=match):
        MasterWeights(*args)


def test_bad_options() -> None:
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(TypeError, match="make_optimizer must be a function"):
        MasterWeights(nn.Linear(2, 2), opt)
    with pytest.raises(ValueError, match="float16 or torch.bfloat16"):
        MasterWeights(nn.Linear(2, 2), sgd(), dtype=torch.float64)
    with pytest.raises(TypeError, match="scaler must be"):
        MasterWeights(nn.Linear(2, 2), sgd(), scaler=2.0**16)


def test_ledger_values_and_zero() -> None:
    totals = {(r, o): sum(ledger(r, o).values()) for r in RECIPES for o in OPTIMIZER_STATES}
    assert totals == {
        ("fp32", "sgd"): 8,
        ("fp32", "momentum"): 12,
        ("fp32", "adam"): 16,
        ("master", "sgd"): 12,
        ("master", "momentum"): 16,
        ("master", "adam"): 20,
        ("amp", "sgd"): 10,
        ("amp", "momentum"): 14,
        ("amp", "adam"): 18,
    }
    # ZeRO's 16 bytes/parameter for mixed-precision Adam: ours without the FP32 master grads
    assert totals["master", "adam"] - ledger("master", "adam")["master grads fp32"] == 16
    with pytest.raises(ValueError, match="recipe must be one of"):
        ledger("fp8")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        ledger("fp32", "lion")


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZER_STATES))
def test_ledger_matches_real_tensors(recipe: str, optimizer: str) -> None:
    torch.manual_seed(0)
    batch = (torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    measured = measure_bytes_per_parameter(SimpleModel(), batch, recipe, optimizer)
    expected = ledger(recipe, optimizer)
    assert measured.keys() == expected.keys()
    for key, value in expected.items():
        if key.startswith("autocast"):  # casts of the weights; bias casts are not kept
            assert value - 0.01 < measured[key] <= value
        else:  # Adam's per-tensor step counters add 40 bytes over 62,006 parameters
            assert value <= measured[key] < value + 0.001


def test_tensor_bytes_counts_each_storage_once() -> None:
    t = torch.zeros(10)
    assert tensor_bytes([t, t[2:], t.view(2, 5), None]) == 40
    assert tensor_bytes([t, torch.zeros(3, dtype=torch.float16)]) == 46


def test_train_master_reuses_the_chapter_03_setup() -> None:
    from mpcourse.data import digits
    from mpcourse.models import MLP
    from mpcourse.purefp16 import train

    torch.manual_seed(0)
    mlp, data = MLP(64), digits()
    pure = train(mlp, data, precision="pure-fp16", lr=1e-3, steps=40)
    master = train_master(mlp, data, lr=1e-3, steps=40, eval_data=digits("test"))
    assert master.loss[0] == pure.loss[0]  # same FP16 model, same first batch, same loss
    assert master.precision == "master" and master.steps == 40
    assert master.lost_share < 0.02 < 0.5 < pure.lost_share
    assert all(p.dtype == torch.float16 for p in master.model.parameters())
    assert master.eval_accuracy is not None
    # a scale that overflows every step: all skipped, nothing attempted, weights unchanged
    stuck = train_master(mlp, data, lr=1e-3, steps=5, scaler=StaticLossScaler(2.0**40))
    assert stuck.precision == "master+scaling" and sum(stuck.attempted) == 0
    with pytest.raises(TypeError, match=r"train_master got unknown setting\(s\) \['precision'\]"):
        train_master(mlp, data, precision="pure-fp16")  # the recipe is train_master's own
    with pytest.raises(ValueError, match="steps must be a positive int"):
        train_master(mlp, data, steps=0)  # the same checks as chapter 03's train
    for p, p0 in zip(stuck.model.parameters(), mlp.parameters(), strict=True):
        assert torch.equal(p, p0.half())


@pytest.mark.parametrize("dtype, limit", [(torch.float16, -10.9), (torch.bfloat16, -7.9)])
def test_lost_update_sizes_pure_versus_master(dtype, limit) -> None:
    from mpcourse.data import digits
    from mpcourse.models import MLP
    from mpcourse.purefp16 import batches

    torch.manual_seed(0)
    model = MLP(64).to(dtype)
    x, y = next(batches(digits(), 64, seed=5))
    pure = lost_update_sizes(model, x, y, use_master=False, lr=1e-3)
    master = lost_update_sizes(model, x, y, use_master=True, lr=1e-3)
    assert pure.numel() > 1000 and math.log2(pure.max().item()) <= limit
    assert master.numel() < pure.numel() / 10
    assert master.numel() == 0 or master.max().item() <= 2.0**-24
    assert all(p.dtype == dtype for p in model.parameters())  # the given model is untouched


def test_bf16_master_weights_keep_what_pure_bf16_loses() -> None:
    from mpcourse.data import digits
    from mpcourse.models import MLP
    from mpcourse.purefp16 import train

    torch.manual_seed(0)
    mlp, data = MLP(64), digits()
    pure = train(mlp, data, precision="pure-bf16", lr=0.01, steps=30)
    master = train_master(mlp, data, lr=0.01, steps=30, dtype=torch.bfloat16)
    assert pure.lost_share > 0.8 and master.lost_share < 0.02
    assert all(p.dtype == torch.bfloat16 for p in master.model.parameters())


def _working_after(w0, u, n, dtype):
    master = torch.tensor(w0, dtype=torch.float32)
    for _ in range(n):
        master = master + u
    return master.to(dtype).item()


@pytest.mark.parametrize(
    "wrong, why",
    [
        (
            lambda w0, u, n, d: (torch.tensor(w0).to(d) + torch.tensor(u).to(d) * 0).item(),
            "to the working copy",
        ),
        (lambda w0, u, n, d: torch.tensor(w0 + n * u).to(d).item(), "rounded after every update"),
        (lambda w0, u, n, d: _working_after(w0, u, n, torch.float32), "return the"),
        (lambda w0, u, n, d: "1.0", "should return a number"),
    ],
)
def test_check_working_after(wrong, why) -> None:
    from mpcourse import checks

    assert checks.check_working_after(_working_after)
    with pytest.raises(checks.CheckFailed, match=why):
        checks.check_working_after(wrong)
    with pytest.raises(checks.CheckFailed, match="calls the package's MasterWeights"):
        checks.check_working_after(lambda w0, u, n, d: MasterWeights)
