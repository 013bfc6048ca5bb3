"""mpcourse.scaling against the real thing: torch.amp.GradScaler("cpu").

Differential runs (random settings, injected inf/NaN gradients, clipping,
several optimizers) must give identical scales, skipped steps, return values,
state dicts and bit-identical parameters; misuse must raise the same types.
"""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mpcourse.scaling import (
    DynamicLossScaler,
    OptState,
    ScalerConfigError,
    ScalerUsageError,
    StaticLossScaler,
    found_inf,
    next_scale,
    unscale_grads_,
)


def torch_scaler(**kwargs) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", **kwargs)


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


@pytest.mark.parametrize("make", [torch_scaler, DynamicLossScaler], ids=["torch", "ours"])
def test_found_inf_is_the_scalers_skip_decision(make):
    """found_inf agrees with what step() does, for GradScaler and ours, per optimizer."""
    for bad in (False, True):
        net = small_net()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        scaler = make(init_scale=4.0)
        scaler.scale(net(torch.ones(2, 6)).sum()).backward()
        assert found_inf(scaler, opt) is False  # not unscaled yet: nothing found
        if bad:
            net[0].bias.grad[0] = float("inf")
        before = [p.detach().clone() for p in net.parameters()]
        scaler.unscale_(opt)
        assert found_inf(scaler, opt) is bad
        scaler.step(opt)
        stepped = any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))
        assert found_inf(scaler, opt) is bad and stepped is not bad
        scaler.update()
        assert found_inf(scaler, opt) is False  # update() forgets the iteration
    assert found_inf(make(enabled=False), opt) is False


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw_fused": lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True),
}


def run_pair(seed: int, opt_name: str, steps: int = 40) -> None:
    """Train two identical nets side by side, one per scaler, and compare after every step."""
    rng = np.random.default_rng(seed)
    cfg = dict(
        init_scale=float(2.0 ** int(rng.integers(-4, 20))) * float(rng.choice([1.0, 1.3, 0.7])),
        growth_factor=float(rng.choice([2.0, 1.5, 3.0, 1.0001])),
        backoff_factor=float(rng.choice([0.5, 0.25, 0.9, 0.3])),
        growth_interval=int(rng.integers(1, 6)),
    )
    ours, ref = DynamicLossScaler(**cfg), torch_scaler(**cfg)
    net_a = small_net(seed)
    net_b = copy.deepcopy(net_a)
    opt_a, opt_b = (
        OPTIMIZERS[opt_name](net_a.parameters()),
        OPTIMIZERS[opt_name](net_b.parameters()),
    )
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        x = torch.randn(16, 6, generator=gen) * float(rng.choice([1.0, 1e3]))
        y = torch.randint(0, 3, (16,), generator=gen)
        bad = rng.random() < 0.3
        where = (int(rng.integers(0, 4)), float(rng.choice([math.inf, -math.inf, math.nan])))
        clip = rng.random() < 0.5
        results = []
        for net, opt, scaler in ((net_a, opt_a, ours), (net_b, opt_b, ref)):
            opt.zero_grad(set_to_none=bool(step % 2))
            loss = nn.functional.cross_entropy(net(x), y)
            scaler.scale(loss).backward()
            if bad:
                params = list(net.parameters())
                params[where[0]].grad.view(-1)[0] = where[1]
            if clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            results.append(scaler.step(opt))
            scaler.update()
        assert results[0] is None and results[1] is None
        assert ours.get_scale() == ref.get_scale(), (step, cfg)
        assert ours.state_dict() == ref.state_dict(), (step, cfg)
        for pa, pb in zip(net_a.parameters(), net_b.parameters(), strict=True):
            assert torch.equal(pa, pb), (step, cfg)
            if pa.grad is not None:
                assert torch.equal(pa.grad.nan_to_num(), pb.grad.nan_to_num())
    # each run must exercise both branches: some skipped steps, some taken
    assert 0 < ours.skipped_steps < steps


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("seed", range(6))
def test_differential_against_gradscaler(seed: int, opt_name: str) -> None:
    run_pair(seed, opt_name)


