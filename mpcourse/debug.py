"""Debugging mixed precision: find the first inf/NaN, measure headroom, watch the loss scale.

Three tools, each usable on your own model in one or two lines::

    from mpcourse.debug import first_nonfinite, headroom, ScaleMonitor

    print(first_nonfinite(model, x, backward=True))   # None, or where the first inf/NaN came from
    print(headroom(model, x, loss_fn=lambda out: F.cross_entropy(out, y)).table())
    monitor = ScaleMonitor(scaler)                     # then monitor.step() after scaler.update()

* :func:`first_nonfinite` runs one forward pass (and, with ``backward=True``,
  one backward pass of ``output.float().sum()``) with hooks on every module and
  names the first module, in execution order, whose output (forward) or whose
  gradient (backward: the gradient it sends to its inputs, ``dL/dx``, or to
  its own parameters, ``dL/dW``) holds an inf or a NaN.
* :func:`headroom` records, per module, the largest ``|activation|`` and
  ``|gradient|`` (``dL/d output``) and compares them with each format's range
  in bits: ``log2(fmt.max / amax)`` bits below overflow, ``log2(amax /
  fmt.min_normal)`` bits above the subnormals. A negative number means the
  layer already overflows (or is entirely subnormal) in that format.
* :class:`ScaleMonitor` logs the scale of a ``torch.amp.GradScaler`` (or
  :class:`mpcourse.scaling.DynamicLossScaler`) after every ``update()``, counts
  skipped steps and warns (:class:`ScaleCollapseWarning`) when the scale falls
  step after step: gradients that are inf/NaN at *every* scale come from a
  real inf/NaN in the forward pass or the loss, not from underflow.

Taught in course/10_debugging.ipynb.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .formats import BF16, FP8_E4M3, FP8_E5M2, FP16, FloatFormat

__all__ = [
    "NonFinite",
    "first_nonfinite",
    "HeadroomRow",
    "HeadroomReport",
    "headroom",
    "ScaleCollapseWarning",
    "ScaleMonitor",
]

DEFAULT_FORMATS = (FP16, BF16, FP8_E4M3, FP8_E5M2)


# -- shared helpers -------------------------------------------------------------------------
def _tensors(tree: Any) -> Iterator[torch.Tensor]:
    """Every floating-point tensor in a (nested) tuple/list/dict output."""
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point():
            yield tree
    elif isinstance(tree, (tuple, list)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


def _check_call(model: object, inputs: tuple, func: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{func}: model must be a torch.nn.Module, got {type(model).__name__}")
    if len(list(model.modules())) == 1 and not list(model.parameters()):
        raise ValueError(
            f"{func}: the model ({type(model).__name__}) has no submodules and no parameters, so "
            "there is no layer to blame; pass a model built from modules (e.g. nn.Sequential of "
            "layers)"
        )
    if not inputs:
        raise TypeError(f"{func}: pass the model's inputs after the model, e.g. {func}(model, x)")
    bad = [type(x).__name__ for x in inputs if not isinstance(x, torch.Tensor)]
    if bad:
        raise TypeError(
            f"{func}: inputs must be tensors (called as model(*inputs)), got {', '.join(bad)}; "
            "convert with torch.as_tensor(...)"
        )
    return model


def _scalar_loss(output: Any, func: str) -> torch.Tensor:
    """``sum(t.float().sum())`` over the output's floating tensors; it must need grad."""
    tensors = [t for t in _tensors(output) if t.requires_grad]
    if not tensors:
        raise ValueError(
            f"{func}: backward=True needs a model output that requires grad, but no floating "
            "output of the model does (parameters frozen with requires_grad_(False), or the "
            "call ran under torch.no_grad()/inference_mode()); unfreeze a parameter or use "
            "backward=False"
        )
    return sum(t.float().sum() for t in tensors)


