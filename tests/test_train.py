"""Tests for mpcourse.train: modes, skipped steps, scheduler, clipping, accumulation, resume."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from mpcourse import checks
from mpcourse.checks import CheckFailed, NotAnswered
from mpcourse.data import digits, make_loader
from mpcourse.device import pick_device
from mpcourse.models import MLP, SimpleModel
from mpcourse.precision import autocast, make_scaler
from mpcourse.train import (
    backward,
    legacy_amp_warnings,
    optimizer_step,
    train,
)

DEVICE = pick_device()
TRAIN = digits("train")
TEST = digits("test")


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread():
    """Small models on small batches: one thread is faster on a shared CPU, and reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _setup(seed=0, lr=0.05, n=None):
    torch.manual_seed(seed)
    model = MLP(64, (64,)).to(DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    data = TRAIN if n is None else torch.utils.data.Subset(TRAIN, range(n))
    return model, opt, make_loader(data, 32, seed=seed)


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_every_mode_learns_digits_and_amp_matches_fp32():
    accs = {}
    for precision in ("fp32", "amp-fp16", "amp-bf16"):
        model, opt, loader = _setup()
        hist = train(
            model, loader, opt, epochs=3, precision=precision,
            eval_loader=make_loader(TEST, 256, shuffle=False),
        )  # fmt: skip
        assert hist.steps == 3 * len(loader) == len(hist.lr) == len(hist.scale)
        assert hist.loss[-1] < hist.loss[0]
        assert hist.eval_accuracy[-1] > 0.9
        if precision != "amp-fp16":
            assert hist.scale == [1.0] * hist.steps and hist.skipped == []
        accs[precision] = hist.eval_accuracy[-1]
    assert abs(accs["amp-fp16"] - accs["fp32"]) <= 0.02
    assert abs(accs["amp-bf16"] - accs["fp32"]) <= 0.02


def test_skipped_steps_are_recorded_and_scheduler_does_not_advance():
    model, opt, loader = _setup(n=320)
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=2.0**20, growth_interval=3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    before = _params(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "lr_scheduler.step() before optimizer.step()" would fail
        hist = train(
            model, loader, opt, epochs=2, precision="amp-fp16", scaler=scaler, scheduler=sched
        )
    # 2**20 overflows FP16 gradients until it has backed off; growth every 3 steps skips again
    assert hist.skipped[:2] == [0, 1] and len(hist.skipped) >= 4
    # a step is skipped exactly when the scale drops afterwards
    drops = [i for i in range(hist.steps - 1) if hist.scale[i + 1] < hist.scale[i]]
    assert drops == [s for s in hist.skipped if s < hist.steps - 1]
    taken = hist.steps - len(hist.skipped)
    assert sched.last_epoch == taken
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.9**taken)
    # the lr recorded after a skipped step did not move
    for s in hist.skipped[1:]:
        assert hist.lr[s] == hist.lr[s - 1]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_skipped_step_leaves_parameters_untouched():
    model, opt, loader = _setup(n=32)
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=2.0**40)
    before = _params(model)
    hist = train(model, loader, opt, epochs=1, precision="amp-fp16", scaler=scaler)
    assert hist.skipped == [0]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert scaler.get_scale() == 2.0**39


@pytest.mark.parametrize("precision", ["amp-fp16", "amp-bf16", "fp32"])
def test_resume_is_bit_identical(tmp_path, precision):
    def run(epochs, ckpt=None, resume=False):
        model, opt, loader = _setup(n=256)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
        scaler = make_scaler(precision, DEVICE)
        if precision == "amp-fp16":
            scaler = torch.amp.GradScaler(DEVICE.type, init_scale=2.0**30, growth_interval=4)
        hist = train(
            model, loader, opt, epochs=epochs, precision=precision, scheduler=sched,
            scaler=scaler, checkpoint=ckpt, resume=resume, max_grad_norm=1.0,
        )  # fmt: skip
        return model, hist, scaler

    full, hist_full, scaler_full = run(4)
    path = tmp_path / "ckpt.pt"
    run(2, path)
    state = torch.load(path, weights_only=True)  # loads without unpickling code
    assert state["epoch"] == 2
    resumed, hist_res, scaler_res = run(4, path, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(full.parameters(), resumed.parameters()))
    assert hist_full == hist_res
    assert scaler_full.state_dict() == scaler_res.state_dict()
    if precision == "amp-fp16":
        assert hist_full.skipped  # the scaler state really mattered


