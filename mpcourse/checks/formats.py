"""Checks for the exercises of course/01_float_formats.ipynb."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..formats import FP8_E4M3, FP16, FloatFormat, decode, round_to
from ._core import call_answer, check_function, expect_equal, fail, passed, require_answer

_FP16_CASES = [
    "0 01111 0000000000",  # 1.0
    "1 10000 1000000000",  # -3.0
    "0 11110 1111111111",  # 65504, the largest finite value
    "0 00001 0000000000",  # 2^-14, the smallest normal
    "0 00000 0000000001",  # 2^-24, the smallest subnormal
    "0 00000 1000000000",  # 2^-15, a subnormal
    "0 01101 0101010101",  # about 1/3
    "1 00000 0000000000",  # -0.0
    "0 11111 0000000000",  # +inf
    "1 11111 0000000000",  # -inf
    "0 11111 1000000000",  # NaN
]


def check_decode(decode_fp16: Callable[[str], float]) -> bool:
    """Check a hand-written decoder of FP16 bit strings ("s eeeee mmmmmmmmmm")."""
    require_answer(decode_fp16, "`decode_fp16`")
    for bits in _FP16_CASES:
        got = call_answer(decode_fp16, bits, what="decode_fp16")
        expected = decode(bits, FP16)
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            fail(f"decode_fp16({bits!r}) should return a number, got {type(got).__name__}.")
        hint = "normal numbers are (-1)^s * 2^(e - 15) * (1 + m / 2^10): the bias is 15."
        if bits.split()[1] == "00000" and expected != 0:
            hint = (
                "exponent field 0 means a subnormal: 2^(1 - bias) * (0 + m / 2^10), no implicit 1."
            )
        elif bits.split()[1] == "11111":
            hint = "exponent field all ones means inf (mantissa 0) or NaN (mantissa not 0)."
        expect_equal(got, expected, f"decode_fp16({bits!r})", hint=hint)
        if expected == 0 and math.copysign(1, expected) != math.copysign(1, got):
            fail(f"decode_fp16({bits!r}): the sign bit is set, so the answer is -0.0, got {got!r}.")
    return passed(
        f"decode_fp16 matches the FP16 encoding on {len(_FP16_CASES)} bit strings, "
        "including subnormals, infinities, NaN and -0.0."
    )


def check_fp16_max(answer: float) -> bool:
    """Check FP16's largest finite value, computed from the bit layout."""
    require_answer(answer, "`answer`")
    expected = FP16.max
    if answer == 65535 or answer == 2.0**16:
        fail(
            f"{answer} is not FP16's max: the exponent field 11111 is reserved for inf/NaN, "
            "so the largest exponent is 11110 - bias = 15."
        )
    if answer == 2.0**15:
        fail("2^15 only counts the exponent: add the mantissa, (1 + 1023/1024) * 2^15.")
    expect_equal(
        answer,
        expected,
        "FP16's largest finite value",
        hint="largest exponent field 30, bias 15, mantissa all ones: (2 - 2^-10) * 2^15.",
    )
    if float(torch.finfo(torch.float16).max) != answer:  # pragma: no cover - sanity
        fail("the value does not match torch.finfo(torch.float16).max")
    return passed(f"FP16's max is (2 - 2^-10) * 2^15 = {expected:g}, as torch.finfo says.")


def check_e4m3_max(answer: float) -> bool:
    """Check FP8 E4M3's largest value, derived from its "fn" layout."""
    require_answer(answer, "`answer`")
    if answer == 240:
        fail(
            "240 = 1.875 * 2^7 treats E4M3 like an IEEE format, but E4M3 has no infinities: "
            "its all-ones exponent (1111) holds normal numbers too."
        )
    if answer == 480:
        fail(
            "480 = 1.875 * 2^8 uses the pattern 0 1111 111, which is E4M3's NaN: "
            "the top mantissa at the top exponent is 110."
        )
    expect_equal(
        answer,
        FP8_E4M3.max,
        "FP8 E4M3's largest value",
        hint="bias 7, largest exponent 15 - 7 = 8, largest mantissa 110 = 6/8.",
    )
    return passed(
        "E4M3's max is (1 + 6/8) * 2^8 = 448: the all-ones exponent holds numbers, "
        "only 1111 111 is NaN."
    )


