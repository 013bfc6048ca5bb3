"""mpcourse.finetune: LoRA against peft (outputs and gradients bit for bit), the 16-bit
traps of weight decay, EMA and Adam's second moment (and their fixes), the memory ledger
against measured tensor sizes, and the bad inputs.

Reference for LoRA: ``peft`` (a dependency), ``get_peft_model`` with ``LoraConfig`` on a
small model built here (nothing downloaded).
"""

import copy
import logging

import pytest
import torch
from torch import nn

from mpcourse.finetune import (
    EMA,
    FT_METHODS,
    LLAMA_7B_LINEARS,
    LoRALinear,
    adam_second_moment,
    add_lora,
    decay_,
    finetune_ledger,
    lora_parameters,
    measure_finetune_bytes,
    store_,
    swallowed,
    trainable,
)
from mpcourse.nf4 import quantize_linears

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(16, 32)
        self.act = nn.GELU()
        self.down = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


@pytest.mark.parametrize("base_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_lora_equals_peft(base_dtype: torch.dtype) -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = Tiny().to(base_dtype)
    ref = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"])
    )
    ours = copy.deepcopy(base)
    assert add_lora(ours, ("up", "down"), rank=4, alpha=8) == ["up", "down"]
    for name in ("up", "down"):
        theirs, mine = ref.base_model.model.get_submodule(name), ours.get_submodule(name)
        # peft's default (autocast_adapter_dtype=True): adapters in FP32 on a 16-bit base
        assert theirs.lora_A["default"].weight.dtype == torch.float32
        assert mine.lora_A.dtype == torch.float32 and mine.base.weight.dtype == base_dtype
        mine.lora_A.data.copy_(theirs.lora_A["default"].weight)
        mine.lora_B.data.normal_(0, 0.1)  # B = 0 at init: make the detour visible
        theirs.lora_B["default"].weight.data.copy_(mine.lora_B)
    x = torch.randn(5, 16).to(base_dtype)
    y_ref, y_ours = ref(x), ours(x)
    assert y_ours.dtype == base_dtype and torch.equal(y_ref, y_ours)
    y_ref.float().square().sum().backward()
    y_ours.float().square().sum().backward()
    for name in ("up", "down"):
        theirs, mine = ref.base_model.model.get_submodule(name), ours.get_submodule(name)
        assert torch.equal(theirs.lora_A["default"].weight.grad, mine.lora_A.grad)
        assert torch.equal(theirs.lora_B["default"].weight.grad, mine.lora_B.grad)
    assert [p.shape for p in trainable(ours)] == [p.shape for p in trainable(ref)]


def test_lora_starts_at_the_base_and_merges() -> None:
    torch.manual_seed(1)
    lin = nn.Linear(12, 6)
    lora = LoRALinear(copy.deepcopy(lin), rank=3, alpha=6)
    x = torch.randn(4, 12)
    assert torch.equal(lora(x), lin(x))  # B = 0
    lora.lora_B.data.normal_()
    merged = nn.functional.linear(x, lora.merged_weight(), lin.bias)
    assert torch.allclose(lora(x), merged, atol=1e-5)
    assert not lora.base.weight.requires_grad and lora.scaling == 2.0


def test_gradscaler_refuses_fp16_adapters_only() -> None:
    torch.manual_seed(2)
    for adapter_dtype, ok in (
        (torch.float16, False),
        (torch.bfloat16, True),
        (torch.float32, True),
    ):
        lora = LoRALinear(nn.Linear(8, 8).half(), rank=2, adapter_dtype=adapter_dtype)
        opt = torch.optim.AdamW(trainable(lora), lr=1e-3)
        scaler = torch.amp.GradScaler("cpu")
        scaler.scale(lora(torch.randn(3, 8).half()).float().sum()).backward()
        if ok:
            scaler.step(opt)
        else:
            with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
                scaler.step(opt)


