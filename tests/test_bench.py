"""mpcourse.bench on the CPU: small sizes, so the whole file takes seconds."""

import json
import math

import pytest
import torch
from torch import nn

from mpcourse.bench import (
    MATMUL_MODES,
    STEP_MODES,
    _slug,
    evaluate_goals,
    format_tables,
    machine_info,
    main,
    matmul_tflops,
    preset,
    run_benchmark,
    tf32_enabled,
    train_step,
)
from mpcourse.costs import (
    LiveTensorBytes,
    WideMLP,
    arithmetic_intensity,
    pad_to_multiple,
    saved_activation_bytes,
    step_profile,
)
from mpcourse.models import SimpleModel


def test_arithmetic_intensity():
    assert arithmetic_intensity(4096, 4096, 4096, 2) == pytest.approx(4096 / 3)
    assert arithmetic_intensity(1, 1024, 1024, 4) == pytest.approx(
        2 * 1024 * 1024 / (4 * (1024 + 1024 * 1024 + 1024))
    )
    # halving the bytes doubles the intensity
    assert arithmetic_intensity(64, 400, 120, 2) == pytest.approx(
        2 * arithmetic_intensity(64, 400, 120, 4)
    )


def test_pad_to_multiple():
    assert pad_to_multiple(50257, 64) == 50304
    assert pad_to_multiple(4096, 8) == 4096 and pad_to_multiple(4095) == 4096
    assert pad_to_multiple(1, 16) == 16


def test_tf32_switches_are_set_and_restored():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    with tf32_enabled(True):
        assert torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
    with tf32_enabled(False):
        assert not torch.backends.cuda.matmul.allow_tf32
        assert torch.get_float32_matmul_precision() == "highest"
    assert (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()) == before


@pytest.mark.parametrize("mode", MATMUL_MODES)
def test_matmul_tflops_on_cpu(mode):
    r = matmul_tflops(32, mode, "cpu", min_run_time=0.01)
    if mode == "tf32":
        assert r.tflops is None and "CUDA" in r.note
    else:
        assert r.seconds > 0 and r.tflops == pytest.approx(2 * 32**3 / r.seconds / 1e12)


def test_saved_activation_bytes_counts_activations_not_parameters():
    lin = nn.Linear(8, 16)
    x = torch.randn(4, 8, requires_grad=True)  # as a hidden layer's input
    with saved_activation_bytes(lin) as saved:
        lin(x).sum().backward()
    assert saved["bytes"] == 4 * 8 * 4  # the input; the weight is a parameter
    with saved_activation_bytes(lin) as saved, torch.autocast("cpu", dtype=torch.bfloat16):
        lin(x).sum().backward()
    assert saved["bytes"] == 4 * 8 * 2 + 16 * 8 * 2  # bf16 copies of the input and the weight
    assert saved["by_dtype"] == {"bfloat16": saved["bytes"]}


def test_saved_bytes_per_dtype_show_what_autocast_cannot_shrink():
    model, x = SimpleModel(), torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    runs = {}
    for enabled in (False, True):
        with saved_activation_bytes(model) as saved:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
        runs[enabled] = saved
        assert sum(saved["by_dtype"].values()) == saved["bytes"]
    # max-pooling's argmax indices (and the labels) are int64 either way
    assert runs[False]["by_dtype"]["int64"] == runs[True]["by_dtype"]["int64"] > 0
    assert "bfloat16" in runs[True]["by_dtype"] and "bfloat16" not in runs[False]["by_dtype"]
    with pytest.raises(TypeError, match="nn.Module"):
        with saved_activation_bytes("model"):
            pass


def test_live_tensor_bytes_follows_allocations_and_frees():
    x = torch.ones(1000)  # 4000 bytes, exists before the block
    with LiveTensorBytes([x]) as live:
        y = x * 2
        z = y * 3  # x, y, z alive: 12000
        v = z.view(10, 100)  # a view: no new storage
        del y
        w = z + 1  # y was freed first: x, z, w alive, 12000 again
    assert (live.start, live.peak, live.now) == (4000, 12000, 12000)
    assert v.shape == (10, 100) and w.shape == (1000,)
    with pytest.raises(TypeError, match="tracks tensors"):
        LiveTensorBytes([1.0])


