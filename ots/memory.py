"""Memory admission for inference: what is available, what one image needs, refuse before decoding."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ots.errors import InferenceError
from ots.tiling import DEFAULT_TILE, tile_starts

__all__ = ["available_memory", "check_memory", "estimate_memory", "is_out_of_memory"]

# how allocation failures read: Python's MemoryError aside, torch raises RuntimeError/OutOfMemoryError with these
_OOM_TEXT = ("out of memory", "can't allocate memory", "defaultcpuallocator", "cannot allocate memory")


def is_out_of_memory(error: BaseException) -> bool:
    """True for an allocation failure: MemoryError, CUDA's "out of memory", the CPU allocator's
    "DefaultCPUAllocator: can't allocate memory" -- the servers answer those 503 (retry later), not 500."""
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(t in text for t in _OOM_TEXT)


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

