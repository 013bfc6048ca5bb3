"""Binary floating-point formats from their bits: FP32, TF32, FP16, BF16, FP8, FP6, FP4.

A format with ``E`` exponent bits and ``M`` mantissa (fraction) bits stores
a sign ``s``, a biased exponent ``e`` and a fraction ``f`` and means

* normal numbers (``0 < e < all ones``): $(-1)^s \\cdot 2^{e - bias} \\cdot (1 + f / 2^M)$
* subnormals (``e == 0``): $(-1)^s \\cdot 2^{1 - bias} \\cdot (f / 2^M)$
* ``e == all ones``: infinities (``f == 0``) and NaN, in IEEE-like formats.

"fn" formats (FP8 E4M3) have no infinities: the all-ones exponent holds
normal numbers too, and only the all-ones pattern means NaN. The OCP MX
element formats FP6 (E2M3, E3M2) and FP4 (E2M1) have neither infinities nor
NaN (``nan=False``): every pattern is a number and overflow saturates to
$\\pm$max.

:func:`round_to` rounds float values to the nearest representable value
(ties to even), which is what torch's casts to FP16, BF16 and FP8 do; it is
tested bit for bit against them. (TF32 is different in hardware: the PTX
conversion rounds ties away from zero and tensor cores fed FP32 directly
truncate; ``round_to(x, TF32)`` models the round-to-nearest-even choice.)
:func:`round_stochastic` rounds to one of the two neighbours at random,
unbiased on average (taught in course/14_microscaling.ipynb).

Taught in course/01_float_formats.ipynb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import torch

__all__ = [
    "FloatFormat",
    "FP32",
    "TF32",
    "FP16",
    "BF16",
    "FP8_E4M3",
    "FP8_E5M2",
    "FP6_E2M3",
    "FP6_E3M2",
    "FP4_E2M1",
    "FORMATS",
    "MX_ELEMENT_FORMATS",
    "round_to",
    "round_stochastic",
    "neighbours",
    "fields",
    "bit_string",
    "decode",
    "encode",
    "spacing",
    "format_table",
]


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: 1 sign bit, ``exponent_bits``, ``mantissa_bits``.

    ``finite=True`` makes an "fn" format (no infinities; only the all-ones
    pattern is NaN), like FP8 E4M3; ``finite=True, nan=False`` makes a format
    without NaN either (FP6, FP4): every pattern is a number. ``bias``
    defaults to $2^{E-1} - 1$. ``torch_dtype`` names the torch dtype with the
    same layout, if any.
    """

    exponent_bits: int
    mantissa_bits: int
    name: str = ""
    finite: bool = False
    bias_override: int | None = None
    torch_dtype: torch.dtype | None = None
    nan: bool = True

    def __post_init__(self) -> None:
        e, m = self.exponent_bits, self.mantissa_bits
        if not isinstance(e, int) or isinstance(e, bool) or not 2 <= e <= 11:
            raise ValueError(
                f"exponent_bits must be an integer from 2 to 11 (got {e!r}): a format needs "
                "at least 2 exponent bits for normal numbers, and values are computed in float64"
            )
        if not isinstance(m, int) or isinstance(m, bool) or not 0 <= m <= 52:
            raise ValueError(f"mantissa_bits must be an integer from 0 to 52 (got {m!r})")
        if not self.nan and not self.finite:
            raise ValueError("a format without NaN (nan=False) must also be finite=True (no inf)")
        if self.finite and self.nan and m == 0:
            raise ValueError("an fn format (finite=True) needs mantissa_bits >= 1 to encode NaN")
        if not self.name:
            object.__setattr__(self, "name", f"E{e}M{m}{'fn' if self.finite else ''}")
        if self.emin > self.emax:
            raise ValueError(f"bias {self.bias} leaves no normal exponents for {self.name}")

    # --- layout -----------------------------------------------------------
    @property
    def bits(self) -> int:
        """Total width: sign + exponent + mantissa."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        """Exponent bias: stored exponent minus bias is the power of two."""
        if self.bias_override is not None:
            return self.bias_override
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def emin(self) -> int:
        """Smallest normal exponent: $1 - bias$."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Largest normal exponent (the all-ones field is usable in fn formats)."""
        top = 2**self.exponent_bits - 1
        return (top if self.finite else top - 1) - self.bias

    # --- range and precision ------------------------------------------------
    @property
    def max(self) -> float:
        """Largest finite value: $(2 - 2^{-M}) \\cdot 2^{emax}$ (one ulp less in fn formats)."""
        m = self.mantissa_bits
        top_fraction = (2**m - 2) if self.finite and self.nan else (2**m - 1)
        return math.ldexp(1 + top_fraction / 2**m, self.emax)

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value: $2^{emin}$."""
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value: $2^{emin - M}$."""
        return math.ldexp(1.0, self.emin - self.mantissa_bits)

    @property
    def eps(self) -> float:
        """Gap between 1 and the next value: $2^{-M}$."""
        return math.ldexp(1.0, -self.mantissa_bits)

    @property
    def decimal_digits(self) -> float:
        """Significant decimal digits: $\\log_{10} 2^{M+1}$."""
        return (self.mantissa_bits + 1) * math.log10(2)

    @property
    def has_inf(self) -> bool:
        return not self.finite

    def __repr__(self) -> str:
        return (
            f"FloatFormat({self.name}: 1 sign, {self.exponent_bits} exponent, "
            f"{self.mantissa_bits} mantissa bits)"
        )


