"""mpcourse.debug: first_nonfinite names the right module and phase; headroom; ScaleMonitor."""

import math
import warnings

import pytest
import torch
from torch import nn

from mpcourse.debug import (
    HeadroomReport,
    NonFinite,
    ScaleCollapseWarning,
    ScaleMonitor,
    first_nonfinite,
    headroom,
)
from mpcourse.formats import BF16, FP16
from mpcourse.scaling import DynamicLossScaler


class Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


class Sqrt(nn.Module):
    def forward(self, x):
        return torch.sqrt(x)


class Block(nn.Module):
    """A nested module, to check qualified names."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.inner = inner

    def forward(self, x):
        return self.inner(self.lin(x))


def test_clean_model_gives_none():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert first_nonfinite(model, torch.randn(5, 4)) is None
    assert first_nonfinite(model, torch.randn(5, 4), backward=True) is None
    assert all(p.grad is None for p in model.parameters())  # autograd.grad: .grad untouched


def test_overflowing_linear_in_fp16_is_named_first():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[2].weight.fill_(2e4)  # |W h| ~ 2e4 * 8 * 4, far above 65504
    x = torch.rand(16, 4) + 0.5
    assert first_nonfinite(model, x) is None  # FP32: fine
    with torch.autocast("cpu", dtype=torch.float16):
        rec = first_nonfinite(model, x)
    assert isinstance(rec, NonFinite)
    assert (rec.module, rec.phase, rec.kind) == ("2", "forward", "inf")
    assert rec.module_type == "Linear" and rec.dtype == torch.float16 and rec.count > 0
    assert "'2' (Linear)" in str(rec)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # BF16 has FP32's range
        assert first_nonfinite(model, x) is None


def test_nan_from_log_of_negative_is_named_with_its_qualified_name():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), Block(Log()), nn.Linear(8, 2))
    rec = first_nonfinite(model, torch.randn(32, 4), backward=True)
    # forward comes first in execution order, and the inner module before its parent
    assert (rec.module, rec.phase, rec.kind) == ("1.inner", "forward", "nan")
    assert rec.module_type == "Log"


def test_inf_gradient_only_in_backward():
    torch.manual_seed(0)
    # ReLU(inplace) makes exact zeros; sqrt(0) = 0 is fine, d sqrt/dx at 0 = inf is not
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), Sqrt(), nn.Linear(8, 2))
    x = torch.randn(32, 4)
    assert first_nonfinite(model, x) is None
    rec = first_nonfinite(model, x, backward=True)
    assert (rec.module, rec.phase, rec.kind) == ("2", "backward", "inf")
    assert rec.what == "grad of input"


def test_backward_blames_the_module_whose_weight_gradient_overflows():
    # pure FP16 model: activations fit (h = 400, out = 16), but dL/dW of the last layer
    # sums h over 256 rows: 256 * 400 = 102400 > 65504
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)).half()
    with torch.no_grad():
        model[0].weight.fill_(100.0)
        model[0].bias.zero_()
        model[1].weight.fill_(0.01)
    x = torch.ones(256, 4, dtype=torch.float16)
    assert first_nonfinite(model, x) is None
    rec = first_nonfinite(model, x, backward=True)
    assert (rec.module, rec.phase, rec.kind) == ("1", "backward", "inf")
    assert rec.what == "grad of weight"


def test_errors_say_what_is_expected():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        first_nonfinite(lambda x: x, torch.ones(1, 2))
    with pytest.raises(ValueError, match="no submodules and no parameters"):
        first_nonfinite(nn.Sequential(), torch.ones(1, 2))
    with pytest.raises(TypeError, match="inputs must be tensors.*list"):
        first_nonfinite(model, [[1.0, 2.0]])
    with pytest.raises(TypeError, match="pass the model's inputs"):
        first_nonfinite(model)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="requires grad"):
        first_nonfinite(model, torch.ones(1, 2), backward=True)
    with pytest.raises(TypeError, match="inputs must be tensors"):
        headroom(model, 3.0)


def test_tuple_outputs_and_headroom_bad_input():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            h = self.lin(x)
            return {"ok": h, "bad": (h, torch.log(h - 100))}

    rec = first_nonfinite(TwoHeads(), torch.randn(2, 3))
    assert (rec.module, rec.module_type, rec.kind) == ("", "TwoHeads", "nan")
    assert "the model itself" in str(rec)
    model = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        headroom(model, torch.randn(2, 3), loss_fn=3)
    with pytest.raises(ValueError, match="scalar tensor"):
        headroom(model, torch.randn(2, 3), loss_fn=lambda out: out)
    with pytest.raises(ValueError, match="no gradient was recorded"):
        headroom(model, torch.randn(2, 3))["0"].bits(FP16, "gradient")


def test_headroom_flags_the_layer_that_will_overflow_fp16():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[2].weight.fill_(2e4)
    x = torch.rand(16, 4) + 0.5
    y = torch.randint(0, 2, (16,))
    report = headroom(model, x, loss_fn=lambda out: nn.functional.cross_entropy(out, y))
    assert isinstance(report, HeadroomReport)
    assert report.overflows(FP16) == ["2", "3", ""] and report.overflows(BF16) == []
    row = report["2"]
    up, _ = row.bits(FP16)
    assert up == pytest.approx(math.log2(65504 / row.act_amax)) and up < 0
    assert row.bits(BF16)[0] > 100
    # the claim is real: the same model under FP16 autocast overflows exactly there
    with torch.autocast("cpu", dtype=torch.float16):
        assert first_nonfinite(model, x).module == "2"
    assert row.grad_amax is not None and row.grad_amax > 0
    assert "max|act|" in report.table()
    with pytest.raises(KeyError):
        report["nope"]
    assert headroom(model, x)["2"].grad_amax is None


def _overflowing_run(scaler, steps, *, real_inf, **kwargs):
    """SGD steps on a tiny model; with real_inf the loss is inf on every step."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = ScaleMonitor(scaler, **kwargs)
    x = torch.randn(8, 4)
    for _ in range(steps):
        loss = model(x).float().pow(2).mean()
        if real_inf:
            loss = loss * torch.tensor(float("inf"))
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        monitor.step()
    return monitor


