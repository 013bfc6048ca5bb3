"""Checks for the exercises of course/02_fp16_limits.ipynb and 03_training_in_pure_fp16.ipynb."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..hooks import flushed_share
from ..numerics import update_survives
from ._core import call_answer, expect_equal, fail, passed, require_answer

__all__ = [
    "check_update_survives",
    "check_stable_softmax",
    "check_lost_fraction",
    "check_flushed_share",
    "check_adam_eps",
]

# (w, update): around w = 1 (ulp 2^-10), w = 1024 (ulp 1), w = 0.1, ties and tiny weights
_SURVIVE_CASES = [
    (1.0, 2.0**-10),
    (1.0, 2.0**-11),  # tie: rounds to even, i.e. back to 1
    (1.0, 1.5 * 2.0**-11),
    (1.0, 2.0**-12),
    (1.0, -(2.0**-12)),  # below 1 the spacing halves: 1 - 2^-12 is a tie -> 1 (even)
    (1.0, -(2.0**-11)),
    (1024.0, 0.5),
    (1024.0, 0.75),
    (1000.0, 0.25),
    (0.1, 1e-5),
    (0.1, 5e-5),
    (2.0**-20, 2.0**-30),
    (3.0, 0.0),
]


def check_update_survives(survives: Callable[[float, float], bool]) -> bool:
    """``survives(w, u)`` must say whether ``w + u`` differs from ``w`` in FP16."""
    require_answer(survives, "`survives`")
    for w, u in _SURVIVE_CASES:
        got = call_answer(survives, w, u, what="survives")
        if not isinstance(got, (bool, torch.Tensor)) and type(got).__name__ != "bool_":
            fail(f"survives({w!r}, {u!r}) should return a bool, got {type(got).__name__}.")
        expected = bool(update_survives(w, u))
        hint = (
            "an update survives when it is more than half the FP16 spacing at w "
            "(ulp(w) = 2^(floor(log2 |w|) - 10)); an exact half rounds to the even neighbour."
        )
        expect_equal(bool(got), expected, f"survives({w!r}, {u!r})", hint=hint)
    return passed(
        f"survives() predicts FP16 swamping on {len(_SURVIVE_CASES)} cases, ties included."
    )


def check_stable_softmax(softmax_fp16: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """``softmax_fp16(x)`` must return softmax over the last dim, in FP16, without inf/NaN."""
    require_answer(softmax_fp16, "`softmax_fp16`")
    cases = [
        torch.tensor([1.0, 2.0, 3.0]),
        torch.tensor([10.0, 12.0, 20.0]),  # exp(12) and exp(20) overflow FP16
        torch.tensor([[100.0, 100.0, 90.0], [-5.0, 0.0, 5.0]]),
        torch.tensor([-30000.0, 0.0, 30000.0]),
        torch.linspace(-20, 40, 7),
    ]
    for x in cases:
        xh = x.half()
        got = call_answer(softmax_fp16, xh.clone(), what="softmax_fp16")
        where = f"softmax_fp16({_describe(xh)})"
        if not isinstance(got, torch.Tensor):
            fail(f"{where} should return a tensor, got {type(got).__name__}.")
        if got.dtype != torch.float16:
            fail(f"{where} returned {got.dtype}; compute and return in torch.float16.")
        if got.shape != xh.shape:
            fail(f"{where} returned shape {tuple(got.shape)}, expected {tuple(xh.shape)}.")
        if not torch.isfinite(got).all():
            fail(
                f"{where} contains inf or NaN: exp() of a large input overflows FP16 (> 65504). "
                "Hint: subtract the row maximum first; softmax does not change."
            )
        expected = torch.softmax(xh.float(), dim=-1)
        expect_equal(got.float(), expected, where, atol=2e-3, rtol=1e-2)
    return passed("softmax_fp16 stays finite in FP16 and matches torch.softmax on 5 inputs.")


def _describe(x: torch.Tensor) -> str:
    return str([round(v, 1) for v in x.flatten().tolist()][:7]) + ("" if x.dim() == 1 else " ...")


def _reference_lost_fraction(w: torch.Tensor, g: torch.Tensor, lr: float) -> float:
    p = torch.nn.Parameter(w.clone())
    p.grad = g.clone()
    torch.optim.SGD([p], lr=lr).step()
    tried = g != 0
    return int((tried & (p.detach() == w)).sum()) / max(int(tried.sum()), 1)


def check_lost_fraction(
    lost_fraction: Callable[[torch.Tensor, torch.Tensor, float], float],
) -> bool:
    """``lost_fraction(w, g, lr)``: share of FP16 weights with g != 0 that SGD leaves unchanged."""
    require_answer(lost_fraction, "`lost_fraction`")
    gen = torch.Generator().manual_seed(3)
    n = 4096
    w = (torch.randn(n, generator=gen) * 0.1).half()
    g = torch.randn(n, generator=gen) * torch.exp2(torch.empty(n).uniform_(-16, 0, generator=gen))
    g = g.half()
    g[::7] = 0  # some weights get no gradient at all: they do not count
    for lr in (0.1, 0.01, 0.001):
        got = call_answer(lost_fraction, w.clone(), g.clone(), lr, what="lost_fraction")
        if isinstance(got, torch.Tensor):
            got = float(got)
        if not isinstance(got, float) or math.isnan(got):
            fail(f"lost_fraction(w, g, lr={lr}) should return a float share, got {got!r}.")
        expected = _reference_lost_fraction(w, g, lr)
        hint = (
            "count only weights with g != 0, and compare the FP16 weight after "
            "w - lr * g (rounded to FP16) with the weight before."
        )
        expect_equal(got, expected, f"lost_fraction(w, g, lr={lr})", atol=2e-3, hint=hint)
    return passed("lost_fraction matches a real FP16 SGD step at lr = 0.1, 0.01 and 0.001.")


def check_flushed_share(flushed: Callable[[torch.Tensor], float]) -> bool:
    """``flushed(grads)``: share of nonzero FP32 values that become 0 when cast to FP16."""
    require_answer(flushed, "`flushed`")
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(10000, generator=gen) * torch.exp2(
        torch.empty(10000).uniform_(-34, -10, generator=gen)
    )
    g[::5] = 0
    cases = [g, torch.tensor([2.0**-25, 2.0**-24, 1.5 * 2.0**-25, 0.0, -(2.0**-26)]), g[g != 0]]
    for x in cases:
        got = call_answer(flushed, x.clone(), what="flushed")
        if isinstance(got, torch.Tensor):
            got = float(got)
        expected = flushed_share(x)
        hint = (
            "divide by the number of *nonzero* inputs; a value is flushed when x != 0 "
            "but x.half() == 0 (|x| <= 2^-25)."
        )
        expect_equal(got, expected, f"flushed({_describe(x)})", atol=1e-9, hint=hint)
    return passed("flushed() counts FP16 underflow exactly, ties at 2^-25 included.")


def check_adam_eps(answer: float) -> bool:
    """The smallest power of ten ``10^-k`` that is not 0 in FP16 (1e-7)."""
    require_answer(answer, "`answer`")
    if not isinstance(answer, (int, float)) or isinstance(answer, bool):
        fail(f"answer should be a number such as 1e-3, got {answer!r}.")
    if answer == 1e-8:
        fail("1e-8 is Adam's default and is exactly what becomes 0.0 in FP16.")
    expected = next(10.0**-k for k in range(12, 0, -1) if torch.tensor(10.0**-k).half() != 0)
    expect_equal(
        answer,
        expected,
        "smallest power of ten that FP16 keeps",
        rtol=1e-9,
        hint="FP16 flushes values <= 2^-25 (about 3e-8) to zero; try torch.tensor(x).half().",
    )
    return passed("1e-7 is the smallest power of ten FP16 keeps (as 1.19e-7, a subnormal).")
