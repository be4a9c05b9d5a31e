"""ResNet-20/32/44/56 for CIFAR-10 (He et al. 2015, option-A shortcuts), matching ../shared/data/resnet_cifar10."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quanta.errors import QuantaError


class _Block(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Option A: subsample and zero-pad the channels when the shape changes; no parameters.
        shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x
        return F.relu(out + shortcut)


class ResNetCifar(nn.Module):
    """conv 3->16, three stages of ``n`` basic blocks (16/32/64 channels), global average pool, linear 64->10."""

    def __init__(self, blocks_per_stage: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(_Block(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (n, 3, 32, 32), normalized
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def resnet_cifar(depth: int) -> ResNetCifar:
    """ResNet-``depth`` for CIFAR-10, ``depth`` in 20, 32, 44, 56."""
    if depth not in (20, 32, 44, 56):
        raise QuantaError(f"ResNet depth {depth} is not one of 20, 32, 44, 56.")
    return ResNetCifar((depth - 2) // 6)
