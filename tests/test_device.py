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
        "this machine: use bf16 autocast, no GradScaler; FP16 is slow here: a "
        "training step is 30x slower; a small bf16 training step here is 1.5x faster than FP32"
    )
    routed = _report(cpu_routes={"bfloat16": "oneDNN", "float16": "ATen"}).verdict()
    assert "FP16 is slow here (PyTorch runs FP16 in its generic kernels): a training" in routed
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
    try:
        setup_chapter(device="cpu", reproducible=True)
        assert torch.backends.cudnn.deterministic and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.deterministic = False
    with pytest.raises(ValueError, match="threads"):
        setup_chapter(threads=0)
    with pytest.raises(TypeError, match="seed"):
        setup_chapter(seed=1.5)


def test_speed_words_never_say_1x_slower():
    """N-I11: a ratio of 0.8 read "1x slower"."""
    from mpcourse.device import _speed_words

    assert _speed_words(0.8) == "0.80x the speed of FP32"
    assert _speed_words(1.0) == "about as fast as FP32 (1.00x)"
    assert _speed_words(0.97) == "about as fast as FP32 (0.97x)"
    assert _speed_words(1.5) == "1.5x faster than FP32"
    assert _speed_words(1 / 30) == "30x slower than FP32"


X86_INFO = "processor : 0\nflags : fpu avx2 avx512f avx512bw avx512_bf16 amx_tile amx_bf16\n"
ARM_INFO = "processor : 0\nFeatures : fp asimd fphp asimdhp bf16 i8mm\n"


def test_cpu_low_precision_reads_the_flags_of_each_architecture():
    from mpcourse.device import cpu_low_precision

    x86 = cpu_low_precision(X86_INFO, "x86_64")
    assert x86 == {
        "avx512_bf16": "yes",
        "amx_bf16": "yes",
        "avx512_fp16": "no",
        "amx_fp16": "no",
        "avx_ne_convert": "no",
    }
    arm = cpu_low_precision(ARM_INFO, "aarch64")
    assert arm == {"fphp": "yes", "asimdhp": "yes", "asimdfhm": "no", "bf16": "yes"}
    assert set(cpu_low_precision(ARM_INFO, "x86_64").values()) == {"unknown"}  # no flags line
    assert cpu_low_precision(X86_INFO, "riscv64") == {"low-precision instructions": "unknown"}


def test_unknown_cpu_reports_unknown_and_never_crashes(monkeypatch):
    """Bad input: no /proc/cpuinfo, a non-x86/ARM machine."""
    import pathlib
    import platform

    import mpcourse.device as dev

    real_read, real_exists = pathlib.Path.read_text, pathlib.Path.exists

    def read_text(self, *a, **k):
        if str(self) == "/proc/cpuinfo":
            raise FileNotFoundError(self)
        return real_read(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    monkeypatch.setattr(
        pathlib.Path, "exists", lambda self: str(self) != "/proc/cpuinfo" and real_exists(self)
    )
    assert set(dev.cpu_low_precision(machine="x86_64").values()) == {"unknown"}
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert dev.cpu_arch() == "unknown"
    assert dev.cpu_low_precision() == {"low-precision instructions": "unknown"}
    assert dev.cpu_features() == [] and dev.cpu_name() == "riscv64"
    report = dev.environment_report("cpu", measure=False)
    assert report.cpu_instructions == {"low-precision instructions": "unknown"}
    assert "low-precision instructions unknown" in str(report)


def test_cpu_routes_ask_pytorch(monkeypatch):
    from mpcourse.device import cpu_low_precision, cpu_routes

    routes = cpu_routes()
    assert set(routes) == {"bfloat16", "float16"}
    assert set(routes.values()) <= {"oneDNN", "ATen", "unknown"}
    assert routes["bfloat16"] == (
        "oneDNN" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "ATen"
    )
    have = cpu_low_precision()
    # PyTorch's FP16 condition on x86 (mkldnn/Utils.h): AVX-NE-CONVERT or AVX512-FP16
    if torch.backends.mkldnn.enabled and "yes" in (
        have.get("avx512_fp16"),
        have.get("avx_ne_convert"),
    ):
        assert routes["float16"] == "oneDNN"
    if have.get("avx512_bf16") == "yes" and torch.backends.mkldnn.enabled:  # implies AVX-512
        assert routes["bfloat16"] == "oneDNN"
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    assert cpu_routes() == {"bfloat16": "ATen", "float16": "ATen"}


def test_dtype_speed_times_every_op_and_dtype():
    from mpcourse.device import cpu_low_precision, cpu_routes, dtype_speed, format_low_precision

    threads = torch.get_num_threads()
    speed = dtype_speed("cpu", size=32, min_run_time=0.001)
    assert torch.get_num_threads() == threads  # restored
    assert list(speed) == ["matmul forward", "matmul backward", "conv forward", "conv backward"]
    assert all(set(r) == {"bfloat16", "float16"} and min(r.values()) > 0 for r in speed.values())
    text = format_low_precision(cpu_low_precision(), cpu_routes(), speed)
    assert text.splitlines()[0].startswith("hardware: ") and "conv backward" in text
