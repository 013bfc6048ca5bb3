"""mpcourse.device: one place decides device and autocast dtype."""

import pytest
import torch

from mpcourse.device import (
    ENV_VAR,
    EnvironmentReport,
    amp_dtype,
    autocast_dtypes,
    bf16_native,
    cpu_features,
    environment_report,
    needs_grad_scaler,
    pick_device,
    seed_everything,
)


def test_pick_device_defaults_to_cuda_when_available(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == expected


def test_pick_device_honours_preference_and_environment(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setenv(ENV_VAR, "cpu")
    assert pick_device() == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_pick_device_refuses_cuda_without_gpu(monkeypatch):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        pick_device("cuda")
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(ValueError, match=f"unset {ENV_VAR}"):
        pick_device()


def test_pick_device_rejects_unknown_devices():
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        pick_device("gpu")
    with pytest.raises(ValueError, match="not supported"):
        pick_device("meta")


def test_amp_dtype_policy():
    assert amp_dtype(torch.device("cuda")) == (
        torch.bfloat16 if bf16_native("cuda") else torch.float16
    )
    assert amp_dtype("cpu") == torch.bfloat16
    assert amp_dtype("cpu", prefer="fp16") == torch.float16
    assert amp_dtype("cuda", prefer=torch.bfloat16) == torch.bfloat16
    assert needs_grad_scaler(torch.float16) and not needs_grad_scaler(torch.bfloat16)
    with pytest.raises(ValueError, match="unknown autocast dtype"):
        amp_dtype("cpu", prefer="int8")
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        amp_dtype("cpu", prefer=torch.float32)


@pytest.mark.parametrize(
    "capability,native,dtype",
    [
        ((6, 1), False, torch.float16),
        ((7, 0), False, torch.float16),
        ((7, 5), False, torch.float16),
        ((8, 0), True, torch.bfloat16),
        ((8, 9), True, torch.bfloat16),
        ((9, 0), True, torch.bfloat16),
    ],
)
def test_cuda_default_is_bf16_only_where_the_gpu_computes_it(
    monkeypatch, capability, native, dtype
):
    """B1: BF16 autocast (no scaler) on Ampere and newer, FP16 + GradScaler before. Simulated:
    torch.cuda.is_bf16_supported() is true on a T4 too (emulation), so the policy must not use
    it with its default argument."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: capability)
    monkeypatch.setattr(
        torch.cuda,
        "is_bf16_supported",
        lambda including_emulation=True: including_emulation or capability[0] >= 8,
    )
    for device in ("cuda", "cuda:0", "cuda:1"):
        assert bf16_native(device) is native
        assert amp_dtype(device) == dtype
        assert needs_grad_scaler(amp_dtype(device)) is not native


def test_cpu_bf16_native_follows_the_cpu_flags():
    assert bf16_native("cpu") == bool({"avx512_bf16", "amx_bf16"} & set(cpu_features()))


def _report(**changes):
    base = dict(
        torch_version="2",
        python_version="3",
        device="cpu",
        device_name="x",
        cuda_capability=None,
        amp_dtype="bfloat16",
        autocast_dtypes={"float16": True, "bfloat16": True},
        bf16_supported=True,
        tf32_matmul=None,
        tf32_cudnn=None,
        float32_matmul_precision="highest",
        cpu_name="x",
        cpu_capability="AVX512",
        cpu_features=[],
        threads=1,
        step_speed={"float16": 1 / 30, "bfloat16": 1.5},
    )
    return EnvironmentReport(**{**base, **changes})


def test_doctor_verdict_says_what_to_use():
    """B2: one line to act on, with the measured FP16 slowdown; no raw None/yes values."""
    text = str(_report())
    assert text.splitlines()[-1] == (
        "this machine: use bf16 autocast, no GradScaler; FP16 has no fast kernels here: a "
        "training step is 30x slower; a small bf16 training step here is 1.5x faster than FP32"
    )
    assert "None" not in text and "=yes" not in text and "n/a (CUDA only)" in text
    assert "float16: runs (30x slower than FP32 in a training step)" in text
    gpu = _report(
        device="cuda",
        cuda_capability="sm_75",
        amp_dtype="float16",
        bf16_supported=False,
        tf32_matmul=False,
        tf32_cudnn=True,
        step_speed={"float16": 2.5, "bfloat16": 0.4},
    )
    assert gpu.verdict() == "this machine: use fp16 autocast + GradScaler (bf16 is not native here)"


def test_autocast_probe_and_report_on_cpu():
    works = autocast_dtypes("cpu")
    assert works == {"float16": True, "bfloat16": True}  # torch 2.x CPU autocast supports both
    report = environment_report("cpu", measure=False)
    assert report.device == "cpu" and report.torch_version == torch.__version__
    assert report.amp_dtype == "bfloat16" and report.cuda_capability is None
    text = str(report)
    assert "autocast_dtypes" in text and "float16: runs" in text
    assert set(cpu_features()) <= {
        "avx2",
        "avx512f",
        "avx512_bf16",
        "avx512_fp16",
        "amx_tile",
        "amx_bf16",
        "amx_fp16",
    }


def test_seed_everything_is_deterministic():
    seed_everything(3)
    a = torch.randn(4)
    g = seed_everything(3)
    assert torch.equal(a, torch.randn(4))
    assert torch.equal(torch.randn(2, generator=g), torch.randn(2, generator=seed_everything(3)))


def test_default_amp_dtype_is_the_rule_without_the_hardware():
    from mpcourse.device import default_amp_dtype

    assert default_amp_dtype("cuda", bf16_native=False) == torch.float16
    assert default_amp_dtype("cuda", bf16_native=True) == torch.bfloat16
    assert default_amp_dtype("cpu", bf16_native=False) == torch.bfloat16
    with pytest.raises(ValueError, match="device_type must be 'cpu' or 'cuda', got 'mps'"):
        default_amp_dtype("mps", True)


def test_setup_chapter_seeds_picks_and_sets_threads(monkeypatch):
    from mpcourse.device import setup_chapter

    monkeypatch.delenv(ENV_VAR, raising=False)
    before = torch.get_num_threads()
    try:
        device, dtype, gen = setup_chapter(seed=5, threads=1, device="cpu")
        assert torch.get_num_threads() == 1
        assert (device, dtype) == (torch.device("cpu"), amp_dtype("cpu"))
        first = torch.randn(3)
        setup = setup_chapter(seed=5, device="cpu")
        assert torch.equal(torch.randn(3), first)
        assert torch.equal(torch.randn(2, generator=gen), torch.randn(2, generator=setup.generator))
        assert setup.device == device and setup.amp_dtype == dtype
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads"):
        setup_chapter(threads=0)
    with pytest.raises(TypeError, match="seed"):
        setup_chapter(seed=1.5)
