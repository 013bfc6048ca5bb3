"""mpcourse.transformer: the small GPT, its trainer, and each 16-bit failure chapter 15 shows."""

import math
import threading
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import CheckpointError, checkpoint

from mpcourse import checks, precision
from mpcourse.transformer import (
    GPT,
    GPTConfig,
    activation_ledger,
    causal_attention,
    chunked_cross_entropy,
    compare_recipes,
    evaluate,
    format_runs,
    ledger_formula,
    train_gpt,
)

TINY = GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=16)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(attention="manual", seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(replace(TINY, attention=attention, **kw))


# ---------------------------------------------------------------- the model
def test_manual_and_sdpa_attention_agree():
    manual, sdpa = tiny("manual").eval(), tiny("sdpa").eval()
    sdpa.load_state_dict(manual.state_dict())
    x = torch.randint(256, (3, 16))
    torch.testing.assert_close(manual(x)[0], sdpa(x)[0], rtol=1e-5, atol=1e-5)
    q, k, v = torch.randn(3, 2, 2, 7, 8).unbind(0)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(causal_attention(q, k, v), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_no_token_sees_the_future(attention):
    model = tiny(attention).eval()
    x = torch.randint(256, (2, 16))
    for t in (0, 7, 15):
        changed = x.clone()
        changed[:, t] = (changed[:, t] + 1) % 256
        with torch.no_grad():
            a, b = model(x)[0], model(changed)[0]
        assert torch.equal(a[:, :t], b[:, :t])  # every earlier position unchanged
        assert not torch.equal(a[:, t], b[:, t])


def test_loss_is_fp32_cross_entropy_of_upcast_logits():
    model = tiny().bfloat16()
    x = torch.randint(256, (2, 16))
    logits, loss = model(x, x)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert loss.item() == F.cross_entropy(logits.float().view(-1, 256), x.view(-1)).item()


def test_bad_input_says_what_is_accepted():
    model = tiny()
    with pytest.raises(ValueError, match="block_size = 16"):
        model(torch.randint(256, (1, 17)))
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        model(torch.tensor([[3, 256]]))
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        model(torch.tensor([[-1]]))
    with pytest.raises(ValueError, match="int64 token ids"):
        model(torch.rand(1, 4))
    with pytest.raises(ValueError, match="multiple of n_head"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="attention must be one of"):
        GPTConfig(attention="flash")
    with pytest.raises(ValueError, match="positive int"):
        GPTConfig(block_size=0)
    with pytest.raises(ValueError, match="longer than block_size"):
        train_gpt(model, torch.tensor([], dtype=torch.long), steps=1)
    with pytest.raises(ValueError, match="unknown precision recipe"):
        train_gpt(model, torch.randint(256, (100,)), recipe="fp8", steps=1)
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT({"n_layer": 2})


# ---------------------------------------------------------------- training
def test_fp32_training_learns_and_is_seeded():
    tokens = torch.arange(2000) % 7  # a periodic text: easy to learn
    runs = [train_gpt(tiny(), tokens, steps=25, lr=1e-2, batch_size=8, seed=1) for _ in range(2)]
    assert runs[0].losses == runs[1].losses  # same model seed and batch seed: same run
    assert runs[0].losses[-1] < 0.5 * runs[0].losses[0]


@pytest.mark.parametrize("recipe", ["amp-bf16", "amp-fp16", "pure-bf16"])
def test_each_recipe_trains_and_reports(recipe):
    tokens = torch.arange(1000) % 5
    model = tiny()
    r = train_gpt(model, tokens, recipe=recipe, steps=6, lr=1e-2, batch_size=4, eval_tokens=tokens)
    assert r.recipe == recipe and len(r.losses) == 6 and math.isfinite(r.held_out)
    assert next(model.parameters()).dtype == precision.recipe(recipe).param_dtype
    assert (len(r.scales) == 6) == (recipe == "amp-fp16")  # only FP16 AMP has a scaler


def test_compare_recipes_pairs_runs_by_seed():
    tokens = torch.arange(600) % 5
    res = compare_recipes(TINY, tokens, tokens, [("fp32", 0), ("fp32", 0)], steps=3, batch_size=2)
    assert len(res) == 1  # the same (recipe, seed) is one run
    assert "held-out" in format_runs(res) and evaluate(tiny(), tokens) > 0


# ---------------------------------------------------------------- memory
def test_chunked_cross_entropy_equals_the_full_one_values_and_gradients():
    torch.manual_seed(0)
    h = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(30, 8, dtype=torch.float64, requires_grad=True)
    t = torch.randint(30, (50,))
    full = F.cross_entropy(h @ w.T, t)
    g_full = torch.autograd.grad(full, (h, w))
    chunked = chunked_cross_entropy(h, w, t, chunk_size=7)
    g_chunk = torch.autograd.grad(chunked, (h, w))
    torch.testing.assert_close(chunked.double(), full, rtol=1e-6, atol=0)
    for a, b in zip(g_chunk, g_full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_cross_entropy(h, w, t, chunk_size=0)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        chunked_cross_entropy(h[None], w, t)


def test_checkpointed_blocks_keep_only_their_input():
    for recipe, per_value in (("fp32", 4), ("amp-bf16", 4), ("pure-bf16", 2)):
        led = activation_ledger(replace(TINY, checkpoint=True), recipe, batch_size=2)
        assert led["per_token_per_layer"] == per_value * TINY.n_embd
    full = activation_ledger(TINY, "fp32", batch_size=2)["per_token_per_layer"]
    amp = activation_ledger(TINY, "amp-bf16", batch_size=2)["per_token_per_layer"]
    assert full > 10 * 4 * TINY.n_embd and amp < full


def test_checkpoint_recomputes_under_the_forward_autocast_state():
    x = torch.randint(256, (2, 16))
    grads = []
    for ckpt in (False, True):
        model = tiny(checkpoint=ckpt)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x, x)[1]
        loss.backward()  # outside autocast
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.equal(*grads)


def test_checkpoint_error_when_the_block_changes_its_own_autocast_state():
    flag = {"on": True}
    lin = nn.Linear(8, 8)

    def fn(t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=flag["on"]):
            return lin(t)

    out = checkpoint(fn, torch.randn(2, 8, requires_grad=True), use_reentrant=False)
    flag["on"] = False
    with pytest.raises(CheckpointError, match="different metadata"):
        out.float().sum().backward()


# ---------------------------------------------------------------- the failures, reproduced
def test_attention_score_overflow_and_its_fixes():
    q = torch.full((1, 4, 64), 40.0, dtype=torch.float16)
    assert (q @ q.transpose(-2, -1)).isinf().all()
    assert ((q / 8) @ q.transpose(-2, -1)).isfinite().all()
    assert F.scaled_dot_product_attention(q, q, torch.randn(1, 4, 64).half()).isfinite().all()


def test_mask_constants():
    with pytest.raises(RuntimeError, match="converted to type c10::Half without overflow"):
        torch.zeros(2, dtype=torch.float16).masked_fill(torch.tensor([True, False]), -1e9)
    fmin = torch.tensor(torch.finfo(torch.float16).min, dtype=torch.float16)
    assert (fmin - 15).item() == -65504 and (fmin - 16).item() == float("-inf")
    assert torch.softmax(torch.full((3,), float("-inf")), 0).isnan().all()


def test_fully_masked_row_sdpa_zeros_mha_nan():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 1, 3, 8).unbind(0)
    keep = torch.ones(3, 3, dtype=torch.bool)
    keep[1] = False
    assert not F.scaled_dot_product_attention(q, k, v, attn_mask=keep)[0, 0, 1].any()
    mha, x = nn.MultiheadAttention(8, 2, batch_first=True), torch.randn(1, 3, 8)
    assert mha(x, x, x, attn_mask=~keep)[0][0, 1].isnan().all()
    assert not mha(x, x, x, attn_mask=~keep, need_weights=False)[0][0, 1].isnan().any()


def test_hand_written_rms_norm_returns_zeros_library_norm_does_not():
    h = (torch.randn(4, 64) * 300).half()
    naive = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert (naive == 0).all()
    ref = F.rms_norm(h.float(), (64,))
    assert (F.rms_norm(h, (64,)).float() - ref).abs().max() < 1e-2


def test_autocast_skips_out_inplace_dtype_and_other_threads():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.mm(a, b).dtype == torch.bfloat16
        out = torch.empty(4, 4)
        assert torch.mm(a, b, out=out).dtype == torch.float32
        assert torch.zeros(4, 4).addmm_(a, b).dtype == torch.float32
        seen = []
        th = threading.Thread(target=lambda: seen.append(torch.mm(a, b).dtype))
        th.start()
        th.join()
    assert seen == [torch.float32]


def _gradscaler_setup():
    model = tiny()
    return model, torch.optim.AdamW(model.parameters()), torch.amp.GradScaler("cpu")


def test_no_inf_checks_when_the_optimizer_holds_stale_parameters():
    model, opt, scaler = _gradscaler_setup()
    model.requires_grad_(False)
    model.lm_head = nn.Linear(16, 256, bias=False)  # replaced after the optimizer was built
    x = torch.randint(256, (2, 16))
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(x, x)[1]
    scaler.scale(loss).backward()
    with pytest.raises(AssertionError, match="No inf checks were recorded for this optimizer"):
        scaler.step(opt)


def test_unscale_twice_in_accumulation_raises():
    model, opt, scaler = _gradscaler_setup()
    x = torch.randint(256, (2, 16))
    with pytest.raises(RuntimeError, match=r"unscale_\(\) has already been called"):
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.float16):
                loss = model(x, x)[1]
            scaler.scale(loss).backward()
            scaler.unscale_(opt)


