"""PyTorch's own GradScaler tests, ported to the CPU and run against both scalers.

Each test below is a port of a test in PyTorch's repository (named in its
docstring): test/test_torch.py (``test_grad_scaling_*``, ``test_pickle_gradscaler``,
``test_grad_scale_will_not_overflow``,
``test_params_invalidated_with_grads_invalidated_between_unscale_and_step``),
test/test_cuda.py (``test_grad_scaling_scale``) and test/test_optim.py
(``test_grad_scaling_autocast_fused_optimizers``). Every test is parametrised
over ``torch.amp.GradScaler("cpu")``, which proves the port (the original test
passes on the real thing), and :class:`mpcourse.scaling.DynamicLossScaler`,
which proves our scaler has the same observable behaviour.

What changed in the port: the device is the CPU and autocast uses FP16
(``torch.autocast("cpu", dtype=torch.float16)``, emulated there); tests that
called GradScaler's private ``_unscale_grads_`` or read ``_init_growth_tracker``
check the same thing through public methods (``unscale_``, ``step``,
``state_dict``) or through ``_check_inf_per_device`` / ``_found_inf_per_device``,
the two hooks both scalers expose for the ``step(grad_scaler=...)`` protocol;
the multi-GPU cases are dropped (our scaler handles one device by contract).
"""

from __future__ import annotations

import itertools
import math
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from mpcourse.scaling import DynamicLossScaler

ScalerFactory = Callable[..., Any]


def _gradscaler(**kwargs: Any) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", **kwargs)


SCALERS = {"torch.amp.GradScaler": _gradscaler, "DynamicLossScaler": DynamicLossScaler}


@pytest.fixture(params=sorted(SCALERS))
def make_scaler(request: pytest.FixtureRequest) -> ScalerFactory:
    torch.manual_seed(0)
    return SCALERS[request.param]


def _autocast(enabled: bool = True) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.float16, enabled=enabled)


# -- PyTorch's helpers (torch/testing/_internal/common_cuda.py), on the CPU ----------------------
def _create_scaling_models_optimizers(
    optimizer_ctor: Callable[..., torch.optim.Optimizer] = torch.optim.SGD,
    optimizer_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, torch.optim.Optimizer]:
    mod_control = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    mod_scaling = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    with torch.no_grad():
        for c, s in zip(mod_control.parameters(), mod_scaling.parameters(), strict=True):
            s.copy_(c)
    kwargs = {"lr": 1.0, **(optimizer_kwargs or {})}
    return (
        mod_control,
        mod_scaling,
        optimizer_ctor(mod_control.parameters(), **kwargs),
        optimizer_ctor(mod_scaling.parameters(), **kwargs),
    )


def _create_scaling_case(
    optimizer_ctor: Callable[..., torch.optim.Optimizer] = torch.optim.SGD,
    optimizer_kwargs: dict[str, Any] | None = None,
) -> tuple[Any, ...]:
    data = [(torch.randn(8, 8), torch.randn(8, 8)) for _ in range(4)]
    skip_iter = 2
    return _create_scaling_models_optimizers(optimizer_ctor, optimizer_kwargs) + (
        data,
        nn.MSELoss(),
        skip_iter,
    )


