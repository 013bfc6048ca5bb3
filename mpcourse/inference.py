"""Inference in low precision: FP16/BF16 casts, and INT8 quantization from scratch.

Symmetric INT8 quantization maps a float tensor ``x`` to integers ``q`` and a
scale ``s`` (the zero point is 0):

    $s = \\max(\\mathrm{amax} / ((q_{max} - q_{min}) / 2),\\ \\epsilon)$,
    $q = \\mathrm{clamp}(\\mathrm{round}(x \\cdot (1/s)),\\ q_{min},\\ q_{max})$,
    $\\hat x = q \\cdot s$,

with ``amax = max |x|`` over the whole tensor (per tensor) or over each slice
along ``axis`` (per channel: one scale per output channel of a weight).
``narrow_range=True`` uses $[-127, 127]$ (so $s = \\mathrm{amax}/127$ and
$-x$ quantizes to $-q$); ``narrow_range=False`` uses int8's full
$[-128, 127]$ with $s = \\mathrm{amax}/127.5$, which is what torchao's INT8
configs do. Rounding is half to even; the product with the reciprocal
$1/s$ (rather than $x / s$) is what torchao computes, so the two agree bit
for bit (tests/test_inference.py).

An INT8 matmul multiplies int8 values and accumulates in INT32 (exact while
$K \\cdot 128^2 < 2^{31}$); the float result is the INT32 sum times
$s_x s_w$. :class:`Int8Linear` is such a layer, built from these pieces;
:func:`calibrate` records activation ranges (max or a percentile of $|x|$)
for a static activation scale. :func:`state_bytes` and
:func:`measure_latency` measure size and speed, and :func:`inference_benchmark`
is the inference section of ``python -m mpcourse bench``.

Taught in course/11_inference.ipynb.
"""

from __future__ import annotations

import copy
import functools
import io
import os
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import nn

from .models import SimpleModel
from .numerics import relative_error
from .timing import Latency, all_threads, compare_latency, measure_latency  # chapter 11's clock
from .validate import float_tensor

__all__ = [
    "FLOAT_FORMATS",
    "INT8_CONFIGS",
    "FP32_EPS",
    "quantize_int8",
    "dequantize_int8",
    "int8_scale",
    "relative_error",
    "activation_amax",
    "calibrate",
    "weight_sensitivity",
    "int8_matmul",
    "Int8Linear",
    "quantize_linears",
    "torchao_quantize",
    "torchao_primitives",
    "cast_model",
    "state_bytes",
    "Latency",
    "measure_latency",
    "compare_latency",
    "all_threads",
    "inference_benchmark",
    "format_inference",
    "ChapterModel",
    "chapter_model",
    "onednn_primitives",
    "bench_reference",
    "bench_records",
]

FLOAT_FORMATS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INT8_CONFIGS = ("int8_weight_only", "int8_dynamic")
FP32_EPS = torch.finfo(torch.float32).eps  # the smallest scale torchao's INT8 configs allow

# torchao's CPU-only import noise is dropped in mpcourse/__init__.py.


def _check_float(x: object, what: str) -> torch.Tensor:
    hint = "an integer tensor has no range to map; convert it with .float() if it holds values"
    float_tensor(x, what, hint)
    bad = (~torch.isfinite(x)).sum().item()
    if bad:
        raise ValueError(
            f"{what} holds {bad} inf/NaN value(s): its amax and scale would be inf/NaN and "
            "every value would quantize to NaN or 0; find where they come from (chapter 10) "
            "or clip the tensor first"
        )
    return x.float()


def _reduce_dims(ndim: int, axis: int | None) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, bool) or not isinstance(axis, int) or not -ndim <= axis < ndim:
        raise ValueError(
            f"axis must be None (per tensor) or an int in [-{ndim}, {ndim}), got {axis!r}"
        )
    axis %= ndim
    return tuple(d for d in range(ndim) if d != axis)


def _qrange(narrow_range: bool) -> tuple[int, int]:
    return (-127, 127) if narrow_range else (-128, 127)


def int8_scale(
    amax: torch.Tensor | float, *, narrow_range: bool = True, eps: float = FP32_EPS
) -> torch.Tensor:
    """The symmetric INT8 scale for a range ``[-amax, amax]``: $\\max(amax / (127 | 127.5), eps)$.

    A zero ``amax`` (an all-zero tensor or channel) gives the scale ``eps``:
    every value then quantizes to 0 and dequantizes to exactly 0, never NaN.

    Taught in course/11_inference.ipynb.
    """
    amax = torch.as_tensor(amax, dtype=torch.float32)
    if not bool(torch.isfinite(amax).all()) or bool((amax < 0).any()):
        raise ValueError(f"amax must be finite and >= 0, got {amax}")
    qmin, qmax = _qrange(narrow_range)
    return torch.clamp(amax / (float(qmax - qmin) / 2), min=eps)


