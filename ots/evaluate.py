"""Evaluation on the validation pairs: bicubic vs trained maps (OTS, optionally the GAN baseline).

Every method upscales the *full* LR validation images (maps through the tiled inference of :mod:`ots.infer`,
outputs quantised to uint8 as they would be saved) and is scored against the HR images with
:func:`ots.metrics.evaluate`: PSNR, SSIM, LPIPS, FID, SWD. LPIPS and FID need pretrained backbones resolved by
:mod:`ots.weights`; when they are absent the metric is ``None`` and the reason is in ``"unavailable"`` -- never
a number from a random network.

Entry points: :func:`upscale_pairs` + :func:`score_outputs` (or both at once: :func:`evaluate_pairs`),
:func:`markdown_table`, :func:`save_grid`, :func:`write_report` and the CLI ``ots evaluate``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ots.errors import ConfigError
from ots.infer import DEFAULT_OVERLAP, DEFAULT_TILE, encode_png, model_scale, resolve_device, upscale_array

Pair = tuple[str, np.ndarray, np.ndarray]  # (name, LR uint8 HWC, HR uint8 HWC)

METRICS = ("psnr", "ssim", "lpips", "fid", "swd")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "fid": False, "swd": False}
LABELS = {"psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑", "lpips": "LPIPS ↓", "fid": "FID ↓", "swd": "SWD x1e3 ↓"}


# ------------------------------------------------------------------------------------------------ upscaling


def _rgb(a: np.ndarray) -> np.ndarray:
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

    x = torch.from_numpy(_rgb(lr).astype(np.float32)).permute(2, 0, 1)[None] / 255.0
    y = bicubic(x, scale).clamp(0, 1)
    return (y[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def _check_pairs(pairs: Sequence[Pair]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if not pairs:
        raise ConfigError("no validation pairs to evaluate")
    out = []
    for name, lr, hr in pairs:
        lr, hr = _rgb(lr), _rgb(hr)
        if hr.shape[0] % lr.shape[0] or hr.shape[1] % lr.shape[1] or \
                hr.shape[0] // lr.shape[0] != hr.shape[1] // lr.shape[1]:
            raise ConfigError(f"val pair {name}: HR {hr.shape[:2]} is not an integer multiple of LR {lr.shape[:2]}")
        out.append((str(name), lr, hr))
    return out


def upscale_pairs(
    pairs: Sequence[Pair],
    maps: Mapping[str, nn.Module | None],
    *,
    tile: int | None = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    device: str | torch.device | None = None,
    precision: str = "auto",
    batch_tiles: int = 4,
) -> dict[str, list[np.ndarray]]:
    """``{"bicubic": [...], <map name>: [...]}``: uint8 HWC outputs for every pair, in order.

    Maps given as ``None`` are skipped. Each map's scale must be the pairs' HR/LR ratio.
    """
    pairs = _check_pairs(pairs)
    scale = pairs[0][2].shape[0] // pairs[0][1].shape[0]
    if "bicubic" in maps:
        raise ConfigError("'bicubic' is the baseline's name; give the maps other names")
    outputs: dict[str, list[np.ndarray]] = {"bicubic": [bicubic_upscale(lr, scale) for _, lr, _ in pairs]}
    dev = resolve_device(device)
    for name, model in maps.items():
        if model is None:
            continue
        s = model_scale(model)
        if s != scale:
            raise ConfigError(f"map {name!r} upscales x{s} but the validation pairs are x{scale}")
        outputs[name] = [upscale_array(model, lr, tile=tile, overlap=overlap, device=dev, precision=precision,
                                       batch_tiles=batch_tiles) for _, lr, _ in pairs]
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

    pairs = _check_pairs(pairs)
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
        sr = [_unit(_rgb(o)) for o in outs]
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


def evaluate_pairs(
    pairs: Sequence[Pair],
    maps: Mapping[str, nn.Module | None],
    *,
    tile: int | None = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    lpips_weights: str | None = None,
    inception_weights: str | None = None,
    lpips_net: str = "alex",
    device: str | torch.device | None = None,
    precision: str = "auto",
    fid_crop: int = 128,
    seed: int = 0,
) -> dict[str, Any]:
    """Upscale the pairs with bicubic and every map, then score them (see :func:`score_outputs`)."""
    outputs = upscale_pairs(pairs, maps, tile=tile, overlap=overlap, device=device, precision=precision)
    result = score_outputs(pairs, outputs, lpips_weights=lpips_weights, inception_weights=inception_weights,
                           lpips_net=lpips_net, device=device, fid_crop=fid_crop, seed=seed)
    result["tiling"] = {"tile": tile, "overlap": overlap}
    return result


# ---------------------------------------------------------------------------------------------------- reports


def _fmt(v: Any, metric: str) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4f}" if metric in ("ssim", "lpips") else f"{v:.2f}"


def markdown_table(results: Mapping[str, Any]) -> str:
    """The methods x metrics table (best value per column in bold), plus the reasons for unavailable metrics."""
    methods = results["methods"]
    lines = ["| method | " + " | ".join(LABELS[m] for m in METRICS) + " |",
             "|---|" + "---:|" * len(METRICS)]
    best = {}
    for m in METRICS:
        vals = [v[m] for v in methods.values() if v.get(m) is not None]
        if len(vals) > 1:
            best[m] = max(vals) if HIGHER_IS_BETTER[m] else min(vals)
    for name, vals in methods.items():
        cells = []
        for m in METRICS:
            cell = _fmt(vals.get(m), m)
            cells.append(f"**{cell}**" if m in best and vals.get(m) == best[m] else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"{results.get('n_images', '?')} validation images, x{results.get('scale', '?')}, full images"
                 + (f" (tiles of {results['tiling']['tile']} LR px, overlap {results['tiling']['overlap']})"
                    if results.get("tiling", {}).get("tile") else "") + ".")
    fid = results.get("fidelity") or {}
    if fid.get("y_channel") or fid.get("crop_border"):
        lines.append(f"PSNR/SSIM on {'the Y channel' if fid.get('y_channel') else 'RGB'}, "
                     f"{fid.get('crop_border', 0)} border px shaved.")
    for metric, reason in sorted(results.get("unavailable", {}).items()):
        lines.append(f"- {metric} unavailable: {reason}")
    return "\n".join(lines) + "\n"


def _nearest(a: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)


def _center_crop(a: np.ndarray, size: int | None) -> np.ndarray:
    if not size:
        return a
    h, w = a.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return a[top : top + size, left : left + size]


def grid_image(pairs: Sequence[Pair], outputs: Mapping[str, Sequence[np.ndarray]], *, max_images: int = 4,
               crop: int | None = 256, gap: int = 4) -> np.ndarray:
    """uint8 RGB grid: one row per image, columns LR (nearest) | bicubic | <maps...> | HR, labelled on top.

    Each panel is the same centre crop (``crop`` HR px) of the full image, so details stay visible.
    """
    from PIL import Image, ImageDraw

    pairs = _check_pairs(pairs)[:max_images]
    methods = ["bicubic"] + [m for m in outputs if m != "bicubic"]
    columns = ["LR"] + methods + ["HR"]
    rows = []
    for i, (_, lr, hr) in enumerate(pairs):
        scale = hr.shape[0] // lr.shape[0]
        panels = [_nearest(lr, scale)] + [_rgb(outputs[m][i]) for m in methods] + [hr]
        rows.append([_center_crop(p, crop) for p in panels])
    cell_w = max(p.shape[1] for r in rows for p in r)
    cell_h = [max(p.shape[0] for p in r) for r in rows]
    header = 16
    width = len(columns) * cell_w + (len(columns) + 1) * gap
    height = header + sum(cell_h) + (len(rows) + 1) * gap
    canvas = np.full((height, width, 3), 255, np.uint8)
    y = header + gap
    for r, h in zip(rows, cell_h):
        for j, p in enumerate(r):
            x = gap + j * (cell_w + gap)
            canvas[y : y + p.shape[0], x : x + p.shape[1]] = p
        y += h + gap
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    for j, name in enumerate(columns):
        draw.text((gap + j * (cell_w + gap) + 2, 2), name, fill=(0, 0, 0))
    return np.asarray(img)


def _atomic_write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def save_grid(path: str | Path, pairs: Sequence[Pair], outputs: Mapping[str, Sequence[np.ndarray]], *,
              max_images: int = 4, crop: int | None = 256) -> Path:
    """Write :func:`grid_image` as a PNG (temp name + rename)."""
    return _atomic_write(Path(path), encode_png(grid_image(pairs, outputs, max_images=max_images, crop=crop)))


def _numbers(d: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            sub = _numbers(v)
            if sub:
                out[k] = sub
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = v
    return out


def metrics_json(results: Mapping[str, Any]) -> dict[str, Any]:
    """Numbers only -- what ``dvc metrics show/diff`` compares: ``n_images``, ``scale``, ``fid_crop`` and
    ``methods.<method>.<metric>``. Unavailable metrics are left out (their reasons are in ``report.json``)."""
    return _numbers({k: v for k, v in results.items() if k in ("n_images", "scale", "fid_crop", "methods")})


def report_json(results: Mapping[str, Any]) -> dict[str, Any]:
    """The whole summary beside the metrics (``report.json``): the numbers, ``null`` for unavailable metrics,
    their reasons (``unavailable``), per-level SWD, tiling and the checkpoints scored."""
    return {k: v for k, v in results.items() if k != "per_image"}


def per_image_csv(results: Mapping[str, Any]) -> str:
    rows = results.get("per_image", [])
    if not rows:
        return ""
    cols = list(rows[0])
    lines = [",".join(cols)]
    for r in rows:
        lines.append(",".join("" if r.get(c) is None else (f"{r[c]:.6f}" if isinstance(r[c], float) else str(r[c]))
                              for c in cols))
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, pairs: Sequence[Pair], outputs: Mapping[str, Sequence[np.ndarray]],
                 results: Mapping[str, Any], *, grid_images: int = 4, grid_crop: int | None = 256) -> dict[str, Path]:
    """``metrics.json`` (numbers only: DVC metrics), ``report.json`` (the rest of the summary), ``metrics.md``,
    ``per_image.csv`` (DVC plots) and ``grid.png`` in ``out_dir``."""
    out = Path(out_dir)
    files = {
        "metrics": _atomic_write(out / "metrics.json",
                                 (json.dumps(metrics_json(results), indent=2, sort_keys=True) + "\n").encode()),
        "report": _atomic_write(out / "report.json",
                                (json.dumps(report_json(results), indent=2, sort_keys=True) + "\n").encode()),
        "table": _atomic_write(out / "metrics.md", markdown_table(results).encode()),
        "per_image": _atomic_write(out / "per_image.csv", per_image_csv(results).encode()),
        "grid": save_grid(out / "grid.png", pairs, outputs, max_images=grid_images, crop=grid_crop),
    }
    return files


# -------------------------------------------------------------------------------------------------------- CLI


def load_model(source: str, device: str | torch.device = "cpu") -> nn.Module:
    """A map from a checkpoint file or storage URI (registry models: ``python -m pipelines.models fetch``)."""
    from ots.checkpoint import load_map

    return load_map(source, device=str(device))


def add_commands(sub) -> None:
    p = sub.add_parser("evaluate", help="PSNR/SSIM/LPIPS/FID/SWD of bicubic vs trained maps on the val pairs")
    p.add_argument("--data", required=True, help="prepared dataset (folder, file:// or s3:// URI)")
    p.add_argument("--checkpoint", required=True,
                   help="the OTS map: checkpoint file or storage URI (file://, s3://)")
    p.add_argument("--gan", default=None, help="the GAN baseline's map (same forms as --checkpoint)")
    p.add_argument("--out", default="outputs/evaluate", help="output folder (metrics.json, metrics.md, grid.png)")
    p.add_argument("--lpips-weights", default=None, help="LPIPS backbone weights (path/URI; default: resolved)")
    p.add_argument("--lpips-net", default="alex", choices=["alex", "vgg"])
    p.add_argument("--inception-weights", default=None, help="FID Inception weights (path/URI; default: resolved)")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE, help="tile size in LR px, 0 = whole image")
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--max-images", type=int, default=0, help="evaluate the first N val pairs only (0 = all)")
    p.add_argument("--grid-images", type=int, default=4)
    p.add_argument("--grid-crop", type=int, default=256, help="centre crop of each grid panel, HR px (0 = full)")
    p.add_argument("--crop-border", type=int, default=0,
                   help="PSNR/SSIM: shave this many HR px from every border (BasicSR's crop_border; default 0)")
    p.add_argument("--test-y-channel", "--y-channel", dest="y_channel", action="store_true",
                   help="PSNR/SSIM on the BT.601 Y channel (BasicSR's test_y_channel) instead of RGB")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    from ots.data import read_val_pairs

    if args.grid_images < 1 or args.crop_border < 0:
        raise ConfigError(f"--grid-images must be >= 1 and --crop-border >= 0, got {args.grid_images}, "
                          f"{args.crop_border}")
    pairs = read_val_pairs(args.data)
    if args.max_images:
        pairs = pairs[: args.max_images]
    device = resolve_device(args.device)
    maps = {"ots": load_model(args.checkpoint, device)}
    if args.gan:
        maps["gan"] = load_model(args.gan, device)
    tile = args.tile or None
    outputs = upscale_pairs(pairs, maps, tile=tile, overlap=args.overlap, device=device, precision=args.precision)
    results = score_outputs(pairs, outputs, lpips_weights=args.lpips_weights, lpips_net=args.lpips_net,
                            inception_weights=args.inception_weights, device=device,
                            crop_border=args.crop_border, y_channel=args.y_channel)
    results["tiling"] = {"tile": tile, "overlap": args.overlap}
    write_report(args.out, pairs, outputs, results, grid_images=args.grid_images, grid_crop=args.grid_crop or None)
    print(markdown_table(results), end="")
    return 0


__all__ = [
    "bicubic_upscale",
    "evaluate_pairs",
    "grid_image",
    "load_model",
    "markdown_table",
    "metrics_json",
    "per_image_csv",
    "save_grid",
    "score_outputs",
    "upscale_pairs",
    "write_report",
]