def _run_scaling_case(
    make_scaler: ScalerFactory,
    run: Callable[..., Any],
    unskipped: int,
    skipped: int,
    atol: float = 1e-7,
    rtol: float = 1e-5,
    optimizer_ctor: Callable[..., torch.optim.Optimizer] = torch.optim.SGD,
    optimizer_kwargs: dict[str, Any] | None = None,
) -> None:
    """test_torch.py's ``_run_scaling_case``: a scaled run must equal an unscaled control run."""
    for enabled in (True, False):  # scaling can be disabled without changing the control flow
        mod_control, mod_scaling, opt_control, opt_scaling, data, loss_fn, skip_iter = (
            _create_scaling_case(optimizer_ctor, optimizer_kwargs)
        )
        scaler = make_scaler(
            init_scale=128.0, growth_factor=2.0, enabled=enabled, growth_interval=1
        )
        run(data, mod_control, opt_control, scaler, loss_fn, skip_iter, False)
        ret = run(data, mod_scaling, opt_scaling, scaler, loss_fn, skip_iter, True)
        scaler = ret if ret else scaler
        if enabled:
            net_growth = scaler.get_growth_factor() ** unskipped if unskipped > 0 else 1.0
            net_backoff = scaler.get_backoff_factor() ** skipped if skipped > 0 else 1.0
            assert scaler.get_scale() == 128.0 * net_growth * net_backoff
        else:
            assert scaler.get_scale() == 1.0
        for c, s in zip(mod_control.parameters(), mod_scaling.parameters(), strict=True):
            torch.testing.assert_close(c.grad, s.grad, atol=atol, rtol=rtol)
            c_state, s_state = opt_control.state[c], opt_scaling.state[s]
            for k in c_state:
                torch.testing.assert_close(c_state[k], s_state[k], atol=atol, rtol=rtol, msg=k)
            torch.testing.assert_close(c, s, atol=atol, rtol=rtol)


# -- test_cuda.py --------------------------------------------------------------------------------
def test_grad_scaling_scale(make_scaler: ScalerFactory) -> None:
    """test_cuda.py::test_grad_scaling_scale: nested iterables of outputs are all scaled."""
    scaler = make_scaler(init_scale=2.0)
    t0 = torch.full((1,), 4.0, dtype=torch.float32)
    t1 = torch.full((1,), 4.0, dtype=torch.float32)
    outputs = (t1.clone(), (t0.clone(), t1.clone()), [t0.clone(), (t1.clone(), t0.clone())])
    outputs = scaler.scale(outputs)
    assert (
        outputs[0] == 8.0
        and outputs[1][0] == 8.0
        and outputs[1][1] == 8.0
        and outputs[2][0] == 8.0
        and outputs[2][1][0] == 8.0
        and outputs[2][1][1] == 8.0
    )
    assert isinstance(outputs[1], tuple) and isinstance(outputs[2], list)
    assert scaler._scale.device == t1.device


# -- test_torch.py -------------------------------------------------------------------------------
def test_grad_scaling_unscale(make_scaler: ScalerFactory) -> None:
    """test_torch.py::test_grad_scaling_unscale: dense and non-dense grads are unscaled, an inf
    or NaN in any of them is found (through ``unscale_`` + ``step`` instead of the private
    ``_unscale_grads_``); FP16 grads are refused by ``unscale_`` and checked by the fused path."""
    g = torch.full((20, 20), 4.0)

    def perfect_storm_grads(inject_inf: int) -> list[torch.Tensor]:
        grads = [g.clone(), g.clone()[:, :5], g.clone().t(), g.clone()[:, :5]]
        if inject_inf >= 0:
            grads[inject_inf][2, 2] = float("inf") if inject_inf % 2 else float("nan")
        return grads

    for inject_inf in range(-1, 4):
        scaler = make_scaler(init_scale=4.0)
        params = [nn.Parameter(torch.zeros_like(t)) for t in perfect_storm_grads(-1)]
        opt = torch.optim.SGD(params, lr=1.0)
        scaler.scale(torch.ones(()))
        grads = perfect_storm_grads(inject_inf)
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        if inject_inf < 0:  # unscaled to exactly 1, and the step was taken
            for p in params:
                assert torch.equal(p.grad, torch.ones_like(p.grad))
                assert torch.equal(p.detach(), -torch.ones_like(p))
            assert scaler.get_scale() == 4.0
        else:  # found: the step was skipped and the scale backed off
            assert all(torch.equal(p.detach(), torch.zeros_like(p)) for p in params)
            assert scaler.get_scale() == 2.0

    # FP16 gradients: unscale_ refuses them; the fused-optimizer check accepts and inspects them
    for inject_inf in (-1, 0):
        scaler = make_scaler()
        p = nn.Parameter(torch.zeros(20, 20, dtype=torch.float16))
        p.grad = g.half()
        if inject_inf >= 0:
            p.grad[2, 2] = float("inf")
        opt = torch.optim.SGD([p], lr=1.0)
        scaler.scale(torch.ones(()))
        with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
            scaler.unscale_(opt)
        scaler.update(2.0)  # end the iteration
        found = scaler._check_inf_per_device(opt)
        assert sum(v.item() for v in found.values()) == float(inject_inf >= 0)