def quantize_int8(
    x: torch.Tensor,
    axis: int | None = None,
    *,
    scale: torch.Tensor | float | None = None,
    narrow_range: bool = True,
    eps: float = FP32_EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric INT8 quantization: ``(scale, q)`` with ``q`` int8 and ``x ~= q * scale``
    (the package's quantizer convention, as :func:`mpcourse.mx.mx_quantize`).

    ``axis=None``: one scale for the tensor; ``axis=0``: one per output
    channel (row of a Linear weight, filter of a Conv2d weight). ``scale`` is
    float32 and keeps ``x``'s number of dimensions (size 1 except along
    ``axis``), so ``q * scale`` broadcasts. Pass ``scale`` to use a calibrated
    one (values beyond ``scale * qmax`` are clipped). Inputs are converted to
    float32 first; inf/NaN raise ``ValueError``, integer tensors ``TypeError``.
    An all-zero tensor (or channel) gets the scale ``eps`` and quantizes to
    zeros, which dequantize to exact zeros (never NaN).

    Taught in course/11_inference.ipynb.
    """
    x = _check_float(x, "quantize_int8: x")
    dims = _reduce_dims(x.dim(), axis)
    qmin, qmax = _qrange(narrow_range)
    if scale is None:
        amax = x.abs().amax(dim=dims, keepdim=True) if x.numel() else torch.zeros(())
        scale = int8_scale(amax, narrow_range=narrow_range, eps=eps)
    else:
        scale = torch.as_tensor(scale, dtype=torch.float32)
        if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
            raise ValueError(f"quantize_int8: scale must be finite and > 0, got {scale}")
    q = torch.clamp(torch.round(x * (1.0 / scale)), qmin, qmax).to(torch.int8)
    return scale, q


def dequantize_int8(scale: torch.Tensor | float, q: torch.Tensor) -> torch.Tensor:
    """$\\hat x = q \\cdot s$ in float32 from ``(scale, q)``, as :func:`quantize_int8` returns them.

    Taught in course/11_inference.ipynb.
    """
    if not isinstance(q, torch.Tensor) or q.dtype != torch.int8:
        got = q.dtype if isinstance(q, torch.Tensor) else type(q).__name__
        raise TypeError(f"dequantize_int8: q must be an int8 tensor, got {got}")
    return q.to(torch.float32) * torch.as_tensor(scale, dtype=torch.float32)


def activation_amax(
    x: torch.Tensor, method: str = "max", percentile: float = 99.99
) -> torch.Tensor:
    """The range to calibrate on: ``max |x|``, or the ``percentile``-th percentile of ``|x|``.

    The percentile (nearest rank, ``k = ceil(p/100 * n)``) ignores the rare
    largest values, so most values get a finer step at the price of clipping those.

    Taught in course/11_inference.ipynb.
    """
    x = _check_float(x, "activation_amax: x").abs().flatten()
    if method == "max":
        return x.max()
    if method != "percentile":
        raise ValueError(f"unknown calibration method {method!r}: use 'max' or 'percentile'")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    k = max(1, min(x.numel(), int(-(-percentile * x.numel() // 100))))
    return x.kthvalue(k).values


def calibrate(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    method: str = "max",
    percentile: float = 99.99,
    types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
) -> dict[str, float]:
    """Run ``batches`` through ``model``; return each ``types`` layer's input range (amax).

    The inputs seen by each layer are gathered over all batches, then reduced
    with :func:`activation_amax` (``"max"`` or ``"percentile"``).

    Taught in course/11_inference.ipynb.
    """
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, types):

            def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
                seen.setdefault(name, []).append(args[0].detach().float().cpu())

            hooks.append(module.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            for x in batches:
                model(x)
    finally:
        for h in hooks:
            h.remove()
    return {
        name: float(activation_amax(torch.cat([t.flatten() for t in xs]), method, percentile))
        for name, xs in seen.items()
    }


def weight_sensitivity(
    model: nn.Module, x: torch.Tensor, *, axis: int | None = None
) -> dict[str, float]:
    """For each Linear/Conv2d layer alone: relative error of the logits when its weight is INT8.

    The layer's weight is replaced by ``dequantize_int8(*quantize_int8(w, axis))``
    (INT8 rounding, float arithmetic) in a float32 CPU copy of ``model``; the
    value is :func:`relative_error` of the logits on ``x`` against float32.

    Taught in course/11_inference.ipynb.
    """
    model = copy.deepcopy(model).float().cpu().eval()
    x = x.float().cpu()
    with torch.inference_mode():
        reference = model(x)
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            original = module.weight.detach().clone()
            with torch.no_grad():
                module.weight.copy_(dequantize_int8(*quantize_int8(original, axis)))
                out[name] = relative_error(reference, model(x))
                module.weight.copy_(original)
    return out


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for int8 matrices, accumulated in INT32: $c_{ij} = \\sum_k a_{ik} b_{kj}$.

    Exact while $K \\cdot 128^2 < 2^{31}$ (K up to 131,071); INT8 kernels
    (VNNI/AMX on CPUs, ``torch._int_mm`` on GPUs) do the same in hardware.

    Taught in course/11_inference.ipynb.
    """
    for what, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int8 or t.dim() != 2:
            got = f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else t
            raise TypeError(f"int8_matmul: {what} must be a 2-D int8 tensor, got {got}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"int8_matmul: shapes {tuple(a.shape)} @ {tuple(b.shape)} do not match")
    if a.device.type != "cpu":  # torch has no INT32 matmul on CUDA: same sums, on the CPU
        return (a.cpu().to(torch.int32) @ b.cpu().to(torch.int32)).to(a.device)
    return a.to(torch.int32) @ b.to(torch.int32)


class Int8Linear(nn.Module):
    """A Linear layer with INT8 weights (per output channel) and INT8 activations.

    $y = (q_x q_w^T)_{int32} \\cdot s_x \\cdot s_w + b$. With ``act_scale=None``
    the activation scale is chosen per row of ``x`` at run time ("dynamic",
    as torchao's ``Int8DynamicActivationInt8WeightConfig``); with a float
    (from :func:`calibrate`) it is fixed ("static") and larger values clip.

    Taught in course/11_inference.ipynb.
    """

    def __init__(
        self, linear: nn.Linear, act_scale: float | None = None, *, narrow_range: bool = True
    ) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Int8Linear wraps an nn.Linear, got {type(linear).__name__}")
        s, q = quantize_int8(linear.weight.detach(), axis=0, narrow_range=narrow_range)
        self.register_buffer("qweight", q)
        self.register_buffer("weight_scale", s)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)
        self.act_scale = act_scale
        self.narrow_range = narrow_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        axis = None if self.act_scale is not None else 0
        sx, qx = quantize_int8(rows, axis, scale=self.act_scale, narrow_range=self.narrow_range)
        acc = int8_matmul(qx, self.qweight.t())
        y = acc.to(torch.float32) * sx.reshape(-1, 1) * self.weight_scale.flatten()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], -1).to(x.dtype)


