"""One place decides where the course runs and in which low-precision dtype.

Notebooks never write ``"cuda"`` themselves: they call :func:`pick_device` and
:func:`amp_dtype` and pass the result on, so the same notebook uses a GPU when
one is present and the CPU otherwise.

Set the environment variable ``MPCOURSE_DEVICE`` (``cpu``, ``cuda``,
``cuda:1``, ...) to override the choice, e.g. to run the CPU path on a GPU
machine.

Taught in course/00_setup.ipynb.
"""

from __future__ import annotations

import os
import platform
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

ENV_VAR = "MPCOURSE_DEVICE"

_DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def pick_device(prefer: str | torch.device | None = None) -> torch.device:
    """Return the device the course should run on.

    Order: ``prefer`` if given, else ``$MPCOURSE_DEVICE`` if set, else the
    first CUDA GPU if one is available, else the CPU.

    >>> pick_device("cpu")
    device(type='cpu')
    """
    choice = prefer if prefer is not None else os.environ.get(ENV_VAR)
    if choice is None or choice == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(choice)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {choice!r}: use 'cpu', 'cuda' or 'cuda:N'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {choice!r} was asked for but torch sees no CUDA GPU "
            f"(torch {torch.__version__}); unset {ENV_VAR} or use 'cpu'"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {choice!r} is not supported by the course: use 'cpu' or 'cuda'")
    return device


def bf16_native(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 in hardware.

    CUDA: compute capability 8.0 or newer (Ampere, Hopper, Blackwell...), or any ROCm GPU.
    ``torch.cuda.is_bf16_supported()`` is not enough: by default
    (``including_emulation=True``) it is also true on older GPUs that only emulate
    bfloat16 (torch/cuda/__init__.py), so this asks ``including_emulation=False`` for
    the current device and reads the capability for any other. CPU: ``False`` unless
    /proc/cpuinfo lists AVX512-BF16 or AMX-BF16 (without them bfloat16 is emulated).
    """
    device = torch.device(device)
    if device.type == "cuda":
        if torch.version.hip:
            return True
        if not torch.cuda.is_available():
            return False
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index == torch.cuda.current_device():
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        return torch.cuda.get_device_capability(index)[0] >= 8
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_features()))


def _gpu_arch(device: torch.device) -> tuple[tuple[int, int] | None, str]:
    """(NVIDIA compute capability or None, ROCm gcnArchName or "") of a CUDA device."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None, ""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if torch.version.hip:
        return None, getattr(torch.cuda.get_device_properties(index), "gcnArchName", "")
    return tuple(torch.cuda.get_device_capability(index)), ""


def fp8_native(device: torch.device | str) -> bool:
    """Whether ``device`` has FP8 (E4M3/E5M2) matmul units.

    torchao 0.18's rule (``torchao/utils.py``: ``is_sm_at_least_89``, ``is_MI300``,
    ``is_MI350``): NVIDIA compute capability 8.9 and newer (Ada, Hopper, Blackwell), AMD
    MI300 (gfx940-942, the FNUZ variants) and MI350 (gfx950). CPUs: ``False`` (the
    course simulates FP8 there).

    Taught in course/08_bf16_tf32_fp8.ipynb.
    """
    capability, arch = _gpu_arch(torch.device(device))
    if arch:
        return any(a in arch for a in ("gfx940", "gfx941", "gfx942", "gfx950"))
    return capability is not None and capability >= (8, 9)


def mx_native(device: torch.device | str) -> bool:
    """Whether ``device`` has block-scaled MX (MXFP8/MXFP4) matmul units.

    torchao 0.18's rule for its MX kernels (``is_sm_at_least_100``, ``is_MI350``):
    NVIDIA compute capability 10.0 and newer (Blackwell), AMD MI350 (gfx950). Hopper
    (9.0) has FP8 but no MX. CPUs: ``False``.

    Taught in course/14_microscaling.ipynb.
    """
    capability, arch = _gpu_arch(torch.device(device))
    if arch:
        return "gfx950" in arch
    return capability is not None and capability >= (10, 0)


def amp_dtype(device: torch.device | str, prefer: str | torch.dtype | None = None) -> torch.dtype:
    """The autocast dtype to use on ``device``.

    CUDA: bfloat16 where the GPU computes it natively (:func:`bf16_native`: Ampere and
    newer, no GradScaler needed), float16 with a GradScaler otherwise (the original AMP
    recipe, which chapter 07 still runs explicitly). CPU: bfloat16 on every CPU, with or
    without BF16 instructions (FP16 autocast runs on a CPU too, at a speed that depends on
    the CPU and the op: :func:`cpu_routes`, :func:`dtype_speed`; ``python -m mpcourse
    doctor`` measures a training step).
    ``prefer`` (``"float16"``/``"bf16"``/a dtype) overrides the default.
    """
    device = torch.device(device)
    if prefer is not None:
        if isinstance(prefer, torch.dtype):
            dtype = prefer
        elif isinstance(prefer, str) and prefer.lower() in _DTYPES:
            dtype = _DTYPES[prefer.lower()]
        else:
            raise ValueError(
                f"unknown autocast dtype {prefer!r}: use 'float16'/'fp16' or 'bfloat16'/'bf16'"
            )
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"autocast lowers precision to float16 or bfloat16, not {dtype}")
        return dtype
    return default_amp_dtype(device.type, bf16_native(device) if device.type == "cuda" else True)


