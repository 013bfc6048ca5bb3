"""mpcourse.nf4 against two references that run on the CPU.

* torchao (``torchao.quantization.to_nf4``, a dependency): bit for bit, codes, INT8 double
  quantization of the scales and the dequantized tensor, given torchao's own level table
  (torchao hard-codes the levels to 4 decimals). torchao's double quantization is the linear
  INT8 rule this module implements.
* bitsandbytes (``bitsandbytes.functional.quantize_4bit``, optional: skipped when it is not
  installed): codes, FP32 absmax and dequantized values bit for bit, *without* double
  quantization (bitsandbytes double-quantizes with its 8-bit dynamic float map, which this
  module does not implement; with it, only the dequantized error is compared).
"""

import logging

import pytest
import torch

from mpcourse.nf4 import (
    NF4_OFFSET,
    NF4Linear,
    dequantize_scales,
    double_quantize,
    nf4_bits_per_parameter,
    nf4_encode,
    nf4_levels,
    quantize_linears,
    quantize_nf4,
)

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def _torchao_to_nf4():
    from torchao.quantization import to_nf4

    return to_nf4


def test_levels_from_the_definition() -> None:
    levels = nf4_levels()
    assert levels.shape == (16,) and levels[0] == -1 and levels[-1] == 1 and levels[7] == 0
    assert bool((levels[1:] > levels[:-1]).all())
    assert abs(NF4_OFFSET - 0.9677083) < 1e-7  # bitsandbytes' rounded constant
    # torchao's table is ours rounded to 4 decimals (Appendix E of the QLoRA paper)
    table = _torchao_to_nf4()(torch.linspace(-1, 1, 256), 64, 4).nf4
    assert torch.allclose(table, levels, atol=5.1e-5, rtol=0)  # 4-decimal rounding


def test_equals_torchao_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(0)
    for shape in ((256, 64), (128, 256)):
        x = torch.randn(*shape, generator=gen) * 0.02
        ref = _torchao_to_nf4()(x, 64, 256)
        ours = quantize_nf4(x, 64, scale_block_size=256, levels=ref.nf4)
        assert torch.equal(ours.packed, ref.quantized_data)
        assert torch.equal(ours.qscales, ref.quantized_scalers)
        assert torch.equal(ours.factor, ref.quantization_factor)
        assert torch.equal(ours.mean, ref.scaler_mean)
        assert torch.equal(ours.dequantize(), ref.get_original_weight())


def test_equals_bitsandbytes_without_double_quantization() -> None:
    bf = pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes is optional")
    gen = torch.Generator().manual_seed(1)
    for shape in ((64, 128), (3, 64)):
        x = torch.randn(*shape, generator=gen)
        q, state = bf.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=False)
        # our float64 levels differ from bitsandbytes' float32 table by at most 2 ulps...
        assert float((nf4_levels() - state.code).abs().max()) < 2.5e-7
        # ...which moves no code here; with its table everything is identical
        assert torch.equal(quantize_nf4(x, 64, double_quant=False).packed, q.reshape(-1))
        ours = quantize_nf4(x, 64, double_quant=False, levels=state.code)
        assert torch.equal(ours.packed, q.reshape(-1)) and torch.equal(ours.absmax, state.absmax)
        assert torch.equal(ours.dequantize(), bf.dequantize_4bit(q, state))
    # double quantization differs in kind (8-bit dynamic float vs INT8): same error level
    x = torch.randn(256, 256, generator=gen) * 0.02
    q, state = bf.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True)
    err_bnb = (bf.dequantize_4bit(q, state) - x).abs().mean()
    err_ours = (quantize_nf4(x).dequantize() - x).abs().mean()
    assert abs(err_ours / err_bnb - 1) < 0.02


def test_nearest_level_and_ties() -> None:
    levels = nf4_levels()
    mid = float((levels[8] + levels[9]) / 2)
    codes, absmax = nf4_encode(torch.tensor([1.0, mid, 0.0, -1.0]), 4)
    assert codes.tolist() == [[15, 8, 7, 0]] and absmax.tolist() == [1.0]
    codes, absmax = nf4_encode(torch.zeros(8), 8)  # an all-zero block: scale 0, code of 0
    assert codes.unique().tolist() == [7] and absmax.item() == 0
    w = quantize_nf4(torch.zeros(8), 8, double_quant=False)
    assert torch.equal(w.dequantize(), torch.zeros(8))


def test_error_is_small_and_double_quantization_costs_little() -> None:
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(2))
    single = quantize_nf4(x, double_quant=False).dequantize()
    double = quantize_nf4(x).dequantize()
    rel = float((single - x).norm() / x.norm())
    assert 0.05 < rel < 0.12
    assert float((double - x).norm() / x.norm()) < rel * 1.01
    scales = x.reshape(-1, 64).abs().amax(1)
    q, f, m = double_quantize(scales)
    assert float((dequantize_scales(q, f, m) - scales).abs().max()) < float(scales.max()) / 100


def test_storage_matches_the_bit_count() -> None:
    x = torch.randn(256, 256)
    assert quantize_nf4(x).nbytes() * 8 / x.numel() == pytest.approx(
        nf4_bits_per_parameter(), abs=1e-3
    )
    assert quantize_nf4(x, double_quant=False).nbytes() * 8 / x.numel() == 4.5
    assert nf4_bits_per_parameter() == pytest.approx(4.127, abs=1e-3)


def test_nf4_linear_compute_dtype() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32).requires_grad_(False)
    x = torch.randn(4, 64)
    ref = torch.nn.functional.linear(
        x, quantize_nf4(lin.weight, scale_block_size=32).dequantize(), lin.bias
    )
    assert torch.allclose(NF4Linear(lin, scale_block_size=32)(x), ref, atol=1e-6)
    out = NF4Linear(lin, torch.bfloat16, scale_block_size=32)(x)
    assert out.dtype == torch.float32 and 0 < float((out - ref).abs().max()) < 0.05
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    assert quantize_linears(model, ("0", "2"), double_quant=False) == ["0", "2"]
    assert isinstance(model[0], NF4Linear) and model(x).shape == (4, 8)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="does not divide"):
        quantize_nf4(torch.randn(10, 10), 64)
    with pytest.raises(ValueError, match="scale_block_size 256 does not divide"):
        quantize_nf4(torch.randn(64, 64), 64)
    with pytest.raises(ValueError, match="even"):
        quantize_nf4(torch.randn(9), 3)
    with pytest.raises(TypeError, match="floating-point"):
        quantize_nf4(torch.arange(64), 64)
    with pytest.raises(ValueError, match="inf or NaN"):
        quantize_nf4(torch.full((64,), float("inf")), 64, double_quant=False)
    with pytest.raises(TypeError, match="nn.Linear"):
        NF4Linear(torch.nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="16 ascending"):
        nf4_encode(torch.randn(64), 64, levels=torch.linspace(1, -1, 16))
    with pytest.raises(ValueError, match="no submodule"):
        quantize_linears(torch.nn.Sequential(torch.nn.Linear(2, 2)), ("qkv",))
