"""Small MLP map and potential for vectors (the Gaussian benchmark)."""

from __future__ import annotations

from torch import nn


def mlp(dim_in: int, dim_out: int, hidden: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = dim_in
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    layers.append(nn.Linear(d, dim_out))
    return nn.Sequential(*layers)


class MLPMap(nn.Module):
    """T(x) = x + g(x): residual, so the untrained map starts at the identity."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3):
        super().__init__()
        self.net = mlp(dim, dim, hidden, depth)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x):
        return x + self.net(x)


class MLPPotential(nn.Module):
    def __init__(self, dim: int, hidden: int = 128, depth: int = 3):
        super().__init__()
        self.net = mlp(dim, 1, hidden, depth)

    def forward(self, x):
        return self.net(x).squeeze(-1)
