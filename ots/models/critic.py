"""ResNet potential f (WGAN-QC discriminator, Liu et al. 2019): image -> scalar, unconstrained."""

from __future__ import annotations

import math

import torch
from torch import nn

from ots.errors import ConfigError
from ots.models.edsr import check_images


class ResNetBlock(nn.Module):
    def __init__(self, fin: int, fout: int, res_ratio: float):
        super().__init__()
        hidden = min(fin, fout)
        self.conv_0 = nn.Conv2d(fin, hidden, 3, padding=1)
        self.conv_1 = nn.Conv2d(hidden, fout, 3, padding=1)
        self.shortcut = nn.Conv2d(fin, fout, 1, bias=False) if fin != fout else nn.Identity()
        self.act = nn.LeakyReLU(0.2)
        self.res_ratio = res_ratio

    def forward(self, x):
        dx = self.conv_1(self.act(self.conv_0(x)))
        return self.act(self.shortcut(x) + self.res_ratio * dx)


class ResNetPotential(nn.Module):
    """WGAN-QC ResNet critic for `crop`-px inputs: log2(crop/4) average-pool stages down to 4x4, linear head.

    Any input size works: a final adaptive pool brings the map to 4x4 (identity for the designed size).
    `flatten` (not `.view`) keeps channels_last inputs legal.
    """

    s0 = 4

    def __init__(self, crop: int = 128, n_filters: int = 64, max_filters: int = 512, res_ratio: float = 0.1,
                 in_channels: int = 3, init: str = "default"):
        super().__init__()
        if crop < 2 * self.s0:
            raise ConfigError(f"potential crop must be >= {2 * self.s0} px, got {crop}")
        self.in_channels = in_channels
        n_layers = int(math.floor(math.log2(crop / self.s0)))
        nf = lambda i: min(n_filters * 2**i, max_filters)  # noqa: E731
        blocks: list[nn.Module] = [ResNetBlock(nf(0), nf(0), res_ratio), ResNetBlock(nf(0), nf(1), res_ratio)]
        for i in range(1, n_layers + 1):
            blocks += [
                nn.AvgPool2d(3, stride=2, padding=1),
                ResNetBlock(nf(i), nf(i), res_ratio),
                ResNetBlock(nf(i), nf(i + 1), res_ratio),
            ]
        self.conv_img = nn.Conv2d(in_channels, n_filters, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        self.resnet = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(self.s0)
        self.fc = nn.Linear(nf(n_layers + 1) * self.s0 * self.s0, 1)
        if init not in ("default", "kaiming"):
            raise ConfigError(f"potential init must be 'default' or 'kaiming', got {init!r}")
        if init == "kaiming":  # the reference code's weights_init_D
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.in_channels, "potential input")
        out = self.resnet(self.act(self.conv_img(x)))
        return self.fc(self.pool(out).flatten(1)).squeeze(1)
