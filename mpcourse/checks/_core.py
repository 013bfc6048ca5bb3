"""The machinery behind every exercise check: plain-word feedback.

A check prints ``Correct: ...`` and returns a true value when the answer is right.
When it is wrong it raises :class:`CheckFailed`, whose message says what is
wrong, on which input, what was expected and what was given, so that a wrong
answer can never pass silently (not even under ``pytest --nbval-lax``).

Two modes (see :func:`student_mode`):

* **strict** (the default: course notebooks, tests, nbgrader's autograding):
  a failed check raises. IPython shows an exception's ``_render_traceback_()``
  instead of its traceback, so the student sees one line
  (``Not answered yet: ...`` / ``Not correct yet: ...``), never the checker's
  source.
* **student** (switched on by the first cell of the student version): a failed
  check prints that same line and returns a false value instead of raising, so
  JupyterLab's *Run All* runs on to the end of the notebook.

:func:`wrap_check` puts every ``checks.check_*`` behind this switch (done once,
for all chapters, in ``mpcourse/checks/__init__.py``).

With ``MPCOURSE_LANG=zh_CN`` the lines a student sees (``Correct: ...`` and the one-line
report) are in Chinese, from the templates of ``messages_zh_CN.yaml`` (:func:`localize`);
the exceptions' own messages stay English.

Taught in course/00_setup.ipynb (how exercises work).
"""

from __future__ import annotations

import functools
import linecache
import math
import os
import re
import sysconfig
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
import yaml

_PACKAGE = str(Path(__file__).resolve().parents[1])
_LIBRARIES = tuple(
    str(Path(p).resolve())
    for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
)
_STUDENT_MODE = False
_CATALOGUE = Path(__file__).with_name("messages_zh_CN.yaml")
_FIELD = re.compile(r"\{(\d+)\}")


def _in_chinese() -> bool:
    """Whether ``MPCOURSE_LANG`` asks for Chinese (``zh_CN``, also ``zh-CN``, ``zh_CN.UTF-8``)."""
    return os.environ.get("MPCOURSE_LANG", "").split(".")[0].replace("-", "_") == "zh_CN"


@functools.cache
def _catalogue() -> dict[str, str]:
    return yaml.safe_load(_CATALOGUE.read_text(encoding="utf-8"))


@functools.cache
def _templates() -> list[tuple[re.Pattern[str], str]]:
    """The catalogue's (English pattern, Chinese template) pairs, longest English first."""
    pairs = []
    for english in sorted(_catalogue(), key=len, reverse=True):
        parts = _FIELD.split(english)  # literal, field number, literal, ...
        pattern = "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<f{part}>.*?)" for i, part in enumerate(parts)
        )
        pairs.append((re.compile(pattern, re.DOTALL), _catalogue()[english]))
    return pairs


def localize(message: str, _depth: int = 0) -> str:
    """``message`` in Chinese when ``MPCOURSE_LANG=zh_CN`` (read at each call), else unchanged.

    The message is matched against the English templates of ``messages_zh_CN.yaml`` (each
    ``{n}`` a non-greedy group); the first (longest) that matches gives the Chinese template,
    filled with the captured values, themselves localized (a hint inside a message). A message
    that matches no template stays English.
    """
    if not _in_chinese() or _depth > 3:
        return message
    for pattern, chinese in _templates():
        match = pattern.fullmatch(message)
        if match:
            values = {k[1:]: localize(v, _depth + 1) for k, v in match.groupdict().items()}
            return _FIELD.sub(lambda m, values=values: values[m.group(1)], chinese)
    return message


def _labelled(label: str, message: str) -> str:
    """The line a student sees, ``<label>: <message>``; in Chinese the catalogue's
    ``"<label>: {0}"`` with the message localized."""
    if not _in_chinese():
        return f"{label}: {message}"
    return _catalogue()[f"{label}: {{0}}"].replace("{0}", localize(message))


class CheckFailed(AssertionError):
    """An exercise answer is wrong; the message says why in plain words."""

    label = "Not correct yet"

    def report(self) -> str:
        """The one line a student sees: ``Not correct yet: <what is wrong>``."""
        text = " ".join(str(self).split())  # one line, whatever the message
        return _labelled(self.label, text)

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [self.report()]


class NotAnswered(CheckFailed):
    """The answer cell still holds the stub of the student version."""

    label = "Not answered yet"


class _Verdict(int):
    """A check's result: an int (1 or 0, so ``== True`` works) that keeps its one-line
    message and shows as nothing in a notebook (the check already printed it)."""

    truth = 0

    def __new__(cls, message: str) -> _Verdict:
        obj = super().__new__(cls, cls.truth)
        obj.message = message
        return obj

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def _ipython_display_(self) -> None:
        pass


class NotPassed(_Verdict):
    """What a check returns in student mode when the answer is not right yet: false,
    shown as nothing (the check already printed its one line)."""

    truth = 0


class _ModeSwitch:
    """Returned by :func:`student_mode`: the switch already happened; used in a ``with``
    statement it restores the previous mode at the end of the block."""

    def __init__(self, previous: bool) -> None:
        self.previous = previous

    def __enter__(self) -> _ModeSwitch:
        return self

    def __exit__(self, *exc: object) -> None:
        global _STUDENT_MODE
        _STUDENT_MODE = self.previous

    def __repr__(self) -> str:
        return f"student mode {'on' if _STUDENT_MODE else 'off'}"

    def _ipython_display_(self) -> None:
        pass