def test_grad_scaling_update_scale(make_scaler: ScalerFactory) -> None:
    """test_torch.py::test_grad_scaling_update_scale, through update() instead of the kernel."""
    scaler = make_scaler(init_scale=4.0, growth_factor=2.0, backoff_factor=0.25, growth_interval=2)
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.0)

    def iteration(bad: bool) -> None:
        opt.zero_grad()
        scaler.scale(p.sum()).backward()
        if bad:
            p.grad[0] = float("inf")
        scaler.step(opt)
        scaler.update()

    iteration(bad=False)  # 2 consecutive unskipped iterations
    assert scaler.state_dict()["_growth_tracker"] == 1 and scaler.get_scale() == 4.0
    iteration(bad=False)
    assert scaler.state_dict()["_growth_tracker"] == 0 and scaler.get_scale() == 8.0
    iteration(bad=True)  # a skipped iteration
    assert scaler.state_dict()["_growth_tracker"] == 0 and scaler.get_scale() == 2.0


def test_grad_scaling_unscale_sparse(make_scaler: ScalerFactory) -> None:
    """test_torch.py::test_grad_scaling_unscale_sparse (issue 9 B5a: FP16 duplicates overflow)."""
    i = torch.tensor([[0, 1, 1], [2, 0, 2]], dtype=torch.int64)
    s = torch.sparse_coo_tensor(i, torch.tensor([16.0, 32.0, 64.0]), (2, 3), check_invariants=True)

    def unscaled(grad: torch.Tensor) -> tuple[torch.Tensor, bool]:
        scaler = make_scaler(init_scale=4.0)
        p = s.clone()
        opt = torch.optim.SGD([p], lr=1.0)
        p.grad = grad
        scaler.scale(torch.ones(()))
        scaler.unscale_(opt)
        found = sum(v.item() for v in scaler._found_inf_per_device(opt).values())
        return p.grad, bool(found)

    grad, found = unscaled(s.clone())
    assert not found and torch.equal(grad.to_dense(), (s / 4).to_dense())
    for bad in (float("inf"), float("nan")):
        _, found = unscaled(
            torch.sparse_coo_tensor(
                i, torch.tensor([16.0, 32.0, bad]), (2, 3), check_invariants=True
            )
        )
        assert found

    def fp16_found(grad: torch.Tensor) -> tuple[torch.Tensor, bool]:
        scaler = make_scaler(init_scale=4.0)
        p = s.clone().half()
        opt = torch.optim.SGD([p], lr=1.0)
        p.grad = grad
        scaler.scale(torch.ones(()))
        found = scaler._check_inf_per_device(opt)
        return p.grad, bool(sum(v.item() for v in found.values()))

    grad, found = fp16_found(s.clone().half())
    assert not found
    # duplicated indices: each raw value is finite in FP16, their sum (64000 + 64000) is not
    dup = torch.sparse_coo_tensor(
        torch.tensor([[0, 1, 0], [2, 0, 2]]),
        torch.tensor([64000.0, 32.0, 64000.0]),
        (2, 3),
        dtype=torch.float16,
        check_invariants=True,
    )
    assert torch.isfinite(dup._values()).all()
    grad, found = fp16_found(dup)
    assert found and grad.is_coalesced()


