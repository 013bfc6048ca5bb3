"""Tests for mpcourse.autocast: traces against what torch really does; the exercise checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mpcourse import checks
from mpcourse.autocast import (
    OpRecord,
    compute_ops,
    format_trace,
    ops_by_dtype,
    trace_dtypes,
)
from mpcourse.checks import CheckFailed, NotAnswered
from mpcourse.device import amp_dtype, pick_device
from mpcourse.models import SimpleModel

DEVICE = pick_device()
LOW = amp_dtype(DEVICE)


def _step(model, x, y, dtype=LOW, device=DEVICE):
    def fn():
        with torch.autocast(device.type, dtype=dtype):
            return F.cross_entropy(model(x), y)

    return fn


@pytest.fixture
def batch():
    torch.manual_seed(0)
    model = SimpleModel().to(DEVICE)
    x = torch.randn(4, 3, 32, 32, device=DEVICE)
    y = torch.arange(4, device=DEVICE)
    return model, x, y


def test_trace_simple_model_forward_and_backward(batch):
    model, x, y = batch
    records = trace_dtypes(_step(model, x, y), backward=True)
    assert all(isinstance(r, OpRecord) for r in records)
    fwd = ops_by_dtype(records, phase="forward")
    low = {torch.float16: "f16", torch.bfloat16: "bf16"}[LOW]
    assert "aten.convolution" in fwd[low] and "aten.addmm" in fwd[low]
    assert "aten.nll_loss_forward" in fwd["f32"]
    bwd = compute_ops(records, phase="backward")
    assert any(r.op == "aten.convolution_backward" and r.output_dtypes[0] == LOW for r in bwd)
    # gradients land in the FP32 parameters' dtype
    assert model.fc1.weight.grad.dtype == torch.float32
    casts = [r for r in records if r.is_cast and r.phase == "forward"]
    assert len(casts) >= 10  # the weights, biases and input cast to the low dtype
    # the order is the call order: the first conv comes before the last linear
    ops = [r.op for r in records]
    assert ops.index("aten.convolution") < ops.index("aten.addmm")


def test_trace_matches_real_outputs_without_autocast():
    a, b = torch.randn(3, 3), torch.randn(3, 3, dtype=torch.float64)
    records = trace_dtypes(lambda: a @ a)
    assert [r.op for r in records] == ["aten.mm"]
    assert records[0].input_dtypes == (torch.float32, torch.float32)
    assert records[0].output_dtypes == (torch.float32,)
    assert trace_dtypes(lambda: b + 1)[0].output_dtypes == (torch.float64,)


def test_trace_backward_needs_a_scalar_loss_with_grad():
    w = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="scalar loss"):
        trace_dtypes(lambda: w * 2, backward=True)
    with pytest.raises(ValueError, match="does not require grad"):
        trace_dtypes(lambda: w.detach().sum(), backward=True)
    with pytest.raises(TypeError, match="callable"):
        trace_dtypes(42)


def test_disabled_island_runs_fp32():
    a = torch.randn(4, 4)

    def fn():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            first = a @ a
            with torch.autocast("cpu", enabled=False):
                second = a @ a
        return first, second

    mms = [r for r in trace_dtypes(fn) if r.op == "aten.mm"]
    assert [r.output_dtypes[0] for r in mms] == [torch.bfloat16, torch.float32]


def test_format_trace_marks_casts_and_hides_views(batch):
    model, x, y = batch
    records = trace_dtypes(_step(model, x, y))
    text = format_trace(records)
    assert "<- cast" in text and "aten.convolution" in text
    assert "aten.view " not in text
    assert "more rows" in format_trace(records, max_rows=3)


# ------------------------------------------------------------------ checks
def _softplus_function(dtype_cast, ignore_grad=False):
    class Fn(torch.autograd.Function):
        @staticmethod
        @torch.amp.custom_fwd(device_type=DEVICE.type, cast_inputs=dtype_cast)
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return F.softplus(x)

        @staticmethod
        @torch.amp.custom_bwd(device_type=DEVICE.type)
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return torch.sigmoid(x) if ignore_grad else g * torch.sigmoid(x)

    return Fn


def test_checks_accept_right_answers(capsys):
    answer = {
        "matmul": "lower",
        "gelu": "unlisted",
        "smooth_l1_loss": "fp32",
        "log_softmax": "fp32",
    }
    assert checks.check_autocast_categories(answer)
    assert checks.check_safe_bce(F.binary_cross_entropy_with_logits)
    assert checks.check_fp32_function(_softplus_function(torch.float32))
    assert capsys.readouterr().out.count("Correct:") == 3


def _stub(*args):
    raise NotImplementedError


@pytest.mark.parametrize(
    "check", [checks.check_autocast_categories, checks.check_safe_bce, checks.check_fp32_function]
)
def test_checks_say_not_answered(check):
    with pytest.raises(NotAnswered):
        check(None)


RIGHT = {"matmul": "lower", "gelu": "unlisted", "smooth_l1_loss": "fp32", "log_softmax": "fp32"}


@pytest.mark.parametrize(
    "wrong, match",
    [
        ({**RIGHT, "log_softmax": "unlisted"}, "'log_softmax'.*softmax in the CUDA f16 column"),
        ({**RIGHT, "gelu": "lower"}, "'gelu'.*like relu"),
        ({**RIGHT, "matmul": "promote"}, "'matmul'.*like mm"),
        ({**RIGHT, "smooth_l1_loss": "unlisted"}, "'smooth_l1_loss'.*a loss"),
        ({**RIGHT, "matmul": "f16"}, "unknown categories.*not a dtype"),
        ({"matmul": "lower"}, "no entry for"),
        (["lower", "unlisted"], "should be a dict"),
    ],
)
def test_category_check_explains_wrong_predictions(wrong, match):
    with pytest.raises(CheckFailed, match=match):
        checks.check_autocast_categories(wrong)


def test_checks_reject_wrong_answers():
    with pytest.raises(CheckFailed, match="unsafe to autocast"):
        checks.check_safe_bce(lambda z, t: F.binary_cross_entropy(torch.sigmoid(z), t))
    with pytest.raises(CheckFailed, match="logits"):
        checks.check_safe_bce(lambda z, t: F.binary_cross_entropy_with_logits(torch.sigmoid(z), t))
    with pytest.raises(CheckFailed, match="sum over all elements"):
        checks.check_safe_bce(
            lambda z, t: F.binary_cross_entropy_with_logits(z, t, reduction="sum")
        )
    with pytest.raises(CheckFailed, match="scalar tensor"):
        checks.check_safe_bce(
            lambda z, t: F.binary_cross_entropy_with_logits(z, t, reduction="none")
        )
    with pytest.raises(NotAnswered):
        checks.check_safe_bce(_stub)
    with pytest.raises(CheckFailed, match="custom_fwd"):
        checks.check_fp32_function(_softplus_function(None))
    with pytest.raises(CheckFailed, match="Function subclass"):
        checks.check_fp32_function(len)
    # issue 10: a backward that ignores the incoming gradient is refused, in one line
    with pytest.raises(CheckFailed, match="ignores the incoming gradient") as info:
        checks.check_fp32_function(_softplus_function(torch.float32, ignore_grad=True))
    assert "\n" not in str(info.value)


def test_header_lists_read_the_installed_header_or_say_none(tmp_path):
    from mpcourse.autocast import AUTOCAST_MACROS, header_lists

    lists = header_lists()
    if lists is not None:  # the CPU wheel ships its C++ headers
        assert (
            set(lists) == set(AUTOCAST_MACROS) and "_(mm)" in lists["AT_FORALL_LOWER_PRECISION_FP"]
        )
    assert header_lists(str(tmp_path)) is None
    (tmp_path / "include" / "ATen").mkdir(parents=True)
    (tmp_path / "include" / "ATen" / "autocast_mode.h").write_text("#define OTHER(_) _(x)\n")
    with pytest.raises(ValueError, match="layout changed"):
        header_lists(str(tmp_path))
