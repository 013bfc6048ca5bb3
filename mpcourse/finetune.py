"""Fine-tuning in 16 bits: LoRA on a frozen base and a fine-tune loop that keeps every dtype.

**LoRA** (:mod:`mpcourse.lora`): $y = W x + b + \\frac{\\alpha}{r} B A x$ on a frozen
``nn.Linear``, the adapters in FP32 by default, as ``peft``.

**Fine-tuning** (:func:`finetune`): AdamW on the trainable parameters only, every dtype
left as it is, with a precision recipe's autocast and GradScaler; :func:`pretrained_gpt`
gives chapter 15's GPT pretrained deterministically and cached locally.

The small updates that 16 bits lose (weight decay, EMA, Adam's second moment) are in
:mod:`mpcourse.small_updates`, the memory ledger of a fine-tune in
:mod:`mpcourse.finetune_memory`; they and :mod:`mpcourse.lora` are re-exported here, so the
chapter imports one module.

Taught in course/16_finetuning.ipynb.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import precision
from .finetune_memory import (
    FT_METHODS,
    LLAMA_7B_LINEARS,
    TORCHAO_OPTIMIZERS,
    finetune_ledger,
    first_step_seconds,
    ledger_check,
    lora_parameters,
    measure_finetune_bytes,
    torchao_state_bytes,
)
from .lora import LoRALinear, add_lora, trainable
from .purefp16 import lost_updates
from .small_updates import EMA, ROUNDINGS, adam_second_moment, decay_, store_, swallowed

__all__ = [
    "LoRALinear",
    "add_lora",
    "trainable",
    "ROUNDINGS",
    "store_",
    "EMA",
    "decay_",
    "adam_second_moment",
    "swallowed",
    "FinetuneRun",
    "finetune",
    "pretrained_gpt",
    "FT_METHODS",
    "finetune_ledger",
    "lora_parameters",
    "LLAMA_7B_LINEARS",
    "measure_finetune_bytes",
    "ledger_check",
    "TORCHAO_OPTIMIZERS",
    "torchao_state_bytes",
    "first_step_seconds",
]

# --- a fine-tune on text --------------------------------------------------------------------


@dataclass
class FinetuneRun:
    """Per-step training loss, held-out loss after training, and the share of trainable
    entries with a nonzero gradient that the step left unchanged (``lost``).

    Taught in course/16_finetuning.ipynb.
    """

    losses: list[float] = field(default_factory=list)
    lost: list[float] = field(default_factory=list)
    held_out: float | None = None


def finetune(
    model: nn.Module,
    tokens: torch.Tensor,
    *,
    steps: int = 30,
    lr: float = 1e-3,
    batch_size: int = 8,
    weight_decay: float = 0.0,
    recipe: str = "fp32",
    seed: int = 0,
    eval_tokens: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> FinetuneRun:
    """Train the trainable parameters of a :class:`mpcourse.transformer.GPT` in place with
    AdamW, leaving every dtype as it is (a frozen 16-bit base stays 16-bit).

    ``recipe`` (:mod:`mpcourse.precision`) adds its autocast and, for ``amp-fp16``, a
    GradScaler: which refuses FP16 gradients ("Attempting to unscale FP16 gradients") and
    an optimizer none of whose parameters got a gradient ("No inf checks were recorded").

    Taught in course/16_finetuning.ipynb.
    """
    from .transformer import evaluate, forward_backward  # chapter 15's step

    params = trainable(model)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scaler = precision.make_scaler(recipe, device)
    gen = torch.Generator().manual_seed(seed)
    run = FinetuneRun()
    model.train()
    for _ in range(steps):
        loss = forward_backward(
            model, tokens, opt, scaler, recipe, device, batch_size=batch_size, gen=gen
        )
        before = [p.detach().clone() for p in params]
        scaler.step(opt)
        scaler.update()
        tried, lost = lost_updates(before, params)
        run.losses.append(loss.item())
        run.lost.append(lost / max(tried, 1))
    if eval_tokens is not None:
        run.held_out = evaluate(model, eval_tokens, recipe, device)
    return run


def _cache_dir() -> Path:
    root = os.environ.get("MPCOURSE_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(root or Path.home() / ".cache") / "mpcourse"


def pretrained_gpt(steps: int = 100, seed: int = 0, *, cache: bool = True) -> nn.Module:
    """Chapter 15's GPT pretrained in FP32 on the ``"stdlib-docs"`` corpus (90% split) with
    :func:`finetune` (AdamW, lr 3e-3, batches of 16, every parameter trainable), built
    deterministically and cached under ``$MPCOURSE_CACHE`` or ``~/.cache/mpcourse``. The
    file name holds the corpus fingerprint, the config, steps, seed, torch version and a hash
    of the model's and the loop's source, so a change to either builds anew; nothing is
    downloaded. Trained on the CPU with one thread, so every machine builds the same weights.
    Returns an FP32 model in eval mode (on the CPU).

    Taught in course/16_finetuning.ipynb.
    """
    from .text import ByteTokenizer, corpus, fingerprint, split
    from .transformer import GPT, GPTConfig, forward_backward

    config = GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32)
    text = corpus("stdlib-docs")
    code = "".join(inspect.getsource(obj) for obj in (GPT, finetune, forward_backward))
    code_hash = hashlib.sha256(code.encode()).hexdigest()[:8]
    key = f"{fingerprint(text)}-{config.n_layer}x{config.n_embd}-s{steps}-seed{seed}-{code_hash}"
    path = _cache_dir() / f"gpt-{key}-torch{torch.__version__.split('+')[0]}.pt"
    torch.manual_seed(seed)
    model = GPT(config)
    if cache and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    tokens, _ = split(ByteTokenizer().encode(text))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same sums in the same order on every machine: same weights
    try:
        finetune(model, tokens, steps=steps, lr=3e-3, batch_size=16, seed=seed)
    finally:
        torch.set_num_threads(threads)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    return model.eval()