def test_gradient_accumulation_equals_big_batch():
    torch.manual_seed(0)
    x, y = torch.randn(64, 64, device=DEVICE), torch.randint(0, 10, (64,), device=DEVICE)
    data = torch.utils.data.TensorDataset(x, y)
    results = []
    for batch, k in ((64, 1), (16, 4)):
        torch.manual_seed(1)
        model = MLP(64, (32,)).to(DEVICE)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = make_loader(data, batch, shuffle=False)
        hist = train(model, loader, opt, epochs=1, precision="fp32", accumulation_steps=k)
        assert hist.steps == 1
        results.append(_params(model))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_accumulation_counts_short_last_group():
    model, opt, loader = _setup(n=32 * 5)
    hist = train(model, loader, opt, epochs=1, precision="amp-fp16", accumulation_steps=2)
    assert hist.steps == 3  # groups of 2, 2 and 1 batches


def test_clipping_bounds_the_unscaled_gradient_norm():
    model, opt, _ = _setup()
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=2.0**10)
    x = torch.randn(32, 64, device=DEVICE)
    y = torch.randint(0, 10, (32,), device=DEVICE)
    with autocast("amp-fp16", DEVICE):
        loss = nn.functional.cross_entropy(model(x), y)
    backward(loss, scaler)
    norms = []
    original = opt.step

    def spy_step(*args, **kwargs):
        grads = [p.grad for p in model.parameters()]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        return original(*args, **kwargs)

    opt.step = spy_step
    assert optimizer_step(opt, scaler, max_grad_norm=0.01) is False
    assert norms and norms[0] <= 0.01 * (1 + 1e-4)
    assert all(p.grad is None for p in model.parameters())


def test_several_models_optimizers_losses_one_scaler():
    torch.manual_seed(0)
    m0, m1 = MLP(64, (16,)).to(DEVICE), MLP(64, (16,)).to(DEVICE)
    o0 = torch.optim.SGD(m0.parameters(), lr=0.1)
    o1 = torch.optim.Adam(m1.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=2.0**20, growth_interval=4)
    x, y = torch.randn(16, 64, device=DEVICE), torch.randint(0, 10, (16,), device=DEVICE)
    skipped = []
    for _ in range(20):
        with autocast("amp-fp16", DEVICE):
            a, b = m0(x), m1(x)
            loss0 = nn.functional.cross_entropy(2 * a + 3 * b, y)
            loss1 = nn.functional.cross_entropy(3 * a - 5 * b, y)
        backward([loss0, loss1], scaler)
        skipped.append(optimizer_step([o0, o1], scaler, max_grad_norm=1.0))
    assert skipped[0] and not all(skipped)
    assert o1.state[next(iter(m1.parameters()))]["step"].item() == skipped.count(False)


def test_train_rejects_bad_input():
    model, opt, loader = _setup(n=32)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        train(model, loader, opt, precision="fp8")
    with pytest.raises(ValueError, match="bf16 has float32's range"):
        train(model, loader, opt, precision="amp-bf16", scaler=torch.amp.GradScaler(DEVICE.type))
    with pytest.raises(ValueError, match="fp32 needs no loss scaling"):
        train(model, loader, opt, precision="fp32", scaler=torch.amp.GradScaler(DEVICE.type))
    with pytest.raises(ValueError, match="do not call .half"):
        train(model.half(), loader, opt, precision="amp-fp16")
    with pytest.raises(ValueError, match="accumulation_steps"):
        train(model.float(), loader, opt, accumulation_steps=0)
    with pytest.raises(ValueError, match="epochs"):
        train(model, loader, opt, epochs=-1)
    # a disabled scaler is fine with bf16
    train(model, loader, opt, precision="amp-bf16", scaler=torch.amp.GradScaler(enabled=False))


