"""Checks for the diagnosis exercises of course/10_debugging.ipynb."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ._core import call_answer, expect_tensor, fail, passed, require_answer

_LOW = (torch.float16, torch.bfloat16)


# -- exercise 1: an RMSNorm that does not silently return zeros in FP16 ------------------------
def _rms_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x64 = x.double()
    y = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * weight.double()
    return y.to(x.dtype)


def _seeded(check: Callable, answer: Callable, seed: int) -> bool:
    """``check(answer, generator)`` on hidden cases drawn from ``seed``, leaving the global
    RNG as it was (the student's notebook keeps its own random stream)."""
    with torch.random.fork_rng():
        return check(answer, torch.Generator().manual_seed(seed))


def check_rms_norm(rms_norm: Callable) -> bool:
    """``rms_norm(x, weight, eps)``: ``x / sqrt(mean(x^2) + eps) * weight``, safe in FP16/BF16."""
    require_answer(rms_norm, "`rms_norm`")
    return _seeded(_check_rms_norm, rms_norm, 1010)


def _check_rms_norm(rms_norm: Callable, gen: torch.Generator) -> bool:
    for trial in range(6):
        dtype = _LOW[trial % 2]
        rows, width = int(torch.randint(2, 9, (1,), generator=gen)), 16 * (1 + trial)
        magnitude = [0.01, 1.0, 300.0, 2000.0, 40.0, 600.0][trial]
        x = (torch.randn(rows, width, generator=gen) * magnitude).to(dtype)
        weight = (torch.rand(width, generator=gen) + 0.5).to(dtype)
        eps = 1e-6
        expected = _rms_reference(x, weight, eps)
        for autocast in (False, True):
            with torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
                got = call_answer(rms_norm, x, weight, eps, what="rms_norm")
            where = (
                f"on {rows}x{width} {str(dtype).replace('torch.', '')} inputs of magnitude "
                f"~{magnitude:g}" + (" under FP16 autocast" if autocast else "")
            )
            if not isinstance(got, torch.Tensor) or got.shape != x.shape:
                fail(f"rms_norm should return a tensor of x's shape {tuple(x.shape)}, {where}.")
            dead = (got == 0).all(-1) & (expected != 0).any(-1)
            if bool(dead.any()):
                fail(
                    f"rms_norm returned all zeros on {int(dead.sum())} row(s) {where}: x^2 "
                    "overflowed FP16 (|x| > 256 gives x^2 > 65504 = inf) and rsqrt(inf) = 0, a "
                    "silent failure with no NaN; compute the statistics in float32."
                )
            if not bool(torch.isfinite(got).all()):
                fail(
                    f"rms_norm returned inf/NaN {where}: mean(x^2) overflowed. x^2 exceeds "
                    "FP16's 65504 once |x| > 256; compute the statistics in float32."
                )
            if got.dtype != x.dtype:
                fail(
                    f"rms_norm returned {got.dtype} for {x.dtype} inputs {where}: compute in "
                    "float32 inside, then cast the result back to x.dtype (the next layer "
                    "expects the dtype it gave you)."
                )
            tol = 1e-2 if dtype == torch.float16 else 3e-2
            if not torch.allclose(got.double(), expected.double(), rtol=tol, atol=tol):
                err = float((got.double() - expected.double()).abs().max())
                why = "Mean over the last dimension, eps inside the sqrt."
                if dtype == torch.float16 and magnitude > 256:
                    why = (
                        "x^2 overflows FP16 (> 65504) once |x| > 256, and 1/sqrt(inf) = 0: "
                        "compute the statistics in float32."
                    )
                fail(
                    f"rms_norm differs from x / sqrt(mean(x^2) + eps) * weight {where}: max "
                    f"error {err:.3g}. {why}"
                )
    return passed(
        "rms_norm is finite and accurate in FP16 and BF16, up to |x| ~ 2000 and under autocast."
    )


# -- exercise 2: a BF16-trained model that overflows FP16 at inference (the T5 story) ----------
def _hot_model(gen: torch.Generator) -> tuple[nn.Sequential, int, torch.Tensor]:
    """Blocks of Linear-GELU; block ``hot`` expands to ~1e5 inside, then shrinks again."""
    width = int(torch.randint(8, 33, (1,), generator=gen))
    n_blocks = int(torch.randint(4, 7, (1,), generator=gen))
    hot = int(torch.randint(1, n_blocks - 1, (1,), generator=gen))
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    blocks = []
    for _ in range(n_blocks):
        block = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        blocks.append(block)
    model = nn.Sequential(*blocks).eval()
    x = torch.randn(int(torch.randint(4, 17, (1,), generator=gen)), width, generator=gen)
    with torch.no_grad():  # block `hot` peaks at 3e5 inside (FP16's max is 65504), output unchanged
        model[hot - 1][2].weight.mul_(40.0)  # a larger input, so the weights still fit FP16
        inner = model[:hot](x)
        peak = float(model[hot][0](inner).abs().max())
        model[hot][0].weight.mul_(3e5 / peak)
        model[hot][0].bias.mul_(3e5 / peak)
        model[hot][2].weight.mul_(peak / 3e5)
    return model, hot, x


def check_safe_inference(safe_forward: Callable) -> bool:
    """``safe_forward(model, x)``: FP16 autocast inference, overflowing blocks kept in FP32."""
    require_answer(safe_forward, "`safe_forward`")
    return _seeded(_check_safe_inference, safe_forward, 2020)


def _check_safe_inference(safe_forward: Callable, gen: torch.Generator) -> bool:
    for _ in range(3):
        model, hot, x = _hot_model(gen)
        with torch.no_grad():
            expected = model(x)
        seen: dict[str, torch.dtype] = {}
        handles = [
            m.register_forward_hook(lambda m, a, o, n=n, s=seen: s.__setitem__(n, o.dtype))
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear)
        ]
        try:
            with torch.no_grad():
                got = call_answer(safe_forward, model, x, what="safe_forward")
        finally:
            for h in handles:
                h.remove()
        where = f"(a {len(model)}-block model whose block {hot} holds activations ~3e5)"
        expect_tensor(
            got,
            expected.shape,
            "safe_forward",
            where,
            nonfinite_hint="some block still overflows FP16. Find it with "
            "mpcourse.debug.headroom(model, x).overflows(FP16), which names submodules such as "
            "'2.0': map them to their block '2'.",
        )
        wrong_fp32 = sorted(
            n for n, d in seen.items() if not n.startswith(f"{hot}.") and d != torch.float16
        )
        if wrong_fp32:
            fail(
                f"the Linear layers {wrong_fp32} did not run in float16 {where}: keep FP16 "
                "autocast for every block that fits, and only the overflowing block in FP32."
            )
        if any(seen.get(f"{hot}.{i}") != torch.float32 for i in (0, 2)):
            fail(f"block {hot} did not run in float32 {where}: it is the one that overflows.")
        if not torch.allclose(got.float(), expected, rtol=2e-2, atol=2e-2):
            err = float((got.float() - expected).abs().max())
            fail(f"safe_forward's output differs from the FP32 model's by {err:.3g} {where}.")
    return passed(
        "only the overflowing block ran in FP32, the others in FP16, and the output is finite."
    )


