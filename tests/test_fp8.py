"""mpcourse.fp8 against torch's float8 casts and the bit-exact reference round_to."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from mpcourse.data import digits
from mpcourse.formats import FP8_E4M3, FP8_E5M2, FP16, round_to
from mpcourse.fp8 import (
    DelayedScaling,
    FP8Linear,
    amax,
    compute_scale,
    dequantize,
    fake_quantize,
    quantize,
    train_fp8_classifier,
    underflow_fraction,
)

FP8 = [FP8_E4M3, FP8_E5M2]
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@pytest.mark.parametrize("fmt", FP8, ids=lambda f: f.name)
@given(
    values=st.lists(floats, min_size=1, max_size=64), scale=st.sampled_from([1.0, 0.5, 3.0, 1024.0])
)
def test_quantize_is_the_saturating_reference_rounding(fmt, values, scale):
    x = torch.tensor(values, dtype=torch.float32)
    expected = round_to(x * scale, fmt, saturate=True)
    assert torch.equal(quantize(x, fmt, scale).isnan(), expected.isnan())
    ok = ~expected.isnan()
    assert torch.equal(quantize(x, fmt, scale)[ok], expected[ok])


@pytest.mark.parametrize("fmt", FP8, ids=lambda f: f.name)
def test_quantize_equals_torch_cast_in_range(fmt):
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 100
    x = x[x.abs() <= fmt.max]
    assert torch.equal(quantize(x, fmt), x.to(fmt.torch_dtype).float())


def test_e4m3_saturates_where_round_to_gives_nan():
    x = torch.tensor([1000.0, -500.0, 470.0])
    assert quantize(x, FP8_E4M3).tolist() == [448.0, -448.0, 448.0]
    assert round_to(x, FP8_E4M3).isnan().all()  # the non-saturating reference
    assert quantize(torch.tensor([1e6]), FP8_E5M2).item() == 57344.0


def test_amax_and_scale_map_amax_to_the_format_max():
    x = torch.tensor([0.001, -0.25, 0.1])
    assert amax(x) == 0.25
    for fmt in FP8:
        s = compute_scale(amax(x), fmt)
        assert s == fmt.max / 0.25
        assert amax(quantize(x, fmt, s)) == fmt.max
        assert compute_scale(0.25, fmt, margin=2) == s / 4
        p = compute_scale(0.3, fmt, power_of_two=True)
        assert math.log2(p).is_integer() and p <= fmt.max / 0.3 < 2 * p


def test_scale_keeps_previous_on_zero_or_nonfinite_amax():
    for a in (0.0, math.inf, math.nan):
        assert compute_scale(a, FP8_E4M3, previous=8.0) == 8.0
    assert math.isnan(amax(torch.tensor([1.0, math.nan])))


def test_dequantize_round_trip_and_relative_error():
    x = torch.randn(4096, generator=torch.Generator().manual_seed(1))
    s = compute_scale(amax(x), FP8_E4M3)
    assert torch.equal(fake_quantize(x, FP8_E4M3, s), dequantize(quantize(x, FP8_E4M3, s), s))
    rel = ((fake_quantize(x, FP8_E4M3, s) - x).abs() / x.abs())[x.abs() > 1e-2]
    assert rel.max() <= 2.0**-4 + 1e-6  # half an ulp of 3 mantissa bits


def test_underflow_fraction_without_and_with_scaling():
    g = torch.full((100,), 1e-6)
    assert underflow_fraction(g, FP8_E5M2) == 1.0
    assert underflow_fraction(g, FP8_E5M2, compute_scale(amax(g), FP8_E5M2)) == 0.0
    assert underflow_fraction(torch.zeros(3), FP8_E5M2) == 0.0


def test_delayed_scaling_uses_the_history():
    ds = DelayedScaling(FP8_E4M3, history_len=3)
    assert ds.scale == 1.0 and len(ds.history) == 0
    for a in (4.0, 1.0, 1.0):
        ds.update(a)
    assert ds.scale == 448.0 / 4.0  # max of the window
    ds.update(2.0)  # 4.0 leaves the window of 3
    assert list(ds.history) == [1.0, 1.0, 2.0] and ds.scale == 448.0 / 2.0
    ds.update(math.inf)  # an overflowed step is not recorded
    assert list(ds.history) == [1.0, 1.0, 2.0]
    recent = DelayedScaling(FP8_E5M2, history_len=4, algo="most_recent", margin=1)
    recent.update(8.0)
    recent.update(2.0)
    assert recent.scale == FP8_E5M2.max / 2.0 / 2


def test_stale_scale_saturates_a_jump():
    ds = DelayedScaling(FP8_E4M3, history_len=2)
    ds.update(1.0)
    x = torch.tensor([10.0, 0.5])  # amax jumped 10x since the last step
    assert quantize(x, FP8_E4M3, ds.scale).tolist() == [448.0, 224.0]


@pytest.mark.parametrize("scaling", ["none", "current", "delayed"])
def test_fp8_linear_matches_its_definition(scaling):
    torch.manual_seed(0)
    layer = FP8Linear(32, 8, scaling=scaling)
    for _ in range(3):  # fill the delayed history
        x = torch.randn(16, 32, requires_grad=True)
        y = layer(x)
        y.backward(torch.ones_like(y) * 0.01)
    x = torch.randn(4, 5, 32, requires_grad=True)  # extra leading dims work
    ref = nn.Linear(32, 8)
    ref.load_state_dict(layer.state_dict())
    y, y_ref = layer(x), ref(x)
    assert y.shape == (4, 5, 8)
    err = (y - y_ref).norm() / y_ref.norm()
    assert err < 0.1 if scaling != "none" else err < 0.3
    y.sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and x.grad.shape == x.shape


def test_fp8_linear_backward_is_the_scaled_fp8_product():
    torch.manual_seed(0)
    layer = FP8Linear(6, 3, bias=False, scaling="current")
    x = torch.randn(5, 6, requires_grad=True)
    dy = torch.randn(5, 3) * 1e-3
    layer(x).backward(dy)
    sx, sw, sg = (
        compute_scale(amax(t), f)
        for t, f in ((x, FP8_E4M3), (layer.weight, FP8_E4M3), (dy, FP8_E5M2))
    )
    qx, qw, qg = (
        quantize(x, FP8_E4M3, sx),
        quantize(layer.weight, FP8_E4M3, sw),
        quantize(dy, FP8_E5M2, sg),
    )
    assert torch.allclose(layer.weight.grad, (qg.T @ qx) / (sg * sx))
    assert torch.allclose(x.grad, (qg @ qw) / (sg * sw))


def test_unscaled_fp8_loses_small_gradients():
    layer = FP8Linear(8, 4, scaling="none")
    x = torch.randn(2, 8)
    layer(x).backward(torch.full((2, 4), 1e-6))
    assert layer.weight.grad.abs().max() == 0 and layer.last_grad_underflow == 1.0


@pytest.fixture(scope="module")
def data():
    train, test = digits("train"), digits("test")
    return (*train.tensors, *test.tensors)


def test_training_works_with_scaling_and_stalls_without(data):
    kwargs = dict(steps=60, mean_over=2**18)  # a loss averaged over ~262k tokens
    fp32 = train_fp8_classifier(*data, scaling="fp32", **kwargs)
    delayed = train_fp8_classifier(*data, scaling="delayed", **kwargs)
    none = train_fp8_classifier(*data, scaling="none", **kwargs)
    assert fp32.accuracy > 0.9 and delayed.accuracy > 0.9
    assert abs(fp32.accuracy - delayed.accuracy) < 0.03
    assert none.grad_underflow == 1.0 and none.accuracy < 0.3
    first, last = sum(none.losses[:20]) / 20, sum(none.losses[-20:]) / 20
    assert first == pytest.approx(last, abs=0.1) and last > 2.0  # no update ever reached W


def test_plain_mean_loss_trains_even_unscaled(data):
    none = train_fp8_classifier(*data, scaling="none", steps=60)
    assert none.accuracy > 0.9 and 0.1 < none.grad_underflow < 1.0


def _tiny_fp8_run(n_labels: int = 4, **kwargs):
    """train_fp8_classifier on 4 toy samples; ``kwargs`` carry the bad argument under test."""
    return train_fp8_classifier(
        torch.ones(4, 2),
        torch.zeros(n_labels, dtype=torch.long),
        torch.ones(1, 2),
        torch.zeros(1, dtype=torch.long),
        **kwargs,
    )


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: quantize(torch.ones(2), FP16), ValueError),
        (lambda: quantize(torch.ones(2), FP8_E4M3, scale=0.0), ValueError),
        (lambda: quantize(torch.ones(2), FP8_E4M3, scale=math.inf), ValueError),
        (lambda: dequantize([1.0], 2.0), TypeError),
        (lambda: quantize(torch.ones(2, dtype=torch.int64), FP8_E4M3), TypeError),
        (lambda: amax(torch.ones(2, dtype=torch.int32)), TypeError),
        (lambda: amax(torch.ones(0)), ValueError),
        (lambda: compute_scale(1.0, FP8_E4M3, margin=-1), ValueError),
        (lambda: DelayedScaling(FP8_E4M3, history_len=0), ValueError),
        (lambda: DelayedScaling(FP8_E4M3, algo="mean"), ValueError),
        (lambda: FP8Linear(2, 2, scaling="per-channel"), ValueError),
        (lambda: _tiny_fp8_run(scaling="int8"), ValueError),
        (lambda: _tiny_fp8_run(n_labels=3), ValueError),
        (lambda: _tiny_fp8_run(mean_over=0), ValueError),
        (lambda: _tiny_fp8_run(steps=0), ValueError),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(call, error):
    with pytest.raises(error) as info:
        call()
    assert len(str(info.value)) > 20


# --- exercise checks of course/08_bf16_tf32_fp8.ipynb --------------------------------------------
from mpcourse import checks  # noqa: E402
from mpcourse.checks import CheckFailed, NotAnswered  # noqa: E402


def _stub(*args):
    raise NotImplementedError


def _right_scale(x, fmt, margin):
    a = float(x.abs().max())
    return fmt.max / (a * 2**margin) if a > 0 else 1.0


def test_check_bf16_smallest_update():
    assert checks.check_bf16_smallest_update(2.0**-7)
    for wrong, words in (
        (2.0**-8, "halfway"),
        (2.0**-23, "FP32"),
        (2.0**-10, "FP16"),
        (0.0078, "power of two"),
        (2.0**-6, "expected"),
        ("x", "number"),
    ):
        with pytest.raises(CheckFailed, match=words):
            checks.check_bf16_smallest_update(wrong)
    with pytest.raises(NotAnswered):
        checks.check_bf16_smallest_update(None)


def test_check_fp8_scale():
    assert checks.check_fp8_scale(_right_scale)
    with pytest.raises(CheckFailed, match="inverted"):
        checks.check_fp8_scale(lambda x, f, m: 1 / _right_scale(x, f, m))
    with pytest.raises(CheckFailed, match="margin is ignored"):
        checks.check_fp8_scale(lambda x, f, m: _right_scale(x, f, 0))
    with pytest.raises(CheckFailed, match="smaller"):
        checks.check_fp8_scale(lambda x, f, m: _right_scale(x, f, 0) * 2**m)
    with pytest.raises(CheckFailed, match="magnitude"):
        checks.check_fp8_scale(lambda x, f, m: _right_scale(x.clamp(min=0), f, m))
    with pytest.raises(CheckFailed, match="raised ZeroDivisionError.*return 1.0"):
        checks.check_fp8_scale(lambda x, f, m: f.max / float(x.abs().max()) / 2**m)
    with pytest.raises(CheckFailed, match="all-zero"):
        checks.check_fp8_scale(lambda x, f, m: _right_scale(x, f, m) if x.any() else 0.0)
    with pytest.raises(CheckFailed, match="number"):
        checks.check_fp8_scale(lambda x, f, m: "big")
    for stub in (None, _stub):
        with pytest.raises(NotAnswered):
            checks.check_fp8_scale(stub)


def _right_delayed(amaxes, fmt, history_len, margin):
    scales, history = [], []
    for a in amaxes:
        scales.append(fmt.max / (max(history[-history_len:]) * 2**margin) if history else 1.0)
        history.append(a)
    return scales


def test_check_delayed_scales():
    from mpcourse.checks.fp8 import _delayed

    assert checks.check_delayed_scales(_right_delayed)
    for wrong, words in (
        (lambda a, f, h, m: [f.max / (x * 2**m) for x in a], "current"),
        (lambda a, f, h, m: _delayed(a, f, h, m, include_current=True), "after"),
        (lambda a, f, h, m: _delayed(a, f, None, m), "last history_len"),
        (lambda a, f, h, m: _delayed(a, f, h, m, pick=lambda w: w[-1]), "largest"),
        (lambda a, f, h, m: _delayed(a, f, h, m, margin_power=1), "divides"),
        (lambda a, f, h, m: _delayed(a, f, h, m, margin_power=0), "margin is ignored"),
        (lambda a, f, h, m: [448.0] + _right_delayed(a, f, h, m)[1:], "step 0"),
        (lambda a, f, h, m: _right_delayed(a, f, h, m)[1:], "one scale per step"),
        (lambda a, f, h, m: [1.01 * s for s in _right_delayed(a, f, h, m)], "expected"),
        (lambda a, f, h, m: "scales", "list of numbers"),
    ):
        with pytest.raises(CheckFailed, match=words):
            checks.check_delayed_scales(wrong)
    for stub in (None, _stub):
        with pytest.raises(NotAnswered):
            checks.check_delayed_scales(stub)


def _splitk(a, b, splits, partial_in_fp32=False, round_inputs=True):
    if round_inputs:
        a, b = a.bfloat16().float(), b.bfloat16().float()
    chunk = a.shape[1] // splits
    parts = [
        (a[:, i * chunk : (i + 1) * chunk] @ b[i * chunk : (i + 1) * chunk]).bfloat16()
        for i in range(splits)
    ]
    if partial_in_fp32:
        return sum(p.float() for p in parts).bfloat16().float()
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total.float()


def test_check_splitk_bf16_matmul():
    """Issue 10: ch08 exercise 2 needs transfer (a split-K BF16 reduction), one message per slip."""
    from mpcourse import checks

    assert checks.check_splitk_bf16_matmul(_splitk)
    wrong = {
        "full FP32 reduction": lambda a, b, s: (
            (a.bfloat16().float() @ b.bfloat16().float()).bfloat16().float()
        ),
        "added the BF16 partials in FP32": lambda a, b, s: _splitk(a, b, s, partial_in_fp32=True),
        "shape": lambda a, b, s: _splitk(a, b, s)[:1],
    }
    for words, fn in wrong.items():
        with pytest.raises(checks.CheckFailed, match=words):
            checks.check_splitk_bf16_matmul(fn)
    with pytest.raises(checks.NotAnswered):
        checks.check_splitk_bf16_matmul(None)
