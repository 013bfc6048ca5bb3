"""Mixed precision by hand: an FP16 working model and FP32 master weights.

The recipe of Micikevicius et al. (2018), "Mixed Precision Training":

1. keep an FP32 *master* copy of every weight; the optimizer updates only it;
2. each step, round the master weights to an FP16 *working* copy, run forward
   and backward in FP16 (optionally on a scaled loss, ``S * loss``);
3. copy the FP16 gradients up to FP32, unscale them (``g / S``), skip the step
   if any is inf/NaN, otherwise let any ``torch.optim`` optimizer apply
   ``w32 <- w32 - lr * g32`` in FP32, where small updates are not lost;
4. copy the new weights down: ``w16 <- fp16(w32)``.

An update ``lr * g`` smaller than half the FP16 spacing of ``w`` vanishes in
``w16 + lr * g16`` (it rounds back to ``w16``); in FP32 it accumulates until it
moves ``w16``. That is the fix for the stall of chapter 03.

The module also keeps a *memory ledger*: bytes per parameter of FP32 training,
this master-weight recipe, and autocast-style AMP, with SGD, momentum or Adam,
and :func:`measure_bytes_per_parameter` checks it against real tensor sizes.

Taught in course/04_master_weights.ipynb.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from . import purefp16
from .scaling import DynamicLossScaler, found_inf

__all__ = [
    "MasterWeights",
    "train_master",
    "RECIPES",
    "OPTIMIZER_STATES",
    "ledger",
    "tensor_bytes",
    "measure_bytes_per_parameter",
    "lost_update_sizes",
]

Scaler = DynamicLossScaler | torch.amp.GradScaler


class MasterWeights:
    """An FP16 (or BF16) working model whose weights are rounded from FP32 master weights.

    ``model`` is converted in place to ``dtype`` (like ``model.half()``); its
    FP32 values live on in :attr:`master_params`, which ``make_optimizer``
    (e.g. ``lambda params: torch.optim.SGD(params, lr=0.1)``) optimizes.
    ``scaler`` is an optional loss scaler (:class:`~mpcourse.scaling.DynamicLossScaler`,
    :class:`~mpcourse.scaling.StaticLossScaler` or ``torch.amp.GradScaler``)::

        mw = MasterWeights(model, lambda p: torch.optim.SGD(p, lr=0.1), scaler=DynamicLossScaler())
        for x, y in loader:
            mw.zero_grad()
            loss = F.cross_entropy(mw.model(x.to(mw.dtype)).float(), y)
            mw.backward(loss)   # backward(S * loss) through the FP16 model
            mw.step()           # grads up, unscale, FP32 update (or skip), weights down

    Taught in course/04_master_weights.ipynb.
    """

    def __init__(
        self,
        model: nn.Module,
        make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
        *,
        scaler: Scaler | None = None,
        dtype: torch.dtype = torch.float16,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
        if not callable(make_optimizer) or isinstance(make_optimizer, torch.optim.Optimizer):
            raise TypeError(
                "make_optimizer must be a function from a list of parameters to an optimizer, "
                "e.g. lambda params: torch.optim.SGD(params, lr=0.1); got "
                f"{type(make_optimizer).__name__}"
            )
        if scaler is not None and not isinstance(scaler, (DynamicLossScaler, torch.amp.GradScaler)):
            raise TypeError(
                "scaler must be None, an mpcourse.scaling scaler or a torch.amp.GradScaler, "
                f"got {type(scaler).__name__}"
            )
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no trainable parameters")
        bad = [p.dtype for p in params if p.dtype != torch.float32]
        if bad:
            raise ValueError(f"model must start in float32 (the master copy), found {bad[0]}")
        self.dtype = dtype
        self.master_params = [p.detach().clone().requires_grad_(True) for p in params]
        self.model = model.to(dtype)
        self.working_params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.master_params)
        if not isinstance(self.optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"make_optimizer returned {type(self.optimizer).__name__}, not a torch.optim "
                "optimizer"
            )
        self.scaler = scaler
        self.steps_taken = 0
        self.steps_skipped = 0

    def zero_grad(self) -> None:
        """Forget the gradients of both copies."""
        self.model.zero_grad(set_to_none=True)
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        """``backward(S * loss)`` (or of ``loss`` without a scaler) through the working model."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def grads_to_master(self) -> None:
        """``g32 <- float32(g16)``: exact (every FP16 value is an FP32 value), inf/NaN kept."""
        with torch.no_grad():
            for master, working in zip(self.master_params, self.working_params, strict=True):
                if working.grad is None:
                    master.grad = None
                elif master.grad is None:
                    master.grad = working.grad.float()
                else:
                    master.grad.copy_(working.grad)

    def weights_to_working(self) -> None:
        """``w16 <- fp16(w32)``: round the master weights to the nearest FP16 value."""
        with torch.no_grad():
            torch._foreach_copy_(self.working_params, self.master_params)

    def step(self, max_grad_norm: float | None = None) -> bool:
        """Copy grads up, unscale (and clip to ``max_grad_norm``), update the FP32 master
        weights unless a gradient is inf/NaN, copy weights down. Return True if it stepped."""
        self.grads_to_master()
        if self.scaler is None:
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.master_params, max_grad_norm)
            self.optimizer.step()
            stepped = True
        else:
            if max_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not S * g
                torch.nn.utils.clip_grad_norm_(self.master_params, max_grad_norm)
            self.scaler.step(self.optimizer)
            stepped = not found_inf(self.scaler, self.optimizer)
            self.scaler.update()
        if stepped:
            self.weights_to_working()
            self.steps_taken += 1
        else:
            self.steps_skipped += 1
        return stepped

    def master_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict with the FP32 master values in place of the FP16 weights."""
        state = {
            k: v.float() if v.is_floating_point() else v for k, v in self.model.state_dict().items()
        }
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        for name, master in zip(names, self.master_params, strict=True):
            state[name] = master.detach().clone()
        return state


def train_master(
    model: nn.Module,
    dataset: TensorDataset,
    *,
    scaler: Scaler | None = None,
    dtype: torch.dtype = torch.float16,
    eval_data: TensorDataset | None = None,
    device: torch.device | str | None = None,
    **setup: Any,
) -> purefp16.History:
    """Chapter 03's experiment (:func:`mpcourse.purefp16.train`) with FP32 master weights.

    Same settings (``setup``: the fields of :class:`mpcourse.purefp16.TrainSetup`, the same
    ``SETUP`` dict as chapter 03's ``train``), same copy of ``model``, same batches,
    same loss ``L = mean_i CE(f16(x_i), y_i)`` computed from the FP16 logits, same
    optimizer settings; the only change is the recipe: the optimizer updates FP32
    master weights, the FP16 model gets their rounding. ``lost`` counts the master
    weights with a nonzero gradient that did not change (0 for a skipped step, whose
    gradients are not counted as attempted). ``precision`` is ``"master"`` or
    ``"master+scaling"``; the trained FP16 model is ``history.model``. ``device`` defaults
    to the model's.

    Taught in course/04_master_weights.ipynb.
    """
    run = purefp16.TrainSetup.of("train_master", setup)
    net = copy.deepcopy(model).float()
    device = torch.device(device) if device is not None else next(net.parameters()).device
    net = net.to(device)
    mw = MasterWeights(net, run.make_optimizer, scaler=scaler, dtype=dtype)
    name = "master" if scaler is None else "master+scaling"
    hist = purefp16.History(precision=name, optimizer=run.optimizer, lr=run.lr, model=mw.model)
    data = run.batches(dataset)
    for step in range(run.steps):
        x, y = next(data)
        x, y = x.to(device, dtype), y.to(device)
        out = mw.model(x)
        loss = F.cross_entropy(out, y)
        mw.zero_grad()
        mw.backward(loss)
        before = [m.detach().clone() for m in mw.master_params]
        if mw.step():
            attempted, lost = purefp16.lost_updates(before, mw.master_params)
        else:
            attempted = lost = 0
        hist.record(step, loss, out, y, attempted, lost)
    if eval_data is not None:
        hist.eval_loss, hist.eval_accuracy = purefp16.evaluate(mw.model, eval_data)
    return hist


# -- the memory ledger ----------------------------------------------------------------------

RECIPES = ("fp32", "master", "amp")
OPTIMIZER_STATES = {"sgd": 0, "momentum": 1, "adam": 2}  # FP32 tensors per parameter


def ledger(recipe: str, optimizer: str = "sgd") -> dict[str, int]:
    """Bytes per parameter, item by item, for a recipe and an optimizer.

    * ``"fp32"``: weights 4 + grads 4.
    * ``"master"`` (this module): FP16 weights 2 + FP16 grads 2 + FP32 master
      weights 4 + FP32 master grads 4.
    * ``"amp"`` (autocast + GradScaler): FP32 weights 4 + FP32 grads 4 + FP16
      copies of the weights made by autocast 2 (transient: they live from the
      forward pass to the end of backward).

    Each adds 4 bytes per FP32 optimizer state: SGD 0, momentum 1, Adam 2
    (``exp_avg``, ``exp_avg_sq``). ZeRO (Rajbhandari et al. 2020) counts
    16 bytes for mixed-precision Adam, 2 + 2 + (4 + 4 + 4): the ``"master"``
    row without the FP32 master grads, which it does not count (an optimizer
    can convert the FP16 gradients on the fly instead of storing FP32 copies).

    Taught in course/04_master_weights.ipynb.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZER_STATES)}, got {optimizer!r}")
    if recipe == "fp32":
        items = {"weights fp32": 4, "grads fp32": 4}
    elif recipe == "master":
        items = {
            "weights fp16": 2,
            "grads fp16": 2,
            "master weights fp32": 4,
            "master grads fp32": 4,
        }
    else:
        items = {"weights fp32": 4, "grads fp32": 4, "autocast weight copies fp16": 2}
    items["optimizer states fp32"] = 4 * OPTIMIZER_STATES[optimizer]
    return items


