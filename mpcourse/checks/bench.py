"""Checks for the exercises of course/09_speed_and_memory.ipynb."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from torch import nn

from ..costs import pad_to_multiple, saved_activation_bytes
from ._core import call_answer, check_function, fail, passed, require_answer, uses_names


def _mixed_intensity(m: int, k: int, n: int, in_bytes: int, out_bytes: int) -> float:
    return 2 * m * k * n / (in_bytes * (m * k + k * n) + out_bytes * m * n)


def check_arithmetic_intensity(intensity: Callable[[int, int, int, int, int], float]) -> bool:
    """Check ``intensity(m, k, n, in_bytes, out_bytes)`` = 2mkn / (in*(mk + kn) + out*mn),
    on shapes and byte widths the chapter did not show (FP8 in / BF16 out, BF16 in / FP32 out)."""
    require_answer(intensity, "`intensity`")
    gen = torch.Generator().manual_seed(9)
    cases = [(8192, 512, 2048, 1, 2), (1, 1024, 1024, 2, 4), (4096, 4096, 4096, 2, 2)]
    for _ in range(5):
        m, k, n = (int(v) for v in torch.randint(1, 9000, (3,), generator=gen))
        in_bytes = int(torch.randint(1, 3, (1,), generator=gen))  # FP8 or 16-bit inputs
        cases.append((m, k, n, in_bytes, (2, 4)[int(torch.randint(0, 2, (1,), generator=gen))]))
    for m, k, n, i, o in cases:
        got = call_answer(intensity, m, k, n, i, o, what="intensity")
        right = _mixed_intensity(m, k, n, i, o)
        call = f"intensity({m}, {k}, {n}, in_bytes={i}, out_bytes={o})"
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            fail(f"{call} should return a number (FLOPs per byte), got {got!r}.")
        if abs(got - right) <= 1e-9 * right:
            continue
        for wrong, advice in (
            (2 * m * k * n, "that is the FLOP count: divide by the bytes moved."),
            (right / 2, "count 2 FLOPs per multiply-add: FLOPs = 2*m*k*n."),
            (_mixed_intensity(m, k, n, i, i), "the output is written with out_bytes per element."),
            (_mixed_intensity(m, k, n, o, o), "the inputs are read with in_bytes per element."),
            (2 * m * k * n / (i * (m * k + k * n)), "count the output too: m*n elements, once."),
        ):
            if abs(got - wrong) <= 1e-9 * abs(wrong):
                fail(f"{call} returned {got:.6g}, expected {right:.6g}: {advice}")
        fail(f"{call} returned {got:.6g}, expected {right:.6g}.")
    return passed(
        f"intensity matches on {len(cases)} shapes and byte widths: FP8 inputs with a BF16 "
        "output, BF16 with FP32, and a batch-1 product at about 1 FLOP per byte."
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


def _padding_overhead(widths: list[int], dtype: torch.dtype, multiple: int | None = None) -> float:
    multiple = multiple or 16 // dtype.itemsize  # cuBLAS: dimensions in multiples of 16 bytes
    padded = [pad_to_multiple(d, multiple) for d in widths]
    flops = sum(a * b for a, b in zip(widths, widths[1:]))
    return sum(a * b for a, b in zip(padded, padded[1:])) / flops - 1


def check_padding_overhead(padding_overhead: Callable[[list[int], torch.dtype], float]) -> bool:
    """Check ``padding_overhead(widths, dtype)``: the extra FLOPs (a fraction) of an MLP whose
    widths are padded to multiples of 16 bytes of ``dtype`` (8 for FP16/BF16, 4 for FP32/TF32,
    16 for FP8), on random widths and dtypes, new every run. An answer that calls
    ``costs.pad_to_multiple`` is refused: the rounding is part of the exercise."""
    require_answer(padding_overhead, "`padding_overhead`")
    if uses_names(padding_overhead, {"pad_to_multiple"}):
        fail("padding_overhead calls costs.pad_to_multiple: round each width up yourself.")
    rng = random.Random()  # new cases every run
    dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float8_e4m3fn)
    cases = [([768, 3072, 768], torch.bfloat16), ([50257, 768], torch.float8_e5m2)]
    for _ in range(12):
        widths = [rng.randrange(1, 5000) for _ in range(rng.randrange(2, 6))]
        cases.append((widths, rng.choice(dtypes)))
    for widths, dtype in cases:
        got = call_answer(padding_overhead, list(widths), dtype, what="padding_overhead")
        right = _padding_overhead(widths, dtype)
        call = f"padding_overhead({widths}, {dtype})"
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            fail(f"{call} should return a number (the extra FLOPs as a fraction), got {got!r}.")
        if abs(got - right) <= 1e-9 * max(1.0, abs(right)):
            continue
        multiple = 16 // dtype.itemsize
        for wrong, advice in (
            (right + 1, "return the extra FLOPs (padded / unpadded - 1), not the ratio."),
            (
                _padding_overhead(widths, dtype, 8),
                f"{dtype} needs multiples of {multiple}: 16 bytes of its elements, not always 8.",
            ),
            (
                _padding_overhead(widths, dtype, dtype.itemsize),
                "the multiple is 16 bytes "
                f"divided by the element size ({multiple} for {dtype}), not the element size.",
            ),
        ):
            if abs(got - wrong) <= 1e-9 * max(1.0, abs(wrong)):
                fail(f"{call} returned {got:.6g}, expected {right:.6g}: {advice}")
        fail(
            f"{call} returned {got:.6g}, expected {right:.6g}: round every width up to its "
            "multiple, then compare sum(d_i * d_(i+1)) padded and unpadded."
        )
    return passed(
        f"padding_overhead is right on {len(cases)} random MLPs in FP16, BF16, FP32 and FP8: "
        "the wider the element, the smaller the multiple (16 bytes)."
    )


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
