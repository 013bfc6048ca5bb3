"""What every probe shares: a tiny model, hooks that record dtypes, quiet capture of the
libraries' messages, and the measured row.

A *row* is a dict (the contract of ``mpcourse.frameworks.probe``):

* ``param_dtype``: dtype of the trainable parameters after the steps;
* ``compute_dtype``: output dtype of the probed Linear inside the forward
  (``autocast`` says whether ``torch.autocast`` was on there, and in which dtype);
* ``output_dtype`` / ``loss_dtype``: what the framework handed back to the step;
* ``optimizer_dtype``: dtype of the tensors the optimizer really updates;
* ``loss_scaler``: class name of the loss scaler that ran (None when none did);
* ``master_weights``: the optimizer updates FP32 tensors while the probed Linear
  computes in 16 bits (autocast's FP32 parameters, or a separate FP32 copy);
* ``linears``: ``(class name, output dtype)`` of every Linear call of the first forward;
* ``messages``: the precision-related warnings and log lines the library emitted;
* ``error``: ``"ExceptionName: message"`` when the library refused the setting.

Taught in course/17_frameworks.ipynb.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

_KEYWORDS = re.compile(
    r"precision|fp16|bf16|float16|bfloat16|\bhalf\b|\bamp\b|scal|dtype|fp8", re.I
)
_LEVEL = re.compile(r"^(DEBUG|INFO|WARNING|ERROR): ")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def tiny_net(seed: int = 0) -> nn.Sequential:
    """Linear 16->32, ReLU, Linear 32->32 (the probed one), ReLU, Linear 32->16.

    The middle Linear has no first/last role, so FP8 converters that skip the first and
    last layers (Accelerate's torchao recipe) convert it.
    """
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16)
    )


def tiny_batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, generator=g), torch.randint(0, 16, (n,), generator=g)


@dataclass
class Record:
    """Filled during a probe: the Linear calls seen, and what the runner reports."""

    device_type: str
    linears: list[tuple[nn.Module, str, torch.dtype, torch.dtype | None]] = field(
        default_factory=list
    )
    output_dtype: torch.dtype | None = None
    loss_dtype: torch.dtype | None = None

    def hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(module, nn.Linear) and isinstance(output, torch.Tensor):
            on = torch.is_autocast_enabled(self.device_type)
            low = torch.get_autocast_dtype(self.device_type) if on else None
            self.linears.append((module, type(module).__name__, output.dtype, low))

    def first_call_of(self, module: nn.Module) -> tuple[torch.dtype, torch.dtype | None]:
        for mod, _, dtype, low in self.linears:
            if mod is module:
                return dtype, low
        raise RuntimeError(f"the probed {type(module).__name__} never ran in the forward")


@contextlib.contextmanager
def recording(device_type: str) -> Iterator[Record]:
    """A global forward hook on every module: it sees Linear layers that a framework
    swapped in (torchao's Float8Linear) as well as the model's own."""
    rec = Record(device_type)
    handle = nn.modules.module.register_module_forward_hook(rec.hook)
    try:
        yield rec
    finally:
        handle.remove()


@contextlib.contextmanager
def quiet(messages: list[str]) -> Iterator[None]:
    """Capture what the libraries print, warn and log during a probe; keep in ``messages``
    the lines about precision (deprecations and unrelated chatter are dropped)."""
    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    keep = _Keep(level=logging.INFO)
    loggers = [logging.getLogger()] + [
        lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    muted = [(h, h.level) for lg in loggers for h in lg.handlers]
    for h, _ in muted:
        h.setLevel(logging.CRITICAL + 1)
    added = [lg for lg in loggers if lg is logging.getLogger() or not lg.propagate]
    for lg in added:
        lg.addHandler(keep)
    old_env = {k: os.environ.get(k) for k in OFFLINE_ENV}
    os.environ.update(OFFLINE_ENV)
    sink = io.StringIO()
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            warnings.simplefilter("always")
            yield
    finally:
        for lg in logging.root.manager.loggerDict.values():  # handlers created in the block
            for h in getattr(lg, "handlers", []):
                if isinstance(h, logging.StreamHandler) and h.stream is sink:
                    h.setStream(sys.stderr)
        for lg in added:
            lg.removeHandler(keep)
        for h, level in muted:
            h.setLevel(level)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for w in caught:
            if not issubclass(w.category, (DeprecationWarning, FutureWarning)):
                records.append(str(w.message))
        for line in records + sink.getvalue().splitlines():
            line = _LEVEL.sub("", " ".join(line.split()))
            if line and _KEYWORDS.search(line) and line not in messages:
                messages.append(line)


def scaler_that_ran(scaler: Any) -> str | None:
    """Class name of a ``torch.amp.GradScaler``-like object if it scaled a loss, else None
    (GradScaler creates its scale tensor lazily, at the first ``scale()``)."""
    if scaler is None:
        return None
    if getattr(scaler, "_enabled", True) and getattr(scaler, "_scale", None) is not None:
        return type(scaler).__name__
    return None


def optimizer_dtype(optimizer: Any) -> torch.dtype:
    """dtype of the first tensor the optimizer updates (unwrapping framework wrappers)."""
    inner = optimizer
    for attr in ("optimizer", "_optimizer"):
        while hasattr(inner, attr) and not hasattr(inner, "param_groups"):
            inner = getattr(inner, attr)
    return inner.param_groups[0]["params"][0].dtype


def row(
    rec: Record,
    probed: nn.Module,
    *,
    params: list[torch.nn.Parameter],
    opt_dtype: torch.dtype,
    loss_scaler: str | None,
) -> dict[str, Any]:
    compute, low = rec.first_call_of(probed)
    trainable = [p for p in params if p.requires_grad]
    sixteen = (torch.float16, torch.bfloat16)
    return {
        "param_dtype": trainable[0].dtype,
        "compute_dtype": compute,
        "output_dtype": rec.output_dtype,
        "loss_dtype": rec.loss_dtype,
        "loss_scaler": loss_scaler,
        "master_weights": opt_dtype == torch.float32 and compute in sixteen,
        "optimizer_dtype": opt_dtype,
        "autocast": low,
        "linears": _first_calls(rec),
    }


def _first_calls(rec: Record) -> list[tuple[str, torch.dtype]]:
    seen: set[int] = set()
    out = []
    for mod, name, dtype, _ in rec.linears:
        if id(mod) not in seen:
            seen.add(id(mod))
            out.append((name, dtype))
    return out
