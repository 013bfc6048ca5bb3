"""LoRA: a trainable low-rank detour on a frozen ``nn.Linear``.

A frozen ``nn.Linear`` $y = W x + b$ gets a trainable low-rank detour (Hu et al. 2021, §4.1):
$y = W x + b + \\frac{\\alpha}{r} B A x$ with $A \\in \\mathbb{R}^{r \\times k}$
(Kaiming-uniform, as ``peft`` does) and $B \\in \\mathbb{R}^{d \\times r}$ (zeros, so training
starts from the pretrained function). :class:`LoRALinear` computes it as ``peft``'s
``lora.Linear`` does: the base in its own dtype, the detour in the adapters' dtype (the input
cast to it), the sum cast back to the base's output dtype. ``peft`` keeps adapters in FP32 by
default (``autocast_adapter_dtype=True``: ``peft/tuners/tuners_utils.py``,
``cast_adapter_dtype``, upcasts FP16/BF16 adapter weights to FP32). :func:`add_lora` wraps a
model's target Linears, :func:`trainable` lists what the optimizer gets.

Used by :mod:`mpcourse.finetune` (which re-exports it) and :mod:`mpcourse.finetune_memory`.

Taught in course/16_finetuning.ipynb.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LoRALinear", "add_lora", "trainable"]


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
