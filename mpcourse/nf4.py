"""NF4 (4-bit NormalFloat) from its definition: the frozen base of QLoRA.

Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs" (§3, Appendix E):

**The 16 levels.** A pretrained weight is close to normal, so the levels are quantiles of
$N(0, 1)$, normalised to $[-1, 1]$, with an exact zero. The positive side takes 8 levels,
$\\Phi^{-1}(p)$ at 9 evenly spaced probabilities from $\\delta$ down to $1/2$ (the last one,
$\\Phi^{-1}(1/2) = 0$, dropped); the negative side 7, $-\\Phi^{-1}(p)$ at 8 probabilities from
$\\delta$ to $1/2$; plus 0; all divided by the largest. The outermost probability
$\\delta = \\tfrac12\\left[(1 - \\tfrac{1}{2\\cdot 16}) + (1 - \\tfrac{1}{2\\cdot 15})\\right]
= 0.96770833\\ldots$ is the mean of the outermost quantile positions for 16 and 15 bins
(bitsandbytes' ``create_normal_map`` uses it rounded to ``0.9677083``).

**Blockwise absmax.** The flattened tensor is cut into blocks of ``block_size`` (64) values;
each block $b$ keeps its scale $c_b = \\max_{i \\in b} |x_i|$ and each value the index of the
level nearest to $x_i / c_b$ (a tie goes to the lower level, as bitsandbytes' bucketize
does). Dequantized: $\\hat x_i = \\mathrm{level}[q_i]\\, c_b$. Two indices share a byte.

**Double quantization.** FP32 scales cost $32/64 = 0.5$ bits per parameter. QLoRA quantizes
them again: subtract their mean $\\mu$ (they are all positive), then quantize the centred
scales in blocks of 256 to 8 bits. This module uses the linear symmetric INT8 rule of
torchao's ``NF4Tensor`` (factor $f = 128 / \\max|c - \\mu|$ per block of 256,
$q = \\mathrm{clamp}(\\mathrm{round}(f\\,(c - \\mu)), -128, 127)$, $\\hat c = q / f + \\mu$);
bitsandbytes (``compress_statistics=True``) and the paper use an 8-bit *float* (bitsandbytes'
dynamic map) instead. Either way: $8/64 + 32/(64 \\cdot 256) \\approx 0.127$ bits per parameter.

Taught in course/16_finetuning.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "NF4_OFFSET",
    "nf4_levels",
    "nf4_encode",
    "double_quantize",
    "dequantize_scales",
    "NF4Weight",
    "quantize_nf4",
    "NF4Linear",
    "quantize_linears",
    "nf4_bits_per_parameter",
]

NF4_OFFSET = 0.5 * ((1 - 1 / (2 * 16)) + (1 - 1 / (2 * 15)))


def nf4_levels(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 levels (float32, ascending, from -1 to 1, ``levels[7] == 0``).

    Quantiles of $N(0, 1)$ computed in float64 (``torch.special.ndtri``), see the module
    docstring. Taught in course/16_finetuning.ipynb.
    """
    if not 0.5 < offset < 1:
        raise ValueError(f"offset must be a probability in (0.5, 1), got {offset!r}")
    f64 = torch.float64
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=f64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=f64)[:-1])
    levels = torch.cat([neg, torch.zeros(1, dtype=f64), pos]).sort().values
    return (levels / levels.max()).float()


def _as_levels(levels: torch.Tensor | None) -> torch.Tensor:
    if levels is None:
        return nf4_levels()
    levels = torch.as_tensor(levels, dtype=torch.float32)
    if levels.shape != (16,) or not bool((levels[1:] > levels[:-1]).all()):
        raise ValueError("levels must be 16 ascending values (a 4-bit lookup table)")
    return levels


