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
  step after step: gradients that are inf/NaN at *every* scale, even below 1, are
  not large finite gradients that overflowed once scaled; they come from an
  inf/NaN in the forward pass, in the loss, or in the backward of an op (BCE on
  a saturated FP16 sigmoid: a finite loss, an inf gradient).
* The chapter's small harnesses (:func:`lr_sweep`, :func:`train_monitored`,
  :func:`t5_like`, :func:`anomaly_cost` and a few modules that fail or are fixed)
  are at the end, so a notebook cell shows the failure, not the loop.

Taught in course/10_debugging.ipynb.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .formats import BF16, FP8_E4M3, FP8_E5M2, FP16, FloatFormat
from .hooks import floating_tensors, on_outputs
from .precision import autocast, make_scaler, recipe

__all__ = [
    "NonFinite",
    "first_nonfinite",
    "HeadroomRow",
    "HeadroomReport",
    "headroom",
    "plot_headroom",
    "ScaleCollapseWarning",
    "ScaleMonitor",
    "lr_sweep",
    "plot_lr_sweep",
    "MonitoredRun",
    "train_monitored",
    "NaiveSoftmax",
    "FP32Softmax",
    "WithLoss",
    "InFP32",
    "MeanPool",
    "t5_like",
    "anomaly_cost",
]

DEFAULT_FORMATS = (FP16, BF16, FP8_E4M3, FP8_E5M2)