def test_grad_scaling_state_dict(make_scaler: ScalerFactory) -> None:
    """test_torch.py::test_grad_scaling_state_dict."""
    for lazy_init_scale in (True, False):
        s0 = make_scaler(init_scale=3.0, growth_factor=4.0, backoff_factor=0.5, growth_interval=2)
        s1 = make_scaler(init_scale=6.0, growth_factor=7.0, backoff_factor=0.8, growth_interval=1)
        if lazy_init_scale:  # a dummy scale() call creates the scale tensor
            s1.scale(torch.full((1,), 4.0))
            assert isinstance(s1._scale, torch.Tensor)
        s1.load_state_dict(s0.state_dict())
        assert s1.get_scale() == 3.0
        assert s1.get_growth_factor() == 4.0
        assert s1.get_backoff_factor() == 0.5
        assert s1.get_growth_interval() == 2
        assert s1.state_dict()["_growth_tracker"] == 0


def _autocast_run(try_pickle: bool, control_autocast: bool = False) -> Callable[..., Any]:
    def run(data, model, optimizer, scaler, loss_fn, skip_iter, try_scaling_api):  # noqa: ANN001, ANN202
        for i, (inp, target) in enumerate(data):
            optimizer.zero_grad()
            with _autocast(enabled=try_scaling_api or control_autocast):
                loss = loss_fn(model(inp), target)
            if try_scaling_api:
                scaler.scale(loss).backward()
                if i == skip_iter and scaler.is_enabled():
                    with torch.no_grad():
                        model[1].weight.grad.fill_(float("inf"))
                scaler.step(optimizer)
                scaler.update()
                if try_pickle:
                    scaler = pickle.loads(pickle.dumps(scaler))
            else:
                loss.backward()
                if (not scaler.is_enabled()) or (i != skip_iter):
                    optimizer.step()
        return scaler

    return run


# PyTorch compares scaling + FP16 autocast against pure FP32 at atol 1e-3 (on CUDA). On the CPU
# that holds for SGD; Adam at lr 1.0 amplifies CPU FP16 rounding far beyond it (moments near
# zero differ by up to 590% relative, measured), so the Adam ports compare scaling + autocast
# against autocast without scaling: that isolates what the scaler does, at the original atol.
AUTOCAST_CASES = {
    "sgd": (torch.optim.SGD, None),
    "adam": (torch.optim.Adam, None),
    "adamw": (torch.optim.AdamW, None),
    "sgd_foreach": (torch.optim.SGD, {"foreach": True}),
    "adam_foreach": (torch.optim.Adam, {"foreach": True}),
    "adam_fused": (torch.optim.Adam, {"fused": True}),
    "adamw_fused": (torch.optim.AdamW, {"fused": True}),
}


@pytest.mark.parametrize("case", sorted(AUTOCAST_CASES))
def test_grad_scaling_autocast(make_scaler: ScalerFactory, case: str) -> None:
    """test_torch.py::test_grad_scaling_autocast(_foreach, _fused): scaling + FP16 autocast vs
    neither, also with the scaler pickled and unpickled after every update()."""
    optimizer_ctor, optimizer_kwargs = AUTOCAST_CASES[case]
    for try_pickle in (False, True):
        _run_scaling_case(
            make_scaler,
            _autocast_run(try_pickle, control_autocast=optimizer_ctor is not torch.optim.SGD),
            unskipped=3,
            skipped=1,
            atol=1e-3,
            optimizer_ctor=optimizer_ctor,
            optimizer_kwargs=optimizer_kwargs,
        )


@pytest.mark.parametrize("case", ["sgd", "adam_fused"])
def test_autocast_run_is_bit_identical_across_scalers(case: str) -> None:
    """Beyond the ports' tolerances: the same FP16 autocast run, pickling included, gives the
    same parameters bit for bit with either scaler."""
    optimizer_ctor, optimizer_kwargs = AUTOCAST_CASES[case]
    finals = []
    for factory in (_gradscaler, DynamicLossScaler):
        torch.manual_seed(0)
        _, model, _, optimizer, data, loss_fn, skip_iter = _create_scaling_case(
            optimizer_ctor, optimizer_kwargs
        )
        scaler = factory(init_scale=128.0, growth_factor=2.0, growth_interval=1)
        scaler = _autocast_run(True)(data, model, optimizer, scaler, loss_fn, skip_iter, True)
        finals.append(([p.detach().clone() for p in model.parameters()], scaler.get_scale()))
    assert finals[0][1] == finals[1][1] == 128.0 * 2.0**3 * 0.5
    assert all(torch.equal(a, b) for a, b in zip(finals[0][0], finals[1][0], strict=True))


