"""Checks for the exercises of course/02_fp16_limits.ipynb and 03_training_in_pure_fp16.ipynb."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch

from ._core import call_answer, expect_equal, fail, passed, require_answer, uses_names

__all__ = [
    "check_stable_softmax",
    "check_lost_fraction",
    "check_adam_eps",
    "check_adam_survivors",
    "check_lost_band",
    "check_smallest_scale",
]


def _closest_mistake(
    got: float, expected: float, guesses: dict[str, float], tol: float, fallback: str
) -> str:
    """The advice whose typical wrong answer ``got`` matches (within ``tol``), else ``fallback``."""
    for advice, value in guesses.items():
        if abs(got - value) <= tol and abs(got - expected) > tol:
            return advice
    return fallback


def _short_shape(t: torch.Tensor) -> str:
    return f"a tensor of shape {tuple(t.shape)}"


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
                f"{where} contains inf or NaN ({_describe(got)}): exp() of an input above "
                "ln 65504 ~ 11.09 overflows FP16, and inf/inf is NaN; a row whose every exp() "
                "underflows to 0 gives 0/0 = NaN. Hint: subtract each row's own maximum, "
                "x.amax(dim=-1, keepdim=True), first: softmax does not change, and the largest "
                "term of every row becomes exp(0) = 1."
            )
        expected = torch.softmax(xh.float(), dim=-1)
        expect_equal(
            got.float(),
            expected,
            where,
            atol=2e-3,
            rtol=1e-2,
            hint="softmax runs over the last dimension: every row is exp(x - max) divided by "
            "the sum of that row, so each row sums to 1.",
        )
    return passed("softmax_fp16 stays finite in FP16 and matches torch.softmax on 5 inputs.")


def _describe(x: torch.Tensor) -> str:
    """A short, readable form of a small tensor: nested lists, 4 significant digits."""
    values = x.detach().float()
    if values.numel() > 8:
        return f"a tensor of shape {tuple(values.shape)}"

    def fmt(v: object) -> object:
        return [fmt(u) for u in v] if isinstance(v, list) else float(f"{v:.4g}")

    return str(fmt(values.tolist()))


def _as_share(got: object, where: str) -> float:
    """A one-element tensor or a number as a float; a clear failure otherwise."""
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            fail(f"{where} should return one number (a share), got {_short_shape(got)}.")
        got = float(got)
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        fail(f"{where} should return a float share between 0 and 1, got {got!r}.")
    if math.isnan(got):
        fail(
            f"{where} returned NaN: a 0/0? Return 0.0 when there is nothing to count "
            "(no nonzero value)."
        )
    if not 0 <= got <= 1:
        fail(
            f"{where} returned {got!r}, which is not a share between 0 and 1: divide the count "
            "by the number of values it is a share of."
        )
    return float(got)


def _reference_lost_fraction(w: torch.Tensor, g: torch.Tensor, lr: float) -> float:
    p = torch.nn.Parameter(w.clone())
    p.grad = g.clone()
    torch.optim.SGD([p], lr=lr).step()
    tried = g != 0
    return int((tried & (p.detach() == w)).sum()) / max(int(tried.sum()), 1)


def _lost_fraction_diagnosis(w: torch.Tensor, g: torch.Tensor, lr: float, got: float) -> str:
    """Name the usual mistake behind a wrong ``lost_fraction`` answer, if it is one of them."""
    new = w.clone().add_(g, alpha=-lr)
    tried = g != 0
    unchanged = new == w
    expected = int((tried & unchanged).sum()) / int(tried.sum())
    guesses = {
        "you counted the weights with g == 0 too: they get no update at all, so they are "
        "neither kept nor lost; divide by the number of nonzero gradients only.": float(
            unchanged.float().mean()
        ),
        "that is the share of updates that *changed* the weight; the question asks for the "
        "share that did not.": 1 - expected,
        "w - lr * g was computed and compared in FP32 (or float64), where almost nothing is "
        "lost; the weight is stored in FP16, so round the new weight to FP16 (or add in place "
        "on the FP16 tensor) before comparing.": int(
            (tried & ((w.double() - lr * g.double()) == w.double())).sum()
        )
        / int(tried.sum()),
    }
    return _closest_mistake(
        got,
        expected,
        guesses,
        2e-3,
        "count only weights with g != 0, and compare the FP16 weight after w - lr * g "
        "(rounded to FP16) with the weight before.",
    )


def check_lost_fraction(
    lost_fraction: Callable[[torch.Tensor, torch.Tensor, float], float],
) -> bool:
    """``lost_fraction(w, g, lr)``: share of FP16 weights with g != 0 that SGD leaves unchanged.

    Wrong answers are diagnosed: weights with ``g == 0`` counted, the share that
    changed instead of the share lost, arithmetic done in FP32, a count instead of a share.
    """
    require_answer(lost_fraction, "`lost_fraction`")
    gen = torch.Generator().manual_seed(3)
    n = 4096
    w = (torch.randn(n, generator=gen) * 0.1).half()
    g = torch.randn(n, generator=gen) * torch.exp2(torch.empty(n).uniform_(-16, 0, generator=gen))
    g = g.half()
    g[::7] = 0  # some weights get no gradient at all: they do not count
    for lr in (0.1, 0.01, 0.001):
        where = f"lost_fraction(w, g, lr={lr}) (4096 FP16 weights ~ 0.1, one in 7 with g == 0)"
        got = _as_share(
            call_answer(lost_fraction, w.clone(), g.clone(), lr, what="lost_fraction"), where
        )
        expected = _reference_lost_fraction(w, g, lr)
        hint = _lost_fraction_diagnosis(w, g, lr, got)
        expect_equal(got, round(expected, 6), where, atol=2e-3, hint=hint)
    return passed("lost_fraction matches a real FP16 SGD step at lr = 0.1, 0.01 and 0.001.")


def check_adam_eps(answer: float) -> bool:
    """The smallest power of ten ``10^-k`` that is not 0 in FP16 (1e-7)."""
    require_answer(answer, "`answer`")
    if not isinstance(answer, (int, float)) or isinstance(answer, bool):
        fail(f"answer should be a number such as 1e-3, got {answer!r}.")
    if answer == 1e-8:
        fail("1e-8 is Adam's default and is exactly what becomes 0.0 in FP16.")
    if answer <= 0 or not math.isclose(math.log10(answer), round(math.log10(answer)), abs_tol=1e-9):
        fail(
            f"{answer!r} is not a power of ten 10^-k; the question asks for the smallest "
            "power of ten that FP16 does not turn into 0."
        )
    expected = next(10.0**-k for k in range(12, 0, -1) if torch.tensor(10.0**-k).half() != 0)
    expect_equal(
        answer,
        expected,
        "smallest power of ten that FP16 keeps",
        rtol=1e-9,
        hint="FP16 flushes values <= 2^-25 (about 3e-8) to zero; try torch.tensor(x).half().",
    )
    return passed("that is the smallest power of ten FP16 keeps (as a subnormal).")


def _adam_first_step_finite(
    g: torch.Tensor, beta2: float = 0.999, eps: float = 1e-8
) -> torch.Tensor:
    """Where one pure-FP16 ``torch.optim.Adam`` step with gradient ``g`` leaves ``w`` finite."""
    p = torch.nn.Parameter(torch.full_like(g, 0.1))
    p.grad = g.clone()
    torch.optim.Adam([p], lr=1e-3, betas=(0.9, beta2), eps=eps, foreach=False).step()
    return torch.isfinite(p.detach())


def check_adam_survivors(survivors: Callable[[torch.Tensor, float, float], torch.Tensor]) -> bool:
    """``survivors(g, beta2, eps)``: a bool tensor, True where a first pure-FP16 Adam step
    (``torch.optim.Adam(lr=1e-3, betas=(0.9, beta2), eps=eps)``) leaves ``w`` finite.

    Checked on settings the chapter did not show: random ``beta2`` in
    {0.99, 0.995, 0.999, 0.9999} and ``eps`` in {1e-8, 1e-7, 1e-4} (1e-8 is 0 in FP16, the
    other two are not), against a real step. Gradients within 3% of the threshold
    ``sqrt(2^-25 / (1 - beta2))`` are left out, so that a derivation that rounds slightly
    differently from torch still passes. An answer that runs an optimizer is refused (the
    exercise is to derive it). Wrong answers are diagnosed: a threshold on ``g`` itself,
    ``g^2`` without the factor ``1 - beta2``, the chapter's 5.5e-3 reused for another beta2,
    ``eps`` ignored or trusted.
    """
    require_answer(survivors, "`survivors`")
    if uses_names(survivors, {"Adam", "AdamW", "optim"}):
        fail("survivors runs an optimizer; derive it from v = (1 - beta2) g^2 and eps instead.")
    gen = torch.Generator().manual_seed(5)
    settings = [(0.999, 1e-8)]  # the chapter's case first, then unseen ones
    beta2s, epss = (0.99, 0.995, 0.999, 0.9999), (1e-8, 1e-7, 1e-4)
    while len(settings) < 5:
        pick = (
            beta2s[int(torch.randint(4, (1,), generator=gen))],
            epss[int(torch.randint(3, (1,), generator=gen))],
        )
        if pick not in settings:
            settings.append(pick)
    settings.append((0.99, 1e-4))  # an eps that FP16 keeps: nothing breaks
    for beta2, eps in settings:
        sizes = torch.exp2(torch.empty(2000).uniform_(-20, 0, generator=gen))
        signs = torch.where(torch.rand(2000, generator=gen) < 0.5, -1.0, 1.0)
        g = sizes * signs
        threshold = math.sqrt(2.0**-25 / (1 - beta2))
        g = g[(g.abs() - threshold).abs() > 0.03 * threshold]
        g[::10] = 0.0
        g16 = g.half()
        where = (
            f"survivors(g, beta2={beta2}, eps={eps:g}) with {g16.numel()} random FP16 "
            "gradients between 2^-20 and 1, one in ten exactly 0"
        )
        got = call_answer(survivors, g16.clone(), beta2, eps, what="survivors")
        if not isinstance(got, torch.Tensor) or got.dtype != torch.bool:
            fail(f"{where} should return a bool tensor, got {_short_value(got)}.")
        if got.shape != g16.shape:
            fail(f"{where} returned shape {tuple(got.shape)}, expected {tuple(g16.shape)}.")
        expected = _adam_first_step_finite(g16, beta2, eps)
        if torch.equal(got.cpu(), expected):
            continue
        wrong = (got.cpu() != expected).nonzero().flatten()
        first = int(wrong[0])
        gi = float(g16[first])
        advice = _adam_diagnosis(g16, got.cpu(), beta2, eps)
        fail(
            f"{where}: wrong for {len(wrong)} of {g16.numel()} gradients, e.g. g = {gi:.3g}: "
            f"expected {bool(expected[first])}, got {bool(got[first])}. Hint: {advice}"
        )
    return passed(
        f"survivors() matches a real pure-FP16 Adam step for {len(settings)} settings of beta2 "
        "and eps, unseen ones included."
    )


def _short_value(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {str(x.dtype).replace('torch.', '')} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _adam_diagnosis(g16: torch.Tensor, got: torch.Tensor, beta2: float, eps: float) -> str:
    g = g16.float()
    eps_kept = torch.tensor(eps).half().item() != 0
    guesses = {
        "eps = 1e-8 is 0 in FP16 (chapter 02), so sqrt(v) + eps is 0 wherever v is 0.": (
            torch.ones_like(got)
        ),
        "the gradient itself fits in FP16; what underflows is v = (1 - beta2) g^2, "
        "the second moment of the first step.": g != 0,
        "g^2 alone is not Adam's v: at the first step v = (1 - beta2) g^2.": (g * g).half() != 0,
        "5.5e-3 is the threshold for beta2 = 0.999 only: v = (1 - beta2) g^2 moves it.": (
            g.abs() > 5.46e-3
        ),
        f"eps = {eps:g} is not 0 in FP16: sqrt(v) + eps > 0 everywhere, so no step divides "
        "by zero.": ((1 - beta2) * g * g).half() != 0,
    }
    if eps_kept:  # then ignoring eps is the likeliest mistake: name it first
        guesses.pop("eps = 1e-8 is 0 in FP16 (chapter 02), so sqrt(v) + eps is 0 wherever v is 0.")
        guesses = dict(reversed(list(guesses.items())))
    for advice, guess in guesses.items():
        if torch.equal(got, guess):
            return advice
    return (
        "at the first step m = 0.1 g and v = (1 - beta2) g^2 are stored in FP16, and so is eps: "
        "the update m_hat / (sqrt(v_hat) + eps) is finite unless the denominator is 0 "
        "(m/0 = inf, 0/0 = NaN)."
    )


# ---- chapter 02, exercise 1: the band of updates that FP16 swallows around a weight ----

_TOP = 0x7BFF  # the bit pattern of 65504, FP16's largest finite value


def _lost_band_reference(w: float) -> tuple[float, float, bool]:
    """Half the gap to each FP16 neighbour of ``w`` (> 0, finite) and whether ties stay at w."""
    bits = int(torch.tensor(w, dtype=torch.float64).half().view(torch.int16).item())
    below = torch.tensor(bits - 1, dtype=torch.int16).view(torch.float16).item()
    down = (w - below) / 2
    up = (
        16.0
        if bits == _TOP
        else (torch.tensor(bits + 1, dtype=torch.int16).view(torch.float16).item() - w) / 2
    )  # from 65504 + 16 = 65520 on, FP16 rounds to inf
    return down, up, bits % 2 == 0  # a tie goes to the neighbour whose last bit is 0


_BAND_CASES = [  # (w, what it teaches when the answer is wrong there)
    (1.0, "just below a power of two the spacing is half as large: 2^-11 below 1, 2^-10 above."),
    (
        1025.0,
        "1025 is odd (its last mantissa bit is 1): a tie rounds to the even neighbour, "
        "away from 1025, so an update of exactly half a gap survives there.",
    ),
    (
        1024.0,
        "1024 is a power of two: the gap below is 0.5, the gap above is 1; its last "
        "mantissa bit is 0, so ties come back to 1024 (lost).",
    ),
    (2.0**-20, "2^-20 is a subnormal: FP16's subnormals are all 2^-24 apart, on both sides."),
    (
        2.0**-14,
        "at 2^-14, the smallest normal, the gap below (to the largest subnormal) is "
        "2^-24, the same as the gap above.",
    ),
    (
        2.0**-24,
        "below the smallest subnormal 2^-24 comes 0, a gap of 2^-24; 2^-24's last bit "
        "is 1, so the tie 2^-25 rounds to the even neighbour, 0: the update survives.",
    ),
    (
        65504.0,
        "above 65504 there is no finite neighbour: FP16 rounds to inf from 65520 on, "
        "so the lost band above 65504 is 16, and the tie 65520 becomes inf (it survives).",
    ),
]


def _band_hint(w: float, got: tuple, expected: tuple, lesson: str) -> str:
    if got[0] == 2 * expected[0] and got[1] == 2 * expected[1]:
        return "an update is lost up to *half* the gap to the neighbour (round to nearest)."
    return lesson


def check_lost_band(lost_band: Callable[[float], tuple[float, float, bool]]) -> bool:
    """``lost_band(w) -> (down, up, ties_lost)`` for a positive finite FP16 value ``w``.

    An update ``u`` with ``-down < u < up`` leaves ``w`` unchanged in FP16, one beyond
    changes it; ``ties_lost`` says whether ``u = up`` and ``u = -down`` are lost too.
    Hand-picked cases (powers of two, odd values, subnormals, 65504), then 300 random FP16
    values, new every run.
    """
    require_answer(lost_band, "`lost_band`")
    rng = random.Random()
    cases = list(_BAND_CASES) + [
        (torch.tensor(rng.randrange(1, _TOP + 1), dtype=torch.int16).view(torch.float16).item(), "")
        for _ in range(300)
    ]
    for w, lesson in cases:
        where = f"lost_band({w!r})"
        got = call_answer(lost_band, w, what="lost_band")
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            fail(f"{where} should return three values (down, up, ties_lost), got {got!r}.")
        down, up, ties = (float(got[0]), float(got[1]), bool(got[2]))
        expected = _lost_band_reference(w)
        if (down, up) != expected[:2]:
            hint = _band_hint(w, (down, up), expected, lesson)
            expect_equal((down, up), expected[:2], where + " (down, up)", hint=hint)
        if ties != expected[2]:
            hint = lesson or (
                "a tie rounds to the neighbour whose last mantissa bit is 0: it stays at w "
                "exactly when w's own last bit is 0."
            )
            expect_equal(ties, expected[2], where + " ties_lost", hint=hint)
    return passed(
        f"lost_band() gives the swamping band of {len(_BAND_CASES)} hand-picked FP16 weights "
        "and 300 random ones, ties included."
    )


# ---- chapter 03, exercise 2: the smallest loss scale that rescues the gradients ----


def _smallest_scale_reference(grads: torch.Tensor, max_lost: float) -> float | None:
    nonzero = grads[grads != 0].double()
    if nonzero.numel() == 0:
        return 1.0
    for k in range(0, 200):
        scaled = (nonzero * 2.0**k).half()  # one rounding, as the FP16 backward pass stores it
        if torch.isinf(scaled).any():
            return None  # a larger scale only overflows more
        if (scaled == 0).double().mean().item() <= max_lost:
            return 2.0**k
    return None


def _random_gradients(gen: torch.Generator, low: float, high: float, n: int = 4000):
    g = torch.randn(n, generator=gen) * torch.exp2(
        torch.empty(n).uniform_(low, high, generator=gen)
    )
    g[::6] = 0  # ReLUs and max-pools leave exact zeros
    return g


def _first_scale(lost_share: Callable[[torch.Tensor], float], max_lost: float) -> float:
    """The first S = 2^k whose ``lost_share(S)`` is at most ``max_lost`` (a wrong rule's S)."""
    return next((2.0**k for k in range(200) if lost_share(2.0**k) <= max_lost), math.nan)


def _scale_hint(grads: torch.Tensor, max_lost: float, got: object, expected: object) -> str:
    g, nz = grads.double(), grads != 0
    if expected is None:
        return (
            "with this scale the largest gradients overflow to inf in FP16: when every scale "
            "that saves the small ones overflows the large ones, return None."
        )
    if isinstance(got, (int, float)) and got == math.log2(expected):
        return "return the scale S = 2^k itself, not its exponent k."
    wrong_rules = {
        "values between 2^-25 and 2^-24 round *up* to 2^-24: let the cast decide, "
        "(S * g).half() == 0.": lambda s: ((g[nz] * s).abs() < 2.0**-24).double().mean().item(),
        "count the lost share among the *nonzero* gradients only (divide by their number): "
        "exact zeros stay zero at any scale.": lambda s: (
            (((g * s).half() == 0) & nz).double().mean().item()
        ),
        "exact zeros are not lost gradients: they stay zero at any scale; count only the "
        "nonzero ones.": lambda s: ((g * s).half() == 0).double().mean().item(),
    }
    for advice, rule in wrong_rules.items():
        if got == _first_scale(rule, max_lost):
            return advice
    return (
        "try S = 1, 2, 4, ... and keep the first one whose FP16 cast loses at most max_lost "
        "of the nonzero gradients and overflows none."
    )


def check_smallest_scale(smallest_scale: Callable[[torch.Tensor, float], float | None]) -> bool:
    """``smallest_scale(grads, max_lost)``: the smallest power of two ``S >= 1`` whose product
    with the FP32 gradients, cast to FP16, loses at most ``max_lost`` of the nonzero values to
    0 and overflows none; ``None`` when no such ``S`` exists. Random gradients, new every run.
    """
    require_answer(smallest_scale, "`smallest_scale`")
    gen = torch.Generator().manual_seed(random.Random().randrange(2**31))
    cases = [
        (
            "4000 gradients of 2^-12 to 2^-2 (all FP16 normals)",
            _random_gradients(gen, -12, -2),
            0.0,
        ),
        ("4000 gradients of 2^-38 to 2^-8", _random_gradients(gen, -38, -8), 0.01),
        ("4000 gradients of 2^-34 to 2^-12", _random_gradients(gen, -34, -12), 0.0),
        ("4000 gradients of 2^-40 to 2^-14", _random_gradients(gen, -40, -14), 0.1),
        (
            "4000 gradients of 2^-40 to 2^10 (no scale fits both ends)",
            _random_gradients(gen, -40, 10),
            0.0,
        ),
    ]
    for text, grads, max_lost in cases:
        where = f"smallest_scale({text}, max_lost={max_lost})"
        got = call_answer(smallest_scale, grads.clone(), max_lost, what="smallest_scale")
        expected = _smallest_scale_reference(grads, max_lost)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if got != expected:
            expect_equal(got, expected, where, hint=_scale_hint(grads, max_lost, got, expected))
    return passed(
        "smallest_scale() finds the loss scale on five random sets of gradients, one that no "
        "scale fits included."
    )