# -- shared helpers -------------------------------------------------------------------------
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
    tensors = [t for t in floating_tensors(output) if t.requires_grad]
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

    def pre_hook(module: nn.Module, args: tuple) -> tuple:
        def tag(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and x.is_floating_point() and x.requires_grad:
                name = names[module]
                return _Tag.apply(x, lambda g: record(name, module, "backward", "grad of input", g))
            return x

        return tuple(tag(x) for x in args)

    handles = []
    for module in names:
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
        with on_outputs(names, lambda n, m, t: record(n, m, "forward", "output", t)):
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

    def table(
        self, formats: tuple[FloatFormat, ...] | None = None, leaves_only: bool = False
    ) -> str:
        """One line per module: amax of activations and gradients, and bits of headroom
        below each format's max (gradients also: bits above its smallest normal).
        ``leaves_only`` drops the containers (the model and modules with recorded
        children), whose rows repeat their last child's."""
        formats = formats or self.formats
        names = [r.module for r in self.rows]
        rows = [
            r
            for r in self.rows
            if not leaves_only
            or (r.module and not any(n.startswith(r.module + ".") for n in names))
        ]
        head = f"{'module':<14}{'type':<12}{'max|act|':>10}{'max|grad|':>11}"
        head += "".join(f"{'act ' + _short(f):>10}" for f in formats)
        head += "".join(f"{'grad ' + _short(f):>14}" for f in formats)
        lines = [head, "-" * len(head)]
        for r in rows:
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


def plot_headroom(
    report: HeadroomReport, formats: tuple[FloatFormat, ...] = (FP16, BF16), ax: Any = None
) -> Any:
    """Bars of activation headroom in bits, ``log2(fmt.max / max|a|)``, per leaf module and
    format, with 0 (the overflow line) marked: a bar below it overflows. Returns the axes.
    Taught in course/10_debugging.ipynb."""
    import matplotlib.pyplot as plt

    names = [r.module for r in report.rows]
    leaves = [
        r for r in report.rows if r.module and not any(n.startswith(r.module + ".") for n in names)
    ]
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3))
    width = 0.8 / len(formats)
    for i, fmt in enumerate(formats):
        bits = [max(min(_bits(r.act_amax, fmt)[0], 200.0), -200.0) for r in leaves]
        xs = [j + (i - (len(formats) - 1) / 2) * width for j in range(len(leaves))]
        ax.bar(xs, bits, width, label=fmt.name)
    ax.axhline(0, color="k", linewidth=1)
    ax.set_yscale("symlog", linthresh=4)  # a few bits below 0 stay visible next to 100+
    ax.set_xticks(range(len(leaves)), [r.module for r in leaves], rotation=45)
    ax.set(xlabel="module", ylabel="bits below the format's max")
    ax.set_title("Activation headroom (below 0: overflow)")
    ax.legend()
    return ax


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

    def hook(name: str, module: nn.Module, t: torch.Tensor) -> None:
        if module not in order:
            order.append(module)
        act[name] = max(act.get(name, 0.0), amax(t))
        if loss_fn is not None and t.requires_grad:
            t.register_hook(lambda g, n=name: grad.__setitem__(n, max(grad.get(n, 0.0), amax(g))))

    with on_outputs(names, hook):
        out = model(*inputs)
        if loss_fn is not None:
            loss = loss_fn(out)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(f"headroom: loss_fn must return a scalar tensor, got {loss!r}")
            if not loss.requires_grad:
                raise ValueError("headroom: the loss needs no grad (frozen model or no_grad?)")
            _backward_to_leaves(model, inputs, loss)
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
    """The loss scale keeps falling: gradients are inf/NaN at every scale (from the forward
    pass, the loss, or the backward of an op).

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
                "not overflow of large gradients: a real inf/NaN comes from the forward pass or "
                "the loss (the loss is then inf/NaN too), or from the backward of an op (a "
                "finite loss: e.g. BCELoss on a sigmoid saturated to 1 in FP16). Find it with "
                "mpcourse.debug.first_nonfinite(model, inputs, backward=True) under autocast; "
                "fix that op (run it in FP32 in a torch.autocast(enabled=False) region, use the "
                "fused loss such as BCEWithLogitsLoss, or BF16), do not lower the scale by hand."
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


# -- the chapter's harnesses -------------------------------------------------------------------
LR_MODES = ("fp32", "amp-fp16", "pure-bf16")  # recipes of mpcourse.precision


def _lr_run(
    X: torch.Tensor, Y: torch.Tensor, mode: str, lr: float, steps: int, batch: int
) -> tuple[float, float]:
    from .models import MLP

    torch.manual_seed(0)
    device = X.device
    model = MLP(X.shape[1], (64,), int(Y.max()) + 1).to(device)
    r = recipe(mode)
    if r.pure:
        model = model.to(r.param_dtype)
    start = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = make_scaler(r, device)
    order = torch.Generator().manual_seed(0)
    dtype = next(model.parameters()).dtype
    for _ in range(steps):
        idx = torch.randint(0, len(X), (batch,), generator=order).to(device)
        with autocast(r, device):
            loss = nn.functional.cross_entropy(model(X[idx].to(dtype)).float(), Y[idx])
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    with torch.no_grad():
        final = nn.functional.cross_entropy(model(X.to(dtype)).float(), Y).item()
    frozen = sum(int((p == s).sum()) for p, s in zip(model.parameters(), start, strict=True))
    return final, frozen / sum(p.numel() for p in start)


def lr_sweep(
    X: torch.Tensor,
    Y: torch.Tensor,
    rates: tuple[float, ...],
    modes: tuple[str, ...] = LR_MODES,
    steps: int = 100,
    batch: int = 64,
) -> dict[tuple[str, float], tuple[float, float]]:
    """Train ``MLP(in, (64,), classes)`` from the same seed with SGD for each mode and rate.

    Modes (recipes of :mod:`mpcourse.precision`): ``"fp32"``; ``"amp-fp16"`` (FP16 autocast
    + GradScaler, FP32 weights: the update is ``w - lr * g`` in FP32); ``"pure-bf16"``
    (``model.to(bfloat16)``, no master copy: an
    update smaller than half a BF16 spacing of ``w``, ``|lr * g| < |w| 2^-9``, is lost).
    Returns ``{(mode, lr): (final training loss on all of X, share of weights never moved)}``.

    Taught in course/10_debugging.ipynb.
    """
    bad = [m for m in modes if m not in LR_MODES]
    if bad:
        raise ValueError(f"lr_sweep: unknown mode(s) {bad}; use some of {LR_MODES}")
    if not rates or any(not (isinstance(r, (int, float)) and r > 0) for r in rates):
        raise ValueError(f"lr_sweep: rates must be positive numbers, got {rates!r}")
    return {(m, lr): _lr_run(X, Y, m, lr, steps, batch) for m in modes for lr in rates}


def plot_lr_sweep(sweep: dict[tuple[str, float], tuple[float, float]]) -> Any:
    """Two panels for :func:`lr_sweep`'s result: final loss per mode against the learning
    rate (log-log), and the share of BF16 weights that never moved. Returns the figure.
    Taught in course/10_debugging.ipynb."""
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(m for m, _ in sweep))
    rates = sorted({lr for _, lr in sweep})
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.2))
    for m, style in zip(modes, ("-o", "--x", "-s"), strict=False):
        ax.plot(rates, [sweep[m, lr][0] for lr in rates], style, label=m)
    if "pure-bf16" in modes:
        share = [100 * sweep["pure-bf16", lr][1] for lr in rates]
        ax2.plot(rates, share, "-s", color="C2")
    for a in (ax, ax2):
        a.set_xscale("log")
        a.set_xlabel("learning rate (SGD)")
    ax.set(yscale="log", ylabel="training loss after the run", title="final loss per format")
    ax.legend()
    ax2.set(ylabel="% of BF16 weights never updated", title="pure BF16 weights: swamped updates")
    fig.tight_layout()
    return fig


@dataclass
class MonitoredRun:
    """What :func:`train_monitored` saw: the loss of every step, the monitor, the warnings.

    Taught in course/10_debugging.ipynb."""

    losses: list[float]
    monitor: ScaleMonitor
    warnings: list[str]


def train_monitored(
    model: nn.Module,
    X: torch.Tensor,
    Y: torch.Tensor,
    *,
    steps: int = 60,
    lr: float = 2.0,
    precision: str = "amp-fp16",
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    **scaler_kwargs: Any,
) -> MonitoredRun:
    """SGD on random batches of 64 in ``precision`` (``"amp-fp16"``: autocast + GradScaler,
    ``"amp-bf16"``: autocast, no scaler; :mod:`mpcourse.precision`),
    with a :class:`ScaleMonitor` stepped after every ``update()``.

    ``loss_fn(output, y)`` defaults to cross-entropy. Taught in course/10_debugging.ipynb.
    """
    if precision not in ("amp-fp16", "amp-bf16"):
        raise ValueError(
            f"train_monitored: precision must be 'amp-fp16' or 'amp-bf16' (autocast in float16 "
            f"or bfloat16), got {precision!r}"
        )
    loss_fn = loss_fn or nn.functional.cross_entropy
    device = X.device
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(device.type, enabled=recipe(precision).scaler, **scaler_kwargs)
    monitor = ScaleMonitor(scaler)
    order = torch.Generator().manual_seed(0)
    losses = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ScaleCollapseWarning)
        for _ in range(steps):
            idx = torch.randint(0, len(X), (64,), generator=order).to(device)
            with autocast(precision, device):
                loss = loss_fn(model(X[idx]), Y[idx])
            losses.append(loss.item())
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            monitor.step()
    found = [str(w.message) for w in caught if issubclass(w.category, ScaleCollapseWarning)]
    return MonitoredRun(losses, monitor, found)


class NaiveSoftmax(nn.Module):
    """``exp(x) / sum(exp(x))``: in FP16, exp overflows once x > ln(65504) = 11.09, and
    inf / inf = NaN. Taught in course/10_debugging.ipynb."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = torch.exp(x)
        return e / e.sum(-1, keepdim=True)


