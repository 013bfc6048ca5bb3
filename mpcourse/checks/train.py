"""Checks for the exercises of course/07_amp_training.ipynb."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..train import optimizer_step
from ._core import call_answer, fail, passed, require_answer


class _SpyScaler(torch.amp.GradScaler):
    """A GradScaler that records the order of the calls made on it."""

    def __init__(self) -> None:
        super().__init__("cpu", init_scale=2.0**10)
        self.calls: list[str] = []
        self._in_step = False

    def scale(self, outputs):  # noqa: ANN001, ANN201
        self.calls.append("scale")
        return super().scale(outputs)

    def unscale_(self, optimizer):  # noqa: ANN001, ANN201
        if not self._in_step:  # step() unscales by itself when the user did not
            self.calls.append("unscale_")
        return super().unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):  # noqa: ANN001, ANN201
        self.calls.append("step")
        self._in_step = True
        try:
            return super().step(optimizer, *args, **kwargs)
        finally:
            self._in_step = False

    def update(self, new_scale=None):  # noqa: ANN001, ANN201
        self.calls.append("update")
        return super().update(new_scale)


def _setup(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    return model, opt, x, y


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.float16):
        return nn.functional.cross_entropy(model(x), y)


def check_amp_step(amp_step: Callable) -> bool:
    """``amp_step(loss, optimizer, scaler, model, max_norm)``: scale, unscale_, clip, step."""
    require_answer(amp_step, "`amp_step`")
    model, opt, x, y = _setup()
    ref_model, ref_opt, _, _ = _setup()
    ref_scaler, scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10), _SpyScaler()
    for _ in range(3):
        before = len(scaler.calls)
        call_answer(amp_step, _loss(model, x, y), opt, scaler, model, 0.1, what="amp_step")
        calls = scaler.calls[before:]
        if "scale" not in calls:
            fail("amp_step never called scaler.scale(loss): backpropagate the *scaled* loss.")
        if "update" not in calls:
            fail(
                f"one call of amp_step made the scaler calls {calls}: scaler.update() is missing. "
                "Call it once after scaler.step(optimizer); without it the scale never adapts "
                "and the next step's unscale_ fails."
            )
        if calls != ["scale", "unscale_", "step", "update"]:
            fail(
                f"one call of amp_step made the scaler calls {calls}; one step must be scale -> "
                "unscale_ -> (clip) -> step -> update. Hint: unscale_ before clipping, so the "
                "norm is the true gradient norm, and update once after step."
            )
        ref_scaler.scale(_loss(ref_model, x, y)).backward()
        optimizer_step(ref_opt, ref_scaler, max_grad_norm=0.1)
        opt.zero_grad(set_to_none=True)
    same = all(
        torch.allclose(a, b, rtol=1e-5, atol=1e-7)
        for a, b in zip(model.parameters(), ref_model.parameters(), strict=True)
    )
    if not same:
        fail(
            "after 3 steps the parameters differ from the reference (unscale_ -> "
            "clip_grad_norm_(max_norm) -> step -> update). Did you clip the gradients of "
            "model.parameters() to max_norm after unscale_?"
        )
    return passed("scale -> backward -> unscale_ -> clip -> step -> update, as the AMP docs say.")


def check_resume(answer: tuple[Callable, Callable]) -> bool:
    """``answer = (save, load)``: a checkpoint that resumes an FP16 + GradScaler run exactly."""
    require_answer(answer, "`answer = (save, load)`")
    if not (isinstance(answer, tuple) and len(answer) == 2):
        fail(f"answer should be a tuple (save, load) of two functions, got {answer!r}.")
    save, load = answer

    def run(steps: int, model: nn.Module, opt: torch.optim.Optimizer, scaler, x, y) -> None:  # noqa: ANN001
        for _ in range(steps):
            scaler.scale(_loss(model, x, y)).backward()
            optimizer_step(opt, scaler)

    def fresh() -> tuple:
        model, opt, x, y = _setup()
        # a scale so large that the first steps overflow and are skipped: the scale moves
        return model, opt, torch.amp.GradScaler("cpu", init_scale=2.0**40, growth_interval=2), x, y

    model, opt, scaler, x, y = fresh()
    run(12, model, opt, scaler, x, y)
    expected = [p.detach().clone() for p in model.parameters()]
    model, opt, scaler, x, y = fresh()
    run(6, model, opt, scaler, x, y)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.pt"
        call_answer(save, path, model, opt, scaler, what="save")
        model, opt, scaler, x, y = fresh()
        call_answer(load, path, model, opt, scaler, what="load")
    if scaler.get_scale() == 2.0**40:
        fail(
            "after load the scaler is back at its initial scale 2**40: save scaler.state_dict() "
            "and restore it with scaler.load_state_dict(...)."
        )
    run(6, model, opt, scaler, x, y)
    if not all(torch.equal(a, b) for a, b in zip(model.parameters(), expected, strict=True)):
        fail("the resumed run does not end with the same parameters as the uninterrupted one.")
    return passed("6 + 6 steps through your checkpoint == 12 steps, bit for bit, scale included.")
