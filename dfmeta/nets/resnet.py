"""ResNets with torchvision's parameter names.

``stem="fewshot"``: 3x3 stride-1 stem conv and no max-pool (ResNet-10/18 of few-shot learning);
``stem="imagenet"``: 7x7 stride-2 stem and max-pool, so torchvision ImageNet weights load as they are (ResNet-34 probe).
"""

from __future__ import annotations

import torch
from torch import nn

from dfmeta.nets.common import make_bn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, bn: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = make_bn(cout, bn)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = make_bn(cout, bn)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), make_bn(cout, bn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        idt = x if self.downsample is None else self.downsample(x)
        return nn.functional.relu(out + idt)


class ResNet(nn.Module):
    """A BasicBlock ResNet; ``layers`` blocks per stage, widths 64/128/256/512, global average pool, ``fc`` head."""

    def __init__(self, layers: tuple[int, int, int, int], num_classes: int, in_channels: int = 3,
                 stem: str = "fewshot", bn: str = "running") -> None:
        super().__init__()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = make_bn(64, bn)
        cin = 64
        for i, (n, w) in enumerate(zip(layers, (64, 128, 256, 512))):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1, bn))
                cin = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.feature_dim = 512
        self.fc = nn.Linear(512, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(nn.functional.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