def test_grad_scaling_clipping(make_scaler: ScalerFactory) -> None:
    """test_torch.py::test_grad_scaling_clipping: clip the scaled grads at max_norm * S."""

    def run(data, model, optimizer, scaler, loss_fn, skip_iter, try_scaling_api):  # noqa: ANN001, ANN202
        max_norm = 0.2
        for i, (inp, target) in enumerate(data):
            optimizer.zero_grad()
            loss = loss_fn(model(inp), target)
            if try_scaling_api:
                scaler.scale(loss).backward()
                nn.utils.clip_grad_norm_(model.parameters(), max_norm * scaler.get_scale())
                if i == skip_iter and scaler.is_enabled():
                    model[1].weight.grad.data.fill_(float("inf"))
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                if (not scaler.is_enabled()) or (i != skip_iter):
                    optimizer.step()

    _run_scaling_case(make_scaler, run, unskipped=3, skipped=1, atol=1e-5)


def test_grad_scaling_clipping_separate_unscale(make_scaler: ScalerFactory) -> None:
    """test_torch.py::test_grad_scaling_clipping_separate_unscale."""

    def run(data, model, optimizer, scaler, loss_fn, skip_iter, try_scaling_api):  # noqa: ANN001, ANN202
        max_norm = 0.2
        for i, (inp, target) in enumerate(data):
            optimizer.zero_grad()
            loss = loss_fn(model(inp), target)
            if try_scaling_api:
                scaler.scale(loss).backward()
                if i == skip_iter and scaler.is_enabled():
                    model[1].weight.grad.data.fill_(float("inf"))
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), max_norm, error_if_nonfinite=False)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                if (not scaler.is_enabled()) or (i != skip_iter):
                    optimizer.step()

    _run_scaling_case(make_scaler, run, unskipped=3, skipped=1)


def test_grad_scaling_penalty(make_scaler: ScalerFactory) -> None:
    """test_torch.py::test_grad_scaling_penalty: a gradient penalty from scaled autograd.grad."""

    def run(data, model, optimizer, scaler, loss_fn, skip_iter, try_scaling_api):  # noqa: ANN001, ANN202
        for i, (inp, target) in enumerate(data):
            optimizer.zero_grad()
            loss = loss_fn(model(inp), target)
            if try_scaling_api:
                grad_params = torch.autograd.grad(
                    scaler.scale(loss), model.parameters(), create_graph=True
                )
                inv_scale = 1.0 / scaler.get_scale()
                grad_params = [p * inv_scale for p in grad_params]
            else:
                grad_params = torch.autograd.grad(loss, model.parameters(), create_graph=True)
            grad_norm = sum(grad.pow(2).sum() for grad in grad_params).sqrt()
            loss = loss + grad_norm
            if try_scaling_api:
                scaler.scale(loss).backward()
                if i == skip_iter and scaler.is_enabled():
                    model[1].weight.grad.data.fill_(float("inf"))
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if (not scaler.is_enabled()) or (i != skip_iter):
                    optimizer.step()

    _run_scaling_case(make_scaler, run, unskipped=3, skipped=1)


def test_grad_scaling_accumulation(make_scaler: ScalerFactory) -> None:
    """test_torch.py::test_grad_scaling_accumulation."""

    def run(data, model, optimizer, scaler, loss_fn, skip_iter, try_scaling_api):  # noqa: ANN001, ANN202
        iters_to_accumulate = 2
        for i, (inp, target) in enumerate(data):
            loss = loss_fn(model(inp), target) / iters_to_accumulate
            if try_scaling_api:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            if (i + 1) % iters_to_accumulate == 0:
                if try_scaling_api:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad()

    _run_scaling_case(make_scaler, run, unskipped=2, skipped=0)