def student_mode(on: bool = True) -> _ModeSwitch:
    """Switch between student mode (a failed check prints one line and returns a false
    value) and strict mode (it raises :class:`CheckFailed`, the default).

    The student version's first cell calls ``student_mode()``. ``with student_mode():``
    switches only for the block and then restores the previous mode. For nbgrader, a test
    cell that must fail in autograding starts with a hidden block that switches it off::

        ### BEGIN HIDDEN TESTS
        checks.student_mode(False)
        ### END HIDDEN TESTS
        checks.check_decode(decode_fp16)
    """
    global _STUDENT_MODE
    previous, _STUDENT_MODE = _STUDENT_MODE, bool(on)
    return _ModeSwitch(previous)


def in_student_mode() -> bool:
    return _STUDENT_MODE


def wrap_check(check: Callable[..., Any]) -> Callable[..., Any]:
    """Put one check behind the strict/student switch (idempotent)."""
    if getattr(check, "_mpcourse_check", False):
        return check

    @functools.wraps(check)
    def run_check(*args: Any, **kwargs: Any) -> Any:
        try:
            return check(*args, **kwargs)
        except CheckFailed as err:
            if not _STUDENT_MODE:
                raise err.with_traceback(None) from None  # no checker frames, even outside IPython
            line = err.report()
        except Exception as err:  # noqa: BLE001 - a check must never stop Run All in student mode
            if not _STUDENT_MODE:
                raise
            line = CheckFailed(
                f"the check could not run on this answer: {_error_line(err)}"
            ).report()
        print(line)
        return NotPassed(line)

    run_check._mpcourse_check = True  # type: ignore[attr-defined]
    return run_check


def wrap_checks(namespace: dict[str, Any]) -> None:
    """Wrap every ``check_*`` function of a namespace (``checks/__init__.py``'s globals)."""
    for name, value in list(namespace.items()):
        if name.startswith("check_") and callable(value):
            namespace[name] = wrap_check(value)


def _student_frame(tb: TracebackType | None) -> str:
    """``line N: <code>`` of the innermost frame in the student's own code, or ''."""
    found = ""
    for frame, lineno in traceback.walk_tb(tb):
        filename = str(Path(frame.f_code.co_filename).resolve())
        if filename.startswith(_PACKAGE) or filename.startswith(_LIBRARIES):
            continue
        code = linecache.getline(frame.f_code.co_filename, lineno, frame.f_globals).strip()
        found = f"line {lineno}: {code}" if code else f"line {lineno}"
    return found


def _error_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if len(text) > 80:
        text = text[:77] + "..."
    where = _student_frame(err.__traceback__)
    return f"{type(err).__name__}: {text}" + (f" (at {where})" if where else "")


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() <= 8:
            return f"tensor({value.tolist()}, dtype={str(value.dtype).replace('torch.', '')})"
        return (
            f"tensor of shape {tuple(value.shape)}, dtype {str(value.dtype).replace('torch.', '')}"
        )
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


class Passed(_Verdict):
    """What a check returns on success: true (``== True``), and shown as nothing in a
    notebook (the check already printed ``Correct: ...``), so no stray ``Out: True``."""

    truth = 1


def passed(message: str) -> Passed:
    """Report success the same way in every check."""
    print(_labelled("Correct", message))
    return Passed(message)


def fail(message: str) -> None:
    raise CheckFailed(message)


def require_answer(answer: Any, what: str) -> None:
    """Fail with a helpful message if the exercise has not been answered yet."""
    if answer is None or answer is Ellipsis:
        raise NotAnswered(f"set {what} in the answer cell above, run it, then run this check.")


def call_answer(fn: Callable, *args: Any, what: str) -> Any:
    """Call a student's function, turning the stub's NotImplementedError into advice."""
    if not callable(fn):
        fail(f"{what} should be a function, but it is {_short(fn)}.")
    try:
        return fn(*args)
    except NotImplementedError:
        raise NotAnswered(
            f"{what} still raises NotImplementedError: write its body above, run it, then rerun."
        ) from None
    except CheckFailed:
        raise
    except Exception as err:  # noqa: BLE001 - report any bug in the student's code plainly
        args_text = ", ".join(_short(a) for a in args)
        if len(args_text) > 60:
            args_text = args_text[:57] + "..."
        raise CheckFailed(f"your {what}({args_text}) raised {_error_line(err)}") from err


def uses_names(fn: Callable, names: set[str]) -> bool:
    """Whether ``fn``'s code (nested functions included) refers to any of ``names``: lets a
    check refuse an answer that merely calls the reference it was asked to write."""
    codes = [getattr(fn, "__code__", None)]
    while codes:
        code = codes.pop()
        if code is None:
            continue
        if names & (set(code.co_names) | set(code.co_freevars)):
            return True
        codes.extend(c for c in code.co_consts if hasattr(c, "co_names"))
    return False


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


def expect_tensor(
    got: Any, shape: tuple[int, ...], what: str, where: str, *, nonfinite_hint: str | None = None
) -> None:
    """Fail unless ``got`` is a tensor of ``shape`` ("``what`` should return a tensor of shape
    ... ``where``"); with ``nonfinite_hint``, also unless every entry is finite ("``what``
    returned inf/NaN ``where``: ``nonfinite_hint``")."""
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(shape):
        fail(f"{what} should return a tensor of shape {tuple(shape)} {where}, got {_short(got)}.")
    if nonfinite_hint is not None and not bool(torch.isfinite(got).all()):
        fail(f"{what} returned inf/NaN {where}: {nonfinite_hint}")


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
