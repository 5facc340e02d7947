"""EDSR map T: LR image in [-1, 1] -> HR image in [-1, 1] (Lim et al., 2017; no batch norm)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ots.errors import ConfigError


class ResBlock(nn.Module):
    def __init__(self, n_features: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_features, n_features, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(n_features, n_features, 3, padding=1),
        )
        self.res_scale = res_scale

    def forward(self, x):
        return x + self.res_scale * self.body(x)


def icnr_(conv: nn.Conv2d, r: int) -> None:
    """ICNR (Aitken et al., 2017): every sub-pixel of a PixelShuffle(r) starts as a copy of the same kernel, so
    the untrained upsampler is a nearest-neighbour upsample and shows no checkerboard."""
    out, cin, kh, kw = conv.weight.shape
    base = torch.empty(out // (r * r), cin, kh, kw)
    nn.init.kaiming_normal_(base, nonlinearity="relu")
    with torch.no_grad():
        conv.weight.copy_(base.repeat_interleave(r * r, dim=0))
        if conv.bias is not None:
            conv.bias.copy_(conv.bias.view(-1, r * r)[:, :1].expand(-1, r * r).reshape(-1))


def upsampler(scale: int, n_features: int, icnr: bool = False) -> nn.Sequential:
    """Sub-pixel upsampling: log2(scale) x2 stages for powers of two, one x3 stage for 3."""
    layers: list[nn.Module] = []
    if scale & (scale - 1) == 0:
        for _ in range(int(math.log2(scale))):
            layers += [nn.Conv2d(n_features, 4 * n_features, 3, padding=1), nn.PixelShuffle(2)]
    elif scale == 3:
        layers += [nn.Conv2d(n_features, 9 * n_features, 3, padding=1), nn.PixelShuffle(3)]
    else:
        raise ConfigError(f"EDSR scale must be 2, 3 or 4, got {scale}")
    if icnr:
        r = 3 if scale == 3 else 2
        for layer in layers:
            if isinstance(layer, nn.Conv2d):
                icnr_(layer, r)
    return nn.Sequential(*layers)


class EDSR(nn.Module):
    """EDSR x2/x3/x4.

    With ``bicubic_skip`` the network predicts a residual on top of the bicubic upsample of its input, so an
    untrained map starts near the reference map R(x) = bicubic(x): the transport cost starts small and the
    potential's signal, not a colour/offset fit, drives early training.
    """

    def __init__(
        self,
        n_blocks: int = 16,
        n_features: int = 64,
        res_scale: float = 1.0,
        scale: int = 4,
        in_channels: int = 3,
        bicubic_skip: bool = True,
        icnr: bool = False,
    ):
        super().__init__()
        if scale not in (2, 3, 4):
            raise ConfigError(f"EDSR scale must be 2, 3 or 4, got {scale}")
        if n_blocks < 0 or n_features < 1:
            raise ConfigError(f"EDSR needs n_blocks >= 0 and n_features >= 1, got {n_blocks}, {n_features}")
        self.scale = scale
        self.in_channels = in_channels
        self.bicubic_skip = bicubic_skip
        self.head = nn.Conv2d(in_channels, n_features, 3, padding=1)
        self.body = nn.Sequential(
            *[ResBlock(n_features, res_scale) for _ in range(n_blocks)],
            nn.Conv2d(n_features, n_features, 3, padding=1),
        )
        self.upsample = upsampler(scale, n_features, icnr)
        self.tail = nn.Conv2d(n_features, in_channels, 3, padding=1)
        if bicubic_skip:  # start exactly at bicubic: the residual branch outputs 0 at init
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.in_channels, "EDSR input")
        h = self.head(x)
        h = h + self.body(h)
        out = self.tail(self.upsample(h))
        if self.bicubic_skip:
            out = out + bicubic(x, self.scale)
        return out


def bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upsampling (the reference map R before any re-anchoring)."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


def check_images(x: torch.Tensor, channels: int, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ConfigError(f"{what}: expected a (B, C, H, W) tensor, got shape {tuple(getattr(x, 'shape', ()))}")
    if x.shape[0] == 0:
        raise ConfigError(f"{what}: empty batch")
    if x.shape[1] != channels:
        raise ConfigError(f"{what}: expected {channels} channels, got {x.shape[1]}")