FP32 = FloatFormat(8, 23, "FP32", torch_dtype=torch.float32)
TF32 = FloatFormat(8, 10, "TF32")
FP16 = FloatFormat(5, 10, "FP16", torch_dtype=torch.float16)
BF16 = FloatFormat(8, 7, "BF16", torch_dtype=torch.bfloat16)
FP8_E4M3 = FloatFormat(4, 3, "FP8_E4M3", finite=True, torch_dtype=torch.float8_e4m3fn)
FP8_E5M2 = FloatFormat(5, 2, "FP8_E5M2", torch_dtype=torch.float8_e5m2)
FORMATS = (FP32, TF32, FP16, BF16, FP8_E4M3, FP8_E5M2)
FP6_E2M3 = FloatFormat(2, 3, "FP6_E2M3", finite=True, nan=False)
FP6_E3M2 = FloatFormat(3, 2, "FP6_E3M2", finite=True, nan=False)
FP4_E2M1 = FloatFormat(2, 1, "FP4_E2M1", finite=True, nan=False)
MX_ELEMENT_FORMATS = (FP8_E4M3, FP8_E5M2, FP6_E2M3, FP6_E3M2, FP4_E2M1)


def _check_format(fmt: object) -> FloatFormat:
    if not isinstance(fmt, FloatFormat):
        names = ", ".join(f.name for f in FORMATS)
        raise TypeError(f"expected a FloatFormat such as {names}; got {type(fmt).__name__}")
    return fmt


def _as_float_tensor(x: object) -> tuple[torch.Tensor, torch.dtype]:
    """Accept float tensors and Python numbers; return (float64 work copy, output dtype)."""
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise TypeError(
                f"round_to needs a floating-point tensor, got dtype {x.dtype}: "
                "convert with x.float() first"
            )
        if x.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            x = x.float()
        out = torch.float64 if x.dtype == torch.float64 else torch.float32
        return x.double(), out
    if isinstance(x, bool) or not isinstance(x, (Real, list, tuple)):
        raise TypeError(
            f"expected a float tensor, a real number or a list of numbers; got {type(x).__name__}"
        )
    try:
        t = torch.tensor(x, dtype=torch.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"could not read {x!r} as numbers: {err}") from err
    return t, torch.float64


def _exponent(a: torch.Tensor) -> torch.Tensor:
    """floor(log2(a)) for positive finite a (float64), exactly, via frexp."""
    _, e = torch.frexp(a)
    return e.to(torch.float64) - 1


