"""The chapter-03 experiment: one model, one data set, one seed, in FP32 or in pure FP16.

"Pure FP16" (recipe ``"pure-fp16"`` of :mod:`mpcourse.precision`; ``"pure-bf16"``
and ``"fp32"`` run the same loop) is the naive recipe: ``model.half()`` and FP16
inputs, so the
weights, activations, gradients *and* the optimizer state are FP16, and every
update ``w <- w - lr * step`` is rounded to FP16 when it is stored. There is
no FP32 master copy and no loss scaling (chapters 04 and 05 add them).

:func:`train` runs it and returns a :class:`History` with the loss and
accuracy per step and, per step, how many weight updates were *attempted*
(nonzero gradient) and how many were *lost* (the stored weight did not
change). The building blocks (:class:`TrainSetup`, :func:`make_optimizer`,
:func:`lost_updates`, :func:`evaluate`, :func:`batches`) are public so that other chapters
can reuse the same setup, e.g. to add FP32 master weights.

Taught in course/03_training_in_pure_fp16.ipynb.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from .data import make_loader
from .precision import Recipe, recipe
from .progress import progress
from .validate import positive_int

__all__ = [
    "History",
    "cosine_lr",
    "make_optimizer",
    "batches",
    "TrainSetup",
    "lost_updates",
    "evaluate",
    "train",
    "first_adam_step",
]


def _pure_dtype(precision: str | Recipe) -> tuple[str, torch.dtype]:
    """``(name, parameter dtype)`` of a recipe whose parameters are what it computes in."""
    r = recipe(precision)
    if r.autocast:
        raise ValueError(
            f"precision={r.name!r} runs autocast over FP32 parameters: this loop casts the "
            "model itself; use 'fp32', 'pure-fp16' or 'pure-bf16' (autocast training is "
            "chapter 07's mpcourse.train.train)"
        )
    return r.name, r.param_dtype


@dataclass
class History:
    """What :func:`train` measured, one entry per optimizer step.

    ``loss`` and ``accuracy`` are on the training batch of that step;
    ``attempted[i]`` counts the weights with a nonzero gradient at step ``i``,
    ``lost[i]`` those among them whose stored value did not change.
    ``nonfinite_step`` is the first step whose loss was inf/NaN (None if none).
    ``eval_loss``/``eval_accuracy`` are measured on ``eval_data`` at the end.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """

    precision: str
    optimizer: str
    lr: float
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    attempted: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    nonfinite_step: int | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    model: nn.Module | None = field(default=None, repr=False)

    @property
    def steps(self) -> int:
        return len(self.loss)

    @property
    def lost_share(self) -> float:
        """``sum(lost) / sum(attempted)`` over the run: the share of updates rounded away."""
        total = sum(self.attempted)
        return sum(self.lost) / total if total else 0.0

    def record(
        self,
        step: int,
        loss: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
        attempted: int,
        lost: int,
    ) -> bool:
        """Append one step's measurements; return False if its loss is inf/NaN."""
        value = float(loss.detach())
        self.loss.append(value)
        self.accuracy.append(float((logits.argmax(1) == labels).float().mean()))
        self.attempted.append(attempted)
        self.lost.append(lost)
        if not math.isfinite(value) and self.nonfinite_step is None:
            self.nonfinite_step = step
        return math.isfinite(value)

    def mean_loss(self, last: int = 20) -> float:
        """Mean training loss over the last ``last`` steps (smooths batch noise)."""
        tail = self.loss[-last:]
        return sum(tail) / len(tail) if tail else math.nan


def cosine_lr(step: int, steps: int, lr: float, final_lr: float) -> float:
    """Cosine decay from ``lr`` (step 0) to ``final_lr`` (step ``steps - 1``):
    $\\eta_t = \\eta_T + (\\eta_0 - \\eta_T)(1 + \\cos(\\pi t / (T - 1)))/2$.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """
    if steps < 2:
        return lr
    return final_lr + (lr - final_lr) * (1 + math.cos(math.pi * step / (steps - 1))) / 2


