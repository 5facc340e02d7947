"""The ladder's pictures: gap closed per rung and method (one figure), and one image grid per rung."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F


def plot_ladder(path: str | Path, ladder: dict) -> None:
    """Grouped bars: gap closed on PSNR and on SWD per rung, OTS beside the GAN (0 = bicubic, 1 = oracle)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rungs = list(ladder["rungs"])
    methods = sorted({m for r in ladder["rungs"].values() for m in r["gap_closed"]}, reverse=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(methods))
    for ax, metric in zip(axes, ("psnr", "swd")):
        for i, m in enumerate(methods):
            vals = [(ladder["rungs"][r]["gap_closed"].get(m) or {}).get(metric) for r in rungs]
            xs = [k + (i - (len(methods) - 1) / 2) * width for k in range(len(rungs))]
            bars = ax.bar(xs, [v if v is not None else 0.0 for v in vals], width, label=m.upper())
            for b, v in zip(bars, vals):
                ax.annotate("n/a" if v is None else f"{v:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom" if (v or 0) >= 0 else "top", fontsize=7)
        ax.axhline(1.0, color="g", ls="--", lw=1, label="oracle")
        ax.axhline(0.0, color="k", lw=1, label="bicubic")
        ax.set_xticks(range(len(rungs)), rungs)
        ax.set_ylabel(f"gap closed on {metric.upper()} (1 = oracle)")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Image ladder: {ladder['steps']} steps, seeds {ladder['seeds']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_rung_grid(path: str | Path, val, columns: dict[str, list[torch.Tensor]], title: str = "",
                   images: int = 3, crop: int = 128) -> None:
    """Rows of LR (nearest) | each column's output | HR: centre crops of the first val images, labelled."""
    import numpy as np
    from PIL import Image, ImageDraw

    names = ["LR", *columns, "HR"]
    rows = []
    for i in range(min(images, len(val.lr))):
        h = val.hr[i]
        H, W = h.shape[-2:]
        c = min(crop, H, W)
        y0, x0 = (H - c) // 2, (W - c) // 2
        near = F.interpolate((val.lr[i] + 1) / 2, scale_factor=val.scale, mode="nearest")
        cells = [near, *(col[i] for col in columns.values()), h]
        cells = [t[0, :, y0:y0 + c, x0:x0 + c].clamp(0, 1) for t in cells]
        gap = torch.ones(3, c, 2)
        rows.append(torch.cat([x for cell in cells for x in (cell, gap)][:-1], dim=2))
    label_h = 14
    img = torch.cat([torch.ones(3, label_h, rows[0].shape[-1])] + [torch.cat([r, torch.ones(3, 2, r.shape[-1])], 1)
                                                                    for r in rows], dim=1)
    pil = Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for k, name in enumerate(names):
        draw.text((k * (crop + 2) + 3, 1), name if k else f"{title}: LR", fill=(0, 0, 0))
    pil.save(path)