def round_to(x: torch.Tensor | float, fmt: FloatFormat, saturate: bool = False) -> torch.Tensor:
    """Round each value of ``x`` to the nearest value representable in ``fmt``.

    Round to nearest, ties to even; subnormals kept; values that round past
    ``fmt.max`` become $\\pm\\infty$ (NaN in fn formats), or $\\pm$``fmt.max``
    when ``saturate=True``. NaN stays NaN, $\\pm\\infty$ stays $\\pm\\infty$
    (NaN in fn formats, $\\pm$max when saturating). Signed zeros are kept.

    A float32 (or float16/bfloat16) tensor gives a float32 tensor; a float64
    tensor or Python number is rounded once, directly, and gives float64.

    Formats without NaN (FP6, FP4: ``nan=False``) always saturate: overflow and
    $\\pm\\infty$ become $\\pm$max, as ml_dtypes' casts do; a NaN input stays
    NaN in the float32 result (the format has no NaN code: ml_dtypes turns it
    into 0, which would hide it).

    The algorithm: with $e = \\max(\\lfloor\\log_2|x|\\rfloor, e_{min})$ the
    spacing of representable values around ``x`` is $q = 2^{e-M}$, so the
    answer is $\\mathrm{round\\_half\\_even}(|x| / q) \\cdot q$.
    """
    fmt = _check_format(fmt)
    a64, out_dtype = _as_float_tensor(x)
    mag = a64.abs()
    finite = torch.isfinite(a64)
    safe = torch.where(finite & (mag > 0), mag, torch.ones_like(mag))
    e = torch.clamp(_exponent(safe), min=fmt.emin)
    q = torch.exp2(e - fmt.mantissa_bits)
    r = torch.round(safe / q) * q  # torch.round rounds half to even
    r = torch.where(mag > 0, r, torch.zeros_like(r))
    over = r > fmt.max
    if saturate or not fmt.nan:
        r = torch.where(over | torch.isinf(a64), torch.full_like(r, fmt.max), r)
    else:
        overflow_value = math.nan if fmt.finite else math.inf
        r = torch.where(over, torch.full_like(r, overflow_value), r)
        if fmt.finite:
            r = torch.where(torch.isinf(a64), torch.full_like(r, math.nan), r)
        else:
            r = torch.where(torch.isinf(a64), mag, r)
    r = torch.where(torch.isnan(a64), a64, r)
    return torch.copysign(r, a64).to(out_dtype)


def spacing(x: torch.Tensor | float, fmt: FloatFormat) -> torch.Tensor:
    """Distance from ``x`` (rounded to ``fmt``) to the next larger magnitude: one ulp.

    $\\mathrm{ulp}(x) = 2^{\\max(\\lfloor\\log_2|x|\\rfloor, e_{min}) - M}$; for 0 it is the
    smallest subnormal. Infinite and NaN inputs give NaN.
    """
    fmt = _check_format(fmt)
    r = round_to(x, fmt).double()
    mag = r.abs()
    safe = torch.where(torch.isfinite(mag) & (mag > 0), mag, torch.ones_like(mag))
    e = torch.clamp(_exponent(safe), min=fmt.emin)
    u = torch.exp2(e - fmt.mantissa_bits)
    u = torch.where(mag == 0, torch.full_like(u, fmt.min_subnormal), u)
    return torch.where(torch.isfinite(mag), u, torch.full_like(u, math.nan))


def _neighbours64(a64: torch.Tensor, fmt: FloatFormat) -> tuple[torch.Tensor, torch.Tensor]:
    mag = a64.abs()
    ok = torch.isfinite(a64) & (mag <= fmt.max)
    safe = torch.where(ok & (mag > 0), mag, torch.ones_like(mag))
    q = torch.exp2(torch.clamp(_exponent(safe), min=fmt.emin) - fmt.mantissa_bits)
    low = torch.floor(torch.where(ok, mag, 0.0) / q) * q
    high = torch.where(low == mag, low, low + q)
    low, high = torch.where(ok, low, math.nan), torch.where(ok, high, math.nan)
    return torch.copysign(low, a64), torch.copysign(high, a64)


