"""Training at the low-bit frontier, simulated: MX matmuls, and BF16 weights without FP32 masters.

**Simulated MX matmuls.** :class:`MXLinear` computes $y = x W^T + b$ with
both operands MX-quantized along the reduction dimension, and its backward
quantizes again along each gradient matmul's reduction dimension, as torchao's
MX training does:

* forward $y = Q(x)\\,Q(W)^T$ (blocks along $K$),
* $dx = Q(dy)\\,Q(W^T)^T$ (blocks along $N$),
* $dW = Q(dy^T)\\,Q(x^T)^T$ (blocks along the batch $M$),

with $Q$ = :func:`mpcourse.mx.mx_fake_quantize` in the chosen element format
(zero-padded to a multiple of 32, which changes no amax). Products are summed
in FP32; weights, bias and optimizer stay FP32 (the master copy).

**BF16 weights without FP32 master weights.** :class:`BF16AdamTrainer` keeps
the model's weights in bfloat16 and nothing else of them: Adam's moments are
FP32, and the new weight $w + u$ (with $u = -\\eta\\,\\hat m/(\\sqrt{\\hat v} + \\epsilon)$)
is stored back in BF16 by

* ``"nearest"``: round to nearest: every $|u|$ below half a BF16 spacing of $w$ is lost;
* ``"stochastic"``: :func:`mpcourse.formats.round_stochastic`, unbiased:
  $E[w_{new}] = w + u$, so small updates survive on average;
* ``"kahan"``: round to nearest, but keep what rounding lost in a BF16
  compensation buffer $c$ and add it to the next update:
  $a = w + (u + c)$, $w \\leftarrow \\mathrm{bf16}(a)$, $c \\leftarrow \\mathrm{bf16}(a - w)$.

Taught in course/14_microscaling.ipynb.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from .formats import BF16, FP4_E2M1, FP8_E4M3, FloatFormat, round_stochastic
from .fp8 import FP8Linear
from .master import ledger, tensor_bytes
from .mx import mx_fake_quantize
from .purefp16 import batches

__all__ = [
    "MX_RECIPES",
    "mx_matmul_quantize",
    "MXLinear",
    "convert_linears",
    "UPDATES",
    "BF16AdamTrainer",
    "BF16Run",
    "train_bf16",
    "bytes_per_parameter",
]

# recipe -> (input, weight, grad) element formats of MXLinear; "fp8" is per-tensor FP8Linear
MX_RECIPES: dict[str, tuple[FloatFormat, FloatFormat, FloatFormat] | None] = {
    "fp32": None,
    "fp8 per-tensor": None,
    "mxfp8": (FP8_E4M3, FP8_E4M3, FP8_E4M3),
    "mxfp8 rceil": (FP8_E4M3, FP8_E4M3, FP8_E4M3),
    "mxfp4 weights": (FP8_E4M3, FP4_E2M1, FP8_E4M3),
    "mxfp4": (FP4_E2M1, FP4_E2M1, FP4_E2M1),
    "mxfp4 rceil": (FP4_E2M1, FP4_E2M1, FP4_E2M1),
}  # " rceil": MX scales by the RCEIL rule (mpcourse.mx.mx_quantize), the others by FLOOR


def mx_matmul_quantize(
    t: torch.Tensor, fmt: FloatFormat, block_size: int = 32, scale_mode: str = "floor"
) -> torch.Tensor:
    """MX round trip of ``t`` along its last dimension, zero-padded to a multiple of ``block_size``.

    ``scale_mode`` is :func:`mpcourse.mx.mx_quantize`'s (``"floor"`` or ``"rceil"``).

    Taught in course/14_microscaling.ipynb.
    """
    k = t.shape[-1]
    pad = (-k) % block_size
    padded = F.pad(t.float(), (0, pad)) if pad else t.float()
    return mx_fake_quantize(padded, fmt, block_size, scale_mode)[..., :k]


class _MXMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, fmts: tuple, mode: str) -> torch.Tensor:
        fin, fw, _ = fmts
        ctx.save_for_backward(x, w)
        ctx.fmts, ctx.mode = fmts, mode
        return mx_matmul_quantize(x, fin, 32, mode) @ mx_matmul_quantize(w, fw, 32, mode).T

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        x, w = ctx.saved_tensors
        (fin, fw, fg), m = ctx.fmts, ctx.mode
        dx = mx_matmul_quantize(dy, fg, 32, m) @ mx_matmul_quantize(w.T, fw, 32, m).T
        dw = mx_matmul_quantize(dy.T, fg, 32, m) @ mx_matmul_quantize(x.T, fin, 32, m).T
        return dx, dw, None, None


class MXLinear(nn.Linear):
    """``nn.Linear`` whose three matmuls (forward, $dx$, $dW$) run in simulated MX.

    ``fmts = (input, weight, grad)`` element formats, e.g.
    ``MX_RECIPES["mxfp8"]``; ``scale_mode`` the MX scale rule (``"floor"`` or
    ``"rceil"``). The bias is added in FP32 after the matmul.

    Taught in course/14_microscaling.ipynb.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        fmts: tuple[FloatFormat, FloatFormat, FloatFormat],
        bias: bool = True,
        scale_mode: str = "floor",
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.fmts, self.scale_mode = fmts, scale_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        y = _MXMatmul.apply(flat, self.weight, self.fmts, self.scale_mode)
        y = y.reshape(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


def convert_linears(model: nn.Module, recipe: str) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` computing in ``recipe`` (same weights).

    ``recipe`` is a key of :data:`MX_RECIPES`: ``"fp32"`` (unchanged copy),
    ``"fp8 per-tensor"`` (:class:`mpcourse.fp8.FP8Linear` with current scaling:
    E4M3 forward, E5M2 gradients), or an MX recipe (:class:`MXLinear`; names
    ending in ``" rceil"`` use the RCEIL scale rule, the others FLOOR).
    Convolutions stay FP32, as in torchao's MX and float8 training.

    Taught in course/14_microscaling.ipynb.
    """
    if recipe not in MX_RECIPES:
        raise ValueError(f"recipe must be one of {tuple(MX_RECIPES)}, got {recipe!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model)
    if recipe == "fp32":
        return model
    for child in list(model.modules()):
        for attr, sub in list(child.named_children()):
            if type(sub) is not nn.Linear:
                continue
            has_bias = sub.bias is not None
            if recipe == "fp8 per-tensor":
                new: nn.Linear = FP8Linear(
                    sub.in_features, sub.out_features, has_bias, scaling="current"
                )
            else:
                mode = "rceil" if recipe.endswith(" rceil") else "floor"
                fmts = MX_RECIPES[recipe]
                new = MXLinear(sub.in_features, sub.out_features, fmts, has_bias, mode)
            new.load_state_dict(sub.state_dict())
            setattr(child, attr, new)
    return model


# --- BF16 weights without an FP32 master copy ------------------------------------------------

UPDATES = ("fp32", "nearest", "stochastic", "kahan")


class BF16AdamTrainer:
    """Adam on a model whose weights live in ``bfloat16`` only (``update="fp32"``: FP32 weights).

    ``m`` and ``v`` are FP32; see the module docstring for the three ways to
    store $w + u$. ``generator`` seeds stochastic rounding.

    Taught in course/14_microscaling.ipynb.
    """

    def __init__(
        self,
        model: nn.Module,
        update: str = "stochastic",
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        seed: int = 0,
    ) -> None:
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        self.update, self.lr, self.betas, self.eps = update, float(lr), betas, eps
        self.dtype = torch.float32 if update == "fp32" else torch.bfloat16
        self.model = model.to(self.dtype)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.m = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.v = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.comp = [torch.zeros_like(p) for p in self.params] if update == "kahan" else []
        self.generator = torch.Generator().manual_seed(seed)
        self.t = 0

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step; the new weights are stored with the chosen rounding."""
        self.t += 1
        b1, b2 = self.betas
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad.float()
            self.m[i].mul_(b1).add_(g, alpha=1 - b1)
            self.v[i].mul_(b2).addcmul_(g, g, value=1 - b2)
            m_hat = self.m[i] / (1 - b1**self.t)
            v_hat = self.v[i] / (1 - b2**self.t)
            u = -self.lr * m_hat / (v_hat.sqrt() + self.eps)
            if self.update == "fp32":
                p.add_(u)
            elif self.update == "nearest":
                p.copy_(p.float() + u)  # copy_ into bfloat16 rounds to nearest
            elif self.update == "stochastic":
                p.copy_(round_stochastic(p.float() + u, BF16, generator=self.generator))
            else:
                a = p.float() + (u + self.comp[i].float())
                p.copy_(a)
                self.comp[i].copy_(a - p.float())

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)

    def bytes_per_parameter(self) -> dict[str, float]:
        """Measured bytes per parameter of weights, grads, Adam moments (and Kahan buffers)."""
        n = sum(p.numel() for p in self.params)
        kind = "fp32" if self.dtype == torch.float32 else "bf16"
        out = {
            f"weights {kind}": tensor_bytes(self.params) / n,
            f"grads {kind}": tensor_bytes(p.grad for p in self.params) / n,
            "adam m, v fp32": tensor_bytes(self.m + self.v) / n,
        }
        if self.comp:
            out["kahan buffer bf16"] = tensor_bytes(self.comp) / n
        return out


@dataclass
class BF16Run:
    """What :func:`train_bf16` did: loss per step, test accuracy, share of updates lost.

    Taught in course/14_microscaling.ipynb.
    """

    update: str
    losses: list[float] = field(default_factory=list)
    lost: list[float] = field(default_factory=list)
    accuracy: float = 0.0
    bytes: dict[str, float] = field(default_factory=dict)


def train_bf16(
    model: nn.Module,
    train_set: TensorDataset,
    test_set: TensorDataset,
    update: str,
    *,
    lr: float = 1e-4,
    steps: int = 300,
    batch_size: int = 64,
    seed: int = 0,
) -> BF16Run:
    """Train a copy of ``model`` with :class:`BF16AdamTrainer` on the same seeded batches.

    The forward and backward run in the weights' dtype (BF16, or FP32 for
    ``"fp32"``); the loss is cross-entropy on FP32 logits. ``lost`` is, per
    step, the share of weights with a nonzero gradient that did not change.

    Chapter 03's experiment (:func:`mpcourse.purefp16.train` with ``"pure-bf16"``,
    same seeded ``purefp16.batches``) with its own loop because the optimizer
    differs: :class:`BF16AdamTrainer` keeps FP32 ``m``, ``v`` and stores
    $w + u$ in BF16 with nearest, stochastic or Kahan-compensated rounding, which
    torch's optimizers cannot be told to do.

    Taught in course/14_microscaling.ipynb.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    trainer = BF16AdamTrainer(copy.deepcopy(model).float(), update, lr=lr, seed=seed)
    run = BF16Run(update)
    data = batches(train_set, batch_size, seed)
    for _ in range(steps):
        x, y = next(data)
        loss = F.cross_entropy(trainer.model(x.to(trainer.dtype)).float(), y)
        trainer.zero_grad()
        loss.backward()
        before = [p.detach().clone() for p in trainer.params]
        trainer.step()
        tried = sum(int((p.grad != 0).sum()) for p in trainer.params)
        lost = sum(
            int(((p.grad != 0) & (p == b)).sum())
            for p, b in zip(trainer.params, before, strict=True)
        )
        run.losses.append(loss.item())
        run.lost.append(lost / max(tried, 1))
    with torch.no_grad():
        x, y = test_set.tensors
        logits = trainer.model(x.to(trainer.dtype)).float()
        run.accuracy = float((logits.argmax(1) == y).float().mean())
    run.bytes = trainer.bytes_per_parameter()
    return run


def bytes_per_parameter(recipe: str) -> dict[str, int]:
    """The ledger of chapter 04 for Adam, extended with the BF16-only recipes.

    ``"fp32"`` and ``"master"`` (BF16 weights + FP32 master copy) come from
    :func:`mpcourse.master.ledger`; ``"bf16 nearest"`` and
    ``"bf16 stochastic"``: BF16 weights 2 + BF16 grads 2 + FP32 Adam moments 8;
    ``"bf16 kahan"``: the same + a BF16 compensation buffer 2.

    Taught in course/14_microscaling.ipynb.
    """
    if recipe == "fp32":
        return ledger("fp32", "adam")
    if recipe == "master":
        items = ledger("master", "adam")
        return {k.replace("fp16", "bf16"): v for k, v in items.items()}
    base = {"weights bf16": 2, "grads bf16": 2, "optimizer states fp32": 8}
    if recipe in ("bf16 nearest", "bf16 stochastic"):
        return base
    if recipe == "bf16 kahan":
        return {**base, "kahan buffer bf16": 2}
    raise ValueError(
        "recipe must be one of ('fp32', 'master', 'bf16 nearest', 'bf16 stochastic', "
        f"'bf16 kahan'), got {recipe!r}"
    )
