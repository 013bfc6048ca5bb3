"""Checks for the exercises of course/11_inference.ipynb."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..inference import (
    FP32_EPS,
    int8_matmul,
    int8_scale,
    quantize_int8,
    relative_error,
    weight_sensitivity,
)
from ._core import call_answer, fail, passed, require_answer


def _reference_scale(w: torch.Tensor) -> torch.Tensor:
    return int8_scale(w.abs().flatten(1).amax(dim=1))


def check_per_channel_scale(per_channel_scale: Callable) -> bool:
    """``per_channel_scale(w)``: one narrow-range INT8 scale per output channel, any rank."""
    require_answer(per_channel_scale, "`per_channel_scale`")
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    shapes = [(12, 40), (8, 3, 5, 5), (6, 4, 7), (5, 2, 3, 3)]
    for i, shape in enumerate(shapes):
        w = torch.randn(shape, generator=gen) * torch.rand(shape[0], *[1] * (len(shape) - 1)) * 3
        if i >= 2:
            w[1] = 0.0  # a dead channel
        got = call_answer(per_channel_scale, w.clone(), what="per_channel_scale")
        expected = _reference_scale(w)
        what = f"a weight of shape {tuple(shape)}"
        if not isinstance(got, torch.Tensor):
            fail(f"per_channel_scale should return a tensor, got {type(got).__name__} for {what}.")
        got = got.detach().float().reshape(-1) if got.numel() == shape[0] else got
        if got.shape != expected.shape:
            fail(
                f"for {what} expected {shape[0]} scales (one per output channel, dim 0), "
                f"got a tensor of shape {tuple(got.shape)}: reduce over every other dimension."
            )
        if not torch.isfinite(got).all() or (got <= 0).any():
            fail(
                f"for {what} with an all-zero channel your scales hold {got.tolist()[:4]}...: a "
                f"zero channel needs a positive scale (eps = {FP32_EPS:.3g}), never 0 or NaN, "
                "or q = x / s divides by zero. Clamp the scale from below."
            )
        if torch.allclose(got, expected * 127 / 127.5, rtol=1e-6):
            fail(
                "you divided amax by 127.5 (int8's full range -128..127); the narrow symmetric "
                "range -127..127 divides by 127."
            )
        if torch.allclose(got, expected * 127, rtol=1e-6, atol=0):
            fail("you returned amax itself: the scale is amax / 127 (one step of the INT8 grid).")
        dead = w.flatten(1).abs().amax(dim=1) == 0
        if bool(dead.any()) and torch.allclose(got[dead], expected[dead] / 127, rtol=1e-6):
            fail(
                f"for {what} the all-zero channel got the scale {float(got[dead][0]):.3g}, "
                f"expected {float(expected[dead][0]):.3g}: you clamped amax before dividing by "
                f"127; divide first, then clamp the scale to at least eps = {FP32_EPS:.3g}."
            )
        if not torch.allclose(got, expected, rtol=1e-6, atol=1e-12):
            exp_text = [float(f"{v:.4g}") for v in expected.tolist()[:4]]
            got_text = [float(f"{v:.4g}") for v in got.tolist()[:4]]
            fail(
                f"for {what} expected scales {exp_text}..., got {got_text}...: "
                "s_c = max|w[c]| / 127 for each output channel c."
            )
    return passed("one scale per output channel for Linear and Conv weights, zero channels safe.")


def check_sensitive_layer(answer: object, model: nn.Module, images: torch.Tensor) -> bool:
    """``answer``: the layer whose per-tensor INT8 weights alone move the logits the most."""
    require_answer(answer, "`answer` (a layer name such as 'conv1')")
    errors = weight_sensitivity(model, images)
    table = ", ".join(f"{k} {v:.2%}" for k, v in errors.items())
    if answer not in errors:
        fail(f"answer should be one of {list(errors)}, got {answer!r}.")
    worst = max(errors, key=errors.get)
    if answer != worst:
        fail(
            f"{answer!r} alone in INT8 moves the logits by {errors[answer]:.2%}, but another "
            "layer moves them more. A layer's weight error is not the whole story: what comes "
            "after it (ReLU, pooling, other layers) decides how much reaches the output."
        )
    return passed(f"{worst!r} moves the logits most ({table}).")


def _decomposed(x: torch.Tensor, w: torch.Tensor, threshold: float) -> torch.Tensor:
    outliers = (x.abs() > threshold).any(dim=0)
    y = x[:, outliers] @ w[:, outliers].T
    sx, qx = quantize_int8(x[:, ~outliers], 0)
    sw, qw = quantize_int8(w[:, ~outliers], 0)
    return y + int8_matmul(qx, qw.T).float() * sx * sw.T


def _row_error(exact: torch.Tensor, got: torch.Tensor) -> float:
    """The worst relative error of one output row: rows of small inputs count as much."""
    return float(((got - exact).norm(dim=1) / exact.norm(dim=1)).max())


def _decomposed_per_tensor(x: torch.Tensor, w: torch.Tensor, threshold: float) -> torch.Tensor:
    outliers = (x.abs() > threshold).any(dim=0)
    sx, qx = quantize_int8(x[:, ~outliers])
    sw, qw = quantize_int8(w[:, ~outliers])
    return x[:, outliers] @ w[:, outliers].T + int8_matmul(qx, qw.T).float() * sx * sw


def check_outlier_matmul(outlier_matmul: Callable) -> bool:
    """``outlier_matmul(x, weight, threshold)``: ``x @ weight.T``, LLM.int8()-style, with
    per-row scales for x and per-output-channel scales for the weight (rows and channels
    of very different size make per-tensor scales fail the per-row error bound)."""
    require_answer(outlier_matmul, "`outlier_matmul`")
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    for case in range(5):
        m, k, n = (int(v) for v in torch.randint(8, 48, (3,), generator=gen) * 4)
        x = torch.randn(m, k, generator=gen)
        w = torch.randn(n, k, generator=gen) * 0.1
        if case == 4:  # rows and output channels spanning 3 decades: per tensor breaks
            x *= 10 ** (-3 * torch.rand(m, 1, generator=gen))
            w *= 10 ** (-3 * torch.rand(n, 1, generator=gen))
        n_out = [0, 2, 3, 1, 2][case]  # outlier columns
        cols = torch.randperm(k, generator=gen)[:n_out]
        x[:, cols] *= 40 + 40 * torch.rand(len(cols), generator=gen)
        got = call_answer(outlier_matmul, x.clone(), w.clone(), 6.0, what="outlier_matmul")
        where = f"x of shape {(m, k)} with {n_out} outlier column(s), weight {(n, k)}"
        if case == 4:
            where += " (rows and channels differing in size by up to 1000x)"
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != (m, n):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            fail(f"for {where} expected an output of shape {(m, n)}, got {shape}.")
        exact = x @ w.T
        err = relative_error(exact, got.detach().float())
        limit = max(3 * relative_error(exact, _decomposed(x, w, 6.0)), 0.005)
        if err == 0.0 or err < 1e-6:
            fail(
                f"for {where} your result equals the float32 matmul: only the outlier columns "
                "should skip INT8; quantize the rest (quantize_int8, int8_matmul)."
            )
        row_err = _row_error(exact, got.detach().float())
        row_limit = max(3 * _row_error(exact, _decomposed(x, w, 6.0)), 0.005)
        if err > limit or row_err > row_limit:
            per_tensor = _decomposed_per_tensor(x, w, 6.0)
            if relative_error(per_tensor, got.detach().float()) < 1e-4:
                fail(
                    f"for {where} your result matches per-tensor scales (worst row off by "
                    f"{row_err:.2%}; per-row/per-channel: {row_limit / 3:.2%}): give each row of x "
                    "and each output channel of the weight its own scale (quantize_int8(..., "
                    "axis=0))."
                )
        if err > limit:
            plain_s, plain_q = quantize_int8(x, 0)
            sw, qw = quantize_int8(w, 0)
            plain = relative_error(exact, int8_matmul(plain_q, qw.T).float() * plain_s * sw.T)
            fail(
                f"for {where} your relative error is {err:.2%} (plain per-row INT8: {plain:.2%}; "
                f"the decomposition reaches {limit / 3:.2%}): send every column of x holding a "
                "value with |x| > threshold, and the matching weight columns, through float32."
            )
        if row_err > row_limit:
            fail(
                f"for {where} your worst row is off by {row_err:.2%} (the decomposition: "
                f"{row_limit / 3:.2%}): quantize "
                "with one scale per row of x and per output channel of the weight."
            )
    return passed("outlier columns in float32, the rest in INT8: error close to the reference.")
