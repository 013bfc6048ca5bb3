"""Checks for the exercises of course/06_autocast.ipynb."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..autocast import CATEGORIES, autocast_policy, fake_cuda_autocast
from ..device import amp_dtype, pick_device
from ._core import CheckFailed, call_answer, expect_equal, fail, passed, require_answer

_OPS = ("mm", "relu", "mse_loss", "cat")


def check_autocast_categories(answer: dict[str, str]) -> bool:
    """``answer`` maps each of mm, relu, mse_loss, cat to its CPU bfloat16 autocast category."""
    require_answer(answer, "`answer` (a dict op -> category)")
    if not isinstance(answer, dict):
        fail(f"answer should be a dict like {{'mm': 'lower', ...}}, got {type(answer).__name__}.")
    missing = [op for op in _OPS if op not in answer]
    if missing:
        fail(f"answer has no entry for {missing}: give a category for each of {list(_OPS)}.")
    bad = {op: c for op, c in answer.items() if c not in CATEGORIES}
    if bad:
        fail(f"unknown categories {bad}: use one of {list(CATEGORIES)}.")
    truth = {r.op: r.category for r in autocast_policy("cpu", torch.bfloat16, ops=_OPS)}
    for op in _OPS:
        expect_equal(
            answer[op],
            truth[op],
            f"category of {op!r} under CPU bfloat16 autocast",
            hint="trace it: trace_dtypes(lambda: ..., ) shows which dtypes the kernel received.",
        )
    return passed(f"{truth} is what the installed torch's CPU autocast does.")


def check_safe_bce(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """``loss_fn(logits, target)``: binary cross-entropy from logits that CUDA autocast accepts."""
    require_answer(loss_fn, "`loss_fn`")
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 3, generator=gen) * 4
    target = (torch.rand(8, 3, generator=gen) > 0.5).float()
    got = call_answer(loss_fn, logits, target, what="loss_fn")
    if not isinstance(got, torch.Tensor) or got.numel() != 1:
        fail(f"loss_fn(logits, target) should return a scalar tensor, got {got!r}.")
    expected = F.binary_cross_entropy(torch.sigmoid(logits.double()), target.double())
    expect_equal(
        float(got), float(expected), "loss_fn(logits, target) (mean BCE of sigmoid(logits))",
        rtol=1e-5, hint="take the logits, not probabilities: the sigmoid is part of the loss.",
    )  # fmt: skip
    try:
        with fake_cuda_autocast(torch.float16) as dev:
            out = loss_fn(torch.empty(8, 3, device=dev), torch.empty(8, 3, device=dev))
            dtype = out.dtype
    except RuntimeError as err:
        raise CheckFailed(
            f"under CUDA autocast loss_fn raised: {str(err).splitlines()[0]} Hint: use "
            "F.binary_cross_entropy_with_logits (or nn.BCEWithLogitsLoss)."
        ) from None
    expect_equal(dtype, torch.float32, "dtype of the loss under CUDA float16 autocast")
    return passed(
        "your loss matches BCE(sigmoid(logits)) and runs under CUDA autocast, in float32."
    )


def check_fp32_function(fn_cls: type) -> bool:
    """``fn_cls``: an autograd Function whose forward always computes in float32 under autocast."""
    require_answer(fn_cls, "`Float32Softplus`")
    if not (isinstance(fn_cls, type) and issubclass(fn_cls, torch.autograd.Function)):
        fail(f"expected a torch.autograd.Function subclass, got {fn_cls!r}.")
    device = pick_device()
    low = amp_dtype(device)
    x = torch.linspace(-3, 3, 7, device=device, requires_grad=True)
    with torch.autocast(device.type, dtype=low):
        y = call_answer(fn_cls.apply, x.to(low), what=f"{fn_cls.__name__}.apply")
    expect_equal(
        y.dtype, torch.float32, f"output dtype of apply({low} input) under autocast",
        hint="decorate forward with @torch.amp.custom_fwd(device_type=..., "
        "cast_inputs=torch.float32).",
    )  # fmt: skip
    x_low = x.detach().to(low).float()
    expect_equal(y.detach().cpu(), F.softplus(x_low).cpu(), "values", atol=1e-6)
    y.sum().backward()
    expect_equal(x.grad.cpu(), torch.sigmoid(x_low).cpu(), "gradient", atol=1e-2)
    return passed("forward ran in float32 under autocast and the gradient is sigmoid(x).")
