"""Measure what mixed precision buys here: matmul throughput, step time, memory.

* :func:`matmul_tflops`: $2n^3$ FLOPs of an ``n x n`` matmul divided by its
  median time, per mode: ``fp32`` (TF32 off), ``tf32`` (CUDA only), ``fp16``,
  ``bf16``.
* :func:`train_step`: one SGD step (forward, backward, update) of the seed's
  ``SimpleModel`` or of the matmul-heavy :class:`mpcourse.costs.WideMLP`, in
  one of the :mod:`mpcourse.precision` recipes ``fp32`` (TF32 off),
  ``amp-fp16`` (autocast + GradScaler) or ``amp-bf16`` (autocast): median time,
  bytes of activations saved for backward (any
  device, :func:`mpcourse.costs.saved_activation_bytes`), parameter +
  gradient bytes, and the peak of allocated memory (CUDA only).
* ``python -m mpcourse bench``: both, printed as tables (each naming the
  command and sizes that produced it) and written to
  ``results/bench-<device>.json`` with the machine, torch version and date;
  ``--quick`` (a smoke test) writes ``results/bench-<device>-quick.json``, so it
  never replaces full results.

Timing uses :func:`mpcourse.timing.autorange` (``torch.utils.benchmark.Timer``:
warm-up, then repeated blocks, synchronising CUDA around each block), with all of
this machine's threads.

Taught in course/09_speed_and_memory.ipynb.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import platform
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .costs import MODELS, LiveTensorBytes, WideMLP, saved_activation_bytes
from .device import cpu_features, cpu_name, pick_device, synchronize
from .models import SimpleModel
from .precision import autocast, make_scaler
from .timing import autorange

__all__ = [
    "MATMUL_MODES",
    "STEP_MODES",
    "MatmulResult",
    "StepResult",
    "tf32_enabled",
    "matmul_tflops",
    "train_step",
    "preset",
    "machine_info",
    "run_benchmark",
    "format_tables",
    "evaluate_goals",
    "main",
]

MATMUL_MODES = ("fp32", "tf32", "fp16", "bf16")
STEP_MODES = ("fp32", "amp-fp16", "amp-bf16")  # recipes of mpcourse.precision
# matmul modes are dtypes (and TF32, a math mode of FP32 matmuls), not training recipes
_DTYPE = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


@dataclass
class MatmulResult:
    """One matmul measurement; ``tflops`` is None when the mode is not available here.

    Taught in course/09_speed_and_memory.ipynb.
    """

    mode: str
    n: int
    seconds: float | None
    tflops: float | None
    note: str = ""
    quartiles_seconds: tuple[float, float] | None = None  # 25th/75th percentile of the blocks


@dataclass
class StepResult:
    """One training-step measurement (bytes are None where they cannot be measured).

    ``peak_memory_bytes`` is CUDA's allocator peak (None elsewhere);
    ``peak_tensor_bytes`` the peak of live tensor bytes counted by
    :class:`mpcourse.costs.LiveTensorBytes` (any device).

    Taught in course/09_speed_and_memory.ipynb.
    """

    model: str
    mode: str
    batch: int
    seconds: float
    saved_activation_bytes: int
    param_grad_bytes: int
    peak_memory_bytes: int | None
    peak_tensor_bytes: int = 0
    quartiles_seconds: tuple[float, float] | None = None  # 25th/75th percentile of the blocks


@contextlib.contextmanager
def tf32_enabled(enabled: bool) -> Iterator[None]:
    """Set both TF32 switches for CUDA matmuls (and restore them afterwards).

    ``torch.backends.cuda.matmul.allow_tf32`` and
    ``torch.set_float32_matmul_precision("high" | "highest")``; cuDNN
    convolutions follow ``torch.backends.cudnn.allow_tf32``.

    Taught in course/09_speed_and_memory.ipynb.
    """
    old = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old[:2]
        torch.set_float32_matmul_precision(old[2])


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}: choose from {', '.join(choices)}")


def matmul_tflops(
    n: int, mode: str, device: torch.device | str = "cpu", min_run_time: float = 0.1
) -> MatmulResult:
    """Throughput of ``a @ b`` for ``n x n`` matrices: $2n^3 / t$ in TFLOP/s.

    ``tf32`` needs a CUDA GPU (TF32 is a tensor-core mode); on the CPU it is
    reported as not available rather than measured.

    Taught in course/09_speed_and_memory.ipynb.
    """
    _check_choice(mode, MATMUL_MODES, "matmul mode")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"matrix size n must be a positive int, got {n!r}")
    device = torch.device(device)
    if mode == "tf32" and device.type != "cuda":
        return MatmulResult(mode, n, None, None, "TF32 is a CUDA tensor-core mode")
    gen = torch.Generator().manual_seed(n)
    a, b = (torch.randn(n, n, generator=gen).to(device, _DTYPE[mode]) for _ in range(2))
    with tf32_enabled(mode == "tf32"):
        t, quartiles = autorange(lambda: a @ b, min_run_time)
    return MatmulResult(mode, n, t, 2 * n**3 / t / 1e12, quartiles_seconds=quartiles)


def _model_and_batch(name: str, batch: int, dim: int, depth: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    if name == "simple":
        model: nn.Module = SimpleModel()
        x = torch.randn(batch, 3, 32, 32, generator=gen)
    else:
        model = WideMLP(dim, depth)
        x = torch.randn(batch, dim, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    return model.to(device), x.to(device), y.to(device)


def train_step(
    model_name: str,
    mode: str,
    device: torch.device | str = "cpu",
    batch: int = 64,
    dim: int = 512,
    depth: int = 2,
    min_run_time: float = 0.2,
) -> StepResult:
    """Time one SGD step of ``"simple"`` (SimpleModel) or ``"mlp"`` (WideMLP) in ``mode``.

    ``fp32`` runs with TF32 off; ``amp-fp16`` is autocast(float16) with a
    GradScaler; ``amp-bf16`` is autocast(bfloat16) without one. After the
    timed runs, one more step each counts the bytes saved for backward, the
    CUDA allocator's peak (CUDA only) and the peak of live tensor bytes.
    Not a training loop (:func:`mpcourse.train.train` is chapter 07's): the
    same batch is stepped again and again, with no data loader, evaluation or
    history, so that only the step's own time and memory are measured.

    Taught in course/09_speed_and_memory.ipynb.
    """
    _check_choice(model_name, MODELS, "model")
    _check_choice(mode, STEP_MODES, "training mode")
    device = torch.device(device)
    torch.manual_seed(0)
    model, x, y = _model_and_batch(model_name, batch, dim, depth, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = make_scaler(mode, device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(mode, device):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    with tf32_enabled(False):
        seconds, quartiles = autorange(step, min_run_time)
        opt.zero_grad(set_to_none=True)
        peak = None
        if device.type == "cuda":
            synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        with saved_activation_bytes(model) as saved:
            step()
        if device.type == "cuda":
            synchronize(device)
            peak = int(torch.cuda.max_memory_allocated(device))
        opt.zero_grad(set_to_none=True)
        with LiveTensorBytes([*model.parameters(), x, y]) as live:
            step()
    param_grad = sum(2 * p.numel() * p.element_size() for p in model.parameters())
    return StepResult(
        model_name, mode, batch, seconds, saved["bytes"], param_grad, peak, live.peak, quartiles
    )


def machine_info(device: torch.device | str) -> dict[str, Any]:
    """Where the numbers come from: device, its name, CPU, torch/CUDA versions, date (UTC).

    Taught in course/09_speed_and_memory.ipynb.
    """
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "device": device.type,
        "device_name": name,
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _slug(info: dict[str, Any]) -> str:
    if info["device"] == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", info["device_name"].lower()).strip("-") or "cuda"


def run_benchmark(
    device: torch.device | str,
    sizes: Sequence[int],
    steps: Sequence[tuple[str, int, int, int]],
    min_run_time: float = 0.1,
    fp16_max_n: int | None = None,
) -> dict[str, Any]:
    """Run every matmul size x mode and every (model, batch, dim, depth) x step mode.

    ``fp16_max_n`` skips FP16 matmuls above that size (on a CPU without FP16
    units they are emulated and take seconds each).

    Taught in course/09_speed_and_memory.ipynb.
    """
    device = torch.device(device)
    matmuls = []
    for n in sizes:
        for mode in MATMUL_MODES:
            if mode == "fp16" and fp16_max_n is not None and n > fp16_max_n:
                matmuls.append(MatmulResult(mode, n, None, None, f"skipped: n > {fp16_max_n}"))
            else:
                matmuls.append(matmul_tflops(n, mode, device, min_run_time))
    results = [
        train_step(model, mode, device, batch, dim, depth, 2 * min_run_time)
        for model, batch, dim, depth in steps
        for mode in STEP_MODES
    ]
    return {
        "machine": machine_info(device),
        "matmul": [asdict(r) for r in matmuls],
        "train_step": [asdict(r) for r in results],
    }


def format_tables(result: dict[str, Any]) -> str:
    """The result as two plain-text tables (matmul TFLOP/s; step time and memory).

    Taught in course/09_speed_and_memory.ipynb.
    """
    m = result["machine"]
    sizes = ", ".join(str(n) for n in sorted({r["n"] for r in result["matmul"]}))
    shapes = "; ".join(
        dict.fromkeys(f"{r['model']} batch {r['batch']}" for r in result["train_step"])
    )
    lines = [
        f"{m['device_name']} | torch {m['torch']} | {m['date']}",
        f"command: {result.get('command', '(not recorded)')}",
        f"sizes: matmul n = {sizes} | train step: {shapes}",
        "",
        f"{'n':>6} " + " ".join(f"{mode:>10}" for mode in MATMUL_MODES) + "   (TFLOP/s)",
    ]
    for n in sorted({r["n"] for r in result["matmul"]}):
        row = {r["mode"]: r["tflops"] for r in result["matmul"] if r["n"] == n}
        cells = [
            f"{row[k]:>10.3f}" if row.get(k) is not None else f"{'n/a':>10}" for k in MATMUL_MODES
        ]
        lines.append(f"{n:>6} " + " ".join(cells))
    lines += [
        "",
        f"{'model':<7} {'mode':<9} {'batch':>6} {'ms/step':>9} {'speedup':>8} "
        f"{'saved act MiB':>14} {'tensors peak MiB':>17} {'CUDA peak MiB':>14}",
    ]
    base: dict[str, float] = {}
    for r in result["train_step"]:
        base.setdefault(r["model"], r["seconds"])
        peak = (
            f"{r['peak_memory_bytes'] / 2**20:>14.1f}" if r["peak_memory_bytes"] else f"{'n/a':>14}"
        )
        tensors = r.get("peak_tensor_bytes")  # absent in files written before it was measured
        tensors_text = f"{tensors / 2**20:>17.2f}" if tensors else f"{'n/a':>17}"
        lines.append(
            f"{r['model']:<7} {r['mode']:<9} {r['batch']:>6} {r['seconds'] * 1e3:>9.2f} "
            f"{base[r['model']] / r['seconds']:>7.2f}x "
            f"{r['saved_activation_bytes'] / 2**20:>14.2f} {tensors_text} {peak}"
        )
    return "\n".join(lines)


def evaluate_goals(
    result: dict[str, Any],
    peak_bf16_tflops: float = 790.0,
    min_speedup: float = 3.0,
    max_memory_ratio: float = 0.65,
    min_peak_fraction: float = 0.8,
) -> list[tuple[str, bool]]:
    """Check a GPU result against the goals: (description with the measured value, met?).

    Goals: the WideMLP AMP step (best of FP16/BF16) at least ``min_speedup``
    times faster than FP32 with TF32 off; its peak memory at most
    ``max_memory_ratio`` of FP32's; BF16 matmul at the largest size at least
    ``min_peak_fraction`` of ``peak_bf16_tflops``.

    Taught in course/09_speed_and_memory.ipynb.
    """
    steps = {r["mode"]: r for r in result["train_step"] if r["model"] == "mlp"}
    if "fp32" not in steps or steps["fp32"].get("peak_memory_bytes") is None:
        raise ValueError("evaluate_goals needs a CUDA result with an 'mlp' fp32 step")
    fp32 = steps["fp32"]
    amp = min(
        (steps[k] for k in ("amp-fp16", "amp-bf16") if k in steps), key=lambda r: r["seconds"]
    )
    speedup = fp32["seconds"] / amp["seconds"]
    mem = amp["peak_memory_bytes"] / fp32["peak_memory_bytes"]
    bf16 = [r for r in result["matmul"] if r["mode"] == "bf16" and r["tflops"] is not None]
    top = max(bf16, key=lambda r: r["n"])
    return [
        (
            f"mlp {amp['mode']} step {speedup:.2f}x faster than fp32 (goal >= {min_speedup}x)",
            speedup >= min_speedup,
        ),
        (
            f"mlp {amp['mode']} peak memory {mem:.2f}x of fp32 (goal <= {max_memory_ratio}x)",
            mem <= max_memory_ratio,
        ),
        (
            f"bf16 matmul n={top['n']}: {top['tflops']:.0f} TFLOP/s = "
            f"{top['tflops'] / peak_bf16_tflops:.0%} of {peak_bf16_tflops:.0f} "
            f"(goal >= {min_peak_fraction:.0%})",
            top["tflops"] >= min_peak_fraction * peak_bf16_tflops,
        ),
    ]


_PRESETS = {  # sizes, fp16_max_n, steps: (model, batch, dim, depth)
    "cpu": ((256, 512, 1024), 512, (("simple", 64, 0, 0), ("mlp", 1024, 256, 2))),
    "cuda": (
        (1024, 2048, 4095, 4096, 8192),
        None,
        (("simple", 256, 0, 0), ("mlp", 32768, 2048, 4)),
    ),
}


def preset(device: torch.device | str) -> dict[str, Any]:
    """Default sizes for ``device``: matmul ``sizes``, ``fp16_max_n`` and training ``steps``.

    Taught in course/09_speed_and_memory.ipynb.
    """
    sizes, fp16_max_n, steps = _PRESETS["cuda" if torch.device(device).type == "cuda" else "cpu"]
    return {"sizes": sizes, "fp16_max_n": fp16_max_n, "steps": steps}


def main(argv: list[str] | None = None) -> int:
    """``python -m mpcourse bench [--device D] [--sizes N ...] [--out DIR] [--quick]``.

    Taught in course/09_speed_and_memory.ipynb.
    """
    parser = argparse.ArgumentParser(
        prog="python -m mpcourse bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--sizes", type=int, nargs="+", help="matmul sizes (default per device)")
    parser.add_argument("--min-time", type=float, default=0.1, help="seconds per measurement")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for the JSON")
    parser.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    argv = list(argv or [])
    args = parser.parse_args(argv[1:] if argv[:1] == ["--"] else argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    sizes, fp16_max_n, steps = _PRESETS["cuda" if device.type == "cuda" else "cpu"]
    if args.quick:
        sizes, steps = (64, 128), (("simple", 8, 0, 0), ("mlp", 32, 64, 1))
    result = run_benchmark(device, args.sizes or sizes, steps, args.min_time, fp16_max_n)
    result["command"] = " ".join(["python -m mpcourse bench", *argv])
    print(format_tables(result))
    from .inference import format_inference, inference_benchmark  # imports torchao when used

    result["inference"] = inference_benchmark(device, quick=args.quick)
    print("\n" + format_inference(result["inference"]))
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        # a smoke test never replaces the full results: it has a file of its own
        suffix = "-quick" if args.quick else ""
        path = args.out / f"bench-{_slug(result['machine'])}{suffix}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
