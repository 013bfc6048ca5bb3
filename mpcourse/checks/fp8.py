"""Checks for the exercises of course/08_bf16_tf32_fp8.ipynb."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..formats import BF16, FP8_E4M3, FP8_E5M2, FloatFormat
from ..fp8 import DelayedScaling, compute_scale
from ._core import (
    CheckFailed,
    NotAnswered,
    _short,
    call_answer,
    expect_equal,
    fail,
    passed,
    require_answer,
)


def check_bf16_smallest_update(answer: float) -> bool:
    """Check the smallest power of two ``u`` with ``bf16(1 + u) != 1``."""
    require_answer(answer, "`answer`")
    if not isinstance(answer, (int, float)) or isinstance(answer, bool):
        fail(f"answer should be a number (a power of two), got {answer!r}.")
    one = torch.tensor(1.0)
    if answer == 2.0**-8:
        fail(
            "1 + 2^-8 lies exactly halfway between 1 and 1 + 2^-7: the tie goes to the even "
            "neighbour, 1.0, so that update is lost. Try the next power of two."
        )
    if answer == 2.0**-24 or answer == 2.0**-23:
        fail(f"{answer:g} is FP32's precision; BF16 keeps only 7 mantissa bits.")
    if answer == 2.0**-10 or answer == 2.0**-11:
        fail(f"{answer:g} is FP16's precision (10 mantissa bits); BF16 keeps only 7.")
    if 0 < answer < 1 and not math.log2(answer).is_integer():
        fail(f"{answer!r} is not a power of two: write it as 2.0**-k.")
    expected = BF16.eps
    expect_equal(
        float(answer),
        expected,
        "the smallest power of two that changes 1.0 in bf16",
        hint="bf16 has 7 stored mantissa bits, so the values next to 1 are 1 +- 2^-7.",
    )
    assert (one + expected).bfloat16() != one.bfloat16()  # the claim, checked in torch
    return passed(
        "that is the smallest power of two that still moves a bf16 weight of 1.0; every "
        "smaller update to it is rounded away."
    )


def check_fp8_scale(per_tensor_scale: Callable[[torch.Tensor, FloatFormat, int], float]) -> bool:
    """Check ``per_tensor_scale(x, fmt, margin)`` = fmt.max / (amax(x) * 2**margin).

    An all-zero tensor (amax 0) keeps the scale 1.0.
    """
    require_answer(per_tensor_scale, "`per_tensor_scale`")
    cases = [
        (torch.tensor([0.5, -2.0, 1.0]), FP8_E4M3, 0),
        (torch.tensor([1e-6, -3e-7]), FP8_E5M2, 0),
        (torch.tensor([300.0, -1000.0]), FP8_E4M3, 1),
        (torch.tensor([0.01, 0.02]), FP8_E5M2, 3),
        (torch.zeros(4), FP8_E4M3, 0),
    ]

    def reference(x: torch.Tensor, fmt: FloatFormat, margin: int) -> float:
        return compute_scale(float(x.abs().max()), fmt, margin, previous=1.0)

    for x, fmt, margin in cases:
        label = f"per_tensor_scale({x.tolist()}, {fmt.name}, margin={margin})"
        try:
            got = call_answer(per_tensor_scale, x, fmt, margin, what="per_tensor_scale")
        except NotAnswered:
            raise
        except CheckFailed as err:
            if not bool(x.any()):
                fail(f"{err} An all-zero tensor has amax 0: return 1.0 instead of dividing by it.")
            raise
        try:
            got = float(got)
        except (TypeError, ValueError):
            fail(f"per_tensor_scale should return a number, got {got!r:.80}.")
        expected = reference(x, fmt, margin)
        a = float(x.abs().max())
        hint = (
            "use the largest magnitude, x.abs().max(), and the format's max (fmt.max); "
            "a margin of m divides the scale by 2**m; an all-zero tensor keeps scale 1.0."
        )
        if a > 0 and math.isclose(got, a / fmt.max * 2**margin, rel_tol=1e-6):
            hint = "the scale is inverted: it should map amax onto fmt.max, i.e. fmt.max / amax."
        elif a > 0 and margin and math.isclose(got, fmt.max / a, rel_tol=1e-6):
            hint = "the margin is ignored: divide the scale by 2**margin."
        elif a > 0 and margin and math.isclose(got, fmt.max / a * 2**margin, rel_tol=1e-6):
            hint = "the margin should make the scale smaller (headroom): divide by 2**margin."
        elif (
            a > 0
            and float(x.max()) > 0
            and math.isclose(got, fmt.max / float(x.max()) / 2**margin, rel_tol=1e-6)
        ):
            hint = "amax is the largest *magnitude*: use x.abs().max(), negative values count."
        elif not bool(x.any()):
            hint = "an all-zero tensor has nothing to scale: return 1.0."
        expect_equal(got, expected, label, rtol=1e-6, hint=hint)
    return passed(
        "per_tensor_scale maps each tensor's amax onto the format's max (with margin), "
        "and keeps 1.0 for an all-zero tensor."
    )


def _delayed(
    amaxes: list[float],
    fmt: FloatFormat,
    history_len: int | None,
    margin: int,
    *,
    include_current: bool = False,
    pick: Callable[[list[float]], float] = max,
    margin_power: int = -1,
) -> list[float]:
    """Scales per step under variants of the recipe (the right one and typical mistakes)."""
    history: list[float] = []
    scales = []
    for a in amaxes:
        window = history + [a] if include_current else history
        window = window if history_len is None else window[-history_len:]
        scales.append(fmt.max / pick(window) * 2.0 ** (margin_power * margin) if window else 1.0)
        history.append(a)
    return scales


def check_delayed_scales(
    delayed_scales: Callable[[list[float], FloatFormat, int, int], list[float]],
) -> bool:
    """Check ``delayed_scales(amaxes, fmt, history_len, margin)`` against :class:`DelayedScaling`.

    Step $t$ uses $s_t = \\mathrm{fmt.max} / (\\max(a_{t-H}, \\dots, a_{t-1}) \\cdot 2^m)$,
    and 1.0 at step 0, before any amax was recorded.
    """
    require_answer(delayed_scales, "`delayed_scales`")
    cases = [
        ([1.0, 1.1, 0.9, 1.0, 8.0, 7.5, 1.0, 1.0, 1.0, 1.0, 1.0], FP8_E4M3, 4, 0),
        ([2.0, 0.5, 0.25, 0.5, 0.5], FP8_E5M2, 2, 1),
        ([0.25, 0.25, 0.25, 4.0, 0.25, 0.25], FP8_E4M3, 1, 0),
        ([3.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0], FP8_E4M3, 3, 2),
    ]
    mistakes = (
        (
            {"include_current": True, "history_len": 1},
            "that is *current* scaling (each step's own amax); delayed scaling uses only the "
            "amaxes of earlier steps, and the current one joins the history after its step.",
        ),
        (
            {"include_current": True},
            "the current amax joins the history only *after* its step: step t uses steps "
            "t-H ... t-1.",
        ),
        (
            {"history_len": None},
            "keep only the last history_len amaxes: an old spike must leave the window.",
        ),
        (
            {"pick": lambda w: w[-1]},
            "use the *largest* amax in the window (Transformer Engine's default 'max'), "
            "not the most recent one.",
        ),
        ({"margin_power": 1}, "a margin of m *divides* the scale by 2**m (headroom)."),
        ({"margin_power": 0}, "the margin is ignored: divide the scale by 2**margin."),
    )
    for amaxes, fmt, history_len, margin in cases:
        label = f"delayed_scales({amaxes}, {fmt.name}, history_len={history_len}, margin={margin})"
        got = call_answer(
            delayed_scales, list(amaxes), fmt, history_len, margin, what="delayed_scales"
        )
        try:
            got = [float(v) for v in got]
        except (TypeError, ValueError):
            fail(f"{label} should return a list of numbers (one scale per step), got {got!r:.80}.")
        recipe = DelayedScaling(fmt, history_len, margin)
        expected = []
        for a in amaxes:  # the scale in use at each step, then the step's amax is recorded
            expected.append(recipe.scale)
            recipe.update(a)
        if len(got) != len(expected):
            fail(
                f"{label} returned {len(got)} scales for {len(amaxes)} steps: return one scale "
                "per step, starting with 1.0 for step 0 (no history yet)."
            )
        if all(math.isclose(g, e, rel_tol=1e-6) for g, e in zip(got, expected)):
            continue
        if got[0] != 1.0 and all(
            math.isclose(g, e, rel_tol=1e-6) for g, e in zip(got[1:], expected[1:])
        ):
            fail(f"{label}: step 0 has no history yet, so its scale is 1.0; got {got[0]:g}.")
        for kwargs, advice in mistakes:
            options = {"history_len": history_len, **kwargs}
            wrong = _delayed(amaxes, fmt, margin=margin, **options)
            if wrong != expected and all(
                math.isclose(g, w, rel_tol=1e-6) for g, w in zip(got, wrong)
            ):
                fail(f"{label}: {advice}")
        step = next(i for i, (g, e) in enumerate(zip(got, expected)) if not math.isclose(g, e))
        expect_equal(
            got[step],
            expected[step],
            f"{label}, step {step}",
            rtol=1e-6,
            hint="step t uses fmt.max / (max of the amaxes of the last history_len steps "
            "before t * 2**margin); step 0 uses 1.0.",
        )
    return passed(
        f"delayed_scales reproduces mpcourse.fp8.DelayedScaling on {len(cases)} amax "
        "sequences: a spike saturates its own step and lowers the scale for history_len steps."
    )


def _splitk_reference(
    a: torch.Tensor, b: torch.Tensor, splits: int, *, partial_sum: str = "bf16"
) -> torch.Tensor:
    """Split-K with a 16-bit reduction: FP32 inside each chunk, BF16 partials added in BF16.
    ``partial_sum="fp32"`` adds the BF16 partials in FP32 (one rounding at the end)."""
    a16, b16 = a.bfloat16().float(), b.bfloat16().float()
    chunk = a.shape[1] // splits
    parts = [
        (a16[:, i * chunk : (i + 1) * chunk] @ b16[i * chunk : (i + 1) * chunk]).bfloat16()
        for i in range(splits)
    ]
    if partial_sum == "fp32":
        return sum(p.float() for p in parts).bfloat16().float()
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total.float()


def check_splitk_bf16_matmul(splitk_bf16_matmul: Callable) -> bool:
    """Check ``splitk_bf16_matmul(a, b, splits)``: BF16 inputs, FP32 inside each of ``splits``
    chunks of k, each partial rounded to BF16 and the partials added in BF16, on hidden shapes."""
    require_answer(splitk_bf16_matmul, "`splitk_bf16_matmul`")
    gen = torch.Generator().manual_seed(8)
    for m, k, n, splits in ((5, 96, 7, 3), (16, 512, 9, 8), (3, 40, 4, 5), (8, 1024, 8, 16)):
        a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
        args = f"a {m}x{k}, b {k}x{n}, splits={splits}"
        got = call_answer(
            splitk_bf16_matmul, a.clone(), b.clone(), splits, what="splitk_bf16_matmul"
        )
        if not isinstance(got, torch.Tensor) or got.shape != (m, n):
            fail(f"with {args}: return a float32 tensor of shape ({m}, {n}), got {_short(got)}.")
        got = got.float()
        want = _splitk_reference(a, b, splits)
        # the FP32 sums inside a chunk may be added in another order: allow rare 1-ulp flips
        if (got == want).float().mean() >= 0.97:
            continue

        def close(ref: torch.Tensor, got: torch.Tensor = got) -> bool:
            return bool((got == ref).float().mean() >= 0.97)

        if close((a.bfloat16().float() @ b.bfloat16().float()).bfloat16().float()):
            fail(
                f"with {args}: this is a full FP32 reduction rounded once; split k into {splits} "
                "chunks and round each partial to BF16."
            )
        if close(_splitk_reference(a, b, splits, partial_sum="fp32")):
            fail(
                f"with {args}: you added the BF16 partials in FP32; add them in BF16, rounding "
                "after each addition."
            )
        if close((a @ b).bfloat16().float()):
            fail(f"with {args}: round the inputs to BF16 first, and split k into {splits} chunks.")
        fail(
            f"with {args}: the result differs from a split-K BF16 reduction in "
            f"{(got != want).float().mean():.0%} of the outputs."
        )
    return passed(
        "your GEMM reduces split-K partials in BF16, as cuBLAS may with reduced-precision "
        "reduction on."
    )
