"""Checks for the exercises of course/04_master_weights.ipynb that live with the master module."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ._core import call_answer, expect_equal, fail, passed, require_answer, uses_names


def _working_after(w0: float, u: float, n: int, dtype: torch.dtype) -> float:
    """The reference: FP32 master ``w <- fp32(w + u)`` n times, then the working copy."""
    w = np.float32(w0)
    step = np.float32(u)
    for _ in range(n):
        w = np.float32(w + step)
    return float(torch.tensor(float(w), dtype=torch.float32).to(dtype).float())


def _pure_after(w0: float, u: float, n: int, dtype: torch.dtype) -> float:
    w = torch.tensor(w0, dtype=torch.float32).to(dtype)
    step = torch.tensor(u, dtype=torch.float32).to(dtype)
    for _ in range(n):
        w = w + step
    return float(w.float())


def check_working_after(working_after: Callable[[float, float, int, torch.dtype], float]) -> bool:
    """``working_after(w0, u, n, dtype)``: the ``dtype`` working copy after ``n`` updates
    ``+u`` applied to an FP32 master weight that starts at ``w0`` (rounded to FP32).

    Checked on random weights, updates and step counts, in FP16 and BF16 (the chapter showed
    one FP16 case), against an FP32 loop. Diagnosed: updates applied to the working copy
    (pure low precision), the master kept exact (float64) instead of FP32, the working copy
    not rounded.
    """
    require_answer(working_after, "`working_after`")
    if uses_names(working_after, {"MasterWeights", "train_master"}):
        fail("working_after calls the package's MasterWeights; write the two copies yourself.")
    gen = torch.Generator().manual_seed(7)
    cases = [(0.375, 5e-5, 40, torch.float16)]  # the chapter's case, then unseen ones
    for i in range(11):
        dtype = torch.bfloat16 if i % 2 == 0 else torch.float16
        w0 = float(torch.empty(1).uniform_(-4, 4, generator=gen))
        u = float(torch.exp2(torch.empty(1).uniform_(-22, -7, generator=gen)))
        u = u if torch.rand(1, generator=gen).item() < 0.5 else -u
        n = int(torch.randint(1, 3000, (1,), generator=gen))
        cases.append((w0, u, n, dtype))
    cases.append((1.0, 2.0**-24, 2000, torch.float32))  # below FP32's own half spacing at 1
    for w0, u, n, dtype in cases:
        name = str(dtype).replace("torch.", "")
        where = f"working_after({w0:.6g}, {u:.3g}, {n}, torch.{name})"
        got = call_answer(working_after, w0, u, n, dtype, what="working_after")
        if isinstance(got, torch.Tensor):
            got = float(got.float()) if got.numel() == 1 else got
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            fail(f"{where} should return a number, got {type(got).__name__}.")
        expected = _working_after(w0, u, n, dtype)
        if got == expected:
            continue
        exact = float(torch.tensor(w0 + n * u, dtype=torch.float64).float().to(dtype).float())
        if not math.isnan(got) and got == _pure_after(w0, u, n, dtype) != expected:
            hint = "you added the updates to the working copy; they go to the FP32 master."
        elif got == exact:
            hint = "the master is FP32, rounded after every update (not w0 + n*u exactly)."
        elif got == float(np.float32(expected)) or got == _working_after(w0, u, n, torch.float32):
            hint = f"return the {name} working copy: round the FP32 master to {name}."
        else:
            hint = "loop n times: master = fp32(master + u); then working = master.to(dtype)."
        expect_equal(got, expected, where, hint=hint)
    return passed(
        f"working_after matches an FP32 master loop on {len(cases)} cases, BF16 included."
    )
