"""Bad input fails early, with a sentence: the package's argument checks in one place.

Each check returns the value it accepted, so a caller writes
``steps = positive_int(steps, "steps")``, and raises ``ValueError`` whose message
names the argument, what is accepted and what was given, in the form the
course's bad-input tests expect (``"steps must be a positive int, got 0"``).
``bool`` is refused where an ``int`` is asked for (``True`` is an ``int`` in
Python, and never a sensible count).

Not a chapter of its own: every chapter's module uses these checks (chapter 07
shows their messages, e.g. ``train(..., accumulation_steps=0)``).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["positive_int", "int_at_least", "non_negative_int", "float_tensor"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: object, name: str) -> int:
    """``value`` if it is an int >= 1, else ValueError ``<name> must be a positive int``."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def non_negative_int(value: object, name: str) -> int:
    """``value`` if it is an int >= 0, else ValueError ``<name> must be a non-negative int``."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def int_at_least(value: object, name: str, minimum: int) -> int:
    """``value`` if it is an int >= ``minimum``, else ValueError ``<name> must be an int >= m``."""
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def float_tensor(x: Any, what: str, hint: str = "convert it with .float() first") -> torch.Tensor:
    """``x`` if it is a floating-point ``torch.Tensor``; else ``TypeError`` naming ``what``,
    the dtypes accepted and ``hint`` (what to do instead)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{what} must be a floating-point tensor (float32, float16 or bfloat16), "
            f"got {x.dtype}: {hint}"
        )
    return x
