"""Inference: upscale images of any size with a trained map T, through overlapping, feather-blended tiles.

Pipeline (Real-ESRGAN style):

* pre-process -- uint8/uint16 image (gray, gray+alpha, RGB, RGBA) -> float (1, 3, H, W) in [-1, 1] on the CPU.
  Gray is replicated to 3 channels on the way in and averaged back on the way out; an alpha channel does not go
  through the map: it is upscaled separately with bicubic interpolation.
* tile-process -- tiles of ``tile`` x ``tile`` LR px, neighbours sharing ``overlap`` px, run on the device in
  batches of ``batch_tiles`` (bf16 autocast on CUDA, fp32 on CPU). Only tiles move to the device; the full image
  and the output buffer stay on the CPU. Each output tile is weighted by a feathered window: towards a side that
  has a neighbour, the weight is 0 on the outer quarter of the overlap (context only -- it absorbs the border
  effect of the model's zero padding), ramps linearly to 1 across the middle half and is 1 beyond; sides on the
  image border keep weight 1 (the model sees the same border as untiled). Neighbouring ramps are complementary,
  and the buffer is divided by the weight sum. Hence tiled == untiled exactly when the model's receptive-field
  radius is at most ``overlap / 4`` LR px, and seamless (tiny, smooth differences) otherwise.
* post-process -- clamp to [-1, 1], back to the input's bit depth and channel layout.

Entry points: :func:`upscale_array` (numpy HWC uint8/uint16 in and out -- the pyfunc-friendly one),
:func:`upscale_tensor` (batched tensors), :func:`upscale_files` (paths/folders -> PNG files), CLI ``ots upscale``
(its benchmark, ``ots bench infer``, is in :mod:`ots.bench.infer`).
"""

from __future__ import annotations

import argparse
import contextlib
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ots.errors import CheckpointError, ConfigError, InferenceError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
DEFAULT_TILE = 256
DEFAULT_OVERLAP = 32


# --------------------------------------------------------------------------------------------------- devices


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"bad device {device!r}: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on CUDA, fp32 elsewhere; bf16 is only offered on CUDA."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type != "cuda":
        raise ConfigError("bf16 inference needs a CUDA device; use fp32 on the CPU")
    return precision


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_scale(model: nn.Module) -> int:
    scale = getattr(model, "scale", None)
    if not isinstance(scale, int) or scale < 1:
        raise ConfigError(f"the model needs an integer attribute .scale >= 1, got {scale!r}")
    return scale