@settings(max_examples=150)
@given(
    events=st.lists(st.booleans(), min_size=1, max_size=60),
    init_exp=st.integers(-10, 127),
    growth_factor=st.sampled_from([2.0, 1.5, 4.0, 1.1]),
    backoff_factor=st.sampled_from([0.5, 0.125, 0.75, 0.9]),
    growth_interval=st.integers(1, 5),
)
def test_next_scale_matches_torch_kernel(
    events, init_exp, growth_factor, backoff_factor, growth_interval
) -> None:
    """The pure update rule equals torch._amp_update_scale_ (including no growth past FP32 max)."""
    scale = torch.full((), 2.0**init_exp, dtype=torch.float32)
    tracker = torch.zeros((), dtype=torch.int32)
    s, t = scale.item(), 0
    for found in events:
        torch._amp_update_scale_(
            scale,
            tracker,
            torch.tensor(float(found)),
            growth_factor,
            backoff_factor,
            growth_interval,
        )
        s, t = next_scale(
            s,
            t,
            found,
            growth_factor=growth_factor,
            backoff_factor=backoff_factor,
            growth_interval=growth_interval,
        )
        assert (s, t) == (scale.item(), tracker.item())


def test_defaults_match_gradscaler() -> None:
    ours, ref = DynamicLossScaler(), torch_scaler()
    assert ours.state_dict() == ref.state_dict()
    assert ours.state_dict() == {
        "scale": 65536.0,
        "growth_factor": 2.0,
        "backoff_factor": 0.5,
        "growth_interval": 2000,
        "_growth_tracker": 0,
    }
    assert ours.get_scale() == ref.get_scale() == 65536.0 and ours.is_enabled()


def test_growth_stops_at_fp32_max() -> None:
    ours, ref = (
        DynamicLossScaler(2.0**127, growth_interval=1),
        torch_scaler(init_scale=2.0**127, growth_interval=1),
    )
    for scaler in (ours, ref):
        p = nn.Parameter(torch.ones(2))
        opt = torch.optim.SGD([p], lr=0.0)
        for _ in range(3):
            scaler.scale(p.sum()).backward()
            scaler.step(opt)
            scaler.update()
    assert ours.get_scale() == ref.get_scale() == 2.0**127
    assert ours.state_dict() == ref.state_dict()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("init_scale", [2.0**16, 3.0 * 2**10, 2.0**-3])
def test_scale_of_tensor_same_dtype_and_bits(dtype, init_scale) -> None:
    x = torch.randn(5).to(dtype) * 100
    got = DynamicLossScaler(init_scale).scale(x)
    want = torch_scaler(init_scale=init_scale).scale(x)
    assert got.dtype == want.dtype == dtype
    assert torch.equal(got.nan_to_num(), want.nan_to_num())


def test_scale_of_iterables() -> None:
    a, b, c = torch.tensor(1.0), torch.tensor([2.0, 3.0]), torch.tensor(4.0)
    ours, ref = DynamicLossScaler(8.0), torch_scaler(init_scale=8.0)
    for outputs in ([a, b], (a, b), [a, (b, [c])]):
        got, want = ours.scale(outputs), ref.scale(outputs)
        assert type(got) is type(want)
        assert repr(got) == repr(want)
    got, want = ours.scale(iter([a, b])), ref.scale(iter([a, b]))
    assert type(got) is type(want) is map
    assert [t.tolist() for t in got] == [t.tolist() for t in want] == [8.0, [16.0, 24.0]]
    for scaler in (ours, ref):
        with pytest.raises(ValueError, match="Tensor or an iterable"):
            scaler.scale(3.0)


