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


def amp_dtype(device: torch.device | str, prefer: str | torch.dtype | None = None) -> torch.dtype:
    """The autocast dtype to use on ``device``.

    float16 on CUDA (with a GradScaler, as in the original AMP recipe);
    bfloat16 on the CPU, where it is the fast and well-supported choice.
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
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def needs_grad_scaler(dtype: torch.dtype) -> bool:
    """float16 needs loss scaling (narrow range); bfloat16 does not (FP32's range)."""
    return dtype == torch.float16


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a seeded CPU generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


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


def cpu_features() -> list[str]:
    """Low-precision related CPU flags found in /proc/cpuinfo (Linux), else []."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return []
    text = path.read_text(errors="ignore")
    m = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    flags = set(m.group(1).split()) if m else set()
    return [f for f in wanted if f in flags]


def cpu_name() -> str:
    path = Path("/proc/cpuinfo")
    if path.exists():
        m = re.search(r"^model name\s*:\s*(.*)$", path.read_text(errors="ignore"), re.M)
        if m:
            return m.group(1).strip()
    return platform.processor() or platform.machine()


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

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        width = max(len(k) for k in self.as_dict())
        lines = []
        for key, value in self.as_dict().items():
            if isinstance(value, dict):
                value = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in value.items())
            elif isinstance(value, list):
                value = ", ".join(value) or "(none detected)"
            lines.append(f"{key:<{width}}  {value}")
        return "\n".join(lines)


def environment_report(device: torch.device | str | None = None) -> EnvironmentReport:
    """Collect the environment report printed by ``python -m mpcourse doctor``."""
    device = pick_device(device)
    cuda = device.type == "cuda"
    if cuda:
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        capability = f"sm_{major}{minor}"
        bf16 = torch.cuda.is_bf16_supported()
        tf32_matmul = torch.backends.cuda.matmul.allow_tf32
        tf32_cudnn = torch.backends.cudnn.allow_tf32
    else:
        name, capability, tf32_matmul, tf32_cudnn = cpu_name(), None, None, None
        bf16 = autocast_dtypes(device)["bfloat16"]
    return EnvironmentReport(
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        device=str(device),
        device_name=name,
        cuda_capability=capability,
        amp_dtype=str(amp_dtype(device)).replace("torch.", ""),
        autocast_dtypes=autocast_dtypes(device),
        bf16_supported=bool(bf16),
        tf32_matmul=tf32_matmul,
        tf32_cudnn=tf32_cudnn,
        float32_matmul_precision=torch.get_float32_matmul_precision(),
        cpu_name=cpu_name(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cpu_features=cpu_features(),
        threads=torch.get_num_threads(),
    )
