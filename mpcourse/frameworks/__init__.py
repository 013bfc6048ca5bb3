"""What a framework's precision flag really does, measured through the real library.

``probe(framework, setting)`` trains a tiny model for two optimizer steps through the
library itself (Hugging Face ``Trainer``, Accelerate, Lightning, DeepSpeed, PEFT) on the
course's device (``mpcourse.device.pick_device()``) and reports what it saw, not what
the documentation says: a global forward hook records the output dtype of every
``nn.Linear`` call (and whether ``torch.autocast`` was on there), the trained objects
give the parameter dtype, the dtype of the tensors the optimizer updates and the loss
scaler that ran. The row's fields are defined in :mod:`mpcourse.frameworks._harness`.

In the course's vocabulary (``mpcourse.precision``) a flag is one of:

* **AMP** (chapters 06/07): FP32 parameters, 16-bit compute under ``torch.autocast``,
  a ``GradScaler`` for FP16: ``param = FP32``, ``compute in {FP16, BF16}``, autocast on;
* **pure 16-bit** (chapters 03 and 14): ``param = compute = FP16/BF16``, no autocast,
  no FP32 copy anywhere;
* **16-bit with FP32 master weights** (chapter 04): 16-bit parameters, the optimizer
  updates an FP32 copy (``optimizer_dtype = FP32``, ``param_dtype`` 16-bit);
* **FP32**: everything FP32, whatever the flag was called.

Taught in course/17_frameworks.ipynb.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import torch

from ..device import pick_device
from ._harness import quiet
from .platforms import FP32_REASONS, PLATFORMS, platform_table, trainer_fp32_reason
from .scalers import compare_scalers, format_scalers

__all__ = [
    "SETTINGS",
    "PIP",
    "probe",
    "installed",
    "format_rows",
    "compare_scalers",
    "format_scalers",
    "PLATFORMS",
    "platform_table",
    "trainer_fp32_reason",
    "FP32_REASONS",
    "recipe_of",
    "show_source",
    "lora_model",
]

SETTINGS: dict[str, tuple[str, ...]] = {
    "transformers": (
        "fp32", "fp16", "bf16", "tf32", "bf16_full_eval", "dtype=bfloat16", "dtype=float16",
    ),
    "accelerate": ("no", "fp16", "bf16", "fp8"),
    "lightning": (
        "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "transformer-engine",
    ),
    "deepspeed": ("fp32", "fp16", "bf16", "torch_autocast"),
    "peft": ("bf16-base", "fp16-base", "fp16-base-no-upcast"),
}  # fmt: skip
PIP = {name: f"pip install {name}" for name in SETTINGS}


def installed(framework: str) -> bool:
    """Whether ``framework``'s package can be imported here.

    Taught in course/17_frameworks.ipynb.
    """
    _check_framework(framework)
    return importlib.util.find_spec(framework) is not None


def _check_framework(framework: object) -> None:
    if not isinstance(framework, str) or framework not in SETTINGS:
        raise ValueError(
            f"unknown framework {framework!r}: use one of {', '.join(map(repr, SETTINGS))}"
        )


def _runner(framework: str) -> Callable[[str, torch.device], dict[str, Any]]:
    from . import _hf, _others

    return {
        "transformers": _hf.run_transformers,
        "accelerate": _hf.run_accelerate,
        "peft": _hf.run_peft,
        "lightning": _others.run_lightning,
        "deepspeed": _others.run_deepspeed,
    }[framework]


_EMPTY = dict.fromkeys(
    ("param_dtype", "compute_dtype", "output_dtype", "loss_dtype", "loss_scaler",
     "master_weights", "optimizer_dtype", "autocast"),
)  # fmt: skip


def probe(
    framework: str, setting: str, *, device: torch.device | str | None = None
) -> dict[str, Any]:
    """Run two optimizer steps of a tiny model through ``framework`` with ``setting`` and
    return what was measured: ``param_dtype``, ``compute_dtype``, ``output_dtype``,
    ``loss_dtype`` (torch dtypes), ``loss_scaler`` (class name or None),
    ``master_weights`` (bool), plus ``optimizer_dtype``, ``autocast``, ``linears``,
    ``messages`` (the library's precision-related warnings and log lines) and ``error``
    (``"Type: message"`` when the library refused the setting here; the dtypes are then
    None). Hugging Face libraries run offline; nothing is written into the working folder.

    Raises ``ValueError`` for an unknown framework or setting (naming the accepted ones)
    and ``ImportError`` with the pip command when the framework is not installed.

    Taught in course/17_frameworks.ipynb.
    """
    _check_framework(framework)
    if setting not in SETTINGS[framework]:
        raise ValueError(
            f"unknown {framework} setting {setting!r}: use one of "
            f"{', '.join(map(repr, SETTINGS[framework]))}"
        )
    if not installed(framework):
        raise ImportError(f"{framework} is not installed here: {PIP[framework]}")
    device = pick_device(device)
    messages: list[str] = []
    result: dict[str, Any] = {"framework": framework, "setting": setting}
    tf32 = getattr(torch.backends, "fp32_precision", None), torch.get_float32_matmul_precision()
    try:
        with quiet(messages), torch.random.fork_rng(devices=[]):
            result.update(_runner(framework)(setting, device))
        result["error"] = None
    except Exception as err:  # noqa: BLE001 - the library refusing a setting is a result
        result.update(_EMPTY, linears=[], error=f"{type(err).__name__}: {err}".split("\n")[0])
    finally:  # the Trainer's tf32 flag switches TF32 on for the whole process: undo it
        if tf32[0] is not None:
            torch.backends.fp32_precision = tf32[0]
        torch.set_float32_matmul_precision(tf32[1])
    result["messages"] = messages
    return result


def _short(value: Any) -> str:
    if isinstance(value, torch.dtype):
        return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(
            value, str(value).replace("torch.", "")
        )
    if value is None:
        return "-"
    return str(value)


def format_rows(rows: list[dict[str, Any]], width: int = 60) -> str:
    """A fixed-width text table of probe rows (dtypes as fp32/fp16/bf16, ``-`` for None);
    a refused setting shows its error, cut to ``width`` characters.

    Taught in course/17_frameworks.ipynb.
    """
    cols = ("param_dtype", "compute_dtype", "output_dtype", "loss_dtype", "loss_scaler",
            "master_weights")  # fmt: skip
    heads = ("framework", "setting", "param", "compute", "output", "loss", "scaler", "master",
             "recipe")  # fmt: skip
    lines = []
    for r in rows:
        if r.get("error"):
            cells = [r["framework"], r["setting"], "refused: " + r["error"][:width]]
        else:
            cells = [r["framework"], r["setting"]] + [_short(r[c]) for c in cols]
            cells.append(_short(recipe_of(r)))
        lines.append(cells)
    widths = [
        max([len(h)] + [len(c[i]) for c in lines if len(c) > 3 or i < 2])
        for i, h in enumerate(heads)
    ]
    out = ["  ".join(h.ljust(w) for h, w in zip(heads, widths)).rstrip()]
    for cells in lines:
        if len(cells) == 3:
            out.append("  ".join([cells[0].ljust(widths[0]), cells[1].ljust(widths[1]), cells[2]]))
        else:
            out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return "\n".join(out)


_BITS = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def recipe_of(r: dict[str, Any]) -> str | None:
    """The course's name for what a probe row measured (None for a refused setting):
    ``fp32``; ``amp-fp16``/``amp-bf16`` (FP32 parameters, autocast: chapters 06/07);
    ``master-fp16``/``master-bf16`` (16-bit parameters, the optimizer updates an FP32
    copy: chapter 04); ``pure-fp16``/``pure-bf16`` (16-bit everywhere: chapters 03, 14);
    ``lora-fp32-on-<base>`` (FP32 adapters on a frozen 16-bit base: PEFT).

    Taught in course/17_frameworks.ipynb.
    """
    if r.get("error"):
        return None
    param, compute, opt = r["param_dtype"], r["compute_dtype"], r["optimizer_dtype"]
    if param == torch.float32 and r.get("base_dtype") in _BITS:
        return f"lora-fp32-on-{_BITS[r['base_dtype']]}"
    if param == torch.float32:
        return f"amp-{_BITS[compute]}" if r["autocast"] in _BITS else "fp32"
    return f"{'master' if opt == torch.float32 else 'pure'}-{_BITS[param]}"


def show_source(module: str, needle: str, after: int = 0) -> str:
    """``file:line: text`` of the first line of the installed ``module`` containing
    ``needle`` (and ``after`` more lines), the path relative to site-packages: the chapter's
    citations, read from the versions installed here. Raises ``LookupError`` if absent.

    Taught in course/17_frameworks.ipynb.
    """
    import importlib
    import inspect
    from pathlib import Path

    mod = importlib.import_module(module)
    path = Path(inspect.getfile(mod))
    lines = path.read_text().splitlines()
    top = module.split(".")[0]
    rel = path.relative_to(Path(importlib.import_module(top).__file__).parent.parent)
    for i, line in enumerate(lines):
        if needle in line:
            shown = lines[i : i + 1 + after]
            return "\n".join(f"{rel}:{i + 1 + k}: {s.strip()}" for k, s in enumerate(shown))
    raise LookupError(f"{needle!r} is not in {rel}: the installed version differs")


def lora_model(setting: str, device: torch.device | str | None = None) -> torch.nn.Module:
    """The tiny LoRA model of ``probe("peft", setting)``, built quietly on ``device``.

    Taught in course/17_frameworks.ipynb.
    """
    from . import _hf

    with quiet([]):
        return _hf.lora_model(setting, pick_device(device))