def test_live_tensor_bytes_of_a_training_step():
    model, x = WideMLP(dim=32, depth=2), torch.randn(256, 32)
    y = torch.randint(0, 10, (256,))
    peaks = {}
    for enabled in (False, True):
        model.zero_grad(set_to_none=True)
        with (
            LiveTensorBytes([*model.parameters(), x, y]) as live,
            saved_activation_bytes(model) as saved,
        ):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
        peaks[enabled] = live.peak
        params = sum(p.numel() * 4 for p in model.parameters())
        assert live.start == params + x.numel() * 4 + y.numel() * 8
        assert live.peak >= live.start + saved["bytes"]  # all saved tensors alive at once
        assert live.now >= live.start + params  # the gradients stay
    assert peaks[True] < peaks[False]


def test_wide_mlp_shapes_and_validation():
    model = WideMLP(dim=16, depth=3, expansion=2)
    assert model(torch.randn(5, 16)).shape == (5, 10)
    assert len(model.blocks) == 3 and model.blocks[0][0].out_features == 32
    with pytest.raises(ValueError, match="depth must be a positive int"):
        WideMLP(dim=16, depth=0)


@pytest.mark.parametrize("model, batch, limit", [("simple", 64, 0.7), ("mlp", 256, 0.6)])
def test_train_step_measures_time_and_activation_memory(model, batch, limit):
    results = {
        m: train_step(model, m, "cpu", batch=batch, dim=32, depth=1, min_run_time=0.01)
        for m in STEP_MODES
    }
    for r in results.values():
        assert r.seconds > 0 and r.peak_memory_bytes is None and r.param_grad_bytes > 0
    ratio = results["amp-bf16"].saved_activation_bytes / results["fp32"].saved_activation_bytes
    # 16-bit activations take half the bytes (pooling indices do not shrink)
    assert 0.5 <= ratio < limit
    fp16, bf16 = results["amp-fp16"], results["amp-bf16"]
    assert abs(fp16.saved_activation_bytes - bf16.saved_activation_bytes) <= 8  # + the scale
    fp32 = results["fp32"]
    assert fp32.peak_tensor_bytes >= fp32.param_grad_bytes + fp32.saved_activation_bytes
    assert bf16.peak_tensor_bytes < fp32.peak_tensor_bytes


def test_run_benchmark_tables_and_json(tmp_path):
    result = run_benchmark("cpu", (32,), (("mlp", 8, 16, 1),), min_run_time=0.01, fp16_max_n=16)
    assert result["machine"]["torch"] == torch.__version__ and result["machine"]["device"] == "cpu"
    fp16 = [r for r in result["matmul"] if r["mode"] == "fp16"][0]
    assert fp16["tflops"] is None and "skipped" in fp16["note"]
    assert len(result["train_step"]) == len(STEP_MODES)
    table = format_tables(result)
    assert "TFLOP/s" in table and "amp-bf16" in table and "1.00x" in table
    measured = [r for r in result["matmul"] + result["train_step"] if r["seconds"]]
    for r in measured:  # the timer's quartiles bracket its median
        q1, q3 = r["quartiles_seconds"]
        assert 0 < q1 <= r["seconds"] <= q3
    assert "command: (not recorded)" in table and "matmul n = 32 | train step: mlp batch 8" in table
    assert "tensors peak MiB" in table and all(r["peak_tensor_bytes"] for r in result["train_step"])
    json.dumps(result)  # serialisable


def test_main_writes_results_json(tmp_path, capsys):
    """Issue 9 B3: a quick run never replaces full results; its table names command and sizes."""
    full = tmp_path / "bench-cpu.json"
    full.write_text('{"full": true}\n')
    assert main(["--quick", "--min-time", "0.01", "--out", str(tmp_path)]) == 0
    assert json.loads(full.read_text()) == {"full": True}  # untouched
    data = json.loads((tmp_path / "bench-cpu-quick.json").read_text())
    assert {"machine", "matmul", "train_step", "command"} <= set(data)
    assert data["machine"]["date"].endswith("+00:00")
    out = capsys.readouterr().out
    assert "wrote" in out and "bench-cpu-quick.json" in out
    assert "command: python -m mpcourse bench --quick" in out
    assert "sizes: matmul n = 64, 128 | train step: simple batch 8; mlp batch 32" in out
    assert main(["--", "--quick", "--min-time", "0.01", "--no-save", "--threads", "1"]) == 0


