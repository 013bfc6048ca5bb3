"""Checks for the exercises of course/06_autocast.ipynb."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..autocast_policy import CATEGORIES, EXERCISE_OPS, autocast_policy, fake_cuda_autocast
from ..device import amp_dtype, pick_device
from ._core import CheckFailed, call_answer, expect_equal, fail, passed, require_answer

#: What to look at in the chapter's policy table when a prediction is wrong.
_HINTS = {
    "matmul": "matmul is a matrix multiplication, like mm, linear and bmm in the table.",
    "gelu": "gelu is an elementwise activation, like relu: is it on any autocast list?",
    "smooth_l1_loss": "smooth_l1_loss is a loss, like mse_loss and cross_entropy.",
    "log_softmax": "log_softmax is softmax's sibling: look at softmax in the CUDA f16 column "
    "(FP16's range is small, so CUDA keeps exp-like ops in FP32).",
}


def check_autocast_categories(answer: dict[str, str]) -> bool:
    """``answer`` maps matmul, gelu, smooth_l1_loss, log_softmax to their CUDA float16 category.

    The truth is probed from the installed torch (on fake CUDA tensors without a GPU).
    """
    require_answer(answer, "`answer` (a dict op -> category)")
    if not isinstance(answer, dict):
        fail(
            f"answer should be a dict like {{'matmul': 'lower', ...}}, got {type(answer).__name__}."
        )
    missing = [op for op in EXERCISE_OPS if op not in answer]
    if missing:
        fail(
            f"answer has no entry for {missing}: give a category for each of {list(EXERCISE_OPS)}."
        )
    bad = {op: answer[op] for op in EXERCISE_OPS if answer[op] not in CATEGORIES}
    if bad:
        fail(f"unknown categories {bad}: use one of {list(CATEGORIES)} (a category, not a dtype).")
    truth = {r.op: r.category for r in autocast_policy("cuda", torch.float16, ops=EXERCISE_OPS)}
    for op in EXERCISE_OPS:
        expect_equal(
            answer[op],
            truth[op],
            f"category of {op!r} under CUDA float16 autocast",
            hint=_HINTS[op],
        )
    return passed(
        f"all {len(EXERCISE_OPS)} predictions match what the installed torch's CUDA autocast does."
    )


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
    hint = "take the logits, not probabilities: the sigmoid is part of the loss."
    if math.isclose(float(got), float(expected) * logits.numel(), rel_tol=1e-4):
        hint = "that is the sum over all elements; BCELoss averages (reduction='mean')."
    expect_equal(
        float(got), float(expected), "loss_fn(logits, target) (mean BCE of sigmoid(logits))",
        rtol=1e-5, hint=hint,
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
    gen = torch.Generator().manual_seed(6)
    x = (3 * torch.randn(37, generator=gen)).to(device).requires_grad_()
    with torch.autocast(device.type, dtype=low):
        y = call_answer(fn_cls.apply, x.to(low), what=f"{fn_cls.__name__}.apply")
    expect_equal(
        y.dtype, torch.float32, f"output dtype of apply({low} input) under autocast",
        hint="decorate forward with @torch.amp.custom_fwd(device_type=..., "
        "cast_inputs=torch.float32).",
    )  # fmt: skip
    x_low = x.detach().to(low).float()
    expect_equal(y.detach().cpu(), F.softplus(x_low).cpu(), "values", atol=1e-6)
    # a random incoming gradient: a backward that ignores `grad` cannot pass
    incoming = torch.randn(37, generator=gen).to(device)
    y.backward(incoming)
    want = (incoming * torch.sigmoid(x_low)).to(low).float()  # back through the cast to `low`
    if torch.allclose(x.grad, torch.sigmoid(x_low).to(low).float(), rtol=1e-2, atol=1e-3):
        fail(
            "your backward ignores the incoming gradient `grad`: it must return "
            "grad * sigmoid(x) (the chain rule), not sigmoid(x) alone."
        )
    expect_equal(
        x.grad.cpu(), want.cpu(), "gradient for a random incoming gradient g", rtol=1e-2,
        atol=1e-3, hint="return grad * torch.sigmoid(x), with x saved in forward.",
    )  # fmt: skip
    return passed(
        "forward ran in float32 under autocast, and backward applies the chain rule: "
        "g * sigmoid(x) for a random incoming gradient g."
    )
