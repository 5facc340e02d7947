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
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ots.errors import CheckpointError, ConfigError, InferenceError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
DEFAULT_TILE = 256
DEFAULT_OVERLAP = 32


class Cancelled(InferenceError):
    """The work was stopped on request (``should_stop``) before it finished."""


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
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] (CPU) -> (B, 3, sH, sW) float32 on the CPU, not clamped.

    ``tile=None`` (or a tile >= the image) runs the whole image at once. The model is moved to ``device``
    (default: CUDA if available) and put in eval mode. ``should_stop`` is polled before every tile batch: when
    it returns True the work stops with :class:`Cancelled` (a server's request deadline, a SIGTERM).
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
    outscale: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Upscale one image: (H, W), (H, W, 1|2|3|4) uint8/uint16 -> (sH, sW[, C]) of the same dtype and layout.

    Gray is replicated to RGB for the map and averaged back; alpha (2nd of 2 or 4th of 4 channels) is upscaled
    with bicubic interpolation, not by the map. ``outscale`` (Real-ESRGAN's ``-s``): the final size is
    ``round(H * outscale) x round(W * outscale)``; when it differs from the map's scale the map's output is
    resized (bicubic, antialiased).
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
                       batch_tiles=batch_tiles, progress=progress, should_stop=should_stop)
    y = (y.clamp(-1, 1) + 1) / 2
    if color_c == 1:
        y = y.mean(1, keepdim=True)
    s = model_scale(model)
    size = (a.shape[0] * s, a.shape[1] * s)
    if outscale is not None and outscale != s:
        if outscale <= 0:
            raise ConfigError(f"outscale must be positive, got {outscale}")
        size = (max(1, round(a.shape[0] * outscale)), max(1, round(a.shape[1] * outscale)))
        y = F.interpolate(y, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    if c in (2, 4):
        alpha = F.interpolate(t[:, color_c:], size=size, mode="bicubic", align_corners=False)
        y = torch.cat([y, alpha.clamp(0, 1)], 1)
    out = (y[0].permute(1, 2, 0) * maxv).round().numpy().astype(a.dtype)
    return out[:, :, 0] if squeeze else out


# ------------------------------------------------------------------------------------------------ image I/O


def read_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Any common image file -> (H, W, C) uint8/uint16 array (16-bit PNGs stay 16-bit). One-line errors.

    Decoded by :func:`ots.imageio.decode_image` (the decoder ``prepare`` and serving share); images over
    ``max_pixels`` (default: Pillow's decompression-bomb limit) are refused from the header.
    """
    from ots.errors import DataError
    from ots.imageio import DEFAULT_MAX_PIXELS, decode_image

    p = Path(path)
    if not p.exists():
        raise InferenceError(f"no such file: {p}")
    if not p.is_file():
        raise InferenceError(f"not a file: {p}")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InferenceError(f"cannot read {p}: {e.strerror or e}") from e
    try:
        return decode_image(data, str(p), max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    except DataError as e:
        raise InferenceError(str(e)) from e


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
    """Write PNG (any supported depth/layout) or, for 8-bit images, any format Pillow knows by suffix.

    Atomic: the bytes go to a temporary name in the same folder, then replace ``path``.
    """
    p = Path(path)
    a = np.asarray(image)
    if p.suffix.lower() == ".png":
        data = encode_png(a)
    else:
        if a.dtype != np.uint8:
            raise ConfigError(f"{p.suffix} output supports 8-bit images only; write a .png for {a.dtype}")
        import io

        from PIL import Image

        a = a[:, :, 0] if a.ndim == 3 and a.shape[2] == 1 else a
        if p.suffix.lower() in (".jpg", ".jpeg") and a.ndim == 3 and a.shape[2] in (2, 4):
            a = a[:, :, : a.shape[2] - 1]  # JPEG has no alpha
            a = a[:, :, 0] if a.shape[2] == 1 else a
        buf = io.BytesIO()
        try:
            Image.fromarray(a).save(buf, format=Image.registered_extensions().get(p.suffix.lower()))
        except (OSError, ValueError, KeyError) as e:
            raise InferenceError(f"cannot write {p}: {e}") from e
        data = buf.getvalue()
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, p)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise InferenceError(f"cannot write {p}: {e.strerror or e}") from e
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


def output_paths(files: Sequence[Path], output: str | Path, scale: float, *, suffix: str | None = None,
                 ext: str = "png", overwrite: bool = False) -> list[Path]:
    """Where each input goes. One input and an image-suffixed ``output`` -> that file; otherwise ``output`` is a
    folder of ``<name>_<suffix>.<ext>`` (suffix default ``x<scale>``, ``""`` = none; ext ``auto`` = the input's).

    Refuses (before any work) to write over an input unless ``overwrite``, and two inputs mapping to one output.
    """
    out = Path(output)
    if len(files) == 1 and out.suffix.lower() in IMAGE_SUFFIXES:
        targets = [out]
    else:
        if out.exists() and not out.is_dir():
            raise InferenceError(f"output {out} is a file but {len(files)} inputs were given; pass a folder")
        tag = f"x{scale:g}" if suffix is None else suffix
        ext = ext.lower().lstrip(".")
        targets = []
        for f in files:
            e = f.suffix.lower().lstrip(".") if ext == "auto" else ext
            e = "png" if e == "gif" else e  # no animated/palette output
            targets.append(out / f"{f.stem}{'_' + tag if tag else ''}.{e}")
        if len({t.name for t in targets}) != len(targets):
            raise InferenceError("two inputs map to the same output name; upscale them into separate folders")
    if not overwrite:
        inputs = {f.resolve() for f in files}
        same = [t for t in targets if t.resolve() in inputs]
        if same:
            raise InferenceError(f"output {same[0]} is an input file: it would be overwritten (pass --overwrite "
                                 "to allow that, or choose another -o/--suffix)")
    return targets


def check_writable(targets: Sequence[Path]) -> None:
    """Fail (one line, before any compute) if an output cannot be written: creates each output folder and
    writes and removes a probe file there."""
    for parent in sorted({t.parent for t in targets}):
        try:
            parent.mkdir(parents=True, exist_ok=True)
            probe = parent / f".ots-write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise InferenceError(f"cannot write outputs to {parent}: {e.strerror or e}") from e
    for t in targets:
        if t.is_dir():
            raise InferenceError(f"output {t} is a folder")
        if t.exists() and not os.access(t, os.W_OK):
            raise InferenceError(f"cannot write {t}: permission denied")


def available_memory() -> int:
    """Bytes of memory this process may still use: MemAvailable, capped by a cgroup limit when there is one."""
    avail = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            room = int(limit) - used
            avail = room if avail is None else min(avail, room)
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
            avail = 8 << 30
    return max(0, int(avail))


def estimate_memory(height: int, width: int, channels: int, scale: int, *, outscale: float | None = None,
                    tile: int | None = DEFAULT_TILE, batch_tiles: int = 4, n_features: int = 64,
                    itemsize: int = 1) -> int:
    """Rough peak bytes of :func:`upscale_array` for one image (CPU buffers + one tile batch's activations).

    Output-sized float32 buffers dominate: the blend accumulator (3 ch) and weight sum, the clamp/shift copies,
    the channel-last copy, the optional resize, and the result. The model term is the last (x scale) feature
    map of a batch of tiles, twice (input and output of a convolution).
    """
    out_px = height * width * scale * scale
    final_px = out_px if not outscale else round(height * outscale) * round(width * outscale)
    buffers = out_px * 4 * (3 + 1 + 3 + 3 + channels) + final_px * (4 * channels + itemsize * channels)
    buffers += height * width * 4 * (channels + 3)  # the float input and its [-1, 1] colour copy
    side_h = min(tile or height, height) * scale
    side_w = min(tile or width, width) * scale
    tiles = 1 if not tile else min(batch_tiles, len(tile_starts(height, tile, 0)) * len(tile_starts(width, tile, 0)))
    activations = tiles * side_h * side_w * n_features * 4 * 2
    return int(buffers + activations)


def _fmt_bytes(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def check_memory(path: Path | str, height: int, width: int, channels: int, scale: int, *,
                 limit: int | None = None, **kwargs) -> int:
    """Refuse (one line, before decoding) an image whose estimated peak memory exceeds ``limit`` bytes
    (default: :func:`available_memory`). Returns the estimate."""
    need = estimate_memory(height, width, channels, scale, **kwargs)
    room = available_memory() if limit is None else int(limit)
    if need > room:
        outscale = kwargs.get("outscale") or scale
        raise InferenceError(
            f"{path}: {width}x{height} -> {round(width * outscale)}x{round(height * outscale)} needs about "
            f"{_fmt_bytes(need)} of memory, more than the {_fmt_bytes(room)} available; split the image, lower "
            "--outscale or raise --max-memory-gb")
    return need


def _probe(path: Path) -> tuple[int, int, int, int]:
    """(height, width, channels, bytes per sample) from the header only."""
    from ots.errors import DataError
    from ots.imageio import image_info

    try:
        with open(path, "rb") as f:
            return image_info(f.read(), str(path))
    except OSError as e:
        raise InferenceError(f"cannot read {path}: {e.strerror or e}") from e
    except DataError as e:
        raise InferenceError(str(e)) from e


def upscale_files(
    model: nn.Module,
    inputs: Iterable[str | Path],
    output: str | Path,
    *,
    progress: bool = True,
    outscale: float | None = None,
    suffix: str | None = None,
    ext: str = "png",
    overwrite: bool = False,
    max_memory: int | None = None,
    on_error=None,
    on_written=None,
    **kwargs,
) -> list[Path]:
    """Upscale image files/folders into ``output`` (a file for one input, else a folder); returns written paths.

    Before any compute: inputs exist, no output overwrites an input (unless ``overwrite``), every output folder
    is writable. Per image, before decoding: the estimated peak memory fits ``max_memory`` (default: what is
    available). With one input its error is raised; with several, a bad image is reported through
    ``on_error(path, error)`` (default: collected) and the others continue; then one InferenceError names how
    many failed. ``on_written(path)`` is called after each image is written.
    """
    from ots.errors import OTSError

    files = collect_inputs(inputs)
    scale = model_scale(model)
    if outscale is not None and not (0 < outscale <= 16 * scale):
        raise ConfigError(f"outscale must be in (0, {16 * scale}], got {outscale}")
    targets = output_paths(files, output, outscale or scale, suffix=suffix, ext=ext, overwrite=overwrite)
    check_writable(targets)
    pairs = list(zip(files, targets))
    if progress:
        from tqdm import tqdm

        pairs = tqdm(pairs, desc="upscale", unit="img")
    written, failed = [], []
    n_features = getattr(model, "n_features", 64)
    for src, dst in pairs:
        try:
            h, w, c, item = _probe(src)
            check_memory(src, h, w, c, scale, limit=max_memory, outscale=outscale, tile=kwargs.get("tile"),
                         batch_tiles=kwargs.get("batch_tiles", 4), n_features=int(n_features), itemsize=item)
            img = read_image(src)
            try:
                out = upscale_array(model, img, outscale=outscale, **kwargs)
            except (MemoryError, RuntimeError) as e:  # e.g. allocation failures inside torch
                reason = " ".join(str(e).split())[:200] or type(e).__name__
                raise InferenceError(f"{src}: upscaling failed ({reason})") from e
            if dst.suffix.lower() != ".png" and out.dtype == np.uint16:
                out = ((out.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # 8-bit formats
            written.append(write_image(dst, out))
            if on_written is not None:
                on_written(written[-1])
        except OTSError as e:
            if len(files) == 1:
                raise
            failed.append((src, e))
            if on_error is not None:
                on_error(src, e)
    if failed:
        names = ", ".join(str(s.name) for s, _ in failed[:5]) + (" ..." if len(failed) > 5 else "")
        raise InferenceError(f"{len(failed)} of {len(files)} images failed ({names}); the other "
                             f"{len(files) - len(failed)} were written")
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


def _add_tiling_args(p: argparse.ArgumentParser, tile: int = DEFAULT_TILE, overlap: int | None = DEFAULT_OVERLAP
                     ) -> None:
    p.add_argument("--tile", type=int, default=tile, help=f"tile size in LR px, 0 = whole image (default {tile})")
    default = f"{overlap}" if overlap is not None else f"min({DEFAULT_OVERLAP}, tile / 4)"
    p.add_argument("--overlap", type=int, default=overlap,
                   help=f"LR px shared by neighbouring tiles; the outer quarter is context only (default {default})")
    p.add_argument("--batch-tiles", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto = bf16 on CUDA, fp32 on CPU")


def add_commands(sub) -> None:
    p = sub.add_parser("upscale", help="upscale images with a trained map (any size, tiled)",
                       description="Upscale images with a trained map (any size, tiled). Real-ESRGAN-style flags.")
    p.add_argument("inputs", nargs="*", help="image files and/or folders")
    p.add_argument("-i", "--input", action="append", default=[], dest="input_opts", metavar="PATH",
                   help="an input image or folder (repeatable; same as a positional input)")
    p.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    p.add_argument("--checkpoint", "--model", "--model-path", dest="checkpoint", required=True,
                   help="the map: checkpoint file, runs:/<run_id>/<path>, an MLflow run id or models:/<name>@<alias>")
    p.add_argument("-s", "--outscale", type=float, default=None,
                   help="final upscaling factor (default: the map's); other values resize the map's output")
    p.add_argument("--suffix", default=None,
                   help="folder output names are <name>_<suffix>.<ext> (default: x<outscale>; '' = no suffix)")
    p.add_argument("--ext", default="png", choices=["auto", "png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff"],
                   help="folder output format (default png, lossless and 16-bit capable; auto = the input's)")
    p.add_argument("--overwrite", action="store_true", help="allow an output to replace an input file")
    p.add_argument("--max-memory-gb", type=float, default=None,
                   help="refuse images whose estimated peak memory is larger (default: the memory available now)")
    _add_tiling_args(p, overlap=None)
    p.add_argument("--fp32", action="store_true", help="fp32 inference (same as --precision fp32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_upscale)


def _cmd_upscale(args) -> int:
    import sys

    inputs = list(args.inputs) + list(args.input_opts)
    if not inputs:
        raise InferenceError("no input images given (positional paths or -i/--input)")
    if args.outscale is not None and args.outscale <= 0:
        raise ConfigError(f"--outscale must be positive, got {args.outscale}")
    if args.max_memory_gb is not None and args.max_memory_gb <= 0:
        raise ConfigError(f"--max-memory-gb must be positive, got {args.max_memory_gb}")
    files = collect_inputs(inputs)  # fail on bad inputs before loading the model
    # the checks upscale_files repeats, here before the (slow) model load: no work is wasted. The default
    # suffix names the map's scale, unknown until the model is loaded: then only folders are checked here.
    targets = output_paths(files, args.output, args.outscale or 1, suffix=args.suffix if args.suffix is not None
                           or args.outscale else "", ext=args.ext,
                           overwrite=args.overwrite or (args.suffix is None and not args.outscale))
    check_writable(targets)
    overlap = args.overlap if args.overlap is not None else min(DEFAULT_OVERLAP, (args.tile or 0) // 4)
    _check_tiling(args.tile or None, overlap)
    device = resolve_device(args.device)
    precision = "fp32" if args.fp32 else args.precision
    resolve_precision(precision, device)
    model = load_map(args.checkpoint, device=str(device))

    def report(path, err) -> None:
        print(f"ots: error: {err}", file=sys.stderr, flush=True)

    max_memory = int(args.max_memory_gb * (1 << 30)) if args.max_memory_gb else None
    upscale_files(model, files, args.output, progress=not args.no_progress, outscale=args.outscale,
                  suffix=args.suffix, ext=args.ext, overwrite=args.overwrite, max_memory=max_memory,
                  on_error=report, on_written=print, tile=args.tile or None, overlap=overlap, device=device,
                  precision=precision, batch_tiles=args.batch_tiles)
    return 0


__all__ = [
    "Cancelled",
    "estimate_memory",
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
