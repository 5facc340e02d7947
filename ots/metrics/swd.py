"""Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al., Progressive GANs, 2018).

Weights-free, so always computed. Per image: a Laplacian pyramid (5x5 binomial filter, reflect borders) down to a
16-px level; from every level ``patches_per_image`` random 7x7 patches (3 x 7 x 7 descriptors). Per level every
descriptor channel is standardised before the projections. ``normalize="reference"`` (the default) uses the
*second* (reference, HR) set's mean/std for both sets, so colour casts and contrast changes count; the paper's
``"separate"`` standardises each set by its own statistics, which compares textures but is blind to colour and
contrast (a perfect colour-cast inverse scores the same as the cast itself) -- never select or gate a
restoration by it. SWD = mean over ``n_directions`` random unit directions of the 1-D Wasserstein-1 distance
between the projected descriptor sets; reported x1e3 per level (finest first) and averaged. Seeded: same inputs,
same numbers. Lower = the first set looks more like the second.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ots.errors import ConfigError

# 7x7 patches per image and level when scoring a validation set: with a few images, the paper's 128 leaves
# SWD differences of a few percent inside its noise; 1024 makes them measurable.
EVAL_PATCHES = 1024

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: torch.Tensor) -> torch.Tensor:
    """5x5 binomial blur with reflect borders, every channel separately."""
    shape = x.shape
    k = (_BINOMIAL[:, None] * _BINOMIAL[None, :]).to(x).view(1, 1, 5, 5)
    x = F.pad(x.reshape(-1, 1, *shape[-2:]), (2, 2, 2, 2), mode="reflect")
    return F.conv2d(x, k).view(shape)


def _pyr_down(x: torch.Tensor) -> torch.Tensor:
    return _blur(x)[..., ::2, ::2]


def _pyr_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    up = torch.zeros(*x.shape[:2], *size, dtype=x.dtype, device=x.device)
    up[..., ::2, ::2] = x
    return 4.0 * _blur(up)


def laplacian_pyramid(x: torch.Tensor, n_levels: int) -> list[torch.Tensor]:
    """(B, C, H, W) -> ``n_levels`` band-pass images, finest first; the last is the low-pass residual."""
    levels = [x]
    for _ in range(n_levels - 1):
        down = _pyr_down(levels[-1])
        levels[-1] = levels[-1] - _pyr_up(down, levels[-1].shape[-2:])
        levels.append(down)
    return levels


def pyramid_levels(height: int, width: int, min_size: int = 16) -> int:
    m = min(height, width)
    if m < min_size:
        raise ConfigError(f"SWD needs images of at least {min_size}x{min_size}, got {height}x{width}")
    return int(math.floor(math.log2(m / min_size))) + 1


def _patches(level: torch.Tensor, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """(B, C, H, W) -> (B * n, C * size * size): ``n`` random patches per image, image-major."""
    b, c, h, w = level.shape
    ys = torch.randint(0, h - size + 1, (b, n, 1, 1), generator=gen)
    xs = torch.randint(0, w - size + 1, (b, n, 1, 1), generator=gen)
    d = torch.arange(size)
    idx = (ys + d[:, None]) * w + (xs + d[None, :])  # (b, n, size, size) flat positions
    p = level.flatten(2).gather(2, idx.view(b, 1, -1).expand(b, c, -1).to(level.device))
    return p.view(b, c, n, size, size).permute(0, 2, 1, 3, 4).reshape(b * n, -1)


def _as_list(images) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ConfigError(f"SWD expects (N, C, H, W) images or a list of (C, H, W), got {tuple(images.shape)}")
        return list(images)
    out = list(images)
    if not out:
        raise ConfigError("SWD got an empty image set")
    return out


def _descriptors(images: list[torch.Tensor], n_levels: int, per_image: int, size: int, gen) -> list[torch.Tensor]:
    """Per level, (N * per_image, C * size * size) descriptors; same-size images are processed together."""
    per_level: list[list[torch.Tensor]] = [[] for _ in range(n_levels)]
    groups: dict[tuple, list[torch.Tensor]] = {}
    for img in images:
        groups.setdefault(tuple(img.shape), []).append(img)
    for group in groups.values():
        pyr = laplacian_pyramid(torch.stack(group).detach().float(), n_levels)
        for lvl, level in enumerate(pyr):
            per_level[lvl].append(_patches(level, per_image, size, gen).cpu())
    return [torch.cat(d) for d in per_level]


def _standardize(d: torch.Tensor, ref: torch.Tensor, channels: int) -> torch.Tensor:
    r = ref.view(ref.shape[0], channels, -1)
    mean = r.mean(dim=(0, 2), keepdim=True)
    std = r.std(dim=(0, 2), keepdim=True).clamp_min(1e-12)
    return ((d.view(d.shape[0], channels, -1) - mean) / std).view(d.shape[0], -1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_directions: int = 512, gen=None) -> float:
    """Mean over random unit directions of the 1-D W1 distance between projections of (N, D) and (M, D)."""
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"descriptor sizes differ: {a.shape[1]} vs {b.shape[1]}")
    if a.shape[0] != b.shape[0]:  # equal counts so sorted projections pair up: subsample the larger set
        n = min(a.shape[0], b.shape[0])
        a = a[torch.randperm(a.shape[0], generator=gen)[:n]]
        b = b[torch.randperm(b.shape[0], generator=gen)[:n]]
    dirs = torch.randn(a.shape[1], n_directions, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa = torch.sort((dirs.T @ a.double().T).float(), dim=1).values  # (directions, N): contiguous sorts
    pb = torch.sort((dirs.T @ b.double().T).float(), dim=1).values
    return float((pa - pb).abs().double().mean())


def swd(
    images1,
    images2,
    *,
    patches_per_image: int = 128,
    patch_size: int = 7,
    n_directions: int = 512,
    min_size: int = 16,
    normalize: str = "reference",
    seed: int = 0,
) -> dict:
    """SWD x1e3 between two image sets ((N, C, H, W) tensors or lists of (C, H, W), any value range).

    Returns ``{"levels": [per-level SWD x1e3, finest first], "mean": average, "resolutions": [...]}``.
    """
    if normalize not in ("separate", "reference"):
        raise ConfigError(f"normalize must be 'separate' or 'reference', got {normalize!r}")
    a, b = _as_list(images1), _as_list(images2)
    channels = a[0].shape[0]
    if any(x.dim() != 3 or x.shape[0] != channels for x in a + b):
        raise ConfigError(f"SWD needs (C, H, W) images with the same number of channels ({channels})")
    min_h = min(x.shape[-2] for x in a + b)
    min_w = min(x.shape[-1] for x in a + b)
    n_levels = pyramid_levels(min_h, min_w, min_size)
    gen = torch.Generator().manual_seed(seed)
    da = _descriptors(a, n_levels, patches_per_image, patch_size, gen)
    db = _descriptors(b, n_levels, patches_per_image, patch_size, gen)
    levels = []
    for xa, xb in zip(da, db):
        if normalize == "separate":
            xa, xb = _standardize(xa, xa, channels), _standardize(xb, xb, channels)
        else:
            xa, xb = _standardize(xa, xb, channels), _standardize(xb, xb, channels)
        levels.append(1e3 * sliced_wasserstein(xa, xb, n_directions, gen))
    resolutions = [min_h >> i for i in range(n_levels)]
    return {"levels": levels, "mean": sum(levels) / len(levels), "resolutions": resolutions}
