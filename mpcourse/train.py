"""The reference mixed precision training loop: autocast + GradScaler, done right.

One loop, the FP32-parameter recipes of :mod:`mpcourse.precision`, the same
code on CUDA and CPU:

* ``"fp32"``: no autocast, no scaler;
* ``"amp-fp16"``: ``torch.autocast(dtype=float16)`` + ``torch.amp.GradScaler``
  (the original AMP recipe: the loss is multiplied by the scale $S$ before
  backward, gradients are divided by $S$ before the step, and a step whose
  gradients hold inf/NaN is skipped while $S$ is halved);
* ``"amp-bf16"``: ``torch.autocast(dtype=bfloat16)``, no scaler (bfloat16 has the
  exponent range of float32, so gradients do not underflow the way FP16's do);
* ``"auto"``: whichever of the two :func:`mpcourse.device.amp_dtype` picks.

The ``pure-*`` recipes (16-bit parameters) are chapter 03's loop,
:func:`mpcourse.purefp16.train`.

Production patterns, in the order the scaler requires them: ``scale(loss)
.backward()`` for every micro-batch (gradient accumulation), then
``unscale_`` -> clip -> ``step`` -> ``update`` once per optimizer step; an LR
scheduler steps only when the optimizer really stepped; checkpoints
(:mod:`mpcourse.checkpoint`) carry the scaler's state, so a resumed run is
bit-identical to an uninterrupted one.

Loss and accuracy are accumulated on the device and read once per epoch: the
per-step host synchronisations are the one ``GradScaler.step`` itself needs
(it reads whether any gradient was inf/NaN) and the scale read that tells a
skipped step from a taken one.

Taught in course/07_amp_training.ipynb.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint
from .precision import RECIPES, Recipe, autocast, make_scaler, recipe
from .progress import progress
from .scaling import found_inf
from .validate import non_negative_int, positive_int

__all__ = [
    "History",
    "backward",
    "optimizer_step",
    "train",
    "evaluate",
    "legacy_amp_warnings",
]


def _amp_recipe(precision: str | Recipe, device: torch.device) -> Recipe:
    """The recipe called ``precision``, refused if it casts the parameters (pure 16 bits)."""
    if isinstance(precision, str) and precision != "auto" and precision not in RECIPES:
        raise ValueError(
            f"unknown precision {precision!r}: use 'fp32', 'amp-fp16' (autocast float16 + "
            "GradScaler), 'amp-bf16' (autocast bfloat16, no scaler) or 'auto'"
        )
    r = recipe(precision, device)
    if r.pure:
        raise ValueError(
            f"precision={r.name!r} puts the parameters in 16 bits; train() keeps FP32 parameters "
            "and runs autocast: use 'fp32', 'amp-fp16', 'amp-bf16' or 'auto' (pure 16-bit "
            "training is chapter 03's mpcourse.purefp16.train(dtype=...))"
        )
    return r


def backward(loss: torch.Tensor | Sequence[torch.Tensor], scaler: torch.amp.GradScaler) -> None:
    """``scaler.scale(loss).backward()`` for one loss or several (sharing one graph).

    With several losses every backward but the last keeps the graph
    (``retain_graph=True``), as the AMP docs show for multiple losses.

    Taught in course/07_amp_training.ipynb.
    """
    losses = [loss] if isinstance(loss, torch.Tensor) else list(loss)
    for i, each in enumerate(losses):
        scaler.scale(each).backward(retain_graph=i < len(losses) - 1)


def optimizer_step(
    optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
    scaler: torch.amp.GradScaler,
    *,
    max_grad_norm: float | None = None,
    schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler] = (),
) -> bool:
    """One optimizer step for every optimizer, one scaler; True if any step was skipped.

    Order: ``unscale_`` each optimizer (so clipping sees true gradients
    $g = g_{scaled} / S$), clip their parameters to ``max_grad_norm``,
    ``scaler.step`` each optimizer (each one skips its step if *its* gradients
    hold inf/NaN), ``scaler.update()`` once, then step each scheduler only if
    *its own* optimizer (``scheduler.optimizer``) really stepped. Gradients are
    zeroed afterwards (``set_to_none``).

    How a skip is seen: the scaler's own decision, read per optimizer after
    ``unscale_`` (:func:`mpcourse.scaling.found_inf`, the package's one reader of
    it), before clipping (clipping an inf norm would turn every gradient into NaN).

    Taught in course/07_amp_training.ipynb.
    """
    opts = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)
    for sched in schedulers:
        if not any(sched.optimizer is opt for opt in opts):
            raise ValueError(
                f"{type(sched).__name__} schedules an optimizer that is not being stepped here: "
                "pass each scheduler with its own optimizer"
            )
    skipped_by = [False] * len(opts)
    if scaler.is_enabled():
        for opt in opts:
            scaler.unscale_(opt)
        skipped_by = [found_inf(scaler, o) for o in opts]  # which optimizer skips its step
    if max_grad_norm is not None:
        params = [
            p for o in opts for g in o.param_groups for p in g["params"] if p.grad is not None
        ]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    for opt in opts:
        scaler.step(opt)
    scaler.update()
    for sched in schedulers:
        if not next(s for o, s in zip(opts, skipped_by, strict=True) if o is sched.optimizer):
            sched.step()
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    return any(skipped_by)


@dataclass
class History:
    """What a run did: per epoch loss/accuracy, per optimizer step scale/lr/skips.

    ``skipped`` holds the (0-based) indices of optimizer steps that the scaler
    skipped. Taught in course/07_amp_training.ipynb.
    """

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    steps: int = 0

    def state_dict(self) -> dict:
        """The history as plain lists and ints (what a checkpoint stores)."""
        return asdict(self)


def _check_model(model: nn.Module, r: Recipe, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is not None and scaler.is_enabled() and not r.scaler:
        what = (
            "bf16 has float32's range and needs no loss scaling"
            if r.compute_dtype == torch.bfloat16
            else ("fp32 needs no loss scaling")
        )
        raise ValueError(
            f"an enabled GradScaler was passed with precision={r.name!r}: {what}; "
            "drop the scaler (or pass GradScaler(enabled=False)), or use precision='amp-fp16'"
        )
    if r.scaler:
        half = [n for n, p in model.named_parameters() if p.dtype == torch.float16]
        if half:
            raise ValueError(
                f"precision={r.name!r} needs float32 parameters, but {half[0]!r} (and "
                f"{len(half) - 1} more) are float16: GradScaler cannot unscale FP16 gradients. "
                "Keep the model in float32 (do not call .half()); autocast casts per op."
            )


def _batches_per_step(n_batches: int, accumulation_steps: int) -> list[int]:
    """Size of the accumulation group each batch belongs to (last group may be short)."""
    return [
        min(accumulation_steps, n_batches - (i // accumulation_steps) * accumulation_steps)
        for i in range(n_batches)
    ]


def train(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int = 1,
    precision: str | Recipe = "auto",
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    max_grad_norm: float | None = None,
    accumulation_steps: int = 1,
    eval_loader: torch.utils.data.DataLoader | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    history: History | None = None,
) -> History:
    """Train ``model`` for ``epochs`` epochs (counted from 0, or from a resumed checkpoint).

    Each batch: ``with autocast: loss = criterion(model(x), y) / k``, then
    ``scaler.scale(loss).backward()``; every ``k = accumulation_steps``
    batches (and at the end of the epoch) :func:`optimizer_step` unscales,
    clips, steps, updates and steps the scheduler unless the step was skipped.
    With ``checkpoint``, the state (model, optimizer, scaler, scheduler, data
    order, RNG, history) is saved after every epoch; ``resume=True`` loads it
    first when the file exists. The device is the model's.

    Taught in course/07_amp_training.ipynb.
    """
    device = next(model.parameters()).device
    r = _amp_recipe(precision, device)
    positive_int(accumulation_steps, "accumulation_steps")
    non_negative_int(epochs, "epochs")
    _check_model(model, r, scaler)
    scaler = scaler if scaler is not None else make_scaler(r, device)
    criterion = criterion or nn.CrossEntropyLoss()
    history = history if history is not None else History()
    start = 0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        start = load_checkpoint(checkpoint, model, optimizer, scaler, scheduler, loader, history)
    sizes = _batches_per_step(len(loader), accumulation_steps)
    bar = progress(range(start, epochs), desc=f"train {r.name}", total=epochs, initial=start)
    for epoch in bar:
        model.train()
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        scales: list[torch.Tensor] = []  # the scale used at each step, kept on the device
        for i, (x, y) in enumerate(loader):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(r, device):
                logits = model(x)
                loss = criterion(logits, y)
            backward(loss / sizes[i], scaler)
            total_loss += loss.detach().float() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if (i + 1) % accumulation_steps == 0 or i + 1 == len(loader):
                if scaler.is_enabled():
                    scales.append(scaler._get_scale_async().detach().clone())  # noqa: SLF001
                skipped = optimizer_step(
                    optimizer,
                    scaler,
                    max_grad_norm=max_grad_norm,
                    schedulers=[scheduler] if scheduler is not None else (),
                )
                history.lr.append(float(optimizer.param_groups[0]["lr"]))
                if skipped:
                    history.skipped.append(history.steps)
                history.steps += 1
        # read what the device accumulated: once per epoch, not once per step
        history.scale.extend(
            torch.stack(scales).tolist()
            if scales
            else [1.0] * (len(history.lr) - len(history.scale))
        )
        history.loss.append(total_loss.item() / max(seen, 1))
        history.accuracy.append(correct.item() / max(seen, 1))
        if eval_loader is not None:
            history.eval_accuracy.append(evaluate(model, eval_loader, precision=r))
        if checkpoint is not None:
            save_checkpoint(
                checkpoint, model, optimizer, scaler, scheduler, loader, history, epoch + 1
            )
    return history


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: torch.utils.data.DataLoader, *, precision: str | Recipe = "fp32"
) -> float:
    """Accuracy of ``model`` on ``loader`` (argmax of logits == label), under autocast.

    Taught in course/07_amp_training.ipynb.
    """
    device = next(model.parameters()).device
    r = recipe(precision, device)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast(r, device):
            correct += (model(x).argmax(1) == y).sum()
        seen += len(y)
    model.train(was_training)
    return correct.item() / max(seen, 1)


def legacy_amp_warnings() -> list[str]:
    """The deprecation messages of the seed's spelling, ``torch.cuda.amp.GradScaler``/``autocast``.

    Both are created disabled (so this runs without a GPU) and the
    ``FutureWarning`` texts they emit are returned: each names its
    ``torch.amp`` replacement.

    Taught in course/07_amp_training.ipynb.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.amp.GradScaler(enabled=False)
        with torch.cuda.amp.autocast(enabled=False):
            pass
    return [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