def test_disabled_is_a_pass_through() -> None:
    for scaler in (DynamicLossScaler(enabled=False), torch_scaler(enabled=False)):
        loss = torch.tensor(2.0)
        assert scaler.scale(loss) is loss
        p = nn.Parameter(torch.ones(1))
        p.grad = torch.tensor([math.inf])
        opt = torch.optim.SGD([p], lr=1.0)
        scaler.unscale_(opt)
        assert scaler.step(opt, lambda: torch.tensor(7.0)) == 7.0  # stepped despite inf
        scaler.update()
        assert scaler.get_scale() == 1.0 and scaler.state_dict() == {}
        scaler.load_state_dict({"scale": 5.0})
        assert scaler.get_scale() == 1.0 and not scaler.is_enabled()
        assert math.isinf(p.item())
    assert StaticLossScaler(-1.0, enabled=False).get_scale() == 1.0  # not validated when off


def test_step_returns_optimizer_value_or_none() -> None:
    for scaler in (DynamicLossScaler(4.0), torch_scaler(init_scale=4.0)):
        p = nn.Parameter(torch.ones(2))
        opt = torch.optim.SGD([p], lr=0.1)
        scaler.scale(p.sum()).backward()
        assert scaler.step(opt, lambda: torch.tensor(3.0)).item() == 3.0  # positional closure
        scaler.update()
        p.grad = None
        scaler.scale(p.sum() * math.inf).backward()
        assert scaler.step(opt, lambda: torch.tensor(3.0)) is None
        scaler.update()
        assert scaler.get_scale() == 2.0
        scaler.scale(p.sum()).backward()
        with pytest.raises(RuntimeError, match="[Cc]losure"):
            scaler.step(opt, closure=lambda: torch.tensor(1.0))


def _misuse_cases():
    def fresh(scaler):
        p = nn.Parameter(torch.ones(3))
        return p, torch.optim.SGD([p], lr=0.1)

    def step_before_scale(s):
        p, opt = fresh(s)
        p.grad = torch.ones(3)
        s.step(opt)

    def unscale_before_scale(s):
        p, opt = fresh(s)
        p.grad = torch.ones(3)
        s.unscale_(opt)

    def update_before_scale(s):
        s.update()

    def unscale_twice(s):
        p, opt = fresh(s)
        s.scale(p.sum()).backward()
        s.unscale_(opt)
        s.unscale_(opt)

    def unscale_after_step(s):
        p, opt = fresh(s)
        s.scale(p.sum()).backward()
        s.step(opt)
        s.unscale_(opt)

    def step_twice(s):
        p, opt = fresh(s)
        s.scale(p.sum()).backward()
        s.step(opt)
        s.step(opt)

    def update_without_step(s):
        p, _ = fresh(s)
        s.scale(p.sum()).backward()
        s.update()

    def step_without_grads(s):
        p, opt = fresh(s)
        s.scale(p.sum())
        s.step(opt)

    def fp16_grads(s):
        p = nn.Parameter(torch.ones(3, dtype=torch.float16))
        opt = torch.optim.SGD([p], lr=0.1)
        s.scale(p.sum()).backward()
        s.step(opt)

    def bad_new_scale(s):
        p, opt = fresh(s)
        s.scale(p.sum()).backward()
        s.step(opt)
        s.update(torch.ones(2))

    def empty_state_dict(s):
        s.load_state_dict({})

    return {
        f.__name__: f
        for f in (
            step_before_scale,
            unscale_before_scale,
            update_before_scale,
            unscale_twice,
            unscale_after_step,
            step_twice,
            update_without_step,
            step_without_grads,
            fp16_grads,
            bad_new_scale,
            empty_state_dict,
        )
    }


MISUSE = _misuse_cases()


@pytest.mark.parametrize("name", sorted(MISUSE))
def test_misuse_raises_same_type_as_gradscaler(name: str) -> None:
    with pytest.raises(Exception) as ref_err:
        MISUSE[name](torch_scaler())
    with pytest.raises(type(ref_err.value)) as our_err:
        MISUSE[name](DynamicLossScaler())
    message = str(our_err.value)
    assert len(message) > 40 and any(
        w in message for w in ("call", "Call", "use", "Keep", "save", "pass")
    )