def test_step_profile_counts_flops_and_ops():
    simple = step_profile("simple", batch=256)
    assert simple["params"] == 62006
    # issue 9 A7: 87 ops dispatched, 43 launch kernels (no views, detach, t, profiler markers)
    assert (simple["dispatched"], simple["ops"]) == (87, 43)
    conv1 = 2 * 256 * 6 * 28 * 28 * 3 * 25  # one forward conv1, 2mkn
    assert simple["flops"] > 3 * conv1
    mlp = step_profile("mlp", batch=1024, dim=256, depth=2)
    linear_fwd = 2 * 1024 * (2 * 2 * 256 * 1024 + 256 * 10)
    assert mlp["flops"] == 3 * linear_fwd - 2 * 1024 * 256 * 1024  # no input grad for layer 1
    assert preset("cpu")["sizes"][-1] == 1024 and preset("cpu")["fp16_max_n"] == 512


def test_slug_names_the_gpu():
    assert _slug({"device": "cuda", "device_name": "NVIDIA H200"}) == "nvidia-h200"
    assert _slug(machine_info("cpu")) == "cpu"


def _fake_gpu_result(fp32_s, amp_s, fp32_mem, amp_mem, bf16_tflops):
    """A hand-made result dict, only to test the goal arithmetic (never written anywhere)."""
    step = lambda mode, s, mem: {
        "model": "mlp",
        "mode": mode,
        "seconds": s,
        "peak_memory_bytes": mem,
    }
    return {
        "train_step": [
            step("fp32", fp32_s, fp32_mem),
            step("amp-fp16", amp_s, amp_mem),
            step("amp-bf16", amp_s * 1.1, amp_mem),
        ],
        "matmul": [
            {"mode": "bf16", "n": 4096, "tflops": 1.0},
            {"mode": "bf16", "n": 8192, "tflops": bf16_tflops},
        ],
    }


def test_evaluate_goals():
    met = evaluate_goals(_fake_gpu_result(1.0, 0.25, 100, 60, 700.0))
    assert [ok for _, ok in met] == [True, True, True]
    assert "4.00x faster" in met[0][0] and "n=8192" in met[2][0]
    missed = evaluate_goals(_fake_gpu_result(1.0, 0.5, 100, 70, 600.0))
    assert [ok for _, ok in missed] == [False, False, False]
    with pytest.raises(ValueError, match="CUDA result"):
        evaluate_goals(run_benchmark("cpu", (16,), (("mlp", 4, 8, 1),), min_run_time=0.01))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: matmul_tflops(64, "int8"), "unknown matmul mode"),
        (lambda: matmul_tflops(0, "fp32"), "positive int"),
        (lambda: train_step("resnet", "fp32"), "unknown model"),
        (lambda: step_profile("resnet"), "unknown model"),
        (lambda: step_profile("mlp", batch=0), "batch must be a positive int"),
        (lambda: WideMLP(dim=0), "dim must be a positive int"),
        (lambda: train_step("mlp", "fp8"), "unknown training mode"),
        (lambda: arithmetic_intensity(0, 1, 1, 2), "m must be a positive int"),
        (lambda: pad_to_multiple(10, 0), "multiple must be a positive int"),
    ],
)
def test_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_cli_arguments_exit_with_usage():
    with pytest.raises(SystemExit):
        main(["--threads", "0", "--no-save"])


# --- exercise checks of course/09_speed_and_memory.ipynb -----------------------------------------
from mpcourse import checks  # noqa: E402
from mpcourse.checks import CheckFailed, NotAnswered  # noqa: E402


def _stub(*args):
    raise NotImplementedError


