"""Fine-tuning in 16 bits: LoRA on a frozen base, and the small updates that 16 bits lose.

**LoRA** (Hu et al. 2021, §4.1). A frozen ``nn.Linear`` $y = W x + b$ gets a trainable
low-rank detour: $y = W x + b + \\frac{\\alpha}{r} B A x$ with $A \\in \\mathbb{R}^{r \\times k}$
(Kaiming-uniform, as ``peft`` does) and $B \\in \\mathbb{R}^{d \\times r}$ (zeros, so training
starts from the pretrained function). :class:`LoRALinear` computes it as ``peft``'s
``lora.Linear`` does: the base in its own dtype, the detour in the adapters' dtype (the input
cast to it), the sum cast back to the base's output dtype. ``peft`` keeps adapters in FP32 by
default (``autocast_adapter_dtype=True``: ``peft/tuners/tuners_utils.py``,
``cast_adapter_dtype``, upcasts FP16/BF16 adapter weights to FP32).

**Small updates lost in 16 bits.** A stored value $w$ takes an update $u$ only if
$|u| > \\tfrac12\\,\\mathrm{spacing}(w)$, about $2^{-9}|w|$ in BF16 and $2^{-12}|w|$ in FP16
(chapter 02). Three updates of fine-tuning are relatively smaller than that:

* decoupled weight decay (AdamW): $w \\leftarrow w (1 - \\eta\\lambda)$, with
  $\\eta\\lambda \\approx 10^{-6}$ (torch's ``adam.py``: ``param.mul_(1 - lr * weight_decay)``);
* an EMA of the weights: $e \\leftarrow e + (1 - \\beta)(w - e)$, $1 - \\beta = 10^{-4}$:
  the step is $10^{-4}$ of the gap, and the gap itself is small;
* Adam's second moment: $v \\leftarrow \\beta_2 v + (1 - \\beta_2) g^2$, $1 - \\beta_2 = 10^{-3}$,
  stored in the parameter's dtype (``torch.zeros_like(p)`` in ``adam.py``).

:func:`store_` writes an FP32 result into a 16-bit tensor three ways (the rules of
:mod:`mpcourse.lowbit`): round to nearest, stochastic rounding
(:func:`mpcourse.formats.round_stochastic`) or Kahan compensation.

**Memory** (:func:`finetune_ledger`): bytes per parameter of full fine-tuning and of
adapters on a frozen BF16 or NF4 base, from :func:`mpcourse.master.ledger`,
:func:`mpcourse.lowbit.bytes_per_parameter` and :func:`mpcourse.nf4.nf4_bits_per_parameter`.

Taught in course/16_finetuning.ipynb.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import precision
from .formats import BF16, FP16, round_stochastic
from .lowbit import bytes_per_parameter as lowbit_bytes
from .master import ledger, tensor_bytes
from .nf4 import nf4_bits_per_parameter
from .purefp16 import lost_updates

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

_LOW = {torch.float16: FP16, torch.bfloat16: BF16}

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


# --- storing small updates in 16 bits ----------------------------------------------------------

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
    """Chapter 15's GPT pretrained in FP32 on the ``"stdlib-docs"`` corpus (90% split), built
    deterministically and cached under ``$MPCOURSE_CACHE`` or ``~/.cache/mpcourse`` (the
    file name holds the corpus fingerprint, config, steps, seed and torch version; nothing is
    downloaded). Returns an FP32 model in eval mode.

    Taught in course/16_finetuning.ipynb.
    """
    from .text import ByteTokenizer, corpus, fingerprint, split
    from .transformer import GPT, GPTConfig, train_gpt

    config = GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32)
    text = corpus("stdlib-docs")
    key = f"{fingerprint(text)}-{config.n_layer}x{config.n_embd}-s{steps}-seed{seed}"
    path = _cache_dir() / f"gpt-{key}-torch{torch.__version__.split('+')[0]}.pt"
    torch.manual_seed(seed)
    model = GPT(config)
    if cache and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    tokens, _ = split(ByteTokenizer().encode(text))
    train_gpt(model, tokens, recipe="fp32", steps=steps, lr=3e-3, batch_size=16, seed=seed)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    return model.eval()


# --- memory ---------------------------------------------------------------------------------

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
