"""mpcourse.inference: INT8 from scratch proven equal to torchao; size, latency, bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mpcourse import bench, checks
from mpcourse.inference import (
    FP32_EPS,
    Int8Linear,
    activation_amax,
    calibrate,
    cast_model,
    compare_latency,
    dequantize_int8,
    format_inference,
    inference_benchmark,
    int8_matmul,
    int8_scale,
    measure_latency,
    quantize_int8,
    quantize_linears,
    relative_error,
    state_bytes,
    torchao_quantize,
    weight_sensitivity,
)
from mpcourse.models import SimpleModel

# imported after mpcourse.inference, which silences torchao's CPU-build import messages
from torchao.quantization.quant_primitives import (  # isort: skip
    MappingType,
    choose_qparams_affine,
    dequantize_affine,
    quantize_affine,
)


def torchao_int8(x, axis, narrow_range):
    """torchao's affine primitives with our settings: symmetric, int8, zero point 0."""
    qmin, qmax = (-127, 127) if narrow_range else (-128, 127)
    block = (
        list(x.shape) if axis is None else [1 if d == axis else n for d, n in enumerate(x.shape)]
    )
    scale, zp = choose_qparams_affine(
        x,
        MappingType.SYMMETRIC,
        block,
        torch.int8,
        qmin,
        qmax,
        eps=FP32_EPS,
        scale_dtype=torch.float32,
        zero_point_dtype=torch.int8,
        keepdim=True,
    )
    assert int(zp.abs().max()) == 0  # symmetric: the zero point is 0
    q = quantize_affine(x, block, scale, zp, torch.int8, qmin, qmax)
    return q, scale, dequantize_affine(q, block, scale, zp, torch.int8, qmin, qmax)


SHAPES = [
    ((120, 400), None),
    ((120, 400), 0),
    ((16, 6, 5, 5), 0),
    ((16, 6, 5, 5), None),
    ((9,), None),
]


@pytest.mark.parametrize("narrow_range", [True, False])
@pytest.mark.parametrize(("shape", "axis"), SHAPES)
def test_quantize_int8_equals_torchao_primitives(shape, axis, narrow_range):
    gen = torch.Generator().manual_seed(len(shape) + (axis or 0))
    x = torch.randn(shape, generator=gen) * torch.rand(shape[0], *[1] * (len(shape) - 1)) * 5
    x[0] = 0.0  # a zero slice: per channel it gets the eps scale, exactly as torchao's
    x.view(-1)[1] = x.abs().max() * 3  # an outlier
    scale, q = quantize_int8(x, axis, narrow_range=narrow_range)
    ref_q, ref_scale, ref_x = torchao_int8(x, axis, narrow_range)
    assert q.dtype == torch.int8 and scale.shape == ref_scale.shape
    assert torch.equal(scale, ref_scale) and torch.equal(q, ref_q)
    assert torch.equal(dequantize_int8(scale, q), ref_x)


@settings(max_examples=40)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(2, 40),  # torchao's per-row path fails on a single column
    log_scale=st.floats(-20, 20),
    narrow=st.booleans(),
    per_channel=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_quantize_int8_equals_torchao_on_random_tensors(
    rows, cols, log_scale, narrow, per_channel, seed
):
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 2.0**log_scale
    axis = 0 if per_channel else None
    scale, q = quantize_int8(x, axis, narrow_range=narrow)
    ref_q, ref_scale, _ = torchao_int8(x, axis, narrow)
    assert torch.equal(q, ref_q) and torch.equal(scale, ref_scale)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_quantized_from_their_float32_values(dtype):
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(1)).to(dtype)
    scale, q = quantize_int8(x, 0)
    ref_q, ref_scale, _ = torchao_int8(x.float(), 0, True)
    assert torch.equal(q, ref_q) and torch.equal(scale, ref_scale)