def test_check_arithmetic_intensity():
    """Issue 10: ch09 exercise 1 needs transfer (separate input and output widths)."""

    def right(m, k, n, i, o):
        return 2 * m * k * n / (i * (m * k + k * n) + o * m * n)

    assert checks.check_arithmetic_intensity(right)
    for wrong, words in (
        (lambda m, k, n, i, o: 2 * m * k * n, "FLOP count"),
        (lambda m, k, n, i, o: right(m, k, n, i, i), "out_bytes per element"),
        (lambda m, k, n, i, o: right(m, k, n, o, o), "in_bytes per element"),
        (lambda m, k, n, i, o: 2 * m * k * n / (i * (m * k + k * n)), "count the output"),
        (lambda m, k, n, i, o: right(m, k, n, i, o) / 2, "2 FLOPs"),
        (lambda m, k, n, i, o: right(m, k, n, i, o) + 1, "expected"),
        (lambda m, k, n, i, o: None, "should return a number"),
    ):
        with pytest.raises(CheckFailed, match=words):
            checks.check_arithmetic_intensity(wrong)
    for stub in (None, _stub):
        with pytest.raises(NotAnswered):
            checks.check_arithmetic_intensity(stub)


def test_check_pad_to_multiple():
    assert checks.check_pad_to_multiple(lambda s, m: -(-s // m) * m)
    with pytest.raises(CheckFailed, match="round up"):
        checks.check_pad_to_multiple(lambda s, m: s // m * m)
    with pytest.raises(CheckFailed, match="round up"):
        checks.check_pad_to_multiple(lambda s, m: (s // m + 1) * m)
    with pytest.raises(CheckFailed, match="int"):
        checks.check_pad_to_multiple(lambda s, m: float(-(-s // m) * m))
    with pytest.raises(CheckFailed, match="int"):
        checks.check_pad_to_multiple(lambda s, m: math.ceil(s / m) * m * 1.0)
    for stub in (None, _stub):
        with pytest.raises(NotAnswered):
            checks.check_pad_to_multiple(stub)


def test_gpu_script_refuses_to_run_without_a_gpu():
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "tools" / "gpu_bench.sh"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}  # hide any GPU
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "no CUDA GPU" in result.stderr


def test_module_entry_point_runs(tmp_path):
    import subprocess
    import sys

    args = ["--quick", "--min-time", "0.01", "--threads", "1", "--out", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-m", "mpcourse.bench", *args], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "TFLOP/s" in result.stdout and (tmp_path / "bench-cpu-quick.json").exists()
    assert not (tmp_path / "bench-cpu.json").exists()


def _right_saved(b, i, o, autocast):
    return 2 * b * i + 2 * i * o if autocast else 4 * b * i


def test_check_linear_saved_bytes():
    assert checks.check_linear_saved_bytes(_right_saved)
    for wrong, words in (
        (lambda b, i, o, a: 2 * b * i if a else 4 * b * i, "copy of the weight"),
        (lambda b, i, o, a: 4 * b * i + 2 * i * o if a else 4 * b * i, "2 bytes per element"),
        (lambda b, i, o, a: _right_saved(b, i, o, a) + (0 if a else 4 * i * o), "exists anyway"),
        (lambda b, i, o, a: (2 if a else 4) * b * o, "not its output"),
        (lambda b, i, o, a: 2 * b * i + 2 * i * o, "stays FP32"),
        (lambda b, i, o, a: _right_saved(b, i, o, a) + 1, "measured"),
        (lambda b, i, o, a: "many", "number of bytes"),
    ):
        with pytest.raises(CheckFailed, match=words):
            checks.check_linear_saved_bytes(wrong)
    for stub in (None, _stub):
        with pytest.raises(NotAnswered):
            checks.check_linear_saved_bytes(stub)


def test_launches_kernel_separates_views_from_work():
    from mpcourse.costs import launches_kernel

    aten = torch.ops.aten
    for op in (aten.mm.default, aten.add_.Tensor, aten.convolution.default, aten._to_copy.default):
        assert launches_kernel(op), op
    for op in (aten.view.default, aten.t.default, aten.detach.default, aten.empty.memory_format):
        assert not launches_kernel(op), op
