"""Image-quality metrics: PSNR/SSIM (paired fidelity), LPIPS, FID (pretrained backbones) and SWD (weights-free).

Pretrained backbones are resolved locally by :mod:`ots.weights`, never downloaded. A metric whose weights are
absent is *unavailable*: :func:`load_optional` returns ``(None, reason)`` and :func:`evaluate` reports ``None``
plus the reason -- never a number from a random network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ots.errors import WeightsNotFoundError
from ots.metrics.diagnostics import color_distance, grid_rms
from ots.metrics.fid import (
    build_inception,
    fid,
    fid_crops,
    fid_from_features,
    frechet_distance,
    inception_features,
)
from ots.metrics.fidelity import psnr, psnr_batch, quantize_uint8, rgb_to_y, ssim, ssim_batch
from ots.metrics.perceptual import build_lpips, lpips_distance
from ots.metrics.swd import EVAL_PATCHES, laplacian_pyramid, sliced_wasserstein, swd

__all__ = [
    "build_inception",
    "build_lpips",
    "color_distance",
    "evaluate",
    "fid",
    "fid_from_features",
    "frechet_distance",
    "inception_features",
    "laplacian_pyramid",
    "load_optional",
    "lpips_distance",
    "psnr",
    "psnr_batch",
    "quantize_uint8",
    "fid_crops",
    "grid_rms",
    "rgb_to_y",
    "sliced_wasserstein",
    "ssim",
    "ssim_batch",
    "swd",
]


def load_optional(builder: Callable[..., Any], **kwargs) -> tuple[Any | None, str | None]:
    """``(model, None)``, or ``(None, reason)`` when the backbone weights are absent."""
    try:
        return builder(**kwargs), None
    except WeightsNotFoundError as e:
        return None, str(e)


def evaluate(
    sr: Sequence[torch.Tensor],
    hr: Sequence[torch.Tensor],
    *,
    lpips_model: Any | None = None,
    inception_model: Any | None = None,
    unavailable: dict[str, str] | None = None,
    fid_crop: int = 128,
    fid_crops_per_image: int = 1,
    seed: int = 0,
    swd_patches: int = EVAL_PATCHES,
    crop_border: int = 0,
    y_channel: bool = False,
) -> dict[str, Any]:
    """All metrics for paired lists of (3, H, W) images in [0, 1] (SR outputs and their HR references).

    PSNR on [0, 1] RGB, SSIM (BasicSR's: 11x11 Gaussian, sigma 1.5) on uint8-quantised RGB, LPIPS on [-1, 1],
    FID on random ``fid_crop`` crops, SWD of SR vs HR (colour-aware: standardised by HR's statistics), ``color``:
    per-channel mean/std distance to HR. ``crop_border``/``y_channel``: PSNR and SSIM with that many border px
    shaved and on the BT.601 Y channel (BasicSR's options); the defaults: RGB, no shave.
    Pass models from :func:`load_optional` (``None`` = unavailable, its reason in ``unavailable``).
    Returns floats, ``None`` for unavailable metrics, and ``"unavailable": {metric: reason}``.
    """
    sr, hr = list(sr), list(hr)
    out: dict[str, Any] = {"n_images": len(sr), "unavailable": dict(unavailable or {})}
    kw = {"shave": int(crop_border), "y_channel": bool(y_channel)}
    out["psnr"] = float(torch.cat([psnr_batch(s[None], h[None], **kw) for s, h in zip(sr, hr)]).mean())
    out["ssim"] = float(torch.cat([ssim_batch(quantize_uint8(s[None]), quantize_uint8(h[None]), **kw)
                                   for s, h in zip(sr, hr)]).mean())
    if lpips_model is not None:
        vals = [lpips_distance(lpips_model, s[None] * 2 - 1, h[None] * 2 - 1) for s, h in zip(sr, hr)]
        out["lpips"] = float(torch.cat(vals).mean())
    else:
        out["lpips"] = None
        out["unavailable"].setdefault("lpips", "no LPIPS model given")
    if inception_model is not None:
        gen = torch.Generator().manual_seed(seed)
        c_sr = fid_crops(sr, fid_crop, fid_crops_per_image, gen)
        c_hr = fid_crops(hr, fid_crop, fid_crops_per_image, gen)
        out["fid"] = fid(inception_model, c_sr, c_hr)
    else:
        out["fid"] = None
        out["unavailable"].setdefault("fid", "no Inception model given")
    s = swd(sr, hr, seed=seed, patches_per_image=swd_patches)
    out["swd"], out["swd_levels"] = s["mean"], s["levels"]
    out["color"] = color_distance(sr, hr)
    return out