def test_usage_error_is_both_runtime_and_assertion_error() -> None:
    assert issubclass(ScalerUsageError, RuntimeError) and issubclass(
        ScalerUsageError, AssertionError
    )
    assert issubclass(ScalerConfigError, ValueError) and issubclass(
        ScalerConfigError, AssertionError
    )


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(growth_factor=1.0), ScalerConfigError),
        (dict(backoff_factor=1.0), ScalerConfigError),
        (dict(backoff_factor=0.0), ScalerConfigError),
        (dict(growth_interval=0), ScalerConfigError),
        (dict(growth_interval=2.5), TypeError),
        (dict(init_scale=math.inf), ScalerConfigError),
        (dict(init_scale=-2.0), ScalerConfigError),
        (dict(init_scale="big"), TypeError),
    ],
)
def test_bad_settings_are_refused(kwargs, error) -> None:
    with pytest.raises(error, match="must be"):
        DynamicLossScaler(**kwargs)
    if "growth_factor" in kwargs or kwargs.get("backoff_factor") == 1.0:
        with pytest.raises(AssertionError):  # GradScaler refuses these too
            torch_scaler(**kwargs)


def test_update_with_new_scale() -> None:
    for new in (1024.0, torch.tensor(512.0), 3.3):
        ours, ref = DynamicLossScaler(), torch_scaler()
        for scaler in (ours, ref):
            p = nn.Parameter(torch.ones(2))
            scaler.scale(p.sum()).backward()
            scaler.step(torch.optim.SGD([p], lr=0.1))
            scaler.update(new)
        assert ours.state_dict() == ref.state_dict()
    ours.update(256)  # an int is accepted too (GradScaler only takes floats and tensors)
    assert ours.get_scale() == 256.0


def test_state_dict_round_trip_and_resume() -> None:
    """Checkpoint after update, load into fresh scalers (ours and torch's): same future."""
    ours, ref = DynamicLossScaler(growth_interval=3), torch_scaler(growth_interval=3)
    for scaler in (ours, ref):
        p = nn.Parameter(torch.ones(2))
        opt = torch.optim.SGD([p], lr=0.1)
        for i in range(4):
            p.grad = None
            scaler.scale(p.sum() * (math.inf if i == 1 else 1.0)).backward()
            scaler.step(opt)
            scaler.update()
    assert (
        ours.state_dict()
        == ref.state_dict()
        == {
            "scale": 32768.0,
            "growth_factor": 2.0,
            "backoff_factor": 0.5,
            "growth_interval": 3,
            "_growth_tracker": 2,
        }
    )
    saved = pickle.loads(pickle.dumps(ref.state_dict()))
    resumed_ours, resumed_ref = DynamicLossScaler(), torch_scaler()
    resumed_ours.load_state_dict(saved)
    resumed_ref.load_state_dict(ours.state_dict())  # ours loads into torch's and vice versa
    assert resumed_ours.state_dict() == resumed_ref.state_dict() == saved
    with pytest.raises(KeyError, match="lacks"):
        DynamicLossScaler().load_state_dict({"scale": 2.0})


def test_sparse_gradients_match() -> None:
    results = []
    for scaler in (DynamicLossScaler(8.0), torch_scaler(init_scale=8.0)):
        torch.manual_seed(0)
        emb = nn.Embedding(10, 3, sparse=True)
        opt = torch.optim.SGD(emb.parameters(), lr=0.5)
        for idx in ([1, 2, 2], [3, 4]):
            scaler.scale(emb(torch.tensor(idx)).pow(2).sum()).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
        results.append(emb.weight.detach().clone())
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_unscale_loop_equals_fused(dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(n, generator=gen).to(dtype) * 1000 for n in (1, 7, 300)]
    inv_scale = torch.tensor(2.0**-10)
    for poison in (None, math.inf, math.nan):
        a, b = [g.clone() for g in grads], [g.clone() for g in grads]
        if poison is not None:
            a[1][3] = b[1][3] = poison
        fa, fb = torch.zeros(()), torch.zeros(())
        unscale_grads_(a, inv_scale, fa, fused=False)
        unscale_grads_(b, inv_scale, fb, fused=True)
        assert fa.item() == fb.item() == float(poison is not None)
        for x, y in zip(a, b, strict=True):
            assert x.dtype == dtype and torch.equal(x.nan_to_num(), y.nan_to_num())


