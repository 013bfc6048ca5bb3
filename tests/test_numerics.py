"""mpcourse.numerics against torch's own casts and arithmetic, and the chapter 02/03 checks."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mpcourse import checks, numerics
from mpcourse.formats import BF16, FP16, TF32

half, bf16 = torch.float16, torch.bfloat16


@pytest.mark.parametrize("dtype", [half, bf16])
def test_overflow_threshold_is_where_the_cast_gives_inf(dtype):
    t = numerics.overflow_threshold(dtype)
    below = torch.nextafter(torch.tensor(t), torch.tensor(0.0))  # float32, just below t
    assert torch.isinf(torch.tensor(t).to(dtype)) and torch.isinf(torch.tensor(-t).to(dtype))
    assert torch.tensor(below.item()).to(dtype).item() == torch.finfo(dtype).max
    assert numerics.overflow_threshold(half) == 65520.0


@pytest.mark.parametrize("dtype", [half, bf16])
def test_underflow_threshold_is_where_the_cast_gives_zero(dtype):
    t = numerics.underflow_threshold(dtype)
    above = torch.nextafter(torch.tensor(t), torch.tensor(1.0))
    assert torch.tensor(t).to(dtype) == 0 and torch.tensor(-t).to(dtype) == 0
    assert torch.tensor(above.item()).to(dtype) != 0
    assert numerics.underflow_threshold(half) == 2.0**-25


def test_format_of_and_bad_dtype():
    assert numerics.format_of(half) is FP16 and numerics.format_of(BF16) is BF16
    with pytest.raises(ValueError, match="unsupported dtype torch.int32"):
        numerics.format_of(torch.int32)


def test_rounding_and_thresholds():
    assert torch.tensor(1 + 2**-11).half() == 1 and torch.tensor(1 + 2**-10).half() != 1
    assert numerics.update_threshold(1.0).item() == 2.0**-11
    assert numerics.update_threshold(torch.tensor([1024.0, 0.0])).tolist() == [0.5, 2.0**-25]
    assert numerics.swamping_ratio(half) == 2048 and numerics.swamping_ratio(bf16) == 256
    assert numerics.swamping_ratio(TF32) == 2048


def test_update_survives_matches_real_fp16_and_bf16_addition():
    gen = torch.Generator().manual_seed(0)
    for dtype in (half, bf16):
        w = (torch.randn(50_000, generator=gen) * 0.1).to(dtype)
        scale = torch.exp2(torch.empty(50_000).uniform_(-16, -4, generator=gen))
        u = (w.float() * scale * torch.randn(50_000, generator=gen).sign()).to(dtype)
        real = (w + u) != w  # fp16 + fp16 in torch: computed in float32, rounded once
        assert torch.equal(numerics.update_survives(w.float(), u.float(), dtype), real)


@given(
    st.floats(min_value=2.0**-10, max_value=1000.0),
    st.floats(min_value=1.0, max_value=2.0**14),
)
def test_swamping_ratio_bounds(w, ratio):
    w16 = torch.tensor(w).half().item()
    u = w16 / ratio
    survived = bool(numerics.update_survives(w16, u))
    if ratio < 2048:
        assert survived
    elif ratio > 4096:
        assert not survived


def test_sequential_sum_stagnates_and_fp32_accumulation_does_not():
    x = np.full(5000, 0.5)
    assert numerics.sequential_sum(x, half) == 1024.0  # 1024 + 0.5 is a tie: rounds to even
    assert numerics.sequential_sum(x, half, accumulate=torch.float32) == 2500.0
    ones = torch.ones(3000)
    assert numerics.sequential_sum(ones, half) == 2048.0  # 2048 + 1 is a tie
    python_loop = np.float16(0)
    for v in np.linspace(0, 1, 300).astype(np.float16):
        python_loop = np.float16(python_loop + v)
    assert numerics.sequential_sum(np.linspace(0, 1, 300), half) == float(python_loop)


def test_kahan_and_pairwise():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3000, generator=gen).half()
    exact = x.double().sum().item()
    assert abs(numerics.kahan_sum(x, half) - exact) <= FP16.eps * exact
    assert numerics.pairwise_sum(torch.ones(1000), half) == 1000.0
    assert numerics.pairwise_sum(torch.tensor([2.0]), half) == 2.0
    assert abs(numerics.pairwise_sum(x, half) - exact) <= 2 * FP16.eps * exact
    assert numerics.kahan_sum([1.0, 2.0], torch.float32) == 3.0


def test_accumulation_errors_table():
    errors = numerics.accumulation_errors([10, 5000], seed=0)
    assert set(errors) == {
        "fp16",
        "fp32 accumulate",
        "pairwise fp16",
        "kahan fp16",
        "exact, rounded to fp16",
    }
    assert errors["fp16"][1] > 0.1 and errors["fp32 accumulate"][1] < 1e-5
    assert errors["kahan fp16"] == errors["exact, rounded to fp16"]
    assert "kahan fp16" not in numerics.accumulation_errors([10], kahan=False)
    assert errors == numerics.accumulation_errors([10, 5000], seed=0)


def test_sum_bad_input():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        numerics.sequential_sum(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        numerics.kahan_sum([])
    with pytest.raises(ValueError, match="support torch.float16, torch.float32 and torch.float64"):
        numerics.sequential_sum([1.0], bf16)
    with pytest.raises(ValueError, match="accumulate must be"):
        numerics.sequential_sum([1.0], half, accumulate=bf16)
    with pytest.raises(ValueError, match="at least one value"):
        numerics.pairwise_sum(torch.zeros(0))
    with pytest.raises(ValueError, match="ns must be a non-empty list of positive ints"):
        numerics.accumulation_errors([0])


def test_softmax_forms():
    x = torch.tensor([[10.0, 12.0, 20.0], [-3.0, 0.0, 3.0]]).half()
    assert torch.isnan(numerics.naive_softmax(x)[0]).any()
    stable = numerics.stable_softmax(x)
    assert stable.dtype == half and torch.isfinite(stable).all()
    assert torch.allclose(stable.float(), torch.softmax(x.float(), -1), atol=1e-3)
    x64 = torch.randn(4, 7, dtype=torch.float64)
    assert torch.allclose(numerics.stable_softmax(x64, dim=0), torch.softmax(x64, 0))
    assert torch.allclose(numerics.naive_softmax(x64), torch.softmax(x64, -1))
    with pytest.raises(TypeError, match="floating-point tensor"):
        numerics.stable_softmax(torch.tensor([1, 2]))


def test_variance_forms():
    gen = torch.Generator().manual_seed(2)
    d = (300 + 2 * torch.randn(500, generator=gen)).half()
    ref = d.double().var(unbiased=False).item()
    assert not math.isfinite(numerics.naive_variance(d).item())
    assert abs(numerics.stable_variance(d).item() - ref) / ref < 0.01
    x = torch.randn(100, dtype=torch.float64)
    assert torch.allclose(numerics.naive_variance(x), x.var(unbiased=False))
    assert torch.allclose(numerics.stable_variance(x), x.var(unbiased=False))


def test_adam_eps():
    assert numerics.rounded_eps(1e-8, half) == 0.0
    assert numerics.rounded_eps(1e-7, half) > 0
    assert abs(numerics.rounded_eps(1e-8, bf16) - 1e-8) < 1e-10


# --- the exercise checks ---------------------------------------------------------


def stub(*args):
    raise NotImplementedError("Exercise: write your answer here")


@pytest.mark.parametrize(
    "check",
    [
        checks.check_stable_softmax,
        checks.check_lost_fraction,
    ],
)
def test_function_checks_on_stubs(check):
    with pytest.raises(checks.NotAnswered):
        check(None)
    with pytest.raises(checks.NotAnswered, match="still raises NotImplementedError"):
        check(stub)


def _softmax_rows(e):
    return e / e.sum(dim=-1, keepdim=True)


def test_check_stable_softmax():
    assert checks.check_stable_softmax(lambda x: numerics.stable_softmax(x))
    with pytest.raises(checks.CheckFailed, match="inf or NaN.*subtract each row's own maximum"):
        checks.check_stable_softmax(numerics.naive_softmax)
    # one maximum for the whole tensor: the row [-5, 0, 5] underflows to 0/0
    with pytest.raises(checks.CheckFailed, match=r"\[nan, nan, nan\].*0/0 = NaN"):
        checks.check_stable_softmax(lambda x: _softmax_rows(torch.exp(x - x.max())))
    with pytest.raises(checks.CheckFailed, match="compute and return in torch.float16"):
        checks.check_stable_softmax(lambda x: torch.softmax(x.float(), -1))
    with pytest.raises(checks.CheckFailed, match="returned shape"):
        checks.check_stable_softmax(lambda x: numerics.stable_softmax(x).flatten()[:1])
    with pytest.raises(checks.CheckFailed, match="expected.*each row sums to 1"):
        checks.check_stable_softmax(lambda x: numerics.stable_softmax(x, dim=0))


def _lost_right(w, g, lr):
    new = w.clone().add_(g, alpha=-lr)
    tried = g != 0
    return ((new == w) & tried).sum().item() / tried.sum().item()


def test_check_lost_fraction():
    assert checks.check_lost_fraction(_lost_right)
    # a 0-d tensor and a float32 division are fine too
    assert checks.check_lost_fraction(lambda w, g, lr: torch.tensor(_lost_right(w, g, lr)))
    with pytest.raises(checks.CheckFailed, match="should return a float share"):
        checks.check_lost_fraction(lambda w, g, lr: "half")
    with pytest.raises(checks.CheckFailed, match="should return one number"):
        checks.check_lost_fraction(lambda w, g, lr: w)


@pytest.mark.parametrize(
    "wrong, advice",
    [
        (
            lambda w, g, lr: (w.clone().add_(g, alpha=-lr) == w).float().mean().item(),
            "you counted the weights with g == 0 too",
        ),
        (lambda w, g, lr: 1 - _lost_right(w, g, lr), "share of updates that \\*changed\\*"),
        (
            lambda w, g, lr: (
                (((w.float() - lr * g.float()) == w.float()) & (g != 0)).sum() / (g != 0).sum()
            ).item(),
            "computed and compared in FP32",
        ),
        (
            lambda w, g, lr: int(((w.clone().add_(g, alpha=-lr) == w) & (g != 0)).sum()),
            "not a share between 0 and 1",
        ),
    ],
)
def test_check_lost_fraction_names_the_mistake(wrong, advice):
    with pytest.raises(checks.CheckFailed, match=advice):
        checks.check_lost_fraction(wrong)


def test_check_adam_eps():
    assert checks.check_adam_eps(1e-7)
    assert checks.check_adam_eps(10**-7)
    with pytest.raises(checks.NotAnswered):
        checks.check_adam_eps(None)
    with pytest.raises(checks.CheckFailed, match="exactly what becomes 0.0"):
        checks.check_adam_eps(1e-8)
    with pytest.raises(checks.CheckFailed, match="expected 1e-07, got 1e-06"):
        checks.check_adam_eps(1e-6)
    with pytest.raises(checks.CheckFailed, match="not a power of ten"):
        checks.check_adam_eps(6e-8)
    with pytest.raises(checks.CheckFailed, match="should be a number"):
        checks.check_adam_eps("1e-7")


def test_check_adam_survivors():
    def derived(g, beta2, eps):  # the denominator sqrt(v) + eps must not be 0 in FP16
        v_kept = ((1 - beta2) * g.float() ** 2).half() != 0
        return v_kept | (torch.tensor(eps).half() != 0)

    def real_step(g, beta2, eps):
        p = torch.nn.Parameter(torch.full_like(g, 0.1))
        p.grad = g.clone()
        torch.optim.Adam([p], betas=(0.9, beta2), eps=eps).step()
        return torch.isfinite(p.detach())

    assert checks.check_adam_survivors(derived)
    with pytest.raises(checks.CheckFailed, match="runs an optimizer"):
        checks.check_adam_survivors(real_step)
    with pytest.raises(checks.NotAnswered):
        checks.check_adam_survivors(None)
    with pytest.raises(checks.NotAnswered, match="still raises NotImplementedError"):
        checks.check_adam_survivors(stub)
    with pytest.raises(checks.CheckFailed, match="should return a bool tensor"):
        checks.check_adam_survivors(lambda g, b, e: derived(g, b, e).float())
    with pytest.raises(checks.CheckFailed, match="returned shape"):
        checks.check_adam_survivors(lambda g, b, e: derived(g, b, e)[:1])


@pytest.mark.parametrize(
    "wrong, advice",
    [
        (lambda g, b, e: torch.ones_like(g, dtype=torch.bool), "eps = 1e-8 is 0 in FP16"),
        (lambda g, b, e: g != 0, "the gradient itself fits in FP16"),
        (lambda g, b, e: g * g != 0, "g\\^2 alone is not Adam's v"),
        (lambda g, b, e: g.abs() > 5.46e-3, "5.5e-3 is the threshold for beta2 = 0.999 only"),
        (lambda g, b, e: ((1 - b) * g.float() ** 2).half() != 0, "is not 0 in FP16"),
        (lambda g, b, e: g.abs() > 1e-3, "finite unless the denominator is 0"),
    ],
)
def test_check_adam_survivors_names_the_mistake(wrong, advice):
    with pytest.raises(checks.CheckFailed, match=advice):
        checks.check_adam_survivors(wrong)


def test_accumulation_table_and_plot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mpcourse.plots import accumulation_table, plot_accumulation_errors

    ns = [10, 100]
    errors = numerics.accumulation_errors(ns, seed=0)
    table = accumulation_table(ns, errors).splitlines()
    assert table[0].split()[0] == "n" and len(table) == 3 and table[2].split()[0] == "100"
    ax = plot_accumulation_errors(ns, errors)
    assert [t.get_text() for t in ax.get_legend().texts] == list(errors)
    plt.close("all")
    with pytest.raises(ValueError, match="one value per n"):
        accumulation_table([10, 100, 1000], errors)


def _lost_band(w):
    """A right answer to chapter 02's exercise 1, from the neighbouring bit patterns."""
    bits = torch.tensor(w).half().view(torch.int16).item()
    below = torch.tensor(bits - 1, dtype=torch.int16).view(torch.float16).item()
    above = (
        65536.0
        if w == 65504
        else torch.tensor(bits + 1, dtype=torch.int16).view(torch.float16).item()
    )
    return (w - below) / 2, (above - w) / 2, bits % 2 == 0


