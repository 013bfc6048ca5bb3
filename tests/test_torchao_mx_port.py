"""torchao's own MX / FP4 / FP6 / NVFP4 conversion tests, ported to mpcourse.

Source: pytorch/ao, ``test/prototype/mx_formats/`` (``test_mx_tensor.py``,
``test_kernels.py``, ``test_nvfp4_tensor.py``) and the case tables in
``torchao/testing/_mxfp8_test_utils.py``, read at pytorch/ao commit
36027d82d1ad (August 2026, newer than the torchao 0.18 pinned here). Each
ported test names its original in the docstring and runs against
:mod:`mpcourse.mx` and :mod:`mpcourse.formats` (the course keeps elements as
float32 values; bytes are obtained by torch's exact ``float8`` casts or by
:func:`mpcourse.formats.fields`). Where the original compares torchao with
itself (eager vs compiled, Triton vs reference), the port compares mpcourse
with the installed torchao 0.18 instead.

Ported:

* ``test_mx_tensor.py::test_f32_to_e8m0_rceil`` (``make_f32_to_e8m0_rceil_cases``):
  the RCEIL exponent at every E8M0 boundary, except the three overflow rows
  (below);
* ``test_mx_tensor.py::test_mxfp8_corner_case_bytes`` (``make_mxfp8_semantic_cases``,
  FLOOR and RCEIL, float32 and bfloat16 inputs): 17 of its 18 named blocks,
  scale bytes and E4M3 bytes (``mixed_inf``: below);
* ``test_mx_tensor.py::test_to_mx_rceil``: its seven ground-truth blocks
  (NaN, FP32/BF16 subnormals, mixed, zero, normal), byte for byte;
* ``test_mx_tensor.py::test_realistic_numerics`` / ``test_hello_world`` /
  ``test_all_zeros`` / ``test_some_zeros`` / ``test_ranks`` / ``test_block_sizes``
  (``_test_mx``: SQNR >= 18 dB for E4M3, >= 13 dB otherwise, scale shape
  ``x.shape[:-1] + (K // block,)``), every element format and both scale modes,
  run on the CPU (the originals are CUDA-only), plus bit equality with the
  installed torchao's ``to_mx`` + ``to_dtype``;
* ``test_mx_tensor.py::test_exponent_nan_in`` / ``test_all_nan_blocks`` /
  ``test_exponent_nan_out``: NaN in a block gives the NaN scale (code 255) for
  that block only, and a NaN scale dequantizes to NaN;
* ``test_kernels.py::test_fp4_0_0`` ... ``test_fp4_6_0`` (FP4 rounding with
  ties to even, both signs), ``test_float4_e2m1_table`` /
  ``test_float6_e3m2_table`` / ``test_float6_e2m3_table`` / ``test_fp6_values``
  (every code of FP4/FP6 decodes and re-encodes to itself),
  ``test_fp6_e3m2_rounding``;
* ``test_kernels.py::test_fp4_pack_unpack``: the packed byte layout
  (``val1:val0`` in bits ``7654:3210``), built from :func:`mpcourse.formats.fields`
  codes; packing itself is not part of the package;
* ``test_nvfp4_tensor.py::test_nvfp4_reconstruction``: its five shape/dtype
  cases: block amax reconstructed from the block scales (SQNR >= 30 dB),
  values (SQNR >= 8 dB), and bit equality with the installed torchao's
  ``NVFP4Tensor``.

Do not apply (and why):

* RCEIL exponent above $2^{127}$ and ``mixed_inf``: newer torchao maps an
  ``amax / max`` above $2^{127}$, and any block holding an inf, to the NaN scale
  (NOSAT, like ``cvt.rn.ue8m0``); torchao 0.18 (pinned) and mpcourse's contract
  saturate the scale at $2^{127}$ (and, with FLOOR, count inf as $2^{128}$).
  The port asserts the 0.18 behaviour for those rows instead.
* Everything about ``MXTensor``/``NVFP4Tensor`` as tensor subclasses
  (``test_transpose``, ``test_view``, ``test_clone``, ``test_index_select``,
  ``test_from_qdata_and_scales_*``, serialization, ``test_3d_transpose``,
  swizzled scales, ``to_blocked``/``from_blocked``, pin memory): mpcourse has
  no tensor subclass, only functions on float32 tensors.
* ``torch.compile``/Triton/CUDA/CuTe kernels and matmuls
  (``test_to_mx_from_mx_compile_numerics``, ``test_to_mx_inductor_single_kernel``,
  ``test_triton_*``, ``test_cuda_mx_*``, ``test_nvfp4_matmul_*``,
  ``test_e8m0_scale_to_reciprocal_fp32*``,
  ``test_to_mx_rceil_fallback_nan_branch_is_cse_compatible``): kernel
  equivalence and graph shape, not conversion numerics.
* ``test_fp32`` / ``test_bf16`` / ``test_fp16`` / ``test_float8_*`` of
  ``test_kernels.py``: torch's own casts, already proven equal to
  ``round_to`` in ``tests/test_formats.py``.

A finding of the port (``test_torchao_018_rceil_eager_rounds_log2_in_float32``):
torchao 0.18's eager RCEIL computes ``ceil(log2(amax / max))`` in float32, so
for ``amax / max`` one float32 ulp above $2^k$ with $|k| \\ge 4$ the logarithm
rounds to $k$ and the scale comes out one power of two too small (the block
maximum then saturates at the element maximum). cuBLAS's ``cvt.rp`` rule, the newer torchao
(``_f32_to_e8m0_rceil``) and mpcourse round up exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

from mpcourse.formats import (
    FP4_E2M1,
    FP6_E2M3,
    FP6_E3M2,
    FP8_E4M3,
    MX_ELEMENT_FORMATS,
    fields,
    round_to,
)
from mpcourse.mx import (
    _rceil_exponent,
    e8m0_encode,
    import_torchao_mx,
    mx_dequantize,
    mx_quantize,
    nvfp4_dequantize,
    nvfp4_quantize,
    torchao_elem_dtype,
)

MXT, NVT = import_torchao_mx()
from torchao.prototype.mx_formats.config import ScaleCalculationMode  # noqa: E402

MODES = {"floor": ScaleCalculationMode.FLOOR, "rceil": ScaleCalculationMode.RCEIL}


def e4m3_bytes(q: torch.Tensor) -> torch.Tensor:
    """E4M3 bytes of float32 values that are E4M3 numbers (torch's cast is exact there)."""
    b = q.to(torch.float8_e4m3fn).view(torch.uint8)
    return torch.where(b == 0xFF, 0x7F, b)  # the two NaN encodings are equivalent


def sqnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """torchao.quantization.utils.compute_error: 20 log10(||x|| / ||x - y||)."""
    x, y = x.double(), y.double()
    return float(20 * torch.log10(x.norm() / (x - y).norm()))


def bits_f32(*words: int) -> torch.Tensor:
    return torch.tensor(words, dtype=torch.int64).to(torch.int32).view(torch.float32)


# --- test_mx_tensor.py ------------------------------------------------------------------------

RCEIL_CASES = [  # make_f32_to_e8m0_rceil_cases: (fp32 bits of amax / max, E8M0 byte)
    (0x00000000, 0),
    (0x00000001, 0),
    (0x00400000, 0),
    (0x00400001, 1),
    (0x007FFFFF, 1),
    (0x00800000, 1),
    (0x1F800000, 63),
    (0x1F800001, 64),
    (0x3F7FFFFF, 127),
    (0x3F800000, 127),
    (0x3F800001, 128),
    (0x5F800000, 191),
    (0x5F800001, 192),
    (0x7F000000, 254),
]


def test_f32_to_e8m0_rceil():
    """test_mx_tensor.py::test_f32_to_e8m0_rceil: RCEIL at every E8M0 boundary."""
    values = bits_f32(*[v for v, _ in RCEIL_CASES])
    expected = torch.tensor([c for _, c in RCEIL_CASES])
    assert torch.equal(_rceil_exponent(values) + 127, expected)
    # the overflow rows: newer torchao gives NaN (255); 0.18 and mpcourse saturate at 2^127
    over = bits_f32(0x7F000001, 0x7F7FFFFF, 0x7F800000)
    assert (_rceil_exponent(over) + 127).tolist() == [254, 254, 254]


def semantic_cases(input_dtype: torch.dtype, mode: str):
    """make_mxfp8_semantic_cases: 17 named blocks of 32 with the expected bytes."""
    floor = mode == "floor"
    tiny = torch.tensor([1], dtype=torch.int16 if input_dtype == torch.bfloat16 else torch.int32)
    sub = tiny.view(input_dtype).item()
    dmax = torch.finfo(input_dtype).max
    max_scale, max_data = (246, 0x7E) if floor else (247, 0x78)
    f32 = input_dtype == torch.float32
    boundary_a = bits_f32(0x40600001).to(input_dtype).item()
    boundary_b = bits_f32(0x43FFFFFF).to(input_dtype).item()
    sat_scale, sat_data = (127, 0x7E) if floor else (128, 0x77)
    rows = {  # name: (first value, the other 31, scale byte, first byte, other bytes)
        "zero": (0.0, 0.0, 0, 0x00, 0x00),
        "smallest_normal": (*(torch.finfo(input_dtype).tiny,) * 2, 0, 0x40, 0x40),
        "mixed_nan": (math.nan, 1.0, 255, 0x7F, 0x7F),
        "positive_fp8_max": (448.0, 448.0, 127, 0x7E, 0x7E),
        "negative_fp8_max": (-448.0, -448.0, 127, 0xFE, 0xFE),
        "positive_dtype_max": (dmax, dmax, max_scale, max_data, max_data),
        "negative_dtype_max": (-dmax, -dmax, max_scale, max_data | 0x80, max_data | 0x80),
        "positive_smallest_subnormal": (sub, sub, 0, *(0x00 if f32 else 0x08,) * 2),
        "negative_smallest_subnormal": (-sub, -sub, 0, *(0x80 if f32 else 0x88,) * 2),
        "mixed_positive_underflow": (sub, 1.0, 119, 0x00, 0x78),
        "mixed_negative_underflow": (-sub, 1.0, 119, 0x80, 0x78),
        "mixed_saturation_and_underflow": (dmax, 1.0, max_scale, max_data, 0x00),
        "rceil_premature_bf16_lowers_scale": (
            boundary_a,
            boundary_a,
            *((121, 0x76, 0x76) if (not floor and f32) else (120, 0x7E, 0x7E)),
        ),
        "floor_premature_bf16_raises_scale": (
            boundary_b,
            boundary_b,
            *((127, 0x7E, 0x7E) if (floor and f32) else (128, 0x78, 0x78)),
        ),
        "all_nan": (math.nan, math.nan, 255, 0x7F, 0x7F),
        "positive_satfinite": (480.0, 480.0, sat_scale, sat_data, sat_data),
        "negative_satfinite": (-480.0, -480.0, sat_scale, sat_data | 0x80, sat_data | 0x80),
    }
    x = torch.empty(len(rows), 32, dtype=input_dtype)
    scales, data = torch.empty(len(rows), dtype=torch.uint8), torch.empty(len(rows), 32).byte()
    for i, (first, rest, s, b0, b) in enumerate(rows.values()):
        x[i], x[i, 0] = rest, first
        scales[i], data[i], data[i, 0] = s, b, b0
    return list(rows), x, scales, data


@pytest.mark.parametrize("mode", ["floor", "rceil"])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_mxfp8_corner_case_bytes(input_dtype, mode):
    """test_mx_tensor.py::test_mxfp8_corner_case_bytes (all rows but mixed_inf)."""
    names, x, scales, data = semantic_cases(input_dtype, mode)
    scale, q = mx_quantize(x, FP8_E4M3, scale_mode=mode)
    got_scales, got_data = e8m0_encode(scale)[:, 0], e4m3_bytes(q)
    wrong = [n for i, n in enumerate(names) if got_scales[i] != scales[i]]
    wrong += [n for i, n in enumerate(names) if not torch.equal(got_data[i], data[i])]
    assert not wrong, wrong


@pytest.mark.parametrize("mode", ["floor", "rceil"])
def test_mixed_inf_saturates_as_in_torchao_018(mode):
    """mixed_inf (does not apply as written): 0.18 and mpcourse saturate; the inf becomes max."""
    x = torch.ones(1, 32)
    x[0, 0] = math.inf
    scale, q = mx_quantize(x, FP8_E4M3, scale_mode=mode)
    t_scale, _ = MXT.to_mx(x, torch.float8_e4m3fn, 32, scaling_mode=MODES[mode])
    assert torch.equal(e8m0_encode(scale), t_scale.view(torch.uint8))
    assert q[0, 0] == 448.0 and (q[0, 1:] == 0).all()


TO_MX_RCEIL = [  # test_to_mx_rceil: (dtype, words, E8M0 byte, E4M3 bytes or None for NaN)
    (
        torch.float32,
        [2143289344, 1054459450, 1060527345, 1045656552, 1058239340, 1045057552, 1061158006]
        + [1049626606, 1052757568, 1032293288, 1056992320, 1064929425, 1061036255, 1047450552]
        + [1057077424, 1055125012, 1036491424, 1063542041, 1057099838, 1058731224, 1050189482]
        + [1049114228, 1058347802, 1060065968, 1058846156, 1048878912, 1065109089, 1054494928]
        + [1044803976, 1049117692, 1065222528, 1056965012],
        255,
        None,
    ),
    (
        torch.float32,
        [6142315, 5096174, 3345704, 6178415, 5728750, 419002, 1716691, 4335089, 5785800]
        + [6234845, 1697524, 33075, 3975816, 3714822, 5411407, 3040844, 7400945, 4474166]
        + [7257182, 1273750, 5872176, 4694081, 2096530, 6273621, 67028, 7585260, 4532315]
        + [4599275, 6133942, 4542483, 5992199, 6862780],
        0,
        [60, 58, 53, 60, 59, 29, 45, 56, 59, 60, 45, 4, 55, 54, 58, 52]
        + [62, 57, 62, 42, 59, 57, 48, 60, 8, 62, 57, 57, 60, 57, 59, 61],
    ),
    (
        torch.bfloat16,
        [101, 3, 47, 54, 36, 19, 70, 79, 35, 95, 28, 120, 84, 94, 20, 92]
        + [18, 42, 98, 58, 3, 26, 64, 86, 60, 86, 52, 23, 61, 70, 59, 74],
        0,
        [61, 20, 52, 54, 49, 42, 57, 58, 49, 60, 46, 63, 58, 60, 42, 60]
        + [41, 50, 60, 54, 20, 45, 56, 59, 55, 59, 53, 44, 55, 57, 55, 57],
    ),
    (
        torch.float32,
        [8388608, 1063716449, 1064039365, 1063568877, 1051091338, 1062185569, 1034449408]
        + [1060813641, 1054893736, 1034907680, 1036660744, 1023639888, 1058536559, 1050896496]
        + [1049237634, 1064950601, 1051852994, 1059794063, 1054011102, 1062023602, 1059467900]
        + [1062276774, 1059155029, 1053287574, 1064378711, 1055768540, 1045266076, 1059575077]
        + [1054928758, 1040468200, 1058061961, 1053066436],
        119,
        [0, 118, 119, 118, 106, 117, 91, 116, 110, 91, 93, 80, 113, 106, 105, 120]
        + [107, 115, 109, 117, 114, 117, 114, 108, 119, 111, 101, 114, 110, 96, 113, 108],
    ),
    (
        torch.bfloat16,
        [128, 16118, 16143, 16074, 16187, 16002, 16193, 16217, 15680, 16183, 16092, 16158]
        + [16251, 15876, 15896, 16194, 16135, 16214, 16205, 16110, 16122, 15960, 15824, 16106]
        + [16220, 16230, 15952, 15896, 16000, 16144, 16232, 16157],
        119,
        [0, 111, 113, 109, 116, 104, 116, 118, 84, 115, 110, 114, 120, 96, 98, 116]
        + [112, 117, 117, 111, 112, 102, 93, 111, 118, 118, 101, 98, 104, 113, 118, 114],
    ),
    (torch.float32, [0] * 32, 0, [0] * 32),
    (
        torch.float32,
        [1037408064, 1058534842, 1053630662, 1063310394, 994704128, 1057245441, 1060663708]
        + [1058053571, 1052395648, 1064831570, 1038427336, 1064777688, 1059248393, 1060959028]
        + [1062878286, 1057799482, 1057854101, 1053562724, 1027482352, 1060498324, 1063238522]
        + [1060472055, 1054346794, 1029092912, 1056687298, 1059146141, 1037992128, 1064097772]
        + [1056522806, 1059255744, 1064364912, 1060606252],
        119,
        [93, 113, 109, 118, 53, 112, 116, 113, 108, 120, 94, 119, 114, 116, 118, 113]
        + [113, 109, 84, 115, 118, 115, 110, 85, 112, 114, 94, 119, 112, 114, 119, 115],
    ),
]


@pytest.mark.parametrize("case", range(len(TO_MX_RCEIL)))
def test_to_mx_rceil(case):
    """test_mx_tensor.py::test_to_mx_rceil: its ground-truth blocks, byte for byte."""
    dtype, words, scale_byte, data_bytes = TO_MX_RCEIL[case]
    int_dtype = torch.int16 if dtype == torch.bfloat16 else torch.int32
    x = torch.tensor(words, dtype=torch.int64).to(int_dtype).view(dtype)
    scale, q = mx_quantize(x, FP8_E4M3, scale_mode="rceil")
    assert e8m0_encode(scale).item() == scale_byte
    if data_bytes is None:
        assert q.isnan().all()
    else:
        assert e4m3_bytes(q).tolist() == data_bytes


@pytest.mark.parametrize("mode", ["floor", "rceil"])
@pytest.mark.parametrize("fmt", list(MX_ELEMENT_FORMATS), ids=lambda f: f.name)
def test_realistic_numerics_shapes_and_torchao_018(fmt, mode):
    """_test_mx via test_realistic_numerics, test_hello_world, test_ranks, test_block_sizes,
    test_all_zeros, test_some_zeros: SQNR thresholds and scale shapes; and the same bits as
    the installed torchao's to_mx + to_dtype (outside E8M0's smallest-scale blocks)."""
    gen = torch.Generator().manual_seed(2)
    threshold = 18.0 if fmt is FP8_E4M3 else 13.0
    cases = [((128, 256), 32), ((8,), 4), ((8, 2), 2), ((8, 2, 2), 2), ((4, 32), 1), ((64,), 32)]
    for shape, block in cases:
        if block == 1 and fmt is FP4_E2M1:
            continue  # the original skips it: FP4 packs two values per byte
        x = torch.randn(shape, generator=gen)
        scale, q = mx_quantize(x, fmt, block, scale_mode=mode)
        y = mx_dequantize(scale, q)
        assert scale.shape == (*shape[:-1], shape[-1] // block)
        assert sqnr(x, y) >= threshold, (shape, block)
        if block % 2 == 0:
            t_scale, t_data = MXT.to_mx(x, torchao_elem_dtype(fmt), block, scaling_mode=MODES[mode])
            t_y = MXT.to_dtype(t_data, t_scale, torchao_elem_dtype(fmt), block, torch.float32)
            assert torch.equal(e8m0_encode(scale), t_scale.view(torch.uint8))
            assert torch.equal(y, t_y)
    zeros = torch.zeros(4, 4)
    s0, q0 = mx_quantize(zeros, fmt, 2, scale_mode=mode)
    assert (mx_dequantize(s0, q0) == 0).all()
    some = torch.randn(4, 4, generator=gen)
    some[0, :], some[:, 2] = 0.0, 0.0
    assert sqnr(some, mx_dequantize(*mx_quantize(some, fmt, 2, scale_mode=mode))) >= threshold


@pytest.mark.parametrize("mode", ["floor", "rceil"])
@pytest.mark.parametrize("fmt", list(MX_ELEMENT_FORMATS), ids=lambda f: f.name)
def test_exponent_nan_in_and_out(fmt, mode):
    """test_exponent_nan_in, test_all_nan_blocks, test_exponent_nan_out."""
    nan = math.nan
    mixed = torch.tensor([nan, 2.0, nan, 4.0, 1.0, 3.0, 5.0, 2.0])
    all_nan = torch.tensor([nan] * 4 + [1.0, 2.0, 3.0, 4.0])
    for x in (mixed, all_nan, torch.full((8,), nan)):
        scale, q = mx_quantize(x, fmt, 4, scale_mode=mode)
        expect_nan = x.view(2, 4).isnan().any(-1)
        assert torch.equal(scale.isnan(), expect_nan)
        assert torch.equal(e8m0_encode(scale) == 255, expect_nan)
    out = mx_dequantize(torch.tensor([nan, 1.0]), torch.arange(8.0).clamp(max=fmt.max))
    assert out[:4].isnan().all() and not out[4:].isnan().any()


def test_torchao_018_rceil_eager_rounds_log2_in_float32():
    """The port's finding: one ulp above 2^k (|k| >= 4), 0.18's eager RCEIL picks 2^k."""
    for k in (10, -10, 20):
        amax = torch.tensor(448.0 * 2.0**k).nextafter(torch.tensor(math.inf))
        x = torch.full((1, 32), 0.5 * amax.item())
        x[0, 0] = amax
        scale, q = mx_quantize(x, FP8_E4M3, scale_mode="rceil")
        t_scale, _ = MXT.to_mx(x, torch.float8_e4m3fn, 32, scaling_mode=MODES["rceil"])
        assert scale.item() == 2.0 ** (k + 1)  # exact: nothing clips
        assert t_scale.view(torch.uint8).item() == 127 + k  # float32 log2 rounded to k
        assert q[0, 0].item() < 448.0  # not saturated (it rounds to 224 in the next binade)


# --- test_kernels.py: FP4 / FP6 codes, rounding and packing -----------------------------------

FP4_CASES = [  # test_fp4_0_0 ... test_fp4_6_0: (value, expected, code without sign)
    (0.25, 0.0, "000"), (0.1, 0.0, "000"), (0.0, 0.0, "000"),
    (0.6, 0.5, "001"), (0.5, 0.5, "001"), (0.4, 0.5, "001"),
    (1.25, 1.0, "010"), (1.1, 1.0, "010"), (1.0, 1.0, "010"), (0.9, 1.0, "010"), (0.75, 1.0, "010"),
    (1.6, 1.5, "011"), (1.5, 1.5, "011"), (1.4, 1.5, "011"),
    (2.5, 2.0, "100"), (2.1, 2.0, "100"), (2.0, 2.0, "100"), (1.9, 2.0, "100"), (1.75, 2.0, "100"),
    (3.1, 3.0, "101"), (3.0, 3.0, "101"), (2.9, 3.0, "101"),
    (5.0, 4.0, "110"), (4.1, 4.0, "110"), (4.0, 4.0, "110"), (3.9, 4.0, "110"), (3.5, 4.0, "110"),
    (6.1, 6.0, "111"), (6.0, 6.0, "111"), (5.9, 6.0, "111"),
]  # fmt: skip


def code(x: torch.Tensor, fmt) -> torch.Tensor:
    """The element's bit pattern, sign first, from mpcourse.formats.fields."""
    s, e, m = fields(x, fmt)
    return (s << (fmt.exponent_bits + fmt.mantissa_bits)) | (e << fmt.mantissa_bits) | m


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_fp4_rounding_cases(sign):
    """test_kernels.py::test_fp4_0_0 ... test_fp4_6_0 (ties to even, both signs)."""
    values = torch.tensor([sign * v for v, _, _ in FP4_CASES])
    rounded = round_to(values, FP4_E2M1, saturate=True)
    assert rounded.tolist() == [sign * r for _, r, _ in FP4_CASES]
    codes = code(values, FP4_E2M1).tolist()
    s = "0" if sign > 0 else "1"
    assert [format(c, "04b") for c in codes] == [s + b for _, _, b in FP4_CASES]


@pytest.mark.parametrize("fmt", [FP4_E2M1, FP6_E2M3, FP6_E3M2], ids=lambda f: f.name)
def test_every_code_decodes_and_encodes_to_itself(fmt):
    """test_float4_e2m1_table, test_float6_*_table, test_fp6_values: all 2^n codes."""
    e_bits, m_bits = fmt.exponent_bits, fmt.mantissa_bits
    for c in range(2 ** (1 + e_bits + m_bits)):
        s, e, m = (
            c >> (e_bits + m_bits),
            (c >> m_bits) & ((1 << e_bits) - 1),
            c & ((1 << m_bits) - 1),
        )
        bias = 2 ** (e_bits - 1) - 1
        value = (
            (m / 2**m_bits) * 2.0 ** (1 - bias)
            if e == 0
            else (1 + m / 2**m_bits) * 2.0 ** (e - bias)
        )
        value = -value if s else value
        x = torch.tensor([value])
        assert round_to(x, fmt).item() == value
        got = code(x, fmt).item()
        assert got == c, (fmt.name, c, value, got)


@pytest.mark.parametrize(
    "value,expected",
    [(29.0, 0b011111), (26.0, 0b011110), (0.1251, 0b000010), (0.0314, 0b000001), (0.03, 0)],
)
def test_fp6_e3m2_rounding(value, expected):
    """test_kernels.py::test_fp6_e3m2_rounding, both signs."""
    assert code(torch.tensor([value]), FP6_E3M2).item() == expected
    assert code(torch.tensor([-value]), FP6_E3M2).item() == expected | 0b100000


def test_fp4_pack_unpack_layout():
    """test_kernels.py::test_fp4_pack_unpack: two FP4 codes per byte, val1:val0 in 7654:3210."""
    vals = torch.tensor([[0.0, 0.5, 4.0, -0.0], [-0.0, 1.0, -6.0, 3.0]])
    codes = code(vals, FP4_E2M1)
    packed = (codes[:, 1::2] << 4) | codes[:, 0::2]
    assert packed.tolist() == [[0b00010000, 0b10000110], [0b00101000, 0b01011111]]
    unpacked = torch.stack([packed & 0xF, packed >> 4], -1).flatten(1)
    assert torch.equal(unpacked, codes)


# --- test_nvfp4_tensor.py ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,shape,use_per_tensor_scale",
    [
        (torch.bfloat16, (32, 64), False),
        (torch.float32, (64, 128), False),
        (torch.bfloat16, (128, 256), False),
        (torch.bfloat16, (64, 128), True),
        (torch.bfloat16, (1, 32, 64), False),
    ],
)
def test_nvfp4_reconstruction(dtype, shape, use_per_tensor_scale):
    """test_nvfp4_tensor.py::test_nvfp4_reconstruction, plus bits equal to torchao 0.18's."""
    torch.manual_seed(2)
    x = torch.randn(shape, dtype=dtype)
    nv = nvfp4_quantize(x, tensor_scale=use_per_tensor_scale)
    y = nvfp4_dequantize(nv)
    amax = x.float().reshape(shape[0], -1, 16).abs().amax(-1)
    reconstructed_amax = (nv.tensor_scale * nv.block_scale).reshape(shape[0], -1) * 6.0
    assert sqnr(amax, reconstructed_amax) >= 30.0
    assert sqnr(x.float(), y) >= 8.0 and y.shape == x.shape
    pts = NVT.per_tensor_amax_to_scale(x.float().abs().max()) if use_per_tensor_scale else None
    ref = NVT.NVFP4Tensor.to_nvfp4(x.float(), per_tensor_scale=pts).dequantize(torch.float32)
    assert torch.equal(y, ref)
