"""The one JSON image convention of both servers (`mlflow models serve` and `python -m pipelines.serving`).

Requests carry each image in the ``image`` field as **standard base64** (RFC 4648 section 4: ``A-Z a-z 0-9 + /``,
``=`` padding), optionally after a data-URI prefix (``data:image/png;base64,``, what a browser's
``FileReader.readAsDataURL`` gives); whitespace and line breaks are ignored (``base64`` without ``-w0`` wraps at
76 columns). Anything else -- the URL-safe alphabet, missing padding, stray characters -- is a 400 with one line.
Answers are ``{"image": "<standard base64 PNG, padded, one line, no prefix>", "height": H, "width": W}`` from
both servers: :func:`encode_b64` writes them (MLflow's own encoder for ``bytes`` would wrap lines every 76
characters, so the pyfunc hands MLflow the string).
"""

from __future__ import annotations

import base64
import binascii
import re

from ots.errors import DataError

__all__ = ["DATA_URI_PREFIX", "decode_b64", "encode_b64", "max_b64_chars"]

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
