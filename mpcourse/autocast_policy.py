"""Autocast's op policy, probed from the installed PyTorch on CPU and CUDA.

Each op is run under autocast with float32, low-precision and mixed inputs;
:func:`~mpcourse.autocast.trace_dtypes` shows what the kernel received, and
the op is classified:

* **lower**: float32 inputs are cast down, $y = op(\\mathrm{cast}_d(x))$ with
  $d$ = float16 or bfloat16 (matmuls, convolutions);
* **fp32**: low-precision inputs are cast up, $y = op(\\mathrm{cast}_{32}(x))$
  (losses; on CUDA also ``exp``, ``softmax``, ``sum``, norms);
* **promote**: a mixed call casts its inputs to the widest dtype;
* **unlisted**: nothing is cast; the op runs in its inputs' dtype;
* **refused**: autocast raises (``binary_cross_entropy`` on CUDA).

On a machine without a GPU the CUDA policy is probed too, by running torch's
real ``AutocastCUDA`` kernels on *fake* CUDA tensors (shapes and dtypes only,
no data, no GPU): :func:`fake_cuda_autocast`.

Taught in course/06_autocast.ipynb.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .autocast import OpRecord, short_dtype, trace_dtypes

__all__ = [
    "CATEGORIES",
    "EXERCISE_OPS",
    "PROBES",
    "TABLE_OPS",
    "PolicyRow",
    "autocast_policy",
    "compare_policies",
    "fake_cuda_autocast",
    "format_policy",
    "to_fake_device",
]


@contextlib.contextmanager
def fake_cuda_autocast(
    dtype: torch.dtype = torch.float16, enabled: bool = True
) -> Iterator[torch.device]:
    """Run torch's real CUDA autocast kernels without a GPU, on fake tensors.

    Inside the block a ``FakeTensorMode`` is active (tensors carry shape, dtype
    and device but no data) and CUDA autocast is switched on directly, so
    ``AutocastCUDA`` applies exactly the casts it applies on a GPU. Yields the
    CUDA device to create tensors/models on. Values are meaningless; dtypes
    and errors are real. On a machine with a GPU, use ``torch.autocast``.

    Taught in course/06_autocast.ipynb.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"CUDA autocast lowers to torch.float16 or torch.bfloat16, not {dtype}")
    prev_enabled = torch.is_autocast_enabled("cuda")
    prev_dtype = torch.get_autocast_dtype("cuda")
    with FakeTensorMode(allow_non_fake_inputs=True):
        torch.set_autocast_enabled("cuda", enabled)
        torch.set_autocast_dtype("cuda", dtype)
        torch.autocast_increment_nesting()
        try:
            yield torch.device("cuda")
        finally:
            if torch.autocast_decrement_nesting() == 0:
                torch.clear_autocast_cache()
            torch.set_autocast_enabled("cuda", prev_enabled)
            torch.set_autocast_dtype("cuda", prev_dtype)


