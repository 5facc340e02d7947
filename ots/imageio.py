"""Image input: the one decoder every door shares (``prepare``, ``ots upscale``, the served model).

:func:`decode_image` returns ``(H, W, C)`` ``uint8`` or ``uint16`` (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) and
keeps 16 bits: 16-bit PNGs of every colour type are decoded losslessly (Pillow reads 16-bit gray only; RGB(A)
and gray+alpha go through ``torchvision.io.decode_png``, imported only then). The pixel count is checked from
the header, before any pixel is decoded, against ``max_pixels`` (default: Pillow's decompression-bomb limit),
so a bomb costs nothing and ends as one :class:`ots.errors.DataError` line like any other bad file. The EXIF
orientation (cameras and phones write it) is applied (``ImageOps.exif_transpose``): what comes out is upright,
and :func:`image_info` reports the upright size.

:func:`to_rgb8` converts any decoded array to the ``uint8`` RGB the data layer stores: 16 bit is *rescaled*
(``round(v * 255 / 65535)``, never clipped), gray is replicated, alpha is dropped.

Files: :func:`read_image` / :func:`probe_file` (header only); the writers are in :mod:`ots.imagewrite`.
Errors are one-line :class:`ots.errors.InferenceError` at the file doors, :class:`ots.errors.DataError` for bytes.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from ots.errors import DataError, InferenceError, one_line
from ots.locations import not_regular

# The decompression-bomb guard, every decoder's default ``max_pixels`` (a caller with a tighter input limit, such as
# a server's, passes its own): Pillow raises DecompressionBombError above 2 x Image.MAX_IMAGE_PIXELS (89 478 485).
BOMB_MAX_PIXELS = 2 * 89_478_485
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the numpy op making pixels upright: Pillow's exif_transpose for what it did not decode (16 bit)
_UPRIGHT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
            5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
            7: lambda a: np.rot90(a, 2).transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}

__all__ = ["BOMB_MAX_PIXELS", "IMAGE_SUFFIXES", "decode_image", "image_info", "png_bit_depth", "probe_file",
           "read_image", "to_depth8", "to_rgb8"]


def png_bit_depth(data: bytes) -> int | None:
    """The bit depth from a PNG's IHDR chunk, or None if ``data`` is not a PNG."""
    if len(data) >= 25 and data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR":
        return data[24]
    return None


def _first_line(e: BaseException) -> str:
    return one_line(e, 200) or type(e).__name__


def _orientation(im) -> int:
    try:
        value = int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block is not a reason to refuse the pixels
        return 1
    return value if value in range(1, 9) else 1


