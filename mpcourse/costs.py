"""What a training step costs, counted rather than timed: FLOPs, operators, bytes.

Counts are the same on every run and every machine, so they can be asserted;
timings (:mod:`mpcourse.bench`) cannot.

* :func:`arithmetic_intensity`: FLOPs per byte moved by a matmul, which
  decides whether it is limited by arithmetic or by memory traffic.
* :func:`pad_to_multiple`: matmul dimensions that suit tensor cores.
* :func:`saved_activation_bytes`: the bytes autograd keeps for backward (what
  autocast shrinks), in total and per dtype.
* :class:`LiveTensorBytes`: the peak of the bytes held by live tensors while
  a block runs (a training step's peak memory, measured on any device).
* :func:`step_profile`: FLOPs and operators dispatched by one training step.
* :class:`WideMLP`: the matmul-heavy model the benchmark compares with the
  seed's small CNN.

Taught in course/09_speed_and_memory.ipynb.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.flop_counter import FlopCounterMode

from .models import SimpleModel

__all__ = [
    "MODELS",
    "WideMLP",
    "LiveTensorBytes",
    "arithmetic_intensity",
    "launches_kernel",
    "pad_to_multiple",
    "saved_activation_bytes",
    "step_profile",
]

MODELS = ("simple", "mlp")


class WideMLP(nn.Module):
    """A matmul-heavy residual MLP (the feed-forward half of a transformer).

    ``h <- h + W_2 gelu(W_1 h)`` for ``depth`` blocks with $W_1$:
    ``dim -> expansion*dim`` and $W_2$ back, then a linear head to
    ``num_classes``. Almost all its FLOPs are large matmuls.

    Taught in course/09_speed_and_memory.ipynb.
    """

    def __init__(self, dim: int = 512, depth: int = 2, expansion: int = 4, num_classes: int = 10):
        super().__init__()
        for name, v in (("dim", dim), ("depth", depth), ("expansion", expansion)):
            _positive_int(v, f"WideMLP: {name}")
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Linear(dim, expansion * dim), nn.GELU(), nn.Linear(expansion * dim, dim)
            )
            for _ in range(depth)
        )
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return value


def _check_model(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose from {', '.join(MODELS)}")


def arithmetic_intensity(m: int, k: int, n: int, bytes_per_element: int) -> float:
    """FLOPs per byte moved for an ``(m x k) @ (k x n)`` matmul.

    $I = 2mkn / (b (mk + kn + mn))$: each input read once, the output written
    once. A kernel is memory-bound when $I$ is below the machine's
    FLOP/s-to-bandwidth ratio, and then lower precision helps only by moving
    fewer bytes.

    Taught in course/09_speed_and_memory.ipynb.
    """
    m, k, n = (_positive_int(v, name) for v, name in ((m, "m"), (k, "k"), (n, "n")))
    b = _positive_int(bytes_per_element, "bytes_per_element")
    return 2 * m * k * n / (b * (m * k + k * n + m * n))


def pad_to_multiple(size: int, multiple: int = 8) -> int:
    """The smallest multiple of ``multiple`` that is $\\geq$ ``size``: $\\lceil s/m \\rceil m$.

    Tensor cores want matmul dimensions that are multiples of 8 (FP16/BF16)
    or 16 (FP8), i.e. 16-byte aligned rows; e.g. a vocabulary of 50257 is
    padded to 50304 (a multiple of 64).

    Taught in course/09_speed_and_memory.ipynb.
    """
    size, multiple = _positive_int(size, "size"), _positive_int(multiple, "multiple")
    return -(-size // multiple) * multiple


@contextlib.contextmanager
def saved_activation_bytes(model: nn.Module) -> Iterator[dict[str, Any]]:
    """Count the bytes autograd saves for backward inside the block.

    ``out["bytes"]`` is the total and ``out["by_dtype"]`` maps a dtype name
    (``"float32"``, ``"bfloat16"``, ``"int64"``, ...) to its bytes. Each
    storage is counted once; the parameters themselves are excluded (they
    exist anyway), but low-precision copies of them made by autocast count,
    since they are extra memory.

    Taught in course/09_speed_and_memory.ipynb.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"saved_activation_bytes needs an nn.Module, got {type(model).__name__}")
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    out: dict[str, Any] = {"bytes": 0, "by_dtype": {}}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            name = str(t.dtype).removeprefix("torch.")
            out["bytes"] += storage.nbytes()
            out["by_dtype"][name] = out["by_dtype"].get(name, 0) + storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield out


