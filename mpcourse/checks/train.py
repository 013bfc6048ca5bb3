"""Checks for the exercises of course/07_amp_training.ipynb."""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..train import optimizer_step, train
from ._core import CheckFailed, NotAnswered, _error_line, call_answer, fail, passed, require_answer


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


# -- exercise 1: the bug hunt ---------------------------------------------------------------------
def _fixed_amp_steps(model, optimizer, scheduler, scaler, batches, max_norm, accumulation):  # noqa: ANN001, ANN202
    for i, (x, y) in enumerate(batches):
        with torch.autocast(x.device.type, dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), y) / accumulation
        scaler.scale(loss).backward()
        if (i + 1) % accumulation == 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            before = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            if scaler.get_scale() >= before:
                scheduler.step()
            optimizer.zero_grad()


def _uses_package_loop(fn: Callable) -> bool:
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return False
    return any(name in source for name in ("optimizer_step(", "train(", "mpcourse"))


def _hunt_case(seed: int) -> dict[str, Any]:
    """A hidden case: a random MLP, accumulation 1-3, one batch that overflows FP16."""
    gen = torch.Generator().manual_seed(1000 + seed)
    width = int(torch.randint(8, 25, (1,), generator=gen))
    accumulation = int(torch.randint(1, 4, (1,), generator=gen))
    groups = 3
    batches = [
        (torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen))
        for _ in range(groups * accumulation)
    ]
    bad = int(torch.randint(0, accumulation, (1,), generator=gen)) + accumulation  # group 2
    batches[bad][0][0, 0] = 1e6  # beyond FP16's 65504: this group's step must be skipped
    max_norm = float(torch.empty(1).uniform_(0.05, 0.5, generator=gen))
    return {
        "seed": seed,
        "width": width,
        "accumulation": accumulation,
        "batches": batches,
        "max_norm": max_norm,
        "groups": groups,
    }