def neighbours(x: torch.Tensor | float, fmt: FloatFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """The two values of ``fmt`` around each ``x``: ``(toward_zero, away_from_zero)``.

    With the spacing $q = 2^{\\max(\\lfloor\\log_2|x|\\rfloor, e_{min}) - M}$ they are
    $\\lfloor |x|/q \\rfloor q$ and that plus $q$, with the sign of ``x``; both equal
    ``x`` when it is representable. Defined for finite $|x| \\le$ ``fmt.max``
    (other values give NaN); same dtypes as :func:`round_to`.

    Taught in course/14_microscaling.ipynb.
    """
    fmt = _check_format(fmt)
    a64, out_dtype = _as_float_tensor(x)
    low, high = _neighbours64(a64, fmt)
    return low.to(out_dtype), high.to(out_dtype)


def round_stochastic(
    x: torch.Tensor | float,
    fmt: FloatFormat,
    *,
    generator: torch.Generator | None = None,
    saturate: bool = False,
) -> torch.Tensor:
    """Round each value to one of its two :func:`neighbours` in ``fmt``, at random.

    With $lo \\le |x| \\le hi$ the neighbours (in magnitude) and
    $p = (|x| - lo) / (hi - lo)$, the result is $hi$ with probability $p$ and
    $lo$ otherwise, so $E[\\mathrm{round}(x)] = x$: unbiased, unlike round to
    nearest, which loses every update smaller than half a spacing.
    Representable values are unchanged; values beyond ``fmt.max``, inf and NaN
    are rounded as :func:`round_to` rounds them (``saturate`` as there).
    ``generator`` (a ``torch.Generator`` on ``x``'s device) makes the draws
    reproducible.

    Taught in course/14_microscaling.ipynb.
    """
    fmt = _check_format(fmt)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    a64, out_dtype = _as_float_tensor(x)
    low, high = _neighbours64(a64, fmt)
    gap = high - low
    p = torch.where(gap != 0, (a64 - low) / torch.where(gap != 0, gap, 1.0), 0.0)
    u = torch.rand(a64.shape, generator=generator, dtype=torch.float64, device=a64.device)
    r = torch.where(u < p, high, low)
    if bool(torch.isnan(r).any()):  # beyond max, inf or NaN: as round_to
        r = torch.where(torch.isnan(r), round_to(a64, fmt, saturate=saturate), r)
    return r.to(out_dtype)


def fields(
    x: torch.Tensor | float, fmt: FloatFormat
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (sign, biased exponent, mantissa) integer fields of ``round_to(x, fmt)``.

    NaN is encoded as the format's canonical NaN, keeping its sign bit: quiet
    NaN (top mantissa bit) in IEEE-like formats, exponent and mantissa all ones
    in fn formats (so E4M3 has two NaNs, ``S.1111.111`` with either sign).
    """
    fmt = _check_format(fmt)
    r = round_to(x, fmt).double()
    if not fmt.nan and bool(torch.isnan(r).any()):
        raise ValueError(f"{fmt.name} has no NaN encoding: the input holds NaN")
    m_bits = fmt.mantissa_bits
    sign = torch.signbit(r).to(torch.int64)
    mag = r.abs()
    nan, inf = torch.isnan(r), torch.isinf(r)
    safe = torch.where(torch.isfinite(mag) & (mag > 0), mag, torch.ones_like(mag))
    e = _exponent(safe)
    normal = (mag >= fmt.min_normal) & ~nan & ~inf
    exp_field = torch.where(normal, e + fmt.bias, torch.zeros_like(e))
    frac = torch.where(
        normal,
        (safe / torch.exp2(e) - 1) * 2**m_bits,
        mag.nan_to_num(0.0, posinf=0.0) / fmt.min_subnormal,
    )
    all_ones_exp = 2**fmt.exponent_bits - 1
    if fmt.finite:
        nan_mantissa = 2**m_bits - 1
    else:
        nan_mantissa = 2 ** (m_bits - 1) if m_bits > 0 else 0
    exp_field = torch.where(nan | inf, torch.full_like(e, all_ones_exp), exp_field)
    frac = torch.where(inf, torch.zeros_like(frac), frac)
    frac = torch.where(nan, torch.full_like(frac, nan_mantissa), frac)
    return sign, exp_field.to(torch.int64), frac.to(torch.int64)


def encode(x: float, fmt: FloatFormat) -> int:
    """The bit pattern of ``x`` rounded to ``fmt``, as an unsigned integer."""
    s, e, m = (int(t.reshape(-1)[0]) for t in fields(_scalar(x), fmt))
    return (s << (fmt.bits - 1)) | (e << fmt.mantissa_bits) | m


def decode(bits: int | str, fmt: FloatFormat) -> float:
    """The value a bit pattern means in ``fmt``.

    ``bits`` is an unsigned integer or a string of 0/1 (spaces and
    underscores ignored), e.g. ``decode("0 01111 0000000000", FP16) == 1.0``.
    """
    fmt = _check_format(fmt)
    if isinstance(bits, str):
        text = bits.replace(" ", "").replace("_", "")
        if len(text) != fmt.bits or set(text) - {"0", "1"}:
            raise ValueError(
                f"{fmt.name} needs a string of exactly {fmt.bits} zeros and ones "
                f"(spaces allowed), got {bits!r}"
            )
        bits = int(text, 2)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits < 2**fmt.bits:
        raise ValueError(
            f"{fmt.name} bit patterns are integers from 0 to {2**fmt.bits - 1}, got {bits!r}"
        )
    m_bits = fmt.mantissa_bits
    sign = -1.0 if bits >> (fmt.bits - 1) else 1.0
    exp_field = (bits >> m_bits) & (2**fmt.exponent_bits - 1)
    frac = bits & (2**m_bits - 1)
    all_ones = 2**fmt.exponent_bits - 1
    if exp_field == all_ones and fmt.nan:
        if fmt.finite:
            if frac == 2**m_bits - 1:
                return math.nan
        else:
            return sign * math.inf if frac == 0 else math.nan
    if exp_field == 0:
        return sign * math.ldexp(frac / 2**m_bits, fmt.emin)
    return sign * math.ldexp(1 + frac / 2**m_bits, exp_field - fmt.bias)


def _scalar(value: object) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"expected a single number, got a tensor of shape {tuple(value.shape)}"
            )
        return value.reshape(1)
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"expected a real number, got {type(value).__name__} {value!r}")
    return torch.tensor([float(value)], dtype=torch.float64)


def bit_string(value: float | torch.Tensor, fmt: FloatFormat) -> str:
    """Sign, exponent and mantissa bits of ``value`` rounded to ``fmt``.

    >>> bit_string(1.0, FP16)
    '0 01111 0000000000'
    """
    fmt = _check_format(fmt)
    s, e, m = (int(t.reshape(-1)[0]) for t in fields(_scalar(value), fmt))
    mant = format(m, f"0{fmt.mantissa_bits}b") if fmt.mantissa_bits else ""
    return f"{s} {e:0{fmt.exponent_bits}b} {mant}".rstrip()


def format_table(formats: tuple[FloatFormat, ...] = FORMATS) -> str:
    """A plain-text table of each format's layout, range and precision."""
    header = (
        f"{'format':<9} {'bits':>4} {'exp':>3} {'man':>3} {'bias':>5} {'max':>11} "
        f"{'min normal':>11} {'min subnormal':>13} {'eps':>10} {'digits':>6}"
    )
    rows = [header, "-" * len(header)]
    for f in formats:
        rows.append(
            f"{f.name:<9} {f.bits:>4} {f.exponent_bits:>3} {f.mantissa_bits:>3} {f.bias:>5} "
            f"{f.max:>11.4g} {f.min_normal:>11.4g} {f.min_subnormal:>13.4g} {f.eps:>10.3g} "
            f"{f.decimal_digits:>6.2f}"
        )
    return "\n".join(rows)
