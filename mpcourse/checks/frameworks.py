"""Checks for the exercises of course/17_frameworks.ipynb (backed by mpcourse.frameworks)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from ..frameworks import FP32_REASONS, probe, trainer_fp32_reason
from ..frameworks.platforms import TRAINER_FLAGS
from ._core import call_answer, fail, passed, require_answer

_FIELDS = ("param_dtype", "compute_dtype", "output_dtype", "loss_dtype", "loss_scaler",
           "master_weights")  # fmt: skip
_HINTS = {
    "param_dtype": "'-true' casts the whole module: the parameters themselves are 16-bit.",
    "compute_dtype": "the Linear's weights and inputs are BF16, so is its output.",
    "output_dtype": "nothing converts the model's output back to FP32 in Lightning.",
    "loss_dtype": "no autocast: cross_entropy of a BF16 output stays BF16.",
    "loss_scaler": "BF16 has FP32's range; Lightning creates a scaler only for '16-mixed'.",
    "master_weights": "the optimizer updates the BF16 parameters: no FP32 copy anywhere.",
}


def check_predicted_row(prediction: dict[str, Any]) -> bool:
    """``prediction``: the row of ``probe("lightning", "bf16-true")`` before seeing it, a
    dict with the six contract fields. Compared with a live probe on this machine; each
    wrong field is named with what it measured."""
    require_answer(prediction, "`prediction` (a dict with the six fields)")
    if not isinstance(prediction, dict):
        fail(f"prediction should be a dict, got {type(prediction).__name__}.")
    missing = [f for f in _FIELDS if f not in prediction]
    if missing:
        fail(f"prediction is missing {', '.join(missing)}: give all of {', '.join(_FIELDS)}.")
    measured = probe("lightning", "bf16-true")
    if measured["error"]:
        fail(f"the probe could not run here ({measured['error']}); nothing to compare with.")
    for f in _FIELDS:
        got, want = prediction[f], measured[f]
        if isinstance(want, bool) or want is None or isinstance(got, bool):
            same = got is want or got == want
        else:
            same = got == want
        if not same:
            fail(f"{f}: you predicted {got!r}, the probe measured {want!r}. {_HINTS[f]}")
    return passed("your row matches what Lightning's 'bf16-true' measured: pure BF16 (ch. 14).")


def _cases(seed: int = 17) -> list[tuple[dict[str, bool], str]]:
    rng = random.Random(seed)
    cases = [({"fp16": True}, "cpu"), ({"bf16_full_eval": True}, "cuda")]
    while len(cases) < 24:
        flags = {f: rng.random() < 0.35 for f in TRAINER_FLAGS}
        if flags["fp16"] and flags["bf16"]:  # the Trainer refuses both (training_args.py)
            continue
        device = rng.choice(("cpu", "cuda"))
        if flags["tf32"] and device == "cpu":  # the Trainer refuses tf32 without a GPU
            continue
        cases.append(({k: v for k, v in flags.items() if v or rng.random() < 0.3}, device))
    return cases


def check_fp32_reason(why_fp32: Callable[[dict[str, bool], str], str | None]) -> bool:
    """``why_fp32(flags, device_type)``: why the Trainer's step computes in FP32 with these
    TrainingArguments flags (one of ``FP32_REASONS``), or None when it computes in 16 bits.
    Checked on 24 flag combinations, most of them random, on 'cpu' and 'cuda'."""
    require_answer(why_fp32, "`why_fp32`")
    for flags, device in _cases():
        got = call_answer(why_fp32, dict(flags), device, what="why_fp32")
        want = trainer_fp32_reason(flags, device)
        if got != want:
            shown = {k: v for k, v in flags.items() if v} or "no flag"
            if want is None:
                hint = "a 16-bit training flag wins over eval-only and tf32 flags."
            elif want == "fp16-on-cpu":
                hint = "Accelerate ignores fp16 on a CPU (no autocast, no scaler, no warning)."
            elif want == "eval-only":
                hint = "*_full_eval flags change evaluation only; training stays FP32."
            elif want == "tf32-is-fp32":
                hint = "tf32 keeps FP32 tensors and no autocast: the step is still FP32."
            else:
                hint = f"answers are None or one of {FP32_REASONS}."
            fail(f"why_fp32({shown}, {device!r}) returned {got!r}, expected {want!r}. {hint}")
    return passed("why_fp32 agrees with the Trainer's source on 24 flag combinations.")
