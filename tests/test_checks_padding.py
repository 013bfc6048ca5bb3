"""checks.check_padding_overhead (chapter 09, exercise 2): right answers pass, the usual
mistakes get one line naming them, and the package's own helper is refused."""

import pytest
import torch

from mpcourse import checks
from mpcourse.checks._core import CheckFailed
from mpcourse.costs import pad_to_multiple


def overhead(widths, dtype, multiple=None):
    m = multiple or 16 // dtype.itemsize
    padded = [-(-d // m) * m for d in widths]
    flops = sum(a * b for a, b in zip(widths, widths[1:]))
    return sum(a * b for a, b in zip(padded, padded[1:])) / flops - 1


def test_right_answer_passes():
    assert checks.check_padding_overhead(overhead)


@pytest.mark.parametrize(
    "answer,message",
    [
        (lambda w, d: overhead(w, d) + 1, "not the ratio"),
        (lambda w, d: overhead(w, d, 8), "16 bytes of its elements"),
        (lambda w, d: overhead(w, d, d.itemsize), "divided by the element size"),
        (lambda w, d: 0.5, "round every width up"),
        (lambda w, d: "0.1", "should return a number"),
    ],
)
def test_mistakes_are_named(answer, message):
    with pytest.raises(CheckFailed, match=message):
        checks.check_padding_overhead(answer)


def test_the_package_helper_is_refused():
    def with_helper(widths, dtype):
        padded = [pad_to_multiple(d, 16 // dtype.itemsize) for d in widths]
        flops = sum(a * b for a, b in zip(widths, widths[1:]))
        return sum(a * b for a, b in zip(padded, padded[1:])) / flops - 1

    with pytest.raises(CheckFailed, match="round each width up yourself"):
        checks.check_padding_overhead(with_helper)
    assert overhead([768, 3072, 768], torch.bfloat16) == 0.0
