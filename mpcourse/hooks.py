"""Gradient statistics: which gradients fit in FP16, and which underflow to zero.

:func:`capture_gradients` runs one forward and backward pass and records

* **activation gradients** ``dL/da`` for the output ``a`` of every leaf module
  (a tensor hook on each output; a module called twice, like the seed's
  ``pool``, gives ``pool``, ``pool#2``);
* **weight gradients** ``dL/dW``, each parameter's ``.grad``.

:func:`gradient_stats` sorts the values against a format's window (zero,
below the smallest subnormal, below the smallest normal, above the max) and
measures the share of *nonzero* values that a cast to FP16 turns into 0
(they *underflow to zero* by rounding; the names ``flushed_share`` and
``flushed_to_zero`` are kept for compatibility, but this is not the hardware
flush-to-zero mode, FTZ/DAZ). :func:`window_shares` splits the nonzero values
into four shares that add up to 1 (to zero, subnormal, normal, overflow).
:func:`plot_gradient_histogram` draws the histogram of ``log2 |g|`` with the
FP16 and BF16 windows on it: the shape of Figure 3 of Micikevicius et al.
(2018), "Mixed Precision Training".

:func:`on_outputs` is the package's one per-module recorder: a forward hook on
each module that hands every floating-point tensor of its output to a callback
(which may put a tensor hook on it to see the gradient), removed when the block
ends; :func:`capture_gradients` here and :func:`mpcourse.debug.headroom` /
:func:`mpcourse.debug.first_nonfinite` are built on it.

Taught in course/03_training_in_pure_fp16.ipynb.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from torch import nn

from .formats import BF16, FP16, FloatFormat

__all__ = [
    "floating_tensors",
    "on_outputs",
    "GradientCapture",
    "capture_gradients",
    "gradient_stats",
    "flushed_share",
    "stats_table",
    "window_shares",
    "plot_gradient_histogram",
]


def floating_tensors(tree: Any) -> Iterator[torch.Tensor]:
    """Every floating-point tensor in a module output: a tensor, or nested tuples/lists/dicts.

    Taught in course/10_debugging.ipynb.
    """
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point():
            yield tree
    elif isinstance(tree, (tuple, list)):
        for item in tree:
            yield from floating_tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from floating_tensors(item)


@contextlib.contextmanager
def on_outputs(
    modules: Mapping[nn.Module, str], record: Callable[[str, nn.Module, torch.Tensor], None]
) -> Iterator[None]:
    """While the block runs, ``record(name, module, t)`` sees every floating tensor ``t`` that
    a module of ``modules`` (module -> name) outputs; the hooks are removed on exit, even when
    the block fails. ``record`` may call ``t.register_hook`` to see ``dL/dt`` in backward.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        for t in floating_tensors(output):
            record(modules[module], module, t)

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class GradientCapture:
    """Gradients of one backward pass: ``activation[name]`` and ``weight[name]``, float32 copies.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """

    loss: float
    dtype: torch.dtype
    activation: dict[str, torch.Tensor] = field(default_factory=dict)
    weight: dict[str, torch.Tensor] = field(default_factory=dict)

    def all(self, kind: str = "activation") -> torch.Tensor:
        """Every recorded value of one kind (``"activation"`` or ``"weight"``), flattened."""
        if kind not in ("activation", "weight"):
            raise ValueError(f"kind must be 'activation' or 'weight', got {kind!r}")
        values = list(getattr(self, kind).values())
        if not values:
            return torch.zeros(0)
        return torch.cat([v.flatten() for v in values])


