"""The OCP MX element formats (FP6 E2M3/E3M2, FP4 E2M1) vs ml_dtypes; stochastic rounding."""

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from mpcourse.formats import (
    BF16,
    FP4_E2M1,
    FP6_E2M3,
    FP6_E3M2,
    FP8_E4M3,
    FP8_E5M2,
    FP16,
    FloatFormat,
    bit_string,
    decode,
    encode,
    fields,
    neighbours,
    round_stochastic,
    round_to,
)

LOWBIT = [
    (FP6_E2M3, ml_dtypes.float6_e2m3fn),
    (FP6_E3M2, ml_dtypes.float6_e3m2fn),
    (FP4_E2M1, ml_dtypes.float4_e2m1fn),
]
IDS = ["e2m3", "e3m2", "e2m1"]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.view(torch.int32) == b.view(torch.int32)) | (a.isnan() & b.isnan())


def ml_cast(x: torch.Tensor, dtype) -> torch.Tensor:
    return torch.from_numpy(x.numpy().astype(dtype).astype(np.float32))


def all_codes(fmt, dtype) -> torch.Tensor:
    codes = np.arange(2**fmt.bits, dtype=np.uint8)
    return torch.from_numpy(codes.view(dtype).astype(np.float32))


@pytest.mark.parametrize("fmt,dtype", LOWBIT, ids=IDS)
def test_limits_match_ml_dtypes_finfo(fmt, dtype):
    info = ml_dtypes.finfo(dtype)
    assert fmt.max == float(info.max)
    assert fmt.min_normal == float(info.smallest_normal)
    assert fmt.min_subnormal == float(info.smallest_subnormal)
    assert fmt.eps == float(info.eps)
    assert not fmt.has_inf and not fmt.nan and fmt.bits == info.bits
    assert (FP6_E2M3.max, FP6_E3M2.max, FP4_E2M1.max) == (7.5, 28.0, 6.0)


@pytest.mark.parametrize("fmt,dtype", LOWBIT, ids=IDS)
def test_every_code_is_a_number_that_rounds_to_itself_and_encodes_back(fmt, dtype):
    values = all_codes(fmt, dtype)
    assert torch.isfinite(values).all()  # no inf, no NaN codes
    assert same_bits(round_to(values, fmt), values).all()
    s, e, m = fields(values, fmt)
    encoded = (s << (fmt.bits - 1)) | (e << fmt.mantissa_bits) | m
    assert torch.equal(encoded, torch.arange(2**fmt.bits))
    decoded = torch.tensor([decode(i, fmt) for i in range(2**fmt.bits)], dtype=torch.float32)
    assert same_bits(decoded, values).all()
    assert all(encode(float(v), fmt) == i for i, v in enumerate(values) if i != 2 ** (fmt.bits - 1))


@pytest.mark.parametrize("fmt,dtype", LOWBIT, ids=IDS)
def test_ties_and_their_neighbours_round_like_ml_dtypes(fmt, dtype):
    values = all_codes(fmt, dtype)
    positive = values[values >= 0].double().unique().sort().values
    mids = ((positive[:-1] + positive[1:]) / 2).float()
    beyond = torch.tensor([fmt.max * 1.01, fmt.max * 2, 1e30, 3.4e38])  # overflow saturates
    x = torch.cat([mids, -mids, beyond, -beyond])
    for t in (x, torch.nextafter(x, x + 1), torch.nextafter(x, x - 1)):
        assert same_bits(round_to(t, fmt), ml_cast(t, dtype)).all()


@pytest.mark.parametrize("fmt,dtype", LOWBIT, ids=IDS)
def test_400k_random_finite_fp32_patterns_match_ml_dtypes(fmt, dtype):
    g = torch.Generator().manual_seed(7)
    bits = torch.randint(-(2**31), 2**31, (400_000,), generator=g, dtype=torch.int64)
    x = bits.to(torch.int32).view(torch.float32)
    x = x[torch.isfinite(x)]
    x = torch.cat([x, torch.linspace(-2 * fmt.max, 2 * fmt.max, 100_001)])
    assert same_bits(round_to(x, fmt), ml_cast(x, dtype)).all()
    assert same_bits(round_to(x, fmt, saturate=True), ml_cast(x, dtype)).all()


@pytest.mark.parametrize("fmt,dtype", LOWBIT, ids=IDS)
def test_inf_saturates_like_ml_dtypes_and_nan_stays_nan(fmt, dtype):
    inf = torch.tensor([math.inf, -math.inf])
    assert same_bits(round_to(inf, fmt), ml_cast(inf, dtype)).all()
    assert round_to(inf, fmt).tolist() == [fmt.max, -fmt.max]
    # No NaN code: ml_dtypes turns NaN into 0; round_to keeps NaN visible in float32.
    assert ml_cast(torch.tensor([math.nan]), dtype).item() == 0
    assert round_to(torch.tensor([math.nan]), fmt).isnan().all()
    with pytest.raises(ValueError, match="no NaN encoding"):
        fields(torch.tensor([math.nan]), fmt)