def test_no_inf_checks_when_nothing_got_a_gradient() -> None:
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)  # built before the freeze
    add_lora(model, ("up",), rank=2)
    scaler = torch.amp.GradScaler("cpu")
    loss = model(torch.randn(2, 16)).sum()
    scaler.scale(loss).backward()
    with pytest.raises(AssertionError, match="No inf checks were recorded"):
        scaler.step(opt)


def test_weight_decay_is_a_no_op_in_bf16_and_the_fixes_work() -> None:
    torch.manual_seed(3)
    w0 = torch.randn(1024) * 0.05
    p = nn.Parameter(w0.bfloat16())
    opt = torch.optim.AdamW([p], lr=1e-4, weight_decay=0.01)
    p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(p.detach(), w0.bfloat16())  # lr * wd = 1e-6: every decay lost

    def shrink(rounding: str, lr: float, comp_dtype: torch.dtype, steps: int = 200) -> float:
        w = w0.bfloat16()
        comps = [torch.zeros_like(w, dtype=comp_dtype)]
        gen = torch.Generator().manual_seed(0)
        for _ in range(steps):
            decay_([w], lr, 0.01, rounding, comps=comps, generator=gen)
        return float((w.float() + comps[0].float()).norm() / w0.bfloat16().float().norm())

    exact = (1 - 1e-5) ** 200  # lr 1e-3, wd 0.01
    assert shrink("nearest", 1e-3, torch.bfloat16) == 1.0
    assert abs(shrink("stochastic", 1e-3, torch.bfloat16) - exact) < 3e-4
    assert abs(shrink("kahan", 1e-3, torch.bfloat16) - exact) < 3e-4
    # lr * wd = 1e-6: a BF16 compensation buffer swamps too (it holds ~16 bits with w);
    # an FP32 one does not
    assert shrink("kahan", 1e-4, torch.bfloat16, 2000) > 0.9993
    assert abs(shrink("kahan", 1e-4, torch.float32, 2000) - (1 - 1e-6) ** 2000) < 3e-4


def test_ema_stalls_in_16_bits_and_fp32_copy_fixes_it() -> None:
    torch.manual_seed(4)
    model = nn.Linear(64, 64)
    for dtype, moves in ((torch.bfloat16, False), (torch.float16, False), (torch.float32, True)):
        m = copy.deepcopy(model).to(dtype)
        ema = EMA(m, 0.9999)
        start = {n: e.clone() for n, e in ema.shadow.items()}
        with torch.no_grad():
            for p in m.parameters():
                p.add_((0.01 * torch.randn_like(p.float())).to(dtype))
        for _ in range(5):
            ema.update(m)
        moved = sum(int((ema.shadow[n] != start[n]).sum()) for n in start) / 4160
        assert (moved > 0.9) if moves else (moved < 0.1), (dtype, moved)
    m = copy.deepcopy(model).bfloat16()
    fixed = EMA(m, 0.9999, dtype=torch.float32)
    before = fixed.shadow["weight"].clone()
    with torch.no_grad():
        m.weight.add_(0.01)
    fixed.update(m)
    assert float((fixed.shadow["weight"] - before).abs().min()) > 0


def test_bf16_exp_avg_sq_stops_decaying() -> None:
    grads = torch.cat([torch.full((50, 1), 1.0), torch.full((700, 1), 0.1)])
    fp32 = adam_second_moment(grads, torch.float32)[-1].item()
    bf16 = adam_second_moment(grads, torch.bfloat16)[-1].item()
    expected = 0.01 + (fp32 - 0.01)  # FP32 follows beta2 ** t
    assert abs(fp32 - expected) < 1e-9 and fp32 < 0.035 and bf16 > 0.045
    p = nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    opt = torch.optim.AdamW([p])
    p.grad = torch.ones_like(p)
    opt.step()
    assert opt.state[p]["exp_avg_sq"].dtype == torch.bfloat16  # inherits the parameter dtype