def tensor_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Total bytes of the distinct storages behind ``tensors`` (views counted once).

    Taught in course/04_master_weights.ipynb.
    """
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None:
            continue
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _make_optimizer(name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3)
    if name == "momentum":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    return torch.optim.Adam(params, lr=1e-3)


def measure_bytes_per_parameter(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    recipe: str,
    optimizer: str = "sgd",
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
) -> dict[str, float]:
    """Train ``model`` (FP32, changed in place) one step with ``recipe``, then measure the bytes
    per parameter of each ledger item from the real tensors (same keys as :func:`ledger`).

    Optimizer states are every tensor in ``optimizer.state`` (Adam's step counters included,
    so the measured value sits a hair above the ledger). Autocast's weight copies are the
    low-precision tensors autograd saved for backward that equal a cast parameter.

    Taught in course/04_master_weights.ipynb.
    """
    ledger(recipe, optimizer)  # validates both names
    x, y = batch
    n = sum(p.numel() for p in model.parameters())
    device = next(model.parameters()).device
    out: dict[str, float] = {}
    if recipe == "master":
        mw = MasterWeights(model, lambda p: _make_optimizer(optimizer, p))
        mw.zero_grad()
        mw.backward(loss_fn(mw.model(x.to(mw.dtype)).float(), y))
        mw.step()
        out["weights fp16"] = tensor_bytes(mw.working_params)
        out["grads fp16"] = tensor_bytes(p.grad for p in mw.working_params)
        out["master weights fp32"] = tensor_bytes(mw.master_params)
        out["master grads fp32"] = tensor_bytes(p.grad for p in mw.master_params)
        opt = mw.optimizer
    else:
        params = list(model.parameters())
        opt = _make_optimizer(optimizer, params)
        if recipe == "amp":
            low = torch.float16
            casts = [p.detach().to(low) for p in params]
            saved: list[torch.Tensor] = []

            def pack(t: torch.Tensor) -> torch.Tensor:
                base = t if t._base is None else t._base  # e.g. w.t() saved by linear
                if base.dtype == low and any(
                    c.shape == base.shape and torch.equal(c, base) for c in casts
                ):
                    saved.append(base)
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                with torch.autocast(device.type, dtype=low):
                    loss = loss_fn(model(x), y)
                loss.backward()
            out["weights fp32"] = tensor_bytes(params)
            out["grads fp32"] = tensor_bytes(p.grad for p in params)
            out["autocast weight copies fp16"] = tensor_bytes(saved)
        else:
            loss_fn(model(x), y).backward()
            out["weights fp32"] = tensor_bytes(params)
            out["grads fp32"] = tensor_bytes(p.grad for p in params)
        opt.step()
    states = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    out["optimizer states fp32"] = tensor_bytes(states)
    return {k: v / n for k, v in out.items()}


def lost_update_sizes(
    model16: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    use_master: bool,
    lr: float = 1e-3,
) -> torch.Tensor:
    """Relative sizes ``|lr * g| / |w|`` of the updates one SGD step failed to store.

    One step of ``torch.optim.SGD(lr)`` on ``mean CE(f16(x), y)`` from a copy of the FP16
    (or BF16) ``model16``: on its own weights (pure low precision) or, with
    ``use_master``, on FP32 master weights (:class:`MasterWeights`). A weight counts as
    lost when its gradient is nonzero but its stored value did not change. Pure FP16
    loses updates up to about ``2^-11`` of the weight; master weights none above
    ``2^-24``, FP32's own resolution.

    Taught in course/04_master_weights.ipynb.
    """
    net = copy.deepcopy(model16)
    dtype = next(net.parameters()).dtype
    if use_master:
        mw = MasterWeights(net.float(), lambda p: torch.optim.SGD(p, lr=lr), dtype=dtype)
        model, params, zero_grad, step = mw.model, mw.master_params, mw.zero_grad, mw.step
    else:
        sgd = torch.optim.SGD(net.parameters(), lr=lr)
        model, params, zero_grad, step = net, list(net.parameters()), sgd.zero_grad, sgd.step
    device = next(model.parameters()).device
    zero_grad()
    F.cross_entropy(model(x.to(device, dtype)), y.to(device)).backward()
    before = [p.detach().clone() for p in params]
    step()
    sizes = []
    for p, b in zip(params, before, strict=True):
        lost = (p.grad != 0) & (p == b)
        sizes.append((lr * p.grad[lost].float()).abs() / b[lost].float().abs())
    return torch.cat(sizes)
