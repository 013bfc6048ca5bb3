"""Checks for the exercises of course/14_microscaling.ipynb."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..formats import (
    FP4_E2M1,
    FP6_E2M3,
    FP6_E3M2,
    FP8_E4M3,
    FP8_E5M2,
    FloatFormat,
    neighbours,
    round_to,
)
from ..mx import mx_quantize
from ._core import _short, call_answer, fail, passed, require_answer

_MX = (FP8_E4M3, FP8_E5M2, FP6_E2M3, FP6_E3M2, FP4_E2M1)


def _blocks(seed: int, n: int = 40) -> list[torch.Tensor]:
    """Random 32-value blocks: spread exponents, outliers, exact powers of two, one all-zero."""
    g = torch.Generator().manual_seed(seed)
    out = [torch.zeros(32)]
    for i in range(n):
        b = torch.randn(32, generator=g) * 2.0 ** int(torch.randint(-30, 30, (1,), generator=g))
        if i % 3 == 0:  # an outlier
            b[int(torch.randint(0, 32, (1,), generator=g))] *= 2.0 ** int(
                torch.randint(4, 14, (1,), generator=g)
            )
        if i % 5 == 0:  # the amax exactly a power of two
            b[0] = 2.0 ** int(torch.randint(-8, 8, (1,), generator=g))
            b[1:] = b[1:].clamp(-abs(b[0].item()), abs(b[0].item()))
        out.append(b.float())
    return out


def _tiny_blocks(seed: int, n: int = 3) -> list[torch.Tensor]:
    """Blocks whose amax lies below 2^(emax - 127): float32 subnormals included (the clamp)."""
    g = torch.Generator().manual_seed(seed)
    exps = torch.randint(-147, -126, (n,), generator=g).tolist()
    return [(torch.rand(32, generator=g) * 2.0**e).float() for e in exps]


def check_e8m0_scale(answer: Callable[[torch.Tensor, FloatFormat], float]) -> bool:
    """Check ``answer(block, fmt)``: the MX scale of a block of 32 values."""
    require_answer(answer, "`e8m0_scale`")
    for seed in (0, 1):
        for fmt in _MX:
            for block in _blocks(seed + 17 * fmt.bits, n=12) + _tiny_blocks(seed + fmt.bits):
                got = call_answer(answer, block.clone(), fmt, what="e8m0_scale")
                expected = float(mx_quantize(block[None], fmt, 32)[0])
                try:
                    got_f = float(got)
                except (TypeError, ValueError):
                    fail(f"e8m0_scale should return a number, got {_short(got)}.")
                if got_f == expected:
                    continue
                amax = float(block.abs().max())
                where = f"for a block with amax {amax:.6g} in {fmt.name}"
                if amax == 0:
                    fail(
                        f"{where}: an all-zero block has no exponent; the scale is E8M0's "
                        f"smallest, 2^-127, got {got_f!r}."
                    )
                if got_f > 0 and not math.log2(got_f).is_integer():
                    fail(
                        f"{where}: {got_f!r} is not a power of two: E8M0 only holds 2^k; "
                        "use floor(log2(amax)), not amax / fmt.max."
                    )
                if 0 < got_f < expected == 2.0**-127:
                    fail(
                        f"{where}: got 2^{math.log2(got_f):.0f}, below E8M0's range: clamp the "
                        "exponent to [-127, 127] (the smallest scale is 2^-127)."
                    )
                if got_f == 2 * expected and not math.log2(amax).is_integer():
                    fail(
                        f"{where}: got {got_f!r}, expected {expected!r}: you rounded log2(amax) "
                        "up; the spec takes the floor (the largest power of two <= amax)."
                    )
                if got_f == expected * 2.0**fmt.emax:
                    fail(f"{where}: got {got_f!r}: subtract the element format's emax.")
                fail(
                    f"{where}: expected scale {expected!r} "
                    f"(2^{math.log2(expected):.0f}), got {got_f!r}."
                )
    return passed(
        "the scale is 2^(floor(log2(amax)) - emax), clamped to [2^-127, 2^127], on "
        f"{2 * 5 * 16} unseen blocks in all five element formats, float32 subnormals included."
    )


def check_flushed(answer: Callable[[torch.Tensor, FloatFormat], torch.Tensor]) -> bool:
    """Check ``answer(block, fmt)``: mask of the nonzero values that MX quantization turns to 0."""
    require_answer(answer, "`flushed`")
    n = 0
    for fmt in _MX:
        tie = torch.linspace(-1.0, 1.0, 32)
        tie[0] = 8.0  # amax 2^3: the scale is 2^(3 - emax)
        tie[1] = 2.0 ** (3 - fmt.emax) * fmt.min_subnormal / 2  # exactly half a subnormal: 0
        tie[2] = math.nextafter(float(tie[1]), 1.0)  # just above: survives
        for block in [tie, *_blocks(100 + fmt.bits + fmt.mantissa_bits, n=15)]:
            _, q = mx_quantize(block[None], fmt, 32)
            expected = (block != 0) & (q[0] == 0)
            got = call_answer(answer, block.clone(), fmt, what="flushed")
            if not isinstance(got, torch.Tensor) or got.shape != block.shape:
                fail(f"flushed should return a boolean tensor of shape (32,), got {_short(got)}.")
            got = got.bool()
            if torch.equal(got, expected):
                n += 1
                continue
            i = int((got != expected).nonzero()[0])
            scale = float(mx_quantize(block[None], fmt, 32)[0])
            ratio = abs(float(block[i])) / scale
            said = "flushed" if bool(got[i]) else "kept"
            tip = (
                "an element survives when |x| / scale is more than half the smallest subnormal "
                f"({fmt.min_subnormal / 2:g} in {fmt.name}); exactly half is a tie and rounds "
                "to 0 (even)."
            )
            if block[i] == 0:
                tip = "zeros were zero already: count only nonzero values."
            fail(
                f"in {fmt.name}, element {i} = {float(block[i]):.6g} of a block with amax "
                f"{float(block.abs().max()):.6g} (scale {scale:g}, |x|/scale = {ratio:.4g}): "
                f"you said {said}. Hint: {tip}"
            )
    return passed(f"you found the flushed values of {n} unseen blocks in all five formats.")


def _reference_sr(
    x: torch.Tensor, fmt: FloatFormat, u: torch.Tensor, swapped: bool = False
) -> torch.Tensor:
    low, high = neighbours(x, fmt)
    gap = (high - low).double()
    p = torch.where(gap != 0, (x - low).double() / torch.where(gap != 0, gap, 1.0), 0.0)
    away = u.double() >= p if swapped else u.double() < p
    return torch.where(away, high, low)


def check_stochastic_round(
    answer: Callable[[torch.Tensor, FloatFormat, torch.Tensor], torch.Tensor],
) -> bool:
    """Check ``answer(x, fmt, u)``: stochastic rounding driven by the uniform draws ``u``."""
    require_answer(answer, "`stochastic_round`")
    g = torch.Generator().manual_seed(14)
    toys = (FloatFormat(3, 2), FloatFormat(4, 1), FloatFormat(3, 3), FP4_E2M1, FP6_E3M2)
    for fmt in toys:
        x = (torch.rand(500, generator=g) * 2 - 1) * fmt.max
        x[:4] = torch.tensor([0.0, fmt.max, -fmt.min_subnormal, fmt.min_normal])
        u = torch.rand(500, generator=g)
        got = call_answer(answer, x.clone(), fmt, u.clone(), what="stochastic_round")
        expected = _reference_sr(x, fmt, u)
        if not isinstance(got, torch.Tensor) or got.shape != x.shape:
            fail(f"stochastic_round should return a tensor shaped like x, got {_short(got)}.")
        got = got.to(expected.dtype)
        if torch.equal(got, expected):
            continue
        if torch.equal(got, round_to(x, fmt)):
            fail(f"in {fmt.name} you rounded to nearest: use u to choose between the neighbours.")
        swapped = _reference_sr(x, fmt, u, swapped=True)
        if torch.equal(got, swapped):
            fail(
                f"in {fmt.name} you go away from zero when u >= p: that happens with probability "
                "1 - p, which is biased; go away from zero when u < p."
            )
        i = int((got != expected).nonzero()[0])
        low, high = neighbours(x[i : i + 1], fmt)
        fail(
            f"in {fmt.name}, x = {float(x[i]):.6g} "
            f"(neighbours {float(low):g} and {float(high):g}), "
            f"u = {float(u[i]):.4f}: expected {float(expected[i]):g}, got {float(got[i]):g}."
            + (" Check negative x: the neighbours mirror the positive ones." if x[i] < 0 else "")
        )
    return passed(
        "unbiased stochastic rounding, on 2,500 unseen values in five formats (toys included)."
    )
