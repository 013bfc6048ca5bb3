"""Tests for mpcourse.validate: one home for the package's argument checks."""

from __future__ import annotations

import pytest

from mpcourse.validate import int_at_least, non_negative_int, positive_int


def test_accepted_values_come_back():
    assert positive_int(3, "steps") == 3
    assert non_negative_int(0, "epochs") == 0
    assert int_at_least(2, "repeats", 2) == 2


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: positive_int(0, "steps"), "steps must be a positive int, got 0"),
        (lambda: positive_int(True, "steps"), "steps must be a positive int, got True"),
        (lambda: positive_int(2.0, "steps"), "steps must be a positive int, got 2.0"),
        (lambda: non_negative_int(-1, "epochs"), "epochs must be a non-negative int, got -1"),
        (lambda: int_at_least(1, "repeats", 2), "repeats must be an int >= 2, got 1"),
        (lambda: int_at_least("3", "n", 1), "n must be an int >= 1, got '3'"),
    ],
)
def test_bad_input_says_what_was_given_and_what_is_accepted(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == message


def test_float_tensor_names_the_argument_and_the_fix():
    import torch

    from mpcourse.validate import float_tensor

    x = torch.ones(2)
    assert float_tensor(x, "x") is x
    with pytest.raises(TypeError, match="^x must be a torch.Tensor, got list$"):
        float_tensor([1.0], "x")
    with pytest.raises(
        TypeError, match=r"floating-point tensor .* got torch.int64: use .float\(\)"
    ):
        float_tensor(torch.ones(2, dtype=torch.long), "x", "use .float()")
