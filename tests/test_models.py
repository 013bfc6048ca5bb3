"""mpcourse.models: the seed's SimpleModel exactly, and the MLP."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpcourse.models import MLP, SimpleModel, count_parameters


class SeedModel(nn.Module):
    """The model exactly as the seed text of the course defines it."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def test_simple_model_is_the_seed_model():
    torch.manual_seed(0)
    seed = SeedModel()
    ours = SimpleModel()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in seed.state_dict().items()
    ]
    ours.load_state_dict(seed.state_dict())
    x = torch.randn(5, 3, 32, 32)
    assert torch.equal(ours(x), seed(x))
    assert ours(x).shape == (5, 10)
    assert count_parameters(ours) == 62006 == sum(p.numel() for p in seed.parameters())


def test_simple_model_same_init_as_seed_under_the_same_seed():
    torch.manual_seed(3)
    a = SimpleModel()
    torch.manual_seed(3)
    b = SeedModel()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_simple_model_runs_in_half_and_rejects_wrong_shapes():
    m = SimpleModel().half()
    out = m(torch.randn(2, 3, 32, 32).half())
    assert out.dtype == torch.float16 and out.shape == (2, 10)
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\), got \(2, 1, 28, 28\)"):
        SimpleModel()(torch.randn(2, 1, 28, 28))


def test_mlp_layers_and_flattening():
    m = MLP(64, hidden=(32, 16), num_classes=7)
    linears = [mod for mod in m.layers if isinstance(mod, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(64, 32), (32, 16), (16, 7)]
    assert m(torch.randn(4, 1, 8, 8)).shape == (4, 7)
    assert count_parameters(m) == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 7 + 7
    assert MLP(10, hidden=())(torch.randn(3, 10)).shape == (3, 10)  # logistic regression


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"in_features": 0}, "in_features must be a positive int"),
        ({"in_features": 4, "num_classes": 0}, "num_classes must be a positive int"),
        ({"in_features": 4, "hidden": (8, -1)}, "hidden must be a sequence of positive ints"),
        ({"in_features": 4.0}, "in_features must be a positive int"),
    ],
)
def test_mlp_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLP(**kwargs)


def test_mlp_wrong_input_size():
    with pytest.raises(ValueError, match="built for 64 input features.*got input of shape"):
        MLP(64)(torch.randn(2, 3, 32, 32))
