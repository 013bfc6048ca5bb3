"""Progress bars for anything that takes more than a few seconds.

``progress(iterable)`` is ``tqdm.auto.tqdm`` (a widget in Jupyter, text in a
terminal), switched off when ``MPCOURSE_NO_PROGRESS`` is set: the test run
and the notebook build set it, so saved outputs hold no timings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled() -> bool:
    return os.environ.get("MPCOURSE_NO_PROGRESS", "") in ("", "0")


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled under tests and notebook builds."""
    kwargs.setdefault("disable", not progress_enabled())
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)
