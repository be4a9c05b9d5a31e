"""LeNet-5 for 32x32 MNIST, with the sub-module names of the pretrained checkpoint in ../shared/data/lenet5_mnist."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class LeNet5(nn.Module):
    """conv 1->6 (5x5), pool, conv 6->16 (5x5), pool, conv 16->120 (5x5), fc 120->84, fc 84->10 (log-softmax)."""

    def __init__(self) -> None:
        super().__init__()
        self.convnet = nn.Sequential(
            OrderedDict(
                [
                    ("c1", nn.Conv2d(1, 6, 5)),
                    ("relu1", nn.ReLU()),
                    ("s2", nn.MaxPool2d(2)),
                    ("c3", nn.Conv2d(6, 16, 5)),
                    ("relu3", nn.ReLU()),
                    ("s4", nn.MaxPool2d(2)),
                    ("c5", nn.Conv2d(16, 120, 5)),
                    ("relu5", nn.ReLU()),
                ]
            )
        )
        self.fc = nn.Sequential(
            OrderedDict([("f6", nn.Linear(120, 84)), ("relu6", nn.ReLU()), ("f7", nn.Linear(84, 10))])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (n, 1, 32, 32)
        return torch.log_softmax(self.fc(self.convnet(x).flatten(1)), dim=-1)
