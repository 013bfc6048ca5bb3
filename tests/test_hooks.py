"""mpcourse.hooks: captured gradients equal autograd's, and the statistics count right."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from mpcourse.formats import BF16, FP16, TF32  # noqa: E402
from mpcourse.hooks import (  # noqa: E402
    GradientCapture,
    capture_gradients,
    flushed_share,
    gradient_stats,
    plot_gradient_histogram,
    stats_table,
    window_shares,
)
from mpcourse.models import MLP, SimpleModel  # noqa: E402


def test_activation_gradients_are_autograds():
    torch.manual_seed(0)
    model = MLP(8, hidden=(5,), num_classes=3)
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 1])
    cap = capture_gradients(model, x, y)
    assert list(cap.activation) == ["layers.0", "layers.1", "layers.2"]
    logits = model(x)
    expected = (torch.softmax(logits, 1) - F.one_hot(y, 3)) / 4  # dL/dlogits of the batch mean
    assert torch.allclose(cap.activation["layers.2"], expected, atol=1e-7)
    model.zero_grad()
    hidden = model.layers[1](model.layers[0](x))
    hidden.retain_grad()
    F.cross_entropy(model.layers[2](hidden), y).backward()
    assert torch.allclose(cap.activation["layers.1"], hidden.grad)
    for name, p in model.named_parameters():
        assert torch.allclose(cap.weight[name], p.grad)
    assert cap.loss == pytest.approx(F.cross_entropy(logits, y).item())


def test_hooks_are_removed_and_modules_called_twice_are_named():
    model = SimpleModel()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    cap = capture_gradients(model, x, y)
    assert list(cap.activation) == ["conv1", "pool", "pool#2", "conv2", "fc1", "fc2", "fc3"]
    assert cap.activation["pool"].shape == (2, 6, 14, 14)
    assert cap.activation["pool#2"].shape == (2, 16, 5, 5)
    assert all(not m._forward_hooks for m in model.modules())
    assert cap.all().numel() == sum(v.numel() for v in cap.activation.values())
    assert cap.all("weight").numel() == 62006


def test_hooks_removed_even_when_the_loss_fails():
    model = MLP(4)
    with pytest.raises(RuntimeError):
        capture_gradients(model, torch.randn(2, 4), torch.tensor([0, 1]), lambda o, y: o.sum() @ o)
    assert all(not m._forward_hooks for m in model.modules())


def test_fp16_model_gives_fp16_gradients():
    model = MLP(4).half()
    cap = capture_gradients(model, torch.randn(3, 4).half(), torch.tensor([0, 1, 2]))
    assert cap.dtype == torch.float16
    assert cap.all().dtype == torch.float32  # copies are float32


def test_flushed_share_and_stats():
    v = torch.tensor([0.0, 2.0**-26, 2.0**-25, 1.5 * 2.0**-25, 2.0**-20, 1.0, 70000.0, -(2.0**-30)])
    assert flushed_share(v) == 3 / 7  # 2^-26, 2^-25 (tie -> 0), -2^-30
    assert flushed_share(torch.zeros(3)) == 0.0
    s = gradient_stats(v, FP16)
    assert s["count"] == 8 and s["zero"] == 1 / 8
    assert s["below_min_subnormal"] == 4 / 8  # 2^-26, 2^-25, 1.5*2^-25, 2^-30
    assert s["below_min_normal"] == 5 / 8  # ... and 2^-20
    assert s["above_max"] == 1 / 8
    assert s["flushed_to_zero"] == 3 / 7
    t = gradient_stats(v, TF32)  # no torch dtype: the threshold is used
    assert t["flushed_to_zero"] == 0.0 and t["above_max"] == 0.0
    w = window_shares(v, FP16)  # of the 7 nonzero: 3 to 0, 1.5*2^-25 and 2^-20 subnormal
    assert w == {"to_zero": 3 / 7, "subnormal": 2 / 7, "normal": 1 / 7, "overflow": 1 / 7}
    assert window_shares(v, TF32) == {
        "to_zero": 0.0,
        "subnormal": 0.0,
        "normal": 1.0,
        "overflow": 0.0,
    }
    assert window_shares(torch.zeros(2))["to_zero"] == 0.0
    with pytest.raises(TypeError, match="FloatFormat"):
        window_shares(v, torch.float16)


def test_stats_errors():
    with pytest.raises(ValueError, match="at least one value"):
        gradient_stats(torch.zeros(0))
    with pytest.raises(TypeError, match="must be a mpcourse.formats.FloatFormat"):
        gradient_stats(torch.ones(2), torch.float16)
    cap = GradientCapture(loss=0.0, dtype=torch.float32, activation={"a": torch.ones(2)})
    with pytest.raises(ValueError, match="kind must be 'activation' or 'weight'"):
        stats_table(cap, "loss")
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        capture_gradients(lambda x: x, torch.ones(1), torch.ones(1))


def test_stats_table_and_plot():
    torch.manual_seed(0)
    cap = capture_gradients(MLP(8), torch.randn(16, 8), torch.randint(0, 10, (16,)))
    table = stats_table(cap)
    lines = table.splitlines()
    assert lines[0].split() == ["layer", "values", "zero%", "|", "to0%", "sub%", "normal%", "inf%"]
    for line in lines[2:]:  # one denominator: the nonzero shares add up to 100
        assert abs(sum(float(x) for x in line.split("|")[1].split()) - 100) < 0.03
    assert lines[-1].startswith("ALL") and len(lines) == 2 + len(cap.activation) + 1
    assert "layers.0.weight" in stats_table(cap, "weight")
    ax = plot_gradient_histogram(cap.all())
    legend = [t.get_text() for t in ax.get_legend().texts]
    assert isinstance(ax, Axes) and "FP16 range (2^-24 to 2^16)" in legend
    assert "BF16 range (2^-133 to 2^128)" in legend
    plot_gradient_histogram(torch.zeros(5), ax=ax)  # all zeros: no histogram, no crash


def test_plot_marks_the_share_flushed_in_fp16_and_zooms():
    import matplotlib.pyplot as plt

    values = torch.tensor([0.0, 2.0**-30, 2.0**-26, 2.0**-20, 2.0**-10, 1.0, -(2.0**-40), 0.5])
    ax = plot_gradient_histogram(values, xlim=(-50, 18))
    assert ax.get_xlim() == (-50, 18)
    notes = [t.get_text() for t in ax.texts]
    assert notes == ["0 in FP16: 42.9%\nof nonzero values"]  # 3 of the 7 nonzero values
    assert "zeros: 12.5%" in ax.get_legend().texts[-1].get_text()
    _, ax2 = plt.subplots()
    plot_gradient_histogram(values, ax2, formats=(BF16,))  # no FP16 window: no FP16 note
    assert len(ax2.texts) == 0
    with pytest.raises(ValueError, match="xlim must be \\(left, right\\) with left < right"):
        plot_gradient_histogram(values, xlim=(10, -10))
    plt.close("all")


def test_on_outputs_is_the_one_recorder_and_removes_its_hooks():
    from mpcourse import debug, hooks

    assert debug.floating_tensors is hooks.floating_tensors
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    seen = []
    with hooks.on_outputs({m: n for n, m in model.named_modules()}, lambda n, m, t: seen.append(n)):
        model(torch.ones(2, 3))
    assert seen == ["0", "1", ""]  # inner modules finish first, the container last
    model(torch.ones(2, 3))
    assert len(seen) == 3 and not any(m._forward_hooks for m in model.modules())
    nested = {"a": (torch.ones(1), torch.ones(1, dtype=torch.long)), "b": [torch.zeros(2)]}
    assert len(list(hooks.floating_tensors(nested))) == 2
