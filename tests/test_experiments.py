"""mpcourse.experiments: the harnesses chapters 05 and 07 run, on tiny models."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from mpcourse.data import make_loader
from mpcourse.experiments import (
    paired_runs,
    plot_paired_runs,
    plot_scale_trajectory,
    raised,
    record_scale_run,
    same_weights,
    time_scaler_step,
    time_unscale,
)
from mpcourse.scaling import DynamicLossScaler

GEN = torch.Generator().manual_seed(0)
DATA = TensorDataset(torch.randn(48, 6, generator=GEN), torch.randint(0, 3, (48,), generator=GEN))


def make_run(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    return model, torch.optim.SGD(model.parameters(), lr=0.1), make_loader(DATA, 8, seed=seed)


def test_same_weights_and_raised():
    a, b = make_run(0)[0], make_run(0)[0]
    assert same_weights(a, b)
    with torch.no_grad():
        b[0].weight[0, 0] += 1e-7
    assert not same_weights(a, b)
    with pytest.raises(ValueError, match="same architecture"):
        same_weights(a, nn.Linear(2, 2))
    assert raised(int, "x") and raised(int, "3") is None
    with pytest.raises(TypeError):
        raised(int, "3", error=ValueError, base=None)  # another exception propagates


def test_paired_runs_redo_fp32_exactly_and_pair_the_others():
    eval_loader = make_loader(DATA, 48, shuffle=False)
    runs = paired_runs(make_run, (0, 1), 2, {0: ("fp32", "amp-bf16")}, eval_loader)
    assert set(runs.fp32) == {0, 1} and len(runs.fp32[0].eval_accuracy) == 2
    assert runs.last_epoch["fp32", 0].eval_accuracy[-1] == runs.accuracy("fp32", 0)
    paired = runs.paired(48)
    assert paired["fp32", 0] == 0 and set(paired) == {("fp32", 0), ("amp-bf16", 0)}
    finals = [runs.accuracy("fp32", s) for s in (0, 1)]
    assert runs.spread() == max(finals) - min(finals)
    assert len(plot_paired_runs(runs)) == 2
    with pytest.raises(ValueError, match="epochs >= 2"):
        paired_runs(make_run, (0,), 1, {}, eval_loader)


def batches(seed=0):
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(16, 6, generator=gen) * 1e3, torch.randint(0, 3, (16,), generator=gen)


def test_record_scale_run_is_the_same_for_our_scaler_and_gradscaler():
    ours = record_scale_run(make_run(0)[0], batches(), DynamicLossScaler(growth_interval=3), 20)
    ref = record_scale_run(
        make_run(0)[0], batches(), torch.amp.GradScaler("cpu", growth_interval=3), 20
    )
    assert ours.scales == ref.scales and ours.skipped == ref.skipped
    assert same_weights(ours.model, ref.model) and len(ours.scales) == 20
    skipped = [i for i, s in enumerate(ours.skipped) if s]
    assert plot_scale_trajectory(ours.scales, skipped, "t").get_yscale() == "log"


def test_timers_return_positive_seconds_and_refuse_empty_lists():
    grads = [torch.randn(8, 8) for _ in range(5)]
    assert time_unscale(grads, fused=True, repeats=2) > 0
    settings = dict(init_scale=1.0, growth_interval=10**9)
    assert time_scaler_step(torch.amp.GradScaler("cpu", **settings), grads, 2, 3) > 0
    with pytest.raises(TypeError, match="non-empty list"):
        time_unscale([], fused=True)
