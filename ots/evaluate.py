"""Evaluation on the validation pairs: bicubic vs trained maps (OTS, optionally the GAN baseline).

Every method upscales the *full* LR validation images (maps through the tiled inference of :mod:`ots.infer`,
outputs quantised to uint8 as they would be saved) and is scored against the HR images with
:func:`ots.metrics.evaluate`: PSNR, SSIM, LPIPS, FID, SWD. LPIPS and FID need pretrained backbones resolved by
:mod:`ots.weights`; when they are absent the metric is ``None`` and the reason is in ``"unavailable"`` -- never
a number from a random network.

Entry points: :func:`upscale_pairs` + :func:`score_outputs` (or both at once: :func:`evaluate_pairs`). The
report files (:func:`write_report`, :func:`markdown_table`, :func:`save_grid`) are
:mod:`ots.eval_report`; the CLI ``ots evaluate`` is :mod:`ots.commands.evaluate`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ots.device import resolve_device
from ots.errors import ConfigError
from ots.infer import upscale_array
from ots.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, model_scale

Pair = tuple[str, np.ndarray, np.ndarray]  # (name, LR uint8 HWC, HR uint8 HWC)

METRICS = ("psnr", "ssim", "lpips", "fid", "swd", "color")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "fid": False, "swd": False, "color": False}
LABELS = {"psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑", "lpips": "LPIPS ↓", "fid": "FID ↓", "swd": "SWD x1e3 ↓",
          "color": "colour dist ↓"}


# ------------------------------------------------------------------------------------------------ upscaling


def as_rgb8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise ConfigError(f"evaluation images must be uint8, got {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ConfigError(f"evaluation images must be (H, W[, 1|3|4]), got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """The bicubic baseline (the map's reference R), uint8 HWC -> uint8 HWC."""
    from ots.models.edsr import bicubic

    x = torch.from_numpy(as_rgb8(lr).astype(np.float32)).permute(2, 0, 1)[None] / 255.0
    y = bicubic(x, scale).clamp(0, 1)
    return (y[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def check_pairs(pairs: Sequence[Pair]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if not pairs:
        raise ConfigError("no validation pairs to evaluate")
    out = []
    for name, lr, hr in pairs:
        lr, hr = as_rgb8(lr), as_rgb8(hr)
        if hr.shape[0] % lr.shape[0] or hr.shape[1] % lr.shape[1] or \
                hr.shape[0] // lr.shape[0] != hr.shape[1] // lr.shape[1]:
            raise ConfigError(f"val pair {name}: HR {hr.shape[:2]} is not an integer multiple of LR {lr.shape[:2]}")
        out.append((str(name), lr, hr))
    return out


def upscale_pairs(pairs: Sequence[Pair], maps: Mapping[str, nn.Module | None], *,
                  device: str | torch.device | None = None, progress: bool = True, **tiling
                  ) -> dict[str, list[np.ndarray]]:
    """``{"bicubic": [...], <map name>: [...]}``: uint8 HWC outputs for every pair, in order.

    Maps given as ``None`` are skipped. Each map's scale must be the pairs' HR/LR ratio. ``progress``: a tqdm bar
    (stderr) over the images of every map -- full 2K images take seconds each on a CPU. ``tiling``: the options
    of :func:`ots.tiling.upscale_tensor` (tile, overlap, precision, batch_tiles).
    """
    from tqdm import tqdm

    pairs = check_pairs(pairs)
    scale = pairs[0][2].shape[0] // pairs[0][1].shape[0]
    if "bicubic" in maps:
        raise ConfigError("'bicubic' is the baseline's name; give the maps other names")
    outputs: dict[str, list[np.ndarray]] = {"bicubic": [bicubic_upscale(lr, scale) for _, lr, _ in pairs]}
    dev = resolve_device(device)
    todo = {name: model for name, model in maps.items() if model is not None}
    for name, model in todo.items():
        s = model_scale(model)
        if s != scale:
            raise ConfigError(f"map {name!r} upscales x{s} but the validation pairs are x{scale}")
    with tqdm(total=len(todo) * len(pairs), desc="evaluate: upscale", unit="img", disable=not progress or not todo,
              leave=True) as bar:
        for name, model in todo.items():
            outputs[name] = []
            for _, lr, _ in pairs:
                outputs[name].append(upscale_array(model, lr, device=dev, **tiling))
                bar.update(1)
    return outputs


# ----------------------------------------------------------------------------------------------------- scoring


def _unit(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255.0


def _finite(v: Any) -> Any:
    """JSON-safe: NaN/inf become None (a metric that could not be computed is not a number)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def score_outputs(
    pairs: Sequence[Pair],
    outputs: Mapping[str, Sequence[np.ndarray]],
    *,
    lpips_weights: str | None = None,
    inception_weights: str | None = None,
    lpips_net: str = "alex",
    device: str | torch.device | None = "cpu",
    fid_crop: int = 128,
    seed: int = 0,
    crop_border: int = 0,
    y_channel: bool = False,
) -> dict[str, Any]:
    """Metrics of every method's outputs against the HR images (PSNR/SSIM on RGB, no shave, unless
    ``y_channel``/``crop_border``: BT.601 Y, that many border px shaved -- recorded as ``"fidelity"``).

    ``{"n_images", "scale", "fid_crop", "methods": {method: {psnr, ssim, lpips, fid, swd, swd_levels}},
    "unavailable": {metric: reason}, "per_image": [{"image", "<method>_psnr", "<method>_ssim"}...]}``.
    """
    from ots.metrics import (
        build_inception,
        build_lpips,
        evaluate,
        load_optional,
        psnr_batch,
        quantize_uint8,
        ssim_batch,
    )

    pairs = check_pairs(pairs)
    dev = resolve_device(device)
    lpips_model, lpips_reason = load_optional(build_lpips, net=lpips_net, weights=lpips_weights, device=dev)
    inception, fid_reason = load_optional(build_inception, weights=inception_weights, device=dev)
    unavailable = {k: v for k, v in (("lpips", lpips_reason), ("fid", fid_reason)) if v}
    hr = [_unit(h) for _, _, h in pairs]
    crop = min([fid_crop] + [min(h.shape[-2:]) for h in hr])
    result: dict[str, Any] = {"n_images": len(pairs), "scale": pairs[0][2].shape[0] // pairs[0][1].shape[0],
                              "fid_crop": crop, "methods": {}, "unavailable": dict(unavailable),
                              "fidelity": {"crop_border": int(crop_border), "y_channel": bool(y_channel)}}
    if crop_border < 0:
        raise ConfigError(f"crop_border must be >= 0, got {crop_border}")
    fk = {"shave": int(crop_border), "y_channel": bool(y_channel)}
    per_image = [{"image": name} for name, _, _ in pairs]
    for method, outs in outputs.items():
        if len(outs) != len(pairs):
            raise ConfigError(f"{method}: {len(outs)} outputs for {len(pairs)} validation pairs")
        sr = [_unit(as_rgb8(o)) for o in outs]
        for s, h, (name, _, _) in zip(sr, hr, pairs):
            if s.shape != h.shape:
                raise ConfigError(f"{method} output for {name} is {tuple(s.shape[1:])}, HR is {tuple(h.shape[1:])}")
        m = evaluate(sr, hr, lpips_model=lpips_model, inception_model=inception, unavailable=unavailable,
                     fid_crop=crop, seed=seed, crop_border=crop_border, y_channel=y_channel)
        result["unavailable"].update(m.get("unavailable", {}))
        result["methods"][method] = {k: _finite(m.get(k)) for k in METRICS} | {"swd_levels": m.get("swd_levels")}
        for row, s, h in zip(per_image, sr, hr):
            row[f"{method}_psnr"] = _finite(float(psnr_batch(s[None], h[None], **fk)[0]))
            row[f"{method}_ssim"] = _finite(float(ssim_batch(quantize_uint8(s[None]), quantize_uint8(h[None]),
                                                             **fk)[0]))
    for metric in result["unavailable"]:  # never a number for an unavailable metric
        for vals in result["methods"].values():
            vals[metric] = None
    result["per_image"] = per_image
    return result


def evaluate_pairs(pairs: Sequence[Pair], maps: Mapping[str, nn.Module | None], *, tile: int | None = DEFAULT_TILE,
                   overlap: int = DEFAULT_OVERLAP, device: str | torch.device | None = None, precision: str = "auto",
                   **scoring) -> dict[str, Any]:
    """Upscale the pairs with bicubic and every map, then score them (``scoring``: the options of
    :func:`score_outputs`)."""
    outputs = upscale_pairs(pairs, maps, tile=tile, overlap=overlap, device=device, precision=precision)
    result = score_outputs(pairs, outputs, device=device, **scoring)
    result["tiling"] = {"tile": tile, "overlap": overlap}
    return result


__all__ = [
    "HIGHER_IS_BETTER",
    "LABELS",
    "METRICS",
    "Pair",
    "as_rgb8",
    "bicubic_upscale",
    "check_pairs",
    "evaluate_pairs",
    "score_outputs",
    "upscale_pairs",
]
