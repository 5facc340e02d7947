"""The request payload of both servers (`mlflow models serve` and `python -m pipelines.serving`): the one JSON
image convention and :func:`payload_image` (a payload value -> the array to upscale, within the size limits).

Requests carry each image in the ``image`` field as **standard base64** (RFC 4648 section 4: ``A-Z a-z 0-9 + /``,
``=`` padding), optionally after a data-URI prefix (``data:image/png;base64,``, what a browser's
``FileReader.readAsDataURL`` gives); whitespace and line breaks are ignored (``base64`` without ``-w0`` wraps at
76 columns). Anything else -- the URL-safe alphabet, missing padding, stray characters -- is a 400 with one line.
Answers are ``{"image": "<standard base64 PNG, padded, one line, no prefix>", "height": H, "width": W}`` from
both servers: :func:`encode_b64` writes them (MLflow's own encoder for ``bytes`` would wrap lines every 76
characters, so the pyfunc hands MLflow the string).

The pixels are decoded by :func:`ots.imageio.decode_image`, the decoder ``prepare`` and ``ots upscale`` share
(16-bit gray, RGB and RGBA PNGs stay 16-bit); what is here is only about the payload: base64, bytes, sizes.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import numpy as np

from ots.errors import DataError
from ots.imageio import decode_image
from pipelines.serving.limits import MAX_INPUT_BYTES, MAX_INPUT_PIXELS
from pipelines.serving.scoring_server import bad_input

__all__ = ["DATA_URI_PREFIX", "decode_b64", "encode_b64", "max_b64_chars", "payload_image"]

DATA_URI_PREFIX = re.compile(r"\s*data:[\w.+-]+/[\w.+-]+(;[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)


def max_b64_chars(max_bytes: int) -> int:
    """The longest ``image`` string that can hold ``max_bytes`` bytes (line breaks and a prefix allowed): longer
    strings are refused before decoding."""
    return (max_bytes + 2) // 3 * 4 * 78 // 76 + 256


def decode_b64(text: str, where: str = "image") -> bytes:
    """``image`` text -> bytes, by the convention above; DataError (one line) when it is not that."""
    m = DATA_URI_PREFIX.match(text)
    body = "".join((text[m.end():] if m else text).split())
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DataError(f"{where}: not valid base64 ({e}; expected standard base64 with '=' padding, optionally "
                        "after a data:image/...;base64, prefix)") from e


def encode_b64(data: bytes) -> str:
    """Bytes -> the answers' form: standard base64, padded, one line."""
    return base64.b64encode(data).decode("ascii")


def payload_image(value: Any, *, max_bytes: int = MAX_INPUT_BYTES, max_pixels: int = MAX_INPUT_PIXELS,
                  where: str = "image") -> np.ndarray:
    """One payload value -- bytes, a base64 str (the convention above), or a uint8|uint16 array from Python --
    -> the (H, W, C) array to upscale, within ``max_bytes`` and ``max_pixels``; MlflowException (400) otherwise."""
    if isinstance(value, np.ndarray) and value.dtype != object:
        return _check_array(value, max_pixels, where)
    if isinstance(value, str):
        if len(value) > max_b64_chars(max_bytes):
            raise bad_input(f"{where}: payload larger than the limit of {max_bytes} bytes")
        try:
            value = decode_b64(value, where)
        except DataError as e:
            raise bad_input(str(e)) from e
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise bad_input(f"{where}: expected PNG/JPEG bytes (base64 in JSON), got {type(value).__name__}")
    if not value:
        raise bad_input(f"{where}: empty image (0 bytes)")
    if len(value) > max_bytes:
        raise bad_input(f"{where}: {len(value)} bytes, larger than the limit of {max_bytes} bytes")
    try:  # the one decoder: (H, W, 1..4) uint8/uint16, at most max_pixels (checked from the header)
        return decode_image(value, where, max_pixels=max_pixels)
    except DataError as e:
        msg = str(e)
        if "too large" in msg or "empty" in msg:
            raise bad_input(msg) from e
        raise bad_input(f"{where}: not a decodable image ({msg.split(': ', 1)[-1]})") from e


def _check_array(a: np.ndarray, max_pixels: int, where: str) -> np.ndarray:
    if a.dtype not in (np.uint8, np.uint16):
        raise bad_input(f"{where}: arrays must be uint8 or uint16, got {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or min(a.shape[:2]) < 1:
        raise bad_input(f"{where}: expected an (H, W[, 1|2|3|4]) image, got shape {a.shape}")
    if a.shape[0] * a.shape[1] > max_pixels:
        raise bad_input(f"{where}: image is {a.shape[1]}x{a.shape[0]} = {a.shape[0] * a.shape[1]} pixels, "
                        f"more than the limit of {max_pixels}")
    return a
