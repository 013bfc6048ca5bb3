"""Loss scaling from scratch: a static and a dynamic loss scaler.

FP16 gradients below 2^-25 round to zero. Loss scaling runs ``backward()`` on
``S * loss``, so every gradient is ``S * g`` (``log2 S`` binades higher), and
divides the FP32 gradients by ``S`` before the optimizer uses them. If any
``S * g`` is inf or NaN the step is skipped, and the dynamic scaler adapts
``S`` (:func:`next_scale`): halve it on overflow, double it after
``growth_interval`` clean steps in a row.

:class:`DynamicLossScaler` has the observable behaviour of
``torch.amp.GradScaler`` on one device (defaults, scale trajectory, skipped
steps, bit-identical parameters, ``state_dict``, exception types on misuse)
and keeps its per-optimizer state machine: READY -> ``unscale_`` -> UNSCALED
-> ``step`` -> STEPPED -> ``update`` -> READY. Deliberate differences:
nonsensical settings are refused up front, ``update(new_scale)`` also takes an
int, gradients must sit on one device, ``skipped_steps`` counts skips, and a
fused optimizer whose gradients appeared only after ``unscale_`` gets a clear
error (GradScaler fails there with an ``AttributeError``). FP16 sparse
gradients are coalesced before the inf check (duplicates are summed, and
``64000 + 64000`` overflows), a scaler pickles only between iterations, and
the deprecated ``step(grad_scaler=...)`` protocol of custom optimizers is kept
(with GradScaler's ``FutureWarning``).

Taught in course/05_loss_scaling.ipynb.
"""

from __future__ import annotations

import inspect
import math
import struct
import warnings
from collections import abc, defaultdict
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch

__all__ = [
    "OptState",
    "ScalerUsageError",
    "ScalerConfigError",
    "next_scale",
    "unscale_grads_",
    "DynamicLossScaler",
    "StaticLossScaler",
    "found_inf",
    "scale_trajectory",
]


class OptState(Enum):
    """Where one optimizer is in the current iteration (torch.amp's names).

    Taught in course/05_loss_scaling.ipynb."""

    READY = 0
    UNSCALED = 1
    STEPPED = 2


class ScalerUsageError(RuntimeError, AssertionError):
    """Scaler methods called in the wrong order (GradScaler raises RuntimeError or
    AssertionError for these; ours is both). Taught in course/05_loss_scaling.ipynb."""


class ScalerConfigError(ValueError, AssertionError):
    """A scaler setting is out of range (GradScaler: AssertionError).

    Taught in course/05_loss_scaling.ipynb."""


def _fp32(x: float) -> float:
    """Round a Python float (FP64) to the nearest FP32 value, as a C++ float cast does."""
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:  # finite in FP64 but beyond FP32's range
        return math.copysign(math.inf, x)


def next_scale(
    scale: float,
    growth_tracker: int,
    found_inf: bool,
    *,
    growth_factor: float = 2.0,
    backoff_factor: float = 0.5,
    growth_interval: int = 2000,
) -> tuple[float, int]:
    """One dynamic-scaling update: return ``(new_scale, new_growth_tracker)``.

    Overflow: ``S' = fp32(S * backoff_factor)``, tracker reset to 0.
    Clean step: ``t' = t + 1``; when ``t' == growth_interval`` the scale grows,
    ``S' = fp32(S * growth_factor)`` (kept at ``S`` if that is inf in FP32) and
    ``t' = 0``. Products are taken in FP64 and rounded to FP32, exactly as
    torch's ``_amp_update_scale_`` kernel does.

    Taught in course/05_loss_scaling.ipynb.
    """
    if found_inf:
        return _fp32(scale * backoff_factor), 0
    successful = growth_tracker + 1
    if successful == growth_interval:
        grown = _fp32(scale * growth_factor)
        return (grown if math.isfinite(grown) else scale), 0
    return scale, successful


