"""A small decoder-only transformer (nanoGPT-style), attention written out, and its trainer.

The model maps token ids ``idx`` of shape ``(B, T)``, ``T <= block_size``, to
next-token logits ``(B, T, V)``:

    x = tok_emb[idx] + pos_emb[0:T]
    for each of n_layer blocks:
        x = x + Attn(LN1(x))          # causal self-attention, n_head heads
        x = x + MLP(LN2(x))           # Linear(C, 4C) -> GELU -> Linear(4C, C)
    logits = lm_head(LN_f(x))         # lm_head shares tok_emb's weight

Attention, per head of width $d = C / H$ (:func:`causal_attention`, the
``"manual"`` path):

$$S = \\frac{Q K^\\top}{\\sqrt d}, \\quad S_{ij} = -\\infty \\text{ for } j > i, \\quad
A = \\mathrm{softmax}(S) V$$

``attention="sdpa"`` computes the same with
``torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)``.

The loss is the cross-entropy of the logits **upcast to FP32**
(``F.cross_entropy(logits.float(), targets)``): with pure 16-bit parameters
and no autocast the logits come out in 16 bits, and the log-sum-exp over the
vocabulary must not be taken there (chapter 15 §4).

:func:`train_gpt` trains it with one of the precision recipes of
:mod:`mpcourse.precision` (``fp32``, ``amp-bf16``, ``amp-fp16`` with a
GradScaler, ``pure-bf16``, ``pure-fp16``) on a token stream from
:mod:`mpcourse.text`, and returns per-step losses and the held-out loss.

Memory (chapter 15 §6 and §8): :func:`chunked_cross_entropy` (the loss without the full
FP32 logits), :func:`activation_ledger` (bytes saved for backward per token per layer,
measured) and :func:`ledger_formula` (the same, counted by hand).

Public API (relied on by chapters 15 and 16): ``GPTConfig``, ``GPT``,
``causal_attention``, ``train_gpt``, ``forward_backward``, ``TrainResult``, ``evaluate``,
``compare_recipes``, ``format_runs``, ``chunked_cross_entropy``, ``activation_ledger``,
``ledger_formula``.

Taught in course/15_transformers.ipynb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import precision
from .text import batch

__all__ = [
    "GPTConfig",
    "GPT",
    "TrainResult",
    "activation_ledger",
    "ledger_formula",
    "causal_attention",
    "chunked_cross_entropy",
    "compare_recipes",
    "evaluate",
    "format_runs",
    "forward_backward",
    "train_gpt",
]

ATTENTION = ("manual", "sdpa")


@dataclass(frozen=True)
class GPTConfig:
    """The shape of a :class:`GPT`.

    ``attention``: ``"manual"`` (QKᵀ, mask, softmax written out) or ``"sdpa"``
    (``F.scaled_dot_product_attention``). ``checkpoint``: recompute each block in
    the backward pass (``torch.utils.checkpoint``, non-reentrant) instead of saving
    its activations.

    Taught in course/15_transformers.ipynb.
    """

    vocab_size: int = 256
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    attention: str = "manual"
    checkpoint: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {self.attention!r}")


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention written out: ``softmax(QKᵀ/√d + mask) V`` for ``(B, H, T, d)`` inputs.

    The scale is applied to the scores after the product, as in the papers; the
    mask fills future positions with ``-inf`` (any float dtype holds it; the
    diagonal is never masked, so no row is all ``-inf``).

    Taught in course/15_transformers.ipynb.
    """
    T, d = q.size(-2), q.size(-1)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)  # (B, H, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: one Linear makes Q, K, V; one projects back."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.attention = config.n_head, config.attention
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.attention == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = causal_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        c = config.n_embd
        self.ln1, self.ln2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.attn = CausalSelfAttention(config)
        self.mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A decoder-only transformer; see the module docstring for the math.

    ``forward(idx, targets=None) -> (logits, loss)``: ``loss`` is ``None`` without
    targets, else the FP32 cross-entropy of ``logits.float()``. Raises ``ValueError``
    for a context longer than ``block_size`` or ids outside ``[0, vocab_size)``.

    Taught in course/15_transformers.ipynb.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT takes a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying, as in GPT-2
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * config.n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.config
        if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"GPT takes int64 token ids of shape (B, T), got dtype {idx.dtype}, "
                f"shape {tuple(idx.shape)}"
            )
        T = idx.size(1)
        if not 1 <= T <= cfg.block_size:
            raise ValueError(
                f"context of {T} tokens: this model accepts 1 to block_size = {cfg.block_size}"
            )
        if int(idx.min()) < 0 or int(idx.max()) >= cfg.vocab_size:
            raise ValueError(
                f"token ids must lie in [0, {cfg.vocab_size}) (vocab_size), got ids from "
                f"{int(idx.min())} to {int(idx.max())}"
            )
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))
        for block in self.blocks:
            if cfg.checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