def default_amp_dtype(device_type: str, bf16_native: bool) -> torch.dtype:
    """The course's rule, as a pure function (so it can be shown for GPUs you do not have):
    CUDA with native bfloat16 -> bfloat16, other CUDA GPUs -> float16, CPU -> bfloat16."""
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"device_type must be 'cpu' or 'cuda', got {device_type!r}")
    if device_type == "cuda" and not bf16_native:
        return torch.float16
    return torch.bfloat16


def needs_grad_scaler(dtype: torch.dtype) -> bool:
    """float16 needs loss scaling (narrow range); bfloat16 does not (FP32's range)."""
    return dtype == torch.float16


GPU_EXAMPLES = {  # compute capability -> GPUs of that generation (NVIDIA's CUDA GPU list)
    (6, 0): "P100",
    (7, 0): "V100",
    (7, 5): "T4",
    (8, 0): "A100",
    (8, 6): "A10, RTX 3090",
    (8, 9): "L4, RTX 4090",
    (9, 0): "H100, H200",
    (10, 0): "B200",
    (12, 0): "RTX 5090",
}


def cuda_capability(device: torch.device | str) -> tuple[int, int] | None:
    """The compute capability of an NVIDIA ``device``; None for the CPU and ROCm GPUs."""
    return _gpu_arch(torch.device(device))[0]


def rule(capability: tuple[int, int] | None) -> dict[str, object]:
    """The course's decisions for an NVIDIA GPU of ``capability`` (None: the CPU), from the
    rule alone: ``{"amp_dtype", "grad_scaler", "fp8", "mx"}`` (see :func:`amp_dtype`,
    :func:`needs_grad_scaler`, :func:`fp8_native`, :func:`mx_native`).

    Taught in course/00_setup.ipynb.
    """
    if capability is None:
        return {"amp_dtype": torch.bfloat16, "grad_scaler": False, "fp8": False, "mx": False}
    dtype = default_amp_dtype("cuda", tuple(capability) >= (8, 0))
    return {
        "amp_dtype": dtype,
        "grad_scaler": needs_grad_scaler(dtype),
        "fp8": tuple(capability) >= (8, 9),
        "mx": tuple(capability) >= (10, 0),
    }


