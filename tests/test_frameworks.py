"""mpcourse.frameworks: each probe row against an independent look at the same objects."""

from __future__ import annotations

import importlib.util
import tempfile
from contextlib import nullcontext

import pytest
import torch

from mpcourse import checks, frameworks
from mpcourse.device import pick_device
from mpcourse.frameworks import _harness, platforms, probe

needs = {
    name: pytest.mark.skipif(importlib.util.find_spec(name) is None, reason=f"{name} missing")
    for name in frameworks.SETTINGS
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_bad_input_names_what_is_accepted(monkeypatch):
    with pytest.raises(ValueError, match="'transformers', 'accelerate'"):
        probe("keras", "fp16")
    with pytest.raises(ValueError, match="'16-mixed'"):
        probe("lightning", "16")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install deepspeed"):
        probe("deepspeed", "fp16")


@needs["accelerate"]
def test_accelerate_against_the_accelerator_itself():
    from accelerate import Accelerator

    from mpcourse.frameworks._hf import _reset_accelerate

    fp16, bf16 = probe("accelerate", "fp16"), probe("accelerate", "bf16")
    _reset_accelerate()
    model = _harness.tiny_net()
    acc = Accelerator(mixed_precision="fp16", cpu=True)
    model = acc.prepare(model)
    x, _ = _harness.tiny_batch()
    with torch.no_grad():
        inner = model[2](model[1](model[0](x)))  # the forward, by hand, outside the wrapper
    _reset_accelerate()
    if pick_device().type == "cpu":
        assert acc.scaler is None and not acc.native_amp and inner.dtype == torch.float32
        assert fp16["compute_dtype"] == torch.float32 and fp16["loss_scaler"] is None
        assert fp16["messages"] == []  # silent
    # bf16: the Linear ran under autocast, the wrapper converted the output to FP32
    assert bf16["compute_dtype"] == torch.bfloat16 == bf16["autocast"]
    assert bf16["output_dtype"] == torch.float32 == bf16["param_dtype"]
    assert bf16["master_weights"] is True


@needs["transformers"]
def test_transformers_against_the_trained_model():
    from transformers import Trainer, TrainingArguments

    from mpcourse.frameworks._hf import _reset_accelerate, _Tokens, tiny_gpt2

    r = probe("transformers", "dtype=bfloat16")
    model = tiny_gpt2(torch.bfloat16)
    _reset_accelerate()
    with tempfile.TemporaryDirectory() as d:
        args = TrainingArguments(output_dir=d, report_to="none", max_steps=1, use_cpu=True,
                                 per_device_train_batch_size=2, save_strategy="no",
                                 disable_tqdm=True)  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=_Tokens())
        trainer.train()
    _reset_accelerate()
    dtypes = {p.dtype for p in model.parameters()}
    opt = trainer.optimizer.optimizer
    assert dtypes == {r["param_dtype"]} == {torch.bfloat16}
    assert opt.state[next(iter(model.parameters()))]["exp_avg"].dtype == torch.bfloat16
    assert r["master_weights"] is False and r["loss_scaler"] is None
    assert r["loss_dtype"] == torch.float32  # the causal-LM loss upcasts the logits
    tf32 = probe("transformers", "tf32")
    if not torch.cuda.is_available():
        assert tf32["error"].startswith("ValueError: --tf32 requires Ampere")


@needs["lightning"]
def test_lightning_against_the_precision_plugin():
    import lightning as L
    from lightning.pytorch.plugins.precision import HalfPrecision, MixedPrecision

    r16, mixed = probe("lightning", "16-true"), probe("lightning", "16-mixed")
    device = pick_device()
    kw = {"accelerator": device.type, "devices": 1, "logger": False}
    with (
        tempfile.TemporaryDirectory() as d,
        pytest.warns(UserWarning, match="bf16-mixed") if device.type == "cpu" else nullcontext(),
    ):
        half = L.Trainer(precision="16-true", default_root_dir=d, **kw).precision_plugin
        amp = L.Trainer(precision="16-mixed", default_root_dir=d, **kw).precision_plugin
    assert isinstance(half, HalfPrecision) and r16["plugin"] == "HalfPrecision"
    converted = half.convert_module(_harness.tiny_net())
    assert {p.dtype for p in converted.parameters()} == {r16["param_dtype"]} == {torch.float16}
    assert r16["compute_dtype"] == r16["loss_dtype"] == torch.float16
    assert r16["master_weights"] is False and r16["autocast"] is None
    assert isinstance(amp, MixedPrecision) and mixed["param_dtype"] == torch.float32
    if device.type == "cpu":  # swapped for bf16-mixed, with one warning, and no scaler
        assert amp.precision == "bf16-mixed" and amp.scaler is None
        assert mixed["compute_dtype"] == torch.bfloat16 and mixed["loss_scaler"] is None
        assert any("Using `precision='bf16-mixed'` instead" in m for m in mixed["messages"])
    else:
        assert amp.scaler is not None and mixed["loss_scaler"] == type(amp.scaler).__name__