@pytest.mark.parametrize("make", [lambda: torch.amp.GradScaler("cpu"), DynamicLossScaler])
def test_monitor_warns_on_collapse_with_a_diagnosis(make):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor = _overflowing_run(make(), 12, real_inf=True, patience=5)
        by_scale = _overflowing_run(make(), 20, real_inf=True)  # default patience 25
    collapse = [w for w in caught if issubclass(w.category, ScaleCollapseWarning)]
    assert len(collapse) == 2  # once per episode, once per run
    assert "forward pass" in str(collapse[0].message) and "first_nonfinite" in monitor.warnings[0]
    assert monitor.skipped == list(range(12)) and monitor.collapsed
    assert monitor.scales[-1] == 2.0**16 / 2**12
    # default: warned at the first skip below scale 1 (2^16 / 2^17), not before
    assert by_scale.collapsed and len(by_scale.warnings) == 1
    assert by_scale.scales.index(0.5) == 16 and "17 of 17 steps skipped" in by_scale.warnings[0]


@pytest.mark.parametrize("make", [lambda: torch.amp.GradScaler("cpu"), DynamicLossScaler])
def test_monitor_is_quiet_on_a_transient_overflow(make):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScaleCollapseWarning)
        monitor = _overflowing_run(make(), 6, real_inf=False)
    assert monitor.skipped == [] and monitor.diagnosis().startswith("healthy")


