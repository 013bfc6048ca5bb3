"""Experiment harnesses: the runs a chapter repeats, kept out of its cells.

A chapter's cells show what they teach (a loop, a comparison, a number); the
bookkeeping around them lives here, documented and tested:

* :func:`same_weights`: two models bit for bit, the test behind every "identical"
  a chapter prints;
* :func:`paired_runs`: noise first, then a paired comparison. Each seed trains in
  FP32; after ``epochs - 1`` epochs its state (weights, optimizer state, the
  loader's shuffling generator) is saved, and the last epoch is run again from that
  state in each precision asked for. The paired difference
  ``acc(precision, seed) - acc(fp32, seed)`` is then measured against the FP32
  seed-to-seed spread ``max_s acc(fp32, s) - min_s acc(fp32, s)``.
* :func:`record_scale_run`: a by-hand autocast(float16) + loss-scaler loop that
  records the scale used at every step and whether the step was skipped.

Taught in course/07_amp_training.ipynb (paired runs) and 05_loss_scaling.ipynb
(the scale over a run).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from torch import nn

from .device import synchronize
from .scaling import unscale_grads_
from .train import History, train

__all__ = [
    "raised",
    "same_weights",
    "PairedRuns",
    "paired_runs",
    "plot_paired_runs",
    "ScaleRun",
    "record_scale_run",
    "plot_scale_trajectory",
    "time_unscale",
    "time_scaler_step",
]

MakeRun = Callable[[int], tuple[nn.Module, torch.optim.Optimizer, torch.utils.data.DataLoader]]


def raised(
    fn: Callable[..., object], *args: object, error: type[Exception] = ValueError, **kwargs: object
) -> str | None:
    """The message of the ``error`` that ``fn(*args, **kwargs)`` raises, or ``None`` if it
    returns normally (any other exception propagates): how a chapter shows a refusal.

    Taught in course/07_amp_training.ipynb.
    """
    try:
        fn(*args, **kwargs)
    except error as err:
        return str(err)
    return None


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether every parameter of ``a`` equals the one of ``b``, bit for bit.

    Raises ``ValueError`` when the two models do not have the same parameter shapes.

    Taught in course/07_amp_training.ipynb.
    """
    pa, pb = list(a.parameters()), list(b.parameters())
    if [p.shape for p in pa] != [p.shape for p in pb]:
        raise ValueError("same_weights compares two models of the same architecture")
    return all(torch.equal(p, q) for p, q in zip(pa, pb, strict=True))


@dataclass
class PairedRuns:
    """FP32 histories per seed, and the last epoch redone per ``(precision, seed)``."""

    fp32: dict[int, History] = field(default_factory=dict)
    last_epoch: dict[tuple[str, int], History] = field(default_factory=dict)

    def accuracy(self, precision: str, seed: int) -> float:
        """Final test accuracy: the FP32 run's for ``"fp32"``, else the redone last epoch's."""
        if precision == "fp32":
            return self.fp32[seed].eval_accuracy[-1]
        return self.last_epoch[precision, seed].eval_accuracy[-1]

    def spread(self) -> float:
        """FP32's seed-to-seed spread of the final test accuracy."""
        finals = [h.eval_accuracy[-1] for h in self.fp32.values()]
        return max(finals) - min(finals)

    def paired(self, n_test: int) -> dict[tuple[str, int], int]:
        """Per redone ``(precision, seed)``: its final accuracy minus FP32's, in test images."""
        return {
            (p, s): round((h.eval_accuracy[-1] - self.fp32[s].eval_accuracy[-1]) * n_test)
            for (p, s), h in self.last_epoch.items()
        }


def _restore(make_run: MakeRun, seed: int, state: tuple) -> tuple:
    model, opt, loader = make_run(seed)
    weights, opt_state, order = state
    model.load_state_dict(weights)
    opt.load_state_dict(opt_state)
    loader.generator.set_state(order)
    return model, opt, loader


