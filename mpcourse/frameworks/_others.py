"""Probes through Lightning (its Trainer and a LightningModule) and DeepSpeed (its engine).

Taught in course/17_frameworks.ipynb.
"""

from __future__ import annotations

import importlib
import os
import socket
import tempfile
from typing import Any
from unittest import mock

import torch
from torch import nn

from ._harness import optimizer_dtype, recording, row, scaler_that_ran, tiny_batch, tiny_net


def run_lightning(setting: str, device: torch.device) -> dict[str, Any]:
    """Two steps of ``lightning.Trainer(precision=setting).fit`` (no logger, no checkpoint,
    in a temporary folder)."""
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_net()
            self.seen: list[torch.dtype] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            out = self.net(batch[0])
            loss = nn.functional.cross_entropy(out, batch[1])
            self.seen = self.seen or [out.dtype, loss.dtype]
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    x, y = tiny_batch()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    module = Module()
    with tempfile.TemporaryDirectory() as root, recording(device.type) as rec:
        trainer = L.Trainer(
            accelerator=device.type, devices=1, precision=setting, max_steps=2, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=root,
        )  # fmt: skip
        trainer.fit(module, data)
        rec.output_dtype, rec.loss_dtype = module.seen
        plugin = trainer.precision_plugin
        result = row(
            rec, module.net[2], params=list(module.parameters()),
            opt_dtype=optimizer_dtype(trainer.optimizers[0]),
            loss_scaler=scaler_that_ran(getattr(plugin, "scaler", None)),
        )  # fmt: skip
    result["plugin"] = type(plugin).__name__
    return result


DEEPSPEED_CONFIGS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "fp16": {"fp16": {"enabled": True}},
    "bf16": {"bf16": {"enabled": True}},
    "torch_autocast": {"torch_autocast": {"enabled": True, "dtype": "bfloat16"}},
}


def _deepspeed_scaler(opt: Any) -> str | None:
    """ZeRO optimizers hold a ``loss_scaler`` object; the FP16 optimizers without ZeRO keep
    their dynamic scale in a ``loss_scale_config`` (deepspeed/runtime/fp16/loss_scaler.py)."""
    scaler = getattr(opt, "loss_scaler", None)
    if scaler is not None and getattr(scaler, "dynamic", False):
        return type(scaler).__name__
    config = getattr(opt, "loss_scale_config", None)
    if config is not None and config.use_grad_scaling:
        return type(config).__name__
    return None


def run_deepspeed(setting: str, device: torch.device) -> dict[str, Any]:
    """Two steps of a ``deepspeed.initialize`` engine (one process, ZeRO off).

    On a CPU, DeepSpeed's communication backend compiles a shared-memory all-reduce kernel
    the first time (a minute of C++ build, for several processes on one host); one process
    never uses it, so the probe skips that build (``build_shm_op`` returns None, which is
    DeepSpeed's own answer where the kernel is not compatible). The probe leaves no process
    group behind (Accelerate and the Trainer would then wrap the next models in DDP): it
    destroys it and forgets DeepSpeed's cached groups (module globals of
    deepspeed/utils/groups.py and deepspeed.comm's backend).
    """
    with socket.socket() as sock:  # a free port for the one-process group
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": port}  # fmt: skip
    if torch.distributed.is_initialized():
        raise RuntimeError("the DeepSpeed probe runs one process: torch.distributed is in use")
    with mock.patch.dict(os.environ, {k: os.environ.get(k, v) for k, v in env.items()}):
        try:
            return _deepspeed_steps(setting, device)
        finally:  # leave no process group behind (Accelerate would then wrap models in DDP)
            _forget_process_groups()


def _forget_process_groups() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    importlib.import_module("deepspeed.comm.comm").cdb = None
    groups = importlib.import_module("deepspeed.utils.groups")
    for name, value in list(vars(groups).items()):
        if name.startswith("_") and name.isupper():
            if isinstance(value, dict):
                value.clear()
            elif isinstance(value, (torch.distributed.ProcessGroup, int)) or value is None:
                setattr(groups, name, None)


def _deepspeed_steps(setting: str, device: torch.device) -> dict[str, Any]:
    import deepspeed

    ds_torch = importlib.import_module("deepspeed.comm.torch")  # not deepspeed.comm's `torch`
    model = tiny_net()
    config = {
        "train_micro_batch_size_per_gpu": 16,
        "steps_per_print": 10**9,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
        **DEEPSPEED_CONFIGS[setting],
    }
    x, y = tiny_batch()
    with mock.patch.object(ds_torch, "build_shm_op", lambda: None), recording(device.type) as rec:
        engine, opt, _, _ = deepspeed.initialize(
            model=model, model_parameters=model.parameters(), config=config
        )
        for _ in range(2):
            out = engine(x.to(engine.device, next(engine.module.parameters()).dtype))
            loss = nn.functional.cross_entropy(out, y.to(engine.device))
            rec.output_dtype = rec.output_dtype or out.dtype
            rec.loss_dtype = rec.loss_dtype or loss.dtype
            engine.backward(loss)
            engine.step()
        return row(
            rec, engine.module[2], params=list(engine.module.parameters()),
            opt_dtype=optimizer_dtype(opt), loss_scaler=_deepspeed_scaler(opt),
        )  # fmt: skip
