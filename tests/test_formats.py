"""mpcourse.formats against torch's casts, bit for bit, and against torch.finfo."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mpcourse.formats import (
    BF16,
    FORMATS,
    FP8_E4M3,
    FP8_E5M2,
    FP16,
    FP32,
    TF32,
    FloatFormat,
    bit_string,
    decode,
    encode,
    fields,
    format_table,
    round_to,
    spacing,
)

TORCH_16 = [(FP16, torch.float16), (BF16, torch.bfloat16)]
TORCH_FP8 = [(FP8_E4M3, torch.float8_e4m3fn), (FP8_E5M2, torch.float8_e5m2)]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise: identical float32 bit patterns, or both NaN."""
    return (a.view(torch.int32) == b.view(torch.int32)) | (a.isnan() & b.isnan())


def all_patterns(dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(2**16, dtype=torch.int32).to(torch.int16).view(dtype).float()


# --- exhaustive and randomised equality with torch -------------------------


@pytest.mark.parametrize("fmt,dtype", TORCH_16, ids=["fp16", "bf16"])
def test_all_16bit_patterns_round_to_themselves_like_torch(fmt, dtype):
    values = all_patterns(dtype)
    ours = round_to(values, fmt)
    assert ours.dtype == torch.float32
    assert same_bits(ours, values.to(dtype).float()).all()
    assert same_bits(ours, values).all()  # every encoding is a fixed point


@pytest.mark.parametrize("fmt,dtype", TORCH_16, ids=["fp16", "bf16"])
def test_midpoints_between_neighbours_round_half_to_even_like_torch(fmt, dtype):
    values = all_patterns(dtype)
    positive = values[(values >= 0) & torch.isfinite(values)].double().sort().values
    mids = ((positive[:-1] + positive[1:]) / 2).float()  # exact ties, representable in FP32
    mids = torch.cat([mids, -mids])
    assert same_bits(round_to(mids, fmt), mids.to(dtype).float()).all()
    # and just above/below each tie
    up = torch.nextafter(mids, torch.full_like(mids, math.inf))
    down = torch.nextafter(mids, torch.full_like(mids, -math.inf))
    for x in (up, down):
        assert same_bits(round_to(x, fmt), x.to(dtype).float()).all()


@pytest.fixture(scope="module")
def random_fp32() -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    bits = torch.randint(-(2**31), 2**31, (1_200_000,), generator=g, dtype=torch.int64)
    return bits.to(torch.int32).view(torch.float32)


@pytest.mark.parametrize("fmt,dtype", TORCH_16, ids=["fp16", "bf16"])
def test_a_million_random_fp32_patterns_match_torch(fmt, dtype, random_fp32):
    assert same_bits(round_to(random_fp32, fmt), random_fp32.to(dtype).float()).all()


@pytest.mark.parametrize("fmt,dtype", TORCH_FP8, ids=["e4m3", "e5m2"])
def test_fp8_matches_torch_within_range(fmt, dtype, random_fp32):
    x = random_fp32[random_fp32.abs() <= fmt.max]
    x = torch.cat([x, torch.linspace(-fmt.max, fmt.max, 100_001)])
    assert same_bits(round_to(x, fmt), x.to(dtype).float()).all()


@pytest.mark.parametrize("fmt,dtype", TORCH_FP8, ids=["e4m3", "e5m2"])
def test_all_fp8_patterns_are_fixed_points(fmt, dtype):
    values = torch.arange(256, dtype=torch.int16).to(torch.uint8).view(dtype).float()
    assert same_bits(round_to(values, fmt), values).all()
    s, e, m = fields(values, fmt)
    encoded = (s << (fmt.bits - 1)) | (e << fmt.mantissa_bits) | m
    finite = ~values.isnan()
    assert torch.equal(encoded[finite], torch.arange(256)[finite])


def test_e4m3_overflow_is_nan_unless_saturating_like_this_torch():
    x = torch.tensor([447.0, 464.0, 465.0, 480.0, 1e6, -1e6, math.inf])
    assert round_to(x, FP8_E4M3)[2:].isnan().all()
    assert round_to(x, FP8_E4M3)[1] == 448  # the tie 464 rounds to even (448)
    assert round_to(torch.tensor([math.inf]), FP8_E4M3, saturate=True).item() == 448
    # torch's float8_e4m3fn cast saturates in recent releases and gave NaN in older ones
    saturates = torch.tensor([1e6]).to(torch.float8_e4m3fn).float().item() == 448
    torch.testing.assert_close(
        round_to(x, FP8_E4M3, saturate=saturates),
        x.to(torch.float8_e4m3fn).float(),
        rtol=0,
        atol=0,
        equal_nan=True,
    )


def test_nan_keeps_its_sign_bit_like_torch_fp8():
    neg_nan = -torch.tensor([math.nan])
    s, e, m = fields(neg_nan, FP8_E4M3)
    encoded = int((s << 7) | (e << 3) | m)
    assert encoded == neg_nan.to(torch.float8_e4m3fn).view(torch.uint8).item() == 0xFF


def test_overflow_inf_or_saturate_and_underflow():
    x = torch.tensor([65504.0, 65519.0, 65520.0, -65520.0, 1e-8, -1e-8, 2.0**-25, 3e-8])
    r = round_to(x, FP16)
    assert r.tolist()[:4] == [65504.0, 65504.0, math.inf, -math.inf]
    assert r[4] == 0 and math.copysign(1, r[5].item()) == -1  # signed zero kept
    assert r[6] == 0  # the tie 2^-25 rounds to even: 0
    assert r[7] == 2.0**-24
    sat = round_to(x, FP16, saturate=True)
    assert sat.tolist()[2:4] == [65504.0, -65504.0]
    assert round_to(torch.tensor([65520.0]), FP8_E5M2).isinf().all()


def test_fp32_is_identity_and_float64_rounds_once():
    x = torch.randn(1000)
    assert torch.equal(round_to(x, FP32), x)
    # 1 + 2^-11 + 2^-30: rounding via float32 first would make it a tie and round down
    v = 1 + 2.0**-11 + 2.0**-30
    assert round_to(v, FP16).item() == 1 + 2.0**-10
    assert round_to(torch.tensor([v], dtype=torch.float32), FP16).item() == 1.0
    assert round_to([v], FP16).dtype == torch.float64


def test_tf32_rounds_mantissa_to_10_bits_keeping_fp32_range():
    x = torch.tensor([1 + 2.0**-11 + 2.0**-20, 3.0e38, 1e-40])
    r = round_to(x, TF32)
    assert r[0] == 1 + 2.0**-10
    assert torch.isfinite(r[1]) and r[2] > 0


# --- properties against torch.finfo -------------------------------------------


@pytest.mark.parametrize(
    "fmt", [f for f in FORMATS if f.torch_dtype is not None], ids=lambda f: f.name
)
def test_properties_match_finfo(fmt):
    fi = torch.finfo(fmt.torch_dtype)
    assert fmt.max == fi.max
    assert fmt.min_normal == fi.smallest_normal
    assert fmt.eps == fi.eps
    assert fmt.min_subnormal == fi.smallest_normal * fi.eps
    assert fmt.bits == fi.bits


def test_known_values_and_layouts():
    assert (FP16.bias, BF16.bias, FP8_E4M3.bias, FP8_E5M2.bias) == (15, 127, 7, 15)
    assert FP8_E4M3.max == 448 and FP8_E5M2.max == 57344
    assert TF32.bits == 19 and TF32.eps == FP16.eps and TF32.emax == FP32.emax
    assert FloatFormat(3, 2).max == 14 and FloatFormat(3, 2).name == "E3M2"
    assert "FP8_E4M3" in format_table() and len(format_table().splitlines()) == 2 + len(FORMATS)


# --- fields, bit strings, decode/encode ----------------------------------------


def test_bit_string_examples():
    assert bit_string(1.0, FP16) == "0 01111 0000000000"
    assert bit_string(-2.0, BF16) == "1 10000000 0000000"
    assert bit_string(65504, FP16) == "0 11110 1111111111"
    assert bit_string(2.0**-24, FP16) == "0 00000 0000000001"
    assert bit_string(math.inf, FP16) == "0 11111 0000000000"
    assert bit_string(math.nan, FP16) == "0 11111 1000000000"
    assert bit_string(math.nan, FP8_E4M3) == "0 1111 111"
    assert bit_string(-0.0, FP32) == "1 00000000 " + "0" * 23
    assert bit_string(torch.tensor(1.5), FP8_E5M2) == "0 01111 10"


def test_fields_and_encode_match_torch_bits_for_fp16():
    values = all_patterns(torch.float16)
    s, e, m = fields(values, FP16)
    encoded = (s << 15) | (e << 10) | m
    raw = torch.arange(2**16)
    finite = ~values.isnan()
    assert torch.equal(encoded[finite], raw[finite])
    assert encode(1.0, FP16) == 0x3C00 and encode(-0.0, FP16) == 0x8000


def test_decode_inverts_encode_on_every_fp16_pattern():
    for bits in range(0, 2**16, 97):
        value = decode(bits, FP16)
        if math.isnan(value):
            continue
        assert encode(value, FP16) == bits
    assert decode("0 01111 0000000000", FP16) == 1.0
    assert decode("0_1111_111", FP8_E4M3) != decode("0_1111_111", FP8_E4M3)  # NaN
    assert decode("0 1111 110", FP8_E4M3) == 448


def test_spacing_is_one_ulp():
    assert spacing(1.0, FP16).item() == 2.0**-10
    assert spacing(2048.0, FP16).item() == 2.0
    assert spacing(0.0, FP16).item() == 2.0**-24
    assert spacing(1e-7, FP16).item() == 2.0**-24
    assert math.isnan(spacing(math.inf, FP16).item())


# --- hypothesis: properties of rounding ------------------------------------------

finite_f32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
formats = st.sampled_from(FORMATS + (FloatFormat(3, 2), FloatFormat(6, 4, finite=True)))


@given(finite_f32, finite_f32, formats)
def test_round_to_is_monotonic(a, b, fmt):
    lo, hi = sorted((a, b))
    r = round_to(torch.tensor([lo, hi]), fmt, saturate=True)
    assert r[0] <= r[1]


@given(finite_f32, formats, st.booleans())
def test_round_to_is_idempotent(a, fmt, saturate):
    once = round_to(torch.tensor([a]), fmt, saturate=saturate)
    twice = round_to(once, fmt, saturate=saturate)
    assert same_bits(once, twice).all()


@given(finite_f32, formats)
def test_round_to_is_sign_symmetric(a, fmt):
    pos = round_to(torch.tensor([a]), fmt)
    neg = round_to(torch.tensor([-a]), fmt)
    assert same_bits(-pos, neg).all()


@given(finite_f32, formats)
def test_round_to_picks_a_nearest_neighbour(a, fmt):
    r = round_to(torch.tensor([a], dtype=torch.float64), fmt, saturate=True).item()
    if abs(a) <= fmt.max:
        # the error is at most half the gap between the neighbours around a
        assert abs(r - a) <= spacing(r, fmt).item() / 2
    else:
        assert abs(r) == fmt.max


# --- bad input ----------------------------------------------------------------------


def test_bad_input_is_rejected_with_clear_messages():
    with pytest.raises(TypeError, match="floating-point tensor"):
        round_to(torch.arange(3), FP16)
    with pytest.raises(TypeError, match="FloatFormat"):
        round_to(torch.ones(2), "fp16")
    with pytest.raises(TypeError, match="float tensor, a real number"):
        round_to("1.0", FP16)
    with pytest.raises(ValueError, match="exponent_bits must be an integer from 2 to 11"):
        FloatFormat(0, 10)
    with pytest.raises(ValueError, match="mantissa_bits"):
        FloatFormat(5, -1)
    with pytest.raises(ValueError, match="NaN"):
        FloatFormat(4, 0, finite=True)
    with pytest.raises(TypeError, match="real number"):
        bit_string("one", FP16)
    with pytest.raises(ValueError, match="single number"):
        bit_string(torch.ones(2), FP16)
    with pytest.raises(ValueError, match="exactly 16 zeros and ones"):
        decode("0 0111 0000000000", FP16)
    with pytest.raises(ValueError, match="from 0 to 255"):
        decode(256, FP8_E4M3)