@dataclass
class TrainResult:
    """What :func:`train_gpt` measured: ``losses[i]`` is step i's training loss (FP32),
    ``held_out`` the loss on the held-out tokens after training (``None`` without them),
    ``skipped`` the steps the GradScaler skipped, ``scales`` its scale after each step."""

    recipe: str
    losses: list[float]
    held_out: float | None
    skipped: int = 0
    scales: list[float] = field(default_factory=list)


@torch.no_grad()
def evaluate(
    model: GPT,
    tokens: torch.Tensor,
    recipe: str = "fp32",
    device: torch.device | str = "cpu",
    max_windows: int = 64,
) -> float:
    """Mean loss over consecutive, non-overlapping windows of ``tokens`` (at most
    ``max_windows`` of them), with the recipe's forward (its autocast, if any).

    Taught in course/15_transformers.ipynb.
    """
    T = model.config.block_size
    n = min((tokens.numel() - 1) // T, max_windows)
    if n < 1:
        raise ValueError(f"evaluate needs at least block_size + 1 = {T + 1} tokens")
    x = tokens[: n * T].view(n, T).to(device)
    y = tokens[1 : n * T + 1].view(n, T).to(device)
    was_training = model.training
    model.eval()
    with precision.autocast(recipe, device):
        _, loss = model(x, y)
    model.train(was_training)
    return float(loss)


def forward_backward(
    model: GPT,
    tokens: torch.Tensor,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    recipe: str | precision.Recipe,
    device: torch.device | str,
    *,
    batch_size: int,
    gen: torch.Generator,
) -> torch.Tensor:
    """The first half of a training step, shared by :func:`train_gpt` and chapter 16's
    :func:`mpcourse.finetune.finetune`: a batch of ``tokens`` drawn with ``gen``
    (:func:`mpcourse.text.batch`), the loss under ``recipe``'s autocast, the gradients
    zeroed, ``scaler.scale(loss).backward()``. Returns the loss; the caller steps
    (``scaler.step(opt)``, ``scaler.update()``) and looks at what it wants around the step.

    Taught in course/15_transformers.ipynb.
    """
    x, y = batch(tokens, model.config.block_size, batch_size, gen)
    with precision.autocast(recipe, device):
        _, loss = model(x.to(device), y.to(device))
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    return loss


def train_gpt(
    model: GPT,
    tokens: torch.Tensor,
    *,
    recipe: str = "fp32",
    steps: int = 200,
    lr: float = 3e-3,
    batch_size: int = 16,
    seed: int = 0,
    eval_tokens: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    weight_decay: float = 0.0,
) -> TrainResult:
    """Train ``model`` in place for ``steps`` AdamW steps on random windows of ``tokens``.

    The recipe (a name of :mod:`mpcourse.precision`) decides everything: pure
    recipes cast the model (``model.to(param_dtype)``, so AdamW's state is 16-bit
    too); AMP recipes run the forward under ``precision.autocast``; ``amp-fp16``
    scales the loss with ``precision.make_scaler`` (``scale -> backward -> step ->
    update``). Batches come from a generator seeded with ``seed`` (the model's
    initialisation is the caller's: seed before building it).

    Taught in course/15_transformers.ipynb.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"train_gpt trains a mpcourse.transformer.GPT, got {type(model).__name__}")
    r = precision.recipe(recipe, device)
    if tokens.dim() != 1 or tokens.numel() <= model.config.block_size:
        raise ValueError(
            f"train_gpt needs a 1-D token tensor longer than block_size = "
            f"{model.config.block_size}, got shape {tuple(tokens.shape)}"
        )
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    model.to(device=device, dtype=r.param_dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    scaler = precision.make_scaler(r, device)
    gen = torch.Generator().manual_seed(seed)
    out = TrainResult(recipe=r.name, losses=[], held_out=None)
    model.train()
    for _ in range(steps):
        loss = forward_backward(
            model, tokens, opt, scaler, r, device, batch_size=batch_size, gen=gen
        )
        scale_before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        if r.scaler:
            out.scales.append(scaler.get_scale())
            out.skipped += int(scaler.get_scale() < scale_before)
        out.losses.append(float(loss.detach()))
    if eval_tokens is not None:
        out.held_out = evaluate(model, eval_tokens, r.name, device)
    return out


def compare_recipes(
    config: GPTConfig,
    train_tokens: torch.Tensor,
    eval_tokens: torch.Tensor,
    runs: list[tuple[str, int]],
    **train_kwargs: object,
) -> dict[tuple[str, int], TrainResult]:
    """Train one fresh :class:`GPT` per ``(recipe, seed)`` in ``runs``: the model is built
    after ``torch.manual_seed(seed)`` and its batches use ``seed`` too, so two recipes with
    the same seed start from the same weights and see the same batches.

    Taught in course/15_transformers.ipynb.
    """
    out = {}
    for name, seed in runs:
        torch.manual_seed(seed)
        model = GPT(config)
        out[(name, seed)] = train_gpt(
            model, train_tokens, recipe=name, seed=seed, eval_tokens=eval_tokens, **train_kwargs
        )
    return out


def format_runs(results: dict[tuple[str, int], TrainResult], last: int = 20) -> str:
    """One line per run: recipe, seed, mean training loss of the ``last`` steps, held-out
    loss, skipped steps.

    Taught in course/15_transformers.ipynb.
    """
    lines = [
        f"{'recipe':<10} {'seed':>4}  {'train (last ' + str(last) + ')':>15}  held-out  skipped"
    ]
    for (name, seed), r in results.items():
        tail = sum(r.losses[-last:]) / len(r.losses[-last:])
        held = f"{r.held_out:.4f}" if r.held_out is not None else "-"
        lines.append(f"{name:<10} {seed:>4}  {tail:>15.4f}  {held:>8}  {r.skipped:>7}")
    return "\n".join(lines)


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int = 256
) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets``, ``chunk_size`` rows at
    a time, never holding the full ``(N, V)`` logits.

    Each chunk's logits are computed in the inputs' dtype, upcast to FP32 for the
    log-sum-exp, reduced to a sum, and recomputed in the backward pass
    (``torch.utils.checkpoint``), so the peak holds one ``(chunk_size, V)`` FP32 block
    instead of ``(N, V)``. Equals ``F.cross_entropy((hidden @ weight.T).float(), targets)``.

    Taught in course/15_transformers.ipynb.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"chunked_cross_entropy takes hidden (N, C) and targets (N,), got "
            f"{tuple(hidden.shape)} and {tuple(targets.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    def chunk_loss(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy((h @ weight.T).float(), t, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for h, t in zip(hidden.split(chunk_size), targets.split(chunk_size), strict=True):
        total = total + checkpoint(chunk_loss, h, t, use_reentrant=False)
    return total / hidden.size(0)


def activation_ledger(
    config: GPTConfig, recipe: str = "fp32", batch_size: int = 4
) -> dict[str, float]:
    """Bytes autograd saves for backward, per token and per layer, for one forward pass of a
    fresh :class:`GPT` (``config``, sequence length ``block_size``) under ``recipe``.

    Measured with :func:`mpcourse.costs.saved_activation_bytes` (parameters excluded,
    autocast's 16-bit weight copies included). Returns ``{"per_token_per_layer": ...,
    "total": ..., "by_dtype": {...}}``: the total also holds what sits outside the blocks
    (embeddings, final norm, logits), which ``per_token_per_layer`` leaves out by measuring
    a model with one more layer and taking the difference.

    Taught in course/15_transformers.ipynb.
    """
    from dataclasses import replace

    from .costs import saved_activation_bytes

    def measure(cfg: GPTConfig) -> dict:
        torch.manual_seed(0)
        model = GPT(cfg).to(precision.recipe(recipe).param_dtype)
        idx = torch.randint(cfg.vocab_size, (batch_size, cfg.block_size))
        with saved_activation_bytes(model) as saved, precision.autocast(recipe, "cpu"):
            model(idx, idx)
        return saved

    one, more = measure(config), measure(replace(config, n_layer=config.n_layer + 1))
    tokens = batch_size * config.block_size
    return {
        "per_token_per_layer": (more["bytes"] - one["bytes"]) / tokens,
        "total": one["bytes"],
        "by_dtype": one["by_dtype"],
    }


def ledger_formula(config: GPTConfig, recipe: str = "fp32", batch_size: int = 4) -> float:
    """Bytes saved for backward per token and per layer, counted by hand for this block.

    With $a$ the bytes of a residual-stream value (4 for FP32 parameters, 2 for pure
    16-bit ones) and $m$ the bytes of a matmul-side value (4 in FP32, 2 under autocast or
    pure 16-bit), a block keeps per token

    $$a(2C + 4) + m(14C + HT) + \\frac{T}{B} + [\\text{autocast}]\\,\\frac{2 \\cdot 12C^2}{BT}$$

    * $a(2C + 4)$: the two LayerNorms' inputs and their mean and 1/std;
    * $m(14C + HT)$: the QKV Linear's input, Q, K, V, the softmax output ($H$ rows of
      $T$ weights), the output projection's input, the MLP's input, the GELU's input
      ($4C$) and the second Linear's input ($4C$);
    * $T/B$: the causal mask, a $T \\times T$ boolean shared by the batch;
    * under autocast, the 16-bit copies of the block's $12C^2$ weights, spread over the
      $BT$ tokens.

    With ``config.checkpoint`` a block keeps only its input: $aC$. Equals
    :func:`activation_ledger` (CPU autocast; tested). On CUDA, autocast runs the softmax
    in FP32, so there its $HT$ term costs 4 bytes, not $m$.

    Taught in course/15_transformers.ipynb.
    """
    r = precision.recipe(recipe)
    C, H, T, B = config.n_embd, config.n_head, config.block_size, batch_size
    a = r.param_dtype.itemsize
    if config.checkpoint:
        return float(a * C)
    m = r.compute_dtype.itemsize
    weights = 2 * 12 * C * C / (B * T) if r.autocast else 0.0
    return a * (2 * C + 4) + m * (14 * C + H * T) + T / B + weights
