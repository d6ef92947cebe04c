"""One backbone registry (conv4, resnet10, resnet18, resnet34) used by zoo, meta-model and Fisher probe alike."""

from __future__ import annotations

from typing import Callable

from torch import nn

from dfmeta.errors import DfmetaError
from dfmeta.nets.common import buffers_of, fcall, head_names, make_bn, params_of, stack_params
from dfmeta.nets.conv4 import Conv4
from dfmeta.nets.resnet import ResNet

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "conv4": lambda num_classes, image_size, in_channels, bn: Conv4(num_classes, image_size, in_channels, 32, bn),
    "resnet10": lambda num_classes, image_size, in_channels, bn: ResNet((1, 1, 1, 1), num_classes, in_channels,
                                                                         "fewshot", bn),
    "resnet18": lambda num_classes, image_size, in_channels, bn: ResNet((2, 2, 2, 2), num_classes, in_channels,
                                                                         "fewshot", bn),
    "resnet34": lambda num_classes, image_size, in_channels, bn: ResNet((3, 4, 6, 3), num_classes, in_channels,
                                                                         "imagenet", bn),
}
ARCHITECTURES = tuple(_REGISTRY)


def build(arch: str, num_classes: int, image_size: int = 32, in_channels: int = 3, bn: str = "batch") -> nn.Module:
    """Build a backbone by name. ``bn``: ``running`` (teachers) or ``batch`` (meta-model); see :func:`make_bn`."""
    if arch not in _REGISTRY:
        raise DfmetaError(f"unknown architecture {arch!r}; expected one of: {', '.join(ARCHITECTURES)}")
    return _REGISTRY[arch](num_classes, image_size, in_channels, bn)


__all__ = ["ARCHITECTURES", "Conv4", "ResNet", "build", "buffers_of", "fcall", "head_names", "make_bn",
           "params_of", "stack_params"]
