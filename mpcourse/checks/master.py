"""Checks for the exercises of course/04_master_weights.ipynb."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import numpy as np
import torch

from ..master import OPTIMIZER_STATES, RECIPES, ledger
from ._core import _short, call_answer, expect_equal, fail, passed, require_answer, uses_names


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


# -- the master step and the bytes per parameter --------------------------------------------------
def _reference_master_step(
    master: torch.Tensor, grad16: torch.Tensor, lr: float
) -> tuple[torch.Tensor, torch.Tensor]:
    new_master = master - lr * grad16.float()
    return new_master, new_master.half()


def _master_step_cases() -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    gen = torch.Generator().manual_seed(4)
    return [
        (torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.5, 1.0, -4.0]).half(), 0.1),
        # updates of 1e-5: below half FP16's spacing at 1.0, lost unless kept in FP32
        (torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 1.0]).half(), 1e-5),
        # lr * g underflows FP16 (2^-30) if it is computed in FP16
        (torch.tensor([2.0**-20, 0.0]), torch.tensor([2.0**-14, -(2.0**-14)]).half(), 2.0**-16),
        (torch.randn(50, generator=gen), torch.randn(50, generator=gen).half(), 0.01),
    ]


def check_master_step(master_step: Callable) -> bool:
    """Check ``master_step(master32, grad16, lr) -> (new_master32, new_working16)``."""
    require_answer(master_step, "`master_step`")
    for master, grad16, lr in _master_step_cases():
        got = call_answer(master_step, master.clone(), grad16.clone(), lr, what="master_step")
        if not isinstance(got, tuple) or len(got) != 2:
            fail(f"master_step should return a pair (new_master, new_working), got {_short(got)}.")
        new_master, new_working = got
        want_master, want_working = _reference_master_step(master, grad16, lr)
        for name, tensor, dtype in (
            ("new_master", new_master, torch.float32),
            ("new_working", new_working, torch.float16),
        ):
            if not isinstance(tensor, torch.Tensor) or tensor.dtype != dtype:
                fail(
                    f"{name} should be a {dtype} tensor, got {_short(tensor)}. The master copy "
                    "stays float32; the working copy is its float16 rounding."
                )
        args = f"master={_short(master)}, grad16={_short(grad16)}, lr={lr!r}"
        expect_equal(
            new_master,
            want_master,
            f"new_master for {args}",
            hint="copy the gradient up first (grad16.float()), then update in float32: "
            "lr * grad16 in float16 rounds or underflows.",
        )
        expect_equal(new_working, want_working, f"new_working for {args}", hint="new_master.half()")
    return passed(
        "the FP32 master weight takes every update, even 1e-5 on a weight of 1.0, and the "
        "FP16 working copy is its rounding."
    )


def _bytes_hint(recipe: str, optimizer: str, got: float) -> str:
    """Name the item a wrong total most likely missed (the typical slips of exercise 2).

    Pairs are checked fp32 first, so a master/amp total 4 bytes short is not the optimizer.
    """
    diff = sum(ledger(recipe, optimizer).values()) - got
    states = OPTIMIZER_STATES[optimizer]
    if states and diff == 4 * states:
        return f"the optimizer states are missing: {optimizer} keeps {states} FP32 tensor(s)."
    if recipe == "master" and diff == 4:
        return (
            "4 bytes short: the FP32 master gradients (ZeRO's count of 16 for Adam leaves them "
            "out; this chapter's MasterWeights stores them)."
        )
    if optimizer == "adam" and diff == 4:
        return "Adam keeps two FP32 states per parameter (exp_avg and exp_avg_sq), 4 bytes each."
    if recipe == "amp" and diff == 2:
        return "2 bytes short: the FP16 copies of the weights that autocast makes and keeps."
    return (
        "count, per parameter, the weights, their gradients, any second copy (FP32 master "
        "weights and grads, or autocast's FP16 weight copies) and the optimizer states."
    )


def check_bytes_per_parameter(bytes_per_parameter: Callable[[str, str], float]) -> bool:
    """Check ``bytes_per_parameter(recipe, optimizer)`` against the ledger of the chapter."""
    require_answer(bytes_per_parameter, "`bytes_per_parameter`")
    cases = [(r, o) for r in RECIPES for o in OPTIMIZER_STATES]
    for recipe, optimizer in cases:
        got = call_answer(bytes_per_parameter, recipe, optimizer, what="bytes_per_parameter")
        expected = sum(ledger(recipe, optimizer).values())
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, numbers.Real):
            fail(
                f"bytes_per_parameter({recipe!r}, {optimizer!r}) should return a number of "
                f"bytes, got {_short(got)}."
            )
        if got != expected:
            fail(
                f"bytes_per_parameter({recipe!r}, {optimizer!r}): expected {expected}, got "
                f"{got:g}. Hint: {_bytes_hint(recipe, optimizer, got)}"
            )
    return passed(
        f"all {len(cases)} recipe/optimizer pairs match the ledger "
        "(e.g. master weights + Adam: 20 bytes per parameter)."
    )
