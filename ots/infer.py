"""Upscale images (numpy arrays, files, folders) with a trained map T; the engine behind ``ots upscale``.

Pre-process: uint8/uint16 image (gray, gray+alpha, RGB, RGBA) -> float (1, 3, H, W) in [-1, 1] on the CPU. Gray
is replicated to 3 channels on the way in and averaged back on the way out; an alpha channel does not go through
the map: it is upscaled separately with bicubic interpolation. Tile-process: :func:`ots.tiling.upscale_tensor`.
Post-process: clamp to [-1, 1], back to the input's bit depth and channel layout.

Entry points: :func:`upscale_array` (numpy HWC uint8/uint16 in and out -- the pyfunc-friendly one),
:func:`upscale_files` (paths/folders -> image files). Image I/O is :mod:`ots.imageio`, memory admission
:mod:`ots.memory`, checkpoints :mod:`ots.checkpoint`, image files out :mod:`ots.imagewrite`. The CLI is
:mod:`ots.commands.upscale`, its benchmark :mod:`ots.bench.infer`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ots.errors import ConfigError, InferenceError, OTSError, one_line
from ots.imageio import IMAGE_SUFFIXES, probe_file, read_image, to_depth8
from ots.imagewrite import write_image
from ots.memory import check_memory
from ots.tiling import model_scale, upscale_tensor

__all__ = ["DEFAULT_EXT", "DEFAULT_SUFFIX", "check_writable", "collect_inputs", "output_paths", "upscale_array",
           "upscale_files"]


# ------------------------------------------------------------------------------------------- numpy images


def _max_value(dtype) -> float:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    raise ConfigError(f"images must be uint8 or uint16, got {dtype}")


def upscale_array(model: nn.Module, image: np.ndarray, *, outscale: float | None = None, **tiling) -> np.ndarray:
    """Upscale one image: (H, W), (H, W, 1|2|3|4) uint8/uint16 -> (sH, sW[, C]) of the same dtype and layout.

    Gray is replicated to RGB for the map and averaged back; alpha (2nd of 2 or 4th of 4 channels) is upscaled
    with bicubic interpolation, not by the map. ``outscale`` (Real-ESRGAN's ``-s``): the final size is
    ``round(H * outscale) x round(W * outscale)``; when it differs from the map's scale the map's output is
    resized (bicubic, antialiased). ``tiling``: the keyword options of :func:`ots.tiling.upscale_tensor` (tile,
    overlap, device, precision, batch_tiles, progress, should_stop).
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
    y = upscale_tensor(model, color, **tiling)
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
            files.append(p)  # a FIFO or device is refused (one line) when it is probed, before it is opened
        else:
            raise InferenceError(f"no such file or folder: {p}")
    if not files:
        raise InferenceError("no input images given")
    return files


# Real-ESRGAN's defaults (inference_realesrgan.py): folder outputs are <name>_out.<the input's extension>
DEFAULT_SUFFIX = "out"
DEFAULT_EXT = "auto"


def output_paths(files: Sequence[Path], output: str | Path, *, suffix: str = DEFAULT_SUFFIX,
                 ext: str = DEFAULT_EXT, overwrite: bool = False) -> list[Path]:
    """Where each input goes. One input and an image-suffixed ``output`` -> that file; otherwise ``output`` is a
    folder of ``<name>_<suffix>.<ext>`` (``suffix=""``: ``<name>.<ext>``; ext ``auto`` = the input's).

    Refuses (before any work) to write over an input unless ``overwrite``, and two inputs mapping to one output.
    """
    out = Path(output)
    if len(files) == 1 and out.suffix.lower() in IMAGE_SUFFIXES:
        targets = [out]
    else:
        if out.exists() and not out.is_dir():
            raise InferenceError(f"output {out} is a file but {len(files)} inputs were given; pass a folder")
        ext = ext.lower().lstrip(".")
        targets = []
        for f in files:
            e = f.suffix.lower().lstrip(".") if ext == "auto" else ext
            e = "png" if e == "gif" else e  # no animated/palette output
            targets.append(out / f"{f.stem}{'_' + suffix if suffix else ''}.{e}")
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



def upscale_files(
    model: nn.Module,
    inputs: Iterable[str | Path],
    output: str | Path,
    *,
    progress: bool = True,
    outscale: float | None = None,
    suffix: str = DEFAULT_SUFFIX,
    ext: str = DEFAULT_EXT,
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
    files = collect_inputs(inputs)
    scale = model_scale(model)
    if outscale is not None and not (0 < outscale <= 16 * scale):
        raise ConfigError(f"outscale must be in (0, {16 * scale}], got {outscale}")
    targets = output_paths(files, output, suffix=suffix, ext=ext, overwrite=overwrite)
    check_writable(targets)
    pairs = list(zip(files, targets))
    if progress:
        from tqdm import tqdm

        pairs = tqdm(pairs, desc="upscale", unit="img")
    written, failed = [], []
    n_features = getattr(model, "n_features", 64)
    for src, dst in pairs:
        try:
            h, w, c, item = probe_file(src)
            check_memory(src, h, w, c, scale, limit=max_memory, outscale=outscale, tile=kwargs.get("tile"),
                         batch_tiles=kwargs.get("batch_tiles", 4), n_features=int(n_features), itemsize=item)
            img = read_image(src)
            try:
                out = upscale_array(model, img, outscale=outscale, **kwargs)
            except (MemoryError, RuntimeError) as e:  # e.g. allocation failures inside torch
                reason = one_line(e, 200) or type(e).__name__
                raise InferenceError(f"{src}: upscaling failed ({reason})") from e
            if dst.suffix.lower() != ".png" and out.dtype == np.uint16:
                out = to_depth8(out)  # 8-bit formats
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