def decisions(device: torch.device | str) -> dict[str, object]:
    """The same four decisions for ``device``, asked of the hardware (what the course runs)."""
    dtype = amp_dtype(device)
    return {
        "amp_dtype": dtype,
        "grad_scaler": needs_grad_scaler(dtype),
        "fp8": fp8_native(device),
        "mx": mx_native(device),
    }


def decision_table(device: torch.device | str | None = None) -> str:
    """One row per GPU generation of :data:`GPU_EXAMPLES` (from :func:`rule`), one for the
    CPU, and one for ``device`` as asked of the hardware (:func:`decisions`).

    Taught in course/00_setup.ipynb.
    """

    def row(name: str, d: dict[str, object]) -> str:
        dtype = str(d["amp_dtype"]).replace("torch.", "")
        flags = "".join(f"{'yes' if d[k] else 'no':>8}" for k in ("grad_scaler", "fp8", "mx"))
        return f"{name:<24}{dtype:>10}{flags}"

    lines = [f"{'device':<24}{'autocast':>10}{'scaler':>8}{'FP8':>8}{'MX':>8}"]
    for cap, names in GPU_EXAMPLES.items():
        lines.append(row(f"sm_{cap[0]}{cap[1]} ({names})", rule(cap)))
    lines.append(row("CPU", rule(None)))
    if device is not None:
        lines.append(row(f"this machine ({torch.device(device)})", decisions(device)))
    return "\n".join(lines)


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a seeded CPU generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class ChapterSetup(NamedTuple):
    """What a chapter's first cell needs: where to run, which autocast dtype, a generator."""

    device: torch.device
    amp_dtype: torch.dtype
    generator: torch.Generator


def setup_chapter(
    seed: int = 0,
    threads: int | None = None,
    device: str | torch.device | None = None,
    reproducible: bool = False,
) -> ChapterSetup:
    """One call at the top of a chapter: pick the device, its autocast dtype, seed everything.

    ``device`` is passed to :func:`pick_device` (``None``: ``$MPCOURSE_DEVICE`` or the first
    GPU, else the CPU); the dtype is :func:`amp_dtype`'s default for it; Python, NumPy and
    torch are seeded with ``seed`` (:func:`seed_everything`, whose generator is returned).
    ``threads`` (a positive int) sets ``torch.set_num_threads`` when the chapter runs on the
    CPU: one thread is faster for tiny tensors on a shared machine, and printed digits do
    not depend on the core count. ``None`` leaves torch's thread count alone.
    ``reproducible=True`` asks, on a GPU, for deterministic cuDNN kernels and no TF32
    (``torch.backends.cudnn.deterministic``, ``allow_tf32 = False`` for cuDNN and cuBLAS),
    so that bit-for-bit comparisons hold there too and an FP32 baseline is really FP32
    (TF32 is chapter 08); it changes nothing on the CPU.

    >>> device, dtype, gen = setup_chapter(seed=0, device="cpu")
    >>> device, dtype
    (device(type='cpu'), torch.bfloat16)

    Taught in course/00_setup.ipynb.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"threads must be None or a positive int, got {threads!r}")
    chosen = pick_device(device)
    if threads is not None and chosen.type == "cpu":
        torch.set_num_threads(threads)
    if reproducible:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    return ChapterSetup(chosen, amp_dtype(chosen), seed_everything(seed))


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on ``device`` (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_dtypes(device: torch.device | str) -> dict[str, bool]:
    """Probe which autocast dtypes really lower a matmul on ``device``.

    Runs a tiny ``a @ b`` under ``torch.autocast`` for each candidate and
    reports whether the result came out in that dtype.
    """
    device = torch.device(device)
    out = {}
    a = torch.ones(8, 8, device=device)
    for name, dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        try:
            with torch.autocast(device.type, dtype=dtype):
                ok = (a @ a).dtype == dtype
        except (RuntimeError, AssertionError):
            ok = False
        out[name] = ok
    return out


def cpuinfo_field(key: str) -> str | None:
    """The first ``key : value`` line of /proc/cpuinfo (Linux), or None."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return None
    m = re.search(rf"^{re.escape(key)}\s*:\s*(.*)$", path.read_text(errors="ignore"), re.M)
    return m.group(1).strip() if m else None


