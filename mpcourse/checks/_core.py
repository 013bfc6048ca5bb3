"""The machinery behind every exercise check: plain-word feedback.

A check prints ``Correct: ...`` and returns a true value when the answer is right.
When it is wrong it raises :class:`CheckFailed`, whose message says what is
wrong, on which input, what was expected and what was given, so that a wrong
answer can never pass silently (not even under ``pytest --nbval-lax``).

Taught in course/00_setup.ipynb (how exercises work).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch


class CheckFailed(AssertionError):
    """An exercise answer is wrong; the message says why in plain words."""


class NotAnswered(CheckFailed):
    """The answer cell still holds the stub of the student version."""


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() <= 8:
            return f"tensor({value.tolist()}, dtype={str(value.dtype).replace('torch.', '')})"
        return (
            f"tensor of shape {tuple(value.shape)}, dtype {str(value.dtype).replace('torch.', '')}"
        )
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


class Passed(int):
    """What a check returns on success: true (``== True``), and shown as nothing in a
    notebook (the check already printed ``Correct: ...``), so no stray ``Out: True``."""

    def __new__(cls, message: str) -> Passed:
        obj = super().__new__(cls, 1)
        obj.message = message
        return obj

    def __repr__(self) -> str:
        return f"Passed({self.message!r})"

    def _ipython_display_(self) -> None:
        pass


def passed(message: str) -> Passed:
    """Report success the same way in every check."""
    print(f"Correct: {message}")
    return Passed(message)


def fail(message: str) -> None:
    raise CheckFailed(message)


def require_answer(answer: Any, what: str) -> None:
    """Fail with a helpful message if the exercise has not been answered yet."""
    if answer is None or answer is Ellipsis:
        raise NotAnswered(
            f"No answer yet: set {what} in the answer cell above (replace the "
            "`raise NotImplementedError` line), run that cell, then run this check again."
        )


def call_answer(fn: Callable, *args: Any, what: str) -> Any:
    """Call a student's function, turning the stub's NotImplementedError into advice."""
    if not callable(fn):
        fail(f"{what} should be a function, but it is {_short(fn)}.")
    try:
        return fn(*args)
    except NotImplementedError as err:
        raise NotAnswered(
            f"{what} is not written yet ({str(err) or 'NotImplementedError'}): replace the "
            "`raise NotImplementedError` line in the answer cell with your code."
        ) from None
    except CheckFailed:
        raise
    except Exception as err:  # noqa: BLE001 - report any bug in the student's code plainly
        args_text = ", ".join(_short(a) for a in args)
        raise CheckFailed(f"{what}({args_text}) raised {type(err).__name__}: {err}") from err


def same_value(got: Any, expected: Any, *, rtol: float = 0.0, atol: float = 0.0) -> bool:
    """Equality that treats NaN == NaN and compares numbers within a tolerance."""
    if isinstance(expected, torch.Tensor) or isinstance(got, torch.Tensor):
        g = torch.as_tensor(got, dtype=torch.float64)
        e = torch.as_tensor(expected, dtype=torch.float64)
        if g.shape != e.shape:
            return False
        return bool(torch.allclose(g, e, rtol=rtol, atol=atol, equal_nan=True))
    if isinstance(expected, bool) or isinstance(got, bool):
        return got is expected or got == expected
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        if math.isnan(expected) or math.isnan(got):
            return math.isnan(expected) and math.isnan(got)
        if math.isinf(expected) or math.isinf(got):
            return expected == got
        if expected == 0 and got == 0:  # -0.0 and 0.0 differ in their sign bit
            return math.copysign(1, got) == math.copysign(1, expected)
        return abs(got - expected) <= atol + rtol * abs(expected)
    return got == expected


def expect_equal(
    got: Any, expected: Any, what: str, *, rtol: float = 0.0, atol: float = 0.0, hint: str = ""
) -> None:
    """Fail with 'expected ..., got ...' unless ``got`` equals ``expected``."""
    if not same_value(got, expected, rtol=rtol, atol=atol):
        tol = f" (tolerance rtol={rtol:g}, atol={atol:g})" if rtol or atol else ""
        msg = f"{what}: expected {_short(expected)}, got {_short(got)}{tol}."
        fail(msg + (f" Hint: {hint}" if hint else ""))


def check_function(
    fn: Callable,
    reference: Callable,
    cases: Iterable[tuple],
    what: str,
    *,
    rtol: float = 0.0,
    atol: float = 0.0,
    hint: str = "",
) -> int:
    """Compare ``fn`` with ``reference`` on every case; report the first mismatch.

    Returns the number of cases checked.
    """
    n = 0
    for args in cases:
        got = call_answer(fn, *args, what=what)
        expected = reference(*args)
        args_text = ", ".join(_short(a) for a in args)
        expect_equal(got, expected, f"{what}({args_text})", rtol=rtol, atol=atol, hint=hint)
        n += 1
    return n
