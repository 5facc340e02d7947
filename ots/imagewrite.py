"""Image files out: PNG through maintained encoders (Pillow; OpenCV for 16-bit colour), other formats through
Pillow, written atomically. The decoder is :mod:`ots.imageio`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ots import atomic
from ots.errors import ConfigError, InferenceError

PNG_LEVEL = 6  # zlib level of PNG outputs: Pillow's and libpng's default


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8/uint16 gray, gray+alpha, RGB or RGBA image, through maintained encoders (zlib level 6,
    libpng's adaptive row filters): Pillow for 8 bit and 16-bit gray, OpenCV (``cv2.imencode``, as BasicSR and
    Real-ESRGAN write) for 16-bit colour, which Pillow cannot write. 16-bit gray+alpha, which neither writes, is
    stored as 16-bit RGBA (gray replicated): every value is kept, the decoded layout has 4 channels."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or a.dtype not in (np.uint8, np.uint16) or not a.size:
        raise ConfigError(f"cannot encode a {a.dtype} image of shape {np.asarray(image).shape} as PNG")
    c = a.shape[2]
    if a.dtype == np.uint8 or c == 1:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(a[:, :, 0] if c == 1 else a)).save(buf, format="PNG",
                                                                                compress_level=PNG_LEVEL)
        return buf.getvalue()
    import cv2  # lazily: only 16-bit colour needs it

    if c == 2:
        a = np.concatenate([a[:, :, :1]] * 3 + [a[:, :, 1:]], axis=2)
    bgr = cv2.cvtColor(a, cv2.COLOR_RGB2BGR if c == 3 else cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL])
    if not ok:  # pragma: no cover - libpng refuses nothing that passed the checks above
        raise ConfigError(f"OpenCV could not encode a {a.dtype} image of shape {a.shape} as PNG")
    return buf.tobytes()


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write PNG (any supported depth/layout) or, for 8-bit images, any format Pillow knows by suffix; atomic."""
    p = Path(path)
    a = np.asarray(image)
    if p.suffix.lower() == ".png":
        data = encode_png(a)
    else:
        if a.dtype != np.uint8:
            raise ConfigError(f"{p.suffix} output supports 8-bit images only; write a .png for {a.dtype}")
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
    try:
        return atomic.write_bytes(p, data)
    except OSError as e:
        raise InferenceError(f"cannot write {p}: {e.strerror or e}") from e