def _hunt_setup(case: dict[str, Any], spy: bool):  # noqa: ANN202
    torch.manual_seed(case["seed"])
    model = nn.Sequential(nn.Linear(6, case["width"]), nn.ReLU(), nn.Linear(case["width"], 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    scaler = _SpyScaler() if spy else torch.amp.GradScaler("cpu", init_scale=2.0**10)
    return model, opt, sched, scaler


def _count_steps(optimizer: torch.optim.Optimizer) -> list[int]:
    """A one-element list that counts the optimizer's real steps (a step post-hook)."""
    count = [0]

    def hook(*_: Any) -> None:
        count[0] += 1

    optimizer.register_step_post_hook(hook)
    return count


def _require_own_loop(fn: object, name: str) -> None:
    """The answer is a function that writes the loop itself (the package's loop is the key)."""
    if not callable(fn):
        fail(f"{name} should be a function (def {name}(...)).")
    if _uses_package_loop(fn):
        fail(
            "write the loop with torch calls only: mpcourse's train/optimizer_step are the "
            "answer key."
        )


def check_amp_bug_hunt(amp_steps: Callable) -> bool:
    """Exercise 1 of chapter 07: the three bugs of an AMP loop, found and fixed.

    Runs ``amp_steps`` on hidden random cases (model width, accumulation, where the
    overflow happens) and names each bug still present in its own short message."""
    require_answer(amp_steps, "`amp_steps`")
    _require_own_loop(amp_steps, "amp_steps")
    for seed in range(3):
        case = _hunt_case(seed)
        model, opt, sched, scaler = _hunt_setup(case, spy=True)
        real_steps = _count_steps(opt)
        error = None
        try:
            amp_steps(
                model,
                opt,
                sched,
                scaler,
                [(x.clone(), y) for x, y in case["batches"]],
                case["max_norm"],
                case["accumulation"],
            )
        except NotImplementedError:
            raise NotAnswered(
                "amp_steps still raises NotImplementedError: fix the loop above, run it, then "
                "rerun."
            ) from None
        except Exception as err:  # noqa: BLE001 - the spy's record still names the bug
            error = err
        calls = scaler.calls
        if "scale" not in calls:
            fail(
                "bug 1 is still there: loss.backward() runs on the unscaled loss; use "
                "scaler.scale(loss).backward()."
            )
        if "step" not in calls and (real_steps[0] > 0 or "update" not in calls):
            fail(
                "optimizer.step() is called directly: use scaler.step(optimizer), which skips a "
                "step whose gradients hold inf/NaN."
            )
        if "update" in calls and (
            "step" not in calls or calls.index("update") < calls.index("step")
        ):
            fail(
                "scaler.update() ran before scaler.step(optimizer): call it once per optimizer "
                "step, after scaler.step."
            )
        if "unscale_" not in calls:
            fail(
                "bug 2 is still there: clip_grad_norm_ sees gradients multiplied by the scale; "
                "call scaler.unscale_(optimizer) before clipping."
            )
        if error is not None:
            fail(f"your amp_steps raised {_error_line(error)}")
        groups = case["groups"]
        if calls.count("update") != groups:
            fail(
                f"scaler.update() ran {calls.count('update')} times for {groups} optimizer steps: "
                "call it once per optimizer step, after scaler.step."
            )
        if sched.last_epoch != real_steps[0]:
            fail(
                f"bug 3 is still there: the scheduler stepped {sched.last_epoch} times but the "
                f"optimizer only {real_steps[0]} (one step was skipped); step the scheduler only "
                "when the scale did not drop in update()."
            )
        ref_model, ref_opt, ref_sched, ref_scaler = _hunt_setup(case, spy=False)
        _fixed_amp_steps(
            ref_model,
            ref_opt,
            ref_sched,
            ref_scaler,
            case["batches"],
            case["max_norm"],
            case["accumulation"],
        )
        same = all(
            torch.allclose(a, b, rtol=1e-5, atol=1e-7)
            for a, b in zip(model.parameters(), ref_model.parameters(), strict=True)
        )
        if not same:
            fail(
                "the parameters differ from the fixed loop's: clip after "
                "scaler.unscale_(optimizer), and keep the loss divided by accumulation."
            )
    return passed(
        "all three bugs fixed: scaled backward, unscale_ before clipping, scheduler only after "
        "real steps (3 hidden cases, one overflow each)."
    )


# -- exercise 3: the plain loop, written by the student -----------------------------------------
def _plain_case(seed: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(2000 + seed)
    precision = ("amp-fp16", "amp-bf16", "fp32", "amp-fp16")[seed % 4]
    accumulation = int(torch.randint(1, 4, (1,), generator=gen))
    n_batches = int(torch.randint(5, 9, (1,), generator=gen))  # the last group may be short
    batches = [
        (torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen))
        for _ in range(n_batches)
    ]
    if seed % 2 == 0 and precision == "amp-fp16":
        batches[1][0][0, 0] = 1e6  # an overflow: a skipped step the scheduler must not follow
    clip = None if seed == 1 else float(torch.empty(1).uniform_(0.05, 0.5, generator=gen))
    return {
        "seed": seed,
        "precision": precision,
        "accumulation": accumulation,
        "batches": batches,
        "max_grad_norm": clip,
    }


def _plain_setup(seed: int):  # noqa: ANN202
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.8)
    return model, opt, sched


def check_plain_amp_loop(plain_fit: Callable) -> bool:
    """Exercise 3 of chapter 07: ``plain_fit(model, batches, optimizer, scheduler, *, precision,
    accumulation_steps, max_grad_norm)`` -> the scale used at each optimizer step; it must
    equal ``mpcourse.train.train`` bit for bit on hidden cases."""
    require_answer(plain_fit, "`plain_fit`")
    _require_own_loop(plain_fit, "plain_fit")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed in range(4):
            case = _plain_case(seed)
            model, opt, sched = _plain_setup(seed)
            try:
                scales = plain_fit(
                    model,
                    [(x.clone(), y) for x, y in case["batches"]],
                    opt,
                    sched,
                    precision=case["precision"],
                    accumulation_steps=case["accumulation"],
                    max_grad_norm=case["max_grad_norm"],
                )
            except NotImplementedError:
                raise NotAnswered(
                    "plain_fit still raises NotImplementedError: write its body above, run it, "
                    "then rerun."
                ) from None
            except CheckFailed:
                raise
            except Exception as err:  # noqa: BLE001
                fail(f"your plain_fit raised {_error_line(err)} (precision={case['precision']!r}).")
            ref_model, ref_opt, ref_sched = _plain_setup(seed)
            hist = train(
                ref_model,
                case["batches"],
                ref_opt,
                precision=case["precision"],
                accumulation_steps=case["accumulation"],
                scheduler=ref_sched,
                max_grad_norm=case["max_grad_norm"],
            )
            where = (
                f"precision={case['precision']!r}, accumulation_steps={case['accumulation']}, "
                f"{len(case['batches'])} batches"
            )
            scales = [float(s) for s in scales] if scales is not None else None
            if scales is None or len(scales) != hist.steps:
                fail(
                    f"with {where}: return the scale used at each optimizer step ({hist.steps} "
                    f"steps), got {scales!r}."
                )
            if case["precision"] != "amp-fp16" and any(s != 1.0 for s in scales):
                fail(
                    f"with {where}: the scaler must be disabled for {case['precision']} "
                    "(GradScaler(..., enabled=precision == 'amp-fp16'))."
                )
            if scales != hist.scale:
                fail(
                    f"with {where}: scales {scales} differ from train()'s {hist.scale}: update() "
                    "once per optimizer step."
                )
            if ref_opt.param_groups[0]["lr"] != opt.param_groups[0]["lr"]:
                fail(
                    f"with {where}: the learning rate is {opt.param_groups[0]['lr']:.4g}, "
                    f"train()'s {ref_opt.param_groups[0]['lr']:.4g}: step the scheduler once per "
                    "optimizer step that was not skipped."
                )
            if not all(
                torch.equal(a, b)
                for a, b in zip(model.parameters(), ref_model.parameters(), strict=True)
            ):
                fail(
                    f"with {where}: the parameters differ from train()'s; is each loss divided by "
                    "the size of its accumulation group (the last one may be short), and "
                    "clipping after unscale_?"
                )
    finally:
        torch.set_num_threads(threads)
    return passed(
        "your plain loop equals mpcourse.train.train bit for bit on 4 hidden cases (fp16 with a "
        "skip, bf16, fp32, short last group)."
    )
