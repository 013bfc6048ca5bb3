"""Checks for the exercises of course/09_speed_and_memory.ipynb."""

from __future__ import annotations

from collections.abc import Callable

from ..bench import arithmetic_intensity, pad_to_multiple
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
    n = check_function(
        pad,
        pad_to_multiple,
        cases,
        "pad",
        hint="round up, not down, and leave sizes that are already multiples alone: "
        "-(-size // multiple) * multiple.",
    )
    return passed(f"pad rounds sizes up to the next multiple ({n} cases): 50257 -> 50304 for 64.")
