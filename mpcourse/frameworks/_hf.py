"""Probes through Hugging Face's libraries: the Trainer, Accelerate and PEFT.

Taught in course/17_frameworks.ipynb.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch
from torch import nn

from ._harness import optimizer_dtype, recording, row, scaler_that_ran, tiny_batch, tiny_net

TRAINER_FLAGS: dict[str, dict[str, bool]] = {
    "fp32": {},
    "fp16": {"fp16": True},
    "bf16": {"bf16": True},
    "tf32": {"tf32": True},
    "bf16_full_eval": {"bf16_full_eval": True},
    "dtype=bfloat16": {},
    "dtype=float16": {},
}
_MODEL_DTYPES = {"dtype=bfloat16": torch.bfloat16, "dtype=float16": torch.float16}


def tiny_gpt2(dtype: torch.dtype | None = None) -> nn.Module:
    """A one-layer GPT-2 (vocabulary 64, width 16) built from a config: nothing downloaded.
    ``dtype`` is the ``from_config(..., dtype=)`` a model is often loaded in."""
    from transformers import AutoModelForCausalLM, GPT2Config

    config = GPT2Config(
        vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
        eos_token_id=0, loss_type="ForCausalLM",
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


class _Tokens(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, 64, (8,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids}


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _watch_output(model: nn.Module, rec: Any) -> None:
    """Record the dtypes of what the (possibly wrapped) forward returned."""

    def hook(module: nn.Module, args: Any, out: Any) -> None:
        if rec.output_dtype is None:
            logits = out.logits if hasattr(out, "logits") else out
            rec.output_dtype = logits.dtype
            loss = getattr(out, "loss", None)
            rec.loss_dtype = loss.dtype if loss is not None else None

    model.register_forward_hook(hook)


def run_transformers(setting: str, device: torch.device) -> dict[str, Any]:
    """Two steps of ``Trainer.train()`` on a tiny GPT-2 with one TrainingArguments flag
    (``use_cpu`` set on a CPU, as the Trainer requires for ``bf16`` there)."""
    from transformers import Trainer, TrainingArguments

    model = tiny_gpt2(_MODEL_DTYPES.get(setting))
    _reset_accelerate()
    with tempfile.TemporaryDirectory() as out_dir, recording(device.type) as rec:
        _watch_output(model, rec)
        args = TrainingArguments(
            output_dir=out_dir, report_to="none", max_steps=2, per_device_train_batch_size=2,
            save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
            use_cpu=device.type == "cpu", **TRAINER_FLAGS[setting],
        )  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=_Tokens())
        trainer.train()
        result = row(
            rec, model.lm_head, params=list(model.parameters()),
            opt_dtype=optimizer_dtype(trainer.optimizer),
            loss_scaler=scaler_that_ran(trainer.accelerator.scaler),
        )  # fmt: skip
    _reset_accelerate()
    return result


def run_accelerate(setting: str, device: torch.device) -> dict[str, Any]:
    """Two steps of the loop in Accelerate's quick tour: ``prepare``, forward, loss outside
    the model, ``accelerator.backward``, ``optimizer.step``."""
    from accelerate import Accelerator

    _reset_accelerate()
    model = tiny_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = tiny_batch()
    with recording(device.type) as rec:
        acc = Accelerator(mixed_precision=setting, cpu=device.type == "cpu")
        model, opt = acc.prepare(model, opt)
        for _ in range(2):
            out = model(x.to(acc.device))
            loss = nn.functional.cross_entropy(out, y.to(acc.device))
            rec.output_dtype = rec.output_dtype or out.dtype
            rec.loss_dtype = rec.loss_dtype or loss.dtype
            acc.backward(loss)
            opt.step()
            opt.zero_grad()
        result = row(
            rec, acc.unwrap_model(model)[2], params=list(model.parameters()),
            opt_dtype=optimizer_dtype(opt),
            loss_scaler=scaler_that_ran(acc.scaler),
        )  # fmt: skip
    _reset_accelerate()
    return result


PEFT_BASES = {
    "bf16-base": (torch.bfloat16, True),
    "fp16-base": (torch.float16, True),
    "fp16-base-no-upcast": (torch.float16, False),
}


def lora_model(setting: str, device: torch.device | str = "cpu") -> nn.Module:
    """The PEFT model a probe trains: LoRA (rank 4 on ``c_attn``) on a tiny GPT-2 built in
    the 16-bit dtype of ``setting`` (a key of ``PEFT_BASES``), adapters in FP32 unless the
    setting ends in ``-no-upcast``.

    Taught in course/17_frameworks.ipynb.
    """
    from peft import LoraConfig, get_peft_model

    if setting not in PEFT_BASES:
        raise ValueError(f"unknown PEFT setting {setting!r}: use one of {', '.join(PEFT_BASES)}")
    dtype, upcast = PEFT_BASES[setting]
    base = tiny_gpt2(dtype).to(device)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
    return get_peft_model(base, config, autocast_adapter_dtype=upcast)


def run_peft(setting: str, device: torch.device) -> dict[str, Any]:
    """LoRA (rank 4 on ``c_attn``) on a tiny GPT-2 built in 16 bits, two AdamW steps on the
    trainable parameters. ``autocast_adapter_dtype`` is PEFT's switch that creates the
    adapters in FP32 on a 16-bit base (default True); ``-no-upcast`` turns it off."""
    model = lora_model(setting, device)
    base = model.get_base_model()
    lora_a = next(m for n, m in model.named_modules() if n.endswith("lora_A.default"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0)).to(device)
    with recording(device.type) as rec:
        _watch_output(model, rec)
        for _ in range(2):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        result = row(rec, lora_a, params=params, opt_dtype=optimizer_dtype(opt), loss_scaler=None)
    result["base_dtype"] = base.lm_head.weight.dtype
    return result