# ---------------------------------------------------------------------------------------------------- tiling


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``min(tile, size)`` covering [0, size), neighbours sharing >= overlap."""
    if tile >= size:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return starts


def _ramp(length: int, scale: int, overlap: int, left: bool, right: bool) -> torch.Tensor:
    """1-D feather weights (output px) of a tile of ``length`` LR px with neighbours on the given sides."""
    d = (torch.arange(length * scale, dtype=torch.float64) + 0.5) / scale  # distance from the left edge, LR px
    w = torch.ones_like(d)
    if overlap > 0:
        half = overlap / 2.0
        if left:
            w = torch.minimum(w, ((d - overlap / 4.0) / half).clamp(0, 1))
        if right:
            w = torch.minimum(w, ((length - d - overlap / 4.0) / half).clamp(0, 1))
    return w.float()


def _check_tiling(tile: int | None, overlap: int) -> None:
    if tile is not None and tile < 1:
        raise ConfigError(f"tile must be a positive number of LR pixels, got {tile}")
    if overlap < 0:
        raise ConfigError(f"overlap must be >= 0, got {overlap}")
    if tile is not None and overlap >= tile:
        raise ConfigError(f"overlap ({overlap}) must be smaller than the tile ({tile})")


def _run(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str) -> torch.Tensor:
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    else:
        x = x.to(device)
    with _autocast(device, precision):
        y = model(x)
    return y.float().cpu()


@torch.inference_mode()
def upscale_tensor(
    model: nn.Module,
    x: torch.Tensor,
    *,
    tile: int | None = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    device: str | torch.device | None = None,
    precision: str = "auto",
    batch_tiles: int = 4,
    progress: bool = False,
) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] (CPU) -> (B, 3, sH, sW) float32 on the CPU, not clamped.

    ``tile=None`` (or a tile >= the image) runs the whole image at once. The model is moved to ``device``
    (default: CUDA if available) and put in eval mode.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ConfigError(f"expected a (B, C, H, W) tensor, got shape {tuple(getattr(x, 'shape', ()))}")
    _check_tiling(tile, overlap)
    if batch_tiles < 1:
        raise ConfigError(f"batch_tiles must be >= 1, got {batch_tiles}")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    s = model_scale(model)
    model = model.to(dev).eval()
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    x = x.detach().float().cpu()
    B, C, H, W = x.shape
    if tile is None or (tile >= H and tile >= W):
        y = _run(model, x, dev, prec)
        _check_output(y, (B, C, H * s, W * s))
        return y

    ys, xs = tile_starts(H, tile, overlap), tile_starts(W, tile, overlap)
    th, tw = min(tile, H), min(tile, W)
    wy = [_ramp(th, s, overlap, y0 > 0, y0 + th < H) for y0 in ys]
    wx = [_ramp(tw, s, overlap, x0 > 0, x0 + tw < W) for x0 in xs]
    out = torch.zeros(B, C, H * s, W * s)
    wsum = torch.zeros(H * s, W * s)
    jobs = [(b, i, j) for b in range(B) for i in range(len(ys)) for j in range(len(xs))]
    batches = [jobs[k : k + batch_tiles] for k in range(0, len(jobs), batch_tiles)]
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="tiles", unit="batch", leave=False)
    for batch in batches:
        inp = torch.stack([x[b, :, ys[i] : ys[i] + th, xs[j] : xs[j] + tw] for b, i, j in batch])
        y = _run(model, inp, dev, prec)
        _check_output(y, (len(batch), C, th * s, tw * s))
        for k, (b, i, j) in enumerate(batch):
            w = wy[i][:, None] * wx[j][None, :]
            oy, ox = ys[i] * s, xs[j] * s
            out[b, :, oy : oy + th * s, ox : ox + tw * s] += y[k] * w
            if b == 0:
                wsum[oy : oy + th * s, ox : ox + tw * s] += w
    return out / wsum


def _check_output(y: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(y.shape) != expected:
        raise InferenceError(f"model output has shape {tuple(y.shape)}, expected {expected} (scale mismatch?)")


# ------------------------------------------------------------------------------------------- numpy images


def _max_value(dtype) -> float:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    raise ConfigError(f"images must be uint8 or uint16, got {dtype}")


def upscale_array(
    model: nn.Module,
    image: np.ndarray,
    *,
    tile: int | None = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    device: str | torch.device | None = None,
    precision: str = "auto",
    batch_tiles: int = 4,
    progress: bool = False,
) -> np.ndarray:
    """Upscale one image: (H, W), (H, W, 1|2|3|4) uint8/uint16 -> (sH, sW[, C]) of the same dtype and layout.

    Gray is replicated to RGB for the map and averaged back; alpha (2nd of 2 or 4th of 4 channels) is upscaled
    with bicubic interpolation, not by the map.
    """
    a = np.asarray(image)
    maxv = _max_value(a.dtype)
    squeeze = a.ndim == 2
    if squeeze:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ConfigError(f"expected an (H, W) or (H, W, 1|2|3|4) image, got shape {np.asarray(image).shape}")
    if min(a.shape[:2]) < 1:
        raise ConfigError(f"empty image of shape {a.shape}")
    c = a.shape[2]
    color_c = 3 if c >= 3 else 1
    t = torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[None] / maxv  # (1, C, H, W) in [0, 1]
    color = t[:, :color_c] * 2 - 1
    if color_c == 1:
        color = color.expand(-1, 3, -1, -1)
    y = upscale_tensor(model, color, tile=tile, overlap=overlap, device=device, precision=precision,
                       batch_tiles=batch_tiles, progress=progress)
    y = (y.clamp(-1, 1) + 1) / 2
    if color_c == 1:
        y = y.mean(1, keepdim=True)
    if c in (2, 4):
        s = model_scale(model)
        alpha = F.interpolate(t[:, color_c:], scale_factor=s, mode="bicubic", align_corners=False)
        y = torch.cat([y, alpha.clamp(0, 1)], 1)
    out = (y[0].permute(1, 2, 0) * maxv).round().numpy().astype(a.dtype)
    return out[:, :, 0] if squeeze else out


# ------------------------------------------------------------------------------------------------ image I/O


def read_image(path: str | Path) -> np.ndarray:
    """Any common image file -> (H, W, C) uint8/uint16 array (16-bit PNGs stay 16-bit). One-line errors."""
    p = Path(path)
    if not p.exists():
        raise InferenceError(f"no such file: {p}")
    if not p.is_file():
        raise InferenceError(f"not a file: {p}")
    try:
        from torchvision.io import ImageReadMode, decode_image

        data = torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8)
        t = decode_image(data, mode=ImageReadMode.UNCHANGED)
        arr = t.permute(1, 2, 0).contiguous().numpy()
    except Exception:  # noqa: BLE001 - fall back to Pillow (BMP, TIFF, ...)
        arr = _read_with_pil(p)
    if arr.dtype not in (np.uint8, np.uint16):
        raise InferenceError(f"unsupported image bit depth in {p}: {arr.dtype}")
    return arr


def _read_with_pil(p: Path) -> np.ndarray:
    try:
        from PIL import Image

        with Image.open(p) as im:
            if im.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im, dtype=np.uint16)[:, :, None]
            if im.mode not in ("L", "LA", "RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            arr = np.asarray(im)
    except Exception as e:  # noqa: BLE001
        raise InferenceError(f"cannot read image {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return arr if arr.ndim == 3 else arr[:, :, None]


def encode_png(image: np.ndarray) -> bytes:
    """Minimal PNG encoder for uint8/uint16 gray, gray+alpha, RGB and RGBA (keeps 16-bit, unlike Pillow)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    h, w, c = a.shape
    if c not in (1, 2, 3, 4) or a.dtype not in (np.uint8, np.uint16):
        raise ConfigError(f"cannot encode a {a.dtype} image with {c} channels as PNG")
    depth = 16 if a.dtype == np.uint16 else 8
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = np.ascontiguousarray(a.astype(">u2" if depth == 16 else np.uint8)).reshape(h, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write PNG (any supported depth/layout) or, for 8-bit images, any format Pillow knows by suffix."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix.lower() == ".png":
        p.write_bytes(encode_png(image))
        return p
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ConfigError(f"{p.suffix} output supports 8-bit images only; write a .png for {a.dtype}")
    from PIL import Image

    a = a[:, :, 0] if a.ndim == 3 and a.shape[2] == 1 else a
    try:
        Image.fromarray(a).save(p)
    except (OSError, ValueError, KeyError) as e:
        raise InferenceError(f"cannot write {p}: {e}") from e
    return p


def collect_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files and folders (their image files, sorted, not recursive) -> list of image paths."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InferenceError(f"no image files in folder {p}")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise InferenceError(f"no such file or folder: {p}")
    if not files:
        raise InferenceError("no input images given")
    return files


def output_paths(files: Sequence[Path], output: str | Path, scale: int) -> list[Path]:
    """One input and an image-suffixed ``output`` -> that file; otherwise ``output`` is a folder of PNGs."""
    out = Path(output)
    if len(files) == 1 and out.suffix.lower() in IMAGE_SUFFIXES:
        return [out]
    if out.exists() and not out.is_dir():
        raise InferenceError(f"output {out} is a file but {len(files)} inputs were given; pass a folder")
    names = [f"{f.stem}_x{scale}.png" for f in files]
    if len(set(names)) != len(names):
        raise InferenceError("two inputs share a file name; upscale them into separate folders")
    return [out / n for n in names]


def upscale_files(
    model: nn.Module,
    inputs: Iterable[str | Path],
    output: str | Path,
    *,
    progress: bool = True,
    **kwargs,
) -> list[Path]:
    """Upscale image files/folders into ``output`` (a file for one input, else a folder); returns written paths."""
    files = collect_inputs(inputs)
    targets = output_paths(files, output, model_scale(model))
    pairs = list(zip(files, targets))
    if progress:
        from tqdm import tqdm

        pairs = tqdm(pairs, desc="upscale", unit="img")
    written = []
    for src, dst in pairs:
        img = read_image(src)
        written.append(write_image(dst, upscale_array(model, img, **kwargs)))
    return written


# -------------------------------------------------------------------------------------------------- models


def load_map(checkpoint: str | Path, device: str = "cpu") -> nn.Module:
    """Map from a checkpoint file (delegates to ``ots.solver.load_map``, imported lazily), or from an MLflow
    ``runs:/...`` / ``models:/name@alias`` URI or run id through ``pipelines.serving`` (``ots`` never imports
    mlflow itself; the tracking server comes from $MLFLOW_TRACKING_URI)."""
    if not Path(checkpoint).is_file() and _is_mlflow_source(str(checkpoint)):
        import importlib

        try:
            serving = importlib.import_module("pipelines.serving")
        except ImportError as e:
            raise CheckpointError(f"loading {checkpoint} needs the pipelines package and mlflow: {e}") from e
        return serving.load_map_from_uri(str(checkpoint), device=str(device))
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"no such checkpoint file: {checkpoint}")
    try:
        from ots.solver import load_map as _load
    except ImportError as e:
        raise CheckpointError(f"checkpoint loading is unavailable: {e}") from e
    return _load(str(checkpoint), device=device)