def test_simple_model_trains_with_amp():
    torch.manual_seed(0)
    model = SimpleModel().to(DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = torch.utils.data.Subset(digits("train", image_size=32), range(64))
    hist = train(model, make_loader(data, 16), opt, epochs=1, precision="auto")
    assert hist.steps == 4 and len(hist.loss) == 1


# ------------------------------------------------------------------ checks
def _save(path, model, opt, scaler):
    torch.save({"m": model.state_dict(), "o": opt.state_dict(), "s": scaler.state_dict()}, path)


def _load(path, model, opt, scaler):
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["m"])
    opt.load_state_dict(state["o"])
    scaler.load_state_dict(state["s"])


def _save_no_scaler(path, model, opt, scaler):
    torch.save({"m": model.state_dict(), "o": opt.state_dict()}, path)


def _load_no_scaler(path, model, opt, scaler):
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["m"])
    opt.load_state_dict(state["o"])


def _stub(*args):
    raise NotImplementedError


def test_train_checks():
    assert checks.check_resume((_save, _load))
    with pytest.raises(CheckFailed, match="initial scale"):
        checks.check_resume((_save_no_scaler, _load_no_scaler))
    with pytest.raises(CheckFailed, match="tuple"):
        checks.check_resume(_save)
    for check, stub in ((checks.check_resume, (_stub, _stub)),):
        with pytest.raises(NotAnswered):
            check(None)
        with pytest.raises(NotAnswered):
            check(stub)


def test_the_seeds_torch_cuda_amp_spelling_is_deprecated():
    messages = legacy_amp_warnings()
    assert len(messages) == 2
    assert (
        "torch.amp.GradScaler('cuda'" in messages[0] and "torch.amp.autocast('cuda'" in messages[1]
    )


def test_each_scheduler_follows_its_own_optimizer():
    """Issue 9 B4: opt0 steps, opt1 skips: only opt0's scheduler advances."""
    torch.manual_seed(0)
    m0, m1 = nn.Linear(4, 2), nn.Linear(4, 2)
    o0, o1 = (torch.optim.SGD(m.parameters(), lr=1.0) for m in (m0, m1))
    s0, s1 = (torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5) for o in (o0, o1))
    scaler = torch.amp.GradScaler("cpu")
    x = torch.randn(3, 4)
    scaler.scale(m0(x).sum() + m1(x).sum()).backward()
    m1.weight.grad[0, 0] = float("inf")
    assert optimizer_step([o0, o1], scaler, schedulers=[s0, s1], max_grad_norm=1.0) is True
    assert o0.param_groups[0]["lr"] == 0.5 and o1.param_groups[0]["lr"] == 1.0
    # one optimizer: the scaler's own decision (scaling.found_inf); the scale drops with it
    scaler.scale(m0(x).sum()).backward()
    m0.bias.grad[0] = float("nan")
    before = scaler.get_scale()
    assert optimizer_step(o0, scaler, schedulers=[s0]) is True
    assert scaler.get_scale() < before and o0.param_groups[0]["lr"] == 0.5
    scaler.scale(m0(x).sum()).backward()
    assert optimizer_step(o0, scaler, schedulers=[s0]) is False
    assert o0.param_groups[0]["lr"] == 0.25
    with pytest.raises(ValueError, match="its own optimizer"):
        optimizer_step(o0, scaler, schedulers=[s1])


