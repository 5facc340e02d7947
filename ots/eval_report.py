"""Evaluation report files: metrics.json (DVC metrics), report.json, metrics.md, per_image.csv and grid.png."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ots.atomic import write_bytes, write_text
from ots.evaluate import HIGHER_IS_BETTER, LABELS, METRICS, Pair, as_rgb8, check_pairs
from ots.imagegrid import center_crop, nearest, panel_grid
from ots.imagewrite import encode_png

__all__ = ["grid_image", "markdown_table", "metrics_json", "per_image_csv", "report_json", "save_grid",
           "write_report"]


def _fmt(v: Any, metric: str) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4f}" if metric in ("ssim", "lpips") else f"{v:.2f}"


def markdown_table(results: Mapping[str, Any]) -> str:
    """The methods x metrics table (best value per column in bold), plus the reasons for unavailable metrics."""
    methods = results["methods"]
    lines = ["| method | " + " | ".join(LABELS[m] for m in METRICS) + " |",
             "|---|" + "---:|" * len(METRICS)]
    best = {}
    for m in METRICS:
        vals = [v[m] for v in methods.values() if v.get(m) is not None]
        if len(vals) > 1:
            best[m] = max(vals) if HIGHER_IS_BETTER[m] else min(vals)
    for name, vals in methods.items():
        cells = []
        for m in METRICS:
            cell = _fmt(vals.get(m), m)
            cells.append(f"**{cell}**" if m in best and vals.get(m) == best[m] else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"{results.get('n_images', '?')} validation images, x{results.get('scale', '?')}, full images"
                 + (f" (tiles of {results['tiling']['tile']} LR px, overlap {results['tiling']['overlap']})"
                    if results.get("tiling", {}).get("tile") else "") + ".")
    fid = results.get("fidelity") or {}
    if fid.get("y_channel") or fid.get("crop_border"):
        lines.append(f"PSNR/SSIM on {'the Y channel' if fid.get('y_channel') else 'RGB'}, "
                     f"{fid.get('crop_border', 0)} border px shaved.")
    for metric, reason in sorted(results.get("unavailable", {}).items()):
        lines.append(f"- {metric} unavailable: {reason}")
    return "\n".join(lines) + "\n"


def grid_image(pairs: Sequence[Pair], outputs: Mapping[str, Sequence[np.ndarray]], *, max_images: int = 4,
               crop: int | None = 256, gap: int = 4) -> np.ndarray:
    """uint8 RGB grid: one row per image, columns LR (nearest) | bicubic | <maps...> | HR, labelled on top.

    Each panel is the same centre crop (``crop`` HR px) of the full image, so details stay visible.
    """
    pairs = check_pairs(pairs)[:max_images]
    methods = ["bicubic"] + [m for m in outputs if m != "bicubic"]
    rows = []
    for i, (_, lr, hr) in enumerate(pairs):
        scale = hr.shape[0] // lr.shape[0]
        panels = [nearest(lr, scale)] + [as_rgb8(outputs[m][i]) for m in methods] + [hr]
        rows.append([center_crop(p, crop) for p in panels])
    return panel_grid(rows, ["LR", *methods, "HR"], gap=gap)


def save_grid(path: str | Path, pairs: Sequence[Pair], outputs: Mapping[str, Sequence[np.ndarray]], *,
              max_images: int = 4, crop: int | None = 256) -> Path:
    """Write :func:`grid_image` as a PNG (temp name + rename)."""
    return write_bytes(path, encode_png(grid_image(pairs, outputs, max_images=max_images, crop=crop)))


def _numbers(d: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            sub = _numbers(v)
            if sub:
                out[k] = sub
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = v
    return out


def metrics_json(results: Mapping[str, Any]) -> dict[str, Any]:
    """Numbers only -- what ``dvc metrics show/diff`` compares: ``n_images``, ``scale``, ``fid_crop`` and
    ``methods.<method>.<metric>``. Unavailable metrics are left out (their reasons are in ``report.json``)."""
    return _numbers({k: v for k, v in results.items() if k in ("n_images", "scale", "fid_crop", "methods")})


def report_json(results: Mapping[str, Any]) -> dict[str, Any]:
    """The whole summary beside the metrics (``report.json``): the numbers, ``null`` for unavailable metrics,
    their reasons (``unavailable``), per-level SWD, tiling and the checkpoints scored."""
    return {k: v for k, v in results.items() if k != "per_image"}


def per_image_csv(results: Mapping[str, Any]) -> str:
    rows = results.get("per_image", [])
    if not rows:
        return ""
    cols = list(rows[0])
    lines = [",".join(cols)]
    for r in rows:
        lines.append(",".join("" if r.get(c) is None else (f"{r[c]:.6f}" if isinstance(r[c], float) else str(r[c]))
                              for c in cols))
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, pairs: Sequence[Pair], outputs: Mapping[str, Sequence[np.ndarray]],
                 results: Mapping[str, Any], *, grid_images: int = 4, grid_crop: int | None = 256,
                 metrics_file: str | Path | None = None, per_image_file: str | Path | None = None) -> dict[str, Path]:
    """``metrics.json`` (numbers only: DVC metrics), ``report.json`` (the rest of the summary), ``metrics.md``,
    ``per_image.csv`` (DVC plots) and ``grid.png`` in ``out_dir``; ``metrics_file``/``per_image_file`` put the
    two files DVC reads elsewhere (the pipeline keeps them in git-tracked ``metrics/``)."""
    out = Path(out_dir)
    files = {
        "metrics": write_text(metrics_file or out / "metrics.json",
                              json.dumps(metrics_json(results), indent=2, sort_keys=True) + "\n"),
        "report": write_text(out / "report.json", json.dumps(report_json(results), indent=2, sort_keys=True) + "\n"),
        "table": write_text(out / "metrics.md", markdown_table(results)),
        "per_image": write_text(per_image_file or out / "per_image.csv", per_image_csv(results)),
        "grid": save_grid(out / "grid.png", pairs, outputs, max_images=grid_images, crop=grid_crop),
    }
    return files
