"""Checks for the exercises of course/05_loss_scaling.ipynb."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Sequence

import torch

from ..scaling import DynamicLossScaler, next_scale, scale_trajectory
from ._core import _short, call_answer, expect_equal, fail, passed, require_answer

FP16_MAX = 65504.0


# -- chapter 05 --------------------------------------------------------------------------------
def _update_cases() -> list[tuple]:
    # (scale, growth_tracker, found_inf, growth_factor, backoff_factor, growth_interval)
    return [
        (65536.0, 0, True, 2.0, 0.5, 2000),
        (65536.0, 17, True, 2.0, 0.5, 2000),
        (65536.0, 0, False, 2.0, 0.5, 2000),
        (65536.0, 1998, False, 2.0, 0.5, 2000),
        (65536.0, 1999, False, 2.0, 0.5, 2000),
        (1024.0, 2, False, 4.0, 0.25, 3),
        (1024.0, 2, True, 4.0, 0.25, 3),
        (1.0, 0, False, 2.0, 0.5, 1),
        (2.0**127, 0, False, 2.0, 0.5, 1),  # 2^128 is inf in FP32: no growth
        (2.0**-10, 4, True, 2.0, 0.5, 5),
        *_random_update_cases(),
    ]


def _random_update_cases(n: int = 12) -> list[tuple]:
    """Settings the chapter never shows: other factors, intervals and trackers (values
    whose products are exact in FP32, so a plain float answer can match GradScaler)."""
    gen = torch.Generator().manual_seed(55)

    def pick(options: Sequence) -> object:
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    cases = []
    for _ in range(n):
        interval = int(torch.randint(1, 9, (1,), generator=gen))
        tracker = int(torch.randint(0, interval, (1,), generator=gen))
        scale = pick((1.0, 1.5, 3.0, 0.75)) * 2.0 ** int(
            torch.randint(-20, 40, (1,), generator=gen)
        )
        found = bool(torch.rand(1, generator=gen) < 0.4)
        cases.append(
            (scale, tracker, found, pick((2.0, 4.0, 1.5)), pick((0.5, 0.25, 0.75)), interval)
        )
    return cases


def _calls(fn: Callable, name: str) -> bool:
    """Whether ``fn``'s source calls ``name`` (an answer that merely wraps the reference)."""
    try:
        return f"{name}(" in inspect.getsource(fn)
    except (OSError, TypeError):
        return False


def _reference_update(s, t, found, gf, bf, gi) -> tuple[float, int]:
    return next_scale(s, t, found, growth_factor=gf, backoff_factor=bf, growth_interval=gi)


def check_update_scale(update_scale: Callable) -> bool:
    """Check ``update_scale(scale, tracker, found_inf, growth, backoff, interval)``."""
    require_answer(update_scale, "`update_scale`")
    if _calls(update_scale, "next_scale"):
        fail("write the rule yourself: calling mpcourse.scaling.next_scale is the answer key.")
    for case in _update_cases():
        got = call_answer(update_scale, *case, what="update_scale")
        expected = _reference_update(*case)
        if not isinstance(got, tuple) or len(got) != 2:
            fail(f"update_scale should return (new_scale, new_growth_tracker), got {_short(got)}.")
        hint = ""
        if case[0] == 2.0**127:
            hint = (
                "the scale is an FP32 number: 2^127 * 2 = 2^128 is inf in FP32 "
                "(FP32's max is about 3.4e38), and a scale that would become inf does not grow; "
                "the tracker still resets to 0."
            )
        elif case[2]:
            hint = "on an overflow: scale * backoff_factor, and the tracker restarts at 0."
        else:
            hint = (
                "a clean step adds 1 to the tracker; when it reaches growth_interval the scale "
                "is multiplied by growth_factor and the tracker goes back to 0."
            )
        args = ", ".join(repr(c) for c in case)
        expect_equal(tuple(got), expected, f"update_scale({args})", hint=hint)
    return passed(
        f"update_scale matches GradScaler's rule on {len(_update_cases())} cases "
        "(backoff, growth after growth_interval clean steps, no growth to inf)."
    )


SCALE_EVENTS = (False, True, True, False, False, False, True, False, False, False, False)
"""The events of the prediction exercise: True = this step's gradients overflowed."""


def expected_trajectory() -> list[float]:
    """The scales the prediction exercise expects: the course's scaler (init 2^16,
    growth_interval 3) on ``SCALE_EVENTS``."""
    return scale_trajectory(SCALE_EVENTS, DynamicLossScaler(init_scale=2.0**16, growth_interval=3))