def image_info(data: bytes, what: str = "image") -> tuple[int, int, int, int]:
    """``(height, width, channels, bytes per sample)`` of what :func:`decode_image` would return, read from the
    header only (no pixel is decoded); DataError (one line) when it is not an image."""
    from PIL import Image

    data = bytes(data)
    if not data:
        raise DataError(f"{what}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                mode, transparent = im.mode, "transparency" in im.info
                if _orientation(im) >= 5:  # stored sideways: upright it is h x w
                    w, h = h, w
    except Image.DecompressionBombError as e:
        raise DataError(f"{what}: image too large, refused before decoding ({_first_line(e)})") from e
    except Exception as e:  # noqa: BLE001 - anything Pillow cannot identify is "not an image"
        raise DataError(f"{what}: not an image ({_first_line(e)})") from e
    depth = png_bit_depth(data)
    if depth == 16 and not mode.startswith("I;16"):  # decoded by torchvision: the PNG colour type decides
        return h, w, {0: 1, 2: 3, 4: 2, 6: 4}.get(data[25], 3), 2
    if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
        channels = 1
    elif mode == "LA":
        channels = 2
    elif mode == "RGB" or (mode == "P" and not transparent):
        channels = 3
    elif mode in ("RGBA", "La", "PA", "P"):
        channels = 4
    else:
        channels = 4 if "A" in mode or "a" in mode else 3
    return h, w, channels, 2 if mode.startswith("I") or mode == "F" else 1


def decode_image(data: bytes, what: str = "image", *, max_pixels: int | None = BOMB_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to ``(H, W, C)`` uint8/uint16, C in 1..4; DataError (one line) on bad input.

    ``max_pixels=None`` disables the size check (Pillow's own bomb guard still applies).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DataError(f"{what}: expected image bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise DataError(f"{what}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise DataError(f"{what}: image too large, refused before decoding ({_first_line(e)})") from e
    except UnidentifiedImageError as e:
        raise DataError(f"{what}: not an image (cannot identify format)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{what}: corrupt or truncated image ({_first_line(e)})") from e
    with im:
        w, h = im.size
        if w < 1 or h < 1:
            raise DataError(f"{what}: empty image ({w}x{h})")
        if max_pixels is not None and w * h > max_pixels:
            raise DataError(f"{what}: image too large: {w}x{h} = {w * h} pixels, more than the limit of "
                            f"{max_pixels} (refused before decoding)")
        try:
            if png_bit_depth(data) == 16 and im.mode not in ("I;16", "I;16B", "I;16L"):
                arr = _decode_png16(data, what)
                upright = _UPRIGHT.get(_orientation(im))
                return np.ascontiguousarray(upright(arr)) if upright else arr
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.load()
                upright = ImageOps.exif_transpose(im) if _orientation(im) != 1 else im
            return _pil_array(upright, what)
        except DataError:
            raise
        except Image.DecompressionBombError as e:
            raise DataError(f"{what}: image too large, refused before decoding ({_first_line(e)})") from e
        except (OSError, SyntaxError, ValueError, RuntimeError, EOFError) as e:
            raise DataError(f"{what}: corrupt or truncated image ({_first_line(e)})") from e


def _pil_array(im, what: str) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L"):
        arr = np.asarray(im).astype(np.uint16, copy=False)
    elif mode in ("I", "F"):  # 32-bit int/float gray (e.g. some TIFFs): keep only what fits 16 bits exactly
        a = np.asarray(im)
        if a.size and (not np.isfinite(a).all() or a.min() < 0 or a.max() > 65535 or (a != np.round(a)).any()):
            raise DataError(f"{what}: unsupported {mode}-mode image (values outside 0..65535 integers)")
        arr = a.astype(np.uint16)
    elif mode in ("L", "LA", "RGB", "RGBA"):
        arr = np.asarray(im)
    elif mode in ("1",):
        arr = np.asarray(im.convert("L"))
    elif mode in ("La", "PA") or (mode == "P" and "transparency" in im.info):
        arr = np.asarray(im.convert("RGBA"))
    else:  # P, CMYK, YCbCr, LAB, HSV, RGBX, RGBa, ...
        arr = np.asarray(im.convert("RGBA" if "A" in mode or "a" in mode else "RGB"))
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def _decode_png16(data: bytes, what: str) -> np.ndarray:
    import torch
    from torchvision.io import ImageReadMode, decode_png

    try:
        t = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    except RuntimeError as e:
        raise DataError(f"{what}: corrupt or truncated image ({_first_line(e)})") from e
    arr = t.permute(1, 2, 0).contiguous().numpy()
    if arr.dtype != np.uint16:  # pragma: no cover - torchvision < 0.21 returned int32 for 16-bit PNGs
        arr = arr.astype(np.uint16)
    return arr


def to_rgb8(arr: np.ndarray) -> np.ndarray:
    """``(H, W[, C])`` uint8/uint16 -> ``(H, W, 3)`` uint8 RGB: 16 bit rescaled, gray replicated, alpha dropped."""
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise DataError(f"expected an (H, W[, 1|2|3|4]) image, got shape {np.asarray(arr).shape}")
    if a.dtype not in (np.uint8, np.uint16):
        raise DataError(f"images must be uint8 or uint16, got {a.dtype}")
    a = to_depth8(a)
    a = a[:, :, :3] if a.shape[2] >= 3 else np.repeat(a[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(a)


def to_depth8(a: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 rescaled (``round(v * 255 / 65535)``); uint8 unchanged."""
    if a.dtype == np.uint16:
        return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return a


# ------------------------------------------------------------------------------------------------------- files


def read_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Any common image file -> (H, W, C) uint8/uint16 array (16-bit PNGs stay 16-bit). One-line errors.

    Decoded by :func:`ots.imageio.decode_image` (the decoder ``prepare`` and serving share); images over
    ``max_pixels`` (default: Pillow's decompression-bomb limit) are refused from the header.
    """
    p = _regular(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InferenceError(f"cannot read {p}: {e.strerror or e}") from e
    try:
        return decode_image(data, str(p), max_pixels=max_pixels or BOMB_MAX_PIXELS)
    except DataError as e:
        raise InferenceError(str(e)) from e


def _regular(path: str | Path) -> Path:
    """``path`` if it is a regular file; one-line InferenceError otherwise, before anything opens it."""
    p = Path(path)
    kind = not_regular(p)
    if kind:
        raise InferenceError(f"{p}: {kind}, not a regular file: refused")
    if not p.exists():
        raise InferenceError(f"no such file: {p}")
    return p


def probe_file(path: Path) -> tuple[int, int, int, int]:
    """(height, width, channels, bytes per sample) from the header only."""
    path = _regular(path)
    try:
        with open(path, "rb") as f:
            return image_info(f.read(), str(path))
    except OSError as e:
        raise InferenceError(f"cannot read {path}: {e.strerror or e}") from e
    except DataError as e:
        raise InferenceError(str(e)) from e