def test_monitor_counts_skips_from_a_too_high_init_scale():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**126)  # S * loss overflows FP32
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScaleCollapseWarning)
        monitor = ScaleMonitor(scaler, patience=50)
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=1e-6)
        x = 100 * torch.randn(8, 4)
        for _ in range(30):
            scaler.scale(model(x).pow(2).mean()).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            monitor.step()
    assert 0 < len(monitor.skipped) < 30 and monitor.skipped == list(range(len(monitor.skipped)))
    assert monitor.diagnosis().startswith("transient") and not monitor.collapsed


def test_monitor_rejects_bad_input():
    with pytest.raises(TypeError, match="GradScaler"):
        ScaleMonitor(object())
    with pytest.raises(ValueError, match="patience"):
        ScaleMonitor(DynamicLossScaler(), patience=0)


# -- the chapter's exercise checks accept the fix and name what is wrong ---------------------------
def _rms_fixed(x, weight, eps=1e-6):
    with torch.autocast(x.device.type, enabled=False):
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return y.to(x.dtype)


def _rms_fp16(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def test_check_rms_norm():
    from mpcourse.checks import CheckFailed
    from mpcourse.checks.debug import check_rms_norm

    assert check_rms_norm(_rms_fixed)
    with pytest.raises(CheckFailed, match="all zeros .* rsqrt\\(inf\\) = 0"):
        check_rms_norm(_rms_fp16)  # the naive norm is silent: zeros, no NaN
    with pytest.raises(CheckFailed, match="cast the result back"):
        check_rms_norm(lambda x, w, eps: _rms_fixed(x, w, eps).float())


def test_check_safe_inference():
    from mpcourse.checks import CheckFailed
    from mpcourse.checks.debug import check_safe_inference

    def safe(model, x):
        hot = {n.split(".")[0] for n in headroom(model, x).overflows(FP16) if n}
        with torch.autocast("cpu", dtype=torch.float16):
            for name, block in model.named_children():
                if name in hot:
                    with torch.autocast("cpu", enabled=False):
                        x = block(x.float())
                else:
                    x = block(x)
        return x

    def all_fp16(model, x):
        with torch.autocast("cpu", dtype=torch.float16):
            return model(x)

    assert check_safe_inference(safe)
    with pytest.raises(CheckFailed, match="returned inf/NaN"):
        check_safe_inference(all_fp16)
    with pytest.raises(CheckFailed, match="did not run in float16"):
        check_safe_inference(lambda model, x: model(x))


def _loop(bce, clip_first, sched_always):
    def train(model, optimizer, scheduler, scaler, batches):
        monitor = ScaleMonitor(scaler)
        for x, y in batches:
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                z = model(x)
                loss = nn.BCELoss()(torch.sigmoid(z), y) if bce else nn.BCEWithLogitsLoss()(z, y)
            scaler.scale(loss).backward()
            if not clip_first:
                scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            if not monitor.step() or sched_always:
                scheduler.step()

    return train


def test_check_broken_loop_names_the_bugs_left():
    from mpcourse.checks import CheckFailed
    from mpcourse.checks.debug import check_broken_loop

    assert check_broken_loop(_loop(False, False, False))
    with pytest.raises(CheckFailed, match=r"still present: BCELoss.*clipping.*scheduler"):
        check_broken_loop(_loop(True, True, True))
    with pytest.raises(
        CheckFailed, match=r"still present: scheduler.step\(\) after skipped steps\.$"
    ):
        check_broken_loop(_loop(False, False, True))
    with pytest.raises(CheckFailed, match=r"still present: clipping before unscale_ \(the norm"):
        check_broken_loop(_loop(False, True, False))


# -- the chapter's harnesses and the backward-only collapse (audit A3) ---------------------------
def _bce_head():
    torch.manual_seed(0)
    head = nn.Linear(8, 1)
    head.weight.data.mul_(40)  # confident logits: the FP16 sigmoid rounds some to exactly 1
    return head


def test_collapse_from_a_backward_op_does_not_blame_the_forward_pass():
    from mpcourse.debug import train_monitored

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=gen)
    y = (torch.rand(256, 1, generator=gen) > 0.5).float()
    run = train_monitored(
        _bce_head(), x, y, steps=30, lr=0.1, loss_fn=lambda z, t: nn.BCELoss()(torch.sigmoid(z), t)
    )
    assert all(math.isfinite(v) for v in run.losses)  # a finite loss every step...
    assert run.monitor.collapsed and len(run.warnings) == 1  # ...yet every step skipped
    assert "backward of an op" in run.warnings[0] and "BCEWithLogitsLoss" in run.warnings[0]
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        train_monitored(_bce_head(), x, y, precision="fp32")


