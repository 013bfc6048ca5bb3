"""Checks for the exercises of course/16_finetuning.ipynb (NF4, EMA in 16 bits, a diagnosis)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..nf4 import nf4_encode, nf4_levels
from ..small_updates import swallowed
from ._core import _short, call_answer, expect_equal, fail, passed, require_answer, uses_names


def check_nf4_codes(nf4_codes: Callable[[torch.Tensor, torch.Tensor], tuple]) -> bool:
    """``nf4_codes(block, levels) -> (codes, absmax)`` for one 1-D block: the index of the
    level nearest to ``block / absmax`` (ties to the lower level) and the block's absmax.

    Checked on random blocks of several sizes (normal, heavy-tailed, with an outlier, with
    exact zeros and an all-zero block), with the NF4 levels and with a shuffled-free toy table.
    """
    require_answer(nf4_codes, "`nf4_codes`")
    if uses_names(nf4_codes, {"nf4_encode", "quantize_nf4", "to_nf4", "quantize_4bit"}):
        fail(
            "nf4_codes calls a library quantizer; write the absmax and the nearest level yourself."
        )
    gen = torch.Generator().manual_seed(16)
    levels = nf4_levels()
    toy = torch.linspace(-1, 1, 16)
    cases = []
    for i, size in enumerate((64, 32, 128, 16, 64, 8)):
        block = torch.randn(size, generator=gen)
        if i == 1:
            block = block**3  # heavy tails
        if i == 2:
            block[5] = 40.0  # one outlier: the others crowd the middle levels
        if i == 3:
            block[::3] = 0.0
        cases.append((block, levels if i != 4 else toy))
    cases.append((torch.zeros(16), levels))
    cases.append((torch.tensor([0.5, -1.0, 1.0, 0.0]), levels))  # exact levels
    for block, table in cases:
        where = f"nf4_codes({_short(block)}, levels)"
        got = call_answer(nf4_codes, block.clone(), table.clone(), what="nf4_codes")
        if not (isinstance(got, tuple) and len(got) == 2):
            fail(f"{where} should return a tuple (codes, absmax), got {_short(got)}.")
        codes, absmax = got
        ref_codes, ref_absmax = nf4_encode(block, block.numel(), table)
        expect_equal(
            float(torch.as_tensor(absmax)),
            float(ref_absmax[0]),
            f"absmax of {where}",
            hint="the scale is max |x| over the block (0 for an all-zero block).",
        )
        codes = torch.as_tensor(codes).reshape(-1).long()
        if codes.shape != block.shape or not torch.equal(codes, ref_codes.reshape(-1).long()):
            bad = (
                int((codes != ref_codes.reshape(-1).long()).nonzero()[0])
                if (codes.shape == block.shape)
                else 0
            )
            hint = (
                "divide by absmax first, then take the index of the nearest level "
                "(|x/absmax - level| smallest)"
            )
            fail(
                f"{where}: code of value {float(block[bad]):.4g} should be "
                f"{int(ref_codes.reshape(-1)[bad])}, got "
                f"{_short(codes[bad].item() if codes.numel() > bad else codes)}. Hint: {hint}."
            )
    return passed(f"nf4_codes matches the package's NF4 encoder on {len(cases)} blocks.")


def _ema_moves(e: float, w: float, decay: float, dtype: torch.dtype) -> bool:
    e16 = torch.tensor(e).to(dtype)
    new = (e16.float() + (1 - decay) * (torch.tensor(w).to(dtype).float() - e16.float())).to(dtype)
    return bool(new != e16)


def check_ema_moves(ema_moves: Callable[[float, float, float, torch.dtype], bool]) -> bool:
    """``ema_moves(e, w, decay, dtype)``: does one EMA step $e + (1-\\beta)(w - e)$, computed in
    FP32 from ``e`` and ``w`` stored in ``dtype``, change the stored ``e``?

    Checked on random EMA values, gaps and decays in BF16, FP16 and FP32, not on the
    chapter's case.
    """
    require_answer(ema_moves, "`ema_moves`")
    if uses_names(ema_moves, {"EMA", "store_"}):
        fail("ema_moves calls the package's EMA; compute the step and the rounding yourself.")
    gen = torch.Generator().manual_seed(23)
    dtypes = (torch.bfloat16, torch.float16, torch.float32)
    n = 0
    for i in range(36):
        dtype = dtypes[i % 3]
        e = float(torch.empty(1).uniform_(0.05, 2.0, generator=gen)) * (-1 if i % 4 == 0 else 1)
        gap = float(torch.exp2(torch.empty(1).uniform_(-8, 1, generator=gen)))
        low = -30 if dtype == torch.float32 else -14
        decay = float(1 - torch.exp2(torch.empty(1).uniform_(low, -3, generator=gen)))
        w = e + gap * (1 if i % 2 else -1)
        got = call_answer(ema_moves, e, w, decay, dtype, what="ema_moves")
        expected = _ema_moves(e, w, decay, dtype)
        name = str(dtype).replace("torch.", "")
        expect_equal(
            bool(got),
            expected,
            f"ema_moves({e:.4g}, {w:.4g}, {decay:.6g}, {name})",
            hint="round e and w to dtype, take the step in FP32, round the result to "
            "dtype and compare it with the stored e.",
        )
        n += 1
    return passed(f"ema_moves is right on {n} random cases in BF16, FP16 and FP32.")


def _random_run(gen: torch.Generator) -> tuple[dict, dict, dict]:
    before, after, grads = {}, {}, {}
    for j in range(int(torch.randint(3, 7, (1,), generator=gen))):
        dtype = (torch.float32, torch.bfloat16, torch.float16)[
            int(torch.randint(3, (1,), generator=gen))
        ]
        w = (torch.randn(40, generator=gen) * 0.05).to(dtype)
        g = torch.randn(40, generator=gen)
        g[torch.rand(40, generator=gen) < 0.2] = 0.0
        lr = float(torch.exp2(torch.empty(1).uniform_(-20, -4, generator=gen)))
        name = f"layer{j}.weight"
        before[name] = w.clone()
        after[name] = (w.float() - lr * g).to(dtype)
        grads[name] = g.to(dtype)
    return before, after, grads


def check_swallowed(find_swallowed: Callable[[dict, dict, dict], list]) -> bool:
    """``find_swallowed(before, after, grads)`` -> the sorted names of the parameters for which
    more than half of the entries with a nonzero gradient did not change.

    Checked on random "steps" of parameters in FP32, BF16 and FP16 with random learning rates.
    """
    require_answer(find_swallowed, "`find_swallowed`")
    if uses_names(find_swallowed, {"swallowed", "lost_updates"}):
        fail("find_swallowed calls the package's answer; compare before and after yourself.")
    gen = torch.Generator().manual_seed(5)
    for k in range(12):
        before, after, grads = _random_run(gen)
        got = call_answer(find_swallowed, before, after, grads, what="find_swallowed")
        expected = swallowed(before, after, grads)
        if got is None or sorted(got) != expected:
            hint = (
                "count only entries whose gradient is nonzero; an entry is swallowed when "
                "after == before"
            )
            fail(
                f"run {k} ({len(grads)} parameters): expected {expected}, got {got}. Hint: {hint}."
            )
    return passed("find_swallowed names the stalled parameters in 12 random runs.")
