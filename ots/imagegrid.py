"""The one image grid: rows of same-role panels (uint8 HWC), white gaps, optional column labels on top.

Every grid people look at is made here: ``evaluate``'s (LR | bicubic | maps | HR), ``ots fit``'s, the train run's
MLflow images and the ladder's rungs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HEADER = 16  # px of label strip when columns are labelled


def nearest(a: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour x``scale`` (how an LR panel is shown beside HR-sized ones)."""
    return np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)


def center_crop(a: np.ndarray, size: int | None) -> np.ndarray:
    if not size:
        return a
    h, w = a.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return a[top : top + size, left : left + size]


def tensor_rgb8(t) -> np.ndarray:
    """One CHW (or 1CHW) tensor in [0, 1] as an HWC uint8 array."""
    t = t[0] if t.dim() == 4 else t
    return (t.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def panel_grid(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str] | None = None, gap: int = 4) -> np.ndarray:
    """uint8 RGB canvas: ``rows`` of HWC uint8 panels, ``gap`` px of white around each, ``labels`` (one per
    column) written in a :data:`HEADER`-px strip on top when given."""
    n_cols = max(len(r) for r in rows)
    cell_w = max(p.shape[1] for r in rows for p in r)
    cell_h = [max(p.shape[0] for p in r) for r in rows]
    header = HEADER if labels else 0
    width = n_cols * cell_w + (n_cols + 1) * gap
    height = header + sum(cell_h) + (len(rows) + 1) * gap
    canvas = np.full((height, width, 3), 255, np.uint8)
    y = header + gap
    for r, h in zip(rows, cell_h):
        for j, p in enumerate(r):
            x = gap + j * (cell_w + gap)
            canvas[y : y + p.shape[0], x : x + p.shape[1]] = p
        y += h + gap
    if not labels:
        return canvas
    from PIL import Image, ImageDraw

    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    for j, name in enumerate(labels):
        draw.text((gap + j * (cell_w + gap) + 2, 2), name, fill=(0, 0, 0))
    return np.asarray(img)