def paired_runs(
    make_run: MakeRun,
    seeds: Sequence[int],
    epochs: int,
    precisions: Mapping[int, Sequence[str]],
    eval_loader: torch.utils.data.DataLoader,
) -> PairedRuns:
    """Train each seed ``epochs`` epochs in FP32, and redo its last epoch in other precisions.

    ``make_run(seed)`` returns a fresh ``(model, optimizer, loader)``; the loader must
    shuffle with its own ``generator`` (``mpcourse.data.make_loader(..., seed=...)``), so
    that the data order of the last epoch can be restored. ``precisions[seed]`` lists the
    precisions (``train``'s names; ``"fp32"`` redoes it in FP32, which must reproduce the
    FP32 run exactly) whose last epoch starts from FP32's state after ``epochs - 1``.

    Taught in course/07_amp_training.ipynb.
    """
    if epochs < 2:
        raise ValueError(f"paired_runs needs epochs >= 2 (one to redo), got {epochs}")
    runs = PairedRuns()
    for seed in seeds:
        model, opt, loader = make_run(seed)
        if getattr(loader, "generator", None) is None:
            raise ValueError("make_run's loader needs its own generator (make_loader(seed=...))")
        hist = train(
            model, loader, opt, epochs=epochs - 1, precision="fp32", eval_loader=eval_loader
        )
        state = copy.deepcopy((model.state_dict(), opt.state_dict(), loader.generator.get_state()))
        runs.fp32[seed] = train(
            model, loader, opt, epochs=1, precision="fp32", eval_loader=eval_loader, history=hist
        )
        for precision in precisions.get(seed, ()):
            model, opt, loader = _restore(make_run, seed, state)
            runs.last_epoch[precision, seed] = train(
                model, loader, opt, epochs=1, precision=precision, eval_loader=eval_loader
            )
    return runs


@dataclass
class ScaleRun:
    """What :func:`record_scale_run` saw: the model, the scale of every step, the skips."""

    model: nn.Module
    scales: list[float]
    skipped: list[bool]


def record_scale_run(
    model: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    scaler: object,
    steps: int,
    *,
    lr: float = 1e-3,
    max_grad_norm: float = 1.0,
) -> ScaleRun:
    """Train ``model`` (FP32 parameters) ``steps`` steps of Adam under autocast(float16).

    Each step: ``scale(loss).backward()``, ``unscale_``, clip to ``max_grad_norm``,
    ``step``, ``update``; the scale used and whether the step was skipped (the scale
    dropped in ``update()``) are recorded. ``scaler`` is a ``torch.amp.GradScaler`` or
    ``mpcourse.scaling.DynamicLossScaler``: the same loop runs both.

    Taught in course/05_loss_scaling.ipynb.
    """
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    scales, skipped = [], []
    for _ in range(steps):
        xb, yb = (t.to(device) for t in next(batches))
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(xb), yb)
        scales.append(scaler.get_scale())
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_grad_norm)
        scaler.step(opt)
        scaler.update()
        skipped.append(scaler.get_scale() < scales[-1])  # a backoff means a skipped step
    return ScaleRun(model, scales, skipped)