def quantize_linears(
    model: nn.Module, act_amax: dict[str, float] | None = None, *, narrow_range: bool = True
) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` replaced by an :class:`Int8Linear`.

    ``act_amax`` (from :func:`calibrate`) gives static activation scales; without
    it activations are quantized per row at run time.

    Taught in course/11_inference.ipynb.
    """
    model = copy.deepcopy(model).float().eval()
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            scale = None
            if act_amax is not None:
                scale = float(int8_scale(act_amax[name], narrow_range=narrow_range))
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(
                parent,
                name.rpartition(".")[2],
                Int8Linear(module, scale, narrow_range=narrow_range),
            )
    return model


def torchao_quantize(model: nn.Module, config: str) -> nn.Module:
    """A copy of ``model`` quantized by torchao's ``quantize_`` (its Linear layers only).

    ``"int8_weight_only"``: ``Int8WeightOnlyConfig()`` (INT8 weights per
    channel, dequantized in the matmul); ``"int8_dynamic"``:
    ``Int8DynamicActivationInt8WeightConfig()`` (activations quantized per row
    at run time, INT8 x INT8 matmul with INT32 accumulation).

    Taught in course/11_inference.ipynb.
    """
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        quantize_,
    )

    configs = {
        "int8_weight_only": Int8WeightOnlyConfig,
        "int8_dynamic": Int8DynamicActivationInt8WeightConfig,
    }
    if config not in configs:
        raise ValueError(f"unknown torchao config {config!r}: choose from {', '.join(configs)}")
    model = copy.deepcopy(model).float().eval()
    quantize_(model, configs[config](set_inductor_config=False))
    return model


def torchao_primitives() -> Any:
    """torchao's affine quantization primitives (``torchao.quantization.quant_primitives``).

    Imported here, after the filter above, so that torchao's CPU-build import
    messages stay silent: ``choose_qparams_affine``, ``quantize_affine``,
    ``dequantize_affine``, ``MappingType``.

    Taught in course/11_inference.ipynb.
    """
    from torchao.quantization import quant_primitives

    return quant_primitives


def cast_model(model: nn.Module, fmt: str) -> nn.Module:
    """A copy of ``model`` for inference in ``fmt``: a float format or a torchao INT8 config.

    Taught in course/11_inference.ipynb.
    """
    if fmt in FLOAT_FORMATS:
        return copy.deepcopy(model).to(FLOAT_FORMATS[fmt]).eval()
    if fmt in INT8_CONFIGS:
        return torchao_quantize(model, fmt)
    raise ValueError(
        f"unknown format {fmt!r}: choose from {', '.join((*FLOAT_FORMATS, *INT8_CONFIGS))}"
    )


def state_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what a checkpoint of the model takes.

    Taught in course/11_inference.ipynb.
    """
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def inference_benchmark(
    device: torch.device | str = "cpu",
    batch_sizes: Iterable[int] | None = None,
    formats: Iterable[str] = ("fp32", "bf16", "fp16", "int8_dynamic", "int8_weight_only"),
    *,
    repeats: int = 10,
    threads: int | None = None,
    quick: bool = False,
) -> list[dict[str, Any]]:
    """Forward latency of the seed's ``SimpleModel`` per format and batch size (one record each).

    Each record: ``format``, ``batch``, ``median_s``, ``q1_s``, ``q3_s``,
    ``threads``, ``state_bytes``, or ``note`` when the format cannot run here
    (e.g. torchao missing). Weights are random (latency does not depend on them).
    Default batch sizes: 1, 64, 256 on a CPU; 1, 256, 4096 on a GPU;
    ``quick=True``: 1 and 8, 3 repeats (a smoke test). This is the inference
    section of ``python -m mpcourse bench``.

    Taught in course/11_inference.ipynb.
    """
    device = torch.device(device)
    if batch_sizes is None:
        batch_sizes = (1, 64, 256) if device.type == "cpu" else (1, 256, 4096)
    if quick:
        batch_sizes, repeats = (1, 8), 3
    base = SimpleModel().eval()
    gen = torch.Generator().manual_seed(0)
    models, notes = {}, {}
    for fmt in formats:
        try:
            models[fmt] = cast_model(base, fmt).to(device)
        except ImportError as err:  # torchao not installed
            notes[fmt] = f"not available: {err}"
    measured: dict[tuple[str, int], Latency] = {}
    for batch in batch_sizes:  # all formats interleaved, one batch size at a time
        x = torch.randn(batch, 3, 32, 32, generator=gen).to(device)
        fns = {
            fmt: functools.partial(m, x.to(FLOAT_FORMATS.get(fmt, torch.float32)))
            for fmt, m in models.items()
        }
        lats = compare_latency(fns, repeats=repeats, threads=threads, device=device)
        measured |= {(fmt, batch): lat for fmt, lat in lats.items()}
    records: list[dict[str, Any]] = []
    for fmt in formats:
        if fmt in notes:
            records.append({"format": fmt, "note": notes[fmt]})
            continue
        for batch in batch_sizes:
            lat = measured[fmt, batch]
            record = {"format": fmt, "batch": batch, "median_s": lat.median}
            record |= {"q1_s": lat.q1, "q3_s": lat.q3, "threads": lat.threads}
            records.append(record | {"state_bytes": state_bytes(models[fmt])})
    return records


def format_inference(records: list[dict[str, Any]]) -> str:
    """The records of :func:`inference_benchmark` as a plain-text table (ms per forward).

    Taught in course/11_inference.ipynb.
    """
    lines = [f"{'format':<17} {'batch':>6} {'median ms':>10} {'IQR ms':>8} {'state KiB':>10}"]
    for r in records:
        if "note" in r:
            lines.append(f"{r['format']:<17} {r['note']}")
            continue
        lines.append(
            f"{r['format']:<17} {r['batch']:>6} {r['median_s'] * 1e3:>10.3f} "
            f"{(r['q3_s'] - r['q1_s']) * 1e3:>8.3f} {r['state_bytes'] / 1024:>10.1f}"
        )
    return "\n".join(lines)


# -- the chapter's setup and the CPU's dtype routes --------------------------------------------
class ChapterModel(NamedTuple):
    """The FP32 model chapter 11 serves, and the data it is measured on."""

    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    train_set: torch.utils.data.Dataset


def chapter_model(device: torch.device | str = "cpu", epochs: int = 4) -> ChapterModel:
    """The seed's ``SimpleModel`` trained in FP32 on the 32x32 digits (chapter 07's loop, SGD
    lr 0.05, batch 16, seed 0), in eval mode, with the test images and labels on ``device``.

    Seed first (``mpcourse.device.setup_chapter``): the result is then the same every run.
    On a GPU, TF32 is switched off for cuDNN so that the FP32 baseline is really FP32.
    Taught in course/11_inference.ipynb.
    """
    from .data import digits, make_loader
    from .train import train

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"chapter_model: epochs must be a positive int, got {epochs!r}")
    device = torch.device(device)
    torch.backends.cudnn.allow_tf32 = False
    train_set, test_set = digits("train", image_size=32), digits("test", image_size=32)
    images, labels = (t.to(device) for t in test_set.tensors)
    model = SimpleModel().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    train(model, make_loader(train_set, 16, seed=0), opt, epochs=epochs, precision="fp32")
    return ChapterModel(model.eval(), images, labels, train_set)


def onednn_primitives(fn: Callable[[], Any], reorders: bool = False) -> list[str]:
    """The oneDNN primitives ``fn()`` executes, as ``"kind impl pass src-dtype"`` strings.

    Runs ``fn`` under ``torch.backends.mkldnn.verbose(VERBOSE_ON)`` (what
    ``ONEDNN_VERBOSE=1`` prints) with the process's stdout (file descriptor 1)
    sent to a temporary file, and keeps oneDNN's ``exec`` lines: e.g.
    ``"matmul brg_matmul:avx512_core_bf16 undef bf16"`` or ``"convolution
    jit_bf16:avx512_core_bf16 backward_weights bf16"``. Layout ``reorder``s are
    dropped unless ``reorders``. An empty list means no oneDNN primitive ran:
    PyTorch used its own (ATen) kernel. Taught in course/11_inference.ipynb.
    """
    import sys
    import tempfile

    if not callable(fn):
        raise TypeError(f"onednn_primitives: fn must be callable, got {fn!r}")
    sys.stdout.flush()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(1)
        os.dup2(tmp.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                fn()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        tmp.seek(0)
        lines = tmp.read().decode(errors="replace").splitlines()
    found = []
    for line in lines:
        parts = line.split(",")
        if len(parts) < 9 or parts[3] != "exec" or (parts[5] == "reorder" and not reorders):
            continue
        src = parts[8].split()[0].split(":")[1] if ":" in parts[8] else "?"
        found.append(f"{parts[5]} {parts[6]} {parts[7]} {src}")
    return found


def _bench_file(path: str | os.PathLike | None) -> dict[str, Any]:
    import json
    from pathlib import Path

    path = Path(path) if path else Path(__file__).resolve().parents[1] / "results/bench-cpu.json"
    if not path.exists():
        raise FileNotFoundError(f"no {path}; run python -m mpcourse bench to write it")
    return json.loads(path.read_text())


def bench_records(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The inference records of ``results/bench-cpu.json`` (:func:`inference_benchmark`'s
    format). Taught in course/11_inference.ipynb."""
    return list(_bench_file(path).get("inference", []))


def bench_reference(path: str | os.PathLike | None = None) -> str:
    """The quiet-machine numbers of ``results/bench-cpu.json`` (``python -m mpcourse bench``):
    the machine, FP16/BF16 matmuls and a SimpleModel training step against FP32, and the
    inference latencies per format and batch. Taught in course/11_inference.ipynb.
    """
    data = _bench_file(path)
    m = data["machine"]
    lines = [
        f"{m['device_name']} ({', '.join(m['cpu_features'])}), {m['threads']} threads, "
        f"torch {m['torch']}, {m['date'][:10]}"
    ]
    mm = {(r["mode"], r["n"]): r["seconds"] for r in data.get("matmul", []) if r["seconds"]}
    for n in sorted({n for _, n in mm}):
        if ("fp32", n) in mm:
            ratios = [
                f"{d} {mm[d, n] / mm['fp32', n]:.2f}x" for d in ("bf16", "fp16") if (d, n) in mm
            ]
            lines.append(f"matmul {n}x{n}: time vs FP32: {', '.join(ratios)}")
    steps = {(r["model"], r["mode"]): r["seconds"] for r in data.get("train_step", [])}
    for model in dict.fromkeys(k for k, _ in steps):
        if (model, "fp32") in steps:
            ratios = [
                f"{d} {steps[model, d] / steps[model, 'fp32']:.2f}x"
                for d in ("amp-bf16", "amp-fp16")
                if (model, d) in steps
            ]
            lines.append(f"training step, {model}: time vs FP32: {', '.join(ratios)}")
    lines.append(format_inference(data.get("inference", [])))
    return "\n".join(lines)
