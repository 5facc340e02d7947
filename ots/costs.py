"""Transport costs c(x, T(x)) = sum_i w_i * c_i(R(x), T(x)), per sample, and the reference map R.

R(x) starts as bicubic upsampling; with ``anchor_every = N`` it is re-anchored to a frozen copy of the current
map every N potential steps (a proximal step: the map moves away from its last anchor, not from bicubic).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ots.errors import ConfigError
from ots.models.edsr import bicubic
from ots.models.wrapping import unwrap
from ots.weights import RANDOM, load_state_dict, resolve_weights


def _per_sample_mean(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).mean(1)


class MSECost(nn.Module):
    def forward(self, ref, y):
        return _per_sample_mean((y - ref).square())


class L1Cost(nn.Module):
    def forward(self, ref, y):
        return _per_sample_mean((y - ref).abs())


class GradientCost(nn.Module):
    """Mean squared difference of horizontal and vertical pixel differences: deviations from R(x) cost in
    proportion to their frequency squared, so checkerboard-like changes are expensive and smooth ones cheap."""

    def forward(self, ref, y):
        d = y - ref
        return _per_sample_mean(torch.diff(d, dim=-1).square()) + _per_sample_mean(torch.diff(d, dim=-2).square())


class LowPassCost(nn.Module):
    """MSE of 4x4 box-averaged images: anchors content and colour at the LR scale, leaves finer detail free."""

    def forward(self, ref, y):
        return _per_sample_mean((F.avg_pool2d(y, 4, ceil_mode=True) - F.avg_pool2d(ref, 4, ceil_mode=True)).square())


class VGGCost(nn.Module):
    """Perceptual cost: mean squared distance of VGG16 features at relu1_2, relu2_2, relu3_3, relu4_3."""

    LAYERS = (3, 8, 15, 22)  # indices of those ReLUs in torchvision's vgg16().features
    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, weights: str | None = None):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        path = resolve_weights("vgg16", weights)
        features = make_layers(cfgs["D"])  # vgg16().features without building the 120M-param classifier
        if path != RANDOM:
            state = load_state_dict(path)
            features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
        self.features = features[: self.LAYERS[-1] + 1].eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True):  # the backbone stays frozen in eval mode
        return super().train(False)

    def _features(self, x):
        h = ((x + 1) / 2 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.LAYERS:
                out.append(h)
        return out

    def forward(self, ref, y):
        n = ref.shape[0]
        feats = self._features(torch.cat([ref, y]))  # one pass for both
        return sum(_per_sample_mean((f[n:] - f[:n]).square()) for f in feats) / len(feats)


class LPIPSCost(nn.Module):
    """LPIPS (the `lpips` package) with an AlexNet or VGG backbone resolved locally."""

    def __init__(self, net: str = "alex", weights: str | None = None):
        super().__init__()
        from ots.metrics.perceptual import build_lpips

        self.model = build_lpips(net, weights)

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, ref, y):
        return self.model(ref, y, normalize=False).flatten()


COSTS = {"mse": MSECost, "l1": L1Cost, "grad": GradientCost, "lowpass": LowPassCost, "vgg": VGGCost,
         "lpips": LPIPSCost}


class WeightedCost(nn.Module):
    """sum_i w_i c_i(ref, y), per sample. `spec` is a name or a mapping {name: weight}."""

    def __init__(self, spec: str | Mapping[str, float], weights: Mapping[str, Any] | None = None):
        super().__init__()
        self.weights = parse_cost_spec(spec)
        backbones = dict(weights or {})
        terms = {}
        for name in self.weights:
            if name == "vgg":
                terms[name] = VGGCost(backbones.get("vgg16"))
            elif name == "lpips":
                terms[name] = LPIPSCost(backbones.get("lpips_net", "alex"), backbones.get("alexnet"))
            else:
                terms[name] = COSTS[name]()
        self.terms = nn.ModuleDict(terms)

    def forward(self, ref: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if ref.shape != y.shape:
            raise ConfigError(f"cost: reference {tuple(ref.shape)} and output {tuple(y.shape)} differ in shape")
        return sum(w * self.terms[name](ref, y) for name, w in self.weights.items())


def parse_cost_spec(spec: str | Mapping[str, float]) -> dict[str, float]:
    """Validate at config time: known names, non-negative weights, not empty, not all zero."""
    if isinstance(spec, str):
        spec = {spec: 1.0}
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(f"cost must be a name or a non-empty mapping name -> weight, got {spec!r}")
    out = {}
    for name, w in spec.items():
        key = str(name).lower()
        if key not in COSTS:
            raise ConfigError(f"unknown cost {name!r}; choose from {', '.join(COSTS)}")
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise ConfigError(f"cost weight for {name!r} must be a number, got {w!r}") from None
        if not w >= 0 or w == float("inf"):
            raise ConfigError(f"cost weight for {name!r} must be finite and >= 0, got {w}")
        out[key] = w
    if not any(out.values()):
        raise ConfigError(f"cost weights are all zero: {spec!r}")
    return out


class ReferenceMap(nn.Module):
    """R(x): bicubic x`scale`, or a frozen copy of the map taken every `anchor_every` potential steps."""

    def __init__(self, scale: int, anchor_every: int = 0):
        super().__init__()
        if anchor_every < 0:
            raise ConfigError(f"anchor_every must be >= 0 (0 = never), got {anchor_every}")
        self.scale = scale
        self.anchor_every = anchor_every
        self.anchor: nn.Module | None = None
        self.anchored_at = 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.anchor is None:
            return bicubic(x, self.scale)
        return self.anchor(x)

    def maybe_anchor(self, map_module: nn.Module, potential_step: int) -> bool:
        if self.anchor_every and potential_step % self.anchor_every == 0:
            self.set_anchor(map_module, potential_step)
            return True
        return False

    def set_anchor(self, map_module: nn.Module, step: int) -> None:
        self.anchor = copy.deepcopy(unwrap(map_module)).eval().requires_grad_(False)
        self.anchored_at = step

    def train(self, mode: bool = True):
        return super().train(False)

    def state(self) -> dict:
        return {"anchored_at": self.anchored_at,
                "anchor": None if self.anchor is None else self.anchor.state_dict()}

    def load_state(self, state: dict, map_module: nn.Module) -> None:
        self.anchor = None
        self.anchored_at = int(state.get("anchored_at", 0))
        if state.get("anchor") is not None:
            self.set_anchor(map_module, self.anchored_at)
            self.anchor.load_state_dict(state["anchor"])