def test_gradient_penalty_from_scaled_gradients_is_off_by_s_squared():
    model, _, scaler = _gradscaler_setup()
    x = torch.randint(256, (2, 16))
    loss = model(x, x)[1]
    g = torch.autograd.grad(scaler.scale(loss), list(model.parameters()), create_graph=True)
    wrong = sum(t.pow(2).sum() for t in g)
    right = sum((t / scaler.get_scale()).pow(2).sum() for t in g)
    assert math.isclose((wrong / right).item(), scaler.get_scale() ** 2, rel_tol=1e-3)


# ---------------------------------------------------------------- the exercise checks
def test_exercise_checks_accept_fixes_and_name_bugs():
    def scores_bad(q, k):
        return (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))

    def scores_good(q, k):
        return (q / math.sqrt(q.size(-1))) @ k.transpose(-2, -1)

    assert checks.check_fp16_scores(scores_good)
    with pytest.raises(checks.CheckFailed, match="scale q first"):
        checks.check_fp16_scores(scores_bad)

    def attn_nan(q, k, v, keep):
        s = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        return torch.softmax(s.masked_fill(~keep, float("-inf")), -1) @ v

    def attn_good(q, k, v, keep):
        w = attn_nan(q.float(), k.float(), v.float(), keep).nan_to_num(0.0)
        return w.to(q.dtype)

    assert checks.check_masked_attention(attn_good)
    with pytest.raises(checks.CheckFailed, match="NaN"):
        checks.check_masked_attention(attn_nan)


