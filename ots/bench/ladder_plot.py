"""The ladder's pictures: gap closed per rung and method (one figure), and one image grid per rung."""

from __future__ import annotations

from pathlib import Path

import torch


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
    from ots.imagewrite import write_image

    write_image(path, val.grid(columns, images, crop, title))