def _kind(t: torch.Tensor) -> str | None:
    """'nan' if ``t`` holds a NaN, else 'inf' if it holds an inf, else None."""
    t = t.detach()
    if bool(torch.isfinite(t).all()):
        return None
    return "nan" if bool(torch.isnan(t).any()) else "inf"


# -- first_nonfinite -----------------------------------------------------------------------
@dataclass(frozen=True)
class NonFinite:
    """Where the first inf/NaN appeared.

    ``module`` is the qualified name from ``model.named_modules()`` (``""`` is
    the model itself); ``phase`` is ``"forward"`` or ``"backward"``; ``kind``
    is ``"inf"`` or ``"nan"``; ``what`` says which tensor (``"output"``,
    ``"grad of input"``, ``"grad of weight"``...); ``count`` / ``numel``: how
    many of its values were not finite.

    Taught in course/10_debugging.ipynb.
    """

    module: str
    phase: str
    kind: str
    module_type: str
    what: str
    dtype: torch.dtype
    count: int
    numel: int

    def __str__(self) -> str:
        name = repr(self.module) if self.module else "the model itself"
        dtype = str(self.dtype).replace("torch.", "")
        return (
            f"first non-finite value: {self.kind} in the {self.phase} pass, {self.what} of "
            f"{name} ({self.module_type}), {self.count} of {self.numel} values, {dtype}"
        )