def cpu_features() -> list[str]:
    """Low-precision related CPU flags found in /proc/cpuinfo (Linux), else []."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")
    flags = set((cpuinfo_field("flags") or "").split())
    return [f for f in wanted if f in flags]


def cpu_name() -> str:
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


# What the CPU has in hardware, kept apart from where PyTorch sends each dtype.
# /proc/cpuinfo flag -> what it computes. AVX-NE-CONVERT only converts (no dot product):
# oneDNN's avx2_vnni_2 kernels use it to compute BF16/FP16 layers in FP32 registers.
X86_LOW_PRECISION = {
    "avx512_bf16": "BF16 dot products into FP32 (VDPBF16PS, 32 pairs per instruction)",
    "amx_bf16": "BF16 tile matmuls into FP32 (TDPBF16PS, 16x32 by 32x16 per instruction)",
    "avx512_fp16": "FP16 arithmetic (FMA on 32 FP16 values per instruction)",
    "amx_fp16": "FP16 tile matmuls into FP32 (TDPFP16PS)",
    "avx_ne_convert": "BF16/FP16 <-> FP32 conversions only (no dot product)",
}
ARM_LOW_PRECISION = {  # the "Features" line of an aarch64 /proc/cpuinfo
    "fphp": "FP16 scalar arithmetic (ARMv8.2-FP16)",
    "asimdhp": "FP16 vector arithmetic (ARMv8.2-FP16)",
    "asimdfhm": "FP16 multiply-add into FP32 (FMLAL)",
    "bf16": "BF16 dot products and matmuls into FP32 (BFDOT, BFMMLA; ARMv8.6)",
}
UNKNOWN = "unknown"


def cpu_arch(machine: str | None = None) -> str:
    """``"x86"``, ``"arm"`` or ``"unknown"`` for ``platform.machine()`` (or ``machine``)."""
    machine = (platform.machine() if machine is None else machine).lower()
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "x86"
    if machine in ("aarch64", "arm64", "armv8l"):
        return "arm"
    return UNKNOWN


def cpu_low_precision(cpuinfo: str | None = None, machine: str | None = None) -> dict[str, str]:
    """Which low-precision instructions the CPU has: ``{flag: "yes" | "no" | "unknown"}``.

    Read from /proc/cpuinfo's ``flags`` (x86) or ``Features`` (ARM) line; ``cpuinfo``
    passes that text in instead (tests). The flags are the x86 ones of
    :data:`X86_LOW_PRECISION` or the ARM ones of :data:`ARM_LOW_PRECISION`; where the
    file is missing or unreadable every value is ``"unknown"``, and on another
    architecture the result is ``{"low-precision instructions": "unknown"}``. This is
    the hardware only: whether PyTorch uses it is :func:`cpu_routes`.

    Taught in course/00_setup.ipynb and course/09_speed_and_memory.ipynb.
    """
    arch = cpu_arch(machine)
    if arch == UNKNOWN:
        return {"low-precision instructions": UNKNOWN}
    wanted = X86_LOW_PRECISION if arch == "x86" else ARM_LOW_PRECISION
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="ignore")
        except OSError:
            cpuinfo = ""
    key = "flags" if arch == "x86" else "Features"
    m = re.search(rf"^{key}\s*:\s*(.*)$", cpuinfo, re.M)
    if m is None:
        return dict.fromkeys(wanted, UNKNOWN)
    have = set(m.group(1).split())
    return {flag: "yes" if flag in have else "no" for flag in wanted}


def cpu_routes() -> dict[str, str]:
    """Where PyTorch sends BF16 and FP16 matmuls and convolutions on this CPU.

    ``{"bfloat16": ..., "float16": ...}``, each ``"oneDNN"`` or ``"ATen"`` (or
    ``"unknown"``). PyTorch 2.13 sends a BF16/FP16 convolution to oneDNN when
    ``mkldnn_bf16_device_check()`` / ``mkldnn_fp16_device_check()`` hold
    (aten/src/ATen/native/Convolution.cpp, ``use_mkldnn``), and a matmul when they
    hold and m*n*k > 16^3 (aten/src/ATen/native/mkldnn/Matmul.cpp). The checks
    (aten/src/ATen/native/mkldnn/Utils.h) are, on x86, oneDNN's own ISA test:
    AVX-NE-CONVERT or AVX512-BW/VL/DQ for BF16 (so any AVX-512 server CPU, with or
    without AVX512-BF16), AVX-NE-CONVERT or AVX512-FP16 for FP16; on ARM, the BF16
    extension for BF16 and never for FP16. This asks PyTorch itself
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``, ``..._fp16_...``), so it is what
    runs, not a copy of the rule. Everything else (``"ATen"``) runs PyTorch's
    generic kernels, which convert each element to FP32 and are usually slower than FP32.

    Taught in course/09_speed_and_memory.ipynb.
    """
    routes = {}
    for name in ("bfloat16", "float16"):
        short = "bf16" if name == "bfloat16" else "fp16"
        try:
            enabled = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            check = getattr(torch.ops.mkldnn, f"_is_mkldnn_{short}_supported")
            routes[name] = "oneDNN" if enabled and check() else "ATen"
        except (AttributeError, RuntimeError):
            routes[name] = UNKNOWN
    return routes


def _median_seconds(fn, min_run_time: float) -> float:
    from torch.utils import benchmark

    fn()  # warm-up: oneDNN creates its primitive on the first call
    timer = benchmark.Timer("fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median


def dtype_speed(
    device: torch.device | str = "cpu", size: int = 128, min_run_time: float = 0.01
) -> dict[str, dict[str, float]]:
    """Speed of BF16 and FP16 against FP32 for a matmul and a convolution, forward and backward.

    Returns ``{op: {"bfloat16": t32 / t_bf16, "float16": t32 / t_fp16}}`` for the ops
    ``"matmul forward"``, ``"matmul backward"`` (an ``size x size`` by ``size x size``
    product and the two gradients of it), ``"conv forward"`` and ``"conv backward"``
    (a 3x3 convolution, 16 -> 32 channels, batch 4, 16 x 16 pixels, and the input and
    weight gradients). Every tensor is in the dtype itself (no autocast); on the CPU it runs
    on one thread;
    each time is a median of ``torch.utils.benchmark`` blocks of ``min_run_time``
    seconds, so 2.0 means twice FP32's speed. Machine-dependent: print it, do not compare it.

    Taught in course/00_setup.ipynb and course/09_speed_and_memory.ipynb.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    times: dict[str, dict[torch.dtype, float]] = {}
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        _time_cases(device, size, min_run_time, gen, times)
    finally:
        torch.set_num_threads(threads)
    return {
        op: {str(d).replace("torch.", ""): t[torch.float32] / t[d] for d in t if d != torch.float32}
        for op, t in times.items()
    }