def _run_two_models(case: tuple[Any, ...], scaler: Any, try_scaling_api: bool) -> None:
    """test_grad_scaling_multiple's ``run``: two models, two optimizers, two losses."""
    model0, model1, optimizer0, optimizer1, data, loss_fn, skip_iter = case
    for i, (inp, target) in enumerate(data):
        optimizer0.zero_grad()
        optimizer1.zero_grad()
        output0, output1 = model0(inp), model1(inp)
        loss0 = loss_fn(0.3 * output0 + 0.7 * output1, target)
        loss1 = loss_fn(0.6 * output0 - 0.4 * output1, target)
        if try_scaling_api:
            scaler.scale(loss0).backward(retain_graph=True)
            scaler.scale(loss1).backward()
            if i == skip_iter and scaler.is_enabled():
                model1[1].weight.grad.data.fill_(float("inf"))
            scaler.unscale_(optimizer0)  # as an additional stress test, unscale one separately
            scaler.step(optimizer0)
            scaler.step(optimizer1)
            scaler.update()
        else:
            loss0.backward(retain_graph=True)
            loss1.backward()
            optimizer0.step()
            if (not scaler.is_enabled()) or (i != skip_iter):
                optimizer1.step()


def test_grad_scaling_multiple(make_scaler: ScalerFactory) -> None:
    """test_torch.py::test_grad_scaling_multiple: 2 models and 2 optimizers, both receiving
    gradients from 2 losses."""
    for enabled in (True, False):
        mod_control0, mod_scaling0, opt_control0, opt_scaling0, data, loss_fn, skip_iter = (
            _create_scaling_case()
        )
        mod_control1, mod_scaling1, opt_control1, opt_scaling1 = _create_scaling_models_optimizers()
        scaler = make_scaler(
            init_scale=128.0, growth_factor=2.0, enabled=enabled, growth_interval=1
        )
        rest = (data, loss_fn, skip_iter)
        _run_two_models(
            (mod_control0, mod_control1, opt_control0, opt_control1, *rest), scaler, False
        )
        _run_two_models(
            (mod_scaling0, mod_scaling1, opt_scaling0, opt_scaling1, *rest), scaler, True
        )
        # the scale grew 3 times and backed off once
        if enabled:
            expected = 128.0 * scaler.get_growth_factor() ** 3 * scaler.get_backoff_factor()
            assert scaler.get_scale() == expected
        else:
            assert scaler.get_scale() == 1.0
        for c, s in zip(
            itertools.chain(mod_control0.parameters(), mod_control1.parameters()),
            itertools.chain(mod_scaling0.parameters(), mod_scaling1.parameters()),
            strict=True,
        ):
            torch.testing.assert_close(c, s, atol=1e-7, rtol=1e-5)


def test_pickle_gradscaler(make_scaler: ScalerFactory) -> None:
    """test_torch.py::test_pickle_gradscaler (both with and without a scale tensor yet)."""
    for lazy_init_scale in (True, False):
        a = make_scaler(init_scale=3.0, growth_factor=4.0, backoff_factor=0.5, growth_interval=2)
        assert a.is_enabled()
        if lazy_init_scale:
            a.scale(torch.tensor([4.0]))
            assert isinstance(a._scale, torch.Tensor)
        b = pickle.loads(pickle.dumps(a))
        assert b.is_enabled() == a.is_enabled()
        assert b.get_scale() == 3.0
        assert b.get_growth_factor() == 4.0
        assert b.get_backoff_factor() == 0.5
        assert b.get_growth_interval() == 2
        assert b.state_dict()["_growth_tracker"] == 0
        assert b.scale(torch.tensor([4.0])) == 12.0


