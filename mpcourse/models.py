"""The small models the course trains.

``SimpleModel`` is exactly the LeNet-style CNN of the original recipe (the seed
text of the course); ``MLP`` is a Linear+ReLU stack for fast experiments on flat
features (e.g. the 8x8 digits).

Shapes of ``SimpleModel`` (input ``(N, 3, 32, 32)``)::

    conv1 3->6, k5   -> (N, 6, 28, 28) -> ReLU -> maxpool 2 -> (N, 6, 14, 14)
    conv2 6->16, k5  -> (N, 16, 10, 10) -> ReLU -> maxpool 2 -> (N, 16, 5, 5)
    flatten          -> (N, 400)
    fc1 400->120 -> ReLU -> fc2 120->84 -> ReLU -> fc3 84->10  (logits)

Taught in course/03_training_in_pure_fp16.ipynb.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .validate import positive_int

__all__ = ["SimpleModel", "MLP", "count_parameters"]


class SimpleModel(nn.Module):
    """The seed's CNN: two conv+pool blocks and three fully connected layers.

    Maps images ``x`` of shape ``(N, 3, 32, 32)`` to logits of shape ``(N, 10)``;
    62,006 parameters. Layer names (``conv1``, ``conv2``, ``fc1``, ``fc2``,
    ``fc3``) are those of the seed, so its state dicts load here.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, 32, 32):
            raise ValueError(
                f"SimpleModel expects images of shape (N, 3, 32, 32), got {tuple(x.shape)}; "
                "use mpcourse.data.synthetic_images() or digits(image_size=32)"
            )
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x


class MLP(nn.Module):
    """A multilayer perceptron: flatten, then ``Linear -> ReLU`` per hidden size, then ``Linear``.

    ``h_0 = flatten(x)``, ``h_{i+1} = relu(W_i h_i + b_i)`` for each entry of
    ``hidden``, logits ``= W_out h_L + b_out`` with ``num_classes`` outputs.
    Submodules are ``layers`` (an ``nn.Sequential``), so hooks see
    ``layers.0``, ``layers.2``, ... as the Linear layers.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """

    def __init__(
        self, in_features: int, hidden: Sequence[int] = (128, 128), num_classes: int = 10
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("num_classes", num_classes)):
            positive_int(value, f"MLP: {name}")
        hidden = tuple(hidden)
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(
                f"MLP: hidden must be a sequence of positive ints (may be empty), got {hidden!r}"
            )
        self.in_features = in_features
        sizes = (in_features, *hidden)
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"MLP built for {self.in_features} input features, got input of shape "
                f"{tuple(x.shape)} ({x.shape[1]} features after flattening)"
            )
        return self.layers(x)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters, ``sum(p.numel() for p in model.parameters())``.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """
    return sum(p.numel() for p in model.parameters())
