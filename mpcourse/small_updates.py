"""Small updates in 16 bits: weight decay, an EMA of the weights, Adam's second moment.

A stored value $w$ takes an update $u$ only if $|u| > \\tfrac12\\,\\mathrm{spacing}(w)$, about
$2^{-9}|w|$ in BF16 and $2^{-12}|w|$ in FP16 (chapter 02). Three updates of fine-tuning are
relatively smaller than that:

* decoupled weight decay (AdamW): $w \\leftarrow w (1 - \\eta\\lambda)$, with
  $\\eta\\lambda \\approx 10^{-6}$ (torch's ``adam.py``: ``param.mul_(1 - lr * weight_decay)``);
* an EMA of the weights: $e \\leftarrow e + (1 - \\beta)(w - e)$, $1 - \\beta = 10^{-4}$:
  the step is $10^{-4}$ of the gap, and the gap itself is small;
* Adam's second moment: $v \\leftarrow \\beta_2 v + (1 - \\beta_2) g^2$, $1 - \\beta_2 = 10^{-3}$,
  stored in the parameter's dtype (``torch.zeros_like(p)`` in ``adam.py``).

:func:`store_` writes an FP32 result into a 16-bit tensor three ways (the rules of
:mod:`mpcourse.lowbit`): round to nearest, stochastic rounding
(:func:`mpcourse.formats.round_stochastic`) or Kahan compensation, whose compensation
buffer, if 16-bit, holds about 16 bits together with $w$: enough for Adam's steps, not for
a $10^{-6}$ relative change.

Taught in course/16_finetuning.ipynb.
"""

from __future__ import annotations

import torch
from torch import nn

from .formats import BF16, FP16, round_stochastic

__all__ = ["ROUNDINGS", "store_", "EMA", "decay_", "adam_second_moment", "swallowed"]

_LOW = {torch.float16: FP16, torch.bfloat16: BF16}

ROUNDINGS = ("nearest", "stochastic", "kahan")


@torch.no_grad()
def store_(
    target: torch.Tensor,
    value: torch.Tensor,
    rounding: str = "nearest",
    *,
    comp: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Write the FP32 ``value`` (= ``target`` + an update) into ``target`` (any float dtype).

    ``"nearest"``: ``target.copy_(value)``; ``"stochastic"``: unbiased rounding to BF16/FP16
    (:func:`~mpcourse.formats.round_stochastic`); ``"kahan"``: ``value + comp`` is rounded to
    nearest and what rounding lost is kept in ``comp`` (same shape, updated in place) for
    the next call. FP32 targets are written exactly whatever ``rounding`` says.

    Taught in course/16_finetuning.ipynb.
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if rounding == "stochastic" and target.dtype in _LOW:
        rounded = round_stochastic(value.float(), _LOW[target.dtype], generator=generator)
        return target.copy_(rounded)
    if rounding == "kahan":
        if comp is None:
            raise ValueError("rounding='kahan' needs comp, a compensation tensor like target")
        exact = value.float() + comp.float()
        target.copy_(exact)
        comp.copy_(exact - target.float())
        return target
    return target.copy_(value)


class EMA:
    """An exponential moving average of a model's weights, $e \\leftarrow e + (1-\\beta)(w - e)$.

    ``dtype``: the EMA copy's dtype (``None``: each parameter's own dtype, what a copy of a
    16-bit model gives). ``rounding``: how each update is stored (:func:`store_`).

    Taught in course/16_finetuning.ipynb.
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.9999,
        *,
        dtype: torch.dtype | None = None,
        rounding: str = "nearest",
        seed: int = 0,
    ) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie strictly between 0 and 1, got {decay!r}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        self.decay, self.rounding = decay, rounding
        self.shadow = {
            n: p.detach().to(dtype or p.dtype).clone() for n, p in model.named_parameters()
        }
        self.comp = {n: torch.zeros_like(e) for n, e in self.shadow.items()}
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards the model's current weights (computed in FP32, then stored)."""
        for n, p in model.named_parameters():
            e = self.shadow[n]
            value = e.float() + (1 - self.decay) * (p.float() - e.float())
            store_(e, value, self.rounding, comp=self.comp[n], generator=self.generator)


@torch.no_grad()
def decay_(
    params: list[torch.Tensor],
    lr: float,
    weight_decay: float,
    rounding: str = "nearest",
    *,
    comps: list[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> None:
    """Decoupled weight decay, $w \\leftarrow w(1 - \\eta\\lambda)$, computed in FP32 and stored
    with ``rounding`` (``comps``: one Kahan buffer per parameter).

    Taught in course/16_finetuning.ipynb.
    """
    for i, p in enumerate(params):
        comp = comps[i] if comps is not None else None
        store_(p, p.float() * (1 - lr * weight_decay), rounding, comp=comp, generator=generator)


def adam_second_moment(
    grads: torch.Tensor, dtype: torch.dtype, betas: tuple[float, float] = (0.9, 0.999)
) -> torch.Tensor:
    """Adam's ``exp_avg_sq`` after each step, read from ``torch.optim.AdamW`` itself.

    ``grads``: ``(steps, n)``; a parameter of ``n`` zeros in ``dtype`` gets gradient
    ``grads[t]`` at step ``t`` (lr 0: only the states move). Returns ``(steps, n)`` FP32.

    Taught in course/16_finetuning.ipynb.
    """
    p = nn.Parameter(torch.zeros(grads.shape[1], dtype=dtype))
    opt = torch.optim.AdamW([p], lr=0.0, betas=betas, weight_decay=0.0)
    out = []
    for g in grads:
        p.grad = g.to(dtype)
        opt.step()
        out.append(opt.state[p]["exp_avg_sq"].float().clone())
    return torch.stack(out)


def swallowed(
    before: dict[str, torch.Tensor],
    after: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
    threshold: float = 0.5,
) -> list[str]:
    """Names of the parameters whose step was mostly rounded away: among the entries with a
    nonzero gradient, the share left unchanged (:func:`mpcourse.purefp16.lost_updates`) is
    above ``threshold``. Sorted by name; a parameter with no nonzero gradient is not listed.

    Taught in course/16_finetuning.ipynb.
    """
    out = []
    for name in sorted(grads):
        tried = grads[name] != 0
        n = int(tried.sum())
        if n and int((tried & (after[name] == before[name])).sum()) / n > threshold:
            out.append(name)
    return out
