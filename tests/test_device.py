"""mpcourse.device: one place decides device and autocast dtype."""

import pytest
import torch

from mpcourse.device import (
    ENV_VAR,
    amp_dtype,
    autocast_dtypes,
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
    assert amp_dtype(torch.device("cuda")) == torch.float16
    assert amp_dtype("cpu") == torch.bfloat16
    assert amp_dtype("cpu", prefer="fp16") == torch.float16
    assert amp_dtype("cuda", prefer=torch.bfloat16) == torch.bfloat16
    assert needs_grad_scaler(torch.float16) and not needs_grad_scaler(torch.bfloat16)
    with pytest.raises(ValueError, match="unknown autocast dtype"):
        amp_dtype("cpu", prefer="int8")
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        amp_dtype("cpu", prefer=torch.float32)


def test_autocast_probe_and_report_on_cpu():
    works = autocast_dtypes("cpu")
    assert works == {"float16": True, "bfloat16": True}  # torch 2.x CPU autocast supports both
    report = environment_report("cpu")
    assert report.device == "cpu" and report.torch_version == torch.__version__
    assert report.amp_dtype == "bfloat16" and report.cuda_capability is None
    text = str(report)
    assert "autocast_dtypes" in text and "float16=yes" in text
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
