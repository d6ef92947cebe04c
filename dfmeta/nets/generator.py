"""The task-recovery generator of Table 7: z ~ N(0, I_nz) -> image in [0, 1]^(C x s x s)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dfmeta.errors import DfmetaError
from dfmeta.nets.common import make_bn


def upsample2(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour upsampling by 2 of the last two axes (= ``F.interpolate(x, scale_factor=2)``), written as an
    expand and a reshape: one plain copy forward and a sum over each 2 x 2 block backward, also under ``vmap`` (where
    the upsampling kernel was 10% of a recovery step on an H100)."""
    *lead, h, w = x.shape
    return x[..., :, None, :, None].expand(*lead, h, 2, w, 2).reshape(*lead, 2 * h, 2 * w)


class Generator(nn.Module):
    """FC -> 2nf x s/4 x s/4; BN; up x2; conv 2nf->2nf; BN; LReLU(0.2); up x2; conv 2nf->nf; BN; LReLU(0.2);
    conv nf->C; Sigmoid.

    BatchNorm always uses the batch's statistics (no running buffers), so the generator runs under ``vmap``.
    Initialisation (authors' code): conv/linear weights N(0, 0.02), biases 0, BN weights N(1, 0.02), BN biases 0.
    """

    def __init__(self, image_size: int, channels: int = 3, nz: int = 256, nf: int = 64) -> None:
        super().__init__()
        if image_size < 4 or image_size % 4:
            raise DfmetaError(f"generator: image size must be a positive multiple of 4 (s/4 integer), got {image_size}")
        self.image_size, self.channels, self.nz, self.nf = image_size, channels, nz, nf
        self.init_size = image_size // 4
        self.fc = nn.Linear(nz, 2 * nf * self.init_size ** 2)
        self.bn0 = make_bn(2 * nf, "batch")
        self.conv1 = nn.Conv2d(2 * nf, 2 * nf, 3, 1, 1, bias=False)
        self.bn1 = make_bn(2 * nf, "batch")
        self.conv2 = nn.Conv2d(2 * nf, nf, 3, 1, 1, bias=False)
        self.bn2 = make_bn(nf, "batch")
        self.conv3 = nn.Conv2d(nf, channels, 3, 1, 1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, rng: torch.Generator | None = None, out: dict[str, torch.Tensor] | None = None) -> None:
        """Re-initialise in place (``rng`` makes it reproducible); ``out``: fill these tensors, named and shaped as
        :meth:`named_parameters`, instead of the module's own (the same numbers)."""
        params = out if out is not None else dict(self.named_parameters())
        for name, m in self.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.BatchNorm2d)):
                pre = f"{name}." if name else ""
                params[pre + "weight"].normal_(1.0 if isinstance(m, nn.BatchNorm2d) else 0.0, 0.02, generator=rng)
                if m.bias is not None:
                    params[pre + "bias"].zero_()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], 2 * self.nf, self.init_size, self.init_size)
        x = upsample2(self.bn0(x))
        x = F.leaky_relu(self.bn1(self.conv1(x)), 0.2)
        x = upsample2(x)
        x = F.leaky_relu(self.bn2(self.conv2(x)), 0.2)
        return torch.sigmoid(self.conv3(x))