def unscale_grads_(
    grads: list[torch.Tensor],
    inv_scale: torch.Tensor,
    found_inf: torch.Tensor,
    *,
    fused: bool = True,
) -> None:
    """``g <- g * inv_scale`` in place for every ``g``; ``found_inf <- 1`` if any value is inf/NaN.

    ``inv_scale`` and ``found_inf`` are one-element FP32 tensors on the
    gradients' device. ``fused=False`` is the readable loop (one check and one
    multiply per tensor); ``fused=True`` (the default) makes one call per dtype
    to ``torch._amp_foreach_non_finite_check_and_unscale_``, the multi-tensor
    kernel GradScaler uses: same result, far fewer Python round trips.

    Taught in course/05_loss_scaling.ipynb.
    """
    if not fused:
        for g in grads:
            if not bool(torch.isfinite(g).all()):
                found_inf.fill_(1.0)
            g.mul_(inv_scale)
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = defaultdict(list)
    for g in grads:
        by_dtype[g.dtype].append(g)
    for group in by_dtype.values():
        torch._amp_foreach_non_finite_check_and_unscale_(group, found_inf, inv_scale)


@dataclass
class _PerOptimizer:
    """What the scaler knows about one optimizer during the current iteration."""

    stage: OptState = OptState.READY
    found_inf: torch.Tensor | None = None  # 1.0 if a gradient held inf/NaN; None: not checked