class _Tag(torch.autograd.Function):
    """Identity in forward; in backward, hands the incoming gradient to ``report``.

    Applied to a module's inputs, its backward sees exactly ``dL/dx`` for that
    module: the gradient the module sends on to the modules before it.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, report: Callable[[torch.Tensor], None]) -> torch.Tensor:
        ctx.report = report
        return x.clone()  # a fresh tensor (not a view): in-place ops on it stay legal

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        if grad is not None:
            ctx.report(grad)
        return grad, None


def _backward_to_leaves(model: nn.Module, inputs: tuple, loss: torch.Tensor) -> None:
    """Run the backward pass (firing the hooks) without touching any ``.grad``."""
    leaves = [p for p in model.parameters() if p.requires_grad]
    leaves += [x for x in inputs if x.requires_grad]
    torch.autograd.grad(loss, leaves, allow_unused=True)


def first_nonfinite(
    model: nn.Module, *inputs: torch.Tensor, backward: bool = False
) -> NonFinite | None:
    """Run ``model(*inputs)`` with hooks on every module; return the first inf/NaN, or None.

    Forward: the output of each module, checked when the module returns
    (children before their parent, in call order). Backward (only if the
    forward pass was clean and ``backward=True``): gradients of
    ``L = output.float().sum()`` in the order autograd computes them, for each
    module the gradient with respect to its inputs (``dL/dx``, what it sends
    backwards) and to its own parameters (``dL/dW``). Gradients are taken with
    ``torch.autograd.grad``, so ``.grad`` fields are left untouched. Run it
    inside ``torch.autocast(...)`` to debug a mixed precision forward pass.

    Taught in course/10_debugging.ipynb.
    """
    model = _check_call(model, inputs, "first_nonfinite")
    found: list[NonFinite] = []
    names = {m: n for n, m in model.named_modules()}

    def record(name: str, module: nn.Module, phase: str, what: str, t: torch.Tensor) -> None:
        if found:
            return
        kind = _kind(t)
        if kind is not None:
            count = int((~torch.isfinite(t.detach())).sum())
            found.append(
                NonFinite(name, phase, kind, type(module).__name__, what, t.dtype, count, t.numel())
            )

    def post_hook(module: nn.Module, args: tuple, output: Any) -> None:
        for t in _tensors(output):
            record(names[module], module, "forward", "output", t)

    def pre_hook(module: nn.Module, args: tuple) -> tuple:
        def tag(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and x.is_floating_point() and x.requires_grad:
                name = names[module]
                return _Tag.apply(x, lambda g: record(name, module, "backward", "grad of input", g))
            return x

        return tuple(tag(x) for x in args)

    handles = []
    for module in names:
        handles.append(module.register_forward_hook(post_hook))
        if backward:
            handles.append(module.register_forward_pre_hook(pre_hook))
            for pname, p in module.named_parameters(recurse=False):
                if p.requires_grad:
                    what = f"grad of {pname}"
                    handles.append(
                        p.register_hook(
                            lambda g, m=module, w=what: record(names[m], m, "backward", w, g)
                        )
                    )
    try:
        output = model(*inputs)
        if backward and not found:
            loss = _scalar_loss(output, "first_nonfinite")
            _backward_to_leaves(model, inputs, loss)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


# -- headroom --------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadroomRow:
    """Largest ``|activation|`` (module output) and ``|gradient|`` (``dL/d output``) of a module.

    ``grad_amax`` is None when no gradient was computed. Taught in course/10_debugging.ipynb.
    """

    module: str
    module_type: str
    act_amax: float
    grad_amax: float | None

    def bits(self, fmt: FloatFormat, kind: str = "activation") -> tuple[float, float]:
        """``(log2(fmt.max / amax), log2(amax / fmt.min_normal))``: bits of room above the
        largest value before overflow, and bits between it and the subnormals (negative:
        overflows / entirely subnormal). +inf when amax is 0."""
        if kind not in ("activation", "gradient"):
            raise ValueError(f"kind must be 'activation' or 'gradient', got {kind!r}")
        amax = self.act_amax if kind == "activation" else self.grad_amax
        if amax is None:
            raise ValueError(f"no gradient was recorded for {self.module!r}: pass loss_fn")
        return _bits(amax, fmt)


def _bits(amax: float, fmt: FloatFormat) -> tuple[float, float]:
    if amax == 0:
        return math.inf, -math.inf
    if not math.isfinite(amax):
        return -math.inf, math.inf
    return math.log2(fmt.max / amax), math.log2(amax / fmt.min_normal)


@dataclass
class HeadroomReport:
    """Per module headroom against several formats; ``table()`` prints it.

    Taught in course/10_debugging.ipynb.
    """

    rows: list[HeadroomRow]
    formats: tuple[FloatFormat, ...] = field(default=DEFAULT_FORMATS)

    def __getitem__(self, module: str) -> HeadroomRow:
        for row in self.rows:
            if row.module == module:
                return row
        raise KeyError(f"no module {module!r}; recorded: {[r.module for r in self.rows]}")

    def overflows(self, fmt: FloatFormat = FP16, kind: str = "activation") -> list[str]:
        """Modules whose largest ``|value|`` of ``kind`` would not fit ``fmt`` (``amax > max``)."""
        return [
            r.module for r in self.rows if _amax(r, kind) is not None and _amax(r, kind) > fmt.max
        ]

    def table(self, formats: tuple[FloatFormat, ...] | None = None) -> str:
        """One line per module: amax of activations and gradients, and bits of headroom
        below each format's max (gradients also: bits above its smallest normal)."""
        formats = formats or self.formats
        head = f"{'module':<14}{'type':<12}{'max|act|':>10}{'max|grad|':>11}"
        head += "".join(f"{'act ' + _short(f):>10}" for f in formats)
        head += "".join(f"{'grad ' + _short(f):>14}" for f in formats)
        lines = [head, "-" * len(head)]
        for r in self.rows:
            grad = "-" if r.grad_amax is None else f"{r.grad_amax:.3g}"
            line = (
                f"{r.module or '(model)':<14}{r.module_type[:11]:<12}{r.act_amax:>10.3g}{grad:>11}"
            )
            line += "".join(f"{_fmt_bits(_bits(r.act_amax, f)[0]):>10}" for f in formats)
            for f in formats:
                if r.grad_amax is None:
                    line += f"{'-':>14}"
                else:
                    up, down = _bits(r.grad_amax, f)
                    line += f"{_fmt_bits(up) + '/' + _fmt_bits(down):>14}"
            lines.append(line)
        return "\n".join(lines)


