"""Tiled inference: run a map T over overlapping, feather-blended tiles of a (B, 3, H, W) tensor.

Tiles of ``tile`` x ``tile`` LR px, neighbours sharing ``overlap`` px, run on the device in batches of
``batch_tiles`` (bf16 autocast on CUDA, fp32 on CPU). Only tiles move to the device; the full image and the output
buffer stay on the CPU. Each output tile is weighted by a feathered window: towards a side that has a neighbour,
the weight is 0 on the outer quarter of the overlap (context only -- it absorbs the border effect of the model's
zero padding), ramps linearly to 1 across the middle half and is 1 beyond; sides on the image border keep weight
1 (the model sees the same border as untiled). Neighbouring ramps are complementary, and the buffer is divided by
the weight sum. Hence tiled == untiled exactly when the model's receptive-field radius is at most ``overlap / 4``
LR px, and seamless (tiny, smooth differences) otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from ots.device import resolve_device
from ots.errors import ConfigError, InferenceError

DEFAULT_TILE = 256
DEFAULT_OVERLAP = 32

__all__ = ["DEFAULT_OVERLAP", "DEFAULT_TILE", "Cancelled", "check_tiling", "model_scale", "resolve_precision",
           "tile_starts", "upscale_tensor"]


class Cancelled(InferenceError):
    """The work was stopped on request (``should_stop``) before it finished."""


# --------------------------------------------------------------------------------------------------- devices


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


def check_tiling(tile: int | None, overlap: int) -> None:
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
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] (CPU) -> (B, 3, sH, sW) float32 on the CPU, not clamped.

    ``tile=None`` (or a tile >= the image) runs the whole image at once. The model is moved to ``device``
    (default: CUDA if available) and put in eval mode. ``should_stop`` is polled before every tile batch: when
    it returns True the work stops with :class:`Cancelled` (a server's request deadline, a SIGTERM).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ConfigError(f"expected a (B, C, H, W) tensor, got shape {tuple(getattr(x, 'shape', ()))}")
    check_tiling(tile, overlap)
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
        if should_stop is not None and should_stop():
            raise Cancelled("upscaling cancelled (deadline passed or shutting down)")
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
        if should_stop is not None and should_stop():
            raise Cancelled("upscaling cancelled (deadline passed or shutting down)")
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

