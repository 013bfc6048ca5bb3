"""Checks for the exercises of course/09_speed_and_memory.ipynb."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..costs import arithmetic_intensity, pad_to_multiple, saved_activation_bytes
from ._core import call_answer, check_function, fail, passed, require_answer


def check_arithmetic_intensity(intensity: Callable[[int, int, int, int], float]) -> bool:
    """Check ``intensity(m, k, n, bytes_per_element)`` = 2mkn / (bytes * (mk + kn + mn))."""
    require_answer(intensity, "`intensity`")
    cases = [
        (4096, 4096, 4096, 2),
        (4096, 4096, 4096, 4),
        (64, 400, 120, 4),
        (1, 1024, 1024, 2),
        (8192, 512, 2048, 1),
    ]
    got = call_answer(intensity, 64, 400, 120, 4, what="intensity")
    if isinstance(got, (int, float)) and abs(got - 2 * 64 * 400 * 120) < 1:
        fail(
            "intensity(64, 400, 120, 4) returned the FLOP count: divide by the bytes moved, "
            "bytes_per_element * (m*k + k*n + m*n)."
        )
    m, k, n_, b = 4096, 4096, 4096, 2
    got = call_answer(intensity, m, k, n_, b, what="intensity")
    right = arithmetic_intensity(m, k, n_, b)
    if isinstance(got, (int, float)) and not isinstance(got, bool):
        for wrong, advice in (
            (right / 2, "count 2 FLOPs per multiply-add: FLOPs = 2*m*k*n."),
            (
                right * b,
                "divide by the bytes, not the elements: multiply the element count "
                "by bytes_per_element.",
            ),
            (
                2 * m * k * n_ / (b * (m * k + k * n_)),
                "count the output too: it is written once, m*n elements.",
            ),
        ):
            if abs(got - wrong) <= 1e-9 * abs(wrong):
                fail(
                    f"intensity({m}, {k}, {n_}, {b}) returned {got:.6g}, expected "
                    f"{right:.6g}: {advice}"
                )
    n = check_function(
        intensity,
        arithmetic_intensity,
        cases,
        "intensity",
        rtol=1e-9,
        hint="FLOPs = 2*m*k*n (a multiply and an add per term); bytes = "
        "bytes_per_element * (m*k + k*n + m*n).",
    )
    return passed(
        f"intensity matches on {n} shapes: big square matmuls do ~1000 FLOPs per byte, "
        "a batch-1 matrix-vector product about 1."
    )


def check_pad_to_multiple(pad: Callable[[int, int], int]) -> bool:
    """Check ``pad(size, multiple)``: the smallest multiple of ``multiple`` >= ``size``."""
    require_answer(pad, "`pad`")
    cases = [(50257, 64), (4096, 8), (4095, 8), (1, 16), (120, 8), (84, 8), (10, 8), (1000, 128)]
    for size, multiple in cases:
        got = call_answer(pad, size, multiple, what="pad")
        if not isinstance(got, int) or isinstance(got, bool):
            fail(
                f"pad({size}, {multiple}) should return an int (a tensor dimension), "
                f"got {got!r:.80}; use integer arithmetic (//), not /."
            )
    n = check_function(
        pad,
        pad_to_multiple,
        cases,
        "pad",
        hint="round up, not down, and leave sizes that are already multiples alone "
        "(the smallest multiple of `multiple` that is at least `size`).",
    )
    return passed(f"pad rounds sizes up to the next multiple ({n} cases): 50257 -> 50304 for 64.")


def _measured_linear_bytes(batch: int, n_in: int, n_out: int, autocast: bool) -> int:
    """Bytes autograd saves for one hidden ``nn.Linear``, measured with saved-tensor hooks."""
    layer = nn.Linear(n_in, n_out)
    x = torch.randn(batch, n_in, requires_grad=True)  # a hidden layer: its input needs a grad
    with saved_activation_bytes(layer) as saved:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            layer(x)
    return saved["bytes"]


def check_linear_saved_bytes(saved_bytes: Callable[[int, int, int, bool], int]) -> bool:
    """Check ``saved_bytes(batch, n_in, n_out, autocast)`` against a measurement.

    FP32: the input, $4 B n_{in}$ (the weight is a parameter, not extra);
    BF16 autocast: 16-bit copies of the input and of the weight,
    $2 B n_{in} + 2 n_{in} n_{out}$.
    """
    require_answer(saved_bytes, "`saved_bytes`")
    cases = [(16, 32, 64), (256, 64, 32), (1, 5, 7), (1024, 256, 1024)]
    for batch, n_in, n_out in cases:
        for autocast in (False, True):
            label = f"saved_bytes({batch}, {n_in}, {n_out}, autocast={autocast})"
            got = call_answer(saved_bytes, batch, n_in, n_out, autocast, what="saved_bytes")
            if isinstance(got, bool) or not isinstance(got, (int, float)):
                fail(f"{label} should return a number of bytes, got {got!r:.80}.")
            expected = _measured_linear_bytes(batch, n_in, n_out, autocast)
            if got == expected:
                continue
            x16, x32, w16, w32 = (
                2 * batch * n_in,
                4 * batch * n_in,
                2 * n_in * n_out,
                4 * n_in * n_out,
            )
            hint = (
                "FP32 saves the input (4 bytes per element); autocast saves 16-bit copies of "
                "the input and of the weight (2 bytes per element each)."
            )
            if autocast and got == x16:
                hint = (
                    "autocast also saves the 16-bit copy of the weight it made for the matmul "
                    "(2 * n_in * n_out bytes): it is extra memory, unlike the FP32 parameter."
                )
            elif autocast and got in (x32 + w16, x16 + w32, x32 + w32):
                hint = "under autocast both saved copies are 16-bit: 2 bytes per element."
            elif not autocast and got in (x16, x16 + w16):
                hint = (
                    "without autocast nothing is copied to 16-bit: the input stays FP32 "
                    "(4 bytes per element) and the weight is the parameter itself."
                )
            elif not autocast and got == x32 + w32:
                hint = (
                    "in FP32 the weight saved for backward is the parameter itself, which "
                    "exists anyway: count only the input."
                )
            elif got in (batch * n_out * 2, batch * n_out * 4):
                hint = "a Linear layer saves its *input* (batch x n_in), not its output."
            fail(f"{label}: expected {expected} bytes (measured), got {got}. Hint: {hint}")
    return passed(
        f"saved_bytes matches the measured bytes on {2 * len(cases)} cases: autocast shrinks "
        "a linear layer's saved bytes only when 2*B*n_in + 2*n_in*n_out < 4*B*n_in, i.e. "
        "when the batch B is larger than n_out."
    )