def test_static_scaler() -> None:
    scaler = StaticLossScaler(1024.0)
    p = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=1.0)
    for factor in (1.0, math.inf, 1.0):
        scaler.scale(p.sum() * factor).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        assert scaler.get_scale() == 1024.0
    assert scaler.skipped_steps == 1 and p.tolist() == [-1.0, -1.0]
    assert scaler.state_dict() == {"scale": 1024.0}
    other = StaticLossScaler(2.0)
    other.load_state_dict(scaler.state_dict())
    assert other.get_scale() == 1024.0
    with pytest.raises(ScalerConfigError, match="positive, finite"):
        StaticLossScaler(0.0)
    with pytest.raises(ScalerUsageError, match="before any scale"):
        StaticLossScaler(2.0).step(opt)


def test_stages_are_named() -> None:
    scaler = DynamicLossScaler()
    p = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler.scale(p.sum()).backward()
    assert scaler._states[id(opt)].stage is OptState.READY
    scaler.unscale_(opt)
    assert scaler._states[id(opt)].stage is OptState.UNSCALED
    scaler.step(opt)
    assert scaler._states[id(opt)].stage is OptState.STEPPED
    scaler.update()
    assert scaler._states[id(opt)].stage is OptState.READY
    assert [s.name for s in OptState] == [s.name for s in torch.amp.grad_scaler.OptState]


# -- exercise checks (chapters 04 and 05) ---------------------------------------------------
def _stub(*args):
    raise NotImplementedError


def test_check_update_scale() -> None:
    from mpcourse import checks

    def right(scale, tracker, found_inf, growth, backoff, interval):
        if found_inf:
            return scale * backoff, 0
        if tracker + 1 == interval:
            grown = scale * growth
            return (grown if grown <= torch.finfo(torch.float32).max else scale), 0
        return scale, tracker + 1

    def no_fp32_cap(scale, tracker, found_inf, growth, backoff, interval):
        if found_inf:
            return scale * backoff, 0
        return (scale * growth, 0) if tracker + 1 == interval else (scale, tracker + 1)

    def keeps_tracker(scale, tracker, found_inf, growth, backoff, interval):
        if found_inf:
            return scale * backoff, tracker
        return right(scale, tracker, found_inf, growth, backoff, interval)

    assert checks.check_update_scale(right)
    with pytest.raises(checks.CheckFailed, match="answer key"):
        checks.check_update_scale(lambda *case: next_scale(*case[:3]))
    with pytest.raises(checks.CheckFailed, match="inf in FP32"):
        checks.check_update_scale(no_fp32_cap)
    with pytest.raises(checks.CheckFailed, match="restarts at 0"):
        checks.check_update_scale(keeps_tracker)
    for stub in (None, _stub):
        with pytest.raises(checks.NotAnswered):
            checks.check_update_scale(stub)


def test_scale_trajectory_is_gradscalers() -> None:
    """The course's scaler and torch's GradScaler, stepped for real, give the same scales."""
    from mpcourse.scaling import scale_trajectory

    events = [True, False, False, False, True, True, False, False, False, False]
    ours = scale_trajectory(events, DynamicLossScaler(init_scale=2.0**10, growth_interval=2))
    torchs = scale_trajectory(
        events, torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    )
    assert ours == torchs
    assert ours[:4] == [512.0, 512.0, 1024.0, 1024.0]  # backoff, then growth after 2 clean steps


