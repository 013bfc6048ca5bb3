"""Fine-tuning in 16 bits: LoRA on a frozen base and a fine-tune loop that keeps every dtype.

**LoRA** (Hu et al. 2021, §4.1). A frozen ``nn.Linear`` $y = W x + b$ gets a trainable
low-rank detour: $y = W x + b + \\frac{\\alpha}{r} B A x$ with $A \\in \\mathbb{R}^{r \\times k}$
(Kaiming-uniform, as ``peft`` does) and $B \\in \\mathbb{R}^{d \\times r}$ (zeros, so training
starts from the pretrained function). :class:`LoRALinear` computes it as ``peft``'s
``lora.Linear`` does: the base in its own dtype, the detour in the adapters' dtype (the input
cast to it), the sum cast back to the base's output dtype. ``peft`` keeps adapters in FP32 by
default (``autocast_adapter_dtype=True``: ``peft/tuners/tuners_utils.py``,
``cast_adapter_dtype``, upcasts FP16/BF16 adapter weights to FP32).

**Fine-tuning** (:func:`finetune`): AdamW on the trainable parameters only, every dtype
left as it is, with a precision recipe's autocast and GradScaler; :func:`pretrained_gpt`
gives chapter 15's GPT pretrained deterministically and cached locally.

The small updates that 16 bits lose (weight decay, EMA, Adam's second moment) are in
:mod:`mpcourse.small_updates`, the memory ledger of a fine-tune in
:mod:`mpcourse.finetune_memory`; both are re-exported here, so the chapter imports one module.

Taught in course/16_finetuning.ipynb.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
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

# --- LoRA ------------------------------------------------------------------------------------


class LoRALinear(nn.Module):
    """$y = \\mathrm{base}(x) + \\frac{\\alpha}{r} B A x$ on a frozen ``nn.Linear`` (see the module
    docstring). ``adapter_dtype``: FP32 by default, as ``peft``. ``alpha`` defaults to
    ``rank`` (scaling 1). Raises ``TypeError`` for a base that is not an ``nn.Linear`` and
    ``ValueError`` for a rank outside ``1..min(in_features, out_features)``.

    Taught in course/16_finetuning.ipynb.
    """

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float | None = None,
        adapter_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        from .nf4 import NF4Linear

        if not isinstance(base, (nn.Linear, NF4Linear)):
            raise TypeError(
                f"LoRA adapts an nn.Linear (or an NF4Linear); got {type(base).__name__} "
                "(embeddings, norms and convolutions need their own adapter types)"
            )
        limit = min(base.in_features, base.out_features)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
            raise ValueError(
                f"rank must be an int from 1 to min(in_features, out_features) = {limit} "
                f"(a larger rank is no longer low-rank), got {rank!r}"
            )
        if not adapter_dtype.is_floating_point:
            raise ValueError(f"adapter_dtype must be a float dtype, got {adapter_dtype}")
        self.base = base.requires_grad_(False)
        self.rank = rank
        self.scaling = (rank if alpha is None else alpha) / rank
        dev = base.weight.device if isinstance(base, nn.Linear) else base.weight4.packed.device
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=dev))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=dev))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's reset_lora_parameters
        self.to_adapter_dtype(adapter_dtype)

    def to_adapter_dtype(self, dtype: torch.dtype) -> LoRALinear:
        """Cast the adapters only (the base keeps its dtype)."""
        self.lora_A.data = self.lora_A.data.to(dtype)
        self.lora_B.data = self.lora_B.data.to(dtype)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        out_dtype = result.dtype
        xa = x.to(self.lora_A.dtype)
        result = result + F.linear(F.linear(xa, self.lora_A), self.lora_B) * self.scaling
        return result.to(out_dtype)

    def merged_weight(self) -> torch.Tensor:
        """$W + \\frac{\\alpha}{r} B A$ in FP32 (what merging the adapter into the base gives)."""
        delta = self.lora_B.float() @ self.lora_A.float()
        weight = self.base.weight if isinstance(self.base, nn.Linear) else self.base.weight4
        return (weight.float() if torch.is_tensor(weight) else weight.dequantize()) + (
            self.scaling * delta
        )


def add_lora(
    model: nn.Module,
    targets: tuple[str, ...],
    rank: int,
    alpha: float | None = None,
    adapter_dtype: torch.dtype = torch.float32,
) -> list[str]:
    """Freeze ``model`` and wrap each submodule whose name ends with one of ``targets`` in a
    :class:`LoRALinear` (in place; ``peft``'s ``target_modules``). Returns the wrapped names.
    ``TypeError`` if a target is not an ``nn.Linear``; ``ValueError`` if nothing matched.

    Taught in course/16_finetuning.ipynb.
    """
    model.requires_grad_(False)
    names = [
        n for n, _ in model.named_modules() if n and any(n.split(".")[-1] == t for t in targets)
    ]
    if not names:
        raise ValueError(f"no submodule is named like {targets}; names end e.g. in 'qkv', 'proj'")
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, LoRALinear(getattr(parent, attr), rank, alpha, adapter_dtype))
    return names


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters with ``requires_grad`` (what the optimizer should get).

    Taught in course/16_finetuning.ipynb.
    """
    return [p for p in model.parameters() if p.requires_grad]


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
    from .text import batch  # chapter 15's batches
    from .transformer import evaluate

    params = trainable(model)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scaler = precision.make_scaler(recipe, device)
    gen = torch.Generator().manual_seed(seed)
    run = FinetuneRun()
    model.train()
    for _ in range(steps):
        x, y = batch(tokens, model.config.block_size, batch_size, gen)
        with precision.autocast(recipe, device):
            _, loss = model(x.to(device), y.to(device))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
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
    from .transformer import GPT, GPTConfig

    config = GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32)
    text = corpus("stdlib-docs")
    code = "".join(inspect.getsource(obj) for obj in (GPT, finetune))
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
