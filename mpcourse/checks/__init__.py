"""Exercise checks for every chapter: ``checks.<name>(answer)``.

Each check prints ``Correct: ...`` and returns True, or raises
:class:`CheckFailed` (a subclass of AssertionError) that says in plain words
what is wrong, on which input, and what was expected.

Chapter modules register their checks here by name (one import line each).
"""

from ._core import CheckFailed, NotAnswered
from .formats import check_decode, check_format_limits, check_fp16_max, check_round_toy
from .setup import check_amp_choice, check_nbytes

__all__ = [
    "CheckFailed",
    "NotAnswered",
    "check_decode",
    "check_fp16_max",
    "check_round_toy",
    "check_format_limits",
    "check_amp_choice",
    "check_nbytes",
]