def to_fake_device(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move ``module`` in place onto ``device`` as fake tensors (inside :func:`fake_cuda_autocast`).

    Each parameter and buffer is replaced by an uninitialised tensor of the same
    shape and dtype on ``device``: only dtypes and shapes matter there. The
    parameters do not require grad: autograd cannot set up gradient
    accumulation for a CUDA device in a build without CUDA, so only forward
    passes can be traced this way.

    Taught in course/06_autocast.ipynb.
    """
    from torch._subclasses.fake_tensor import FakeTensor

    probe = torch.empty(0, device=device)
    if not isinstance(probe, FakeTensor):
        raise RuntimeError(
            "to_fake_device must be called inside `with fake_cuda_autocast() as dev:`"
        )
    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            fake = torch.empty_like(p, device=device)
            setattr(sub, name, torch.nn.Parameter(fake, requires_grad=False))
        for name, b in list(sub.named_buffers(recurse=False)):  # setattr keeps persistence
            setattr(sub, name, torch.empty_like(b, device=device))
    return module


# ---------------------------------------------------------------- op policy
def _target(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)


#: name -> (input shapes, call). Each probe gets floating tensors of those shapes.
PROBES: dict[str, tuple[tuple[tuple[int, ...], ...], Callable[..., torch.Tensor]]] = {
    "mm": (((4, 4), (4, 4)), torch.mm),
    "linear": (((2, 4), (3, 4)), F.linear),
    "conv2d": (((1, 3, 8, 8), (6, 3, 5, 5)), F.conv2d),
    "bmm": (((2, 4, 4), (2, 4, 4)), torch.bmm),
    "relu": (((4, 4),), F.relu),
    "max_pool2d": (((1, 1, 4, 4),), lambda x: F.max_pool2d(x, 2)),
    "add": (((4, 4), (4, 4)), torch.add),
    "exp": (((4, 4),), torch.exp),
    "sum": (((4, 4),), torch.sum),
    "softmax": (((4, 4),), lambda x: torch.softmax(x, -1)),
    "layer_norm": (((4, 4),), lambda x: F.layer_norm(x, (4,))),
    "batch_norm": (((4, 4),), lambda x: F.batch_norm(x, None, None, training=True)),
    "cdist": (((4, 4), (4, 4)), torch.cdist),
    "mse_loss": (((4, 4), (4, 4)), F.mse_loss),
    "cross_entropy": (((4, 4),), lambda x: F.cross_entropy(x, _target(x))),
    "binary_cross_entropy": (
        ((4, 4), (4, 4)),
        lambda x, t: F.binary_cross_entropy(torch.sigmoid(x), torch.sigmoid(t)),
    ),
    "binary_cross_entropy_with_logits": (((4, 4), (4, 4)), F.binary_cross_entropy_with_logits),
    "cat": (((4, 4), (4, 4)), lambda a, b: torch.cat([a, b])),
    "stack": (((4, 4), (4, 4)), lambda a, b: torch.stack([a, b])),
    "addcmul": (((4,), (4,), (4,)), torch.addcmul),
    # EXERCISE_OPS:
    "matmul": (((4, 4), (4, 4)), torch.matmul),
    "gelu": (((4, 4),), F.gelu),
    "smooth_l1_loss": (((4, 4), (4, 4)), F.smooth_l1_loss),
    "log_softmax": (((4, 4),), lambda x: torch.log_softmax(x, -1)),
}

#: Left out of the chapter's table: exercise 1 asks for their CUDA category.
EXERCISE_OPS = ("matmul", "gelu", "smooth_l1_loss", "log_softmax")
#: The ops of the policy table in course/06_autocast.ipynb.
TABLE_OPS = tuple(op for op in PROBES if op not in EXERCISE_OPS)

CATEGORIES = ("lower", "fp32", "promote", "unlisted", "refused")


@dataclass(frozen=True)
class PolicyRow:
    """How autocast treated one op: ``category`` is one of ``CATEGORIES``.

    ``dtype`` is the output dtype for float32 inputs (None when refused);
    ``note`` says what was observed. Taught in course/06_autocast.ipynb.
    """

    op: str
    category: str
    dtype: torch.dtype | None
    note: str = ""


def _probe(name: str, device: torch.device, low: torch.dtype, autocast: Callable) -> PolicyRow:
    shapes, call = PROBES[name]

    def make(dtypes: Sequence[torch.dtype]) -> list[torch.Tensor]:
        return [torch.rand(s, device=device).to(d) for s, d in zip(shapes, dtypes, strict=True)]

    def run(dtypes: Sequence[torch.dtype]) -> list[OpRecord]:
        inputs = make(dtypes)

        def body() -> torch.Tensor:
            with autocast():
                return call(*inputs)

        return trace_dtypes(body)

    try:
        out32 = run([torch.float32] * len(shapes))
    except RuntimeError as err:
        return PolicyRow(name, "refused", None, str(err).splitlines()[0])
    dtype32 = out32[-1].output_dtypes[0]
    if dtype32 == low:
        return PolicyRow(name, "lower", dtype32, f"f32 inputs cast to {short_dtype(low)}")
    if run([low] * len(shapes))[-1].output_dtypes[0] == torch.float32:
        return PolicyRow(name, "fp32", dtype32, f"{short_dtype(low)} inputs run in f32")
    if len(shapes) > 1:
        mixed = run([torch.float32] + [low] * (len(shapes) - 1))
        if any(r.is_cast and r.output_dtypes[0] == torch.float32 for r in mixed):
            return PolicyRow(name, "promote", dtype32, "mixed inputs cast to the widest")
    return PolicyRow(name, "unlisted", dtype32, "runs in its inputs' dtype")


def autocast_policy(
    device_type: str = "cpu", dtype: torch.dtype | None = None, ops: Sequence[str] | None = None
) -> list[PolicyRow]:
    """Probe autocast's policy for each op in ``ops`` (default: all of ``PROBES``).

    Each op runs under autocast three ways (float32 inputs, low-precision
    inputs, mixed) and is classified by what the kernels received:
    float32 inputs came out low -> ``lower``; low inputs came out float32 ->
    ``fp32``; a narrow input was cast up -> ``promote``; an error -> ``refused``;
    otherwise ``unlisted``. ``device_type="cuda"`` uses a real GPU when there
    is one and :func:`fake_cuda_autocast` otherwise. ``dtype`` defaults to
    bfloat16 on CPU and float16 on CUDA.

    Taught in course/06_autocast.ipynb.
    """
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"device_type must be 'cpu' or 'cuda', got {device_type!r}")
    low = dtype or (torch.float16 if device_type == "cuda" else torch.bfloat16)
    if low not in (torch.float16, torch.bfloat16):
        raise ValueError(f"autocast lowers to torch.float16 or torch.bfloat16, not {low}")
    names = list(PROBES) if ops is None else list(ops)
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        raise ValueError(f"no probe for {unknown}; known ops: {', '.join(PROBES)}")
    if device_type == "cpu" or torch.cuda.is_available():
        device = torch.device(device_type)
        return [
            _probe(n, device, low, lambda: torch.autocast(device.type, dtype=low)) for n in names
        ]
    rows = []
    for n in names:
        with fake_cuda_autocast(low) as device:
            rows.append(_probe(n, device, low, contextlib.nullcontext))
    return rows


def compare_policies(ops: Sequence[str] = TABLE_OPS) -> dict[str, list[PolicyRow]]:
    """The policy on CPU (bfloat16 and float16) and on CUDA (float16), probed op by op.

    ``ops`` defaults to the chapter's table (:data:`TABLE_OPS`). CUDA is probed
    on the GPU when there is one, else with :func:`fake_cuda_autocast`.

    Taught in course/06_autocast.ipynb.
    """
    return {
        "CPU bf16": autocast_policy("cpu", torch.bfloat16, ops),
        "CPU f16": autocast_policy("cpu", torch.float16, ops),
        "CUDA f16": autocast_policy("cuda", torch.float16, ops),
    }


def format_policy(columns: dict[str, Sequence[PolicyRow]]) -> str:
    """Side-by-side table: one row per op, one column per policy (e.g. CPU, CUDA).

    A cell is the category; ``lower`` also names the dtype it lowers to.

    Taught in course/06_autocast.ipynb.
    """
    heads = list(columns)
    by_op = {h: {r.op: r for r in rows} for h, rows in columns.items()}
    ops = list(dict.fromkeys(r.op for rows in columns.values() for r in rows))
    width = max(len(o) for o in ops)
    lines = [f"{'op':<{width}}  " + "  ".join(f"{h:<16}" for h in heads)]
    for op in ops:
        cells = []
        for h in heads:
            r = by_op[h].get(op)
            if r is None:
                cells.append("-")
            elif r.category == "lower" and r.dtype is not None:
                cells.append(f"lower ({short_dtype(r.dtype)})")
            else:
                cells.append(r.category)
        lines.append(f"{op:<{width}}  " + "  ".join(f"{c:<16}" for c in cells))
    return "\n".join(lines)
