"""Tests for mpcourse.autocast: traces against what torch really does, policy probes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mpcourse import checks
from mpcourse.autocast import (
    CATEGORIES,
    PROBES,
    OpRecord,
    autocast_policy,
    compute_ops,
    fake_cuda_autocast,
    format_policy,
    format_trace,
    ops_by_dtype,
    to_fake_device,
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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_policy_matches_torch_lists(dtype):
    rows = {r.op: r for r in autocast_policy("cpu", dtype)}
    assert set(rows) == set(PROBES)
    assert {r.category for r in rows.values()} <= set(CATEGORIES)
    for op in ("mm", "linear", "conv2d", "bmm"):
        assert rows[op].category == "lower" and rows[op].dtype == dtype
    for op in ("mse_loss", "cross_entropy", "binary_cross_entropy", "cdist"):
        assert rows[op].category == "fp32"
    assert rows["cat"].category == rows["stack"].category == "promote"
    for op in ("relu", "max_pool2d", "add", "exp", "softmax"):
        assert rows[op].category == "unlisted"


def test_cuda_policy_probed_with_real_kernels():
    rows = {r.op: r for r in autocast_policy("cuda")}
    assert rows["mm"].category == "lower" and rows["mm"].dtype == torch.float16
    assert rows["binary_cross_entropy"].category == "refused"
    assert "unsafe to autocast" in rows["binary_cross_entropy"].note
    assert rows["binary_cross_entropy_with_logits"].category == "fp32"
    for op in ("exp", "sum", "softmax", "layer_norm", "mse_loss"):
        assert rows[op].category == "fp32", op
    assert rows["addcmul"].category == "promote"
    table = format_policy({"CPU": autocast_policy("cpu", ops=["mm"]), "CUDA": [rows["mm"]]})
    assert "lower (bf16)" in table and "lower (f16)" in table
    assert "refused" in format_policy({"CUDA": [rows["binary_cross_entropy"]]})


def test_cuda_policy_agrees_with_installed_header():
    """The probed CUDA categories are the lists compiled into torch (ATen/autocast_mode.h)."""
    from pathlib import Path

    header = Path(torch.__file__).parent / "include" / "ATen" / "autocast_mode.h"
    if not header.exists():
        pytest.skip("this torch build ships no C++ headers")
    text = header.read_text()

    def block(name):
        return text.split(f"#define {name}(_)")[1].split("#define")[0]

    assert "_(mm)" in block("AT_FORALL_LOWER_PRECISION_FP")
    assert "_(exp)" in block("AT_FORALL_FP32") and "_(layer_norm)" in block("AT_FORALL_FP32")
    assert "_(softmax, int)" in block("AT_FORALL_FP32_SET_OPT_DTYPE")
    assert "_(addcmul)" in block("AT_FORALL_PROMOTE")
    assert "_(cat)" not in block("AT_FORALL_PROMOTE")


def test_fake_cuda_autocast_restores_state_and_traces_forward():
    before = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
    with fake_cuda_autocast(torch.bfloat16) as dev:
        model = to_fake_device(SimpleModel(), dev)
        x = torch.empty(2, 3, 32, 32, device=dev)
        records = trace_dtypes(lambda: model(x))
    assert (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")) == before
    assert "aten.addmm" in ops_by_dtype(records)["bf16"]
    with pytest.raises(ValueError, match="float16 or torch.bfloat16"):
        with fake_cuda_autocast(torch.float32):
            pass
    with pytest.raises(RuntimeError, match="inside"):
        to_fake_device(SimpleModel(), torch.device("cpu"))


def test_policy_rejects_bad_input():
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        autocast_policy("tpu")
    with pytest.raises(ValueError, match="no probe"):
        autocast_policy("cpu", ops=["nope"])
    with pytest.raises(ValueError, match="float16 or torch.bfloat16"):
        autocast_policy("cpu", torch.float64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bce_refused_on_a_real_gpu():
    p = torch.rand(4, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16), pytest.raises(RuntimeError, match="unsafe"):
        F.binary_cross_entropy(p, p)


# ------------------------------------------------------------------ checks
def _softplus_function(dtype_cast):
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
            return g * torch.sigmoid(x)

    return Fn


def test_checks_accept_right_answers(capsys):
    answer = {"mm": "lower", "relu": "unlisted", "mse_loss": "fp32", "cat": "promote"}
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


def test_checks_reject_wrong_answers():
    with pytest.raises(CheckFailed, match="'relu'"):
        checks.check_autocast_categories(
            {"mm": "lower", "relu": "fp32", "mse_loss": "fp32", "cat": "promote"}
        )
    with pytest.raises(CheckFailed, match="unknown categories"):
        checks.check_autocast_categories({"mm": "low", "relu": "x", "mse_loss": "y", "cat": "z"})
    with pytest.raises(CheckFailed, match="unsafe to autocast"):
        checks.check_safe_bce(lambda z, t: F.binary_cross_entropy(torch.sigmoid(z), t))
    with pytest.raises(CheckFailed, match="logits"):
        checks.check_safe_bce(lambda z, t: F.binary_cross_entropy_with_logits(torch.sigmoid(z), t))
    with pytest.raises(NotAnswered):
        checks.check_safe_bce(_stub)
    with pytest.raises(CheckFailed, match="custom_fwd"):
        checks.check_fp32_function(_softplus_function(None))
    with pytest.raises(CheckFailed, match="Function subclass"):
        checks.check_fp32_function(len)
