"""DeepSpeed's dynamic loss scaler next to the course's, on the same overflow sequence.

The course's ``mpcourse.scaling.DynamicLossScaler`` (= ``torch.amp.GradScaler``), with
``growth_interval`` N: an overflow skips the step and halves the scale, ``S <- S/2``; after
N consecutive clean steps ``S <- 2S``. No minimum.

DeepSpeed's ``deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler`` (used by its ZeRO
optimizers, ``CreateLossScaler`` in runtime/zero/stage_1_and_2.py and stage3.py), with
``scale_window`` W, ``delayed_shift`` (the config's ``hysteresis``) H and ``min_scale``:
an overflow always skips the step, but halves the scale only when the hysteresis counter
is down to 1 (otherwise it counts down), never below ``min_scale``, and raises
``Current loss scale already at minimum`` when it overflows at the minimum; the scale
doubles when ``i - last_overflow - 1`` is a positive multiple of W (i counts every
update), which refills the counter to H.

Taught in course/17_frameworks.ipynb.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from unittest import mock

import torch

from ..scaling import DynamicLossScaler, scale_trajectory
from ._harness import quiet


def compare_scalers(
    overflows: Sequence[bool],
    *,
    init_scale: float = 2.0**16,
    window: int = 4,
    hysteresis: int = 2,
    min_scale: float = 1.0,
    consecutive_hysteresis: bool = False,
) -> list[dict[str, Any]]:
    """Step both scalers through ``overflows`` (one bool per iteration) and return one dict
    per iteration: ``step``, ``overflow``, ``ours`` (scale after the update),
    ``deepspeed`` (its scale after the update, or ``"raised"`` once it gave up) and
    ``hysteresis`` (DeepSpeed's counter after the update). The course's scaler runs real
    ``scale``/``step``/``update`` calls with ``growth_interval=window``
    (:func:`mpcourse.scaling.scale_trajectory`); DeepSpeed's is
    constructed with the same init scale and window and driven by ``update_scale``.

    Taught in course/17_frameworks.ipynb.
    """
    from deepspeed.runtime.fp16 import loss_scaler as ds_scaler

    if window < 1 or hysteresis < 1:
        raise ValueError(f"window and hysteresis must be >= 1, got {window}, {hysteresis}")
    ours = scale_trajectory(overflows, DynamicLossScaler(init_scale, growth_interval=window))
    theirs = ds_scaler.DynamicLossScaler(
        init_scale=init_scale, scale_window=window, min_scale=min_scale,
        delayed_shift=hysteresis, consecutive_hysteresis=consecutive_hysteresis,
    )  # fmt: skip
    rows: list[dict[str, Any]] = []
    gave_up = False
    # update_scale asks deepspeed.comm for the rank (to log on rank 0 only): one process.
    with mock.patch.object(ds_scaler.dist, "get_rank", lambda *a, **k: 0), quiet([]):
        for i, overflow in enumerate(overflows):
            if not gave_up:
                try:
                    theirs.update_scale(bool(overflow))
                except Exception as err:  # noqa: BLE001 - DeepSpeed raises a bare Exception
                    if "minimum" not in str(err):
                        raise
                    gave_up = True
            rows.append({
                "step": i, "overflow": bool(overflow), "ours": ours[i],
                "deepspeed": "raised" if gave_up else theirs.cur_scale,
                "hysteresis": None if gave_up else theirs.cur_hysteresis,
            })  # fmt: skip
    return rows


def format_scalers(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`compare_scalers` as a text table (scales as powers of two).

    Taught in course/17_frameworks.ipynb.
    """

    def p2(x: Any) -> str:
        if isinstance(x, str):
            return x
        return f"2^{torch.tensor(float(x)).log2().item():g}"

    out = ["step  overflow  ours     deepspeed  hysteresis"]
    for r in rows:
        out.append(
            f"{r['step']:>4}  {('yes' if r['overflow'] else '-'):<8}  {p2(r['ours']):<7}  "
            f"{p2(r['deepspeed']):<9}  {'-' if r['hysteresis'] is None else r['hysteresis']}"
        )
    return "\n".join(out)