def test_pickle_mid_iteration_is_refused_and_unpickled_needs_scale(
    make_scaler: ScalerFactory,
) -> None:
    """Issue 9 B5c (GradScaler's ``__getstate__``): pickling is allowed only between iterations,
    and an unpickled scaler has no scale tensor until ``scale()``: update/unscale_/step refuse."""
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = make_scaler(init_scale=8.0)
    scaler.scale(p.sum()).backward()
    scaler.unscale_(opt)
    with pytest.raises(AssertionError, match="only be pickled at the beginning"):
        pickle.dumps(scaler)
    scaler.step(opt)
    with pytest.raises(AssertionError, match="only be pickled at the beginning"):
        pickle.dumps(scaler)
    scaler.update()
    for call in (lambda s: s.update(), lambda s: s.unscale_(opt), lambda s: s.step(opt)):
        copy_ = pickle.loads(pickle.dumps(scaler))
        assert copy_.get_scale() == 8.0
        with pytest.raises(AssertionError):
            call(copy_)


def test_grad_scale_will_not_overflow(make_scaler: ScalerFactory) -> None:
    """test_torch.py::test_grad_scale_will_not_overflow: growth stops below FP32's inf."""
    model = nn.Linear(5, 1)
    optimizer = torch.optim.Adam(model.parameters())
    scaler = make_scaler(growth_interval=1, growth_factor=2**4, init_scale=1e38)
    optimizer.zero_grad()
    x = torch.randn(1, 5)
    y = 1e-30 * torch.randn(1, 1)
    loss = ((model(x) - y) ** 2).mean()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert math.isfinite(scaler.get_scale())
    assert scaler._scale != float("inf") and scaler._scale != float("nan")