def test_lost_band_reference_agrees_with_update_survives():
    from mpcourse.checks.numerics import _lost_band_reference

    gen = torch.Generator().manual_seed(0)
    for bits in torch.randint(1, 0x7BFF + 1, (300,), generator=gen).tolist() + [1, 0x400, 0x7BFF]:
        w = torch.tensor(bits, dtype=torch.int16).view(torch.float16).item()
        down, up, ties_lost = _lost_band_reference(w)
        for u in (up, -down):
            assert bool(numerics.update_survives(w, u)) is not ties_lost
            assert not numerics.update_survives(w, 0.99 * u) and numerics.update_survives(
                w, 1.01 * u
            )


@pytest.mark.parametrize(
    "wrong, advice",
    [
        (lambda w: (numerics.update_threshold(w).item(),) * 2 + (True,), "half as large"),
        (lambda w: (*_lost_band(w)[:2], True), "1025 is odd"),
        (lambda w: (2 * _lost_band(w)[0], 2 * _lost_band(w)[1], _lost_band(w)[2]), "\\*half\\*"),
        (lambda w: _lost_band(w)[:2], "three values"),
    ],
)
def test_check_lost_band(wrong, advice):
    assert checks.check_lost_band(_lost_band)
    with pytest.raises(checks.CheckFailed, match=advice):
        checks.check_lost_band(wrong)
    with pytest.raises(checks.NotAnswered):
        checks.check_lost_band(stub)


