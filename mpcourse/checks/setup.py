"""Checks for the exercises of course/00_setup.ipynb."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..device import amp_dtype, needs_grad_scaler
from ._core import call_answer, expect_equal, fail, passed, require_answer


def check_amp_choice(answer: dict) -> bool:
    """``answer`` maps "cpu"/"cuda" to (autocast dtype, needs a GradScaler?)."""
    require_answer(answer, "`answer`")
    if not isinstance(answer, dict) or set(answer) != {"cpu", "cuda"}:
        fail(f"answer should be a dict with the keys 'cpu' and 'cuda', got {answer!r}.")
    for device_type, choice in answer.items():
        if not (isinstance(choice, (tuple, list)) and len(choice) == 2):
            fail(f"answer[{device_type!r}] should be a pair (dtype, needs_scaler), got {choice!r}.")
        dtype, scaler = choice
        expected = amp_dtype(torch.device(device_type))
        expect_equal(
            dtype,
            expected,
            f"the autocast dtype on {device_type}",
            hint="see mpcourse.device.amp_dtype",
        )
        expect_equal(
            bool(scaler),
            needs_grad_scaler(expected),
            f"whether {device_type} training with {expected} needs a GradScaler",
            hint="float16's range is narrow (loss scaling needed); bfloat16 has FP32's range.",
        )
    return passed("float16 + GradScaler on CUDA, bfloat16 without a scaler on the CPU.")


def check_nbytes(nbytes: Callable[[torch.Tensor], int]) -> bool:
    """``nbytes(t)`` must return the bytes of a tensor's elements."""
    require_answer(nbytes, "`nbytes`")
    for dtype in (
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int8,
        torch.float8_e4m3fn,
    ):
        full = torch.zeros(3, 5, dtype=dtype)
        for t, name in ((full, "3x5"), (full[:, :2], "3x2 view of a 3x5")):
            got = call_answer(nbytes, t, what="nbytes")
            expect_equal(
                got,
                t.numel() * t.element_size(),
                f"nbytes of a {name} {dtype} tensor",
                hint="numel() elements times element_size() bytes each (a view shares its "
                "base's storage, so count the view's elements, not the storage).",
            )
    return passed(
        "nbytes works for 6 dtypes: FP16 and BF16 take half the bytes of FP32, FP8 a quarter."
    )
