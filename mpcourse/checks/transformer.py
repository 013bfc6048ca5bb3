"""Checks for the exercises of course/15_transformers.ipynb (attention and a training step)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch

from ._core import (
    NotAnswered,
    _error_line,
    call_answer,
    expect_tensor,
    fail,
    passed,
    require_answer,
)

_LOW = (torch.float16, torch.bfloat16)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# -- exercise 1: attention scores that do not overflow FP16 ---------------------------------------
def check_fp16_scores(scores: Callable) -> bool:
    """``scores(q, k)``: ``q @ k^T / sqrt(d)`` for FP16 ``(..., T, d)`` inputs, finite wherever the
    true scaled scores fit in FP16, even when the unscaled product ``q @ k^T`` does not."""
    require_answer(scores, "`scores`")
    gen = torch.Generator().manual_seed(1515)
    for trial in range(5):
        d = [16, 32, 64, 128, 48][trial]
        T = int(torch.randint(3, 9, (1,), generator=gen))
        # entries large enough that q.k overflows FP16 (> 65504) but q.k/sqrt(d) fits
        mag = math.sqrt(3 * 65504 / d) * (1.0 + 0.3 * float(torch.rand(1, generator=gen)))
        q = (torch.randn(2, T, d, generator=gen).sign() * mag).to(torch.float16)
        k = (torch.randn(2, T, d, generator=gen).sign() * mag).to(torch.float16)
        ref = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(d)
        got = call_answer(scores, q, k, what="scores")
        where = f"for FP16 q, k of shape (2, {T}, {d}) with entries of magnitude {mag:.0f}"
        peak = ref.abs().max() * math.sqrt(d)
        expect_tensor(
            got,
            ref.shape,
            "scores",
            where,
            nonfinite_hint=f"q @ k^T reaches {peak:.0f} > 65504 before the 1/sqrt(d) scale; "
            "scale q first or compute in float32.",
        )
        err = ((got.double() - ref).abs() / ref.abs().clamp_min(1.0)).max()
        if err > 1e-2:
            fail(f"scores differ from q @ k^T / sqrt(d) by {float(err):.3g} (relative) {where}.")
    return passed("the scores stay finite where q @ k^T itself overflows FP16 (5 unseen cases).")


# -- exercise 2: masked attention whose fully masked rows give 0, not NaN -------------------------
def _masked_reference(q, k, v, keep):  # noqa: ANN001, ANN202
    s = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(q.size(-1))
    s = s.masked_fill(~keep, float("-inf"))
    w = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return w @ v.double()


def check_masked_attention(attention: Callable) -> bool:
    """``attention(q, k, v, keep)``: softmax attention where ``keep[i, j]`` says query i may see key
    j, in q's dtype (FP16 or BF16), with rows that may see nothing returning zeros (SDPA's rule)."""
    require_answer(attention, "`attention`")
    gen = torch.Generator().manual_seed(2020)
    for trial in range(6):
        dtype = _LOW[trial % 2]
        T, S, d = (int(torch.randint(3, 9, (1,), generator=gen)) for _ in range(3))
        q, k, v = (torch.randn(2, n, d, generator=gen).to(dtype) for n in (T, S, S))
        keep = torch.rand(2, T, S, generator=gen) < 0.6
        keep[0, 0] = False  # one query that may see nothing
        keep[1, -1] = True  # and one that sees everything
        ref = _masked_reference(q, k, v, keep)
        where = f"for {_name(dtype)} q of shape (2, {T}, {d}) with {S} keys"
        try:
            got = call_answer(attention, q, k, v, keep, what="attention")
        except NotAnswered:
            raise
        expect_tensor(got, ref.shape, "attention", where)
        if got.dtype != dtype:
            fail(f"attention returned {_name(got.dtype)} {where}: return q's dtype.")
        if bool(torch.isnan(got[0, 0]).any()):
            fail(
                f"a query whose keys are all masked gave NaN {where}: softmax of a row of -inf "
                "is 0/0; return zeros for such rows (as SDPA does)."
            )
        if not bool(torch.isfinite(got).all()):
            fail(f"attention returned inf/NaN {where}.")
        if bool((got[0, 0] != 0).any()):
            fail(
                f"a query whose keys are all masked gave {got[0, 0, :3].tolist()}... {where}: "
                "a finite mask constant makes that row a uniform average; SDPA returns zeros."
            )
        tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
        err = (got.double() - ref).abs().max()
        if err > tol:
            fail(f"attention differs from the reference by {float(err):.3g} {where}.")
    return passed("masked attention matches, fully masked rows give 0 (6 unseen FP16/BF16 cases).")


# -- exercise 3: the bug hunt in a transformer training step (FP16 + GradScaler, accumulation) ----
class _SpyScaler(torch.amp.GradScaler):
    def __init__(self) -> None:
        super().__init__("cpu", init_scale=2.0**12)
        self.calls: list[str] = []

    def scale(self, outputs):  # noqa: ANN001, ANN201
        self.calls.append("scale")
        return super().scale(outputs)

    def unscale_(self, optimizer):  # noqa: ANN001, ANN201
        self.calls.append("unscale_")
        return super().unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        self.calls.append("step")
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):  # noqa: ANN001, ANN201
        self.calls.append("update")
        return super().update(new_scale)


def _micro_grads(model, batches):  # noqa: ANN001, ANN202
    """Per-micro-batch FP32 gradients (under FP16 autocast, unscaled) of a copy of ``model``."""
    out = []
    for x, y in batches:
        m = copy.deepcopy(model)
        with torch.autocast("cpu", dtype=torch.float16):
            _, loss = m(x, y)
        loss.backward()
        out.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    return out


def check_transformer_step(train_step: Callable) -> bool:
    """``train_step(model, opt, scaler, micro_batches, max_norm)``: one optimizer step over several
    micro-batches with FP16 autocast and a GradScaler. Runs it on unseen models and batches and
    names each bug still present."""
    from ..transformer import GPT, GPTConfig

    require_answer(train_step, "`train_step`")
    if not callable(train_step):
        fail("train_step should be a function (def train_step(...)).")
    gen = torch.Generator().manual_seed(3030)
    with torch.random.fork_rng():
        for trial in range(2):
            torch.manual_seed(100 + trial)
            cfg = GPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=16)
            model = GPT(cfg)
            n = 2 + trial
            batches = []
            for _ in range(n):
                x = torch.randint(256, (2, 8), generator=gen)
                batches.append((x, torch.randint(256, (2, 8), generator=gen)))
            micro = _micro_grads(model, batches)
            mean = torch.stack(micro).mean(0)
            norm = float(mean.norm())
            max_norm = 4.0 * norm  # binds only on gradients that were not unscaled
            opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the gradients are the result
            scaler = _SpyScaler()
            try:
                train_step(model, opt, scaler, list(batches), max_norm)
            except NotImplementedError:
                raise NotAnswered(
                    "train_step still raises NotImplementedError: fix the step above, run it, "
                    "then rerun."
                ) from None
            except RuntimeError as err:
                if "unscale_() has already been called" in str(err):
                    fail(
                        "scaler.unscale_(opt) runs once per micro-batch: call it once per "
                        "optimizer step, after the last backward and before clipping."
                    )
                fail(f"your train_step raised {_error_line(err)}")
            except Exception as err:  # noqa: BLE001
                fail(f"your train_step raised {_error_line(err)}")
            calls = scaler.calls
            if calls.count("scale") != n:
                fail(
                    f"scaler.scale ran {calls.count('scale')} times for {n} micro-batches: "
                    "scale each micro-batch's loss before its backward."
                )
            if calls.count("step") != 1 or calls.count("update") != 1:
                fail(
                    "call scaler.step(opt) and scaler.update() once per optimizer step, after "
                    "all micro-batches."
                )
            if "unscale_" not in calls:
                fail(
                    "clip_grad_norm_ saw scaled gradients: call scaler.unscale_(opt) before "
                    "clipping."
                )
            if any(p.grad is None for p in model.parameters()):
                fail("some parameters have no gradient after train_step: did it run backward?")
            got = torch.cat([p.grad.flatten() for p in model.parameters()])

            def close(ref: torch.Tensor, got: torch.Tensor = got) -> bool:
                return float((got - ref).norm() / ref.norm()) < 0.05

            if close(mean):
                continue
            if close(micro[-1] / n) or close(micro[-1]):
                fail(
                    "only the last micro-batch's gradient is left: opt.zero_grad() runs inside "
                    "the loop; zero once, before the first micro-batch."
                )
            if close(mean * n):
                fail(
                    f"the gradient is {n}x too large ({n} micro-batches): divide each loss by "
                    "the number of micro-batches before scaler.scale(...).backward()."
                )
            if float(got.norm()) < 0.5 * norm:
                fail(
                    "the gradient was clipped far below its norm: clipping saw scaled gradients; "
                    "call scaler.unscale_(opt) before clip_grad_norm_."
                )
            fail(
                f"after train_step the gradient is not the mean over the {n} micro-batches "
                f"(relative error {float((got - mean).norm() / mean.norm()):.3g})."
            )
    return passed("one unscale_, the mean gradient, one step and one update (2 unseen models).")
