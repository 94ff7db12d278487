"""The paper's CIFAR-10 networks (He et al., arXiv 1512.03385, sec. 4.2): 6n+2 weighted layers.

A 3x3 conv with 16 filters, then three stages of 2n 3x3 layers with 16, 32 and 64 filters on
32x32, 16x16 and 8x8 maps (stride-2 convs subsample), global average pooling and a linear layer.
Shortcuts are identities throughout ("option A"): where the width doubles, the shortcut subsamples
the input by 2 and pads the new channels with zeros, so the ResNets have exactly as many parameters
as their plain twins (Table 6: 0.27M for ResNet-20 ... 19.4M for ResNet-1202).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class PadShortcut(nn.Module):
    """Option A: subsample by `stride` and zero-pad the channel dimension to `out_planes`."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra = out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # pad order is (W left, W right, H top, H bottom, C front, C back): split the new channels
        # evenly before and after, as the widely reproduced reference implementations do.
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class CifarBlock(nn.Module):
    """Two 3x3 conv-BN layers; with `residual` their output is added to an option-A shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, residual: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.residual = residual
        needs_projection = stride != 1 or in_planes != planes
        self.shortcut = PadShortcut(in_planes, planes, stride) if residual and needs_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """The 6n+2-layer network of sec. 4.2; `residual=False` gives the plain twin."""

    def __init__(self, n: int, num_classes: int = 10, residual: bool = True, zero_init_residual: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, in_planes = [], 16
        for stage, planes in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(CifarBlock(in_planes, planes, stride, residual))
                in_planes = planes
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            # He initialisation (the paper's ref. [13]), as sec. 3.4 prescribes.
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual and residual:
            # Goyal et al. (arXiv 1706.02677) sec. 5.1: each block starts as the identity.
            for block in blocks:
                nn.init.zeros_(block.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def _cifar(depth: int, residual: bool) -> Callable[..., nn.Module]:
    assert (depth - 2) % 6 == 0, depth

    def builder(num_classes: int, zero_init_residual: bool = False) -> nn.Module:
        return CifarResNet((depth - 2) // 6, num_classes, residual, zero_init_residual)

    return builder


# Table 6 of the paper.
ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": _cifar(20, True),
    "resnet32": _cifar(32, True),
    "resnet44": _cifar(44, True),
    "resnet56": _cifar(56, True),
    "resnet110": _cifar(110, True),
    "resnet1202": _cifar(1202, True),
    "plain20": _cifar(20, False),
    "plain32": _cifar(32, False),
    "plain44": _cifar(44, False),
    "plain56": _cifar(56, False),
    "plain110": _cifar(110, False),
}