def capture_gradients(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> GradientCapture:
    """Run ``loss_fn(model(x), y).backward()`` and record activation and weight gradients.

    ``loss_fn`` defaults to ``F.cross_entropy`` with its mean over the batch,
    ``L = (1/N) sum_i CE(f(x_i), y_i)``, so every gradient carries a factor
    ``1/N``. Gradients are recorded in the dtype the model computes in (run an
    FP16 model to see FP16 gradients) and returned as float32 copies on the CPU.
    The model's ``.grad`` fields are zeroed first and hold this pass's
    gradients afterwards; hooks are removed even if the pass fails.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    loss_fn = loss_fn or nn.functional.cross_entropy
    model.zero_grad(set_to_none=True)
    captured: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}

    def store_grad(name: str, module: nn.Module, output: torch.Tensor) -> None:
        if not output.requires_grad:
            return
        calls[name] = calls.get(name, 0) + 1
        key = name if calls[name] == 1 else f"{name}#{calls[name]}"

        def store(grad: torch.Tensor) -> None:
            captured[key] = grad.detach().float().cpu().clone()

        output.register_hook(store)

    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    with on_outputs({m: n for n, m in leaves}, store_grad):
        out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
    order = [k for n, _ in leaves for k in sorted(captured) if k.split("#")[0] == n]
    weights = {
        n: p.grad.detach().float().cpu().clone()
        for n, p in model.named_parameters()
        if p.grad is not None
    }
    return GradientCapture(
        loss=float(loss.detach()),
        dtype=out.dtype,
        activation={k: captured[k] for k in order},
        weight=weights,
    )


def flushed_share(values: torch.Tensor, dtype: torch.dtype = torch.float16) -> float:
    """Share of the *nonzero* ``values`` that become 0 when cast to ``dtype``.

    ``#{g != 0 and cast(g) == 0} / #{g != 0}``; in FP16 that is ``|g| <= 2^-25``.
    Returns 0.0 when there is no nonzero value.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """
    v = values.detach().flatten().float()
    nonzero = v != 0
    n = int(nonzero.sum())
    if n == 0:
        return 0.0
    return int((nonzero & (v.to(dtype) == 0)).sum()) / n


def gradient_stats(values: torch.Tensor, fmt: FloatFormat = FP16) -> dict[str, float]:
    """Where gradient values fall relative to ``fmt``'s window, as shares of all values.

    Keys: ``count``; ``zero`` (exactly 0); ``below_min_subnormal``
    (``0 < |g| < fmt.min_subnormal``, 2^-24 for FP16); ``below_min_normal``
    (``0 < |g| < fmt.min_normal``, 2^-14: kept only as subnormals, with fewer
    significant bits); ``above_max`` (``|g| > fmt.max``, 65504);
    ``flushed_to_zero``: share of the *nonzero* values that become 0 in ``fmt``
    (computed by an actual cast when ``fmt`` has a torch dtype).

    Taught in course/03_training_in_pure_fp16.ipynb.
    """
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"fmt must be a mpcourse.formats.FloatFormat (e.g. FP16), got {fmt!r}")
    v = values.detach().flatten().float().abs()
    n = v.numel()
    if n == 0:
        raise ValueError("gradient_stats needs at least one value (was the backward pass run?)")
    nonzero = v != 0
    if fmt.torch_dtype is not None:
        flushed = flushed_share(v, fmt.torch_dtype)
    else:
        n_nz = int(nonzero.sum())
        flushed = int((nonzero & (v <= fmt.min_subnormal / 2)).sum()) / n_nz if n_nz else 0.0
    return {
        "count": float(n),
        "zero": int((~nonzero).sum()) / n,
        "below_min_subnormal": int((nonzero & (v < fmt.min_subnormal)).sum()) / n,
        "below_min_normal": int((nonzero & (v < fmt.min_normal)).sum()) / n,
        "above_max": int((v > fmt.max).sum()) / n,
        "flushed_to_zero": flushed,
    }


def window_shares(values: torch.Tensor, fmt: FloatFormat = FP16) -> dict[str, float]:
    """Where the *nonzero* values land when stored in ``fmt``; the four shares add up to 1.

    ``to_zero`` (the cast gives 0: $|g| \\le$ half the smallest subnormal, $2^{-25}$ in
    FP16, it *underflows to zero*), ``subnormal`` (stored with fewer significant bits,
    below ``fmt.min_normal``), ``normal`` and ``overflow`` (the cast gives inf, or NaN in
    formats without inf). Computed by an actual cast when ``fmt`` has a torch dtype, else
    from the thresholds. Returns zeros when no value is nonzero.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"fmt must be a mpcourse.formats.FloatFormat (e.g. FP16), got {fmt!r}")
    v = values.detach().flatten().float().abs()
    v = v[v != 0]
    n = v.numel()
    if n == 0:
        return dict.fromkeys(("to_zero", "subnormal", "normal", "overflow"), 0.0)
    if fmt.torch_dtype is not None:
        c = v.to(fmt.torch_dtype).float()
        zero, over = c == 0, ~torch.isfinite(c)
    else:
        zero, over = v <= fmt.min_subnormal / 2, v > fmt.max
    sub = ~zero & ~over & (v < fmt.min_normal)
    counts = {"to_zero": zero, "subnormal": sub, "overflow": over}
    shares = {k: int(m.sum()) / n for k, m in counts.items()}
    shares["normal"] = (n - sum(int(m.sum()) for m in counts.values())) / n
    return {k: shares[k] for k in ("to_zero", "subnormal", "normal", "overflow")}


