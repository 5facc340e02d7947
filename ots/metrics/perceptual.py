"""LPIPS (Zhang et al., 2018) through the `lpips` package, with backbone weights resolved locally.

``lpips.LPIPS(pnet_rand=True)`` builds the backbone without asking torchvision to download anything; the
linear calibration layers ship inside the lpips package. The torchvision backbone weights (AlexNet by default,
VGG16 optional) are resolved with :func:`ots.weights.resolve_weights` and copied into the lpips slices; with
``weights="random"`` the backbone stays random (tests only -- never report such a number).
"""

from __future__ import annotations

import torch

from ots.errors import ConfigError, WeightsNotFoundError
from ots.weights import RANDOM, load_state_dict, resolve_weights

_BACKBONES = {"alex": "alexnet", "vgg": "vgg16"}


def build_lpips(net: str = "alex", weights: str | None = None, device: str | torch.device = "cpu"):
    """An eval-mode ``lpips.LPIPS`` model. Raises WeightsNotFoundError when the backbone weights are absent."""
    if net not in _BACKBONES:
        raise ConfigError(f"unknown LPIPS backbone {net!r}; choose one of {', '.join(_BACKBONES)}")
    path = resolve_weights(_BACKBONES[net], weights)  # resolve first: fail before any construction work
    import warnings

    import lpips

    with warnings.catch_warnings():  # torchvision's deprecation notes about lpips' `pretrained=False` call
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if path != RANDOM:
        _copy_backbone(model.net, load_state_dict(path), path)
    return model.eval().requires_grad_(False).to(device)


def _copy_backbone(net: torch.nn.Module, state: dict, path: str) -> None:
    """lpips slices are Sequentials whose child names are the torchvision ``features`` indices."""
    copied = 0
    for slice_name, sl in net.named_children():
        if not slice_name.startswith("slice"):
            continue
        for idx, layer in sl.named_children():
            for pname, p in layer.named_parameters(recurse=False):
                key = f"features.{idx}.{pname}"
                if key not in state or state[key].shape != p.shape:
                    raise WeightsNotFoundError(f"{path} is not a matching torchvision backbone (no {key})")
                with torch.no_grad():
                    p.copy_(state[key])
                copied += 1
    if copied == 0:
        raise WeightsNotFoundError(f"no LPIPS backbone parameters found to load from {path}")


@torch.no_grad()
def lpips_distance(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Per-image LPIPS (B,) for (B, 3, H, W) images in [-1, 1] (the protocol), computed on the model's device."""
    if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
        raise ConfigError(f"LPIPS needs two (B, 3, H, W) batches of equal shape, got {tuple(x.shape)}, "
                          f"{tuple(y.shape)}")
    device = next(model.parameters()).device
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].to(device, torch.float32)
        yb = y[i : i + batch_size].to(device, torch.float32)
        out.append(model(xb, yb).flatten().cpu())
    return torch.cat(out)
