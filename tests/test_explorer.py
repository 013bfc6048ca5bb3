"""The bit explorer, driven from Python as a student drives it in the browser."""

import math

import pytest
import torch

from mpcourse.explorer import FIELD_COLORS, OFF_COLOR, BitExplorer, bit_explorer, explain
from mpcourse.formats import BF16, FP8_E4M3, FP16, FP32


def colors(ex: BitExplorer) -> list[str]:
    return [b.style.button_color for b in ex.buttons]


def expected_colors(ex: BitExplorer) -> list[str]:
    text = format(ex.bits, f"0{ex.fmt.bits}b")
    return [FIELD_COLORS[ex.field_of(i)] if c == "1" else OFF_COLOR for i, c in enumerate(text)]


def test_bits_are_coloured_by_field_with_a_style_that_exists():
    ex = BitExplorer(FP16, -1.5)  # 1 01111 1000000000
    assert [b.description for b in ex.buttons] == list("1011111000000000")
    assert "button_color" in ex.buttons[0].style.keys  # ToggleButton's style has no such key
    assert colors(ex) == expected_colors(ex)
    assert colors(ex)[:3] == [FIELD_COLORS["sign"], OFF_COLOR, FIELD_COLORS["exponent"]]
    assert colors(ex)[6] == FIELD_COLORS["mantissa"] and len(set(FIELD_COLORS.values())) == 3


def test_clicking_a_bit_flips_it_and_updates_value_box_and_colours():
    ex = BitExplorer(FP16, 1.0)  # 0 01111 0000000000
    ex.buttons[0].click()  # the sign
    assert ex.value == -1.0 and ex.typed.value == "-1.0"
    ex.buttons[6].click()  # the top mantissa bit: 1.5
    assert ex.value == -1.5 and ex.typed.value == "-1.5"
    assert colors(ex) == expected_colors(ex) and ex.buttons[6].description == "1"
    for i in range(1, 6):  # exponent all ones, mantissa nonzero: NaN
        if ex.buttons[i].description == "0":
            ex.buttons[i].click()
    assert ex.typed.value == "nan" and "NaN" in ex.out.value


@pytest.mark.parametrize("fmt", [BF16, FP8_E4M3, FP32])
def test_switching_format_shows_the_value_in_the_new_format(fmt):
    ex = BitExplorer(FP16, 0.1)
    ex.menu.value = fmt.name  # what the dropdown does in the browser
    expected = torch.tensor(0.1).to(torch.float16).float()
    cast = {"BF16": torch.bfloat16, "FP8_E4M3": torch.float8_e4m3fn, "FP32": torch.float32}
    expected = float(expected.to(cast[fmt.name]).float())
    assert ex.fmt is fmt and ex.value == expected
    assert float(ex.typed.value) == expected  # not the old FP16 value any more
    assert len(ex.buttons) == fmt.bits and colors(ex) == expected_colors(ex)


def test_typing_a_value_encodes_it_and_shows_what_was_stored():
    ex = BitExplorer(FP16, 1.0)
    ex.typed.value = "70000"
    assert math.isinf(ex.value) and ex.typed.value == "inf"
    ex.typed.value = "0.1"
    assert ex.typed.value == "0.0999755859375"  # the FP16 value nearest to 0.1
    assert f"<pre>{explain(0.1, FP16)}</pre>" == ex.out.value
    bits = ex.bits
    ex.typed.value = "one"
    assert ex.bits == bits and "not a number" in ex.out.value


def test_bit_explorer_returns_a_displayable_widget():
    import ipywidgets

    assert isinstance(bit_explorer(FP16, 2.0), ipywidgets.VBox)