def _step(divide: bool, zero_once: bool, unscale_after: bool):
    def train_step(model, opt, scaler, micro_batches, max_norm):
        if zero_once:
            opt.zero_grad(set_to_none=True)
        for x, y in micro_batches:
            if not zero_once:
                opt.zero_grad(set_to_none=True)
            with precision.autocast("amp-fp16", x.device):
                _, loss = model(x, y)
            scaler.scale(loss / len(micro_batches) if divide else loss).backward()
            if not unscale_after:
                scaler.unscale_(opt)
        if unscale_after:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        scaler.step(opt)
        scaler.update()

    return train_step


@pytest.mark.parametrize(
    "bugs, message",
    [
        ((True, True, False), "unscale_"),
        ((True, False, True), "zero_grad"),
        ((False, True, True), "too large"),
    ],
)
def test_bug_hunt_check_names_each_bug(bugs, message):
    with pytest.raises(checks.CheckFailed, match=message):
        checks.check_transformer_step(_step(*bugs))


def test_bug_hunt_check_accepts_the_fixed_step():
    assert checks.check_transformer_step(_step(True, True, True))


@pytest.mark.parametrize(
    "check",
    [checks.check_fp16_scores, checks.check_masked_attention, checks.check_transformer_step],
)
def test_exercise_checks_say_not_answered_for_stubs(check):
    def stub(*args):
        raise NotImplementedError

    for answer in (None, stub):
        with pytest.raises(checks.NotAnswered):
            check(answer)


@pytest.mark.parametrize("shape", [(32, 2, 32, 4), (16, 4, 8, 2), (48, 3, 16, 3)])
@pytest.mark.parametrize("recipe", ["fp32", "amp-bf16", "amp-fp16", "pure-bf16"])
@pytest.mark.parametrize("ckpt", [False, True])
def test_ledger_formula_counts_exactly_what_autograd_saves(shape, recipe, ckpt):
    C, H, T, B = shape
    cfg = GPTConfig(block_size=T, n_embd=C, n_head=H, n_layer=1, checkpoint=ckpt)
    measured = activation_ledger(cfg, recipe, batch_size=B)["per_token_per_layer"]
    assert measured == pytest.approx(ledger_formula(cfg, recipe, batch_size=B), rel=1e-12)
