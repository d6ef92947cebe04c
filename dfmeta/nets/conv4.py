"""Conv4: 4 x [conv3x3 (with bias), BatchNorm, ReLU, max-pool 2x2] and a linear head (the paper's meta-model)."""

from __future__ import annotations

import torch
from torch import nn

from dfmeta.errors import DfmetaError
from dfmeta.nets.common import make_bn


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, bn: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=True)
        self.bn = make_bn(cout, bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.max_pool2d(nn.functional.relu(self.bn(self.conv(x))), 2)


class Conv4(nn.Module):
    """Conv4 with ``width`` filters; the head sees ``width * (s // 16)^2`` features for image size ``s``."""

    def __init__(self, num_classes: int, image_size: int = 32, in_channels: int = 3, width: int = 32,
                 bn: str = "batch") -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ConvBlock(in_channels if i == 0 else width, width, bn) for i in range(4)])
        side = image_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise DfmetaError(f"Conv4 needs images of at least 16 px, got {image_size} (set --image-size 16 or more)")
        self.feature_dim = width * side * side
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
