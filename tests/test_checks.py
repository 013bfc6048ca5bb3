"""The exercise checks of chapters 00-01 and their shared core: right, wrong, and stub answers."""

import math

import pytest
import torch

from mpcourse import checks
from mpcourse.checks._core import check_function, expect_equal, same_value
from mpcourse.checks.formats import TOY
from mpcourse.formats import FP16, FloatFormat, decode, round_to


def stub(*args):
    raise NotImplementedError("Exercise: write your answer here")


def test_core_equality_and_messages():
    assert same_value(math.nan, math.nan) and not same_value(1.0, 1.0001)
    assert same_value(1.0, 1.0001, rtol=1e-3)
    assert same_value(torch.tensor([1.0, math.nan]), torch.tensor([1.0, math.nan]))
    with pytest.raises(checks.CheckFailed, match=r"the answer: expected 2, got 3\. Hint: add"):
        expect_equal(3, 2, "the answer", hint="add")
    with pytest.raises(checks.CheckFailed, match=r"f\(2\): expected 4, got 5"):
        check_function(lambda x: x * 2 if x == 1 else x + 3, lambda x: x * 2, [(1,), (2,)], "f")


def test_a_bug_in_the_answer_is_reported_not_crashed():
    with pytest.raises(checks.CheckFailed, match="raised ZeroDivisionError"):
        checks.check_decode(lambda bits: 1 / 0)
    with pytest.raises(checks.CheckFailed, match="should be a function"):
        checks.check_decode(42)


def test_decode_check(capsys):
    assert checks.check_decode(lambda b: decode(b, FP16))
    assert "Correct" in capsys.readouterr().out

    def no_subnormals(bits):
        s, e, m = (int(p, 2) for p in bits.split())
        if e == 31:
            return decode(bits, FP16)
        return (-1) ** s * 2.0 ** (e - 15) * (1 + m / 1024)

    with pytest.raises(checks.CheckFailed, match="subnormal"):
        checks.check_decode(no_subnormals)

    def no_negative_zero(bits):
        value = decode(bits, FP16)
        return 0.0 if value == 0 else value

    with pytest.raises(checks.CheckFailed, match="-0.0"):
        checks.check_decode(no_negative_zero)
    wrong_bias = lambda b: (
        decode(b, FP16) / 2 if b.split()[1] not in ("00000", "11111") else decode(b, FP16)
    )  # noqa: E731
    with pytest.raises(checks.CheckFailed, match="the bias is 15"):
        checks.check_decode(wrong_bias)
    with pytest.raises(checks.NotAnswered, match="still raises NotImplementedError"):
        checks.check_decode(stub)
    with pytest.raises(checks.NotAnswered, match="set `decode_fp16`"):
        checks.check_decode(None)


def test_fp16_max_check():
    assert checks.check_fp16_max(65504.0)
    with pytest.raises(checks.CheckFailed, match="reserved for inf/NaN"):
        checks.check_fp16_max(65535)
    with pytest.raises(checks.CheckFailed, match="add the mantissa"):
        checks.check_fp16_max(32768.0)
    with pytest.raises(checks.CheckFailed, match="expected 65504.0, got 60000"):
        checks.check_fp16_max(60000)
    with pytest.raises(checks.NotAnswered):
        checks.check_fp16_max(None)


def test_round_toy_check():
    assert checks.check_round_toy(lambda x: float(round_to(x, TOY)))
    half_up = lambda x: float(math.copysign(math.floor(abs(x) * 4 + 0.5) / 4, x))  # noqa: E731
    with pytest.raises(checks.CheckFailed, match="round_toy"):
        checks.check_round_toy(half_up)

    def loses_sign(x):
        r = float(round_to(x, TOY))
        return 0.0 if r == 0 else r

    with pytest.raises(checks.CheckFailed, match=r"round_toy\(-0\.0\): expected -0\.0, got 0\.0"):
        checks.check_round_toy(loses_sign)
    with pytest.raises(checks.NotAnswered):
        checks.check_round_toy(stub)