def test_check_scale_trajectory() -> None:
    from mpcourse import checks
    from mpcourse.checks.scaling import SCALE_EVENTS, expected_trajectory

    right = expected_trajectory()
    assert right == [
        65536.0, 32768.0, 16384.0, 16384.0, 16384.0, 32768.0,
        16384.0, 16384.0, 16384.0, 32768.0, 32768.0,
    ]  # fmt: skip
    # the same with GradScaler, driven by real overflowing gradients
    ref = torch_scaler(growth_interval=3)
    p = nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([p], lr=0.0)
    for event, expected in zip(SCALE_EVENTS, right, strict=True):
        p.grad = None
        ref.scale(p.sum() * (math.inf if event else 1.0)).backward()
        ref.step(opt)
        ref.update()
        assert ref.get_scale() == expected
    assert checks.check_scale_trajectory(right)
    assert checks.check_scale_trajectory(tuple(int(s) for s in right))
    wrong = list(right)
    wrong[5] = 16384.0  # forgot that the growth count restarts after the overflow at step 2
    with pytest.raises(checks.CheckFailed, match="step 5") as err:
        checks.check_scale_trajectory(wrong)
    assert "Steps 0..4 are right" in str(err.value)
    with pytest.raises(checks.CheckFailed, match="step 0") as err:
        checks.check_scale_trajectory([2.0**15] + right[1:])
    assert "are right" not in str(err.value)  # nothing before step 0 to praise
    with pytest.raises(checks.CheckFailed, match="exponents"):
        checks.check_scale_trajectory([math.log2(s) for s in right])
    with pytest.raises(checks.CheckFailed, match="11 scales"):
        checks.check_scale_trajectory(right[:-1])
    with pytest.raises(checks.CheckFailed, match="list of numbers"):
        checks.check_scale_trajectory(["a"] * 11)
    with pytest.raises(checks.NotAnswered):
        checks.check_scale_trajectory(None)


def test_check_static_scale() -> None:
    from mpcourse import checks

    def right(batch_max, format_max, headroom):
        return 2.0 ** (math.floor(math.log2(format_max / max(batch_max))) - headroom)

    assert checks.check_static_scale(right)
    assert checks.check_static_scale(lambda b, f, h: torch.tensor(right(b, f, h)))
    typical = {
        "first batch only": lambda b, f, h: right(b[:1], f, h),
        "used FP16's 65504": lambda b, f, h: right(b, 65504.0, h),
        "no headroom left": lambda b, f, h: right(b, f, 0),
        "not a power of two": lambda b, f, h: f / max(b) / 2**h,
        "overflows": lambda b, f, h: 2.0 ** (math.ceil(math.log2(f / max(b))) - h),
        "<=, not <": lambda b, f, h: 2.0 ** (math.ceil(math.log2(f / max(b))) - 1 - h),
        "too small": lambda b, f, h: right(b, f, h) / 4,
        "positive number": lambda b, f, h: None,
    }
    for message, wrong in typical.items():
        with pytest.raises(checks.CheckFailed, match=message):
            checks.check_static_scale(wrong)
    for stub in (None, _stub):
        with pytest.raises(checks.NotAnswered):
            checks.check_static_scale(stub)


def test_check_master_step() -> None:
    from mpcourse import checks

    def right(master, grad16, lr):
        new = master - lr * grad16.float()
        return new, new.half()

    def update_in_fp16(master, grad16, lr):
        new = master - (lr * grad16).float()  # lr * g rounded/underflowed in FP16
        return new, new.half()

    def fp16_master(master, grad16, lr):
        new = (master.half() - lr * grad16).float()
        return new, new.half()

    assert checks.check_master_step(right)
    for wrong in (update_in_fp16, fp16_master):
        with pytest.raises(checks.CheckFailed, match="copy the gradient up first"):
            checks.check_master_step(wrong)
    with pytest.raises(checks.CheckFailed, match="float16 tensor"):
        checks.check_master_step(lambda m, g, lr: (m - lr * g.float(), m - lr * g.float()))
    with pytest.raises(checks.CheckFailed, match="pair"):
        checks.check_master_step(lambda m, g, lr: m)
    for stub in (None, _stub):
        with pytest.raises(checks.NotAnswered):
            checks.check_master_step(stub)


