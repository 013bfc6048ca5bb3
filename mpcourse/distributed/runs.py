"""Mixed precision across processes: DDP and FSDP2, launched with ``torchrun``.

One entry point, the same on one machine and on many::

    torchrun --standalone --nproc-per-node 2 -m mpcourse.distributed --train ddp:amp-fp16 --out out
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        --rdzv-id job1 -m mpcourse.distributed --train fsdp2:amp-bf16 --out runs/b

A *run* is ``STRATEGY:PRECISION[:key=value,...]`` (:func:`parse_run`):

* ``ddp`` (every rank holds the whole model; gradients are *all-reduced*, averaged,
  before the optimizer sees them) or ``fsdp2`` (``torch.distributed.fsdp.fully_shard``:
  each rank holds ``1/N`` of every parameter, gathers full compute copies per layer,
  and *reduce-scatters* gradients so each rank gets the average of its shard);
* a recipe of :mod:`mpcourse.precision` with FP32 parameters: ``fp32``, ``amp-fp16``
  (loss scaling) or ``amp-bf16``; autocast under DDP, a
  ``MixedPrecisionPolicy(param_dtype, reduce_dtype, output_dtype)`` under FSDP2 (FP32
  shards, 16-bit compute copies: the same split of parameter and compute dtype);
* options ``hook=none|fp16|bf16`` (DDP gradient compression), ``reduce=fp32|bf16``
  (FSDP2 reduce dtype), ``scaler=auto|torch|sharded|none``, ``outlier=RANK@STEP``
  (that rank's batch is multiplied by 1000 at that step, so its FP16 gradients overflow),
  ``crash=RANK@STEP`` / ``hang=RANK@STEP`` (that rank kills itself / stops responding
  there: what cleanup must survive).

Each rank writes ``OUT/<run name>/rank<r>.json`` (loss, scale, skipped steps,
local non-finite flags, bytes held, accuracy); rank 0 also writes ``model.pt``.
Everything that can be checked without processes is checked here first
(:func:`validate`), so bad input fails before any process group starts;
:func:`mpcourse.distributed.launch.launch` starts ``torchrun`` with a timeout and always
cleans up its ranks. The rank-side code is in :mod:`mpcourse.distributed.worker`, the
``torchrun`` entry point in ``mpcourse/distributed/__main__.py``.

Taught in course/13_distributed.ipynb.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .. import master
from ..data import digits
from ..device import pick_device
from ..models import MLP
from ..precision import RECIPES, autocast, make_scaler, recipe
from ..train import backward, optimizer_step
from ..validate import positive_int

__all__ = [
    "STRATEGIES",
    "PRECISIONS",
    "RunSpec",
    "parse_run",
    "validate",
    "backend_for",
    "rank_device",
    "shard_rows",
    "rank_ledger",
    "make_model",
    "global_batch",
    "local_batch",
    "train_single",
]

STRATEGIES = ("ddp", "fsdp2")
# The recipes whose parameters stay FP32 (DDP and FSDP2 keep FP32 weights; pure-* do not apply)
PRECISIONS = tuple(name for name, r in RECIPES.items() if not r.pure)
COMM_HOOKS = ("none", "fp16", "bf16")
REDUCE_DTYPES = ("fp32", "bf16")
SCALERS = ("auto", "torch", "sharded", "none")
HIDDEN = (31,)  # MLP(64 -> 31 -> 10) on the 8x8 digits; 31 rows split unevenly (16 + 15)
LR = 0.01
DATA_FILE = "digits.pt"


@dataclass(frozen=True)
class RunSpec:
    """One training run: strategy, precision and options (see the module docstring)."""

    strategy: str
    precision: str
    hook: str = "none"
    reduce: str = "fp32"
    scaler: str = "auto"
    outlier: tuple[int, int] | None = None  # (rank, step)
    crash: tuple[int, int] | None = None  # (rank, step): that rank kills itself (SIGKILL)
    hang: tuple[int, int] | None = None  # (rank, step): that rank stops responding

    @property
    def name(self) -> str:
        parts = [self.strategy, self.precision]
        if self.hook != "none":
            parts.append(f"hook_{self.hook}")
        if self.reduce != "fp32":
            parts.append(f"reduce_{self.reduce}")
        if self.scaler not in ("auto", self.resolved_scaler) or self.scaler == "sharded":
            parts.append(f"scaler_{self.scaler}")
        if self.outlier is not None:
            parts.append(f"outlier_{self.outlier[0]}at{self.outlier[1]}")
        for key, at in (("crash", self.crash), ("hang", self.hang)):
            if at is not None:
                parts.append(f"{key}_{at[0]}at{at[1]}")
        return "-".join(parts)

    @property
    def resolved_scaler(self) -> str:
        """``"torch"`` for amp-fp16 unless asked otherwise, ``"none"`` for fp32/amp-bf16."""
        if self.scaler == "auto":
            return "torch" if recipe(self.precision).scaler else "none"
        return self.scaler

    def as_arg(self) -> str:
        opts = [f"hook={self.hook}", f"reduce={self.reduce}", f"scaler={self.scaler}"]
        if self.outlier is not None:
            opts.append(f"outlier={self.outlier[0]}@{self.outlier[1]}")
        for key, at in (("crash", self.crash), ("hang", self.hang)):
            if at is not None:
                opts.append(f"{key}={at[0]}@{at[1]}")
        return f"{self.strategy}:{self.precision}:{','.join(opts)}"


def parse_run(text: str | RunSpec) -> RunSpec:
    """``"fsdp2:amp-bf16:reduce=bf16"`` -> ``RunSpec("fsdp2", "amp-bf16", reduce="bf16")``.

    Taught in course/13_distributed.ipynb.
    """
    if isinstance(text, RunSpec):
        return text
    if not isinstance(text, str):
        raise TypeError(f"a run is a string like 'ddp:amp-fp16', got {type(text).__name__}")
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(
            f"run {text!r}: use STRATEGY:PRECISION[:key=value,...], e.g. 'ddp:amp-fp16'"
        )
    strategy, precision = parts[0], parts[1]
    if strategy not in STRATEGIES:
        raise ValueError(f"run {text!r}: strategy must be one of {STRATEGIES}, got {strategy!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"run {text!r}: precision must be one of {PRECISIONS}, got {precision!r}")
    opts: dict = {}
    for item in parts[2].split(",") if len(parts) == 3 and parts[2] else []:
        key, _, value = item.partition("=")
        allowed = {"hook": COMM_HOOKS, "reduce": REDUCE_DTYPES, "scaler": SCALERS}
        if key in allowed:
            if value not in allowed[key]:
                raise ValueError(
                    f"run {text!r}: {key} must be one of {allowed[key]}, got {value!r}"
                )
            opts[key] = value
        elif key in ("outlier", "crash", "hang"):
            rank, _, step = value.partition("@")
            if not (rank.isdigit() and step.isdigit()):
                raise ValueError(f"run {text!r}: {key} must be RANK@STEP, e.g. 1@3, got {value!r}")
            opts[key] = (int(rank), int(step))
        else:
            raise ValueError(
                f"run {text!r}: unknown option {key!r}; options are hook, reduce, scaler, "
                "outlier, crash, hang"
            )
    return RunSpec(strategy, precision, **opts)


def validate(
    runs: Sequence[str | RunSpec], world_size: int, *, batch_size: int, steps: int
) -> list[RunSpec]:
    """Parse ``runs`` and refuse what cannot work, before any process starts.

    Refused: ``amp-fp16`` without a loss scaler (its gradients underflow), a scaler with
    ``fp32``/``amp-bf16`` (no scaling needed: BF16 has FP32's range), ``hook=`` with FSDP2
    (DDP-only) and ``reduce=`` with DDP (FSDP2-only), a global batch that the
    ranks cannot split evenly (``batch_size % world_size != 0``), an outlier on
    a rank or step that does not exist.

    Taught in course/13_distributed.ipynb.
    """
    for name, value in (("world_size", world_size), ("batch_size", batch_size), ("steps", steps)):
        positive_int(value, name)
    if batch_size % world_size:
        raise ValueError(
            f"global batch_size={batch_size} cannot be split evenly over {world_size} ranks: "
            f"use a multiple of {world_size} (each rank takes batch_size / world_size rows)"
        )
    if not runs or isinstance(runs, (str, RunSpec)):
        raise ValueError(
            f"runs must be a non-empty list of runs like ['ddp:amp-fp16'], got {runs!r}"
        )
    specs = [parse_run(r) for r in runs]
    for s in specs:
        needs_scaler = recipe(s.precision).scaler
        if needs_scaler and s.resolved_scaler == "none":
            raise ValueError(
                f"run {s.name}: {s.precision} needs loss scaling (its gradients underflow "
                "below 2^-24); "
                "use scaler=torch (torch.amp.GradScaler) or scaler=sharded (ShardedGradScaler)"
            )
        if not needs_scaler and s.resolved_scaler != "none":
            raise ValueError(
                f"run {s.name}: a loss scaler with {s.precision} does nothing useful "
                "(fp32 and bf16 have float32's exponent range); drop scaler="
            )
        if s.strategy == "fsdp2" and s.hook != "none":
            raise ValueError(
                f"run {s.name}: comm hooks are DDP's; with fsdp2 choose the gradient dtype "
                "with reduce=fp32|bf16 (MixedPrecisionPolicy.reduce_dtype)"
            )
        if s.strategy == "ddp" and s.reduce != "fp32":
            raise ValueError(
                f"run {s.name}: reduce= is FSDP2's reduce_dtype; with ddp compress the "
                "all-reduce with hook=fp16|bf16"
            )
        for key, at in (("outlier", s.outlier), ("crash", s.crash), ("hang", s.hang)):
            if at is not None and (at[0] >= world_size or at[1] >= steps):
                raise ValueError(
                    f"run {s.name}: {key}={at[0]}@{at[1]} needs rank < {world_size} "
                    f"and step < {steps}"
                )
    if len({s.name for s in specs}) != len(specs):
        raise ValueError(f"runs must be distinct, got {[s.name for s in specs]}")
    return specs


def backend_for(device: torch.device | str) -> str:
    """The one place that picks the collective backend: NCCL on CUDA, gloo on the CPU.

    Taught in course/13_distributed.ipynb.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return "nccl"
    if device.type == "cpu":
        return "gloo"
    raise ValueError(f"no collective backend for device {device}: use cpu (gloo) or cuda (nccl)")


def rank_device(local_rank: int) -> torch.device:
    """This rank's device: ``cuda:<local_rank>`` when :func:`~mpcourse.device.pick_device`
    picks CUDA, else the CPU.

    Taught in course/13_distributed.ipynb.
    """
    device = pick_device()
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


# -- the memory ledger per rank ------------------------------------------------------------


def shard_rows(rows: int, world_size: int, rank: int) -> tuple[int, int]:
    """``(stored, real)`` rows of a parameter's dim 0 on ``rank`` under FSDP2.

    FSDP2 shards dim 0 like ``torch.chunk``: chunks of ``c = ceil(rows / N)`` rows,
    rank ``r`` gets rows ``[r c, min((r + 1) c, rows))`` (``real``, maybe 0), but every
    rank *stores* ``c`` rows (its shard is padded so all-gather sees equal sizes).

    Taught in course/13_distributed.ipynb.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    chunk = -(-rows // world_size)
    return chunk, max(0, min(chunk, rows - rank * chunk))


def rank_ledger(
    shapes: Sequence[Sequence[int]],
    strategy: str,
    precision: str,
    optimizer: str = "adam",
    *,
    world_size: int = 1,
    rank: int = 0,
) -> dict[str, int]:
    """Bytes that ``rank`` holds for a model whose parameters have ``shapes``.

    DDP: every rank holds chapter 04's ledger (:func:`mpcourse.master.ledger`, recipe
    ``"fp32"`` or ``"amp"``) for *all* ``n`` parameters: FP32 weights ``4n``, FP32 grads
    ``4n`` (DDP's bucket, when ``gradient_as_bucket_view=True``), optimizer states
    ``4kn`` (``k = 2`` for Adam), plus autocast's transient FP16/BF16 weight copies ``2n``.
    FSDP2 (ZeRO-3 style): weights, grads and optimizer states are sharded, so rank ``r``
    holds ``4 s_p + 4 s_p + 4 k s`` where ``s`` counts its real shard elements and ``s_p``
    its stored ones: weights and reduce-scattered grads live in padded buffers of
    ``ceil(rows / N)`` rows (:func:`shard_rows`, measured on 3 ranks), the optimizer's
    states only cover the real rows. The gathered BF16/FP16 compute copies are transient
    (one layer at a time). Keys ending in ``(transient)`` are not held between steps.

    Taught in course/13_distributed.ipynb.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    low = precision.removeprefix("amp-")  # the compute dtype's short name: fp16, bf16
    base = master.ledger("fp32" if precision == "fp32" else "amp", optimizer)
    n = sum(_numel(s) for s in shapes)
    if strategy == "ddp":
        out = {k: v * n for k, v in base.items() if k != "autocast weight copies fp16"}
        if precision != "fp32":
            out[f"autocast weight copies {low} (transient)"] = 2 * n
        return out
    stored = real = 0
    for shape in shapes:
        rest = _numel(shape[1:])
        padded, rows = shard_rows(shape[0], world_size, rank)
        stored, real = stored + padded * rest, real + rows * rest
    out = {
        "weights fp32": 4 * stored,
        "grads fp32": 4 * stored,
        "optimizer states fp32": base["optimizer states fp32"] * real,
    }
    if precision != "fp32":
        out[f"gathered compute copies {low} (transient)"] = 2 * n
    return out


def _numel(shape: Sequence[int]) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


# -- model, data and the single-process reference -------------------------------------------


def make_model(seed: int = 0) -> MLP:
    """The chapter's model, ``MLP(64 -> 31 -> 10)``, initialised from ``seed`` (same on all ranks).

    Taught in course/13_distributed.ipynb.
    """
    torch.manual_seed(seed)
    return MLP(64, HIDDEN, 10)


def global_batch(
    dataset: TensorDataset, step: int, batch_size: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of optimizer step ``step``: epoch ``e`` shuffles with seed ``seed + e``
    and is cut into ``len // batch_size`` full batches (the remainder is dropped).

    Taught in course/13_distributed.ipynb.
    """
    n = len(dataset)
    per_epoch = n // batch_size
    epoch, i = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    idx = order[i * batch_size : (i + 1) * batch_size]
    x, y = dataset.tensors
    return x[idx], y[idx]


def local_batch(
    x: torch.Tensor, y: torch.Tensor, rank: int, world_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``r``'s rows of a global batch: ``[r B/N, (r + 1) B/N)``; concatenated over the
    ranks they are the global batch again.

    Taught in course/13_distributed.ipynb.
    """
    b = len(x) // world_size
    return x[rank * b : (rank + 1) * b], y[rank * b : (rank + 1) * b]


def train_single(
    precision: str = "fp32", *, steps: int = 40, batch_size: int = 64, seed: int = 0
) -> tuple[dict[str, torch.Tensor], list[float], float]:
    """One process, whole global batches: the reference a DDP run must match.

    Same model, optimizer (Adam, lr 0.01), batches and loop (:mod:`mpcourse.train`)
    as a rank of :mod:`mpcourse.distributed.worker`. Returns the final state dict,
    the loss per step and the test accuracy. It calls :mod:`mpcourse.train`'s
    ``backward`` and ``optimizer_step`` rather than ``train()``: its batches are
    :func:`global_batch`'s, indexed by step, so that rank ``r``'s rows of step ``t``
    are exactly :func:`local_batch` of the same batch.

    Taught in course/13_distributed.ipynb.
    """
    data, test = digits("train"), digits("test")
    model = make_model(seed)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    scaler = make_scaler(precision, "cpu")
    losses = []
    for step in range(steps):
        x, y = global_batch(data, step, batch_size, seed)
        with autocast(precision, "cpu"):
            loss = F.cross_entropy(model(x), y)
        backward(loss, scaler)
        optimizer_step(opt, scaler)
        losses.append(loss.item())
    with torch.no_grad(), autocast(precision, "cpu"):
        acc = (model(test.tensors[0]).argmax(1) == test.tensors[1]).float().mean().item()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses, acc