def make_optimizer(
    params: object,
    name: str = "sgd",
    lr: float = 0.01,
    *,
    momentum: float = 0.0,
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """``torch.optim.SGD(params, lr, momentum)`` or ``torch.optim.Adam(params, lr, eps=eps)``.

    SGD: ``w <- w - lr * g`` (with momentum ``b <- mu b + g``, ``w <- w - lr b``).
    Adam: ``m <- b1 m + (1-b1) g``, ``v <- b2 v + (1-b2) g^2``,
    ``w <- w - lr * m_hat / (sqrt(v_hat) + eps)``; its state has the dtype of the
    parameters, so FP16 for an FP16 model.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        # foreach=False: the plain per-parameter loop, the same arithmetic on every device
        return torch.optim.Adam(params, lr=lr, eps=eps, foreach=False)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")


def batches(dataset: TensorDataset, batch_size: int, seed: int) -> Iterator[tuple]:
    """Endless ``(x, y)`` batches: epoch ``k`` is shuffled with seed ``seed + k``.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """
    epoch = 0
    while True:
        yield from make_loader(dataset, batch_size, shuffle=True, seed=seed + epoch)
        epoch += 1


@torch.no_grad()
def lost_updates(before: list[torch.Tensor], params: list[torch.Tensor]) -> tuple[int, int]:
    """``(attempted, lost)``: weights with a nonzero gradient, and those that did not change.

    ``before`` are copies of ``params`` taken before ``optimizer.step()``; a
    weight counts as *lost* when ``g != 0`` but ``w_after == w_before``: the
    update was rounded away (swamping) or underflowed to 0 itself.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """
    attempted = lost = 0
    for old, p in zip(before, params, strict=True):
        if p.grad is None:
            continue
        tried = p.grad != 0
        attempted += int(tried.sum())
        lost += int((tried & (p == old)).sum())
    return attempted, lost


@dataclass(frozen=True)
class TrainSetup:
    """The run settings that chapter 03's :func:`train` and chapter 04's
    :func:`mpcourse.master.train_master` share, so that one ``SETUP`` dict means the same run
    in both: ``optimizer`` (``"sgd"`` with ``momentum`` or ``"adam"`` with ``eps``:
    :func:`make_optimizer`) at rate ``lr``, for ``steps`` steps on batches of ``batch_size``
    drawn by :func:`batches` with ``seed``. ``ValueError`` for ``steps`` < 1; :meth:`of`
    names unknown settings.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """

    optimizer: str = "sgd"
    lr: float = 0.01
    steps: int = 300
    batch_size: int = 64
    seed: int = 0
    momentum: float = 0.0
    eps: float = 1e-8

    def __post_init__(self) -> None:
        positive_int(self.steps, "steps")

    @classmethod
    def of(cls, caller: str, settings: dict[str, object]) -> TrainSetup:
        """The setup from a caller's ``**settings``; ``TypeError`` naming any unknown one."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise TypeError(
                f"{caller} got unknown setting(s) {unknown}; the settings are {known} "
                "(besides the function's own keywords)"
            )
        return cls(**settings)

    def make_optimizer(self, params: object) -> torch.optim.Optimizer:
        """:func:`make_optimizer` with these settings."""
        return make_optimizer(params, self.optimizer, self.lr, momentum=self.momentum, eps=self.eps)

    def batches(self, dataset: TensorDataset) -> Iterator[tuple]:
        """:func:`batches` with these settings."""
        return batches(dataset, self.batch_size, self.seed)


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: TensorDataset, batch_size: int = 512
) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` of ``model`` on ``dataset``, in the model's dtype.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """
    p = next(model.parameters())
    total_loss, correct, n = 0.0, 0, 0
    for x, y in make_loader(dataset, batch_size, shuffle=False):
        x, y = x.to(p.device, p.dtype), y.to(p.device)
        out = model(x)
        total_loss += float(F.cross_entropy(out.float(), y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        n += len(y)
    return total_loss / n, correct / n


def train(
    model: nn.Module,
    dataset: TensorDataset,
    *,
    precision: str | Recipe = "fp32",
    final_lr: float | None = None,
    eval_data: TensorDataset | None = None,
    device: torch.device | str | None = None,
    stop_on_nonfinite: bool = True,
    **setup: Any,
) -> History:
    """Train a *copy* of ``model`` for ``steps`` steps in ``"fp32"`` or ``"pure-fp16"``.

    ``precision`` is a recipe of :mod:`mpcourse.precision` whose parameters are
    what it computes in: ``"fp32"``, ``"pure-fp16"`` or ``"pure-bf16"``. ``setup``: the
    fields of :class:`TrainSetup` (``optimizer``, ``lr``, ``steps``, ``batch_size``,
    ``seed``, ``momentum``, ``eps``), its defaults where left out.

    Each step: ``x -> x.to(dtype)``, ``L = mean_i CE(f(x_i), y_i)`` (the loss is
    averaged over the batch, as in the seed), ``L.backward()``, one optimizer
    step; the weight copies taken before the step give the lost-update count.
    The copy keeps ``model``'s initial weights, so two calls with the same
    ``model`` and ``seed`` start from the same point and see the same batches.
    With ``stop_on_nonfinite`` the run stops at the first inf/NaN loss.
    ``final_lr`` switches on cosine decay: the rate of step ``t`` (of ``T``) is
    ``final_lr + (lr - final_lr) * (1 + cos(pi * t / (T - 1))) / 2``, from ``lr`` down
    to ``final_lr`` (:func:`cosine_lr`).

    Taught in course/03_training_in_pure_fp16.ipynb.
    """
    name, dtype = _pure_dtype(precision)
    run = TrainSetup.of("train", setup)
    lr = run.lr
    if final_lr is not None and not (isinstance(final_lr, (int, float)) and 0 < final_lr <= lr):
        raise ValueError(f"final_lr must be a number in (0, lr={lr}], got {final_lr!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    net = copy.deepcopy(model).to(device=device, dtype=dtype)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = run.make_optimizer(params)
    hist = History(precision=name, optimizer=run.optimizer, lr=lr, model=net)
    data = run.batches(dataset)
    net.train()
    for step in progress(range(run.steps), desc=f"{name} {run.optimizer}"):
        x, y = next(data)
        x, y = x.to(device, dtype), y.to(device)
        if final_lr is not None:
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, run.steps, lr, final_lr)
        out = net(x)
        loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        before = [p.detach().clone() for p in params]
        opt.step()
        attempted, lost = lost_updates(before, params)
        if not hist.record(step, loss, out, y, attempted, lost) and stop_on_nonfinite:
            break
    if eval_data is not None:
        hist.eval_loss, hist.eval_accuracy = evaluate(net, eval_data)
    return hist


def first_adam_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    precision: str | Recipe = "pure-fp16",
    lr: float = 1e-3,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, dw)``: every weight's gradient and how far one Adam step moved it, in FP32.

    A copy of ``model`` in ``precision`` (``"fp32"``, ``"pure-fp16"`` or ``"pure-bf16"``)
    takes one step of ``torch.optim.Adam(lr, eps)`` on ``mean CE(f(x), y)``;
    both tensors are flat, one entry per weight. Adam intends
    $|\\Delta w| \\approx \\eta$ at its first step ($\\hat m / \\sqrt{\\hat v} = g / |g|$);
    ``dw.abs() / lr`` shows what really happened (inf/NaN where the state broke).

    Taught in course/03_training_in_pure_fp16.ipynb.
    """
    dtype = _pure_dtype(precision)[1]
    device = next(model.parameters()).device
    net = copy.deepcopy(model).to(dtype=dtype)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = make_optimizer(params, "adam", lr, eps=eps)
    F.cross_entropy(net(x.to(device, dtype)), y.to(device)).backward()
    before = [p.detach().clone() for p in params]
    opt.step()
    g = torch.cat([p.grad.float().flatten() for p in params])
    dw = torch.cat([(p.detach().float() - b.float()).flatten() for p, b in zip(params, before)])
    return g, dw