def _amax(row: HeadroomRow, kind: str) -> float | None:
    return row.act_amax if kind == "activation" else row.grad_amax


def _short(fmt: FloatFormat) -> str:
    return fmt.name.replace("FP8_", "")


def _fmt_bits(b: float) -> str:
    if math.isinf(b):
        return "inf" if b > 0 else "-inf"
    return f"{b:+.1f}"


def headroom(
    model: nn.Module,
    *inputs: torch.Tensor,
    loss_fn: Callable[[Any], torch.Tensor] | None = None,
    formats: tuple[FloatFormat, ...] = DEFAULT_FORMATS,
) -> HeadroomReport:
    """Largest ``|activation|`` and ``|gradient|`` per module, against each format's range.

    Runs ``out = model(*inputs)``; with ``loss_fn``, also ``loss_fn(out).backward``
    through ``torch.autograd.grad`` (``.grad`` untouched) and records
    ``max |dL/d output|`` of every module. Modules called several times keep
    their largest values. Run it in FP32 (or BF16) to see which layer *will*
    overflow FP16 before it does: ``report.overflows(FP16)``.

    Taught in course/10_debugging.ipynb.
    """
    model = _check_call(model, inputs, "headroom")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"headroom: loss_fn must be callable (output -> scalar), got {loss_fn!r}")
    names = {m: n for n, m in model.named_modules()}
    act: dict[str, float] = {}
    grad: dict[str, float] = {}
    order: list[nn.Module] = []

    def amax(t: torch.Tensor) -> float:
        return float(t.detach().abs().max().float()) if t.numel() else 0.0

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        name = names[module]
        if module not in order:
            order.append(module)
        for t in _tensors(output):
            act[name] = max(act.get(name, 0.0), amax(t))
            if loss_fn is not None and t.requires_grad:
                t.register_hook(
                    lambda g, n=name: grad.__setitem__(n, max(grad.get(n, 0.0), amax(g)))
                )

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        out = model(*inputs)
        if loss_fn is not None:
            loss = loss_fn(out)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(f"headroom: loss_fn must return a scalar tensor, got {loss!r}")
            if not loss.requires_grad:
                raise ValueError("headroom: the loss needs no grad (frozen model or no_grad?)")
            _backward_to_leaves(model, inputs, loss)
    finally:
        for h in handles:
            h.remove()
    rows = [
        HeadroomRow(
            names[m],
            type(m).__name__,
            act.get(names[m], 0.0),
            grad.get(names[m]) if loss_fn is not None else None,
        )
        for m in order
        if names[m] in act
    ]
    return HeadroomReport(rows, tuple(formats))


# -- the loss-scale monitor -------------------------------------------------------------------
class ScaleCollapseWarning(RuntimeWarning):
    """The loss scale keeps falling: gradients are inf/NaN at every scale.

    Taught in course/10_debugging.ipynb."""