def test_narrow_range_is_symmetric_and_full_range_reaches_minus_128():
    step = 2.0**-4  # scales that are powers of two make every product exact
    x = torch.tensor([-127.0, -64.0, 0.0, 64.0, 127.0]) * step
    scale, q = quantize_int8(x)
    assert float(scale) == step and q.tolist() == [-127, -64, 0, 64, 127]
    x = torch.tensor([-127.5, -64.0, 0.0, 64.0, 127.5]) * step
    scale_full, q_full = quantize_int8(x, narrow_range=False)
    assert float(scale_full) == step
    assert q_full.tolist() == [-128, -64, 0, 64, 127]  # +127.5 rounds to 128, clipped to 127


@pytest.mark.parametrize("config", ["int8_weight_only", "int8_dynamic"])
def test_torchao_configs_store_our_full_range_per_channel_weights(config):
    torch.manual_seed(0)
    model = SimpleModel()
    quantized = torchao_quantize(model, config)
    for name in ("fc1", "fc2", "fc3"):
        w = getattr(quantized, name).weight
        scale, q = quantize_int8(getattr(model, name).weight.detach(), 0, narrow_range=False)
        assert torch.equal(w.qdata, q) and torch.equal(w.scale, scale)
    assert isinstance(quantized.conv1.weight, nn.Parameter)  # convolutions stay float32
    assert quantized.conv1.weight.dtype == torch.float32


def test_our_int8_model_equals_torchao_dynamic_bit_for_bit():
    torch.manual_seed(0)
    model = SimpleModel().eval()
    x = torch.randn(6, 3, 32, 32)
    ours = quantize_linears(model, narrow_range=False)
    theirs = torchao_quantize(model, "int8_dynamic")
    with torch.inference_mode():
        assert torch.equal(ours(x), theirs(x))
        assert relative_error(model(x), ours(x)) < 0.02
    assert isinstance(ours.fc1, Int8Linear) and ours.fc1.qweight.dtype == torch.int8


def test_int8_matmul_accumulates_in_int32_exactly():
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (16, 4096), generator=gen, dtype=torch.int8)
    b = torch.randint(-128, 128, (4096, 24), generator=gen, dtype=torch.int8)
    c = int8_matmul(a, b)
    exact = a.long() @ b.long()
    assert c.dtype == torch.int32 and torch.equal(c.long(), exact)
    assert exact.abs().max() > 2**15  # beyond int16: the wide accumulator is needed
    assert torch.equal(c, torch._int_mm(a, b))  # PyTorch's INT8 kernel
    ones = torch.full((1, 4096), -128, dtype=torch.int8)
    assert int(int8_matmul(ones, ones.t().contiguous())) == 4096 * 128**2


def test_static_activation_scale_clips_and_dynamic_does_not():
    torch.manual_seed(0)
    layer = nn.Linear(32, 8)
    x = torch.randn(64, 32)
    x[0, 0] = 50.0  # an outlier beyond the calibrated range
    static = Int8Linear(layer, act_scale=float(int8_scale(4.0)))
    dynamic = Int8Linear(layer)
    with torch.no_grad():
        ref = layer(x)
        err_static_row0 = relative_error(ref[:1], static(x)[:1])
        assert relative_error(ref[1:], static(x)[1:]) < 0.02
        assert relative_error(ref, dynamic(x)) < 0.02
    assert err_static_row0 > 0.1  # the clipped outlier breaks its row


def test_activation_amax_max_and_nearest_rank_percentile():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(3))
    assert float(activation_amax(x)) == float(x.abs().max())
    for p in (50.0, 99.0, 99.99, 100.0):
        expected = np.percentile(x.abs().numpy(), p, method="inverted_cdf")
        assert float(activation_amax(x, "percentile", p)) == pytest.approx(expected)


