"""Checkpoints for mixed precision runs: everything a bit-identical resume needs.

A run with ``torch.amp.GradScaler`` has more state than its model and
optimizer: the scale $S$ and the growth tracker (clean steps since the last
change of $S$) decide which future steps are skipped, so a resume that
restarts $S$ at its initial value diverges from the uninterrupted run. The
scheduler, the loader's shuffling generator and the RNG states complete the
picture. Everything is stored as tensors and plain Python values, so the file
loads with ``torch.load(path, weights_only=True)`` (no arbitrary unpickling).

Taught in course/07_amp_training.ipynb.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

__all__ = ["save_checkpoint", "load_checkpoint"]


class History(Protocol):
    """What a checkpoint needs of a run's history (``mpcourse.train.History`` is one): its
    fields as plain values, restored by setting them back. A protocol, so this module does not
    import :mod:`mpcourse.train` (which imports this one).

    Taught in course/07_amp_training.ipynb."""

    def state_dict(self) -> dict[str, Any]: ...


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loader: torch.utils.data.DataLoader | None,
    history: History,
    epoch: int,
) -> Path:
    """Save everything a bit-identical resume needs; the scaler's state included.

    Model, optimizer, **scaler** (scale, growth tracker), scheduler, the data
    loader's shuffling generator, the global RNG states, the history and the
    next epoch. Only tensors and plain Python values: it loads with
    ``torch.load(path, weights_only=True)``.

    Taught in course/07_amp_training.ipynb.
    """
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "loader_rng": loader.generator.get_state()
        if loader is not None and loader.generator is not None
        else None,
        "cpu_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "history": history.state_dict(),
    }
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint behind
    return path


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    loader: torch.utils.data.DataLoader | None = None,
    history: History | None = None,
) -> int:
    """Restore a :func:`save_checkpoint` file (``weights_only=True``); return the next epoch.

    Taught in course/07_amp_training.ipynb.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"epoch", "model", "optimizer", "scaler"} - set(state)
    if missing:
        raise ValueError(
            f"{path} is not an mpcourse checkpoint: it lacks {sorted(missing)}; "
            "save it with mpcourse.checkpoint.save_checkpoint"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler.is_enabled() and not state["scaler"]:
        raise ValueError(
            f"{path} holds no GradScaler state but this run uses an enabled scaler: the scale "
            "would restart at its initial value and the run would not resume exactly"
        )
    if state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if loader is not None and loader.generator is not None and state.get("loader_rng") is not None:
        loader.generator.set_state(state["loader_rng"])
    torch.set_rng_state(state["cpu_rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if history is not None:
        for key, value in state["history"].items():
            setattr(history, key, value)
    return int(state["epoch"])