def _smallest_scale(grads, max_lost, lost_rule=None, overflow=True):
    """A right answer to chapter 03's exercise 2 (and, with a rule, typical wrong ones)."""
    nz = grads[grads != 0].double()
    scale = 1.0
    while scale < 2.0**200:
        cast = (nz * scale).half()
        if overflow and torch.isinf(cast).any():
            return None
        lost = (cast == 0).double().mean().item() if lost_rule is None else lost_rule(grads, scale)
        if lost <= max_lost:
            return scale
        scale *= 2
    return None


@pytest.mark.parametrize(
    "wrong, advice",
    [
        (lambda g, m: _smallest_scale(g, m, overflow=False) or 1.0, "return None"),
        (
            lambda g, m: _smallest_scale(
                g, m, lambda g, s: ((g[g != 0].double() * s).abs() < 2.0**-24).double().mean()
            ),
            "round \\*up\\* to 2\\^-24",
        ),
        (
            lambda g, m: _smallest_scale(
                g, m, lambda g, s: (((g.double() * s).half() == 0) & (g != 0)).double().mean()
            ),
            "\\*nonzero\\* gradients only",
        ),
    ],
)
def test_check_smallest_scale(wrong, advice):
    assert checks.check_smallest_scale(_smallest_scale)
    with pytest.raises(checks.CheckFailed, match=advice):
        checks.check_smallest_scale(wrong)
    with pytest.raises(checks.NotAnswered):
        checks.check_smallest_scale(stub)


def test_relative_error_is_the_one_shared_measure():
    from mpcourse import inference, mx

    assert inference.relative_error is mx.relative_error is numerics.relative_error
    x = torch.tensor([3.0, 4.0])
    assert numerics.relative_error(x, x) == 0.0
    assert numerics.relative_error(torch.zeros(2), torch.zeros(2)) == 0.0  # both zero
    assert numerics.relative_error(torch.zeros(2), x) == math.inf
    assert numerics.relative_error(x, torch.tensor([3.0, 4.5])) == pytest.approx(0.1)
    half = x.half()  # computed in FP64, whatever the inputs' dtypes
    assert numerics.relative_error(x, half) == 0.0