class FP32Softmax(nn.Module):
    """The fix: autocast off, inputs cast to FP32, the maximum subtracted before ``exp``.
    Taught in course/10_debugging.ipynb."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            e = torch.exp(x - x.amax(-1, keepdim=True))
            return e / e.sum(-1, keepdim=True)


class WithLoss(nn.Module):
    """``loss(sigmoid(model(x)), y)`` (or ``loss(model(x), y)`` with ``sigmoid=False``) as
    one module, so the loss's own backward is hooked by :func:`first_nonfinite`.
    Taught in course/10_debugging.ipynb."""

    def __init__(self, model: nn.Module, loss: nn.Module, sigmoid: bool) -> None:
        super().__init__()
        self.model, self.loss, self.sigmoid = model, loss, sigmoid

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        return self.loss(torch.sigmoid(z) if self.sigmoid else z, y)


class InFP32(nn.Module):
    """Run ``block`` in FP32 inside an autocast region (autocast off, inputs cast up).
    Taught in course/10_debugging.ipynb."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.block(x.float())


class MeanPool(nn.Module):
    """``x.sum(1, dtype=accumulate) / n``, returned in ``x.dtype``: with ``accumulate=None``
    an FP16 input gives an FP16 sum, inf once it exceeds 65504 (PyTorch accumulates Half
    reductions in FP32 internally, but the returned sum is FP16).
    Taught in course/10_debugging.ipynb."""

    def __init__(self, accumulate: torch.dtype | None = None) -> None:
        super().__init__()
        self.accumulate = accumulate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.sum(1, dtype=self.accumulate) / x.shape[1]).to(x.dtype)


