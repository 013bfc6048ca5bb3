"""Which environment produced a notebook's committed outputs, and does this one match?

The course's notebooks are committed executed. Their printed numbers are exact in
the environment that built them, but the last digits of a float32 training run
depend on the kernels that ran: the torch release and build, and the CPU's
instruction set (oneDNN and MKL pick different GEMM kernels on AVX2, AVX-512,
AVX512-BF16 or AMX machines, and on Intel and AMD). So ``tools/build_notebook.py``
records :func:`environment_key` in each notebook's metadata
(``metadata["mpcourse"]["built_with"]``), and the test run (``conftest.py``)
compares outputs strictly only where :func:`environment_key` here equals the
recorded one. Elsewhere it runs the notebook in nbval's lax mode: every cell still
runs and every ``assert`` in it still holds or fails, only the printed digits are
not compared.

Taught in course/00_setup.ipynb (how the course is tested).
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Mapping
from typing import Any

import torch

from .device import cpu_features, cpuinfo_field

METADATA_KEY = "mpcourse"
BUILT_WITH = "built_with"


def _cpu_vendor() -> str:
    return cpuinfo_field("vendor_id") or platform.processor() or "unknown"


def environment_key() -> dict[str, Any]:
    """What decides the last digits of the course's outputs on this machine.

    The torch release with its build tag (``2.13.0+cpu``), the Python minor
    version, the CPU architecture, vendor, the kernel level torch dispatches to
    (``torch.backends.cpu.get_cpu_capability()``) and the low-precision CPU
    flags, and whether a CUDA GPU is present (the notebooks then run there).
    """
    return {
        "torch": torch.__version__,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "machine": platform.machine(),
        "cpu_vendor": _cpu_vendor(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_features": cpu_features(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def recorded_key(notebook: Mapping[str, Any]) -> dict[str, Any] | None:
    """The key a built notebook (a dict as nbformat reads it) carries, or None."""
    return notebook.get("metadata", {}).get(METADATA_KEY, {}).get(BUILT_WITH)


def record_key(notebook: Any) -> None:
    """Store this environment's key in a notebook's metadata (done by the build tool)."""
    notebook.metadata.setdefault(METADATA_KEY, {})[BUILT_WITH] = environment_key()


def describe(key: Mapping[str, Any] | None) -> str:
    """One short phrase for a key, for the test run's notice."""
    if key is None:
        return "an unrecorded environment"
    where = key.get("cuda") or (
        f"{key.get('cpu_vendor')} {key.get('cpu_capability')} CPU "
        f"({'+'.join(key.get('cpu_features') or []) or 'no AVX2'})"
    )
    return f"torch {key.get('torch')}, Python {key.get('python')}, {where}"


def differences(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """Names of the fields that differ (all of them when nothing was recorded)."""
    if recorded is None:
        return ["unrecorded"]
    return [name for name in current if recorded.get(name) != current[name]]
