"""One vocabulary for precision: what each recipe name means, in one table.

A *recipe* says three things about a training step (Micikevicius et al. 2018,
§3; the PyTorch AMP docs, https://pytorch.org/docs/stable/amp.html):

* ``param_dtype``: the dtype the model's parameters (and so the optimizer's
  update) live in;
* ``compute_dtype``: the dtype the matmuls and convolutions run in;
* ``scaler``: whether a loss scaler (``torch.amp.GradScaler``) guards the
  FP16 gradients.

| name        | params  | compute | how                          | scaler |
|-------------|---------|---------|------------------------------|--------|
| ``fp32``      | FP32    | FP32    | nothing                      | no     |
| ``amp-fp16``  | FP32    | FP16    | ``torch.autocast(float16)``  | yes    |
| ``amp-bf16``  | FP32    | BF16    | ``torch.autocast(bfloat16)`` | no     |
| ``pure-fp16`` | FP16    | FP16    | ``model.half()``             | no     |
| ``pure-bf16`` | BF16    | BF16    | ``model.bfloat16()``         | no     |

``"auto"`` resolves to ``amp-bf16`` or ``amp-fp16``, as
``mpcourse.device.amp_dtype`` decides for the device. A pure cast of a tensor
or model is given by a ``dtype`` (``torch.float16``), never by a recipe name.

Taught in course/03_training_in_pure_fp16.ipynb (pure), 07_amp_training.ipynb (amp).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .device import amp_dtype

__all__ = ["Recipe", "RECIPES", "recipe", "autocast", "make_scaler"]


@dataclass(frozen=True)
class Recipe:
    """What one precision name means for a training step."""

    name: str
    param_dtype: torch.dtype
    compute_dtype: torch.dtype
    scaler: bool

    @property
    def autocast(self) -> bool:
        """Whether the recipe runs the forward under ``torch.autocast``."""
        return self.param_dtype == torch.float32 and self.compute_dtype != torch.float32

    @property
    def pure(self) -> bool:
        """Whether the parameters themselves are 16-bit (no FP32 copy)."""
        return self.param_dtype != torch.float32


_F32, _F16, _B16 = torch.float32, torch.float16, torch.bfloat16
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("fp32", _F32, _F32, scaler=False),
        Recipe("amp-fp16", _F32, _F16, scaler=True),
        Recipe("amp-bf16", _F32, _B16, scaler=False),
        Recipe("pure-fp16", _F16, _F16, scaler=False),
        Recipe("pure-bf16", _B16, _B16, scaler=False),
    )
}


def recipe(name: str | Recipe, device: torch.device | str = "cpu") -> Recipe:
    """The :class:`Recipe` called ``name`` (``"auto"``: the device's AMP recipe).

    Raises ``ValueError`` naming the accepted names for anything else.
    """
    if isinstance(name, Recipe):
        return name
    if name == "auto":
        low = amp_dtype(torch.device(device))
        return RECIPES["amp-bf16" if low == torch.bfloat16 else "amp-fp16"]
    if name not in RECIPES:
        raise ValueError(
            f"unknown precision recipe {name!r}: use one of {sorted(RECIPES)} or 'auto'"
        )
    return RECIPES[name]


def autocast(
    name: str | Recipe, device: torch.device | str
) -> torch.autocast | contextlib.nullcontext:
    """The context a forward pass of recipe ``name`` runs in on ``device``.

    ``torch.autocast(device.type, dtype=compute_dtype)`` for the ``amp-*``
    recipes; a do-nothing context otherwise (FP32, or pure 16-bit parameters
    whose ops already run in their own dtype).
    """
    device = torch.device(device)
    r = recipe(name, device)
    if not r.autocast:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=r.compute_dtype)


def make_scaler(name: str | Recipe, device: torch.device | str) -> torch.amp.GradScaler:
    """A ``torch.amp.GradScaler`` for ``device``, enabled only where the recipe needs one."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=recipe(name, device).scaler)