def test_format_limits_check():
    def right(e, m, finite=False):
        f = FloatFormat(e, m, finite=finite)
        return {
            "max": f.max,
            "min_normal": f.min_normal,
            "min_subnormal": f.min_subnormal,
            "eps": f.eps,
        }

    def wrong_max(e, m, finite=False):
        return {**right(e, m, finite), "max": 2.0 ** (2 ** (e - 1))}

    def unit_roundoff(e, m, finite=False):
        return {**right(e, m, finite), "eps": 2.0 ** -(m + 1)}

    def ieee_only(e, m, finite=False):
        return right(e, m)

    assert checks.check_format_limits(right)
    with pytest.raises(checks.CheckFailed, match=r"limits\(5, 10, False\)\['max'\]"):
        checks.check_format_limits(wrong_max)
    with pytest.raises(checks.CheckFailed, match="not the unit roundoff"):
        checks.check_format_limits(unit_roundoff)
    with pytest.raises(checks.CheckFailed, match=r"limits\(4, 3, True\)\['max'\]: expected 448"):
        checks.check_format_limits(ieee_only)
    with pytest.raises(checks.CheckFailed, match="dict with keys"):
        checks.check_format_limits(lambda e, m, finite=False: 1.0)


def test_e4m3_max_check():
    assert checks.check_e4m3_max(448.0)
    with pytest.raises(checks.CheckFailed, match="no infinities"):
        checks.check_e4m3_max(240)
    with pytest.raises(checks.CheckFailed, match="NaN"):
        checks.check_e4m3_max(480)
    with pytest.raises(checks.CheckFailed, match="expected 448"):
        checks.check_e4m3_max(500)
    with pytest.raises(checks.NotAnswered):
        checks.check_e4m3_max(None)


def _amp_rule(device_type, capability):
    if device_type == "cuda" and capability < (8, 0):
        return torch.float16, True
    return torch.bfloat16, False


def test_e4m3fnuz_max_check():
    assert checks.check_e4m3fnuz_max(240.0)
    for wrong, why in ((448, "OCP E4M3"), (480, "bias 7"), (224, "111 as NaN"), (120, "IEEE")):
        with pytest.raises(checks.CheckFailed, match=why):
            checks.check_e4m3fnuz_max(wrong)
    with pytest.raises(checks.CheckFailed, match="expected 240"):
        checks.check_e4m3fnuz_max(256)
    with pytest.raises(checks.CheckFailed, match="should be a number"):
        checks.check_e4m3fnuz_max("240")
    with pytest.raises(checks.NotAnswered):
        checks.check_e4m3fnuz_max(None)


def test_setup_checks():
    assert checks.check_amp_choice(_amp_rule)
    assert checks.check_amp_choice(lambda d, c: list(_amp_rule(d, c)))
    with pytest.raises(checks.CheckFailed, match="needs a GradScaler is False, you said True"):
        checks.check_amp_choice(lambda d, c: (_amp_rule(d, c)[0], True))
    with pytest.raises(checks.CheckFailed, match="sm_.*course uses torch.float16 autocast"):
        checks.check_amp_choice(lambda d, c: (torch.bfloat16, False))  # BF16 on every GPU
    with pytest.raises(checks.CheckFailed, match="course uses torch.bfloat16 autocast"):
        checks.check_amp_choice(
            lambda d, c: (torch.float16, True) if d == "cuda" else _amp_rule(d, c)
        )
    with pytest.raises(checks.CheckFailed, match="the CPU.*FP16 autocast runs on a CPU"):
        checks.check_amp_choice(lambda d, c: (torch.float16, True))
    with pytest.raises(checks.CheckFailed, match="asks mpcourse.device"):
        from mpcourse.device import amp_dtype

        checks.check_amp_choice(lambda d, c: (amp_dtype(d), False))
    with pytest.raises(checks.CheckFailed, match="should return"):
        checks.check_amp_choice(lambda d, c: torch.bfloat16)
    assert checks.check_nbytes(lambda t: t.numel() * t.element_size())
    with pytest.raises(checks.CheckFailed, match="float16 tensor: expected 30, got 60"):
        checks.check_nbytes(lambda t: t.numel() * 4)
    with pytest.raises(checks.CheckFailed, match="3x2 view"):
        checks.check_nbytes(lambda t: t.untyped_storage().nbytes())
    with pytest.raises(checks.NotAnswered):
        checks.check_nbytes(stub)


def test_a_passed_check_is_true_and_displays_nothing(capsys):
    result = checks.check_fp16_max(65504.0)
    assert result and result == True  # noqa: E712 - callers may compare with True
    assert "Correct:" in capsys.readouterr().out
    assert result._ipython_display_() is None and "Passed(" in repr(result)
