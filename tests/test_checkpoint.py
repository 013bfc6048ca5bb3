"""Tests for mpcourse.checkpoint: what a bit-identical resume needs, loaded with weights_only."""

from __future__ import annotations

import pytest
import torch

from mpcourse.checkpoint import load_checkpoint, save_checkpoint
from mpcourse.data import digits, make_loader
from mpcourse.models import MLP
from mpcourse.precision import make_scaler
from mpcourse.train import History


def _setup(seed=0):
    torch.manual_seed(seed)
    model = MLP(64, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    loader = make_loader(torch.utils.data.Subset(digits("train"), range(64)), 16, seed=seed)
    return model, opt, sched, loader


def test_round_trip_restores_every_piece_of_state(tmp_path):
    model, opt, sched, loader = _setup(0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20, growth_interval=3)
    for x, y in loader:  # a few real steps, so momentum, scale and tracker are not initial
        scaler.scale(torch.nn.functional.cross_entropy(model(x), y)).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        opt.zero_grad()
    history = History(loss=[1.5], skipped=[0], steps=4)
    path = save_checkpoint(tmp_path / "run.pt", model, opt, scaler, sched, loader, history, 3)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically
    expected_rng = torch.rand(3)  # what the global RNG would give next
    next_order = [y.tolist() for _, y in loader]  # and the loader's next shuffle

    torch.manual_seed(123)
    model2, opt2, sched2, loader2 = _setup(1)
    scaler2 = torch.amp.GradScaler("cpu", init_scale=2.0**20, growth_interval=3)
    history2 = History()
    epoch = load_checkpoint(path, model2, opt2, scaler2, sched2, loader2, history2)
    assert epoch == 3
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    assert scaler2.state_dict() == scaler.state_dict()
    assert scaler2.state_dict()["_growth_tracker"] == scaler.state_dict()["_growth_tracker"]
    assert sched2.state_dict() == sched.state_dict()
    momentum = opt.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"], momentum)
    assert history2 == history
    assert torch.equal(torch.rand(3), expected_rng)
    assert [y.tolist() for _, y in loader2] == next_order
    state = torch.load(path, weights_only=True)  # plain tensors and values only
    assert {"model", "optimizer", "scaler", "scheduler", "loader_rng", "cpu_rng"} <= set(state)


def test_resume_without_scaler_state_is_refused(tmp_path):
    model, opt, _, loader = _setup()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, opt, make_scaler("amp-bf16", "cpu"), None, loader, History(), 1)
    with pytest.raises(ValueError, match="no GradScaler state"):
        load_checkpoint(path, model, opt, make_scaler("amp-fp16", "cpu"))
    load_checkpoint(path, model, opt, make_scaler("amp-bf16", "cpu"))  # a disabled scaler is fine
    torch.save({"model": model.state_dict()}, path)
    with pytest.raises(ValueError, match="not an mpcourse checkpoint.*save_checkpoint"):
        load_checkpoint(path, model, opt, make_scaler("amp-fp16", "cpu"))


def test_checkpoint_does_not_import_train():
    """Issue 9 B7: no import cycle checkpoint <-> train (History is a protocol here)."""
    import ast
    import inspect

    import mpcourse.checkpoint as module

    imported = {
        node.module
        for node in ast.walk(ast.parse(inspect.getsource(module)))
        if isinstance(node, ast.ImportFrom)
    }
    assert "train" not in imported and "mpcourse.train" not in imported, imported