def check_e4m3fnuz_max(answer: float) -> bool:
    """Check the largest value of FP8 E4M3FNUZ (AMD MI300's variant), derived from its layout.

    A format the chapter did not show: bias 8 (not 7), no infinities, and a single NaN,
    the pattern ``1 0000 000`` (so no negative zero), so every other pattern is a number.
    The expected value is read from ``torch.finfo(torch.float8_e4m3fnuz)``.
    """
    require_answer(answer, "`answer`")
    if not isinstance(answer, (int, float)) or isinstance(answer, bool):
        fail(f"answer should be a number, got {answer!r}.")
    expected = float(torch.finfo(torch.float8_e4m3fnuz).max)
    mistakes = {
        448.0: "448 is OCP E4M3 (bias 7, 0 1111 111 is NaN); FNUZ has bias 8 and its NaN is "
        "1 0000 000, so 0 1111 111 is a number.",
        480.0: "480 = 1.875 * 2^8 uses bias 7; E4M3FNUZ's bias is 8.",
        224.0: "224 = 1.75 * 2^7 keeps 111 as NaN; in FNUZ the only NaN is 1 0000 000, so "
        "the top mantissa 111 is usable.",
        120.0: "120 = 1.875 * 2^6 reserves the all-ones exponent for inf/NaN as IEEE does; FNUZ "
        "has no infinities: exponent 1111 holds numbers.",
        57344.0: "57344 is E5M2's max: this format has 4 exponent and 3 mantissa bits.",
    }
    if answer in mistakes:
        fail(mistakes[answer])
    expect_equal(
        answer,
        expected,
        "FP8 E4M3FNUZ's largest value",
        hint="bias 8, largest exponent 15 - 8 = 7, largest mantissa 111 = 7/8.",
    )
    return passed(
        "your value equals torch.finfo(torch.float8_e4m3fnuz).max: a different bias and NaN "
        "convention give a different max from the same 8 bits."
    )


TOY = FloatFormat(3, 2, "E3M2")


def _toy_cases() -> list[tuple[float]]:
    values = torch.arange(-160, 161, dtype=torch.float64) / 8  # covers ties, subnormals, overflow
    extra = [0.3, 0.1, 0.0625, 0.03125, 0.09375, 13.9, 14.0, 15.0, 16.0, 1e-3, -0.0]
    return [(float(v),) for v in values.tolist()] + [(v,) for v in extra]


def check_round_toy(round_toy: Callable[[float], float]) -> bool:
    """Check round-to-nearest-even into the toy format E3M2 (3 exponent, 2 mantissa bits)."""
    require_answer(round_toy, "`round_toy`")
    cases = _toy_cases()
    n = check_function(
        round_toy,
        lambda x: float(round_to(x, TOY)),
        cases,
        "round_toy",
        hint="ties go to the neighbour whose last mantissa bit is 0; values that round past 14 "
        "overflow to inf; below 0.25 the spacing stays 1/16 (subnormals).",
    )
    return passed(
        f"round_toy agrees with mpcourse.formats.round_to(x, E3M2) on {n} values, "
        "ties, subnormals and overflow included."
    )


_LIMIT_HINTS = {
    "max": "largest exponent emax = 2^E - 2 - bias (2^E - 1 - bias when finite, where the "
    "all-ones mantissa is NaN), largest mantissa all ones (all ones but one when finite).",
    "min_normal": "the smallest normal exponent is emin = 1 - bias: 2^emin.",
    "min_subnormal": "subnormals are 2^emin * m / 2^M, so the smallest is 2^(emin - M).",
    "eps": "eps is the gap between 1 and the next value, 2^-M (not the unit roundoff 2^-(M+1)).",
}


def check_format_limits(limits: Callable[..., dict]) -> bool:
    """Check ``limits(E, M, finite=False)`` -> dict of max, min_normal, min_subnormal and eps."""
    require_answer(limits, "`limits`")
    keys = ("max", "min_normal", "min_subnormal", "eps")
    layouts = (
        (5, 10, False),
        (8, 7, False),
        (8, 23, False),
        (5, 2, False),
        (3, 2, False),
        (6, 9, False),
        (4, 3, True),
        (5, 2, True),
    )
    for e, m, finite in layouts:
        got = call_answer(limits, e, m, finite, what="limits")
        if not isinstance(got, dict) or set(keys) - set(got):
            fail(f"limits({e}, {m}, {finite}) should return a dict with keys {keys}, got {got!r}.")
        fmt = FloatFormat(e, m, finite=finite)
        for key in keys:
            expect_equal(
                float(got[key]),
                getattr(fmt, key),
                f"limits({e}, {m}, {finite})[{key!r}]",
                rtol=1e-12,
                hint=f"bias = 2^(E-1) - 1; {_LIMIT_HINTS[key]}",
            )
    return passed(
        "limits() derives max, min normal, min subnormal and eps for 8 layouts: "
        "FP16, BF16, FP32, FP8 E5M2, E4M3 (finite) and toy formats."
    )