@needs["lightning"]
def test_predicted_row_check_names_the_wrong_field():
    bf = torch.bfloat16
    right = {"param_dtype": bf, "compute_dtype": bf, "output_dtype": bf, "loss_dtype": bf,
             "loss_scaler": None, "master_weights": False}  # fmt: skip
    assert checks.check_predicted_row(right)
    with pytest.raises(checks.CheckFailed, match="master_weights: you predicted True"):
        checks.check_predicted_row({**right, "master_weights": True})
    with pytest.raises(checks.CheckFailed, match="missing loss_dtype"):
        checks.check_predicted_row({k: v for k, v in right.items() if k != "loss_dtype"})


@needs["peft"]
def test_peft_adapters_are_fp32_on_a_16_bit_base():
    from peft import LoraConfig, get_peft_model

    from mpcourse.frameworks._hf import tiny_gpt2

    r = probe("peft", "fp16-base")
    config = LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True)
    model = get_peft_model(tiny_gpt2(torch.float16), config)  # PEFT's defaults, by hand
    dtypes = {n.split(".")[-3]: p.dtype for n, p in model.named_parameters() if "lora_" in n}
    assert dtypes == {"lora_A": torch.float32, "lora_B": torch.float32}
    assert model.get_base_model().lm_head.weight.dtype == torch.float16 == r["base_dtype"]
    assert r["param_dtype"] == torch.float32 == r["compute_dtype"]
    assert r["output_dtype"] == torch.float16  # PEFT casts the adapter's sum back
    assert probe("peft", "fp16-base-no-upcast")["param_dtype"] == torch.float16


@needs["deepspeed"]
def test_deepspeed_rows_and_scaler():
    from deepspeed.accelerator import get_accelerator

    bf16 = probe("deepspeed", "bf16")
    assert bf16["param_dtype"] == torch.bfloat16 and bf16["optimizer_dtype"] == torch.float32
    assert bf16["autocast"] is None and bf16["master_weights"] is True
    fp16 = probe("deepspeed", "fp16")
    assert (fp16["error"] is None) == bool(get_accelerator().is_fp16_supported())
    assert not torch.distributed.is_initialized()  # nothing leaks into the next probe
    rows = frameworks.compare_scalers([True, False, False, False, False, True, True], window=2)
    ours = [r["ours"] for r in rows]
    assert ours == [2.0**15, 2.0**15, 2.0**16, 2.0**16, 2.0**17, 2.0**16, 2.0**15]
    ds = [r["deepspeed"] for r in rows]  # hysteresis 2: the first overflow only counts down
    assert ds == [2.0**16, 2.0**16, 2.0**16, 2.0**17, 2.0**17, 2.0**17, 2.0**16]
    floor = frameworks.compare_scalers([True] * 4, init_scale=2.0, hysteresis=1)
    assert [r["deepspeed"] for r in floor] == [1.0, "raised", "raised", "raised"]
    assert floor[-1]["ours"] == 2.0**-3


def test_platform_rules_and_trainer_reasons():
    picks = {p.name: platforms.pick(p) for p in platforms.PLATFORMS}
    assert picks["Colab/Kaggle T4"] == ("float16", True)
    assert picks["L4 / A100 / H100"] == ("bfloat16", False)
    assert picks["Apple MPS"] is None
    assert platforms.trainer_fp32_reason({"fp16": True}, "cpu") == "fp16-on-cpu"
    assert platforms.trainer_fp32_reason({"fp16": True, "tf32": True}, "cuda") is None
    assert platforms.trainer_fp32_reason({"tf32": True, "bf16_full_eval": True}, "cuda") == (
        "eval-only"
    )
    with pytest.raises(ValueError, match="unknown flags"):
        platforms.trainer_fp32_reason({"fp8": True}, "cpu")
    checks.check_fp32_reason(platforms.trainer_fp32_reason)
    with pytest.raises(checks.CheckFailed, match="fp16-on-cpu"):
        checks.check_fp32_reason(lambda flags, dev: None if flags.get("fp16") else "no-flag")
