"""The rank side of :mod:`mpcourse.distributed`: what each ``torchrun`` process does.

Per run, every rank builds the same seeded model, wraps it (DDP or FSDP2 with a
``MixedPrecisionPolicy``), trains on its rows of each global batch with the loop
of :mod:`mpcourse.train` (autocast, ``GradScaler``, ``optimizer_step``) and writes
``rank<r>.json``:

* per step: the local loss, the scale used, whether the step was skipped and
  whether this rank's *own* gradients held inf/NaN before they were combined with
  the other ranks' (DDP: seen by a comm hook before the all-reduce; FSDP2: the
  rank's shard after the reduce-scatter);
* the bytes this rank really holds (weights, grads, optimizer states, measured from
  tensor storages) next to :func:`mpcourse.distributed.runs.rank_ledger`;
* for ``hook=``/``reduce=`` runs: the error the low-precision reduction adds to the
  averaged gradient, measured against a twin model reduced in FP32 on the same batch,
  and the bytes handed to the collectives by both;
* for FSDP2: the dtypes seen (sharded parameters, gathered compute copies, output),
  and, with FP16, a probe of which scalers agree on inf found in one rank's shard.

Taught in course/13_distributed.ipynb.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import TensorDataset

from ..data import digits
from ..master import tensor_bytes
from ..precision import autocast, recipe
from ..scaling import found_inf
from ..train import backward, optimizer_step
from .runs import (
    DATA_FILE,
    LR,
    RunSpec,
    backend_for,
    global_batch,
    local_batch,
    make_model,
    rank_device,
    rank_ledger,
)

__all__ = ["run_all", "run_one", "count_collectives"]

_HOOKS = {"fp16": default_hooks.fp16_compress_hook, "bf16": default_hooks.bf16_compress_hook}
OUTLIER = 1000.0


def run_all(specs: list[RunSpec], out: Path, steps: int, batch_size: int, seed: int) -> None:
    """Join the process group, do every run, always leave the group."""
    rank = int(os.environ["RANK"])
    device = rank_device(int(os.environ.get("LOCAL_RANK", "0")))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"pid-rank{rank}").write_text(str(os.getpid()))
    torch.set_num_threads(1)
    # GradScaler's found-inf flag has shape (1,): DTensor replicates it and says so, once per
    # unscale_. Known and harmless; silenced here, at its source, for the FSDP2 runs.
    warnings.filterwarnings("ignore", message="Found a non-scalar tensor with numel=1")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    cache = out / DATA_FILE  # written by launch(): spares each rank importing scikit-learn
    if cache.exists():
        loaded = torch.load(cache, weights_only=True)
        data, test = TensorDataset(*loaded["train"]), TensorDataset(*loaded["test"])
    else:
        data, test = digits("train"), digits("test")
    dist.init_process_group(backend_for(device))
    try:
        for spec in specs:
            result, state = run_one(spec, device, data, test, steps, batch_size, seed)
            folder = out / spec.name
            folder.mkdir(exist_ok=True)
            (folder / f"rank{rank}.json").write_text(json.dumps(result, indent=1))
            if rank == 0:
                torch.save(state, folder / "model.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def count_collectives() -> Iterator[dict[str, int]]:
    """Count the bytes handed to ``torch.distributed`` collectives, per collective name.

    Wraps ``all_reduce`` (DDP's Python comm hooks call it), ``reduce_scatter_single`` and
    ``all_gather_single`` (FSDP2's default communication) for the duration of the block.
    """
    counts: dict[str, int] = {}
    names = ("all_reduce", "reduce_scatter_single", "all_gather_single")
    saved = {n: getattr(dist, n) for n in names}

    def wrap(name: str):  # noqa: ANN202
        def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            key, pos = {"all_reduce": ("tensor", 0), "reduce_scatter_single": ("input", 1)}.get(
                name, ("input_tensor", 1)
            )
            t = kwargs[key] if key in kwargs else args[pos]
            counts[name] = counts.get(name, 0) + t.numel() * t.element_size()
            return saved[name](*args, **kwargs)

        return counted

    for n in names:
        setattr(dist, n, wrap(n))
    try:
        yield counts
    finally:
        for n in names:
            setattr(dist, n, saved[n])


def _recording_hook(inner, flags: list[bool]):  # noqa: ANN001, ANN202
    """A DDP comm hook that notes whether this rank's bucket holds inf/NaN *before* the
    all-reduce, then calls ``inner`` (PyTorch's hook). DDP refuses ``bf16_compress_hook``
    by name unless CUDA + NCCL >= 2.10; gloo all-reduces bfloat16, so it runs here."""

    def comm_hook(state, bucket):  # noqa: ANN001, ANN202 - DDP compares real annotations
        flags.append(not bool(torch.isfinite(bucket.buffer()).all()))
        return inner(state, bucket)

    return comm_hook


def _wrap(model: nn.Module, spec: RunSpec, device: torch.device, flags: list[bool]) -> nn.Module:
    if spec.strategy == "ddp":
        ddp = DDP(model, device_ids=[device] if device.type == "cuda" else None,
                  gradient_as_bucket_view=True)  # fmt: skip
        inner = _HOOKS[spec.hook] if spec.hook != "none" else default_hooks.allreduce_hook
        ddp.register_comm_hook(None, _recording_hook(inner, flags))
        return ddp
    r = recipe(spec.precision)
    low = r.compute_dtype if r.autocast else None  # FSDP2's param_dtype: its compute copies
    policy = MixedPrecisionPolicy(
        param_dtype=low,
        reduce_dtype=torch.float32 if spec.reduce == "fp32" else torch.bfloat16,
        output_dtype=torch.float32 if low is not None else None,
    )
    for layer in model.layers:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mp_policy=policy)
    return fully_shard(model, mp_policy=policy)


def _forward_loss(net: nn.Module, spec: RunSpec, x: torch.Tensor, y: torch.Tensor):  # noqa: ANN202
    precision = spec.precision if spec.strategy == "ddp" else "fp32"  # FSDP2: the policy casts
    with autocast(precision, x.device):
        logits = net(x)
        return logits, F.cross_entropy(logits, y)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def reduction_error(
    spec: RunSpec, base: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> dict:
    """Gradient of one batch reduced as ``spec`` says vs reduced in FP32 (twin model)."""
    ref_spec = RunSpec(spec.strategy, spec.precision)  # hook none / reduce fp32
    grads, sent = [], []
    for s in (ref_spec, spec):
        net = _wrap(copy.deepcopy(base), s, device, [])
        with count_collectives() as counts:
            _forward_loss(net, s, x, y)[1].backward()
        grads.append(torch.cat([_local(p.grad).float().flatten() for p in net.parameters()]))
        sent.append(counts.get("all_reduce", 0) + counts.get("reduce_scatter_single", 0))
    ref, got = grads
    return {
        "rel_error": ((got - ref).norm() / ref.norm()).item(),
        "max_abs_error": (got - ref).abs().max().item(),
        "bytes_fp32": sent[0],
        "bytes_low": sent[1],
    }


def scaler_probe(model: nn.Module, device: torch.device) -> dict:
    """Put inf in rank 1's shard only; which scalers find it on every rank?"""
    rank = dist.get_rank()
    params = [p for p in model.parameters()]
    out = {}
    for name in ("torch.amp.GradScaler", "ShardedGradScaler", "GradScaler on plain shards"):
        scaler_cls = ShardedGradScaler if name == "ShardedGradScaler" else torch.amp.GradScaler
        scaler = scaler_cls(device.type, init_scale=4.0)
        scaler.scale(torch.ones((), device=device))
        if name.endswith("plain shards"):
            plain = [p.to_local().detach().clone().requires_grad_(True) for p in params]
            for p in plain:
                p.grad = torch.zeros_like(p)
            opt = torch.optim.SGD(plain, lr=0.0)
            grads = [p.grad for p in plain]
        else:
            for p in params:
                p.grad = torch.zeros_like(p)
            opt = torch.optim.SGD(params, lr=0.0)
            grads = [_local(p.grad) for p in params]
        if rank == 1:
            grads[0].view(-1)[0] = float("inf")
        scaler.unscale_(opt)
        out[name] = found_inf(scaler, opt)
    for p in params:
        p.grad = None
    return out


def run_one(
    spec: RunSpec,
    device: torch.device,
    data: TensorDataset,
    test: TensorDataset,
    steps: int,
    batch_size: int,
    seed: int,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Train one run on this rank; return its result record and the full final state dict.

    The step is :mod:`mpcourse.train`'s (``backward``, ``optimizer_step``) on the
    wrapped model; what differs from ``train()`` is what a rank must record around
    it: its own non-finite gradients before the collective, the bytes it holds,
    the dtypes FSDP2 gathers, and the injected faults (outlier, crash, hang).
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    model = make_model(seed).to(device)
    shapes = [list(p.shape) for p in model.parameters()]
    n_params = sum(p.numel() for p in model.parameters())
    base = copy.deepcopy(model)
    flags: list[bool] = []
    net = _wrap(model, spec, device, flags)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    scaler_cls = ShardedGradScaler if spec.resolved_scaler == "sharded" else torch.amp.GradScaler
    scaler = scaler_cls(device.type, enabled=spec.resolved_scaler != "none")
    rec: dict = {"run": spec.name, "spec": spec.as_arg(), "rank": rank, "world_size": world}
    rec.update(backend=backend_for(device), device=device.type, n_params=n_params, shapes=shapes)
    log = {k: [] for k in ("loss", "scale", "skipped", "local_nonfinite")}
    if spec.hook != "none" or spec.reduce != "fp32":
        x0, y0 = local_batch(*global_batch(data, 0, batch_size, seed), rank, world)
        rec["reduction"] = reduction_error(spec, base, x0.to(device), y0.to(device), device)
    seen: dict = {}
    if spec.strategy == "fsdp2":

        def note_dtype(module: nn.Module, args: tuple) -> None:  # the gathered compute copy
            seen.setdefault("compute_param", f"{type(module.weight).__name__} "
                            f"{str(module.weight.dtype)[6:]}")  # fmt: skip

        net.layers[0].register_forward_pre_hook(note_dtype)
    held: dict = {}
    for step in range(steps):
        x, y = local_batch(*global_batch(data, step, batch_size, seed), rank, world)
        x, y = x.to(device), y.to(device)
        if spec.crash == (rank, step):
            os.kill(os.getpid(), signal.SIGKILL)
        while spec.hang == (rank, step):  # until someone kills this rank
            time.sleep(0.1)
        if spec.outlier == (rank, step):
            x = x * OUTLIER
        before = len(flags)
        logits, loss = _forward_loss(net, spec, x, y)
        backward(loss, scaler)
        if spec.strategy == "ddp":
            local_bad = any(flags[before:])
        else:
            local_bad = not all(
                bool(torch.isfinite(_local(p.grad)).all()) for p in net.parameters()
            )
        if step == steps - 1:
            params = [_local(p) for p in net.parameters()]
            held["weights fp32"] = tensor_bytes(params)
            held["grads fp32"] = tensor_bytes(_local(p.grad) for p in net.parameters())
        log["scale"].append(scaler.get_scale() if scaler.is_enabled() else 1.0)
        log["skipped"].append(optimizer_step(opt, scaler))
        log["loss"].append(loss.item())
        log["local_nonfinite"].append(local_bad)
    states = [_local(t) for s in opt.state.values() for k, t in s.items() if k != "step"]
    held["optimizer states fp32"] = tensor_bytes(states)
    rec["log"] = log
    rec["bytes_held"] = held
    rec["ledger"] = rank_ledger(shapes, spec.strategy, spec.precision, "adam", world_size=world,
                                rank=rank)  # fmt: skip
    if spec.strategy == "fsdp2":
        p0 = next(net.parameters())
        seen.update(sharded_param=f"{type(p0).__name__} {str(p0.dtype)[6:]}")
        seen.update(local_shape=list(_local(p0).shape), output_dtype=str(logits.dtype)[6:])
        rec["fsdp2"] = seen
        if recipe(spec.precision).scaler:
            rec["scaler_probe"] = scaler_probe(net, device)
    tx, ty = test.tensors
    with torch.no_grad():
        logits = _forward_loss(net, spec, tx.to(device), ty.to(device))[0]
    rec["test_accuracy"] = (logits.argmax(1).cpu() == ty).float().mean().item()
    inner = net.module if isinstance(net, DDP) else net
    state = {
        k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu().clone()
        for k, v in inner.state_dict().items()
    }
    return rec, state