class LiveTensorBytes(TorchDispatchMode):
    """The peak of the bytes held by live tensors while the block runs.

    $\\mathrm{peak} = \\max_t \\sum_{s \\text{ alive at } t} \\mathrm{nbytes}(s)$
    over the storages of ``tensors`` (what exists before the block: parameters,
    inputs, optimizer state) and of every tensor an operation creates inside
    the block, checked after each operation, each storage counted once (views
    share their base's). ``start`` is the bytes of ``tensors``, ``now`` the
    bytes alive at the end. It counts tensors, not the allocator: CUDA's
    ``max_memory_allocated`` adds block rounding and library workspaces, and
    the CPU has no such counter at all, which is why this one exists.

    Taught in course/09_speed_and_memory.ipynb.
    """

    def __init__(self, tensors: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.now = 0
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"LiveTensorBytes tracks tensors, got {type(t).__name__}")
            self._track(t)
        self.start = self.peak = self.now

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        if storage.device.type == "meta":
            return
        ref = StorageWeakRef(storage)
        if ref.cdata not in self._live:
            self._live[ref.cdata] = (ref, storage.nbytes())
            self.now += storage.nbytes()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for key, (ref, nbytes) in list(self._live.items()):
            if ref.expired():  # freed since the last operation
                del self._live[key]
                self.now -= nbytes
        tree_map_only(torch.Tensor, self._track, out)
        self.peak = max(self.peak, self.now)
        return out


_NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


def launches_kernel(func: torch._ops.OpOverload) -> bool:
    """Whether an aten op does work on the device (launches at least one GPU kernel).

    Not counted: views and aliases (``view``, ``t``, ``transpose``, ``detach``,
    ``expand``...: their outputs share the input's memory, only metadata
    changes), bare allocations (``empty*``: memory from the caching allocator,
    no kernel) and ops outside the ``aten`` namespace (profiler markers).

    Taught in course/09_speed_and_memory.ipynb.
    """
    if func.namespace != "aten" or func._schema.name.split("::")[-1] in _NO_KERNEL:
        return False
    aliased = [r.alias_info for r in func._schema.returns if r.alias_info is not None]
    return not aliased or any(info.is_write for info in aliased)  # in-place ops do work


class _OpCounter(TorchDispatchMode):
    """Counts the aten operations dispatched, and those that launch a kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.kernels = 0
        self.skipped: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.count += 1
        if launches_kernel(func):
            self.kernels += 1
        else:
            name = str(func.overloadpacket)
            self.skipped[name] = self.skipped.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def step_profile(
    model_name: str, batch: int = 64, dim: int = 512, depth: int = 2
) -> dict[str, int]:
    """FLOPs and operator count of one FP32 SGD step (forward, backward, update).

    FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and
    convolutions, $2mkn$ each); ``ops`` counts the aten operations that launch
    a kernel (:func:`launches_kernel`), a lower bound on the kernels a GPU would
    launch for the step; ``dispatched`` counts every aten operation, views and
    allocations included. The step runs on the ``meta`` device (shapes only, no
    arithmetic), so any size is instant.

    Taught in course/09_speed_and_memory.ipynb.
    """
    _check_model(model_name)
    _positive_int(batch, "batch")
    with torch.device("meta"):
        if model_name == "simple":
            model: nn.Module = SimpleModel()
            x = torch.empty(batch, 3, 32, 32)
        else:
            model = WideMLP(dim, depth)
            x = torch.empty(batch, dim)
        y = torch.zeros(batch, dtype=torch.long)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, foreach=False)
    flops, ops = FlopCounterMode(display=False), _OpCounter()
    with flops, ops:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    params = sum(p.numel() for p in model.parameters())
    return {
        "flops": int(flops.get_total_flops()),
        "ops": ops.kernels,
        "dispatched": ops.count,
        "params": params,
    }
