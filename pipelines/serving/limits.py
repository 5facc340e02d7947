"""What one served request may ask for: the defaults of both servers and the bounded server's :class:`ServeLimits`.

These are serving limits (the ``serve:`` params, the CLI flags and ``model_config`` override them), not
:data:`ots.imageio.BOMB_MAX_PIXELS`, the decompression-bomb guard of every decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_INPUT_BYTES", "MAX_INPUT_PIXELS", "MAX_REQUEST_IMAGES", "ServeLimits"]

MAX_INPUT_PIXELS = 2048 * 2048  # input (LR) pixels per image
MAX_INPUT_BYTES = 20 * 1024 * 1024  # encoded bytes per image
MAX_REQUEST_IMAGES = 8  # images per request


@dataclass(frozen=True)
class ServeLimits:
    """The bounds of ``python -m pipelines.serving`` (:mod:`pipelines.serving.app`)."""

    max_concurrent: int = 2
    max_images: int = MAX_REQUEST_IMAGES
    max_pixels: int = MAX_INPUT_PIXELS  # per image (LR pixels)
    max_request_pixels: int = 2 * MAX_INPUT_PIXELS  # per request, all images together
    max_bytes: int = MAX_INPUT_BYTES  # per encoded image
    max_body_bytes: int = 64 * 1024 * 1024
    memory_budget: int | None = None  # bytes; default: half of the memory available at start
    timeout_s: float = 60.0

    def validate(self) -> ServeLimits:
        from ots.errors import ConfigError

        for k in ("max_concurrent", "max_images", "max_pixels", "max_request_pixels", "max_bytes", "max_body_bytes"):
            if int(getattr(self, k)) < 1:
                raise ConfigError(f"serve limit {k} must be >= 1, got {getattr(self, k)}")
        if self.timeout_s <= 0 or (self.memory_budget is not None and self.memory_budget <= 0):
            raise ConfigError("serve timeout and memory budget must be positive")
        return self
