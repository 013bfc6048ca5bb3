"""mpcourse.purefp16: the FP32 vs pure FP16 experiment of chapter 03."""

import math

import pytest
import torch

from mpcourse.data import digits
from mpcourse.models import MLP
from mpcourse.purefp16 import (
    batches,
    cosine_lr,
    evaluate,
    first_adam_step,
    lost_updates,
    make_optimizer,
    train,
)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    return MLP(64, hidden=(32,)), digits("train"), digits("test")


def test_fp32_learns_and_the_given_model_is_untouched(setup):
    model, tr, te = setup
    before = [p.clone() for p in model.parameters()]
    h = train(model, tr, precision="fp32", lr=0.1, steps=60, eval_data=te)
    assert h.steps == 60 == len(h.accuracy) == len(h.lost) == len(h.attempted)
    assert h.mean_loss(10) < h.loss[0] - 0.5 and h.eval_accuracy > 0.7
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert h.model is not model and next(h.model.parameters()).dtype == torch.float32
    assert h.nonfinite_step is None and h.lost_share < 0.05


def test_same_seed_same_run(setup):
    model, tr, _ = setup
    a = train(model, tr, precision="pure-fp16", lr=0.01, steps=20)
    b = train(model, tr, precision="pure-fp16", lr=0.01, steps=20)
    assert a.loss == b.loss and a.lost == b.lost


def test_fp16_loses_most_updates_at_a_small_lr(setup):
    model, tr, _ = setup
    h16 = train(model, tr, precision="pure-fp16", lr=1e-3, steps=20)
    h32 = train(model, tr, precision="fp32", lr=1e-3, steps=20)
    assert next(h16.model.parameters()).dtype == torch.float16
    assert h16.lost_share > 0.7 and h32.lost_share < 0.05
    assert abs(h16.loss[0] - h32.loss[0]) < 0.01  # same start


def test_adam_in_fp16_goes_nonfinite(setup):
    model, tr, _ = setup
    h = train(model, tr, precision="pure-fp16", optimizer="adam", lr=1e-3, steps=10)
    assert h.nonfinite_step is not None and h.steps == h.nonfinite_step + 1
    assert not math.isfinite(h.loss[-1])
    full = train(
        model, tr, precision="pure-fp16", optimizer="adam", steps=10, stop_on_nonfinite=False
    )
    assert full.steps == 10
    ok = train(model, tr, precision="pure-fp16", optimizer="adam", lr=1e-3, eps=1e-4, steps=10)
    assert ok.nonfinite_step is None


def test_lost_updates_counts_exactly():
    w = torch.tensor([1.0, 1.0, 1.0, 0.5]).half()
    p = torch.nn.Parameter(w.clone())
    p.grad = torch.tensor([1.0, 0.01, 0.0, 0.01]).half()
    before = [p.detach().clone()]
    make_optimizer([p], "sgd", lr=0.01).step()
    # updates: -0.01 (kept); -1e-4 (below half the spacing 2^-11 under 1: lost); none;
    # -1e-4 at 0.5 (half spacing there 2^-13: lost)
    assert lost_updates(before, [p]) == (3, 2)
    q = torch.nn.Parameter(torch.ones(2))
    assert lost_updates([q.detach().clone()], [q]) == (0, 0)  # no grad: not counted


def test_evaluate_and_batches(setup):
    model, _, te = setup
    loss, acc = evaluate(model, te)
    assert 0 <= acc <= 1 and loss > 0
    loss16, acc16 = evaluate(model.half(), te)
    model.float()
    assert abs(loss16 - loss) < 0.01
    it = batches(te, 100, seed=0)
    sizes = [len(next(it)[1]) for _ in range(5)]
    assert sizes == [100, 100, 100, 59, 100]  # epochs follow each other


def test_bad_arguments(setup):
    model, tr, _ = setup
    with pytest.raises(
        ValueError,
        match=r"unknown precision recipe 'fp8': use one of \['amp-bf16', 'amp-fp16', 'fp32',",
    ):
        train(model, tr, precision="fp8")
    with pytest.raises(ValueError, match="final_lr must be a number in"):
        train(model, tr, lr=0.1, final_lr=0.2)
    with pytest.raises(ValueError, match="unknown precision recipe 'half'"):
        first_adam_step(model, *next(batches(tr, 8, 0)), precision="half")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        train(model, tr, steps=0)
    with pytest.raises(TypeError, match=r"train got unknown setting\(s\) \['step'\]; the settings"):
        train(model, tr, step=10)
    with pytest.raises(ValueError, match="optimizer must be 'sgd' or 'adam', got 'lion'"):
        make_optimizer(model.parameters(), "lion")
    with pytest.raises(ValueError, match="lr must be a positive number"):
        make_optimizer(model.parameters(), "sgd", lr=0)


def test_cosine_schedule_is_applied_per_step(setup):
    assert cosine_lr(0, 11, 0.1, 1e-4) == 0.1 and math.isclose(cosine_lr(10, 11, 0.1, 1e-4), 1e-4)
    assert math.isclose(cosine_lr(5, 11, 0.1, 1e-4), (0.1 + 1e-4) / 2)
    assert cosine_lr(0, 1, 0.1, 1e-4) == 0.1
    model, tr, _ = setup
    decayed = train(model, tr, precision="fp32", lr=0.1, final_lr=1e-4, steps=5)
    constant = train(model, tr, precision="fp32", lr=0.1, steps=5)
    assert decayed.loss[:2] == constant.loss[:2] and decayed.loss[-1] != constant.loss[-1]


def test_pure_bf16_loses_more_updates_than_fp16(setup):
    model, tr, _ = setup
    bf = train(model, tr, precision="pure-bf16", lr=0.01, steps=20)
    fp = train(model, tr, precision="pure-fp16", lr=0.01, steps=20)
    assert next(bf.model.parameters()).dtype == torch.bfloat16
    assert bf.lost_share > fp.lost_share + 0.2


def test_first_adam_step_with_a_large_eps_amplifies_mid_sized_gradients(setup):
    """FP16 Adam, eps=1e-4: where v underflows (|g| < ~5.5e-3) the step is lr * g / eps."""
    model, tr, _ = setup
    x, y = next(batches(tr, 64, seed=0))
    g32, dw32 = first_adam_step(model, x, y, precision="fp32", lr=1e-3, eps=1e-8)
    assert g32.shape == dw32.shape == (sum(p.numel() for p in model.parameters()),)
    big = g32.abs() > 1e-6
    assert torch.allclose(dw32[big].abs(), torch.full_like(dw32[big], 1e-3), rtol=1e-2)
    g16, dw16 = first_adam_step(model, x, y, precision="pure-fp16", lr=1e-3, eps=1e-4)
    mid = (g16.abs() > 1e-3) & (g16.abs() < 5e-3)
    assert mid.any()
    ratio = dw16[mid].abs() / 1e-3
    assert torch.allclose(ratio, g16[mid].abs() / 1e-4, rtol=0.05)  # lr * |g| / eps
    assert (dw16[g16.abs() > 6e-3].abs() / 1e-3 - 1).abs().max() < 0.3  # v survives: ~lr