def test_calibrate_records_each_layer_input_range():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    batches = [torch.randn(16, 4) for _ in range(3)]
    ranges = calibrate(model, batches)
    assert set(ranges) == {"0", "2"}
    assert ranges["0"] == float(torch.cat(batches).abs().max())
    with torch.no_grad():
        hidden = torch.relu(model[0](torch.cat(batches)))
    assert ranges["2"] == pytest.approx(float(hidden.max()))
    p99 = calibrate(model, batches, method="percentile", percentile=99.0)
    assert all(p99[k] <= ranges[k] for k in ranges)
    assert not model[0]._forward_pre_hooks  # hooks removed


def test_per_channel_beats_per_tensor_with_an_outlier_channel():
    torch.manual_seed(0)
    w = torch.randn(64, 128) * 0.05
    w[7] *= 100  # one channel with a much larger range
    per_tensor = relative_error(w[8:], dequantize_int8(*quantize_int8(w))[8:])
    per_channel = relative_error(w[8:], dequantize_int8(*quantize_int8(w, 0))[8:])
    assert per_channel < 0.01 < per_tensor


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: quantize_int8(torch.tensor([1.0, float("inf")])), ValueError, "inf/NaN"),
        (lambda: quantize_int8(torch.tensor([float("nan"), 1.0]), 0), ValueError, "inf/NaN"),
        (lambda: quantize_int8(torch.arange(5)), TypeError, "int64"),
        (lambda: quantize_int8([1.0, 2.0]), TypeError, "torch.Tensor"),
        (lambda: quantize_int8(torch.ones(2, 3), axis=2), ValueError, "axis"),
        (lambda: quantize_int8(torch.tensor(1.0), axis=0), ValueError, "axis"),
        (lambda: quantize_int8(torch.ones(3), scale=0.0), ValueError, "scale"),
        (lambda: quantize_int8(torch.ones(3), scale=float("nan")), ValueError, "scale"),
        (lambda: dequantize_int8(1.0, torch.ones(3)), TypeError, "int8"),
        (lambda: int8_scale(-1.0), ValueError, "amax"),
        (lambda: int8_matmul(torch.ones(2, 2), torch.ones(2, 2)), TypeError, "int8"),
        (
            lambda: int8_matmul(
                torch.ones(2, 3, dtype=torch.int8), torch.ones(2, 3, dtype=torch.int8)
            ),
            ValueError,
            "shapes",
        ),
        (lambda: activation_amax(torch.ones(3), "mean"), ValueError, "method"),
        (lambda: activation_amax(torch.ones(3), "percentile", 0), ValueError, "percentile"),
        (lambda: Int8Linear(nn.Conv2d(1, 1, 1)), TypeError, "nn.Linear"),
        (lambda: cast_model(nn.Linear(2, 2), "int4"), ValueError, "unknown format"),
        (lambda: torchao_quantize(nn.Linear(2, 2), "int4"), ValueError, "unknown torchao"),
        (lambda: measure_latency(lambda: None, repeats=1), ValueError, "repeats"),
    ],
)
def test_bad_input_is_refused(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_zero_tensor_and_zero_channel_give_zeros_not_nan():
    scale, q = quantize_int8(torch.zeros(4, 5))
    assert float(scale) == FP32_EPS and not q.any()
    assert torch.equal(dequantize_int8(scale, q), torch.zeros(4, 5))
    w = torch.randn(3, 5)
    w[1] = 0.0
    scale, q = quantize_int8(w, 0)
    back = dequantize_int8(scale, q)
    assert torch.isfinite(back).all() and not back[1].any()
    assert relative_error(torch.zeros(3), torch.zeros(3)) == 0.0


def test_state_bytes_shrink_with_the_format():
    torch.manual_seed(0)
    model = SimpleModel()
    fp32, fp16 = state_bytes(model), state_bytes(cast_model(model, "fp16"))
    int8 = state_bytes(cast_model(model, "int8_weight_only"))
    assert 1.9 < fp32 / fp16 < 2.0
    assert 3.0 < fp32 / int8 < 3.5  # convolutions (2,872 parameters) stay float32
    fc1 = torchao_quantize(model, "int8_dynamic").fc1  # 48,000 weights: file overhead is small
    assert 3.7 < state_bytes(model.fc1) / state_bytes(fc1) < 4.0
    assert 3.7 < state_bytes(model.fc1) / state_bytes(quantize_linears(model).fc1) < 4.0


def test_measure_latency_reports_median_and_quartiles_and_restores_threads():
    before = torch.get_num_threads()
    lat = measure_latency(lambda: torch.ones(64, 64) @ torch.ones(64, 64), repeats=5, threads=1)
    assert lat.threads == 1 and torch.get_num_threads() == before
    assert 0 < lat.q1 <= lat.median <= lat.q3 and lat.iqr >= 0 and lat.repeats == 5
    assert "ms (IQR" in str(lat)


def test_inference_benchmark_records_every_format_and_batch():
    records = inference_benchmark("cpu", (2,), ("fp32", "bf16", "int8_dynamic"), repeats=2)
    assert [(r["format"], r["batch"]) for r in records] == [
        ("fp32", 2),
        ("bf16", 2),
        ("int8_dynamic", 2),
    ]
    assert all(r["q1_s"] <= r["median_s"] <= r["q3_s"] for r in records)
    assert records[0]["state_bytes"] > records[1]["state_bytes"] > records[2]["state_bytes"]
    assert "int8_dynamic" in format_inference(records)


def test_bench_command_records_the_inference_section(tmp_path, capsys):
    args = ["--quick", "--min-time", "0.01", "--threads", "1", "--out", str(tmp_path)]
    assert bench.main(args) == 0
    (path,) = tmp_path.glob("bench-*.json")  # the file name is the benchmark's business
    result = json.loads(path.read_text())
    formats = {r["format"] for r in result["inference"]}
    assert formats == {"fp32", "bf16", "fp16", "int8_dynamic", "int8_weight_only"}
    assert {r["batch"] for r in result["inference"]} == {1, 8}
    assert "int8_weight_only" in capsys.readouterr().out


def test_importing_torchao_through_mpcourse_prints_nothing():
    code = (
        "import torch, mpcourse.inference as inf; "
        "inf.torchao_quantize(torch.nn.Linear(8, 8), 'int8_dynamic')(torch.ones(2, 8))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""


# ---- exercise checks ---------------------------------------------------------------------


def good_scale(w):
    return torch.clamp(w.abs().flatten(1).amax(dim=1) / 127, min=FP32_EPS)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (None, "answer cell"),
        (lambda w: torch.clamp(w.abs().flatten(1).amax(1) / 127.5, min=FP32_EPS), "127.5"),
        (lambda w: w.abs().flatten(1).amax(1) / 127, "zero channel"),
        (lambda w: w.abs().amax() / 127 * torch.ones(w.shape[0]), "expected scales"),
        (lambda w: w.abs().amax(dim=0) / 127, "one per output channel"),
        (lambda w: torch.clamp(w.abs().flatten(1).amax(1), min=FP32_EPS) / 127, "clamped amax"),
    ],
)
def test_check_per_channel_scale_rejects_wrong_answers(answer, message):
    with pytest.raises(checks.CheckFailed, match=message):
        checks.check_per_channel_scale(answer)