def _speed_cases(device: torch.device, dtype: torch.dtype, size: int, gen) -> dict:
    """The four timed operations of :func:`dtype_speed`, on tensors of ``dtype``."""

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device, dtype).requires_grad_()

    a, b = leaf(size, size), leaf(size, size)
    x, w = leaf(4, 16, 16, 16), leaf(32, 16, 3, 3)
    mm, conv = a @ b, torch.nn.functional.conv2d(x, w, padding=1)
    g_mm, g_conv = torch.ones_like(mm), torch.ones_like(conv)
    return {
        "matmul forward": lambda: a @ b,
        "matmul backward": lambda: torch.autograd.grad(mm, (a, b), g_mm, retain_graph=True),
        "conv forward": lambda: torch.nn.functional.conv2d(x, w, padding=1),
        "conv backward": lambda: torch.autograd.grad(conv, (x, w), g_conv, retain_graph=True),
    }


def _time_cases(device, size, min_run_time, gen, times) -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for op, fn in _speed_cases(device, dtype, size, gen).items():

            def timed(fn=fn) -> None:
                fn()
                synchronize(device)

            times.setdefault(op, {})[dtype] = _median_seconds(timed, min_run_time)


def format_low_precision(
    instructions: dict[str, str], routes: dict[str, str], speed: dict[str, dict[str, float]]
) -> str:
    """The three parts of the CPU's low-precision picture as text: hardware, routes, speed."""
    have = [f for f, v in instructions.items() if v == "yes"]
    missing = [f for f, v in instructions.items() if v != "yes"]
    lines = [
        f"hardware: has {', '.join(have) or 'none of them'}"
        + (f"; lacks or cannot tell: {', '.join(missing)}" if missing else ""),
        "PyTorch sends matmuls/convolutions to: "
        + ", ".join(f"{k} -> {v}" for k, v in routes.items()),
        f"{'speed vs FP32 (higher is faster)':<34}" + "".join(f"{d:>10}" for d in _DTYPE_ORDER),
    ]
    for op, ratios in speed.items():
        lines.append(f"{op:<34}" + "".join(f"{ratios[d]:>9.2f}x" for d in _DTYPE_ORDER))
    return "\n".join(lines)


