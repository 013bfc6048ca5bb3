"""FP8 training, simulated: per-tensor scaling, delayed scaling, an FP8 linear layer.

FP8 has so few bits that a tensor only fits when it is *scaled* first:

* E4M3 (max 448, 3 mantissa bits) for weights and activations (forward);
* E5M2 (max 57344, 2 mantissa bits) for gradients (backward, wider range).

Per-tensor scaling: with $a = \\max|x|$ (the *amax*), the scale
$s = \\mathrm{fmt.max} / (a \\cdot 2^{margin})$ maps the largest value just
under the format's maximum; the tensor is stored as $q = \\mathrm{round}(x s)$
and means $q / s$. A matmul of two scaled tensors is
$(q_x q_w) / (s_x s_w)$: FP8 products, FP32 accumulation, one rescale.

*Delayed* scaling (Transformer Engine's recipe) does not wait for the amax of
the tensor being cast: it uses the largest amax seen in the last ``history_len``
steps, then records the current amax. Values that outgrow the stale scale
saturate to $\\pm$max.

The rounding uses torch's ``float8_e4m3fn``/``float8_e5m2`` casts (after
clamping to $\\pm$max), tested value for value against the from-scratch
:func:`mpcourse.formats.round_to`; values are kept in float32 and matmuls
accumulate in FP32, so everything runs on any CPU.

Taught in course/08_bf16_tf32_fp8.ipynb.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .formats import FP8_E4M3, FP8_E5M2, FloatFormat

__all__ = [
    "amax",
    "compute_scale",
    "quantize",
    "dequantize",
    "fake_quantize",
    "underflow_fraction",
    "DelayedScaling",
    "FP8Linear",
    "FP8TrainResult",
    "train_fp8_classifier",
    "SCALINGS",
]

SCALINGS = ("none", "current", "delayed")
_FP8 = (FP8_E4M3, FP8_E5M2)


def _check_fp8(fmt: object) -> FloatFormat:
    if fmt not in _FP8:
        raise ValueError(f"expected FP8_E4M3 or FP8_E5M2 from mpcourse.formats, got {fmt!r}")
    return fmt  # type: ignore[return-value]


def _check_scale(scale: object) -> float:
    value = float(scale) if isinstance(scale, (int, float, torch.Tensor)) else math.nan
    if isinstance(scale, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return value


def amax(x: torch.Tensor) -> float:
    """$\\max_i |x_i|$ of a float tensor, as a Python float (NaN if ``x`` has a NaN).

    Taught in course/08_bf16_tf32_fp8.ipynb.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"amax needs a floating-point tensor, got {type(x).__name__}")
    if x.numel() == 0:
        raise ValueError("amax of an empty tensor is undefined")
    a = x.detach().abs().float()
    return math.nan if bool(torch.isnan(a).any()) else float(a.max())


def compute_scale(
    amax_value: float,
    fmt: FloatFormat,
    margin: int = 0,
    previous: float = 1.0,
    power_of_two: bool = False,
) -> float:
    """The per-tensor scale $s = \\mathrm{fmt.max} / (a \\cdot 2^{margin})$.

    When ``amax_value`` is zero or not finite there is nothing to learn from it
    and ``previous`` is kept (as Transformer Engine does). With
    ``power_of_two=True`` the scale is rounded down to a power of two, so that
    multiplying by it is exact.

    Taught in course/08_bf16_tf32_fp8.ipynb.
    """
    fmt = _check_fp8(fmt)
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ValueError(f"margin must be a non-negative int (powers of two), got {margin!r}")
    a = float(amax_value)
    if not math.isfinite(a) or a <= 0:
        return _check_scale(previous)
    scale = fmt.max / a / 2.0**margin
    if power_of_two:
        scale = 2.0 ** math.floor(math.log2(scale))
    return scale


def quantize(x: torch.Tensor, fmt: FloatFormat, scale: float = 1.0) -> torch.Tensor:
    """The FP8 codes of ``x``: $q = \\mathrm{round}_{fmt}(x \\cdot s)$, saturating at $\\pm$max.

    Returned as float32 values (each exactly representable in ``fmt``). The
    cast is torch's (``torch.float8_e4m3fn``/``float8_e5m2``) after clamping to
    $\\pm$max, which equals ``round_to(x * s, fmt, saturate=True)`` value for value.

    Taught in course/08_bf16_tf32_fp8.ipynb.
    """
    fmt = _check_fp8(fmt)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"quantize needs a floating-point tensor, got {type(x).__name__}")
    scaled = x.float() * _check_scale(scale)
    return scaled.clamp(-fmt.max, fmt.max).to(fmt.torch_dtype).float()