def test_check_per_channel_scale_accepts_keepdim_and_flat_scales():
    assert checks.check_per_channel_scale(good_scale)
    assert checks.check_per_channel_scale(lambda w: quantize_int8(w, 0)[0])


def test_check_sensitive_layer_computes_the_truth():
    torch.manual_seed(0)
    model = SimpleModel().eval()
    images = torch.randn(32, 3, 32, 32)
    errors = weight_sensitivity(model, images)
    worst = max(errors, key=errors.get)
    assert set(errors) == {"conv1", "conv2", "fc1", "fc2", "fc3"}
    assert checks.check_sensitive_layer(worst, model, images)
    other = next(name for name in errors if name != worst)
    with pytest.raises(checks.CheckFailed, match="another layer moves them more") as failed:
        checks.check_sensitive_layer(other, model, images)
    assert repr(worst) not in str(failed.value)  # a wrong guess does not give the answer away
    with pytest.raises(checks.CheckFailed, match="one of"):
        checks.check_sensitive_layer("fc4", model, images)


def decomposed(x, weight, threshold):
    outliers = (x.abs() > threshold).any(dim=0)
    sx, qx = quantize_int8(x[:, ~outliers], 0)
    sw, qw = quantize_int8(weight[:, ~outliers], 0)
    inliers = int8_matmul(qx, qw.T).float() * sx * sw.T
    return inliers + x[:, outliers] @ weight[:, outliers].T


