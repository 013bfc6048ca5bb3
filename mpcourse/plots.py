"""Figures for the float formats: bit layouts, where the values lie, their spacing.

Each function draws on a new (or given) matplotlib Axes and returns it, so a
notebook cell can add to it or just call ``plt.show()``.

Taught in course/01_float_formats.ipynb.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

from .formats import FORMATS, FloatFormat, round_to, spacing

COLORS = {"sign": "#e76f51", "exponent": "#2a9d8f", "mantissa": "#457b9d"}


def _axes(ax: Axes | None, size: tuple[float, float]) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=size)
    return ax


def plot_bit_layouts(formats: Sequence[FloatFormat] = FORMATS, ax: Axes | None = None) -> Axes:
    """One row per format: a box per bit, coloured sign / exponent / mantissa."""
    ax = _axes(ax, (11, 0.55 * len(formats) + 0.8))
    for row, fmt in enumerate(formats):
        y = len(formats) - 1 - row
        kinds = ["sign"] + ["exponent"] * fmt.exponent_bits + ["mantissa"] * fmt.mantissa_bits
        for i, kind in enumerate(kinds):
            ax.add_patch(Rectangle((i, y + 0.1), 0.92, 0.8, color=COLORS[kind]))
        ax.text(-0.5, y + 0.5, fmt.name, ha="right", va="center", fontsize=10)
        ax.text(
            fmt.bits + 0.4,
            y + 0.5,
            f"1 + {fmt.exponent_bits} + {fmt.mantissa_bits} = {fmt.bits} bits",
            va="center",
            fontsize=9,
        )
    for kind, color in COLORS.items():
        ax.add_patch(Rectangle((0, 0), 0, 0, color=color, label=kind))
    ax.set_xlim(-5, 40)
    ax.set_ylim(-0.2, len(formats) + 0.2)
    ax.axis("off")
    ax.legend(loc="lower right", ncol=1, frameon=False, fontsize=9)
    ax.set_title("Bit layouts (most significant bit on the left)")
    return ax


def representable_values(fmt: FloatFormat, lo: float, hi: float) -> torch.Tensor:
    """Every positive finite value of ``fmt`` in ``[lo, hi]`` (small formats only)."""
    if fmt.bits > 16:
        raise ValueError(f"{fmt.name} has too many values to enumerate; use a format of <= 16 bits")
    count = 2 ** (fmt.exponent_bits + fmt.mantissa_bits)
    exponent = torch.arange(count) // 2**fmt.mantissa_bits
    fraction = (torch.arange(count) % 2**fmt.mantissa_bits).double() / 2**fmt.mantissa_bits
    values = torch.where(
        exponent == 0,
        fraction * 2.0**fmt.emin,
        (1 + fraction) * torch.exp2((exponent - fmt.bias).double()),
    )
    values = values[(values <= fmt.max) & (values >= lo) & (values <= hi)]
    return values


def plot_number_line(
    fmt: FloatFormat, lo: float = 0.0, hi: float = 8.0, ax: Axes | None = None
) -> Axes:
    """Tick marks at every representable value of ``fmt`` between ``lo`` and ``hi``.

    Red lines mark the powers of two that start each normal binade; the grey
    band is the subnormal range (evenly spaced, fewer values).
    """
    ax = _axes(ax, (11, 1.4))
    values = representable_values(fmt, lo, hi)
    ax.axvspan(lo, min(fmt.min_normal, hi), color="#dddddd", label="subnormal")
    ax.vlines(values.numpy(), 0, 1, linewidth=0.8, color=COLORS["mantissa"])
    first = math.ceil(math.log2(max(lo, fmt.min_normal)))
    for p in range(first, math.floor(math.log2(hi)) + 1):
        ax.axvline(2.0**p, ymin=0, ymax=1, color=COLORS["sign"], linewidth=1.2)
    ax.set_yticks([])
    ax.set_xlim(lo, hi)
    ax.set_title(
        f"{fmt.name}: {len(values)} values in [{lo:g}, {hi:g}]; red lines at powers of two: "
        f"each normal binade holds {2**fmt.mantissa_bits} values, so the spacing doubles",
        fontsize=10,
    )
    return ax


def plot_spacing(
    formats: Sequence[FloatFormat] = FORMATS,
    lo: float = 2.0**-26,
    hi: float = 2.0**17,
    ax: Axes | None = None,
) -> Axes:
    """Spacing between neighbouring values (one ulp) against magnitude, log-log, per format.

    The default window, $[2^{-26}, 2^{17}]$, covers FP16's and FP8's whole range.
    """
    ax = _axes(ax, (9, 4.5))
    styles = ["-", "--", "-", "-.", "-", ":"]
    for i, fmt in enumerate(formats):
        top = min(hi, fmt.max)
        x = torch.exp2(torch.linspace(math.log2(lo), math.log2(top), 4000, dtype=torch.float64))
        x = round_to(x, fmt).double().unique()
        x = x[torch.isfinite(x) & (x > 0)]
        ulp = spacing(x, fmt)
        ax.step(
            x.numpy(),
            ulp.numpy(),
            where="post",
            label=fmt.name,
            linestyle=styles[i % len(styles)],
            linewidth=1.6,
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlim(lo, hi)
    ax.grid(True, which="major", alpha=0.3)
    ax.set_xlabel("|x|")
    ax.set_ylabel("gap to the next value (ulp)")
    ax.set_title("Precision: the gap doubles with every power of two (flat where subnormal)")
    ax.legend(fontsize=8)
    return ax


def plot_ranges(formats: Sequence[FloatFormat] = FORMATS, ax: Axes | None = None) -> Axes:
    """Horizontal bars: subnormal range, normal range, on a log2 axis."""
    ax = _axes(ax, (9, 0.5 * len(formats) + 1))
    for row, fmt in enumerate(formats):
        y = len(formats) - 1 - row
        sub, norm, top = (math.log2(fmt.min_subnormal), fmt.emin, math.log2(fmt.max))
        ax.barh(y, norm - sub, left=sub, color="#bbbbbb", label="subnormal" if row == 0 else None)
        ax.barh(
            y, top - norm, left=norm, color=COLORS["exponent"], label="normal" if row == 0 else None
        )
    ax.set_yticks(range(len(formats)), [f.name for f in reversed(formats)])
    ax.set_xlabel("log2 |x|")
    ax.set_title("Range of each format (powers of two)")
    ax.legend(loc="lower right", fontsize=8)
    return ax


ACCUMULATION_STYLES = {
    "fp16": "#e76f51",
    "fp32 accumulate": "#264653",
    "pairwise fp16": "#2a9d8f",
    "kahan fp16": "#e9c46a",
    "exact, rounded to fp16": "grey",
}


def accumulation_table(ns: Sequence[int], errors: dict[str, list[float]]) -> str:
    """The relative errors of :func:`mpcourse.numerics.accumulation_errors` as a text table,
    one row per ``n``, one column per method (2 significant digits).

    Taught in course/02_fp16_limits.ipynb.
    """
    if any(len(v) != len(ns) for v in errors.values()):
        raise ValueError("errors must hold one value per n for every method")
    lines = [f"{'n':>7}" + "".join(f"{k:>24}" for k in errors)]
    for i, n in enumerate(ns):
        lines.append(f"{n:>7}" + "".join(f"{errors[k][i]:>24.2e}" for k in errors))
    return "\n".join(lines)


def plot_accumulation_errors(
    ns: Sequence[int], errors: dict[str, list[float]], ax: Axes | None = None
) -> Axes:
    """Relative error against the number of terms, log-log, one line per summation method
    (errors of exactly 0 are drawn at 1e-9).

    Taught in course/02_fp16_limits.ipynb.
    """
    ax = _axes(ax, (9.5, 3.5))
    for key, values in errors.items():
        ls = ":" if key.startswith("exact") else "-"
        color = ACCUMULATION_STYLES.get(key)
        ax.loglog(ns, [max(e, 1e-9) for e in values], ls, color=color, marker="o", ms=3, label=key)
    ax.set_xlabel("number of terms n")
    ax.set_ylabel("relative error (0 drawn at 1e-9)")
    ax.set_title("Summing n values of U(0,1) stored in FP16")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax
