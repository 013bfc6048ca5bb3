"""mpcourse.mx against torchao's reference quantizers (bit for bit) and ml_dtypes' E8M0."""

import ast
import math

import ml_dtypes
import numpy as np
import pytest
import torch

from mpcourse.formats import (
    BF16,
    FP6_E2M3,
    FP6_E3M2,
    FP8_E4M3,
    FP8_E5M2,
    MX_ELEMENT_FORMATS,
    round_to,
)
from mpcourse.mx import (
    NVFP4,
    e8m0_decode,
    e8m0_encode,
    element_emax,
    fp8_block_dequantize,
    fp8_block_fake_quantize,
    fp8_block_quantize,
    import_torchao_mx,
    mx_dequantize,
    mx_fake_quantize,
    mx_quantize,
    nvfp4_dequantize,
    nvfp4_fake_quantize,
    nvfp4_quantize,
    torchao_elem_dtype,
)

MXT, NVT = import_torchao_mx()
from torchao.prototype.mx_formats import kernels as K  # noqa: E402


def same_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.view(torch.int32) == b.view(torch.int32)) | (a.isnan() & b.isnan())


def torchao_elements(fmt, data: torch.Tensor, shape) -> torch.Tensor:
    if fmt in (FP8_E4M3, FP8_E5M2):
        values = data.float()
    elif fmt is FP6_E2M3:
        values = K.f6_e2m3_unpacked_to_f32(data)
    elif fmt is FP6_E3M2:
        values = K.f6_e3m2_unpacked_to_f32(data)
    else:
        values = K.f4_unpacked_to_f32(K.unpack_uint4(data))
    return values.reshape(shape)


def edge_tensor(seed: int) -> torch.Tensor:
    """Random rows over 80 binades, with edge blocks (32 wide) in the first rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(48, 256, generator=g)
    x *= torch.exp2(torch.randint(-60, 60, (48, 8), generator=g).float()).repeat_interleave(32, 1)
    x[0, :32] = 0.0  # all zero
    x[0, 32:64] = -0.0  # all negative zero
    x[1, :32] = torch.randn(32, generator=g) * 1e-39  # float32-subnormal maximum
    x[2, :32] = (torch.rand(32, generator=g) - 0.5) * 2.0**-124  # normal, scale clamped to 2^-127
    x[3, :32] = torch.randn(32, generator=g) * 1e37  # near float32's top
    x[4, :32] = torch.randn(32, generator=g) * 1e-3
    x[4, 7] = 1e4  # one outlier
    x[5, :32] = 2.0 ** torch.arange(-16, 16).float()  # exact powers of two, amax a power of two
    x[6, 32:64] = torch.randn(32, generator=g)
    x[6, 40] = math.inf  # inf block
    x[7, 64:96] = torch.randn(32, generator=g)
    x[7, 70] = -math.inf
    return x


@pytest.mark.parametrize("fmt", MX_ELEMENT_FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("seed", [0, 1])
def test_mx_quantize_equals_torchao_to_mx_floor(fmt, seed):
    x = edge_tensor(seed)
    scale, q = mx_quantize(x, fmt)
    t_scale, t_data = MXT.to_mx(x, torchao_elem_dtype(fmt), 32)  # FLOOR is the default scale mode
    assert torch.equal(e8m0_encode(scale), t_scale.view(torch.uint8))  # every scale
    t_q = torchao_elements(fmt, t_data, x.shape)
    smallest = (scale == 2.0**-127).repeat_interleave(32, -1)
    assert same_bits(q, t_q)[~smallest].all()  # every element outside 2^-127 blocks
    assert smallest[:3, :32].all() and smallest.sum() >= 3 * 32
    # in 2^-127 blocks torchao divides by 2^-126 (a kernel work-around); the spec rule holds here
    xb = x.reshape(48, 8, 32)[smallest.reshape(48, 8, 32)]
    assert same_bits(q[smallest], round_to(xb / 2.0**-127, fmt, saturate=True)).all()
    assert same_bits(t_q[smallest], round_to(xb / 2.0**-126, fmt, saturate=True)).all()
    # dequantized values equal torchao's too, outside the 2^-127 blocks
    ours = mx_dequantize(scale, q)
    theirs = MXT.to_dtype(t_data, t_scale, torchao_elem_dtype(fmt), 32, torch.float32)
    assert same_bits(ours, theirs)[~smallest].all()


@pytest.mark.parametrize("fmt", MX_ELEMENT_FORMATS, ids=lambda f: f.name)
def test_mx_scale_rule_and_edge_blocks(fmt):
    x = edge_tensor(2)
    scale, q = mx_quantize(x, fmt)
    emax = element_emax(fmt)
    assert emax == {"FP8_E4M3": 8, "FP8_E5M2": 15}.get(fmt.name, {"FP6_E3M2": 4}.get(fmt.name, 2))
    # a normal block: 2^(floor(log2 amax) - emax), so amax / scale lies in [2^emax, 2^(emax+1))
    ratio = x[4, :32].abs().max() / scale[4, 0]
    assert 2**emax <= ratio < 2 ** (emax + 1) and scale[4, 0] == 2.0 ** (
        math.floor(math.log2(1e4)) - emax
    )
    assert scale[5, 0] == 2.0 ** (15 - emax)  # amax 2^15, exactly
    # all-zero blocks: the smallest scale, zeros with their signs
    assert scale[0, 0] == scale[0, 1] == 2.0**-127
    assert same_bits(q[0, :64], x[0, :64]).all()
    # inf: amax read as 2^128; the inf saturates, its finite neighbours flush to zero
    assert scale[6, 1] == 2.0 ** (128 - emax) and q[6, 40] == fmt.max and q[7, 70] == -fmt.max
    assert (q[6, 32:64][torch.arange(32) != 8] == 0).all()
    back = mx_dequantize(scale, q)[6, 32:64]
    assert back[8] == math.inf and (back[torch.arange(32) != 8] == 0).all()
    # NaN: the block's scale is NaN (E8M0 code 255), its elements NaN; other blocks untouched
    y = x.clone()
    y[9, 100] = math.nan
    s2, q2 = mx_quantize(y, fmt)
    assert s2[9, 3].isnan() and e8m0_encode(s2)[9, 3] == 255 and q2[9, 96:128].isnan().all()
    t_scale, _ = MXT.to_mx(y, torchao_elem_dtype(fmt), 32)
    assert t_scale.view(torch.uint8)[9, 3] == 255
    assert mx_dequantize(s2, q2)[9, 96:128].isnan().all()
    assert same_bits(s2[~s2.isnan()], scale[~s2.isnan()]).all()


def test_one_outlier_changes_its_block_only():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 128, generator=g)
    y = x.clone()
    y[1, 40] = 1000.0
    sx, qx = mx_quantize(x, FP8_E4M3)
    sy, qy = mx_quantize(y, FP8_E4M3)
    changed = (sx != sy).nonzero().tolist()
    assert changed == [[1, 1]]  # block 1 of row 1: elements 32..63
    diff = (mx_dequantize(sx, qx) != mx_dequantize(sy, qy)).nonzero()
    assert ((diff[:, 0] == 1) & (diff[:, 1] >= 32) & (diff[:, 1] < 64)).all()


def test_mx_works_on_bfloat16_and_any_leading_shape():
    x = torch.randn(2, 3, 64).bfloat16()
    s, q = mx_quantize(x, FP6_E3M2, block_size=16)
    assert s.shape == (2, 3, 4) and q.shape == x.shape and q.dtype == torch.float32
    t_s, t_d = MXT.to_mx(x, torchao_elem_dtype(FP6_E3M2), 16)
    assert torch.equal(e8m0_encode(s), t_s.view(torch.uint8))
    assert same_bits(q, torchao_elements(FP6_E3M2, t_d, x.shape)).all()
    assert torch.equal(mx_fake_quantize(x, FP6_E3M2, 16), mx_dequantize(s, q))


# --- E8M0 -----------------------------------------------------------------------------------


def test_e8m0_decodes_every_code_like_ml_dtypes_and_torch():
    codes = torch.arange(256, dtype=torch.uint8)
    ours = e8m0_decode(codes)
    ml = torch.from_numpy(codes.numpy().view(ml_dtypes.float8_e8m0fnu).astype(np.float32))
    assert same_bits(ours, ml).all()
    assert same_bits(ours, codes.view(torch.float8_e8m0fnu).float()).all()
    assert torch.equal(e8m0_encode(ours[:255]), codes[:255])  # powers of two encode exactly


def test_e8m0_encode_equals_ml_dtypes_for_random_float32():
    g = torch.Generator().manual_seed(6)
    bits = torch.randint(-(2**31), 2**31, (300_000,), generator=g, dtype=torch.int64)
    x = bits.to(torch.int32).view(torch.float32)
    special = torch.tensor([0.0, -0.0, 3.0, 1.5, 0.75, 2.0**-127, 2.0**-149, math.inf, math.nan])
    x = torch.cat([x, special, torch.rand(100_000, generator=g) * 8])
    ml = torch.from_numpy(x.numpy().astype(ml_dtypes.float8_e8m0fnu).view(np.uint8))
    assert torch.equal(e8m0_encode(x), ml)


# --- NVFP4 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tensor_scale", [True, False], ids=["two-level", "block-only"])
def test_nvfp4_equals_torchao_reference(tensor_scale):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(64, 256, generator=g)
    x *= torch.exp2(torch.randint(-14, 14, (64, 16), generator=g).float()).repeat_interleave(16, 1)
    x[0, :16] = 0.0
    x[1, :16] *= 1e-9  # block scale clamped to E4M3's smallest normal
    x[2, 5] = 3e4  # outlier block
    ours = nvfp4_quantize(x, tensor_scale=tensor_scale)
    pts = NVT.per_tensor_amax_to_scale(x.abs().max()) if tensor_scale else None
    t_scale, t_data = NVT.nvfp4_quantize(x, 16, pts)
    assert torch.equal(ours.block_scale, t_scale.float().reshape(ours.block_scale.shape))
    assert same_bits(ours.q, K.f4_unpacked_to_f32(K.unpack_uint4(t_data)).reshape(x.shape)).all()
    if tensor_scale:
        assert torch.equal(ours.tensor_scale, pts)
    t = NVT.NVFP4Tensor.to_nvfp4(x, per_tensor_scale=pts)
    assert same_bits(nvfp4_dequantize(ours), t.dequantize(torch.float32)).all()
    assert same_bits(
        nvfp4_fake_quantize(x, tensor_scale=tensor_scale), nvfp4_dequantize(ours)
    ).all()


def test_nvfp4_edge_cases():
    zero = nvfp4_quantize(torch.zeros(2, 32))
    assert zero.tensor_scale.item() == 1.0 and (zero.q == 0).all()  # torchao would divide 0/0
    assert (nvfp4_dequantize(zero) == 0).all()
    x = torch.randn(2, 32)
    x[0, 3] = math.nan
    assert nvfp4_fake_quantize(x).isnan().all()  # the tensor scale is NaN
    assert nvfp4_fake_quantize(x, tensor_scale=False)[0, :16].isnan().all()
    assert torch.isfinite(nvfp4_fake_quantize(x, tensor_scale=False)[:, 16:]).all()
    assert isinstance(zero, NVFP4) and zero.block_scale.shape == (2, 2)


# --- FP8 block scaling (DeepSeek-V3) -----------------------------------------------------------


def torchao_blockwise_references():
    """torchao's torch reference quantizers for blockwise FP8 training, read from its source.

    The module imports triton at the top, which a CPU-only install does not have, so
    the two pure-torch functions are compiled from its source text on their own.
    """
    import importlib.util

    path = importlib.util.find_spec("torchao.prototype").submodule_search_locations[0]
    source = open(f"{path}/blockwise_fp8_training/kernels.py").read()
    tree = ast.parse(source)
    names = {"torch_blockwise_scale_act_quant_lhs", "torch_blockwise_scale_weight_quant"}
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    eps = [n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "EPS"]
    assert len(nodes) == 2 and len(eps) == 1
    namespace = {"torch": torch, "e4m3_dtype": torch.float8_e4m3fn}
    exec(compile(ast.Module(body=eps + nodes, type_ignores=[]), path, "exec"), namespace)  # noqa: S102
    return namespace["torch_blockwise_scale_act_quant_lhs"], namespace[
        "torch_blockwise_scale_weight_quant"
    ]


def test_fp8_block_scaling_equals_torchao_references():
    act, weight = torchao_blockwise_references()
    g = torch.Generator().manual_seed(9)
    x = torch.randn(256, 384, generator=g)
    x *= torch.exp2(torch.randint(-30, 30, (256, 1), generator=g).float())
    x[0] = 0.0
    x[5, 7] = 1e5
    q_ref, s_ref = act(x, 128)
    s, q = fp8_block_quantize(x, (1, 128))
    assert s.shape == (256, 3) and torch.equal(s, s_ref) and same_bits(q, q_ref.float()).all()
    q_ref, s_ref = weight(x, 128)
    s, q = fp8_block_quantize(x, (128, 128))
    assert s.shape == (2, 3) and torch.equal(s, s_ref) and same_bits(q, q_ref.float()).all()
    back = fp8_block_dequantize(s, q, (128, 128))
    assert torch.equal(back, fp8_block_fake_quantize(x, (128, 128)))
    big = (x.abs() > s.repeat_interleave(128, 0).repeat_interleave(128, 1) * 2.0**-6).float()
    rel = ((back - x).abs() / x.abs().clamp(min=1e-30))[big.bool()]
    assert rel.max() <= 2.0**-4  # E4M3: half a spacing is at most 2^-4 relative, for normals


# --- bad input ------------------------------------------------------------------------------


def test_bad_input_is_rejected_with_clear_messages():
    x = torch.randn(4, 64)
    with pytest.raises(ValueError, match="divisible by block_size 32"):
        mx_quantize(torch.randn(4, 50), FP8_E4M3)
    with pytest.raises(TypeError, match="floating-point"):
        mx_quantize(torch.ones(4, 64, dtype=torch.int32), FP8_E4M3)
    with pytest.raises(TypeError, match="torch.Tensor"):
        mx_quantize([1.0] * 32, FP8_E4M3)
    with pytest.raises(ValueError, match="unknown MX element format.*FP4_E2M1"):
        mx_quantize(x, BF16)
    with pytest.raises(ValueError, match="unknown MX element format"):
        mx_quantize(x, "fp8")
    with pytest.raises(ValueError, match="positive int"):
        mx_quantize(x, FP8_E4M3, block_size=0)
    with pytest.raises(ValueError, match="at least one dimension"):
        mx_quantize(torch.tensor(1.0), FP8_E4M3)
    with pytest.raises(ValueError, match="does not fit"):
        mx_dequantize(torch.ones(4, 3), torch.ones(4, 64))
    with pytest.raises(ValueError, match="divisible by block_size 16"):
        nvfp4_quantize(torch.randn(4, 40))
    with pytest.raises(TypeError, match="NVFP4"):
        nvfp4_dequantize((1, 2, 3))
    with pytest.raises(ValueError, match="128x128 tiles"):
        fp8_block_quantize(torch.randn(100, 128), (128, 128))
    with pytest.raises(ValueError, match="2-D"):
        fp8_block_quantize(torch.randn(2, 2, 128))
    with pytest.raises(ValueError, match="pair of positive ints"):
        fp8_block_quantize(torch.randn(2, 128), 128)
    with pytest.raises(TypeError, match="uint8"):
        e8m0_decode(torch.ones(3))


# --- the exercise checks of chapter 14 ---------------------------------------------------------


def test_exercise_checks_accept_right_answers_and_name_wrong_ones():
    from mpcourse import checks
    from mpcourse.formats import neighbours

    def scale(block, fmt):
        amax = block.abs().max().item()
        return 2.0**-127 if amax == 0 else 2.0 ** max(-127, math.frexp(amax)[1] - 1 - fmt.emax)

    def scale_ceil(block, fmt):
        amax = block.abs().max().item()
        return 2.0**-127 if amax == 0 else 2.0 ** (math.ceil(math.log2(amax)) - fmt.emax)

    def scale_unclamped(block, fmt):
        amax = block.abs().max().item()
        return 2.0**-127 if amax == 0 else 2.0 ** (math.frexp(amax)[1] - 1 - fmt.emax)

    assert checks.check_e8m0_scale(scale)
    with pytest.raises(checks.CheckFailed, match="rounded log2"):
        checks.check_e8m0_scale(scale_ceil)
    with pytest.raises(checks.CheckFailed, match="clamp the exponent"):
        checks.check_e8m0_scale(scale_unclamped)

    def flushed(block, fmt, strict=False):
        s = scale(block, fmt)
        small = (block / s).abs()
        lost = small < fmt.min_subnormal / 2 if strict else small <= fmt.min_subnormal / 2
        return (block != 0) & lost

    assert checks.check_flushed(flushed)
    with pytest.raises(checks.CheckFailed, match="tie"):
        checks.check_flushed(lambda b, f: flushed(b, f, strict=True))

    def sr(x, fmt, u, swapped=False):
        toward, away = neighbours(x, fmt)
        gap = (away - toward).abs()
        p = torch.where(gap > 0, (x - toward).abs() / torch.where(gap > 0, gap, 1.0), 0.0)
        return torch.where((u >= p) if swapped else (u < p), away, toward)

    assert checks.check_stochastic_round(sr)
    with pytest.raises(checks.CheckFailed, match="biased"):
        checks.check_stochastic_round(lambda x, f, u: sr(x, f, u, swapped=True))
    with pytest.raises(checks.CheckFailed, match="nearest"):
        checks.check_stochastic_round(lambda x, f, u: round_to(x, f))
    with pytest.raises(checks.NotAnswered):
        checks.check_stochastic_round(None)


# --- the RCEIL scale rule ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", MX_ELEMENT_FORMATS, ids=lambda f: f.name)
def test_rceil_is_the_exact_scale_rounded_up_and_never_clips(fmt):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(64, 256, generator=gen) * torch.exp2(
        torch.randint(-30, 30, (64, 1), generator=gen).float()
    )
    floor_s, floor_q = mx_quantize(x, fmt, scale_mode="floor")
    s, q = mx_quantize(x, fmt, scale_mode="rceil")
    amax = x.reshape(64, -1, 32).abs().amax(-1)
    exact = amax / fmt.max
    assert (s >= exact).all() and (s < 2 * exact).all()  # the smallest power of two >= a/m
    assert ((x.reshape(64, -1, 32) / s[..., None]).abs() <= fmt.max).all()  # nothing saturates
    assert ((s == floor_s) | (s == 2 * floor_s)).all()  # never more than one binade apart
    with pytest.raises(ValueError, match="scale_mode must be one of"):
        mx_quantize(x, fmt, scale_mode="ceil")


# --- the chapter's helpers -----------------------------------------------------------------------


def test_comparison_helpers_measure_what_they_say():
    from mpcourse.mx import (
        block_ids,
        compare_methods,
        fake_quantize_as,
        flushed_share,
        format_comparison,
        linear_tensors,
        outlier_channels,
        relative_error,
    )

    x = torch.tensor([[1.0, 0.0, 2.0, 3.0]])
    assert flushed_share(x, torch.tensor([[0.0, 0.0, 2.0, 0.0]])) == 2 / 3
    t, normal = outlier_channels(8, 64, (3,), 100.0, seed=1)
    assert normal.sum() == 63 and t[:, 3].abs().mean() > 20 * t[:, normal].abs().mean()
    errors, zeros = compare_methods({"t": t}, ("mxfp8", "mxfp4 rceil"), keep={"t": normal})
    assert errors["mxfp8", "t"] == relative_error(
        t[:, normal], fake_quantize_as(t, "mxfp8")[:, normal]
    )
    assert "mxfp4 rceil" in format_comparison(errors, zeros)
    ids = block_ids((4, 64), (1, 32))
    assert ids.shape == (4, 64) and ids.unique().numel() == 8 and ids[1, 32] == 3
    assert block_ids((256, 256), (128, 128)).unique().numel() == 4
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    xb, yb = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    got = linear_tensors(model, "2", xb, yb)
    inp = torch.relu(model[0](xb)).detach().requires_grad_(True)
    torch.nn.functional.cross_entropy(model[2](inp), yb).backward()
    assert torch.allclose(got["2 input"], inp) and torch.allclose(got["its gradient"], inp.grad)
    assert model[0].weight.grad is None  # the model's own gradients are left alone
    with pytest.raises(ValueError, match="not an nn.Linear"):
        linear_tensors(model, "1", xb, yb)


def test_nvfp4_block_scale_floor_is_a_parameter():
    x = torch.randn(2, 64) * torch.tensor([[1.0], [1e-6]])
    default, low = nvfp4_quantize(x), nvfp4_quantize(x, block_scale_min=2.0**-9)
    assert default.block_scale.min() >= 2.0**-6 and low.block_scale.min() < 2.0**-6
