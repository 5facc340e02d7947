"""ResNet potential f (WGAN-QC discriminator, Liu et al. 2019): image -> scalar, unconstrained."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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


class BlurPool(nn.Module):
    """Anti-aliased stride-2 downsampling: a [1,2,1] x [1,2,1] / 16 blur, then every other pixel (Zhang 2019).

    Why not ``AvgPool2d(3, stride=2, padding=1)``: its box weights odd and even pixels differently, so the
    potential's input gradient carries a period-2 pattern and the map learns to paint that grid. The binomial
    kernel has a zero at the Nyquist frequency: a period-2 pattern in the input does not reach the next stage.
    """

    def __init__(self):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None, :] / 16.0)[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")
        return F.conv2d(x, self.kernel.to(x.dtype).expand(c, 1, 3, 3), stride=2, groups=c)


POOLS = {"blur": BlurPool, "avg": lambda: nn.AvgPool2d(3, stride=2, padding=1)}  # avg: the reference's, for parity
HEADS = ("global", "patch")


class HighPass(nn.Module):
    """Appends a fixed Laplacian of every input channel: fine detail and noise as their own input channels.

    A reparametrisation, not a constraint: the first conv could learn the same filter, but starting from it the
    potential sees pixel-scale differences (noise, JPEG blocks, sharpness) from its first steps."""

    def __init__(self, gain: float = 4.0):
        super().__init__()
        lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]) * gain / 4.0
        self.register_buffer("kernel", lap[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        lap = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.kernel.to(x.dtype).expand(c, 1, 3, 3), groups=c)
        return torch.cat([x, lap], dim=1)


class ResNetPotential(nn.Module):
    """WGAN-QC ResNet critic for `crop`-px inputs: log2(crop/4) stride-2 pool stages down to 4x4, linear head.

    Any input size works: a final adaptive pool brings the map to 4x4 (identity for the designed size).
    `flatten` (not `.view`) keeps channels_last inputs legal. ``pool``: ``blur`` (anti-aliased, the default) or
    ``avg`` (the reference code's AvgPool2d(3, 2, 1), which paints a period-2 grid into T; kept for parity runs).
    Levers that keep f unconstrained (reparametrisations): ``highpass`` adds fixed Laplacian input channels;
    ``depth`` (default log2(crop/4)) stops the pool stages early, and ``head="patch"`` then scores every position
    of the final feature map with a 1x1 conv and averages: f is the mean of many per-patch potentials.
    """

    s0 = 4

    def __init__(self, crop: int = 128, n_filters: int = 64, max_filters: int = 512, res_ratio: float = 0.1,
                 in_channels: int = 3, init: str = "default", pool: str = "blur", highpass: bool = False,
                 head: str = "global", depth: int | None = None):
        super().__init__()
        if crop < 2 * self.s0:
            raise ConfigError(f"potential crop must be >= {2 * self.s0} px, got {crop}")
        if pool not in POOLS:
            raise ConfigError(f"potential pool must be one of {', '.join(POOLS)}, got {pool!r}")
        if head not in HEADS:
            raise ConfigError(f"potential head must be one of {', '.join(HEADS)}, got {head!r}")
        self.in_channels = in_channels
        n_layers = int(math.floor(math.log2(crop / self.s0)))
        if depth is not None:
            if not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth <= n_layers:
                raise ConfigError(f"potential depth must be an integer in [0, {n_layers}], got {depth!r}")
            n_layers = depth
        nf = lambda i: min(n_filters * 2**i, max_filters)  # noqa: E731
        blocks: list[nn.Module] = [ResNetBlock(nf(0), nf(0), res_ratio), ResNetBlock(nf(0), nf(1), res_ratio)]
        for i in range(1, n_layers + 1):
            blocks += [
                POOLS[pool](),
                ResNetBlock(nf(i), nf(i), res_ratio),
                ResNetBlock(nf(i), nf(i + 1), res_ratio),
            ]
        self.highpass = HighPass() if highpass else nn.Identity()
        self.conv_img = nn.Conv2d(in_channels * (2 if highpass else 1), n_filters, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        self.resnet = nn.Sequential(*blocks)
        self.head = head
        if head == "patch":
            self.fc = nn.Conv2d(nf(n_layers + 1), 1, 1)
        else:
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
        out = self.resnet(self.act(self.conv_img(self.highpass(x))))
        if self.head == "patch":
            return self.fc(out).mean(dim=(1, 2, 3))
        return self.fc(self.pool(out).flatten(1)).squeeze(1)