def dequantize(q: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """What the codes mean: $q / s$.

    Taught in course/08_bf16_tf32_fp8.ipynb.
    """
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"dequantize needs a tensor of FP8 codes, got {type(q).__name__}")
    return q / _check_scale(scale)


def fake_quantize(x: torch.Tensor, fmt: FloatFormat, scale: float = 1.0) -> torch.Tensor:
    """Round-trip through FP8: $\\mathrm{round}_{fmt}(x s) / s$ (the value the model sees).

    Taught in course/08_bf16_tf32_fp8.ipynb.
    """
    return dequantize(quantize(x, fmt, scale), scale)


def underflow_fraction(x: torch.Tensor, fmt: FloatFormat, scale: float = 1.0) -> float:
    """Share of the nonzero values of ``x`` that become 0 when cast to ``fmt`` with ``scale``.

    Taught in course/08_bf16_tf32_fp8.ipynb.
    """
    nonzero = x != 0
    n = int(nonzero.sum())
    if n == 0:
        return 0.0
    return int((quantize(x, fmt, scale)[nonzero] == 0).sum()) / n


class DelayedScaling:
    """Delayed per-tensor scaling: the scale comes from an amax history.

    ``scale`` is the scale to use *now*: computed from the largest amax
    (``algo="max"``) or the latest one (``algo="most_recent"``) of the last
    ``history_len`` recorded steps; 1.0 before anything was recorded. After
    using it, call ``update(amax(x))`` to record the tensor that was cast.

    Taught in course/08_bf16_tf32_fp8.ipynb.
    """

    def __init__(
        self, fmt: FloatFormat, history_len: int = 16, margin: int = 0, algo: str = "max"
    ) -> None:
        self.fmt = _check_fp8(fmt)
        if isinstance(history_len, bool) or not isinstance(history_len, int) or history_len < 1:
            raise ValueError(f"history_len must be a positive int, got {history_len!r}")
        if algo not in ("max", "most_recent"):
            raise ValueError(f"algo must be 'max' or 'most_recent', got {algo!r}")
        compute_scale(1.0, self.fmt, margin)  # validates margin
        self.history: deque[float] = deque(maxlen=history_len)
        self.margin, self.algo, self.scale = margin, algo, 1.0

    def update(self, amax_value: float) -> float:
        """Record an amax, recompute and return the scale for the next step."""
        a = float(amax_value)
        if math.isfinite(a):  # an inf/NaN amax (an overflowed step) is not recorded
            self.history.append(a)
        if self.history:
            ref = max(self.history) if self.algo == "max" else self.history[-1]
            self.scale = compute_scale(ref, self.fmt, self.margin, previous=self.scale)
        return self.scale


class _FP8Matmul(torch.autograd.Function):
    """$y = x W^T$ with x, W cast to E4M3 and, in backward, dy cast to E5M2."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, layer: FP8Linear) -> torch.Tensor:
        sx, sw = layer._scale("input", x), layer._scale("weight", w)
        qx, qw = quantize(x, FP8_E4M3, sx), quantize(w, FP8_E4M3, sw)
        ctx.save_for_backward(qx.reshape(-1, qx.shape[-1]), qw)
        ctx.layer, ctx.sx, ctx.sw = layer, sx, sw
        return (qx @ qw.T) / (sx * sw)  # FP8 x FP8 products, FP32 accumulation

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        qx, qw = ctx.saved_tensors
        layer: FP8Linear = ctx.layer
        sg = layer._scale("grad", dy)
        qg = quantize(dy, FP8_E5M2, sg)
        layer.last_grad_underflow = underflow_fraction(dy, FP8_E5M2, sg)
        dx = (qg @ qw) / (sg * ctx.sw)
        dw = (qg.reshape(-1, qg.shape[-1]).T @ qx) / (sg * ctx.sx)
        return dx, dw, None


class FP8Linear(nn.Linear):
    """``nn.Linear`` whose matmuls run in simulated FP8 with per-tensor scaling.

    Forward: $y = (q_x q_W^T)/(s_x s_W) + b$ with $q_x, q_W$ in E4M3; backward:
    $dx = (q_g q_W)/(s_g s_W)$, $dW = (q_g^T q_x)/(s_g s_x)$ with $q_g$ in
    E5M2. Weights, bias and their gradients stay float32 (the master copy); the
    bias is added after the matmul in FP32, so its gradient never passes
    through FP8.
    ``scaling``: ``"none"`` (scale 1: the raw FP8 range), ``"current"``
    (scale from this tensor's own amax) or ``"delayed"`` (amax history).

    Taught in course/08_bf16_tf32_fp8.ipynb.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        scaling: str = "delayed",
        history_len: int = 16,
        margin: int = 0,
    ) -> None:
        if scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
        super().__init__(in_features, out_features, bias)
        self.scaling, self.margin = scaling, margin
        fmts = {"input": FP8_E4M3, "weight": FP8_E4M3, "grad": FP8_E5M2}
        self.scalers = {k: DelayedScaling(f, history_len, margin) for k, f in fmts.items()}
        self.last_grad_underflow = 0.0

    def _scale(self, role: str, t: torch.Tensor) -> float:
        if self.scaling == "none":
            return 1.0
        scaler = self.scalers[role]
        a = amax(t)
        if self.scaling == "current":
            return compute_scale(a, scaler.fmt, self.margin)
        used = scaler.scale  # delayed: the scale from past steps ...
        scaler.update(a)  # ... then the current amax joins the history
        return used

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _FP8Matmul.apply(x, self.weight, self)
        return y if self.bias is None else y + self.bias


