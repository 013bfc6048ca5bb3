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


def amp_dtype(device: torch.device | str, prefer: str | torch.dtype | None = None) -> torch.dtype:
    """The autocast dtype to use on ``device``.

    CUDA: bfloat16 where the GPU computes it natively (:func:`bf16_native`: Ampere and
    newer, no GradScaler needed), float16 with a GradScaler otherwise (the original AMP
    recipe, which chapter 07 still runs explicitly). CPU: bfloat16 (FP16 autocast runs on
    a CPU but is emulated and much slower; ``python -m mpcourse doctor`` measures it).
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
    seed: int = 0, threads: int | None = None, device: str | torch.device | None = None
) -> ChapterSetup:
    """One call at the top of a chapter: pick the device, its autocast dtype, seed everything.

    ``device`` is passed to :func:`pick_device` (``None``: ``$MPCOURSE_DEVICE`` or the first
    GPU, else the CPU); the dtype is :func:`amp_dtype`'s default for it; Python, NumPy and
    torch are seeded with ``seed`` (:func:`seed_everything`, whose generator is returned).
    ``threads`` (a positive int) sets ``torch.set_num_threads`` when the chapter runs on the
    CPU: one thread is faster for tiny tensors on a shared machine, and printed digits do
    not depend on the core count. ``None`` leaves torch's thread count alone.

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
    return f"{ratio:.1f}x faster than FP32" if ratio >= 1 else f"{1 / ratio:.0f}x slower than FP32"


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
            line += f"; FP16 has no fast kernels here: a training step is {1 / fp16:.0f}x slower"
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
    )
