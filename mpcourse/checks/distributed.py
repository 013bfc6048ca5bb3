"""Checks for the exercises of course/13_distributed.ipynb."""

from __future__ import annotations

import random
from collections.abc import Callable

from ..distributed import rank_ledger, shard_rows
from ._core import _short, call_answer, fail, passed, require_answer


def _reference_skips(
    flags: list[list[bool]], init_scale: float, growth_interval: int
) -> tuple[list[int], float]:
    """GradScaler's defaults (growth 2, backoff 0.5) on gradients that DDP all-reduced."""
    scale, good, skipped = init_scale, 0, []
    for step in range(len(flags[0])):
        if any(rank[step] for rank in flags):  # the all-reduce spreads inf to every rank
            skipped.append(step)
            scale, good = scale * 0.5, 0
        else:
            good += 1
            if good == growth_interval:
                scale, good = scale * 2.0, 0
    return skipped, scale


def check_skips_across_ranks(predict: Callable) -> bool:
    """``predict(flags, init_scale, growth_interval) -> (skipped_steps, final_scale)`` for DDP."""
    require_answer(predict, "`predict_skips`")
    rng = random.Random(13)
    cases = [([[False, True, False], [False, False, False]], 1024.0, 2)]
    for _ in range(40):
        ranks, steps = rng.randint(2, 5), rng.randint(3, 12)
        p = rng.choice([0.05, 0.15, 0.3])
        flags = [[rng.random() < p for _ in range(steps)] for _ in range(ranks)]
        cases.append((flags, 2.0 ** rng.randint(8, 16), rng.randint(1, 4)))
    for flags, scale, interval in cases:
        got = call_answer(predict, [list(r) for r in flags], scale, interval, what="predict_skips")
        want = _reference_skips(flags, scale, interval)
        if not isinstance(got, tuple) or len(got) != 2:
            fail(f"predict_skips should return (skipped_steps, final_scale), got {got!r}.")
        skipped, final = list(got[0]), float(got[1])
        only0 = _reference_skips(flags[:1], scale, interval)[0]
        every = [s for s in range(len(flags[0])) if all(r[s] for r in flags)]
        where = f"flags={flags}, init_scale={scale:g}, growth_interval={interval}"
        if skipped != want[0]:
            if skipped == only0 and only0 != want[0]:
                fail(
                    f"you skipped only where rank 0's own gradients were bad ({where}): DDP "
                    "all-reduces before unscale_, so one bad rank makes every rank skip."
                )
            if skipped == every and every != want[0]:
                fail(
                    f"you skipped only where every rank was bad ({where}): one inf anywhere "
                    "reaches all ranks through the all-reduce (inf + x = inf)."
                )
            fail(f"skipped steps for {where}: expected {want[0]}, got {skipped}.")
        if final != want[1]:
            fail(
                f"final scale for {where}: expected {want[1]:g}, got {final:g}. Each skip halves "
                "the scale and restarts the count; growth_interval clean steps in a row double it."
            )
    return passed(f"skips and scales right on {len(cases)} random multi-rank runs.")


def _reference_bytes(shapes: list[tuple[int, ...]], world_size: int, rank: int) -> int:
    items = rank_ledger(shapes, "fsdp2", "fp32", "adam", world_size=world_size, rank=rank)
    return sum(v for k, v in items.items() if not k.endswith("(transient)"))


def check_fsdp_bytes(bytes_held: Callable) -> bool:
    """``bytes_held(shapes, world_size, rank)``: FSDP2 + Adam, FP32 weights/grads/states.

    Weights and grads: ``4 * ceil(rows / N) * rest`` per parameter (padded shards);
    Adam's two states: ``8 * real_rows * rest``."""
    require_answer(bytes_held, "`bytes_held`")
    rng = random.Random(2013)
    cases = [([(32, 64), (32,), (10, 32), (10,)], 2, 1), ([(10, 3), (7,)], 4, 3)]
    for _ in range(40):
        shapes = [
            tuple(rng.randint(1, 40) for _ in range(rng.randint(1, 3)))
            for _ in range(rng.randint(1, 5))
        ]
        world = rng.randint(1, 8)
        cases.append((shapes, world, rng.randrange(world)))
    for shapes, world, rank in cases:
        got = call_answer(bytes_held, shapes, world, rank, what="bytes_held")
        want = _reference_bytes(shapes, world, rank)
        if got == want:
            continue
        n = sum(_numel(s) for s in shapes)
        real = sum(shard_rows(s[0], world, rank)[1] * _numel(s[1:]) for s in shapes)
        stored = sum(shard_rows(s[0], world, rank)[0] * _numel(s[1:]) for s in shapes)
        where = f"shapes={shapes}, world_size={world}, rank={rank}"
        if got in (16 * real, 4 * stored + 12 * real):
            fail(
                f"{where}: expected {want}, got {got}; weights and grads sit in padded buffers "
                "of ceil(rows / N) rows on every rank (only Adam's states cover the real rows)."
            )
        if got == 16 * stored:
            fail(f"{where}: Adam's states cover only the real rows of the shard, not the padding.")
        if got == 16 * n:
            fail(f"{where}: that is DDP (whole model per rank); FSDP2 shards all three items.")
        if got == round(16 * n / world):
            fail(f"{where}: n / N assumes every dim 0 divides evenly; shard row by row.")
        if got in (want - 8 * real, want - 4 * real, want - 4 * stored):
            fail(
                f"{where}: expected {want}, got {got}; Adam keeps two FP32 states per parameter "
                "(exp_avg, exp_avg_sq), sharded like the grads."
            )
        fail(f"bytes held for {where}: expected {want}, got {got}.")
    return passed(f"bytes per rank right on {len(cases)} random models and rank counts.")


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def check_policy_dtypes(answer: Callable) -> bool:
    """Check ``answer(policy) -> {stage: dtype}`` on unseen ``MixedPrecisionPolicy`` settings."""
    import itertools

    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from ..distributed.dataflow import STAGES, policy_dtypes

    require_answer(answer, "`fsdp2_dtypes`")
    choices = (None, torch.float32, torch.bfloat16, torch.float16)
    combos = list(itertools.product(choices, repeat=3))
    random.Random().shuffle(combos)  # fresh order every run: no answer keyed on the examples
    musts = [(torch.bfloat16, None, None), (torch.float16, None, torch.float32), (None,) * 3]
    for param, reduce, output in musts + combos[:21]:
        policy = MixedPrecisionPolicy(param_dtype=param, reduce_dtype=reduce, output_dtype=output)
        got = call_answer(answer, policy, what="fsdp2_dtypes")
        want = policy_dtypes(policy)
        if not isinstance(got, dict) or set(got) != set(STAGES):
            fail(f"fsdp2_dtypes should return a dict with the keys {STAGES}, got {_short(got)}.")
        for stage in STAGES:
            if got[stage] == want[stage]:
                continue
            why = {
                "reduce-scatter": "reduce_dtype=None does not mean FP32: the reduction then "
                "runs in the compute dtype (param_dtype when it is set)",
                "output": "output_dtype=None does not cast: the output keeps the compute dtype",
                "sharded parameter": "the shards stay in the parameters' own dtype (FP32): "
                "they are the optimizer's master weights",
                "gradient": "the reduced gradient is cast back to the shard's dtype (FP32)",
            }.get(stage, "param_dtype=None means the parameters' own dtype (FP32)")
            fail(f"for {policy}: {stage} should be {want[stage]}, got {got[stage]}. Hint: {why}.")
    return passed("your dtypes follow FSDP2's rules on 24 unseen policies, defaults included.")
