"""What ``torch.autocast`` really does, op by op: dtype traces.

Autocast is a dispatcher layer: before an op runs, an ``Autocast<device>`` kernel
looks the op up in a per-device list and casts its floating-point inputs:

* **lower**: matmul-like ops (``mm``, ``addmm``, ``conv2d``, ``bmm``, ...) run
  in the low dtype ``d`` (float16 or bfloat16): $y = op(\\mathrm{cast}_d(x))$;
* **fp32**: ops that lose accuracy in 16 bits (losses, ``exp``/``log`` on CUDA,
  ...) run in float32: $y = op(\\mathrm{cast}_{32}(x))$;
* **promote**: ops with several inputs run in the widest input dtype;
* **unlisted**: everything else runs in whatever dtype its inputs already have;
* **refused**: ``binary_cross_entropy`` raises under CUDA autocast.

:func:`trace_dtypes` records every aten op *below* the autocast layer (a
``TorchDispatchMode`` sees each op after autocast has cast its inputs), so it
shows what autocast did, forward and backward. The op policy itself (which op
is in which category, on CPU and CUDA) is probed in
:mod:`mpcourse.autocast_policy`.

Taught in course/06_autocast.ipynb.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = [
    "OpRecord",
    "trace_dtypes",
    "compute_ops",
    "ops_by_dtype",
    "format_trace",
    "short_dtype",
]

#: Ops that move or reinterpret memory without arithmetic: hidden from tables.
VIEW_OPS = frozenset(
    f"aten.{n}"
    for n in (
        "t", "view", "_unsafe_view", "reshape", "expand", "permute", "transpose", "unsqueeze",
        "squeeze", "alias", "as_strided", "detach", "lift_fresh", "lift_fresh_copy", "clone",
        "ones_like", "empty_like", "zeros_like", "slice", "select", "split", "new_empty_strided",
    )
)  # fmt: skip
CAST_OPS = frozenset({"aten._to_copy", "aten.to", "aten.copy_"})

_SHORT = {
    torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
    torch.int64: "i64", torch.int32: "i32", torch.bool: "bool", torch.uint8: "u8",
}  # fmt: skip


def short_dtype(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bf16"``, ``torch.float32`` -> ``"f32"`` (for tables).

    Taught in course/06_autocast.ipynb.
    """
    return _SHORT.get(dtype, str(dtype).replace("torch.", ""))


@dataclass(frozen=True)
class OpRecord:
    """One aten op as the kernel saw it: name, input and output dtypes, phase.

    ``op`` is the overload packet name (``"aten.addmm"``); ``phase`` is
    ``"forward"`` or ``"backward"``. Taught in course/06_autocast.ipynb.
    """

    op: str
    input_dtypes: tuple[torch.dtype, ...]
    output_dtypes: tuple[torch.dtype, ...]
    phase: str = "forward"

    @property
    def is_cast(self) -> bool:
        """A dtype conversion (what autocast inserts), e.g. f32 -> bf16."""
        return self.op in CAST_OPS and self.input_dtypes[:1] != self.output_dtypes[:1]

    def __str__(self) -> str:
        ins = ",".join(short_dtype(d) for d in self.input_dtypes)
        outs = ",".join(short_dtype(d) for d in self.output_dtypes)
        return f"{self.phase:<8} {self.op:<34} ({ins}) -> ({outs})"


def _dtypes(tree: Any) -> tuple[torch.dtype, ...]:
    return tuple(t.dtype for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor))