class ScaleMonitor:
    """Log a loss scaler's scale and skipped steps; warn when the scale collapses.

    Call :meth:`step` once per iteration, after ``scaler.update()``. A step was
    skipped when the scaler backed off (the scale went down), or, for a scaler
    with a ``skipped_steps`` counter (ours), when that counter grew. (The
    monitor watches any loop from outside, after ``update()`` has forgotten the
    iteration's found-inf flags, so it cannot ask :func:`mpcourse.scaling.found_inf`,
    which a loop reads between ``step`` and ``update``.)

    Collapse: a step is skipped while the scale is below ``min_scale`` (default
    1: the "scaled" gradients are then no larger than the true ones, so no
    overflow of a finite gradient explains the skip), or ``patience`` steps in
    a row are skipped (default 25: more than a too-high ``init_scale`` costs,
    2^40 -> 2^16 takes 24). Then a :class:`ScaleCollapseWarning` with a
    diagnosis is issued, once per episode. Isolated skips that the scale
    recovers from are normal: dynamic scaling probes for the largest safe scale.

    Taught in course/10_debugging.ipynb.
    """

    def __init__(self, scaler: Any, *, patience: int = 25, min_scale: float = 1.0) -> None:
        if not (hasattr(scaler, "get_scale") and hasattr(scaler, "update")):
            raise TypeError(
                "ScaleMonitor needs a torch.amp.GradScaler or mpcourse.scaling.DynamicLossScaler, "
                f"got {type(scaler).__name__}"
            )
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive int, got {patience!r}")
        if not (isinstance(min_scale, (int, float)) and min_scale > 0):
            raise ValueError(f"min_scale must be a positive number, got {min_scale!r}")
        self.scaler = scaler
        self.patience = patience
        self.min_scale = float(min_scale)
        self.init_scale = float(scaler.get_scale())
        self.scales: list[float] = []  # scale after each update()
        self.skipped: list[int] = []  # indices of skipped steps
        self.run = 0  # skipped steps in a row, ending at the last step
        self.longest_run = 0
        self.warnings: list[str] = []
        self._last = self.init_scale
        self._count = getattr(scaler, "skipped_steps", None)
        self._warned = False

    def step(self) -> bool:
        """Record the scale after ``update()``; return True if this step was skipped."""
        scale = float(self.scaler.get_scale())
        counter = getattr(self.scaler, "skipped_steps", None)
        if counter is not None and self._count is not None:
            skipped = counter > self._count
            self._count = counter
        else:
            skipped = scale < self._last
        if skipped:
            self.skipped.append(len(self.scales))
            self.run += 1
            self.longest_run = max(self.longest_run, self.run)
        else:
            self.run, self._warned = 0, False
        self.scales.append(scale)
        self._last = scale
        if not self._warned and (self.run >= self.patience or (skipped and scale < self.min_scale)):
            self._warned = True
            message = self.diagnosis()
            self.warnings.append(message)
            warnings.warn(message, ScaleCollapseWarning, stacklevel=2)
        return skipped

    @property
    def collapsed(self) -> bool:
        """True while the last ``patience`` steps were all skipped, or the scale is below
        ``min_scale`` (below 1 the scale shrinks the gradients, so a skip there cannot be a
        large finite gradient overflowing)."""
        return self.run >= self.patience or self._last < self.min_scale

    def diagnosis(self) -> str:
        """One paragraph: what the log shows and what to do about it."""
        n, k = len(self.scales), len(self.skipped)
        start = f"{self.init_scale:g}"
        now = f"{self.scales[-1]:g}" if self.scales else start
        if self.collapsed:
            return (
                f"loss scale collapsed: {k} of {n} steps skipped, {self.run} in a row, scale "
                f"{start} -> {now}. Gradients stay inf/NaN however far the scale falls, so this is "
                "not overflow of large gradients: a real inf/NaN "
                "comes from the forward pass or the loss. Find it with "
                "mpcourse.debug.first_nonfinite(model, inputs, backward=True) under autocast; "
                "fix that op (run it in FP32 in a torch.autocast(enabled=False) region, or use "
                "BF16), do not lower the scale by hand."
            )
        if k == 0:
            return f"healthy: {n} steps, none skipped, scale {start} -> {now}."
        return (
            f"transient: {k} of {n} steps skipped (longest run {self.longest_run}), scale "
            f"{start} -> {now}. Isolated skips are how dynamic scaling finds its level; a run of "
            "skips at the start means init_scale is too high (lower it, or load the scaler's "
            "state when resuming)."
        )

    def plot(self, ax: Any = None, label: str | None = None) -> Any:
        """The scale after each step (log2 axis), skipped steps marked with x."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(8, 3))
        steps = range(len(self.scales))
        logs = [math.log2(s) if s > 0 else float("nan") for s in self.scales]
        ax.plot(steps, logs, label=label)
        ax.plot(self.skipped, [logs[i] for i in self.skipped], "x", color="C3")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("log2(scale)")
        return ax