class DynamicLossScaler:
    """Dynamic loss scaling, written to be read; behaves like ``torch.amp.GradScaler``::

        scaler.scale(loss).backward()   # grads are S * g
        scaler.unscale_(optimizer)      # optional: grads are g (e.g. to clip them)
        scaler.step(optimizer)          # skipped if any grad is inf/NaN
        scaler.update()                 # S shrinks after an overflow, grows after clean runs

    ``enabled=False`` turns every method into a pass-through.

    Taught in course/05_loss_scaling.ipynb.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
    ) -> None:
        self._enabled = bool(enabled)
        if self._enabled:
            if not growth_factor > 1.0:
                raise ScalerConfigError(f"The growth factor must be > 1.0, got {growth_factor!r}.")
            if not 0.0 < backoff_factor < 1.0:
                raise ScalerConfigError(
                    f"The backoff factor must be in (0, 1), got {backoff_factor!r}."
                )
            if isinstance(growth_interval, bool) or not isinstance(growth_interval, int):
                raise TypeError(f"growth_interval must be an int, got {growth_interval!r}.")
            if growth_interval < 1:
                raise ScalerConfigError(f"growth_interval must be >= 1, got {growth_interval}.")
            _check_scale(init_scale, "init_scale")
        self._init_scale = float(init_scale)
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = growth_interval
        self._growth_tracker = 0
        self._scale: torch.Tensor | None = None  # 0-dim FP32 tensor, created by the first scale()
        self._states: dict[int, _PerOptimizer] = defaultdict(_PerOptimizer)
        self.skipped_steps = 0

    # -- the four calls of a training step -------------------------------------------------
    def scale(self, outputs: Any) -> Any:
        """Return ``outputs * S``: a tensor, or a list/tuple/iterable of tensors (nested)."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, torch.Tensor):
            if self._scale is None:  # lazily, on the device of the first scaled output
                self._scale = torch.full(
                    (), self._init_scale, dtype=torch.float32, device=outputs.device
                )
            return outputs * self._scale.to(outputs.device, non_blocking=True)
        if isinstance(outputs, abc.Iterable):
            scaled = map(self.scale, outputs)
            return type(outputs)(scaled) if isinstance(outputs, (list, tuple)) else scaled
        raise ValueError(
            f"outputs must be a Tensor or an iterable of Tensors, got {type(outputs).__name__}"
        )

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the optimizer's gradients by ``S`` in place and record whether any is inf/NaN."""
        if not self._enabled:
            return
        scale = self._require_scale("unscale_")
        state = self._states[id(optimizer)]
        if state.stage is not OptState.READY:
            raise ScalerUsageError(
                "unscale_() has already been called on this optimizer since the last update(): "
                "call it at most once per iteration, between backward() and step()."
                if state.stage is OptState.UNSCALED
                else "unscale_() is being called after step(): call unscale_() before step(), "
                "and update() once at the end of the iteration."
            )
        inv_scale = scale.double().reciprocal().float()  # 1/S in FP64, then rounded, like torch
        state.found_inf = self._check_and_unscale(optimizer, inv_scale, allow_fp16=False)
        state.stage = OptState.UNSCALED

    def step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        """Unscale (unless done), then run ``optimizer.step(*args, **kwargs)`` if all grads are
        finite and return its value; return None (skipping the step) otherwise."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError(
                "Closure use is not currently supported if the loss scaler is enabled: "
                "compute the loss and backward() yourself, then call scaler.step(optimizer)."
            )
        self._require_scale("step")
        state = self._states[id(optimizer)]
        if state.stage is OptState.STEPPED:
            raise ScalerUsageError(
                "step() has already been called since the last update(): call "
                "scaler.update() at the end of each iteration, before the next step()."
            )
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            if "grad_scaler" in inspect.signature(optimizer.step).parameters:
                return self._legacy_grad_scaler_step(optimizer, state, *args, **kwargs)
            return self._fused_step(optimizer, state, *args, **kwargs)
        if state.stage is OptState.READY:
            self.unscale_(optimizer)
        if state.found_inf is None:
            raise ScalerUsageError(
                "No inf checks were recorded for this optimizer: none of its parameters has a "
                ".grad. Call scaler.scale(loss).backward() before scaler.step(optimizer)."
            )
        retval = None
        if state.found_inf.item():
            self.skipped_steps += 1
        else:
            retval = optimizer.step(*args, **kwargs)
        state.stage = OptState.STEPPED
        return retval

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        """End the iteration: apply :func:`next_scale` (or set ``new_scale``) and reset the
        per-optimizer states."""
        if not self._enabled:
            return
        scale = self._require_scale("update")
        if new_scale is None:
            found = [s.found_inf for s in self._states.values() if s.found_inf is not None]
            if not found:
                raise ScalerUsageError(
                    "No inf checks were recorded prior to update(): call "
                    "scaler.step(optimizer) for each optimizer before scaler.update()."
                )
            self._update_scale(any(bool(f.item()) for f in found))
        elif isinstance(new_scale, (int, float)) and not isinstance(new_scale, bool):
            scale.fill_(float(new_scale))
        elif (
            isinstance(new_scale, torch.Tensor)
            and new_scale.device.type == scale.device.type
            and new_scale.numel() == 1
            and not new_scale.requires_grad
        ):
            scale.copy_(new_scale)
        else:
            raise ScalerConfigError(
                "new_scale should be a float or a 1-element tensor on the scale's device "
                f"({scale.device.type}) with requires_grad=False, got {new_scale!r}: "
                "pass e.g. update(1024.0), or update() to let the scaler decide."
            )
        self._states = defaultdict(_PerOptimizer)

    # -- the algorithm ---------------------------------------------------------------------
    def _update_scale(self, found_inf: bool) -> None:
        assert self._scale is not None
        new, self._growth_tracker = next_scale(
            self._scale.item(),
            self._growth_tracker,
            found_inf,
            growth_factor=self._growth_factor,
            backoff_factor=self._backoff_factor,
            growth_interval=self._growth_interval,
        )
        self._scale.fill_(new)

    def _require_scale(self, funcname: str) -> torch.Tensor:
        if self._scale is None:
            raise ScalerUsageError(
                f"Attempted {funcname}() before any scale(): the scale is created by the first "
                "scaler.scale(loss). Call scaler.scale(loss).backward() earlier in the iteration."
            )
        return self._scale

    def _check_and_unscale(
        self, optimizer: torch.optim.Optimizer, inv_scale: torch.Tensor, allow_fp16: bool
    ) -> torch.Tensor | None:
        """Unscale every gradient of ``optimizer``; return the found-inf flag (None: no grads)."""
        grads = []
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not allow_fp16 and param.grad.dtype == torch.float16:
                    raise ValueError(
                        "Attempting to unscale FP16 gradients: the optimizer holds float16 "
                        f"parameters (shape {tuple(param.shape)}). Keep the parameters an "
                        "optimizer updates in float32: use autocast (not model.half()), or "
                        "FP32 master weights (mpcourse.master.MasterWeights)."
                    )
                if param.grad.is_sparse:
                    # duplicate indices are summed by coalesce(): check the sums, which may
                    # overflow FP16 although every raw entry is finite (64000 + 64000)
                    if param.grad.dtype == torch.float16:
                        param.grad = param.grad.coalesce()
                    grads.append(param.grad._values())
                else:
                    grads.append(param.grad)
        if not grads:
            return None
        devices = {g.device for g in grads}
        if len(devices) > 1:
            raise ValueError(
                "DynamicLossScaler handles gradients on one device, found "
                f"{sorted(map(str, devices))}: use torch.amp.GradScaler for a model spread over "
                "several devices."
            )
        found_inf = torch.zeros((), dtype=torch.float32, device=grads[0].device)
        with torch.no_grad():
            unscale_grads_(grads, inv_scale.to(grads[0].device), found_inf)
        return found_inf

    def _fused_step(
        self, optimizer: torch.optim.Optimizer, state: _PerOptimizer, *args: Any, **kwargs: Any
    ) -> Any:
        """Optimizers built with ``fused=True`` unscale and skip inside their own kernel: they
        read ``optimizer.grad_scale`` and ``optimizer.found_inf`` (GradScaler's contract)."""
        scale = self._require_scale("step")
        if state.stage is OptState.READY:  # only look for inf/NaN (inv_scale 1), keep S * g
            one = torch.ones((), dtype=torch.float32, device=scale.device)
            state.found_inf = self._check_and_unscale(optimizer, one, allow_fp16=True)
            optimizer.grad_scale = scale * getattr(optimizer, "grad_scale", 1)  # type: ignore[attr-defined]
        elif state.found_inf is None:
            # unscale_() saw no .grad, so it divided nothing: the gradients that exist now
            # are still S * g, and the fused kernel (told they are unscaled) would apply them
            raise ScalerUsageError(
                "unscale_() was called when no parameter of this fused optimizer had a .grad, "
                "so the gradients made since are still multiplied by the scale: call "
                "scaler.unscale_(optimizer) after scaler.scale(loss).backward()."
            )
        found_inf = state.found_inf if state.found_inf is not None else torch.zeros_like(scale)
        optimizer.found_inf = found_inf.to(scale.device)  # type: ignore[attr-defined]
        retval = optimizer.step(*args, **kwargs)
        self.skipped_steps += int(bool(optimizer.found_inf.item()))  # type: ignore[attr-defined]
        state.stage = OptState.STEPPED
        del optimizer.found_inf  # type: ignore[attr-defined]
        if hasattr(optimizer, "grad_scale"):
            del optimizer.grad_scale  # type: ignore[attr-defined]
        return retval

    def _legacy_grad_scaler_step(
        self, optimizer: torch.optim.Optimizer, state: _PerOptimizer, *args: Any, **kwargs: Any
    ) -> Any:
        """The deprecated protocol: ``optimizer.step(grad_scaler=self)`` does all the work,
        reading :meth:`_get_scale_async` and calling :meth:`_check_inf_per_device` itself."""
        warnings.warn(
            "GradScaler is going to stop passing itself as a keyword argument to the passed "
            "optimizer. In the near future GradScaler registers `grad_scale: Tensor` and "
            "`found_inf: Tensor` to the passed optimizer and let the optimizer use them directly.",
            FutureWarning,
            stacklevel=3,
        )
        retval = optimizer.step(*args, grad_scaler=self, **kwargs)
        state.stage = OptState.STEPPED
        return retval

    # the three calls the deprecated protocol's optimizers make (GradScaler's private names)
    def _get_scale_async(self) -> torch.Tensor | None:
        return self._scale

    def _check_inf_per_device(self, optimizer: torch.optim.Optimizer) -> dict[torch.device, Any]:
        scale = self._require_scale("_check_inf_per_device")
        one = torch.ones((), dtype=torch.float32, device=scale.device)
        state = self._states[id(optimizer)]
        state.found_inf = self._check_and_unscale(optimizer, one, allow_fp16=True)
        return self._found_inf_per_device(optimizer)

    def _found_inf_per_device(self, optimizer: torch.optim.Optimizer) -> dict[torch.device, Any]:
        found = self._states[id(optimizer)].found_inf
        return {} if found is None else {found.device: found}

    # -- pickling: only between iterations, like GradScaler --------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._enabled:
            if self._states:
                raise ScalerUsageError(
                    "A loss scaler may only be pickled at the beginning of an iteration, or at "
                    "the end after scaler.update()."
                )
            # the unpickled copy starts like a fresh scaler: its scale tensor is made by scale()
            state["_init_scale"] = self.get_scale()
            state["_scale"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # -- inspection and checkpoints: GradScaler's accessors --------------------------------
    def get_scale(self) -> float:
        """The current scale as a Python float (1.0 when disabled)."""
        if not self._enabled:
            return 1.0
        return self._init_scale if self._scale is None else self._scale.item()

    def is_enabled(self) -> bool:
        return self._enabled

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def set_growth_factor(self, new_factor: float) -> None:
        self._growth_factor = new_factor

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def set_backoff_factor(self, new_factor: float) -> None:
        self._backoff_factor = new_factor

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def set_growth_interval(self, new_interval: int) -> None:
        self._growth_interval = new_interval

    _STATE_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")

    def state_dict(self) -> dict[str, Any]:
        """GradScaler's five entries (``{}`` when disabled); save it after ``update()``."""
        if not self._enabled:
            return {}
        everything = {
            "scale": self.get_scale(),
            "growth_factor": self._growth_factor,
            "backoff_factor": self._backoff_factor,
            "growth_interval": self._growth_interval,
            "_growth_tracker": self._growth_tracker,
        }
        return {key: everything[key] for key in self._STATE_KEYS}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (a no-op when disabled)."""
        if not self._enabled:
            return
        if len(state_dict) == 0:
            raise RuntimeError(
                "The source state dict is empty, possibly because it was saved from a disabled "
                "scaler; save the state_dict of an enabled scaler after update()."
            )
        missing = [key for key in self._STATE_KEYS if key not in state_dict]
        if missing:
            raise KeyError(f"scaler state_dict lacks {missing}; pass scaler.state_dict()")
        self._init_scale = float(state_dict["scale"])
        if self._scale is not None:
            self._scale.fill_(self._init_scale)
        self._growth_factor = float(state_dict.get("growth_factor", self._growth_factor))
        self._backoff_factor = float(state_dict.get("backoff_factor", self._backoff_factor))
        self._growth_interval = int(state_dict.get("growth_interval", self._growth_interval))
        self._growth_tracker = int(state_dict.get("_growth_tracker", self._growth_tracker))


class StaticLossScaler(DynamicLossScaler):
    """A fixed loss scale ``S``: same methods and checks as :class:`DynamicLossScaler`.

    A step whose gradients hold inf/NaN is still skipped (the weights stay
    clean), but ``S`` never changes: a scale that is too large overflows, and
    skips, on every step, and training stalls. ``update(new_scale)`` sets it;
    ``state_dict()`` holds only ``"scale"``.

    Taught in course/05_loss_scaling.ipynb.
    """

    _STATE_KEYS = ("scale",)

    def __init__(self, scale: float, enabled: bool = True) -> None:
        if enabled:
            _check_scale(scale, "scale")
        super().__init__(init_scale=scale, enabled=enabled)

    def _update_scale(self, found_inf: bool) -> None:
        return None  # static: the scale stays where it was set


def found_inf(
    scaler: DynamicLossScaler | torch.amp.GradScaler, optimizer: torch.optim.Optimizer
) -> bool:
    """Did ``scaler`` find inf/NaN in ``optimizer``'s gradients this iteration?

    The scaler's own skip decision: ``scaler.step(optimizer)`` skips exactly when
    this is True. Read it after ``unscale_(optimizer)`` (or ``step``) and before
    ``update()``, which forgets it. False for a disabled scaler or an optimizer not
    unscaled yet. Works for :class:`DynamicLossScaler`, ``torch.amp.GradScaler`` and
    its subclasses (``ShardedGradScaler``).

    The package's one reader of a scaler's private state: torch 2.13 has no public
    found-inf signal (``GradScaler._found_inf_per_device`` is private; a public
    ``step(..., return_found_inf=True)`` is proposed upstream), and our
    :class:`DynamicLossScaler` keeps the same method for GradScaler compatibility.
    ``tests/test_private_api.py`` keeps every other module off these names.

    Taught in course/05_loss_scaling.ipynb.
    """
    if not scaler.is_enabled():
        return False
    per_device = scaler._found_inf_per_device(optimizer)  # the audited private read
    return any(bool(v.item()) for v in per_device.values())


def scale_trajectory(
    overflows: abc.Sequence[bool], scaler: DynamicLossScaler | torch.amp.GradScaler
) -> list[float]:
    """``scaler``'s scale after each ``update()`` when step ``i`` overflows exactly where
    ``overflows[i]`` is true: real ``scale -> backward -> step -> update`` calls on a
    one-parameter model (SGD, lr 0) whose gradient is set to inf on an overflow step.
    Chapter 05's prediction exercise checks against it; chapter 17 puts it next to
    DeepSpeed's scaler.

    Taught in course/05_loss_scaling.ipynb.
    """
    out = []
    for overflow in overflows:
        w = torch.nn.Parameter(torch.ones(1))
        opt = torch.optim.SGD([w], lr=0.0)
        scaler.scale(w.sum()).backward()
        if overflow:
            w.grad.fill_(float("inf"))
        scaler.step(opt)
        scaler.update()
        out.append(float(scaler.get_scale()))
    return out


def _check_scale(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive float, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ScalerConfigError(f"{name} must be a positive, finite float, got {value!r}")