def _check_blocks(x: object, block_size: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size must be an int >= 2, got {block_size!r}")
    if block_size % 2:
        raise ValueError(f"block_size must be even (two 4-bit codes per byte), got {block_size}")
    if x.numel() == 0 or x.numel() % block_size:
        raise ValueError(
            f"block_size {block_size} does not divide the tensor's {x.numel()} elements "
            f"(shape {tuple(x.shape)}): pick a block size that divides it, e.g. 64 or 32"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x has inf or NaN values: NF4 needs finite weights")
    return x.detach().float().reshape(-1, block_size)


def nf4_encode(
    x: torch.Tensor, block_size: int = 64, levels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax + nearest level: ``(codes, absmax)``.

    ``codes``: uint8 indices 0..15, shape ``(n_blocks, block_size)`` (unpacked);
    ``absmax``: float32 scale per block (an all-zero block gets scale 0 and code 7, the
    zero level). ``levels`` defaults to :func:`nf4_levels`; pass a library's table to
    compare with it. Raises ``ValueError`` if ``block_size`` does not divide ``x.numel()``.

    Taught in course/16_finetuning.ipynb.
    """
    blocks = _check_blocks(x, block_size)
    table = _as_levels(levels).to(blocks.device)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks / torch.where(absmax > 0, absmax, 1.0)[:, None]
    midpoints = (table[1:] + table[:-1]) / 2
    codes = torch.bucketize(scaled, midpoints)  # midpoint[i-1] < v <= midpoint[i] -> i
    return codes.to(torch.uint8), absmax


def double_quantize(
    absmax: torch.Tensor, scale_block_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize the (positive, FP32) block scales to INT8: ``(q, factor, mean)``.

    ``mean`` = mean of the scales; centred scales are cut into blocks of
    ``scale_block_size``, each with ``factor = 128 / max|c - mean|``;
    ``q = clamp(round(factor * (c - mean)), -128, 127)`` (torchao's rule).

    Taught in course/16_finetuning.ipynb.
    """
    absmax = absmax.float().reshape(-1)
    if absmax.numel() % scale_block_size:
        raise ValueError(
            f"scale_block_size {scale_block_size} does not divide the {absmax.numel()} block "
            "scales: use a smaller scale block, or turn double quantization off"
        )
    mean = absmax.mean()
    centred = (absmax - mean).reshape(-1, scale_block_size)
    amax = centred.abs().amax(dim=1)
    factor = 256 / (2 * torch.where(amax > 0, amax, 1.0))
    q = (centred * factor[:, None]).round().clamp(-128, 127).to(torch.int8)
    return q.reshape(-1), factor, mean


def dequantize_scales(q: torch.Tensor, factor: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """$\\hat c = q / f + \\mu$, the inverse of :func:`double_quantize`.

    Taught in course/16_finetuning.ipynb.
    """
    return (q.float().reshape(factor.numel(), -1) / factor[:, None]).reshape(-1) + mean


@dataclass
class NF4Weight:
    """A tensor stored in NF4: packed codes (two per byte) and its block scales.

    ``absmax`` holds the FP32 scales, or is None when they are double-quantized
    (``qscales`` INT8, ``factor`` FP32 per block of scales, ``mean``).

    Taught in course/16_finetuning.ipynb.
    """

    packed: torch.Tensor
    shape: torch.Size
    block_size: int
    levels: torch.Tensor
    absmax: torch.Tensor | None = None
    qscales: torch.Tensor | None = None
    factor: torch.Tensor | None = None
    mean: torch.Tensor | None = None

    def codes(self) -> torch.Tensor:
        """The unpacked 4-bit indices, shape ``(n_blocks, block_size)``."""
        out = torch.stack([self.packed >> 4, self.packed & 0xF], dim=-1)
        return out.reshape(-1, self.block_size)

    def scales(self) -> torch.Tensor:
        """FP32 block scales (dequantized from INT8 if double-quantized)."""
        if self.absmax is not None:
            return self.absmax
        return dequantize_scales(self.qscales, self.factor, self.mean)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """$\\hat x = \\mathrm{level}[q] \\cdot c_b$ in FP32, then cast to ``dtype``."""
        values = self.levels[self.codes().long()] * self.scales()[:, None]
        return values.reshape(self.shape).to(dtype)

    def nbytes(self) -> int:
        """Bytes stored: codes, scales, and the double-quantization constants."""
        parts = (self.packed, self.absmax, self.qscales, self.factor, self.mean)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)


def quantize_nf4(
    x: torch.Tensor,
    block_size: int = 64,
    *,
    double_quant: bool = True,
    scale_block_size: int = 256,
    levels: torch.Tensor | None = None,
) -> NF4Weight:
    """``x`` in NF4: :func:`nf4_encode`, codes packed two per byte (first in the high
    nibble, as bitsandbytes and torchao do), scales double-quantized unless
    ``double_quant=False``.

    Taught in course/16_finetuning.ipynb.
    """
    codes, absmax = nf4_encode(x, block_size, levels)
    flat = codes.reshape(-1)
    packed = (flat[::2] << 4) | flat[1::2]
    w = NF4Weight(packed, x.shape, block_size, _as_levels(levels).to(x.device))
    if double_quant:
        w.qscales, w.factor, w.mean = double_quantize(absmax, scale_block_size)
    else:
        w.absmax = absmax
    return w


class NF4Linear(nn.Module):
    """A frozen ``nn.Linear`` whose weight is stored in NF4 and dequantized to
    ``compute_dtype`` for each matmul (``block_size``, ``double_quant``, ``scale_block_size``:
    as :func:`quantize_nf4`) (bitsandbytes' ``Linear4bit`` with
    ``bnb_4bit_compute_dtype``): $y = x_c\\,\\hat W_c^T + b$, with $x_c$, $\\hat W_c$ in
    ``compute_dtype``; the output is cast back to the input's dtype, as ``Linear4bit`` does.

    Taught in course/16_finetuning.ipynb.
    """

    def __init__(
        self,
        linear: nn.Linear,
        compute_dtype: torch.dtype = torch.float32,
        block_size: int = 64,
        double_quant: bool = True,
        scale_block_size: int = 256,
    ) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"NF4Linear wraps an nn.Linear, got {type(linear).__name__}")
        if compute_dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(
                f"compute_dtype must be float32, bfloat16 or float16, got {compute_dtype}"
            )
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight4 = quantize_nf4(
            linear.weight, block_size, double_quant=double_quant, scale_block_size=scale_block_size
        )
        self.compute_dtype = compute_dtype
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module's hook
        """Move the NF4 storage with the module (``.to(device)``), never change its dtypes."""
        w = self.weight4
        for name in ("packed", "levels", "absmax", "qscales", "factor", "mean"):
            t = getattr(w, name)
            if t is not None:
                setattr(w, name, fn(t).to(t.dtype))
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight4.dequantize(self.compute_dtype)
        b = None if self.bias is None else self.bias.to(self.compute_dtype)
        return F.linear(x.to(self.compute_dtype), w, b).to(x.dtype)


def quantize_linears(
    model: nn.Module,
    targets: tuple[str, ...],
    compute_dtype: torch.dtype = torch.float32,
    **nf4_options: object,
) -> list[str]:
    """Replace (in place) each ``nn.Linear`` of ``model`` whose name ends with one of
    ``targets`` by an :class:`NF4Linear` (``nf4_options``: its block sizes). Returns the names.

    Taught in course/16_finetuning.ipynb.
    """
    names = [n for n, m in model.named_modules() if n.split(".")[-1] in targets]
    if not names:
        raise ValueError(f"no submodule is named like {targets}")
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, NF4Linear(getattr(parent, attr), compute_dtype, **nf4_options))
    return names


def nf4_bits_per_parameter(
    block_size: int = 64, double_quant: bool = True, scale_block_size: int = 256
) -> float:
    """4 + the scales' share: $32/B$ bits, or $8/B + 32/(B \\cdot B_2)$ double-quantized
    (the mean's 32 bits per tensor left out). QLoRA's numbers: 4.5 and 4.127.

    Taught in course/16_finetuning.ipynb.
    """
    if double_quant:
        return 4 + 8 / block_size + 32 / (block_size * scale_block_size)
    return 4 + 32 / block_size