@pytest.mark.parametrize("optimizer_ctor", [torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize(
    "optimizer_kwargs",
    [
        {"foreach": False, "fused": False},
        {"foreach": True, "fused": False},
        {"foreach": False, "fused": True},
    ],
    ids=["forloop", "foreach", "fused"],
)
def test_params_invalidated_with_grads_invalidated_between_unscale_and_step(
    make_scaler: ScalerFactory, optimizer_ctor, optimizer_kwargs
) -> None:
    """test_torch.py::test_params_invalidated_with_grads_invalidated_between_unscale_and_step:
    grads broken after a clean unscale_() are not re-checked, so the parameters become nonsense."""
    model, _, optimizer, _, data, loss_fn, _ = _create_scaling_case(
        optimizer_ctor, optimizer_kwargs
    )
    scaler = make_scaler(init_scale=128.0)
    for inp, target in data:
        optimizer.zero_grad()
        with _autocast():
            loss = loss_fn(model(inp), target)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        for j, param in enumerate(model.parameters()):  # deliberately break grads
            param.grad.copy_(torch.inf if j % 2 else torch.nan)
        scaler.step(optimizer)
        scaler.update()
    assert all((p.isnan().any() or p.isinf().any()) for p in model.parameters())


@pytest.mark.parametrize("optimizer_ctor", [torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("separate_unscale", [False, True])
def test_grad_scaling_autocast_fused_optimizers(
    make_scaler: ScalerFactory, optimizer_ctor, amsgrad: bool, separate_unscale: bool
) -> None:
    """test_optim.py::test_grad_scaling_autocast_fused_optimizers: a fused optimizer (unscaling
    inside its kernel) against the for-loop one (unscaled by the scaler), step by step. As
    PyTorch's ``TensorTracker`` does, each compared tensor is reset to the control's value, so
    one-ulp differences do not compound."""
    torch.manual_seed(20)
    kwargs = {"fused": True, "amsgrad": amsgrad}
    mod_control, mod_scaling, _, opt_scaling, data, loss_fn, _ = _create_scaling_case(
        optimizer_ctor, kwargs
    )
    opt_control = optimizer_ctor(mod_control.parameters(), lr=1.0, fused=False, amsgrad=amsgrad)
    scaler_scaling, scaler_control = make_scaler(init_scale=128.0), make_scaler(init_scale=128.0)
    loose = {"atol": 2e-5, "rtol": 2e-5}  # float betas: fused and for-loop round differently

    def check_set(expected: torch.Tensor, actual: torch.Tensor, **tol: float) -> None:
        torch.testing.assert_close(actual.reshape(expected.shape), expected, **tol)
        with torch.no_grad():
            actual.copy_(expected.reshape(actual.shape))

    for inp, target in data:
        opt_control.zero_grad()
        with _autocast():
            loss_control = loss_fn(mod_control(inp), target)
        scaler_control.scale(loss_control).backward()
        scaler_control.step(opt_control)
        scaler_control.update()

        opt_scaling.zero_grad()
        with _autocast():
            loss_scaling = loss_fn(mod_scaling(inp), target)
        scaler_scaling.scale(loss_scaling).backward()
        if separate_unscale:
            scaler_scaling.unscale_(opt_scaling)
        scaler_scaling.step(opt_scaling)
        scaler_scaling.update()

        torch.testing.assert_close(loss_scaling, loss_control)
        for pc, ps in zip(mod_control.parameters(), mod_scaling.parameters(), strict=True):
            check_set(pc.grad, ps.grad)
            check_set(pc, ps, **loose)
            state_control, state_scaling = opt_control.state[pc], opt_scaling.state[ps]
            for k in state_control:
                tol = loose if k in ("exp_avg_sq", "max_exp_avg_sq") else {}
                check_set(state_control[k], state_scaling[k], **tol)


# -- issue 9 B5: the remaining cases, each run on both scalers ------------------------------------
def test_fused_step_after_unscale_without_grads_is_refused(make_scaler: ScalerFactory) -> None:
    """B5b: ``unscale_`` while no parameter has a ``.grad``, then ``scale(loss).backward()``, then
    ``step()`` on a fused optimizer. GradScaler refuses (an AttributeError from its internals);
    ours refuses with a message. Either way the weight is not moved by S * g."""
    w = nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([w], lr=0.1, fused=True)
    scaler = make_scaler()
    scaler.scale(torch.ones(()))
    scaler.unscale_(opt)
    scaler.scale((2 * w).sum()).backward()
    with pytest.raises((AttributeError, RuntimeError)):
        scaler.step(opt)
    assert w.item() == 1.0


class _LegacySGD(torch.optim.SGD):
    """A custom optimizer of the deprecated protocol: its step() takes ``grad_scaler`` and
    unscales and skips by itself, through the scaler's ``_check_inf_per_device``."""

    _step_supports_amp_scaling = True

    def step(self, closure: Any = None, grad_scaler: Any = None) -> Any:  # type: ignore[override]
        found = grad_scaler._check_inf_per_device(self)
        if sum(v.item() for v in found.values()):
            return "skipped"
        inv_scale = 1.0 / grad_scaler._get_scale_async()
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.mul_(inv_scale)
        super().step()
        return "stepped"


def test_deprecated_grad_scaler_kwarg_protocol(make_scaler: ScalerFactory) -> None:
    """B5d: ``step(grad_scaler=self)`` for optimizers whose step() accepts it, with GradScaler's
    FutureWarning; the optimizer's own inf check feeds update()."""
    torch.manual_seed(3)
    w0 = torch.randn(4)
    w = nn.Parameter(w0.clone())
    opt = _LegacySGD([w], lr=0.1)
    scaler = make_scaler(init_scale=2.0**10, growth_interval=2)
    trail = []
    for i in range(5):
        opt.zero_grad()
        scaler.scale((w**2).sum()).backward()
        if i == 2:
            w.grad[1] = float("inf")
        with pytest.warns(FutureWarning, match="stop passing itself"):
            trail.append(scaler.step(opt))
        scaler.update()
        trail.append(scaler.get_scale())
    assert trail == [
        "stepped",
        1024.0,
        "stepped",
        2048.0,
        "skipped",
        1024.0,
        "stepped",
        1024.0,
        "stepped",
        2048.0,
    ]
    torch.testing.assert_close(w.detach(), w0 * 0.8**4)  # 4 steps taken, each w <- w - 0.1 * 2w