def test_lr_sweep_amp_equals_fp32_and_rejects_bad_input():
    from mpcourse.debug import lr_sweep

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 64, generator=gen), torch.randint(0, 10, (128,), generator=gen)
    sweep = lr_sweep(x, y, (1e-3, 0.1), steps=5, batch=32)
    assert set(sweep) == {(m, lr) for m in ("fp32", "amp-fp16", "pure-bf16") for lr in (1e-3, 0.1)}
    assert abs(sweep["amp-fp16", 0.1][0] - sweep["fp32", 0.1][0]) < 1e-2
    assert sweep["pure-bf16", 1e-3][1] > sweep["pure-bf16", 0.1][1]  # more updates lost
    with pytest.raises(ValueError, match="unknown mode"):
        lr_sweep(x, y, (0.1,), modes=("fp8",))
    with pytest.raises(ValueError, match="positive numbers"):
        lr_sweep(x, y, (0.0,))


def test_anomaly_cost_measures_a_slower_step():
    from mpcourse.debug import anomaly_cost

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    cost = anomaly_cost(model, torch.randn(64, 16), torch.randint(0, 4, (64,)), repeats=5)
    assert cost["anomaly_s"] > cost["plain_s"] > 0 and cost["ratio"] > 1
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="repeats"):
        anomaly_cost(model, torch.randn(4, 16), torch.zeros(4, dtype=torch.long), repeats=0)


def test_t5_like_meanpool_and_leaf_table():
    from mpcourse.debug import MeanPool, headroom, t5_like

    model, x = t5_like()
    report = headroom(model, x)
    assert report.overflows(FP16) == ["2.0", "2.1"] and report.overflows(BF16) == []
    leaves = report.table(leaves_only=True)
    assert "Sequential" not in leaves and "2.0" in leaves and "Sequential" in report.table()
    with pytest.raises(ValueError, match="hot"):
        t5_like(hot=3)
    from mpcourse.debug import plot_headroom

    ax = plot_headroom(report)
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 2 * 12 and sum(h < 0 for h in heights) == 2  # 2.0 and 2.1 in FP16
    tokens = torch.full((2, 4096, 3), 20.0).half()
    assert torch.isinf(MeanPool()(tokens)).all()  # the FP16 sum, about 82,000, is returned in FP16
    assert torch.equal(MeanPool(torch.float32)(tokens), torch.full((2, 3), 20.0).half())


def test_check_broken_loop_accepts_the_fp32_bce_route():
    from mpcourse.checks import CheckFailed
    from mpcourse.checks.debug import check_broken_loop

    def loop(model, optimizer, scheduler, scaler, batches, fp32=True):
        for x, y in batches:
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                logits = model(x)
                p = torch.sigmoid(logits.float()) if fp32 else torch.sigmoid(logits).float()
                loss = nn.BCELoss()(p, y)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scale = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            if scaler.get_scale() >= scale:
                scheduler.step()

    assert check_broken_loop(loop)  # sigmoid + BCELoss in FP32 is a fix too
    with pytest.raises(CheckFailed, match="still present: BCELoss on a sigmoid"):
        check_broken_loop(lambda *a: loop(*a, fp32=False))  # .float() after an FP16 sigmoid