def plot_paired_runs(runs: PairedRuns) -> list[Axes]:
    """Training loss and test accuracy per epoch: FP32 runs as lines, each redone last
    epoch as a segment from FP32's epoch ``E - 1`` to ``E``. Seed 0 in colour, the other
    seeds in gray (FP32 solid, the others dashed).

    Taught in course/07_amp_training.ipynb.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    first = min(runs.fp32)
    for (precision, seed), hist in [(("fp32", s), h) for s, h in runs.fp32.items()] + list(
        runs.last_epoch.items()
    ):
        ref = runs.fp32[seed]
        epochs = len(ref.loss)
        if precision == "fp32" and hist is ref:
            xs, curves = range(1, epochs + 1), (hist.loss, hist.eval_accuracy)
        elif precision == "fp32":
            continue  # the FP32 redo coincides with the FP32 run
        else:
            xs = [epochs - 1, epochs]
            curves = (
                [ref.loss[-2], hist.loss[-1]],
                [ref.eval_accuracy[-2], hist.eval_accuracy[-1]],
            )
        if seed == first:
            style = dict(marker="o", label=f"{precision} (seed {seed})")
        else:
            label = f"{precision}, other seeds" if seed == sorted(runs.fp32)[1] else None
            style = dict(color="gray", lw=1, ls="-" if precision == "fp32" else "--", label=label)
        for ax, ys in zip(axes, curves, strict=True):
            ax.plot(xs, ys, **style)
    axes[0].set(xlabel="epoch", ylabel="train loss", title="Training loss")
    axes[1].set(xlabel="epoch", ylabel="test accuracy", title="Test accuracy")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return list(axes)


def plot_scale_trajectory(
    scales: Sequence[float], skipped: Sequence[int], title: str, ax: Axes | None = None
) -> Axes:
    """The loss scale per optimizer step on a log2 axis (one grid line per binade), with
    the skipped steps (their indices in ``skipped``) marked in red.

    Taught in course/05_loss_scaling.ipynb and 07_amp_training.ipynb.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 3))
    ax.step(range(len(scales)), scales, where="post", label="loss scale S")
    ax.scatter(
        list(skipped),
        [scales[i] for i in skipped],
        color="#e76f51",
        zorder=3,
        label="skipped step (inf/NaN gradient): S halved",
    )
    ax.set_yscale("log", base=2)
    ax.set(xlabel="optimizer step", ylabel="scale (log2 axis)", title=title)
    ax.legend(loc="lower right")
    return ax


def _check_grads(grads: Sequence[torch.Tensor]) -> None:
    if not grads or not all(isinstance(g, torch.Tensor) for g in grads):
        raise TypeError("grads must be a non-empty list of tensors")


def time_unscale(grads: Sequence[torch.Tensor], fused: bool, repeats: int = 20) -> float:
    """Seconds per :func:`mpcourse.scaling.unscale_grads_` call on copies of ``grads``
    (the per-tensor loop with ``fused=False``, the one fused kernel with ``fused=True``),
    averaged over ``repeats`` calls; the device is synchronized around the timing.

    Taught in course/05_loss_scaling.ipynb.
    """
    _check_grads(grads)
    device = grads[0].device
    gs = [g.clone() for g in grads]
    found, inv = torch.zeros((), device=device), torch.tensor(1.0, device=device)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        unscale_grads_(gs, inv, found, fused=fused)
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def time_scaler_step(
    scaler: object, grads: Sequence[torch.Tensor], repeats: int = 40, rounds: int = 5
) -> float:
    """Median seconds (over ``rounds`` timings of ``repeats`` steps) of what a loss scaler
    adds to one training step: ``scale`` + ``unscale_`` + ``step`` + ``update``, with one
    finite random gradient per tensor of ``grads`` and SGD at ``lr = 0`` (nothing changes
    between repetitions). Build the scaler with ``init_scale=1.0`` and a huge
    ``growth_interval`` so its scale stays put.

    Taught in course/05_loss_scaling.ipynb.
    """
    _check_grads(grads)
    device = grads[0].device
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    opt = torch.optim.SGD(params, lr=0.0, foreach=True)
    finite = [torch.randn_like(g) for g in grads]
    loss = torch.ones((), device=device)

    def one_step() -> None:
        for p, g in zip(params, finite, strict=True):
            p.grad = g
        scaler.scale(loss)
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()

    one_step()  # warm-up
    times = []
    for _ in range(rounds):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            one_step()
        synchronize(device)
        times.append((time.perf_counter() - start) / repeats)
    return sorted(times)[len(times) // 2]