def _is_mlflow_source(source: str) -> bool:
    import re

    return source.startswith(("runs:/", "models:/")) or re.fullmatch(r"[0-9a-f]{32}", source) is not None


# ----------------------------------------------------------------------------------------------------- CLI


def _add_tiling_args(p: argparse.ArgumentParser, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP) -> None:
    p.add_argument("--tile", type=int, default=tile, help=f"tile size in LR px, 0 = whole image (default {tile})")
    p.add_argument("--overlap", type=int, default=overlap,
                   help=f"LR px shared by neighbouring tiles; the outer quarter is context only (default {overlap})")
    p.add_argument("--batch-tiles", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto = bf16 on CUDA, fp32 on CPU")


def add_commands(sub) -> None:
    p = sub.add_parser("upscale", help="upscale images with a trained map (any size, tiled)")
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    p.add_argument("-o", "--output", required=True, help="output file (one input) or folder (PNG files)")
    p.add_argument("--checkpoint", "--model", dest="checkpoint", required=True,
                   help="the map: checkpoint file, runs:/<run_id>/<path>, an MLflow run id or models:/<name>@<alias>")
    _add_tiling_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_upscale)


def _cmd_upscale(args) -> int:
    files = collect_inputs(args.inputs)  # fail on bad inputs before loading the model
    device = resolve_device(args.device)
    model = load_map(args.checkpoint, device=str(device))
    written = upscale_files(model, files, args.output, progress=not args.no_progress,
                            tile=args.tile or None, overlap=args.overlap, device=device,
                            precision=args.precision, batch_tiles=args.batch_tiles)
    for w in written:
        print(w)
    return 0


__all__ = [
    "add_commands",
    "collect_inputs",
    "encode_png",
    "load_map",
    "read_image",
    "tile_starts",
    "upscale_array",
    "upscale_files",
    "upscale_tensor",
    "write_image",
]
