"""An interactive bit explorer (ipywidgets) and its static twin, :func:`explain`.

Flip any bit of a value in FP32, TF32, FP16, BF16 or FP8 and see the value it
encodes, with the derivation spelled out. :func:`explain` prints the same
derivation as text, so the lesson also works where widgets do not (nbval, a
static render on GitHub).

Taught in course/01_float_formats.ipynb.
"""

from __future__ import annotations

import math

from .formats import FORMATS, FP16, FloatFormat, decode, encode


def _split(bits: int, fmt: FloatFormat) -> tuple[int, int, int]:
    m = fmt.mantissa_bits
    return bits >> (fmt.bits - 1), (bits >> m) & (2**fmt.exponent_bits - 1), bits & (2**m - 1)


def _bits_of(value: str | float | None, fmt: FloatFormat, bits: int | None) -> int:
    if bits is not None:
        if value is not None:
            raise TypeError("give either a value or bits=, not both")
        decode(bits, fmt)  # validates the integer pattern
        return bits
    if isinstance(value, str):
        text = value.replace(" ", "").replace("_", "")
        decode(text, fmt)  # validates length and characters
        return int(text, 2)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return encode(float(value), fmt)
    raise TypeError(
        "give a number (its encoding is explained), a bit string such as '0 01111 0000000000', "
        f"or an integer pattern as bits=...; got {type(value).__name__}"
    )


def explain(
    value: str | float | None = None, fmt: FloatFormat = FP16, *, bits: int | None = None
) -> str:
    """How a bit pattern turns into a value, step by step.

    ``value`` is a number (rounded to ``fmt`` first, like a cast; values past
    the max become inf, or NaN in fn formats) or a bit string; ``bits=`` takes
    the pattern as an unsigned integer.
    """
    bits = _bits_of(value, fmt, bits)
    s, e, m = _split(bits, fmt)
    mbits = fmt.mantissa_bits
    e_text = format(e, f"0{fmt.exponent_bits}b")
    m_text = format(m, f"0{mbits}b") if mbits else ""
    lines = [f"{fmt.name} bits: {s} {e_text} {m_text}".rstrip()]
    lines.append(f"  sign     {s}  -> {'-' if s else '+'}")
    result = decode(bits, fmt)
    all_ones = 2**fmt.exponent_bits - 1
    if e == all_ones and not fmt.finite:
        kind = "infinity" if m == 0 else "NaN (not a number)"
        lines.append(f"  exponent {e_text} = all ones -> {kind}")
    elif fmt.finite and e == all_ones and m == 2**mbits - 1:
        lines.append(f"  exponent and mantissa all ones -> NaN ({fmt.name} has no infinities)")
    elif e == 0:
        lines.append(
            f"  exponent {e_text} = 0 -> subnormal: 2^(1 - {fmt.bias}) = 2^{fmt.emin}, "
            "no implicit leading 1"
        )
        lines.append(f"  mantissa {m_text} = {m} -> 0 + {m}/2^{mbits} = {m / 2**mbits:.10g}")
        lines.append(
            f"  value = {'-' if s else ''}2^{fmt.emin} * {m / 2**mbits:.10g} = {result:.10g}"
        )
    else:
        lines.append(f"  exponent {e_text} = {e} -> 2^({e} - {fmt.bias}) = 2^{e - fmt.bias}")
        lines.append(
            f"  mantissa {m_text or '(none)'} = {m} -> 1 + {m}/2^{mbits} = {1 + m / 2**mbits:.10g}"
        )
        lines.append(
            f"  value = {'-' if s else ''}2^{e - fmt.bias} * {1 + m / 2**mbits:.10g} "
            f"= {result:.10g}"
        )
    if math.isnan(result) or math.isinf(result):
        lines.append(f"  value = {result}")
    return "\n".join(lines)


def bit_explorer(fmt: FloatFormat = FP16, value: float = 1.0):
    """An ipywidgets panel: one toggle per bit, a format menu, a box to type a value.

    Returns the widget (display it as a cell's last expression). Needs a live
    Jupyter kernel; :func:`explain` is the static fallback.
    """
    import ipywidgets as w

    state = {"fmt": fmt, "bits": encode(value, fmt)}
    formats = {f.name: f for f in FORMATS}
    menu = w.Dropdown(options=list(formats), value=fmt.name, description="format")
    typed = w.FloatText(value=value, description="value", layout=w.Layout(width="220px"))
    row = w.HBox()
    out = w.HTML()

    def render() -> None:
        f, bits = state["fmt"], state["bits"]
        colors = ["#e76f51"] + ["#2a9d8f"] * f.exponent_bits + ["#457b9d"] * f.mantissa_bits
        buttons = []
        for i in range(f.bits):
            bit = (bits >> (f.bits - 1 - i)) & 1
            b = w.ToggleButton(
                value=bool(bit), description=str(bit), layout=w.Layout(width="30px", padding="0")
            )
            b.style.button_color = colors[i] if bit else "#eeeeee"
            b.observe(lambda change, i=i: flip(i), names="value")
            buttons.append(b)
        row.children = buttons
        out.value = f"<pre>{explain(bits=bits, fmt=f)}</pre>"

    def flip(i: int) -> None:
        f = state["fmt"]
        state["bits"] ^= 1 << (f.bits - 1 - i)
        value = decode(state["bits"], f)
        state["syncing"] = True  # show the new value without re-encoding it
        typed.value = value if math.isfinite(value) else typed.value
        state["syncing"] = False
        render()

    def on_format(change) -> None:  # keep the value, show its encoding in the new format
        state["fmt"] = formats[change["new"]]
        state["bits"] = encode(decode(state["bits"], formats[change["old"]]), state["fmt"])
        render()

    def on_value(change) -> None:
        if state.get("syncing"):
            return
        state["bits"] = encode(float(change["new"]), state["fmt"])
        render()

    menu.observe(on_format, names="value")
    typed.observe(on_value, names="value")
    render()
    return w.VBox([w.HBox([menu, typed]), row, out])