def test_check_bytes_per_parameter() -> None:
    from mpcourse import checks

    weights = {"fp32": 8, "master": 12, "amp": 10}
    states = {"sgd": 0, "momentum": 4, "adam": 8}
    assert checks.check_bytes_per_parameter(lambda r, o: weights[r] + states[o])
    assert checks.check_bytes_per_parameter(lambda r, o: torch.tensor(weights[r] + states[o]))
    typical = {
        # ZeRO's count: right for a fused optimizer, but this chapter keeps FP32 master grads
        "'master', 'adam'.*master gradients": lambda r, o: (
            16 if (r, o) == ("master", "adam") else weights[r] + states[o]
        ),
        "'master', 'sgd'.*master gradients": lambda r, o: (
            {"master": 8}.get(r, weights[r]) + states[o]
        ),
        "'amp', 'sgd'.*autocast": lambda r, o: {"amp": 8}.get(r, weights[r]) + states[o],
        "'fp32', 'momentum'.*optimizer states are missing": lambda r, o: weights[r],
        "'fp32', 'adam'.*two FP32 states": lambda r, o: weights[r] + min(states[o], 4),
        "'fp32', 'sgd'.*number of bytes": lambda r, o: f"{weights[r] + states[o]} bytes",
    }
    for message, wrong in typical.items():
        with pytest.raises(checks.CheckFailed, match=message):
            checks.check_bytes_per_parameter(wrong)
    for stub in (None, _stub):
        with pytest.raises(checks.NotAnswered):
            checks.check_bytes_per_parameter(stub)


def test_resume_from_state_dict_continues_like_gradscaler() -> None:
    """Stop a run half way, resume a fresh DynamicLossScaler from GradScaler's state_dict:
    the rest of the run matches the uninterrupted GradScaler run step for step."""
    events = [False, True, False, False, True, False, False, False, False, True, False, False]
    ref = torch_scaler(init_scale=1024.0, growth_interval=2)
    p = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.0)
    resumed = None
    for i, event in enumerate(events):
        scalers = [ref] if resumed is None else [ref, resumed]
        for scaler in scalers:
            p.grad = None
            scaler.scale(p.sum() * (math.inf if event else 1.0)).backward()
            scaler.step(opt)
            scaler.update()
        if i == 5:
            resumed = DynamicLossScaler()
            resumed.load_state_dict(ref.state_dict())
        if resumed is not None:
            assert resumed.state_dict() == ref.state_dict()
    assert resumed.get_scale() == ref.get_scale() != 1024.0


def test_accessors_match_gradscaler() -> None:
    ours, ref = DynamicLossScaler(growth_interval=7), torch_scaler(growth_interval=7)
    for scaler in (ours, ref):
        scaler.set_growth_factor(3.0)
        scaler.set_backoff_factor(0.25)
        scaler.set_growth_interval(5)
    for name in ("get_growth_factor", "get_backoff_factor", "get_growth_interval", "is_enabled"):
        assert getattr(ours, name)() == getattr(ref, name)(), name
    assert ours.state_dict() == ref.state_dict()


def test_gradients_on_two_devices_are_refused() -> None:
    """The contract is one device: a clear error, not a kernel failure deep inside torch."""
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2, device="meta"))
    a.grad, b.grad = torch.ones(2), torch.ones(2, device="meta")
    scaler = DynamicLossScaler()
    scaler.scale(torch.ones(()))
    with pytest.raises(ValueError, match="one device.*GradScaler"):
        scaler.unscale_(torch.optim.SGD([a, b], lr=0.1))


def test_fused_optimizer_without_grads_then_update_is_refused_like_gradscaler() -> None:
    for scaler in (DynamicLossScaler(), torch_scaler()):
        p = nn.Parameter(torch.ones(2))
        opt = torch.optim.Adam([p], lr=0.1, fused=True)
        scaler.scale(torch.ones(()))
        scaler.step(opt)  # nothing to check: the fused kernel sees found_inf = 0
        with pytest.raises(AssertionError, match="No inf checks"):
            scaler.update()


def test_static_state_dict_holds_only_the_scale() -> None:
    static = StaticLossScaler(8.0)
    with pytest.raises(KeyError, match="lacks \\['scale'\\]"):
        static.load_state_dict({"growth_factor": 2.0})
    static.load_state_dict(DynamicLossScaler(32.0).state_dict())  # a dynamic checkpoint's scale
    assert static.state_dict() == {"scale": 32.0}
