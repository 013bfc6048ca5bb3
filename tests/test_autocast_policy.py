"""Tests for mpcourse.autocast_policy: the op policy probed from torch, CPU and (fake) CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mpcourse.autocast import ops_by_dtype, trace_dtypes
from mpcourse.autocast_policy import (
    CATEGORIES,
    EXERCISE_OPS,
    PROBES,
    TABLE_OPS,
    autocast_policy,
    compare_policies,
    fake_cuda_autocast,
    format_policy,
    to_fake_device,
)
from mpcourse.models import SimpleModel


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_policy_matches_torch_lists(dtype):
    rows = {r.op: r for r in autocast_policy("cpu", dtype)}
    assert set(rows) == set(PROBES) == set(TABLE_OPS) | set(EXERCISE_OPS)
    assert {r.category for r in rows.values()} <= set(CATEGORIES)
    for op in ("mm", "linear", "conv2d", "bmm"):
        assert rows[op].category == "lower" and rows[op].dtype == dtype
    for op in ("mse_loss", "cross_entropy", "binary_cross_entropy", "cdist"):
        assert rows[op].category == "fp32"
    assert rows["cat"].category == rows["stack"].category == "promote"
    for op in ("relu", "max_pool2d", "add", "exp", "softmax", "layer_norm", "batch_norm"):
        assert rows[op].category == "unlisted", op


def test_cuda_policy_probed_with_real_kernels():
    rows = {r.op: r for r in autocast_policy("cuda")}
    assert rows["mm"].category == "lower" and rows["mm"].dtype == torch.float16
    assert rows["binary_cross_entropy"].category == "refused"
    assert "unsafe to autocast" in rows["binary_cross_entropy"].note
    assert rows["binary_cross_entropy_with_logits"].category == "fp32"
    for op in ("exp", "sum", "softmax", "layer_norm", "mse_loss"):
        assert rows[op].category == "fp32", op
    assert rows["addcmul"].category == "promote"
    assert rows["batch_norm"].category == "unlisted"  # on no CUDA list: runs in its input dtype
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
    assert "batch_norm" not in text  # on no list: batch norm runs in its input dtype


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


def test_exercise_ops_are_not_in_the_table_and_follow_the_rules():
    """Exercise 1 of chapter 06 can be answered from the table's rules, not copied from it."""
    assert not set(EXERCISE_OPS) & set(TABLE_OPS)
    cuda = {r.op: r.category for r in autocast_policy("cuda", torch.float16, EXERCISE_OPS)}
    cpu = {r.op: r.category for r in autocast_policy("cpu", torch.bfloat16, EXERCISE_OPS)}
    assert cuda == {
        "matmul": "lower",
        "gelu": "unlisted",
        "smooth_l1_loss": "fp32",
        "log_softmax": "fp32",
    }
    assert cpu["log_softmax"] == "unlisted"  # the CPU list keeps it low, like softmax


def test_compare_policies_shows_the_table_ops_on_three_columns():
    columns = compare_policies(("mm", "softmax"))
    assert list(columns) == ["CPU bf16", "CPU f16", "CUDA f16"]
    assert [r.op for r in columns["CUDA f16"]] == ["mm", "softmax"]
    table = format_policy(columns)
    assert table.splitlines()[1].split() == [
        "mm",
        "lower",
        "(bf16)",
        "lower",
        "(f16)",
        "lower",
        "(f16)",
    ]
    assert table.splitlines()[2].split() == ["softmax", "unlisted", "unlisted", "fp32"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_batch_norm_module_keeps_fp32_parameters_under_cpu_autocast(dtype):
    conv, bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)
    with torch.autocast("cpu", dtype=dtype):
        h = conv(torch.randn(2, 3, 8, 8))
        out = bn(h)
    assert h.dtype == out.dtype == dtype  # runs in its (low-precision) input dtype
    assert bn.weight.dtype == bn.running_mean.dtype == bn.running_var.dtype == torch.float32
