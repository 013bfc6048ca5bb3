"""Block-scaled low-bit formats from their bits: MX (OCP v1.0), NVFP4, FP8 1x128 / 128x128.

One scale for a whole tensor wastes range: a single outlier sets it, and every
other value is squeezed towards zero. Block formats give each small block of
consecutive values its own scale.

* **MX** (OCP Microscaling Formats v1.0): blocks of ``k = 32`` values share
  one E8M0 scale, a pure power of two $X = 2^{\\lfloor\\log_2 a\\rfloor - e_{max}}$
  where $a = \\max_i |v_i|$ is the block's amax and $e_{max}$ the exponent of
  the element format's largest power of two (E4M3: 8, E5M2: 15, E2M3: 2,
  E3M2: 4, E2M1: 2); each element is $P_i = \\mathrm{round}(v_i / X)$ in the
  element format, saturating at $\\pm$max. MXFP8/MXFP6/MXFP4 = these elements.
* **E8M0**: 8 exponent bits, no sign, no mantissa: $2^{e - 127}$ for
  $e = 0..254$, and $e = 255$ is NaN. It can only hold powers of two.
* **NVFP4**: blocks of 16 FP4 (E2M1) values with an E4M3 scale
  $\\mathrm{e4m3}(a / 6)$ (not a power of two), and, optionally, one FP32 scale
  for the tensor, $s_t = \\max|x| / (448 \\cdot 6)$, that brings the block
  scales into E4M3's range.
* **FP8 block scaling** (DeepSeek-V3): E4M3 values with an FP32 scale per
  1x128 tile (activations) or 128x128 block (weights): $s = 448 / a$,
  $q = \\mathrm{e4m3}(x s)$, value $q / s$.

Every quantizer here is vectorised (one reshape, no loop over blocks) and is
tested bit for bit against torchao's reference quantizers (``to_mx`` with the
FLOOR scale mode, ``nvfp4_quantize``, the blockwise FP8 training references).

Taught in course/14_microscaling.ipynb.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .formats import (
    FP4_E2M1,
    FP6_E2M3,
    FP6_E3M2,
    FP8_E4M3,
    FP8_E5M2,
    MX_ELEMENT_FORMATS,
    FloatFormat,
    round_to,
)
from .fp8 import compute_scale, fake_quantize
from .numerics import relative_error
from .validate import float_tensor

__all__ = [
    "torchao_elem_dtype",
    "E8M0_BIAS",
    "e8m0_encode",
    "e8m0_decode",
    "element_emax",
    "SCALE_MODES",
    "mx_quantize",
    "mx_dequantize",
    "mx_fake_quantize",
    "NVFP4",
    "nvfp4_quantize",
    "nvfp4_dequantize",
    "nvfp4_fake_quantize",
    "fp8_block_quantize",
    "fp8_block_dequantize",
    "fp8_block_fake_quantize",
    "METHODS",
    "fake_quantize_as",
    "relative_error",
    "flushed_share",
    "compare_methods",
    "format_comparison",
    "block_ids",
    "linear_tensors",
    "outlier_channels",
    "import_torchao_mx",
]

E8M0_BIAS = 127
_NAMES = ", ".join(f.name for f in MX_ELEMENT_FORMATS)


# --- E8M0: the scale format --------------------------------------------------------------


def _float_tensor(x: object, what: str) -> torch.Tensor:
    float_tensor(x, what, "convert with x.float() first")
    if x.dim() == 0:
        raise ValueError(f"{what} needs at least one dimension (blocks run along the last one)")
    return x.float()


def _floor_log2(a: torch.Tensor) -> torch.Tensor:
    """$\\lfloor\\log_2 a\\rfloor$ of positive finite float32 values, exactly (int64)."""
    _, e = torch.frexp(a)
    return e.to(torch.int64) - 1


def e8m0_encode(x: torch.Tensor) -> torch.Tensor:
    """The E8M0 code (uint8) of each float: the nearest power of two, $e + 127$.

    $x = m \\cdot 2^e$ with $1 \\le m < 2$ becomes $2^e$, or $2^{e+1}$ when
    $m \\ge 1.5$ (a tie goes up: no mantissa bit is left to be even); codes below
    0 become 0 ($2^{-127}$: E8M0 has no zero), codes above 254, zero, negative
    numbers, inf and NaN become 255 (NaN). Equals ml_dtypes' ``float8_e8m0fnu``
    cast for every float32. A power of two in range is encoded exactly.

    Taught in course/14_microscaling.ipynb.
    """
    x = _float_tensor(x, "e8m0_encode")
    ok = torch.isfinite(x) & (x > 0)
    safe = torch.where(ok, x, torch.ones_like(x))
    e = _floor_log2(safe)
    mantissa = safe.double() / torch.exp2(e.double())
    code = e + E8M0_BIAS + (mantissa >= 1.5).to(torch.int64)
    code = torch.where(ok, code.clamp(min=0), torch.full_like(code, 255))
    return torch.where(code > 254, torch.full_like(code, 255), code).to(torch.uint8)


def e8m0_decode(codes: torch.Tensor) -> torch.Tensor:
    """What E8M0 codes mean, as float32: $2^{code - 127}$, and NaN for 255.

    Taught in course/14_microscaling.ipynb.
    """
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8:
        got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise TypeError(f"e8m0_decode needs a uint8 tensor of codes, got {got}")
    value = torch.exp2(codes.double() - E8M0_BIAS)
    return torch.where(codes == 255, math.nan, value).float()


# --- MX -----------------------------------------------------------------------------------


def element_emax(fmt: FloatFormat) -> int:
    """$e_{max}$ of an MX element format: the exponent of its largest power of two.

    Taught in course/14_microscaling.ipynb.
    """
    return _check_element(fmt).emax


def _check_element(fmt: object) -> FloatFormat:
    if not any(fmt is f for f in MX_ELEMENT_FORMATS):
        raise ValueError(
            f"unknown MX element format {fmt!r}: use one of {_NAMES} from mpcourse.formats"
        )
    return fmt  # type: ignore[return-value]


def _blocks(x: torch.Tensor, block_size: object, what: str) -> torch.Tensor:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"{what}: block_size must be a positive int, got {block_size!r}")
    if x.shape[-1] % block_size:
        raise ValueError(
            f"{what}: the last dimension ({x.shape[-1]}) of shape {tuple(x.shape)} must be "
            f"divisible by block_size {block_size}; pad it with zeros first"
        )
    return x.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)


SCALE_MODES = ("floor", "rceil")


def _rceil_exponent(descale: torch.Tensor) -> torch.Tensor:
    """$\\lceil\\log_2 d\\rceil$ of float32 values, exactly, clamped to $[-127, 127]$ (int64).

    $d = 0$ gives $-127$ (E8M0's smallest scale), $d = \\infty$ gives $127$.
    """
    ok = torch.isfinite(descale) & (descale > 0)
    mantissa, e = torch.frexp(torch.where(ok, descale, torch.ones_like(descale)))
    e = e.to(torch.int64) - (mantissa == 0.5).to(torch.int64)  # d = 2^k exactly: ceil is k
    e = torch.where(torch.isinf(descale), E8M0_BIAS, e)
    e = torch.where(descale == 0, -E8M0_BIAS, e)
    return e.clamp(-E8M0_BIAS, E8M0_BIAS)


def mx_quantize(
    x: torch.Tensor, elem_fmt: FloatFormat, block_size: int = 32, scale_mode: str = "floor"
) -> tuple[torch.Tensor, torch.Tensor]:
    """MX-quantize ``x`` in blocks of ``block_size`` along its last dimension: ``(scale, q)``.

    ``scale`` (float32, shape ``x.shape[:-1] + (n_blocks,)``) is, for a block
    with amax $a$ and an element format with largest value $m$:

    * ``scale_mode="floor"`` (OCP MX v1.0, section 6.3; torchao's ``to_mx``
      default argument): $X = 2^{\\lfloor\\log_2 a\\rfloor - e_{max}}$; a block
      maximum can land above $m$ and saturate (clip by up to 12.5% in E4M3,
      25% in E2M1);
    * ``scale_mode="rceil"`` (cuBLAS's and Transformer Engine's rule, and what
      torchao's MX training and inference configs use):
      $X = 2^{\\lceil\\log_2 (a / m)\\rceil}$ with $a/m$ computed in float32: the
      exact scale $a/m$ rounded *up* to a power of two, so nothing clips;

    both clamped to E8M0's range $[2^{-127}, 2^{127}]$; ``q`` (float32, ``x``'s
    shape) is ``round_to(x / X, elem_fmt, saturate=True)``, so ``q * X``
    approximates ``x``.

    Edge blocks: all zeros give $X = 2^{-127}$ and zeros (signs kept); a block
    whose amax is tiny (float32-subnormal included) gets the smallest scale
    $2^{-127}$ and its elements round as they can; a NaN makes the block's
    scale NaN (E8M0's code 255) and its elements NaN; an inf counts as
    $a = 2^{128}$ (float32's all-ones exponent, what torchao reads), so
    $X = 2^{128 - e_{max}}$, the inf saturates to $\\pm$max (which
    :func:`mx_dequantize` turns back into $\\pm\\infty$: $max \\cdot X$
    overflows float32) and the finite values of the block flush to zero.

    Taught in course/14_microscaling.ipynb.
    """
    fmt = _check_element(elem_fmt)
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}")
    xb = _blocks(_float_tensor(x, "mx_quantize"), block_size, "mx_quantize")
    amax = xb.abs().amax(dim=-1)  # NaN if the block holds a NaN
    if scale_mode == "rceil":
        unbiased = _rceil_exponent(amax / fmt.max)
    else:
        positive = torch.isfinite(amax) & (amax > 0)
        e = _floor_log2(torch.where(positive, amax, torch.ones_like(amax)))
        e = torch.where(torch.isinf(amax), 128, e)
        e = torch.where(amax == 0, -E8M0_BIAS, e)  # no power of two below: the smallest scale
        unbiased = (e - fmt.emax).clamp(-E8M0_BIAS, E8M0_BIAS)
    scale = torch.exp2(unbiased.double()).float()  # exact, 2^-127 included (float32 subnormal)
    scale = torch.where(torch.isnan(amax), math.nan, scale)
    q = round_to(xb / scale.unsqueeze(-1), fmt, saturate=True)
    return scale, q.reshape(x.shape)


def mx_dequantize(scale: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The values an MX tensor means: ``q * scale``, each scale broadcast over its block.

    The block size is ``q.shape[-1] // scale.shape[-1]``.

    Taught in course/14_microscaling.ipynb.
    """
    scale = _float_tensor(scale, "mx_dequantize (scale)")
    q = _float_tensor(q, "mx_dequantize (q)")
    if q.shape[:-1] != scale.shape[:-1] or q.shape[-1] % scale.shape[-1]:
        raise ValueError(
            f"mx_dequantize: scale of shape {tuple(scale.shape)} does not fit q of shape "
            f"{tuple(q.shape)}: expected q.shape[:-1] + (n_blocks,) with n_blocks dividing "
            "q.shape[-1]"
        )
    qb = _blocks(q, q.shape[-1] // scale.shape[-1], "mx_dequantize")
    return (qb * scale.unsqueeze(-1)).reshape(q.shape)


def mx_fake_quantize(
    x: torch.Tensor, elem_fmt: FloatFormat, block_size: int = 32, scale_mode: str = "floor"
) -> torch.Tensor:
    """Round trip through MX: ``mx_dequantize(*mx_quantize(x, elem_fmt, block_size, scale_mode))``.

    Taught in course/14_microscaling.ipynb.
    """
    return mx_dequantize(*mx_quantize(x, elem_fmt, block_size, scale_mode))


# --- NVFP4 --------------------------------------------------------------------------------


class NVFP4(NamedTuple):
    """An NVFP4 tensor: FP32 tensor scale, E4M3 block scales (one per 16), E2M1 values.

    Its value is ``q * (tensor_scale * block_scale)``, block scale broadcast
    over its 16 elements. All three are float32 tensors holding exact values of
    their formats. Taught in course/14_microscaling.ipynb.
    """

    tensor_scale: torch.Tensor
    block_scale: torch.Tensor
    q: torch.Tensor


_E4M3_TINY = FP8_E4M3.min_normal  # torchao clamps block scales to [2^-6, 448]


def nvfp4_quantize(
    x: torch.Tensor, *, tensor_scale: bool = True, block_scale_min: float = _E4M3_TINY
) -> NVFP4:
    """Quantize ``x`` to NVFP4, blocks of 16 along the last dimension.

    With $s_t = \\max|x| / (448 \\cdot 6)$ (or $s_t = 1$ when
    ``tensor_scale=False``, or when ``x`` is all zeros), each block with amax
    $a$ gets $s_b = \\mathrm{e4m3}(\\mathrm{clamp}(a / 6 / s_t, 2^{-6}, 448))$ and
    its elements $q = \\mathrm{e2m1}(\\mathrm{clamp}(x \\cdot ((1/s_t)/s_b), \\pm 6))$.
    The float32 operations are torchao's ``nvfp4_quantize``, in its order, so
    the result is bit-identical. ``block_scale_min`` is the floor of the block
    scales: torchao's $2^{-6}$ (E4M3's smallest normal) by default; $2^{-9}$
    keeps E4M3's subnormals (a plain E4M3 cast of the scale). A NaN anywhere
    makes the tensor scale (and so everything) NaN; an inf makes the tensor
    scale inf and the result NaN.

    Taught in course/14_microscaling.ipynb.
    """
    xb = _blocks(_float_tensor(x, "nvfp4_quantize"), 16, "nvfp4_quantize")
    block = xb.abs().amax(dim=-1) / 6.0
    if tensor_scale:
        ts = x.detach().float().abs().amax() / (448.0 * 6.0)
        ts = torch.where(ts == 0, torch.ones_like(ts), ts)
        sb = round_to((block / ts).clamp(block_scale_min, 448.0), FP8_E4M3)
        reciprocal = (1.0 / ts) / sb
    else:
        ts = torch.ones((), dtype=torch.float32, device=x.device)
        sb = round_to(block.clamp(block_scale_min, 448.0), FP8_E4M3)
        reciprocal = 1.0 / sb
    q = round_to((xb * reciprocal.unsqueeze(-1)).clamp(-6.0, 6.0), FP4_E2M1)
    return NVFP4(ts, sb, q.reshape(x.shape))


def nvfp4_dequantize(t: NVFP4) -> torch.Tensor:
    """``q * (tensor_scale * block_scale)``, as torchao's ``NVFP4Tensor.dequantize``.

    Taught in course/14_microscaling.ipynb.
    """
    if not isinstance(t, NVFP4):
        raise TypeError(f"nvfp4_dequantize needs the NVFP4 from nvfp4_quantize, got {type(t)}")
    qb = _blocks(t.q, 16, "nvfp4_dequantize")
    return (qb * (t.tensor_scale * t.block_scale).unsqueeze(-1)).reshape(t.q.shape)


def nvfp4_fake_quantize(x: torch.Tensor, *, tensor_scale: bool = True) -> torch.Tensor:
    """Round trip through NVFP4. Taught in course/14_microscaling.ipynb."""
    return nvfp4_dequantize(nvfp4_quantize(x, tensor_scale=tensor_scale))


# --- FP8 with 1x128 / 128x128 block scales (DeepSeek-V3) ------------------------------------


def _tiles(x: torch.Tensor, tile: object) -> tuple[torch.Tensor, int, int]:
    if (
        not isinstance(tile, tuple)
        or len(tile) != 2
        or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in tile)
    ):
        raise ValueError(f"tile must be a pair of positive ints such as (1, 128), got {tile!r}")
    if x.dim() != 2:
        raise ValueError(f"FP8 block scaling needs a 2-D tensor, got shape {tuple(x.shape)}")
    (m, k), (tm, tk) = x.shape, tile
    if m % tm or k % tk:
        raise ValueError(
            f"shape {tuple(x.shape)} is not divisible into {tm}x{tk} tiles; pad it with zeros"
        )
    return x.reshape(m // tm, tm, k // tk, tk).transpose(1, 2), tm, tk


def fp8_block_quantize(
    x: torch.Tensor, tile: tuple[int, int] = (1, 128), eps: float = 1e-12
) -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 with one FP32 scale per tile of a 2-D tensor: ``(scale, q)``, value ``q * scale``.

    Per tile with amax $a$: $s = \\mathrm{fp32}(448 / \\max(a, \\epsilon))$ (computed
    in float64, as torchao does), $q = \\mathrm{e4m3}(\\mathrm{clamp}(x s, \\pm 448))$,
    and the returned ``scale`` is $1 / s$, shape ``(M / tile[0], K / tile[1])``.
    DeepSeek-V3 uses ``(1, 128)`` for activations and ``(128, 128)`` for weights.

    Taught in course/14_microscaling.ipynb.
    """
    t, _, _ = _tiles(_float_tensor(x, "fp8_block_quantize"), tile)
    amax = t.abs().amax(dim=(-2, -1)).double().clamp(min=eps)
    s = (FP8_E4M3.max / amax).float()
    q = round_to((t * s[..., None, None]).clamp(-FP8_E4M3.max, FP8_E4M3.max), FP8_E4M3)
    return 1.0 / s, q.transpose(1, 2).reshape(x.shape)


def fp8_block_dequantize(
    scale: torch.Tensor, q: torch.Tensor, tile: tuple[int, int] = (1, 128)
) -> torch.Tensor:
    """``q * scale`` with each tile's scale broadcast over its tile.

    Taught in course/14_microscaling.ipynb.
    """
    t, _, _ = _tiles(_float_tensor(q, "fp8_block_dequantize"), tile)
    if tuple(scale.shape) != tuple(t.shape[:2]):
        raise ValueError(
            f"scale of shape {tuple(scale.shape)} does not fit {tuple(q.shape)} in {tile} tiles"
        )
    return (t * scale.float()[..., None, None]).transpose(1, 2).reshape(q.shape)


def fp8_block_fake_quantize(x: torch.Tensor, tile: tuple[int, int] = (1, 128)) -> torch.Tensor:
    """Round trip through block-scaled FP8. Taught in course/14_microscaling.ipynb."""
    return fp8_block_dequantize(*fp8_block_quantize(x, tile), tile)


# --- comparing the schemes ---------------------------------------------------------------------

METHODS = (
    "fp8 per-tensor",
    "fp8 128x128",
    "fp8 1x128",
    "mxfp8",
    "mxfp8 rceil",
    "mxfp6",
    "mxfp6 rceil",
    "mxfp4",
    "mxfp4 rceil",
    "nvfp4",
)


def fake_quantize_as(x: torch.Tensor, method: str) -> torch.Tensor:
    """Round trip of a 2-D tensor through one of :data:`METHODS` (E4M3 unless named).

    ``"fp8 per-tensor"``: :func:`mpcourse.fp8.fake_quantize` with the scale
    $448/\\max|x|$; ``"fp8 128x128"``/``"fp8 1x128"``: :func:`fp8_block_fake_quantize`;
    ``"mxfp8"``/``"mxfp6"``/``"mxfp4"``: :func:`mx_fake_quantize` with E4M3 / E2M3 / E2M1
    elements and the spec's FLOOR scale rule, and with ``" rceil"`` appended the
    RCEIL rule (``scale_mode="rceil"``); ``"nvfp4"``: :func:`nvfp4_fake_quantize`.
    The tensor is zero-padded to whole blocks first (zeros change no amax) and cropped after.

    Taught in course/14_microscaling.ipynb.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x = _float_tensor(x, "fake_quantize_as")
    if x.dim() != 2:
        raise ValueError(f"fake_quantize_as needs a 2-D tensor, got shape {tuple(x.shape)}")
    m, k = x.shape
    rows = 128 if method == "fp8 128x128" else 1
    cols = 128 if method.startswith("fp8 1") else 32
    p = torch.nn.functional.pad(x, (0, (-k) % cols, 0, (-m) % rows))
    if method == "fp8 per-tensor":
        a = float(x.abs().max())
        y = fake_quantize(p, FP8_E4M3, compute_scale(a, FP8_E4M3))
    elif method.startswith("fp8"):
        y = fp8_block_fake_quantize(p, (rows, 128))
    elif method == "nvfp4":
        y = nvfp4_fake_quantize(p)
    else:
        name, _, mode = method.partition(" ")
        fmt = {"mxfp8": FP8_E4M3, "mxfp6": FP6_E2M3, "mxfp4": FP4_E2M1}[name]
        y = mx_fake_quantize(p, fmt, scale_mode=mode or "floor")
    return y[:m, :k]


def flushed_share(x: torch.Tensor, approx: torch.Tensor) -> float:
    """Share of the nonzero values of ``x`` that ``approx`` turned into zero.

    Taught in course/14_microscaling.ipynb.
    """
    nonzero = x != 0
    return float(((approx == 0) & nonzero).sum()) / max(int(nonzero.sum()), 1)


def compare_methods(
    tensors: dict[str, torch.Tensor],
    methods: tuple[str, ...] = METHODS,
    keep: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], float]]:
    """Relative error and flushed share of each method on each tensor: ``(errors, zeros)``.

    Both dicts are keyed ``(method, tensor name)``. ``keep[name]``, a boolean
    mask over the last dimension, restricts the measurement to those columns
    (the quantization itself sees the whole tensor).

    Taught in course/14_microscaling.ipynb.
    """
    errors, zeros = {}, {}
    for method in methods:
        for name, t in tensors.items():
            y = fake_quantize_as(t, method)
            if keep and name in keep:
                t, y = t[:, keep[name]], y[:, keep[name]]
            errors[method, name] = relative_error(t, y)
            zeros[method, name] = flushed_share(t, y)
    return errors, zeros


def format_comparison(
    errors: dict[tuple[str, str], float], zeros: dict[tuple[str, str], float]
) -> str:
    """The table of :func:`compare_methods`: ``error (flushed %)`` per method and tensor.

    Taught in course/14_microscaling.ipynb.
    """
    methods = list(dict.fromkeys(m for m, _ in errors))
    names = list(dict.fromkeys(n for _, n in errors))
    lines = [f"{'':<15}" + "".join(f"{n:>20}" for n in names)]
    for m in methods:
        cells = [f"{errors[m, n]:.4f} ({100 * zeros[m, n]:5.1f}%)" for n in names]
        lines.append(f"{m:<15}" + "".join(f"{c:>20}" for c in cells))
    return "\n".join(lines + ["relative error (share of nonzero values flushed to zero)"])


def block_ids(shape: tuple[int, int], tile: tuple[int, int]) -> torch.Tensor:
    """Which block each element of a ``shape`` matrix belongs to, for ``tile`` blocks.

    ``tile = (rows, cols)``: ``(M, K)`` is one scale per tensor, ``(1, 32)`` MX,
    ``(1, 16)`` NVFP4, ``(1, 128)`` / ``(128, 128)`` DeepSeek-V3's FP8 tiles.
    Block ids run row-major over the grid of blocks.

    Taught in course/14_microscaling.ipynb.
    """
    (m, k), (tm, tk) = shape, tile
    rows = torch.arange(m)[:, None] // tm
    cols = torch.arange(k)[None, :] // tk
    return rows * ((k + tk - 1) // tk) + cols


def linear_tensors(
    model: torch.nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The weight, input and input gradient of ``model``'s Linear ``layer`` on one batch.

    Runs ``cross_entropy(model(x), y)`` forward and backward with a hook that
    keeps the layer's input; returns ``{"<layer> weight", "<layer> input",
    "its gradient"}`` (detached float32 tensors). The model's own gradients are
    left as they were.

    Taught in course/14_microscaling.ipynb.
    """
    module = dict(model.named_modules()).get(layer)
    if not isinstance(module, torch.nn.Linear):
        raise ValueError(f"{layer!r} is not an nn.Linear of the model")
    seen: list[torch.Tensor] = []

    def keep_input(_: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
        inp = inputs[0].detach().requires_grad_(True)
        seen.append(inp)
        return (inp,)

    handle = module.register_forward_pre_hook(keep_input)
    try:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(loss, seen[0])
    finally:
        handle.remove()
    return {
        f"{layer} weight": module.weight.detach().float(),
        f"{layer} input": seen[0].detach().float(),
        "its gradient": grad.float(),
    }


def outlier_channels(
    rows: int = 256,
    cols: int = 512,
    columns: tuple[int, ...] = (7, 100, 260, 451),
    factor: float = 100.0,
    seed: int = 5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A Gaussian ``rows x cols`` tensor whose ``columns`` are ``factor`` times larger.

    Returns ``(tensor, normal)``, ``normal`` the boolean mask of the other columns:
    the shape of LLM activations with outlier features (Dettmers et al., 2022).

    Taught in course/14_microscaling.ipynb.
    """
    t = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    t[:, list(columns)] *= factor
    normal = torch.ones(cols, dtype=torch.bool)
    normal[list(columns)] = False
    return t, normal


# --- torchao, imported quietly ----------------------------------------------------------------


def torchao_elem_dtype(fmt: FloatFormat) -> torch.dtype | str:
    """The ``elem_dtype`` torchao's ``to_mx``/``to_dtype`` take for one of our MX element
    formats (torch dtypes for FP8 and FP4, torchao's string names for the FP6 formats)."""
    table = {
        FP8_E4M3: torch.float8_e4m3fn,
        FP8_E5M2: torch.float8_e5m2,
        FP6_E2M3: "fp6_e2m3",
        FP6_E3M2: "fp6_e3m2",
        FP4_E2M1: torch.float4_e2m1fn_x2,
    }
    if fmt not in table:
        raise ValueError(
            f"torchao has no MX element dtype for {fmt.name}: use one of {[f.name for f in table]}"
        )
    return table[fmt]


def import_torchao_mx() -> tuple[object, object]:
    """torchao's ``mx_tensor`` and ``nvfp4_tensor`` modules (the references this module equals).

    torchao logs two kinds of known, harmless messages on import on a CPU-only
    machine: its CUDA extensions (``_C*.so``) fail to load, and torch's pytree
    warns that torchao registers Enum classes. Exactly those messages are
    filtered at their loggers when ``mpcourse`` is imported; anything else shows.

    Taught in course/14_microscaling.ipynb.
    """
    from torchao.prototype.mx_formats import mx_tensor, nvfp4_tensor

    return mx_tensor, nvfp4_tensor