@dataclass
class FP8TrainResult:
    """Mean cross-entropy per step, test accuracy, mean share of gradients lost to underflow.

    Taught in course/08_bf16_tf32_fp8.ipynb.
    """

    scaling: str
    losses: list[float] = field(default_factory=list)
    accuracy: float = 0.0
    grad_underflow: float = 0.0


def train_fp8_classifier(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    scaling: str = "delayed",
    steps: int = 100,
    lr: float = 0.01,
    batch_size: int = 256,
    mean_over: int | None = None,
    seed: int = 0,
) -> FP8TrainResult:
    """Train a softmax-regression layer $\\mathrm{logits} = x W^T + b$ with Adam.

    ``scaling`` is one of ``"none"``, ``"current"``, ``"delayed"`` (an
    :class:`FP8Linear`) or ``"fp32"`` (a plain ``nn.Linear``, the reference).
    The loss is $\\frac{1}{T}\\sum_{i \\in batch} \\mathrm{CE}_i$ with
    $T$ = ``mean_over`` (default: ``batch_size``, the usual mean). A language
    model averages over every token of a global batch ($T \\approx 10^6$), which
    makes each logit's gradient $(p - y)/T$ tiny; Adam's update does not depend
    on that factor, so FP32 learns the same for any $T$. Mini-batches are drawn
    with a generator seeded by ``seed``.

    Its own loop, not :func:`mpcourse.train.train`: FP8 here is simulated per layer
    (:class:`FP8Linear` quantizes its inputs, weight and output gradient), not a
    ``precision`` recipe that autocast could run; the loop only swaps the layer.

    Taught in course/08_bf16_tf32_fp8.ipynb.
    """
    if scaling not in (*SCALINGS, "fp32"):
        raise ValueError(f"scaling must be one of {(*SCALINGS, 'fp32')}, got {scaling!r}")
    if x_train.dim() != 2 or x_train.shape[0] != y_train.shape[0]:
        raise ValueError(
            f"x_train must be (N, features) with one label each; got {tuple(x_train.shape)} "
            f"and {tuple(y_train.shape)} labels"
        )
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    mean_over = batch_size if mean_over is None else mean_over
    if isinstance(mean_over, bool) or not isinstance(mean_over, int) or mean_over < 1:
        raise ValueError(f"mean_over must be a positive int (a token count), got {mean_over!r}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n_in, n_out = x_train.shape[1], int(y_train.max()) + 1
    if scaling == "fp32":
        model: nn.Linear = nn.Linear(n_in, n_out)
    else:
        model = FP8Linear(n_in, n_out, scaling=scaling)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    result = FP8TrainResult(scaling)
    underflow = 0.0
    for _ in range(steps):
        idx = torch.randint(0, x_train.shape[0], (batch_size,), generator=gen)
        loss_sum = F.cross_entropy(model(x_train[idx]), y_train[idx], reduction="sum")
        opt.zero_grad()
        (loss_sum / mean_over).backward()
        opt.step()
        result.losses.append(loss_sum.item() / batch_size)
        underflow += getattr(model, "last_grad_underflow", 0.0)
    with torch.no_grad():
        result.accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    result.grad_underflow = underflow / steps
    return result
