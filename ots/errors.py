"""One exception family, so every door can turn bad input into a one-line message (`one_line`)."""

import re

from ots.redaction import redact_uri


class OTSError(Exception):
    """A user-facing error: the message is one line that says what is wrong and where."""


class ConfigError(OTSError, ValueError):
    """Bad configuration: unknown names, invalid values, inconsistent sizes."""


class WeightsNotFoundError(OTSError, FileNotFoundError):
    """Pretrained backbone weights could not be resolved: not found, offline, or the download failed."""


class NonFiniteLossError(OTSError, FloatingPointError):
    """A loss became NaN/inf; names the step and the loss term."""


class CheckpointError(OTSError):
    """A checkpoint is missing, corrupt, or belongs to another architecture."""


class StorageError(OTSError, OSError):
    """A storage location cannot be used: unreachable endpoint, missing bucket/credentials, no permission."""


class DataError(OTSError, ValueError):
    """Bad input data or a damaged dataset: corrupt images, wrong sizes, missing manifest, checksum mismatch."""


class InferenceError(OTSError):
    """Inference input/output problems: missing or unreadable images, unwritable outputs, bad model output."""


def one_line(error: BaseException | str, limit: int | None = None) -> str:
    """The message every door prints for ``error``: one line (whitespace collapsed), credentials in URIs
    masked, no object reprs (Pillow names its buffer ``<_io.BytesIO object at 0x…>``), optionally cut at
    ``limit`` characters. Used as ``print(f"{door}: error: {one_line(e)}")``."""
    text = re.sub(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>", "", " ".join(str(error).split())).strip()
    text = redact_uri(text)
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"
