"""Where FP16 arithmetic breaks: overflow, underflow, rounding, swamping, accumulation.

Each limit of chapter 02 as a small function that computes it from the
format (``mpcourse.formats``) and can be checked against torch's own casts:

* overflow: values at or above :func:`overflow_threshold` (65520 for FP16) become inf;
* underflow: values at or below :func:`underflow_threshold` (2^-25) become 0;
* rounding and swamping: ``w + u == w`` once ``|u|`` is at most half an ulp of ``w``
  (:func:`update_threshold`), i.e. once ``w / u`` passes about 2048 (:func:`swamping_ratio`);
* accumulation: long sums in FP16 stagnate (:func:`sequential_sum`), FP32
  accumulation, Kahan and pairwise summation do not;
* softmax and variance overflow in FP16 unless written in their stable forms;
* Adam's ``eps = 1e-8`` rounds to 0 in FP16.

Taught in course/02_fp16_limits.ipynb.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .formats import BF16, FP16, FP32, FloatFormat, round_to, spacing

__all__ = [
    "format_of",
    "overflow_threshold",
    "underflow_threshold",
    "update_threshold",
    "update_survives",
    "swamping_ratio",
    "sequential_sum",
    "kahan_sum",
    "pairwise_sum",
    "accumulation_errors",
    "naive_softmax",
    "stable_softmax",
    "naive_variance",
    "stable_variance",
    "rounded_eps",
    "relative_error",
]

_FORMATS = {torch.float16: FP16, torch.bfloat16: BF16, torch.float32: FP32}
_NUMPY = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def relative_error(x: torch.Tensor, approx: torch.Tensor) -> float:
    """$\\|\\hat x - x\\|_2 / \\|x\\|_2$, in FP64; 0.0 when ``approx`` equals ``x`` (zero included),
    inf when only ``x`` is zero. The signal-to-noise ratio in dB is $-20\\log_{10}$ of it.

    The package's one error measure for a rounded, quantized or low-precision result
    (:mod:`mpcourse.inference` and :mod:`mpcourse.mx` use it).

    Taught in course/11_inference.ipynb and course/14_microscaling.ipynb.
    """
    x64, a64 = x.double(), approx.double()
    diff = (a64 - x64).norm().item()
    if diff == 0:
        return 0.0
    norm = x64.norm().item()
    return diff / norm if norm else float("inf")


def format_of(dtype: torch.dtype | FloatFormat) -> FloatFormat:
    """The :class:`~mpcourse.formats.FloatFormat` of a torch dtype (float16, bfloat16, float32).

    Taught in course/02_fp16_limits.ipynb.
    """
    if isinstance(dtype, FloatFormat):
        return dtype
    if dtype not in _FORMATS:
        raise ValueError(
            f"unsupported dtype {dtype!r}: use torch.float16, torch.bfloat16 or torch.float32 "
            "(or a mpcourse.formats.FloatFormat)"
        )
    return _FORMATS[dtype]


def overflow_threshold(dtype: torch.dtype | FloatFormat = torch.float16) -> float:
    """Smallest magnitude that rounds to infinity: ``max + ulp(max) / 2``.

    With ``M`` mantissa bits, ``max = (2 - 2^-M) 2^emax`` and values from
    ``(2 - 2^-(M+1)) 2^emax`` on round up past it (the tie goes to the even
    neighbour, which is "infinity"). FP16: 65504 is the max, 65520 becomes inf,
    65519 still rounds down to 65504.

    Taught in course/02_fp16_limits.ipynb.
    """
    fmt = format_of(dtype)
    return math.ldexp(2.0 - 2.0 ** -(fmt.mantissa_bits + 1), fmt.emax)


def underflow_threshold(dtype: torch.dtype | FloatFormat = torch.float16) -> float:
    """Largest magnitude that rounds to zero: half the smallest subnormal.

    ``min_subnormal = 2^(emin - M)`` (2^-24 ~ 6e-8 in FP16); values ``<= 2^(emin - M - 1)``
    (2^-25 in FP16: the tie rounds to the even neighbour, 0) are flushed to zero,
    anything larger rounds to at least ``2^-24``.

    Taught in course/02_fp16_limits.ipynb.
    """
    return format_of(dtype).min_subnormal / 2


def update_threshold(w: torch.Tensor | float, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Half the spacing above ``|w|`` in ``dtype``: the size an update must exceed to change ``w``.

    For ``2^e <= |w| < 2^(e+1)`` the next value up is ``ulp = 2^(e - M)`` away, so
    ``round(w + u) == w`` whenever ``|u| < ulp / 2``; at exactly ``ulp / 2`` ties
    go to the even neighbour (``w`` itself when its last mantissa bit is 0).
    FP16, ``w = 1``: ``2^-11``, so ``1 + 2^-11 == 1``. Returned as float64.

    Taught in course/02_fp16_limits.ipynb.
    """
    fmt = format_of(dtype)
    return spacing(torch.as_tensor(w, dtype=torch.float64), fmt) / 2


