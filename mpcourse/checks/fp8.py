"""Checks for the exercises of course/08_bf16_tf32_fp8.ipynb."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..formats import BF16, FP8_E4M3, FP8_E5M2, TF32, FloatFormat, round_to
from ..fp8 import compute_scale
from ._core import call_answer, check_function, expect_equal, fail, passed, require_answer


def check_bf16_smallest_update(answer: float) -> bool:
    """Check the smallest power of two ``u`` with ``bf16(1 + u) != 1``."""
    require_answer(answer, "`answer`")
    if not isinstance(answer, (int, float)) or isinstance(answer, bool):
        fail(f"answer should be a number (a power of two), got {answer!r}.")
    one = torch.tensor(1.0)
    if answer == 2.0**-8:
        fail(
            "1 + 2^-8 lies exactly halfway between 1 and 1 + 2^-7: the tie goes to the even "
            "neighbour, 1.0, so that update is lost. Try the next power of two."
        )
    if answer == 2.0**-24 or answer == 2.0**-23:
        fail(f"{answer:g} is FP32's precision; BF16 keeps only 7 mantissa bits.")
    expected = BF16.eps
    expect_equal(
        float(answer),
        expected,
        "the smallest power of two that changes 1.0 in bf16",
        hint="bf16 has 7 stored mantissa bits, so the values next to 1 are 1 +- 2^-7.",
    )
    assert (one + expected).bfloat16() != one.bfloat16()  # the claim, checked in torch
    return passed(
        f"1 + 2^-7 = {1 + expected} is the next bf16 after 1: an update of 2^-8 "
        "(or less) to a weight of 1.0 is rounded away."
    )


def _tf32_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return round_to(a, TF32) @ round_to(b, TF32)


def check_tf32_matmul(tf32_matmul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """Check a simulated TF32 matmul: inputs rounded to TF32, products summed in FP32."""
    require_answer(tf32_matmul, "`tf32_matmul`")
    gen = torch.Generator().manual_seed(8)
    cases = [
        (torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen))
        for m, k, n in ((4, 16, 3), (32, 64, 8), (1, 256, 1))
    ]
    for a, b in cases:
        got = call_answer(tf32_matmul, a, b, what="tf32_matmul")
        if not isinstance(got, torch.Tensor) or got.shape != (a.shape[0], b.shape[1]):
            fail(
                f"tf32_matmul(a, b) for shapes {tuple(a.shape)} and {tuple(b.shape)} should "
                f"return a tensor of shape {(a.shape[0], b.shape[1])}, got {got!r:.80}."
            )
        if got.dtype != torch.float32:
            fail(
                f"tf32_matmul should return float32 (TF32 is only an input format), "
                f"got {got.dtype}."
            )
        if torch.allclose(got, a @ b, rtol=1e-6, atol=1e-6) and not torch.equal(
            _tf32_reference(a, b), a @ b
        ):
            fail(
                "tf32_matmul returns the plain FP32 product: round a and b to TF32 first "
                "(mpcourse.formats.round_to(x, TF32))."
            )
    n = check_function(
        tf32_matmul,
        _tf32_reference,
        cases,
        "tf32_matmul",
        rtol=1e-5,
        atol=1e-5,
        hint="round both inputs with round_to(x, TF32), then multiply in float32.",
    )
    return passed(
        f"tf32_matmul rounds the inputs to 10 mantissa bits and accumulates in FP32 "
        f"({n} shapes checked)."
    )


def check_fp8_scale(per_tensor_scale: Callable[[torch.Tensor, FloatFormat, int], float]) -> bool:
    """Check ``per_tensor_scale(x, fmt, margin)`` = fmt.max / (amax(x) * 2**margin).

    An all-zero tensor (amax 0) keeps the scale 1.0.
    """
    require_answer(per_tensor_scale, "`per_tensor_scale`")
    cases = [
        (torch.tensor([0.5, -2.0, 1.0]), FP8_E4M3, 0),
        (torch.tensor([1e-6, -3e-7]), FP8_E5M2, 0),
        (torch.tensor([300.0, -1000.0]), FP8_E4M3, 1),
        (torch.tensor([0.01, 0.02]), FP8_E5M2, 3),
        (torch.zeros(4), FP8_E4M3, 0),
    ]

    def reference(x: torch.Tensor, fmt: FloatFormat, margin: int) -> float:
        return compute_scale(float(x.abs().max()), fmt, margin, previous=1.0)

    for x, fmt, margin in cases:
        got = call_answer(per_tensor_scale, x, fmt, margin, what="per_tensor_scale")
        try:
            got = float(got)
        except (TypeError, ValueError):
            fail(f"per_tensor_scale should return a number, got {got!r:.80}.")
        expected = reference(x, fmt, margin)
        hint = (
            "use the largest magnitude, x.abs().max(), and the format's max (fmt.max); "
            "a margin of m divides the scale by 2**m; an all-zero tensor keeps scale 1.0."
        )
        if got == 1 / expected:
            hint = "the scale is inverted: it should map amax onto fmt.max, i.e. fmt.max / amax."
        expect_equal(
            got,
            expected,
            f"per_tensor_scale({x.tolist()}, {fmt.name}, margin={margin})",
            rtol=1e-6,
            hint=hint,
        )
    return passed(
        "per_tensor_scale maps each tensor's amax onto the format's max (with margin), "
        "and keeps 1.0 for an all-zero tensor."
    )