# -- exercise 3: three AMP bugs in one training loop ---------------------------------------------
BUGS = (
    "BCELoss on a sigmoid (use BCEWithLogitsLoss on the logits)",
    "clipping before unscale_ (the norm of S * g is clipped)",
    "scheduler.step() after skipped steps",
)


def _bug_setup(seed: int) -> tuple:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    with torch.no_grad():
        model[2].weight.mul_(8.0)  # confident logits, where sigmoid + BCE in FP16 loses
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**18)  # the first step overflows
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(8):
        x = torch.randn(32, 6, generator=gen)
        batches.append((x, (x[:, :1] + x[:, 1:2] > 0).float()))
    return model, opt, sched, scaler, batches


def _variant(
    bugs: tuple[bool, bool, bool], seed: int, fp32_bce: bool = False
) -> tuple[list[torch.Tensor], int]:
    """The loop with the chosen bugs; returns the parameters and scheduler.last_epoch.

    ``fp32_bce``: the loss fixed the other way, sigmoid + BCELoss on ``logits.float()``."""
    bce, clip_early, sched_always = bugs
    model, opt, sched, scaler, batches = _bug_setup(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for x, y in batches:
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                logits = model(x)
                if bce:
                    loss = nn.BCELoss()(torch.sigmoid(logits), y)
                elif fp32_bce:
                    loss = nn.BCELoss()(torch.sigmoid(logits.float()), y)
                else:
                    loss = nn.BCEWithLogitsLoss()(logits, y)
            scaler.scale(loss).backward()
            if not clip_early:
                scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            before = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            if sched_always or scaler.get_scale() >= before:
                sched.step()
    return [p.detach().clone() for p in model.parameters()], sched.last_epoch


def check_broken_loop(train_fixed: Callable) -> bool:
    """``train_fixed(model, optimizer, scheduler, scaler, batches)`` with the three bugs fixed."""
    require_answer(train_fixed, "`train_fixed`")
    with torch.random.fork_rng():
        return _check_broken_loop(train_fixed, seed=3030)


class _OpNames(TorchDispatchMode):
    """Records the names of the aten ops that run (after autocast's casts)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.sigmoid_dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = func.overloadpacket.__name__
        self.names.add(name)
        out = func(*args, **(kwargs or {}))
        if name == "sigmoid" and isinstance(out, torch.Tensor):
            self.sigmoid_dtypes.add(out.dtype)
        return out


def _check_broken_loop(train_fixed: Callable, seed: int) -> bool:
    model, opt, sched, scaler, batches = _bug_setup(seed)
    with warnings.catch_warnings(record=True) as caught, _OpNames() as ops:
        warnings.simplefilter("always")
        call_answer(train_fixed, model, opt, sched, scaler, batches, what="train_fixed")
    got = [p.detach() for p in model.parameters()]
    warned = any("lr_scheduler.step()" in str(m.message) for m in caught)
    ran_bce = "binary_cross_entropy" in ops.names
    bce = ran_bce and torch.float16 in ops.sigmoid_dtypes  # the sigmoid rounded to FP16
    fp32_bce = ran_bce and not bce  # sigmoid + BCELoss in FP32: a fix, too

    def same(params: list[torch.Tensor]) -> bool:
        return all(
            torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(got, params, strict=True)
        )

    ref, ref_epoch = _variant((False, False, False), seed, fp32_bce)
    if not bce and same(ref) and sched.last_epoch == ref_epoch and not warned:
        loss_note = (
            "sigmoid + BCELoss in FP32 (it works; BCEWithLogitsLoss is still the usual choice: "
            "its log-sum-exp form never saturates, while an FP32 sigmoid rounds to 1 for "
            "logits above ~17)"
            if fp32_bce
            else "BCEWithLogitsLoss"
        )
        return passed(
            f"{loss_note}, unscale_ before clipping, and the scheduler only steps when the "
            "optimizer did: the loop matches the reference on a fresh run."
        )
    for clip, always in itertools.product((False, True), repeat=2):
        params, epoch = _variant((bce, clip, always), seed, fp32_bce)
        if same(params) and epoch == sched.last_epoch:
            left = [name for name, b in zip(BUGS, (bce, clip, always), strict=True) if b]
            if left:
                fail(f"still present: {'; '.join(left)}.")
    if bce:
        fail(f"still present: {BUGS[0]}, and the loop differs from the reference in other ways.")
    if sched.last_epoch != ref_epoch:
        fail(
            f"the scheduler stepped {sched.last_epoch} times, but the optimizer stepped only "
            f"{ref_epoch} times (the scaler skipped the others): step the scheduler only after a "
            "step that was not skipped (ScaleMonitor.step() returns True when it was)."
        )
    fail(
        "the parameters differ from the fixed loop's (zero_grad, autocast forward with "
        "BCEWithLogitsLoss, scale(loss).backward(), unscale_, clip to 1.0, step, update, "
        "scheduler if not skipped); no combination of the three bugs explains the difference."
    )