def update_survives(
    w: torch.Tensor | float, update: torch.Tensor | float, dtype: torch.dtype = torch.float16
) -> torch.Tensor:
    """Whether ``w + update``, stored in ``dtype``, differs from ``w`` stored in ``dtype``.

    Computes ``round(round(w) + update) != round(w)`` with the sum formed exactly
    (float64) and rounded once, as a fused ``p.add_(update)`` on an FP16 tensor
    does. A zero update never survives. Returns a bool tensor.

    Taught in course/02_fp16_limits.ipynb.
    """
    fmt = format_of(dtype)
    w = round_to(torch.as_tensor(w, dtype=torch.float64), fmt)
    new = round_to(w + torch.as_tensor(update, dtype=torch.float64), fmt)
    return new != w


def swamping_ratio(dtype: torch.dtype | FloatFormat = torch.float16) -> float:
    """``2^(M+1)``: once ``|w / u|`` exceeds this, the update ``u`` may be lost; 2048 in FP16.

    ``ulp(w) / 2 = 2^(e - M - 1)`` and ``2^e <= |w| < 2^(e+1)``, so an update with
    ``|w / u| < 2^(M+1)`` always changes ``w``, one with ``|w / u| > 2^(M+2)``
    (4096) never does, and in between it depends on where ``w`` sits in its binade.

    Taught in course/02_fp16_limits.ipynb.
    """
    return 2.0 ** (format_of(dtype).mantissa_bits + 1)


def _as_numpy(x: torch.Tensor | np.ndarray, dtype: torch.dtype) -> np.ndarray:
    if dtype not in _NUMPY:
        raise ValueError(
            f"sequential sums support torch.float16, torch.float32 and torch.float64, got {dtype}"
        )
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"expected a non-empty 1-D sequence of numbers, got shape {x.shape}")
    return x.astype(np.float64).astype(_NUMPY[dtype])


def sequential_sum(
    x: torch.Tensor | np.ndarray,
    dtype: torch.dtype = torch.float16,
    accumulate: torch.dtype | None = None,
) -> float:
    """``s_k = round_acc(s_{k-1} + x_k)``: a left-to-right sum, rounded after every addition.

    The inputs are first stored in ``dtype``; the running sum is kept in
    ``accumulate`` (default: ``dtype``). ``accumulate=torch.float32`` is "FP16
    storage, FP32 accumulation", what tensor cores and torch's own ``sum`` do.
    In FP16 the sum stagnates: once ``s`` reaches ``2048 x`` every new ``x``
    is below half an ulp of ``s`` and is swamped.

    Taught in course/02_fp16_limits.ipynb.
    """
    values = _as_numpy(x, dtype)
    acc = dtype if accumulate is None else accumulate
    if acc not in _NUMPY:
        raise ValueError(f"accumulate must be torch.float16, float32 or float64, got {acc}")
    values = values.astype(_NUMPY[acc])
    return float(np.add.accumulate(values, dtype=values.dtype)[-1])


def kahan_sum(x: torch.Tensor | np.ndarray, dtype: torch.dtype = torch.float16) -> float:
    """Kahan's compensated sum, every operation rounded to ``dtype``.

    ``y = x_k - c; t = s + y; c = (t - s) - y; s = t``: ``c`` keeps the low-order
    bits that ``s + y`` just lost and feeds them back into the next addition,
    so the error stays ``O(eps)`` instead of growing with ``n``. (A Python
    loop: fine for the ``n <= 10^5`` of the course.)

    Taught in course/02_fp16_limits.ipynb.
    """
    values = _as_numpy(x, dtype)
    t_ = values.dtype.type
    s, c = t_(0), t_(0)
    for v in values:
        y = t_(v - c)
        t = t_(s + y)
        c = t_(t_(t - s) - y)
        s = t
    return float(s)


def pairwise_sum(x: torch.Tensor, dtype: torch.dtype = torch.float16) -> float:
    """Pairwise (tree) summation in ``dtype``: add neighbours, halve, repeat.

    Every addition is rounded to ``dtype``, but each value takes part in only
    ``ceil(log2 n)`` additions, so the error grows like ``O(eps log n)``
    instead of ``O(eps n)``. (An odd element out is padded with 0.)

    Taught in course/02_fp16_limits.ipynb.
    """
    v = torch.as_tensor(x).detach().flatten().to(torch.float64).to(dtype)
    if v.numel() == 0:
        raise ValueError("pairwise_sum needs at least one value")
    while v.numel() > 1:
        if v.numel() % 2:
            v = torch.cat([v, v.new_zeros(1)])
        v = v[0::2] + v[1::2]
    return float(v[0])