_DTYPE_ORDER = ("bfloat16", "float16")


def autocast_speed(
    device: torch.device | str, batch: int = 16, min_run_time: float = 0.05
) -> dict[str, float]:
    """Speed of one training step under float16 and bfloat16 autocast relative to FP32.

    The step is forward + backward of a small conv + linear network (the layers of the
    course's ``SimpleModel``) on a ``batch x 3 x 32 x 32`` input; the result is
    ``{"float16": t32 / t16, "bfloat16": t32 / tbf16}`` from median times
    (``torch.utils.benchmark``): 2.0 means twice as fast as FP32, 0.02 fifty times
    slower (emulated). A quick estimate for the doctor; chapter 09 measures properly.
    """
    from torch import nn
    from torch.utils import benchmark

    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 14 * 14, 10)
    ).to(device)
    x = torch.randn(batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    times = {}
    for dtype in (None, torch.float16, torch.bfloat16):

        def step(dtype: torch.dtype | None = dtype) -> None:
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=bool(dtype)):
                loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            synchronize(device)

        step()
        timer = benchmark.Timer("step()", globals={"step": step})
        times[dtype] = timer.blocked_autorange(min_run_time=min_run_time).median
    t32 = times[None]
    return {"float16": t32 / times[torch.float16], "bfloat16": t32 / times[torch.bfloat16]}


def _speed_words(ratio: float) -> str:
    """2.0 -> "2.0x faster than FP32", 0.8 -> "0.80x the speed of FP32", 0.03 -> "33x slower"."""
    if 0.95 <= ratio < 1.05:
        return f"about as fast as FP32 ({ratio:.2f}x)"
    if ratio >= 1:
        return f"{ratio:.1f}x faster than FP32"
    if ratio >= 0.5:
        return f"{ratio:.2f}x the speed of FP32"
    return f"{1 / ratio:.0f}x slower than FP32"