def test_bit_strings_of_the_mx_element_formats():
    assert bit_string(6.0, FP4_E2M1) == "0 11 1"
    assert bit_string(-0.5, FP4_E2M1) == "1 00 1"
    assert bit_string(7.5, FP6_E2M3) == "0 11 111"
    assert bit_string(28.0, FP6_E3M2) == "0 111 11"
    assert decode("0 11 1", FP4_E2M1) == 6.0  # the all-ones exponent is a normal number


def test_a_format_without_nan_must_be_finite():
    with pytest.raises(ValueError, match="finite=True"):
        FloatFormat(2, 1, nan=False)
    assert FloatFormat(2, 1, finite=True, nan=False).max == 6.0


# --- neighbours and stochastic rounding -----------------------------------------------------

FORMATS_SR = [BF16, FP16, FP8_E4M3, FP8_E5M2, FP6_E2M3, FP6_E3M2, FP4_E2M1]


@pytest.mark.parametrize("fmt", FORMATS_SR, ids=lambda f: f.name)
def test_neighbours_bracket_x_and_are_adjacent_codes(fmt):
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(20_000, generator=g) * 2 - 1) * min(fmt.max, 1e4)
    low, high = neighbours(x, fmt)
    assert (low.abs() <= x.abs()).all() and (x.abs() <= high.abs()).all()
    assert same_bits(round_to(low, fmt), low).all() and same_bits(round_to(high, fmt), high).all()
    nearest = round_to(x, fmt)
    assert ((nearest == low) | (nearest == high)).all()
    mid = ((low.double() + high.double()) / 2).float()  # nothing representable strictly inside
    assert ((round_to(mid, fmt) == low) | (round_to(mid, fmt) == high)).all()


@pytest.mark.parametrize("fmt", FORMATS_SR, ids=lambda f: f.name)
def test_round_stochastic_gives_a_neighbour_and_is_unbiased(fmt):
    g = torch.Generator().manual_seed(2)
    base = (torch.rand(64, generator=g) * 2 - 1) * min(fmt.max, 100.0)
    x = base.repeat(2000)  # 2000 draws of each of 64 values
    r = round_stochastic(x, fmt, generator=g)
    low, high = neighbours(x, fmt)
    assert ((r == low) | (r == high)).all()
    mean = r.double().view(2000, 64).mean(0)
    gap = (high - low).double()[:64].abs()
    # the mean of 2000 Bernoulli draws: within 5 standard deviations (gap / (2 sqrt(2000)))
    assert ((mean - base.double()).abs() <= 5 * gap / (2 * math.sqrt(2000)) + 1e-12).all()
    p = ((base - low[:64]).double() / torch.where(gap > 0, gap, 1.0)).abs()
    share_up = (r.view(2000, 64) == high[:64]).double().mean(0)
    assert ((share_up - p).abs() < 0.05).all()


def test_round_stochastic_keeps_representable_values_and_is_reproducible():
    codes = all_codes(FP4_E2M1, ml_dtypes.float4_e2m1fn)
    assert same_bits(round_stochastic(codes, FP4_E2M1), codes).all()
    x = torch.randn(1000)
    a = round_stochastic(x, BF16, generator=torch.Generator().manual_seed(3))
    b = round_stochastic(x, BF16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.float32


def test_round_stochastic_saves_an_update_that_round_to_nearest_loses():
    w = torch.full((100_000,), 1.0)
    update = 2.0**-10  # an eighth of BF16's spacing at 1.0: round to nearest drops it
    assert (round_to(w + update, BF16) == 1.0).all()
    r = round_stochastic(w + update, BF16, generator=torch.Generator().manual_seed(4))
    assert set(r.unique().tolist()) == {1.0, 1.0 + 2.0**-7}
    assert abs(r.double().mean().item() - (1 + update)) < 2e-5


def test_round_stochastic_outside_the_range_behaves_like_round_to():
    x = torch.tensor([1e6, -1e6, math.inf, math.nan])
    assert same_bits(round_stochastic(x, FP8_E4M3), round_to(x, FP8_E4M3)).all()
    assert round_stochastic(x[:3], FP4_E2M1).tolist() == [6.0, -6.0, 6.0]
    assert round_stochastic(torch.tensor([1e6]), FP8_E4M3, saturate=True).item() == 448


def test_bad_input_to_the_new_functions():
    with pytest.raises(TypeError, match="torch.Generator"):
        round_stochastic(torch.ones(2), BF16, generator=0)
    with pytest.raises(TypeError, match="floating-point"):
        round_stochastic(torch.ones(2, dtype=torch.int32), BF16)
    with pytest.raises(TypeError, match="FloatFormat"):
        neighbours(torch.ones(2), "bf16")