def t5_like(
    width: int = 16, hot: int = 2, peak: float = 3e5, device: str | torch.device = "cpu"
) -> tuple[nn.Sequential, torch.Tensor]:
    """Four ``Linear-GELU-Linear`` blocks whose block ``hot`` peaks at ``peak`` inside.

    The T5 story in small: a model trained in BF16 with activations beyond FP16's 65504.
    Block ``hot``'s first layer is scaled up to reach ``peak`` and its last layer scaled
    down by the same factor, so the block's output keeps its size; the block before it
    is scaled x40, so that the weights themselves still fit FP16. Returns the model
    (eval mode) and a batch of 32 inputs. Taught in course/10_debugging.ipynb.
    """
    if not (isinstance(hot, int) and 1 <= hot <= 2):
        raise ValueError(f"t5_like: hot must be 1 or 2 (a middle block), got {hot!r}")
    if not peak > 0:
        raise ValueError(f"t5_like: peak must be positive, got {peak!r}")
    torch.manual_seed(0)
    blocks = [
        nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width)) for _ in range(4)
    ]
    model = nn.Sequential(*blocks).to(device).eval()
    x = torch.randn(32, width, device=device)
    with torch.no_grad():
        model[hot - 1][2].weight.mul_(40.0)
        top = float(model[hot][0](model[:hot](x)).abs().max())
        model[hot][0].weight.mul_(peak / top)
        model[hot][0].bias.mul_(peak / top)
        model[hot][2].weight.mul_(top / peak)
    return model, x


def anomaly_cost(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    repeats: int = 15,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Seconds per forward + backward step without and with
    ``torch.autograd.detect_anomaly(check_nan=True)``: the minimum over ``repeats``
    interleaved runs (the least disturbed one on a shared machine), and their ratio.

    Anomaly mode stores the forward traceback of every op and checks every backward
    output for NaN, so it costs time on every step: a tool for a short run, not for
    training. Taught in course/10_debugging.ipynb.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"anomaly_cost: repeats must be a positive int, got {repeats!r}")
    loss_fn = loss_fn or nn.functional.cross_entropy

    def step() -> None:
        loss_fn(model(x), y).backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up
    best = {"plain_s": math.inf, "anomaly_s": math.inf}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Anomaly Detection has been enabled..."
        for _ in range(repeats):
            for key, anomaly in (("plain_s", False), ("anomaly_s", True)):
                start = time.perf_counter()
                with torch.autograd.set_detect_anomaly(anomaly, check_nan=True):
                    step()
                best[key] = min(best[key], time.perf_counter() - start)
    return best | {"ratio": best["anomaly_s"] / best["plain_s"]}