@dataclass
class EnvironmentReport:
    """What this machine can do for mixed precision."""

    torch_version: str
    python_version: str
    device: str
    device_name: str
    cuda_capability: str | None
    amp_dtype: str
    autocast_dtypes: dict[str, bool]
    bf16_supported: bool
    tf32_matmul: bool | None
    tf32_cudnn: bool | None
    float32_matmul_precision: str
    cpu_name: str
    cpu_capability: str
    cpu_features: list[str] = field(default_factory=list)
    threads: int = 1
    step_speed: dict[str, float] = field(default_factory=dict)
    cpu_instructions: dict[str, str] = field(default_factory=dict)
    cpu_routes: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def _shown(self, key: str, value: object) -> str:
        cpu = self.device.startswith("cpu")
        if value is None:
            return "n/a (CPU)" if key == "cuda_capability" else "n/a (CUDA only)"
        if key == "autocast_dtypes":
            words = []
            for name, ok in value.items():  # type: ignore[union-attr]
                speed = self.step_speed.get(name)
                extra = f" ({_speed_words(speed)} in a training step)" if ok and speed else ""
                words.append(f"{name}: {'runs' if ok else 'not available'}{extra}")
            return "; ".join(words)
        if key == "bf16_supported":
            return ("native" if value else "emulated") + (" (AVX512-BF16/AMX)" if cpu else "")
        if key in ("cpu_instructions", "cpu_routes"):
            return ", ".join(f"{k} {v}" for k, v in value.items()) or "not read"  # type: ignore[union-attr]
        if key == "step_speed":
            shown = (f"{k} {v:.2f}x FP32" for k, v in value.items())  # type: ignore[union-attr]
            return ", ".join(shown) or "not measured"
        if isinstance(value, list):
            return ", ".join(value) or "(none detected)"
        return str(value)

    def verdict(self) -> str:
        """One line a student can act on: which recipe to use here, and why."""
        if self.amp_dtype == "bfloat16":
            line = "this machine: use bf16 autocast, no GradScaler"
        else:
            line = "this machine: use fp16 autocast + GradScaler (bf16 is not native here)"
        fp16, bf16 = self.step_speed.get("float16"), self.step_speed.get("bfloat16")
        if fp16 is not None and fp16 < 0.5:
            why = " (PyTorch runs FP16 in its generic kernels)"
            why = why if self.cpu_routes.get("float16") == "ATen" else ""
            line += f"; FP16 is slow here{why}: a training step is {1 / fp16:.0f}x slower"
        if bf16 is not None and self.amp_dtype == "bfloat16":
            line += f"; a small bf16 training step here is {_speed_words(bf16)}"
        return line

    def __str__(self) -> str:
        shown = {k: v for k, v in self.as_dict().items() if k != "step_speed"}
        width = max(len(k) for k in shown)
        lines = [f"{key:<{width}}  {self._shown(key, value)}" for key, value in shown.items()]
        return "\n".join(lines + ["", self.verdict()])


def environment_report(
    device: torch.device | str | None = None, measure: bool = True
) -> EnvironmentReport:
    """Collect the environment report printed by ``python -m mpcourse doctor``.

    ``measure=True`` also times a small training step per dtype (:func:`autocast_speed`,
    about a second) so that the verdict can say whether FP16/BF16 are fast or emulated here.
    """
    device = pick_device(device)
    cuda = device.type == "cuda"
    if cuda:
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        capability = f"sm_{major}{minor}"
        tf32_matmul = torch.backends.cuda.matmul.allow_tf32
        tf32_cudnn = torch.backends.cudnn.allow_tf32
    else:
        name, capability, tf32_matmul, tf32_cudnn = cpu_name(), None, None, None
    return EnvironmentReport(
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        device=str(device),
        device_name=name,
        cuda_capability=capability,
        amp_dtype=str(amp_dtype(device)).replace("torch.", ""),
        autocast_dtypes=autocast_dtypes(device),
        bf16_supported=bf16_native(device),
        tf32_matmul=tf32_matmul,
        tf32_cudnn=tf32_cudnn,
        float32_matmul_precision=torch.get_float32_matmul_precision(),
        cpu_name=cpu_name(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cpu_features=cpu_features(),
        threads=torch.get_num_threads(),
        step_speed=autocast_speed(device) if measure else {},
        cpu_instructions=cpu_low_precision(),
        cpu_routes=cpu_routes(),
    )