def test_store_modes() -> None:
    gen = torch.Generator().manual_seed(0)
    t = torch.ones(10000, dtype=torch.bfloat16)
    store_(t, torch.full((10000,), 1 + 2.0**-10), "stochastic", generator=gen)
    assert abs(float(t.float().mean()) - (1 + 2.0**-10)) < 2e-4
    t = torch.ones(1, dtype=torch.bfloat16)
    store_(t, torch.full((1,), 1 + 2.0**-10))
    assert t.item() == 1.0
    with pytest.raises(ValueError, match="comp"):
        store_(t, t.float(), "kahan")
    with pytest.raises(ValueError, match="rounding"):
        store_(t, t.float(), "up")


def test_swallowed() -> None:
    before = {"a": torch.ones(4, dtype=torch.bfloat16), "b": torch.ones(4)}
    grads = {"a": torch.ones(4), "b": torch.tensor([1.0, 0, 0, 0])}
    after = {"a": (before["a"].float() - 1e-4).bfloat16(), "b": before["b"] - 1e-4}
    assert swallowed(before, after, grads) == ["a"]


def test_ledger_against_measured_bytes() -> None:
    torch.manual_seed(5)
    n_base = sum(p.numel() for p in Tiny().parameters())
    assert finetune_ledger("full fp32", n_base) == {
        "weights fp32": 4,
        "grads fp32": 4,
        "optimizer states fp32": 8,
    }
    for method, prepare in (
        ("lora bf16", lambda m: m.bfloat16()),
        (
            "qlora nf4",
            lambda m: quantize_linears(m, ("up", "down"), block_size=8, scale_block_size=4),
        ),
    ):
        model = Tiny()
        prepare(model)
        add_lora(model, ("up", "down"), rank=2)
        n_train = sum(p.numel() for p in trainable(model))
        opt = torch.optim.AdamW(trainable(model), lr=1e-3)
        dtype = torch.bfloat16 if method == "lora bf16" else torch.float32
        model(torch.randn(3, 16, dtype=dtype)).float().sum().backward()
        opt.step()
        measured = measure_finetune_bytes(model, opt, n_base)
        ledger = finetune_ledger(method, n_base, n_train)
        assert measured["trainable weights"] == pytest.approx(ledger["adapter weights fp32"])
        assert measured["grads"] == pytest.approx(ledger["adapter grads fp32"])
        steps = 4 * len(opt.state) / n_base  # AdamW's step counters (FP32 scalars)
        assert measured["optimizer states"] == pytest.approx(
            ledger["optimizer states fp32"] + steps
        )
        if method == "lora bf16":
            assert measured["frozen weights"] == pytest.approx(2.0)
    seven_b = 6_738_415_616  # LLaMA-7B
    adapters = lora_parameters(LLAMA_7B_LINEARS, 16)
    assert adapters == 39_976_960
    total = {m: sum(finetune_ledger(m, seven_b, adapters).values()) for m in FT_METHODS}
    assert total["full fp32"] == 16 and total["full amp"] == 18 and total["full bf16 sr"] == 12
    assert 2.0 < total["lora bf16"] < 2.2 and 0.5 < total["qlora nf4"] < 0.7


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Embedding(10, 4), rank=2)
    with pytest.raises(ValueError, match="rank must be"):
        LoRALinear(nn.Linear(8, 4), rank=0)
    with pytest.raises(ValueError, match="min\\(in_features, out_features\\) = 4"):
        LoRALinear(nn.Linear(8, 4), rank=5)
    with pytest.raises(TypeError, match="nn.Linear"):
        add_lora(Tiny(), ("act",), rank=1)
    with pytest.raises(ValueError, match="no submodule"):
        add_lora(Tiny(), ("qkv",), rank=1)
    with pytest.raises(ValueError, match="decay"):
        EMA(Tiny(), 1.0)
    with pytest.raises(ValueError, match="method"):
        finetune_ledger("lora fp8", 10)