class _Recorder(TorchDispatchMode):
    """Records every op that reaches the Python dispatch key (below autocast)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[OpRecord] = []
        self.phase = "forward"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.namespace != "aten":  # e.g. prim.device queries under fake tensors
            return out
        name = f"aten.{func.overloadpacket.__name__}"
        self.records.append(OpRecord(name, _dtypes((args, kwargs)), _dtypes(out), self.phase))
        return out


def trace_dtypes(
    fn: Callable[..., Any], *args: Any, backward: bool = False, **kwargs: Any
) -> list[OpRecord]:
    """Run ``fn(*args, **kwargs)`` and record every aten op with its dtypes, in call order.

    ``fn`` decides precision itself (e.g. it opens ``torch.autocast``). With
    ``backward=True``, ``fn`` must return a scalar loss; ``loss.backward()`` is
    then traced as well (records with ``phase="backward"``; gradients are
    accumulated into ``.grad`` as usual). The records show dtypes as the
    kernels received them, i.e. after autocast's casts.

    Taught in course/06_autocast.ipynb.
    """
    if not callable(fn):
        raise TypeError(f"trace_dtypes needs a callable, got {type(fn).__name__}")
    recorder = _Recorder()
    with recorder:
        result = fn(*args, **kwargs)
        if backward:
            if not (isinstance(result, torch.Tensor) and result.numel() == 1):
                raise ValueError(
                    "backward=True needs fn to return a scalar loss tensor, got "
                    f"{type(result).__name__}"
                    + (
                        f" of shape {tuple(result.shape)}"
                        if isinstance(result, torch.Tensor)
                        else ""
                    )
                )
            if not result.requires_grad:
                raise ValueError(
                    "backward=True but the returned loss does not require grad: "
                    "compute it from parameters (not under torch.no_grad())"
                )
            recorder.phase = "backward"
            result.backward()
    return recorder.records


def compute_ops(records: Iterable[OpRecord], *, phase: str | None = None) -> list[OpRecord]:
    """The records that do arithmetic: no views, copies or casts (optionally one phase).

    Taught in course/06_autocast.ipynb.
    """
    return [
        r
        for r in records
        if r.op not in VIEW_OPS and r.op not in CAST_OPS and (phase is None or r.phase == phase)
    ]


def ops_by_dtype(records: Iterable[OpRecord], *, phase: str | None = None) -> dict[str, list[str]]:
    """``{"bf16": ["aten.convolution", ...], "f32": [...]}``: compute ops by output dtype.

    Each op name appears once per dtype, in order of first appearance.

    Taught in course/06_autocast.ipynb.
    """
    table: dict[str, list[str]] = {}
    for r in compute_ops(records, phase=phase):
        if not r.output_dtypes:
            continue
        names = table.setdefault(short_dtype(r.output_dtypes[0]), [])
        if r.op not in names:
            names.append(r.op)
    return table


def format_trace(
    records: Sequence[OpRecord], *, hide_views: bool = True, max_rows: int | None = None
) -> str:
    """A readable table of a trace: index, phase, op, input dtypes -> output dtypes.

    Casts inserted by autocast are marked ``<- cast``; views are hidden unless
    ``hide_views=False``.

    Taught in course/06_autocast.ipynb.
    """
    rows = [r for r in records if not (hide_views and r.op in VIEW_OPS)]
    shown = rows if max_rows is None else rows[:max_rows]
    lines = [f"{'#':>3}  {'phase':<8} {'op':<34} inputs -> outputs"]
    for i, r in enumerate(shown):
        lines.append(f"{i:>3}  {r}" + ("   <- cast" if r.is_cast else ""))
    if len(shown) < len(rows):
        lines.append(f"... {len(rows) - len(shown)} more rows")
    return "\n".join(lines)


AUTOCAST_MACROS = (
    "AT_FORALL_LOWER_PRECISION_FP",
    "AT_FORALL_FP32",
    "AT_FORALL_FP32_SET_OPT_DTYPE",
    "AT_FORALL_PROMOTE",
)


def header_lists(torch_dir: str | None = None) -> dict[str, set[str]] | None:
    """The CUDA autocast op lists as written in the installed PyTorch's C++ header.

    Reads ``include/ATen/autocast_mode.h`` under ``torch_dir`` (default: the installed
    torch package) and returns, per macro of :data:`AUTOCAST_MACROS`, the set of its
    entries as tokens (``"_(mm)"``, ``"_(softmax,"``, ...). ``None`` when the build ships
    no C++ headers: then the probe of the live dispatcher is the only evidence.

    Taught in course/06_autocast.ipynb.
    """
    from pathlib import Path

    root = Path(torch_dir) if torch_dir is not None else Path(torch.__file__).parent
    header = root / "include" / "ATen" / "autocast_mode.h"
    if not header.exists():
        return None
    text = header.read_text()
    lists = {}
    for macro in AUTOCAST_MACROS:
        start = f"#define {macro}(_)"
        if start not in text:
            raise ValueError(f"{header} has no {start}: the header layout changed")
        lists[macro] = set(text.split(start)[1].split("#define")[0].split())
    return lists