def _hunt_fixed(model, optimizer, scheduler, scaler, batches, max_norm, accumulation):
    for i, (x, y) in enumerate(batches):
        with torch.autocast(x.device.type, dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), y) / accumulation
        scaler.scale(loss).backward()
        if (i + 1) % accumulation == 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            before = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            if scaler.get_scale() >= before:
                scheduler.step()
            optimizer.zero_grad()


def _hunt_variant(bugs):
    """The exercise's loop with some of its bugs (and other classic mistakes) put back."""

    def amp_steps(model, optimizer, scheduler, scaler, batches, max_norm, accumulation):
        for i, (x, y) in enumerate(batches):
            with torch.autocast(x.device.type, dtype=torch.float16):
                loss = nn.functional.cross_entropy(model(x), y) / accumulation
            if "backward" in bugs:
                loss.backward()
            else:
                scaler.scale(loss).backward()
            if "update_each_batch" in bugs:
                scaler.update()
            if (i + 1) % accumulation == 0:
                if "clip" not in bugs:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                before = scaler.get_scale()
                if "optimizer.step" in bugs:
                    optimizer.step()
                else:
                    scaler.step(optimizer)
                if "update_each_batch" not in bugs:
                    scaler.update()
                if "scheduler" in bugs or scaler.get_scale() >= before:
                    scheduler.step()
                optimizer.zero_grad()

    return amp_steps


def test_bug_hunt_check_names_each_mistake_in_one_short_line():
    assert checks.check_amp_bug_hunt(_hunt_fixed)
    cases = {
        ("backward", "clip", "scheduler"): "bug 1 is still there",
        ("clip", "scheduler"): "bug 2 is still there",
        ("scheduler",): "bug 3 is still there",
        ("optimizer.step",): "use scaler.step\\(optimizer\\)",
        ("update_each_batch",): "once per optimizer step",
    }
    for bugs, words in cases.items():
        with pytest.raises(CheckFailed, match=words) as info:
            checks.check_amp_bug_hunt(_hunt_variant(bugs))
        assert len(str(info.value)) < 200 and "\n" not in str(info.value), str(info.value)
    with pytest.raises(NotAnswered):
        checks.check_amp_bug_hunt(None)
    with pytest.raises(NotAnswered):
        checks.check_amp_bug_hunt(_stub)

    def calls_the_package(model, optimizer, scheduler, scaler, batches, max_norm, accumulation):
        return optimizer_step(optimizer, scaler)

    with pytest.raises(CheckFailed, match="answer key"):
        checks.check_amp_bug_hunt(calls_the_package)


def _plain_fit(
    model,
    batches,
    optimizer,
    scheduler,
    *,
    precision,
    accumulation_steps,
    max_grad_norm,
    short_last_group=True,
    scaler_always=False,
):
    dtype = {"amp-fp16": torch.float16, "amp-bf16": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler("cpu", enabled=scaler_always or precision == "amp-fp16")
    scales, n = [], len(batches)
    for i, (x, y) in enumerate(batches):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(x), y)
        start = i // accumulation_steps * accumulation_steps
        k = min(accumulation_steps, n - start) if short_last_group else accumulation_steps
        scaler.scale(loss / k).backward()
        if (i + 1) % accumulation_steps == 0 or i + 1 == n:
            scaler.unscale_(optimizer)
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            before = scaler.get_scale()
            scales.append(before)
            scaler.step(optimizer)
            scaler.update()
            if scaler.get_scale() >= before:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    return scales


def test_plain_loop_check():
    assert checks.check_plain_amp_loop(_plain_fit)
    with pytest.raises(CheckFailed, match="disabled for amp-bf16"):
        checks.check_plain_amp_loop(lambda *a, **k: _plain_fit(*a, **k, scaler_always=True))
    with pytest.raises(CheckFailed, match="may be short"):
        checks.check_plain_amp_loop(lambda *a, **k: _plain_fit(*a, **k, short_last_group=False))
    with pytest.raises(NotAnswered):
        checks.check_plain_amp_loop(lambda *a, **k: _stub())