def accumulation_errors(
    ns: list[int] | tuple[int, ...], *, seed: int = 0, kahan: bool = True
) -> dict[str, list[float]]:
    """Relative error of summing ``n`` FP16 values ``x_i ~ U(0, 1)``, for each ``n`` in ``ns``.

    The reference is the exact (float64) sum of the FP16-rounded inputs, so only
    the accumulation error is measured: ``|s - s_exact| / s_exact`` for
    ``"fp16"`` (sequential FP16), ``"fp32 accumulate"``, ``"pairwise fp16"`` and
    (``kahan=True``) ``"kahan fp16"``, and ``"exact, rounded to fp16"``: the best
    any method that returns an FP16 number can do (error up to ``2^-11``).
    Same ``seed``, same numbers.

    Taught in course/02_fp16_limits.ipynb.
    """
    if not ns or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in ns):
        raise ValueError(f"ns must be a non-empty list of positive ints, got {ns!r}")
    gen = torch.Generator().manual_seed(seed)
    data = torch.rand(max(ns), generator=gen, dtype=torch.float64).half()
    out: dict[str, list[float]] = {"fp16": [], "fp32 accumulate": [], "pairwise fp16": []}
    if kahan:
        out["kahan fp16"] = []
    out["exact, rounded to fp16"] = []
    for n in ns:
        x = data[:n]
        exact = float(x.double().sum())
        results = {
            "fp16": sequential_sum(x, torch.float16),
            "fp32 accumulate": sequential_sum(x, torch.float16, accumulate=torch.float32),
            "pairwise fp16": pairwise_sum(x, torch.float16),
        }
        if kahan:
            results["kahan fp16"] = kahan_sum(x, torch.float16)
        results["exact, rounded to fp16"] = float(torch.tensor(exact).half())
        for key, value in results.items():
            out[key].append(abs(value - exact) / exact)
    return out


def naive_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``exp(x_i) / sum_j exp(x_j)`` computed literally, in ``x``'s dtype.

    In FP16 ``exp(x)`` overflows for ``x > ln 65504 ~ 11.09``, and inf / inf is NaN.

    Taught in course/02_fp16_limits.ipynb.
    """
    e = torch.exp(x)
    return e / e.sum(dim=dim, keepdim=True)


def stable_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``exp(x_i - m) / sum_j exp(x_j - m)`` with ``m = max_j x_j``, in ``x``'s dtype.

    Mathematically the same function (the factor ``exp(-m)`` cancels), but every
    exponent is ``<= 0``, so ``exp`` lies in ``(0, 1]`` and cannot overflow; the
    largest term is exactly 1, so the sum cannot underflow to 0 either.

    Taught in course/02_fp16_limits.ipynb.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"stable_softmax needs a floating-point tensor, got {type(x).__name__}")
    m = x.amax(dim=dim, keepdim=True)
    e = torch.exp(x - m)
    return e / e.sum(dim=dim, keepdim=True)


def naive_variance(x: torch.Tensor) -> torch.Tensor:
    """``mean(x^2) - mean(x)^2`` (population variance), computed in ``x``'s dtype.

    In FP16 ``x^2`` overflows as soon as ``|x| > 255.9`` (``256^2 = 65536``), and for
    data with a large mean the subtraction cancels all significant digits.

    Taught in course/02_fp16_limits.ipynb.
    """
    return (x * x).mean() - x.mean() ** 2


def stable_variance(x: torch.Tensor) -> torch.Tensor:
    """Two-pass variance ``mean((x - mean(x))^2)``, in ``x``'s dtype.

    Centering first keeps the squares as small as the spread of the data, so
    nothing overflows unless the spread itself is above ~256.

    Taught in course/02_fp16_limits.ipynb.
    """
    d = x - x.mean()
    return (d * d).mean()


def rounded_eps(eps: float = 1e-8, dtype: torch.dtype = torch.float16) -> float:
    """``eps`` as stored in ``dtype``: Adam's default ``1e-8`` is 0.0 in FP16.

    ``1e-8 < 2^-25 ~ 2.98e-8`` (FP16's underflow threshold), so ``sqrt(v) + eps``
    adds nothing and a zero ``v`` gives a division by zero. BF16 keeps it (its
    smallest subnormal is ~9e-41).

    Taught in course/02_fp16_limits.ipynb.
    """
    return float(torch.tensor(eps, dtype=torch.float64).to(dtype))