def plain_int8(x, weight, threshold):
    sx, qx = quantize_int8(x, 0)
    sw, qw = quantize_int8(weight, 0)
    return int8_matmul(qx, qw.T).float() * sx * sw.T


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (plain_int8, "plain per-row INT8"),
        (lambda x, w, t: x @ w.T, "equals the float32 matmul"),
        (lambda x, w, t: x @ w, "shape"),
    ],
)
def test_check_outlier_matmul_rejects_wrong_answers(answer, message):
    with pytest.raises(checks.CheckFailed, match=message):
        checks.check_outlier_matmul(answer)


def per_tensor_decomposed(x, weight, threshold):
    outliers = (x.abs() > threshold).any(dim=0)
    sx, qx = quantize_int8(x[:, ~outliers])
    sw, qw = quantize_int8(weight[:, ~outliers])
    return int8_matmul(qx, qw.T).float() * sx * sw + x[:, outliers] @ weight[:, outliers].T


def test_check_outlier_matmul_accepts_the_decomposition():
    assert checks.check_outlier_matmul(decomposed)


def test_check_outlier_matmul_rejects_per_tensor_scales():
    for seed in range(3):  # the check draws its cases from the global generator
        torch.manual_seed(seed)
        with pytest.raises(checks.CheckFailed, match="per-tensor scales"):
            checks.check_outlier_matmul(per_tensor_decomposed)


# ---- the CPU's dtype routes and the reference numbers -----------------------------------------
def test_onednn_primitives_agree_with_pytorchs_route():
    from mpcourse.device import cpu_routes
    from mpcourse.inference import onednn_primitives

    a = torch.randn(64, 128)
    for dtype in (torch.bfloat16, torch.float16):
        low = a.to(dtype)
        found = onednn_primitives(lambda low=low: low @ low.T)
        assert bool(found) == (cpu_routes()[str(dtype)[6:]] == "oneDNN")
        assert all(p.startswith("matmul ") for p in found)
    assert onednn_primitives(lambda: None) == []
    with pytest.raises(TypeError, match="callable"):
        onednn_primitives(3)


def test_bench_reference_reads_the_saved_results(tmp_path):
    from mpcourse.inference import bench_records, bench_reference

    text = bench_reference()
    assert "threads" in text and "fp32" in text and "median ms" in text
    assert {r["format"] for r in bench_records()} >= {"fp32", "bf16", "fp16"}
    with pytest.raises(FileNotFoundError, match="mpcourse bench"):
        bench_records(tmp_path / "missing.json")


def test_chapter_model_rejects_bad_epochs():
    from mpcourse.inference import chapter_model

    with pytest.raises(ValueError, match="epochs"):
        chapter_model("cpu", epochs=0)


def test_compare_latency_interleaves_and_reports_every_function():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    lats = compare_latency(fns, repeats=3, warmup=1)
    assert set(lats) == {"a", "b"} and all(lat.repeats == 3 for lat in lats.values())
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-up each, then one of each per round