def stats_table(capture: GradientCapture, kind: str = "activation", fmt: FloatFormat = FP16) -> str:
    """A text table per layer and for all layers together.

    ``zero%`` is the share of *all* values that are exactly 0 (in FP32 already: ReLU and
    max-pool zeros). The other four columns are shares of the *nonzero* values and add up
    to 100 (:func:`window_shares`): ``to0%`` underflow to zero in ``fmt``, ``sub%`` are
    stored as subnormals, ``normal%`` as normal numbers, ``inf%`` overflow. Percentages
    with 2 decimals, so the table prints the same on every run.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """
    all_values = capture.all(kind)  # checks `kind`
    rows = {**getattr(capture, kind), "ALL": all_values}
    head = (
        f"{'layer':<12}{'values':>9}{'zero%':>8} |{'to0%':>7}{'sub%':>7}{'normal%':>9}{'inf%':>6}"
    )
    lines = [head, "-" * len(head)]
    for name, values in rows.items():
        zero = float((values == 0).float().mean())
        w = window_shares(values, fmt)
        lines.append(
            f"{name:<12}{values.numel():>9}{100 * zero:>8.2f} |{100 * w['to_zero']:>7.2f}"
            f"{100 * w['subnormal']:>7.2f}{100 * w['normal']:>9.2f}{100 * w['overflow']:>6.2f}"
        )
    return "\n".join(lines)


def plot_gradient_histogram(
    values: torch.Tensor,
    ax: Axes | None = None,
    *,
    formats: tuple[FloatFormat, ...] = (FP16, BF16),
    bins: int = 80,
    title: str = "Activation gradients",
    label: str | None = None,
    xlim: tuple[float, float] | None = None,
) -> Axes:
    """Histogram of ``log2 |g|`` over the nonzero values, with each format's window shaded.

    A format represents magnitudes from ``min_subnormal`` to ``max``; its window
    is drawn as a band from ``log2 min_subnormal`` (solid line) to ``log2 max``,
    and its normal range starts at the dashed line (``log2 min_normal``).
    Nonzero values at or left of FP16's dotted line, one binade below the solid one
    (``|g| <= 2^-25``), become 0 in FP16 (between 2^-25 and 2^-24 they round up to
    2^-24); their share is written next to it. The share of exact zeros is
    written in the legend (they have no logarithm). ``xlim`` (in ``log2``
    units) zooms in; by default the axis shows every window and every value.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """
    if xlim is not None and (len(xlim) != 2 or not xlim[0] < xlim[1]):
        raise ValueError(f"xlim must be (left, right) with left < right, got {xlim!r}")
    v = values.detach().flatten().float().abs()
    nonzero = v[v != 0]
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.6))
    colors = {"FP16": "#e76f51", "BF16": "#2a9d8f"}
    alphas = {"FP16": 0.22, "BF16": 0.10}
    lo = math.log2(min(f.min_subnormal for f in formats)) if formats else -30
    for i, fmt in enumerate(formats):
        color = colors.get(fmt.name, f"C{i + 2}")
        left, right = math.log2(fmt.min_subnormal), math.log2(fmt.max)
        ax.axvspan(
            left,
            right,
            color=color,
            alpha=alphas.get(fmt.name, 0.12),
            lw=0,
            label=f"{fmt.name} range (2^{left:.0f} to 2^{right:.0f})",
        )
        ax.axvline(math.log2(fmt.min_normal), color=color, ls="--", lw=1)
        ax.axvline(left, color=color, lw=1.5)
    zero_share = 1 - nonzero.numel() / max(v.numel(), 1)
    if nonzero.numel():
        logs = nonzero.log2()
        ax.hist(
            logs.numpy(),
            bins=bins,
            color="#264653",
            alpha=0.85,
            label=(label or "log2|g| (nonzero)") + f"; zeros: {100 * zero_share:.1f}%",
        )
        lo = min(lo, float(logs.min()) - 1)
    ax.set_xlim(xlim if xlim is not None else (max(lo, -150), 20))
    ax.set_yscale("log")
    if FP16 in formats and nonzero.numel():
        edge = math.log2(FP16.min_subnormal) - 1  # 2^-25: at or below it the cast gives 0
        share = flushed_share(nonzero, torch.float16)
        ax.axvline(edge, color=colors["FP16"], ls=":", lw=1.2)
        ax.annotate(
            f"0 in FP16: {100 * share:.1f}%\nof nonzero values",
            xy=(edge, 0.96),
            xycoords=("data", "axes fraction"),
            xytext=(-4, 0),
            textcoords="offset points",
            ha="right",
            va="top",
            fontsize=8,
            color=colors["FP16"],
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85},
        )
    ax.set_xlabel("log2 |gradient|")
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    return ax
