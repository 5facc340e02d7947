"""Architectures: EDSR map, ResNet potential, MLPs for vectors. Built from plain config dicts."""

from __future__ import annotations

from typing import Any

from torch import nn

from ots.errors import ConfigError
from ots.models.critic import ResNetPotential
from ots.models.edsr import EDSR
from ots.models.mlp import MLPMap, MLPPotential

MAPS = {"edsr": EDSR, "mlp": MLPMap}
POTENTIALS = {"resnet": ResNetPotential, "mlp": MLPPotential}

# The paper's reference sizes (EDSR 64x128, critic for 128-px crops).
REFERENCE_MAP = {"arch": "edsr", "n_blocks": 64, "n_features": 128, "res_scale": 1.0, "scale": 4}
REFERENCE_POTENTIAL = {"arch": "resnet", "crop": 128, "n_filters": 64, "max_filters": 512}


def _build(kind: str, registry: dict, config: dict[str, Any]) -> nn.Module:
    if not isinstance(config, dict) or "arch" not in config:
        raise ConfigError(f"{kind} config must be a mapping with an 'arch' key, got {config!r}")
    cfg = dict(config)
    arch = cfg.pop("arch")
    if arch not in registry:
        raise ConfigError(f"unknown {kind} architecture {arch!r}; choose one of {', '.join(registry)}")
    try:
        return registry[arch](**cfg)
    except TypeError as e:
        raise ConfigError(f"bad {kind} config for {arch!r}: {e}") from e


def build_map(config: dict[str, Any]) -> nn.Module:
    return _build("map", MAPS, config)


def build_potential(config: dict[str, Any]) -> nn.Module:
    return _build("potential", POTENTIALS, config)


def check_sizes(scale: int, potential_config: dict, lr_crop: int, hr_crop: int) -> None:
    """The map's scale must turn LR crops into HR crops the potential was built for."""
    if lr_crop <= 0 or hr_crop <= 0:
        raise ConfigError(f"crop sizes must be positive, got lr_crop={lr_crop}, hr_crop={hr_crop}")
    if hr_crop % scale:
        raise ConfigError(f"HR crop {hr_crop} is not divisible by the scale x{scale}")
    if lr_crop * scale != hr_crop:
        raise ConfigError(f"scale x{scale} does not match the crops: LR {lr_crop} x {scale} != HR {hr_crop}")
    crop = potential_config.get("crop")
    if crop is not None and crop != hr_crop:
        raise ConfigError(f"potential built for {crop}-px crops but the HR crop is {hr_crop}")


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