def _tiny_gpt():
    from mpcourse.transformer import GPT, GPTConfig

    torch.manual_seed(6)
    return GPT(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32))


def test_finetune_loop_on_an_nf4_base_trains_only_the_adapters() -> None:
    from mpcourse.finetune import finetune

    model = _tiny_gpt().bfloat16()
    quantize_linears(model, ("qkv", "proj"), torch.bfloat16, scale_block_size=16)
    add_lora(model, ("qkv", "proj"), rank=2)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    tokens = torch.randint(0, 256, (400,), generator=torch.Generator().manual_seed(0))
    run = finetune(model, tokens, steps=3, lr=1e-2, batch_size=4, eval_tokens=tokens)
    assert len(run.losses) == 3 and run.held_out is not None and max(run.lost) == 0
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    lora = model.blocks[0].attn.qkv
    assert lora.merged_weight().shape == (96, 32) and lora.lora_B.abs().sum() > 0


def test_ledger_check_and_torchao_states() -> None:
    from mpcourse.finetune import ledger_check, torchao_state_bytes

    model = _tiny_gpt()
    x = torch.randint(0, 256, (4, 16))
    rows = ledger_check(model, x, x.roll(1, 1), rank=2)
    assert [r[0] for r in rows] == list(FT_METHODS)
    assert all(abs(measured - ledger) < 0.15 for _, ledger, measured in rows)
    # two states: 1-byte codes, an FP32 scale per 256, and a 256-entry FP32 code map each
    assert torchao_state_bytes("AdamW8bit", (64, 64)) == 2 + 2 * 4 / 256 + 2 * 1024 / 4096
    assert torchao_state_bytes("AdamW8bit", (32, 32)) == 8.0  # under 4096 values: FP32 states
    with pytest.raises(ValueError, match="AdamW8bit"):
        torchao_state_bytes("Adam8bit", (64, 64))


def test_pretrained_gpt_is_cached(tmp_path, monkeypatch) -> None:
    from mpcourse.finetune import pretrained_gpt

    monkeypatch.setenv("MPCOURSE_CACHE", str(tmp_path))
    first = pretrained_gpt(steps=2)
    assert len(list(tmp_path.glob("mpcourse/gpt-*-s2-seed0-*-torch*.pt"))) == 1
    again = pretrained_gpt(steps=2)
    assert all(
        torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values())
    )


def test_exercise_checks() -> None:
    from mpcourse import checks
    from mpcourse.checks import CheckFailed, NotAnswered

    def nf4_codes(block, levels):
        absmax = block.abs().max()
        scaled = block / (absmax if absmax > 0 else 1.0)
        return (scaled[:, None] - levels).abs().argmin(1), absmax

    def no_scale(block, levels):
        return (block[:, None] - levels).abs().argmin(1), block.abs().max()

    def ema_moves(e, w, decay, dtype):
        e16, w16 = torch.tensor(e).to(dtype), torch.tensor(w).to(dtype)
        return bool((e16.float() + (1 - decay) * (w16.float() - e16.float())).to(dtype) != e16)

    def ema_exact(e, w, decay, dtype):  # forgets to round the result
        return (1 - decay) * (w - e) != 0

    def find_swallowed(before, after, grads):
        return swallowed(before, after, grads)

    def all_unchanged(before, after, grads):  # counts zero-gradient entries too
        return sorted(n for n in grads if (after[n] == before[n]).float().mean() > 0.5)

    assert checks.check_nf4_codes(nf4_codes) and checks.check_ema_moves(ema_moves)
    for check, wrong in (
        (checks.check_nf4_codes, no_scale),
        (checks.check_ema_moves, ema_exact),
        (checks.check_swallowed, all_unchanged),
        (checks.check_swallowed, find_swallowed),  # calls the package's answer
    ):
        with pytest.raises(CheckFailed):
            check(wrong)
    with pytest.raises(NotAnswered):
        checks.check_swallowed(None)
