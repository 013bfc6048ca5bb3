"""Memory of a fine-tune: bytes per parameter of full fine-tuning, LoRA and QLoRA.

With AdamW and activations left out (:func:`finetune_ledger`): full fine-tuning in FP32
(16 bytes per parameter) or with AMP (18), chapter 04's :func:`mpcourse.master.ledger`; pure
BF16 with stochastic rounding (12), chapter 14's :func:`mpcourse.lowbit.bytes_per_parameter`;
LoRA on a frozen BF16 base, 2 per base parameter plus 16 per adapter parameter (FP32 weight,
grad and two Adam states); QLoRA, the same on an NF4 base of
:func:`mpcourse.nf4.nf4_bits_per_parameter` bits. :func:`ledger_check` measures the real
tensors of each recipe after one step; :func:`torchao_state_bytes` the states of torchao's
low-bit AdamW.

Taught in course/16_finetuning.ipynb.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .lora import add_lora, trainable
from .lowbit import bytes_per_parameter as lowbit_bytes
from .master import ledger, tensor_bytes
from .nf4 import nf4_bits_per_parameter

__all__ = [
    "FT_METHODS",
    "LLAMA_7B_LINEARS",
    "finetune_ledger",
    "lora_parameters",
    "measure_finetune_bytes",
    "ledger_check",
    "TORCHAO_OPTIMIZERS",
    "torchao_state_bytes",
    "first_step_seconds",
]

FT_METHODS = ("full fp32", "full amp", "full bf16 sr", "lora bf16", "qlora nf4")

# (in, out) of every Linear in one LLaMA-7B layer (q, k, v, o, gate, up, down), 32 layers
LLAMA_7B_LINEARS: tuple[tuple[int, int], ...] = (
    ((4096, 4096),) * 4 + ((4096, 11008),) * 2 + ((11008, 4096),)
) * 32


def lora_parameters(linears: tuple[tuple[int, int], ...], rank: int) -> int:
    """Trainable parameters of rank-``rank`` LoRA on each ``(in, out)`` Linear: $r(k + d)$.

    Taught in course/16_finetuning.ipynb.
    """
    return sum(rank * (k + d) for k, d in linears)


def finetune_ledger(
    method: str,
    n_params: int,
    n_trainable: int = 0,
    *,
    quantized_share: float = 1.0,
    nf4_bits: float | None = None,
) -> dict[str, float]:
    """Bytes per *base* parameter of a fine-tune with AdamW, item by item.

    * ``"full fp32"``, ``"full amp"``: chapter 04's ledger (``master.ledger``, Adam).
    * ``"full bf16 sr"``: chapter 14's BF16 weights without master (``lowbit``).
    * ``"lora bf16"``: frozen BF16 base 2 (no grads, no states) + per trainable adapter
      parameter FP32 weight 4, grad 4, Adam 8, spread over the ``n_params`` base parameters.
    * ``"qlora nf4"``: the same with the ``quantized_share`` of the base (its Linear
      weights) in NF4 of ``nf4_bits`` bits (default 4.127: block 64, double-quantized in
      blocks of 256) and the rest (embeddings, norms, biases) in BF16.

    Activations are left out (they depend on batch and sequence, not on the method).

    Taught in course/16_finetuning.ipynb.
    """
    if method not in FT_METHODS:
        raise ValueError(f"method must be one of {FT_METHODS}, got {method!r}")
    if n_params < 1 or n_trainable < 0 or not 0 <= quantized_share <= 1:
        raise ValueError(
            "need n_params >= 1, n_trainable >= 0 and 0 <= quantized_share <= 1, got "
            f"{n_params}, {n_trainable}, {quantized_share}"
        )
    if method == "full fp32":
        return dict(ledger("fp32", "adam"))
    if method == "full amp":
        return dict(ledger("amp", "adam"))
    if method == "full bf16 sr":
        return dict(lowbit_bytes("bf16 stochastic"))
    if method == "lora bf16":
        items = {"frozen weights bf16": 2.0}
    else:
        bits = nf4_bits_per_parameter() if nf4_bits is None else nf4_bits
        items = {
            "frozen weights nf4": bits / 8 * quantized_share,
            "frozen weights bf16": 2.0 * (1 - quantized_share),
        }
    share = n_trainable / n_params
    return {
        **items,
        "adapter weights fp32": 4 * share,
        "adapter grads fp32": 4 * share,
        "optimizer states fp32": 8 * share,
    }


def measure_finetune_bytes(
    model: nn.Module, optimizer: torch.optim.Optimizer, n_params: int
) -> dict[str, float]:
    """Measured bytes per base parameter of ``model`` after a step of ``optimizer``: frozen
    weights (an :class:`~mpcourse.nf4.NF4Linear`'s storage counted by its bytes), trainable
    weights, their grads, and the optimizer's state tensors (step counters included).

    Taught in course/16_finetuning.ipynb.
    """
    from .nf4 import NF4Linear

    frozen = [p for p in model.parameters() if not p.requires_grad]
    train = trainable(model)
    nf4 = sum(m.weight4.nbytes() for m in model.modules() if isinstance(m, NF4Linear))
    states = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    return {
        "frozen weights": (tensor_bytes(frozen) + nf4) / n_params,
        "trainable weights": tensor_bytes(train) / n_params,
        "grads": tensor_bytes(p.grad for p in train) / n_params,
        "optimizer states": tensor_bytes(states) / n_params,
    }


def ledger_check(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, rank: int = 4
) -> list[tuple[str, float, float]]:
    """``(method, ledger, measured)`` bytes per parameter for each of :data:`FT_METHODS` on
    copies of a GPT (one AdamW step on ``(x, y)``; LoRA and NF4 on the ``qkv`` and ``proj``
    Linears, the rest BF16). Measured: chapter 04's ``measure_bytes_per_parameter`` (full
    FP32, AMP), ``lowbit.BF16AdamTrainer`` (BF16 + SR), :func:`measure_finetune_bytes`.

    Taught in course/16_finetuning.ipynb.
    """
    from .lowbit import BF16AdamTrainer
    from .master import measure_bytes_per_parameter
    from .nf4 import NF4Linear, quantize_linears

    targets = ("qkv", "proj")
    n = sum(p.numel() for p in model.parameters())

    def ce(out: tuple, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out[0].float().flatten(0, 1), target.flatten())

    rows = []
    for method, recipe in (("full fp32", "fp32"), ("full amp", "amp")):
        got = measure_bytes_per_parameter(copy.deepcopy(model), (x, y), recipe, "adam", loss_fn=ce)
        rows.append((method, sum(finetune_ledger(method, n).values()), sum(got.values())))
    sr = BF16AdamTrainer(copy.deepcopy(model), "stochastic")
    sr.model(x, y)[1].backward()
    sr.step()
    rows.append(
        (
            "full bf16 sr",
            sum(finetune_ledger("full bf16 sr", n).values()),
            sum(sr.bytes_per_parameter().values()),
        )
    )
    for method in ("lora bf16", "qlora nf4"):
        m = copy.deepcopy(model).bfloat16()
        quantized = 0
        if method == "qlora nf4":
            quantized = sum(
                mod.weight.numel()
                for name, mod in m.named_modules()
                if name.split(".")[-1] in targets
            )
            quantize_linears(m, targets, torch.bfloat16, scale_block_size=16)
        add_lora(m, targets, rank)
        opt = torch.optim.AdamW(trainable(m), lr=1e-3)
        m(x, y)[1].backward()
        opt.step()
        got = measure_finetune_bytes(m, opt, n)
        biases = sum(tensor_bytes([mod.bias]) for mod in m.modules() if isinstance(mod, NF4Linear))
        n_train = sum(p.numel() for p in trainable(m))
        expected = finetune_ledger(
            method,
            n,
            n_train,
            quantized_share=quantized / n,
            nf4_bits=None if method == "lora bf16" else 4 + 8 / 64 + 32 / (64 * 16),
        )
        rows.append((method, sum(expected.values()), sum(got.values()) + biases / n))
    return rows


TORCHAO_OPTIMIZERS = ("AdamW8bit", "AdamW4bit", "AdamWFp8")


def torchao_state_bytes(name: str, shape: tuple[int, ...]) -> float:
    """Bytes per parameter of ``exp_avg`` + ``exp_avg_sq`` as ``torchao.optim.<name>``
    creates them for a parameter of ``shape`` (its ``_new_buffer``, what its first step
    calls; ``torchao/optim/adam.py``): quantized states with their block scales for tensors
    of at least 4096 values that the block size divides, plain ``zeros_like(p)`` otherwise.

    Taught in course/16_finetuning.ipynb.
    """
    import torchao.optim

    if name not in TORCHAO_OPTIMIZERS:
        raise ValueError(f"name must be one of {TORCHAO_OPTIMIZERS}, got {name!r}")
    p = nn.Parameter(torch.zeros(shape))
    opt = getattr(torchao.optim, name)([p])
    states = [opt._new_buffer(p, True), opt._new_buffer(p, False)]
    inner = []  # a quantized state is a tensor subclass: count the tensors inside it
    for state in states:
        if type(state) is torch.Tensor:
            inner.append(state)
        else:
            inner += [getattr(state, a) for a in state.__tensor_flatten__()[0]]
    return tensor_bytes(inner) / p.numel()


def first_step_seconds(name: str, numel: int = 65536, bf16_stochastic_round: bool = False) -> float:
    """Wall time of the first ``step()`` of ``torchao.optim.<name>`` on one parameter: it
    runs ``torch.compile(single_param_adam, fullgraph=True)``, so the first step compiles
    (tens of seconds on a 2-core CPU) and later ones are fast. Not run in the notebook.

    Taught in course/16_finetuning.ipynb.
    """
    import time

    import torchao.optim

    if name not in TORCHAO_OPTIMIZERS:
        raise ValueError(f"name must be one of {TORCHAO_OPTIMIZERS}, got {name!r}")
    dtype = torch.bfloat16 if bf16_stochastic_round else torch.float32
    p = nn.Parameter(torch.zeros(numel, dtype=dtype))
    opt = getattr(torchao.optim, name)([p], bf16_stochastic_round=bf16_stochastic_round)
    p.grad = torch.ones_like(p)
    start = time.perf_counter()
    opt.step()
    return time.perf_counter() - start
