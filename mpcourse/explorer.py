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


FIELD_COLORS = {"sign": "#e76f51", "exponent": "#2a9d8f", "mantissa": "#457b9d"}
OFF_COLOR = "#eeeeee"


def _shown(value: float) -> str:
    return repr(value) if math.isfinite(value) else str(value)  # "inf", "-inf", "nan"


class BitExplorer:
    """The widgets behind :func:`bit_explorer`, with their state, so tests can drive them.

    One ``Button`` per bit (ipywidgets 8's ``ToggleButton`` has no ``button_color``
    style: a colour set on it is silently ignored), coloured by field when the bit is 1
    and grey when it is 0; a format menu; a text box holding the value the bits encode
    (text, so that ``inf`` and ``nan`` can be shown and typed).
    """

    def __init__(self, fmt: FloatFormat = FP16, value: float = 1.0) -> None:
        import ipywidgets as w

        self._w = w
        self.formats = {f.name: f for f in FORMATS}
        self.fmt = fmt
        self.bits = encode(value, fmt)
        self.menu = w.Dropdown(options=list(self.formats), value=fmt.name, description="format")
        self.typed = w.Text(
            value="", description="value", continuous_update=False, layout=w.Layout(width="260px")
        )
        self.row = w.HBox()
        self.out = w.HTML()
        self.buttons: list = []
        self._syncing = False
        self.menu.observe(lambda change: self.set_format(change["new"]), names="value")
        self.typed.observe(lambda change: self.set_value(change["new"]), names="value")
        self.render()
        self.widget = w.VBox([w.HBox([self.menu, self.typed]), self.row, self.out])

    def field_of(self, i: int) -> str:
        """``"sign"``, ``"exponent"`` or ``"mantissa"`` for bit ``i`` (0 = leftmost)."""
        return "sign" if i == 0 else "exponent" if i <= self.fmt.exponent_bits else "mantissa"

    @property
    def value(self) -> float:
        return decode(self.bits, self.fmt)

    def render(self) -> None:
        f = self.fmt
        self.buttons = []
        for i in range(f.bits):
            bit = (self.bits >> (f.bits - 1 - i)) & 1
            b = self._w.Button(
                description=str(bit),
                tooltip=f"{self.field_of(i)} bit",
                layout=self._w.Layout(width="30px", padding="0"),
            )
            b.style.button_color = FIELD_COLORS[self.field_of(i)] if bit else OFF_COLOR
            b.on_click(lambda _button, i=i: self.flip(i))
            self.buttons.append(b)
        self.row.children = self.buttons
        self._syncing = True  # show the encoded value without re-encoding it
        self.typed.value = _shown(self.value)
        self._syncing = False
        self.out.value = f"<pre>{explain(bits=self.bits, fmt=f)}</pre>"

    def flip(self, i: int) -> None:
        self.bits ^= 1 << (self.fmt.bits - 1 - i)
        self.render()

    def set_format(self, name: str) -> None:
        """Keep the value, show its encoding (rounded, as a cast would) in the new format."""
        old, self.fmt = self.fmt, self.formats[name]
        self.bits = encode(decode(self.bits, old), self.fmt)
        if self.menu.value != name:
            self.menu.value = name
        self.render()

    def set_value(self, text: str) -> None:
        if self._syncing:
            return
        try:
            number = float(text)
        except ValueError:
            self.out.value = f"<pre>not a number: {text!r} (try 0.1, 1e-5, inf, nan)</pre>"
            return
        self.bits = encode(number, self.fmt)
        self.render()


def static_html(bits: int, fmt: FloatFormat) -> str:
    """The explorer's state as a static HTML figure: coloured bits and the derivation.

    It travels with the widget in the cell's output (``text/html``), so a page
    rendered without a kernel (the book, GitHub) shows the figure, with a note that
    it is live in JupyterLab.
    """
    cells = []
    for i in range(fmt.bits):
        bit = (bits >> (fmt.bits - 1 - i)) & 1
        field = "sign" if i == 0 else "exponent" if i <= fmt.exponent_bits else "mantissa"
        color = FIELD_COLORS[field] if bit else OFF_COLOR
        cells.append(
            f'<span title="{field} bit" style="display:inline-block;width:22px;'
            f"text-align:center;margin:1px;background:{color};color:{'#fff' if bit else '#000'};"
            f'font-family:monospace">{bit}</span>'
        )
    return (
        '<div class="mpcourse-bit-explorer">'
        f"<div>{''.join(cells)}</div><pre>{explain(bits=bits, fmt=fmt)}</pre>"
        "<p><em>A static picture of the bit explorer: run the notebook in JupyterLab to flip "
        "the bits, change the format and type a value.</em></p></div>"
    )


def bit_explorer(fmt: FloatFormat = FP16, value: float = 1.0):
    """An ipywidgets panel: one button per bit, a format menu, a box to type a value.

    Returns the widget (display it as a cell's last expression). Needs a live
    Jupyter kernel; its output also carries :func:`static_html` of the starting
    state, which pages rendered without a kernel show instead.
    """
    import ipywidgets as w

    explorer = BitExplorer(fmt, value)

    class _Panel(w.VBox):
        def _repr_mimebundle_(self, **kwargs):
            bundle = super()._repr_mimebundle_(**kwargs)
            if bundle is not None:
                bundle["text/html"] = static_html(explorer.bits, explorer.fmt)
            return bundle

    return _Panel(list(explorer.widget.children))