def check_scale_trajectory(answer: Sequence[float]) -> bool:
    """Check the predicted scales after each step of ``SCALE_EVENTS``."""
    require_answer(answer, "`answer` (a list of 11 scales)")
    expected = expected_trajectory()
    try:
        got = [float(a) for a in answer]
    except (TypeError, ValueError):
        fail(f"answer should be a list of numbers, got {_short(answer)}.")
    if len(got) != len(expected):
        fail(f"answer should hold {len(expected)} scales (one per step), got {len(got)}.")
    if got == [math.log2(e) for e in expected]:
        fail(
            "these look like exponents (log2 of the scale): give the scales themselves, "
            "e.g. 2.0**16 = 65536 rather than 16."
        )
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        if g != e:
            event = "an overflow" if SCALE_EVENTS[i] else "a clean step"
            right_so_far = f"Steps 0..{i - 1} are right. " if i else ""
            fail(
                f"step {i} ({event}): expected scale {e:g}, got {g:g}. {right_so_far}"
                "Remember: the scale starts at 2^16 = 65536; an overflow halves it and restarts "
                "the count of clean steps at 0; the scale doubles when that count reaches "
                "growth_interval=3 (and the count restarts)."
            )
    return passed(
        f"all {len(expected)} scales right: an overflow halves S and restarts the count of clean "
        "steps; growth_interval clean steps in a row double it."
    )


def _reference_static_scale(batch_max: Sequence[float], format_max: float, headroom: int) -> float:
    """The largest power of two S with max(batch_max) * S * 2**headroom <= format_max."""
    worst = max(batch_max)
    k = math.floor(math.log2(format_max / worst)) - headroom
    while worst * 2.0 ** (k + headroom) > format_max:  # guard the log against rounding
        k -= 1
    while worst * 2.0 ** (k + 1 + headroom) <= format_max:
        k += 1
    return 2.0**k


FORMAT_MAXES = {"FP16": 65504.0, "FP8 E5M2": 57344.0, "FP8 E4M3": 448.0}


def _static_scale_cases() -> list[tuple[list[float], float, int, str]]:
    gen = torch.Generator().manual_seed(5)
    cases = [
        ([1.0], 65504.0, 0, "FP16"),
        ([0.01, 0.7, 0.02], 65504.0, 1, "FP16"),
        ([448.0 / 2**10], 448.0, 0, "FP8 E4M3"),  # exactly at the boundary: <= is allowed
        ([1.0e5], 65504.0, 0, "FP16"),  # above the format's max: S < 1
    ]
    for _ in range(8):
        name = list(FORMAT_MAXES)[int(torch.randint(3, (1,), generator=gen))]
        n = int(torch.randint(2, 7, (1,), generator=gen))
        exps = torch.empty(n).uniform_(-25, 5, generator=gen)
        batch_max = [float(2.0**e) for e in exps.tolist()]
        batch_max.insert(0, min(batch_max))  # the first batch is never the largest
        cases.append(
            (batch_max, FORMAT_MAXES[name], int(torch.randint(0, 4, (1,), generator=gen)), name)
        )
    return cases


def check_static_scale(choose_static_scale: Callable) -> bool:
    """Check ``choose_static_scale(batch_max_grads, format_max, headroom)``: the largest power
    of two S with ``max(batch_max_grads) * S * 2**headroom <= format_max``, on hidden cases
    (FP16, FP8 E5M2 and E4M3; several batches; 0-3 binades of headroom)."""
    require_answer(choose_static_scale, "`choose_static_scale`")
    for batch_max, fmt_max, headroom, name in _static_scale_cases():
        args = f"{len(batch_max)} batches, format_max={fmt_max:g} ({name}), headroom={headroom}"
        got = call_answer(
            choose_static_scale, list(batch_max), fmt_max, headroom, what="choose_static_scale"
        )
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, numbers.Real) or not got > 0:
            fail(f"choose_static_scale({args}) should return a positive number, got {_short(got)}.")
        s = float(got)
        expected = _reference_static_scale(batch_max, fmt_max, headroom)
        if s == expected:
            continue
        if math.frexp(s)[0] != 0.5:
            fail(f"with {args}: {s:g} is not a power of two: use 2 ** k, so scaling is exact.")
        if len(batch_max) > 1 and s == _reference_static_scale(batch_max[:1], fmt_max, headroom):
            fail(
                f"with {args}: you used the first batch only; S must fit the largest gradient of "
                "all batches."
            )
        if fmt_max != FP16_MAX and s == _reference_static_scale(batch_max, FP16_MAX, headroom):
            fail(f"with {args}: you used FP16's 65504; use format_max ({fmt_max:g} for {name}).")
        if headroom and s == _reference_static_scale(batch_max, fmt_max, 0):
            fail(f"with {args}: no headroom left; S must keep g * S * 2**headroom <= format_max.")
        if s == expected / 2 and max(batch_max) * expected * 2.0**headroom == fmt_max:
            fail(f"with {args}: g * S may equal format_max exactly (<=, not <): {expected:g} fits.")
        if max(batch_max) * s * 2.0**headroom > fmt_max:
            fail(f"with {args}: S = {s:g} overflows; round the exponent down (floor), never up.")
        fail(
            f"with {args}: S = {s:g} is too small; the largest power of two that fits is "
            f"{expected:g}."
        )
    return passed(
        "your scale fits every batch, in FP16 and both FP8 formats, with the headroom asked for."
    )
