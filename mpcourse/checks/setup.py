"""Checks for the exercises of course/00_setup.ipynb."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from ..device import default_amp_dtype, needs_grad_scaler
from ._core import call_answer, expect_equal, fail, passed, require_answer, uses_names

GPUS = {  # compute capability -> an example GPU (NVIDIA's CUDA GPUs list)
    (6, 1): "GTX 1080",
    (6, 2): "Jetson TX2",
    (7, 0): "V100",
    (7, 2): "Jetson AGX Xavier",
    (7, 5): "T4",
    (8, 0): "A100",
    (8, 6): "RTX 3090",
    (8, 7): "Jetson AGX Orin",
    (8, 9): "L4",
    (9, 0): "H100/H200",
    (10, 0): "B200",
    (10, 3): "B300",
    (12, 0): "RTX 5090",
    (12, 1): "DGX Spark (GB10)",
}


def check_amp_choice(amp_choice: Callable[[str, tuple[int, int] | None], tuple]) -> bool:
    """``amp_choice(device_type, capability)`` -> ``(autocast dtype, needs a GradScaler?)``.

    Checked on GPUs the chapter did not list (in random order) and the CPU
    (``capability=None``), against the course's rule: BF16 without a scaler where the GPU
    computes BF16 natively (compute capability 8.0 and newer), FP16 with a GradScaler on
    older GPUs, BF16 without a scaler on the CPU. An answer that asks
    :mod:`mpcourse.device` is refused: the exercise is to state the rule.
    """
    require_answer(amp_choice, "`amp_choice`")
    if uses_names(amp_choice, {"amp_dtype", "default_amp_dtype", "bf16_native"}):
        fail("amp_choice asks mpcourse.device; write the rule itself (capability -> dtype).")
    gen = torch.Generator().manual_seed(random.Random().randrange(2**31))  # new every run
    cases: list[tuple[str, tuple[int, int] | None]] = [("cpu", None)]
    order = torch.randperm(len(GPUS), generator=gen).tolist()
    cases += [("cuda", list(GPUS)[i]) for i in order]
    for device_type, capability in cases:
        name = (
            "the CPU"
            if capability is None
            else f"the {GPUS[capability]} (sm_{capability[0]}{capability[1]})"
        )
        choice = call_answer(amp_choice, device_type, capability, what="amp_choice")
        if not (isinstance(choice, (tuple, list)) and len(choice) == 2):
            fail(
                f"amp_choice({device_type!r}, {capability}) should return (dtype, needs_scaler), "
                f"got {choice!r}."
            )
        dtype, scaler = choice
        native = capability is None or capability >= (8, 0)
        expected = default_amp_dtype(device_type, native)
        if dtype != expected:
            hint = (
                "BF16 is native from compute capability 8.0 (Ampere) on; older GPUs emulate it."
                if device_type == "cuda"
                else "FP16 autocast runs on a CPU but is slow there; the CPU's dtype is BF16."
            )
            fail(f"on {name} the course uses {expected} autocast, you chose {dtype}. {hint}")
        if bool(scaler) != needs_grad_scaler(expected):
            fail(
                f"on {name} with {expected}: needs a GradScaler is {needs_grad_scaler(expected)}, "
                f"you said {bool(scaler)}. FP16's range needs loss scaling; BF16 has FP32's range."
            )
    return passed(f"right for the CPU and {len(GPUS)} GPU generations, in random order.")


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
