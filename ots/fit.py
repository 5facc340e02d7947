"""One-process OTS training with validation curves, no Ray/MLflow (laptop, GPU box, the study); ``ots fit`` runs it.

The same solver and data as the pipeline: ``build_solver`` from params.yaml's ``model`` and ``solver``
sections, ``CropStream`` over a shard dataset. Every ``eval_every`` potential steps (and at step 0) the map --
and its EMA, when kept -- upscales the full validation LR images; the curve records their SWD against the
validation HR images (an unpaired distribution metric: the selection metric) and their PSNR (a paired check),
beside bicubic's values. The best map by SWD is kept. Writes ``curve.json``, ``curve.png``, ``grid.png``
(LR | bicubic | map | HR) and ``best.pt`` / ``final.pt`` (checkpoints ``ots upscale`` and ``evaluate`` read).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ots.errors import ConfigError, NonFiniteLossError


class Validation:
    """Full validation images, mapped by T and compared with the HR images (SWD) and pairwise (PSNR)."""

    def __init__(self, dataset: str, scale: int, device: torch.device, max_images: int = 0, seed: int = 0,
                 patches: int | None = None):
        from ots.data import read_val_pairs
        from ots.data.loader import crops_to_tensor

        pairs = read_val_pairs(dataset)
        if max_images:
            pairs = pairs[:max_images]
        if not pairs:
            raise ConfigError(f"{dataset}: no validation pairs to select the map by")
        self.names = [n for n, _, _ in pairs]
        self.lr = [crops_to_tensor(lr[None]) for _, lr, _ in pairs]
        self.hr = [(crops_to_tensor(hr[None]) + 1) / 2 for _, _, hr in pairs]
        from ots.metrics.swd import EVAL_PATCHES

        self.scale, self.device, self.seed, self.patches = scale, device, seed, patches or EVAL_PATCHES
        self.bicubic = self.score(self.bicubic_outputs())

    def bicubic_outputs(self, lr: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Bicubic x scale of the val LR images (or of ``lr``, inputs in [-1, 1]), on the uint8 grid: R(x)."""
        return [self._quantize(F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False))
                for x in (self.lr if lr is None else lr)]

    @staticmethod
    def _quantize(y: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> [0, 1] on the uint8 grid: what a user gets as a PNG."""
        return ((y.float().clamp(-1, 1) + 1) * 127.5).round() / 255.0

    @torch.no_grad()
    def outputs(self, net: torch.nn.Module) -> list[torch.Tensor]:
        was = net.training
        net.eval()
        out = [self._quantize(net(x.to(self.device)).cpu()) for x in self.lr]
        net.train(was)
        return out

    def score(self, outputs: list[torch.Tensor]) -> dict:
        """Colour-aware SWD against the HR set (the selection metric), mean PSNR, colour distance to HR."""
        from ots.metrics import color_distance, psnr, swd

        sr, hr = [o[0] for o in outputs], [h[0] for h in self.hr]
        s = swd(sr, hr, patches_per_image=self.patches, seed=self.seed)
        p = sum(psnr(o, h) for o, h in zip(outputs, self.hr)) / len(outputs)
        return {"swd": s["mean"], "psnr": p, "color": color_distance(sr, hr)}

    def __call__(self, net: torch.nn.Module) -> dict:
        return self.score(self.outputs(net))


def grid(path: str | Path, val: Validation, net: torch.nn.Module, columns: int = 4, crop: int = 192) -> None:
    """Rows of LR (nearest) | bicubic | map | HR, centre crops of the first validation images."""
    import numpy as np
    from PIL import Image

    outs = val.outputs(net)
    rows = []
    for x, o, h in list(zip(val.lr, outs, val.hr))[:columns]:
        near = F.interpolate((x + 1) / 2, scale_factor=val.scale, mode="nearest")
        (bic,) = val.bicubic_outputs([x])
        H, W = h.shape[-2:]
        c = min(crop, H, W)
        y0, x0 = (H - c) // 2, (W - c) // 2
        cells = [t[0, :, y0:y0 + c, x0:x0 + c].clamp(0, 1) for t in (near, bic, o, h)]
        gap = torch.ones(3, c, 2)
        rows.append(torch.cat([cells[0], gap, cells[1], gap, cells[2], gap, cells[3]], dim=2))
    width = max(r.shape[-1] for r in rows)
    rows = [F.pad(r, (0, width - r.shape[-1]), value=1.0) for r in rows]
    img = torch.cat([torch.cat([r, torch.ones(3, 2, width)], dim=1) for r in rows], dim=1)
    Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


def plot_curves(path: str | Path, curves: dict[str, dict], title: str = "") -> None:
    """Val SWD and PSNR vs step, one line per run/map, bicubic as a dashed horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "swd", "val SWD x1e3 (lower is better)"), (axes[1], "psnr", "val PSNR dB")):
        bic = None
        for name, c in curves.items():
            steps = [r["step"] for r in c["history"]]
            (line,) = ax.plot(steps, [r[key] for r in c["history"]], label=name, lw=1.2)
            if c["history"] and f"ema_{key}" in c["history"][0]:
                ax.plot(steps, [r[f"ema_{key}"] for r in c["history"]], ls=":", lw=1.6, color=line.get_color(),
                        label=f"{name} (EMA)")
            bic = c["bicubic"][key]
        if bic is not None:
            ax.axhline(bic, color="k", ls="--", lw=1, label="bicubic")
        ax.set_xlabel("potential step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fit(params: dict, dataset: str, out: str | Path, steps: int | None = None, time_budget: float = 0.0,
        eval_every: int | None = None, device: str = "auto", seed: int | None = None, progress: bool = True,
        max_val_images: int = 0, val_patches: int | None = None) -> dict:
    """Train from ``params`` (``model``, ``solver``, ``train`` sections) for ``steps`` potential steps or until
    ``time_budget`` seconds have passed; returns (and writes) the curve."""
    from ots.build import build_solver
    from ots.checkpoint import save_checkpoint
    from ots.data import CropStream
    from ots.solver_config import SolverConfig

    train = params.get("train") or {}
    seed = int(params.get("seed", 0) if seed is None else seed)
    steps = int(steps or train.get("steps", 100))
    eval_every = int(eval_every or train.get("eval_every", 25))
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    cfg = SolverConfig.from_dict({**(params.get("solver") or {}), "check_every": 0})
    solver = build_solver(params["model"], cfg, device=dev, distributed=False, seed=seed)
    scale = int(params["model"]["map"].get("scale", 4))
    B, lr_crop = int(train.get("batch_size", 8)), int(train.get("lr_crop", 16))
    lr = CropStream(dataset, "lr", crop=lr_crop + 2 * cfg.margin, batch_size=B, seed=seed)
    hr = CropStream(dataset, "hr", crop=lr_crop * scale, batch_size=B, seed=seed)
    pos = {"lr": 0, "hr": 0}

    def stream(name, s):
        def next_batch():
            pos[name] += 1
            return s.batch(pos[name] - 1)
        return next_batch

    next_lr, next_hr = stream("lr", lr), stream("hr", hr)
    val = Validation(dataset, scale, dev, max_images=max_val_images, seed=seed, patches=val_patches)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curve = {"params": params, "dataset": dataset, "seed": seed, "device": str(dev), "bicubic": val.bicubic,
             "history": [], "best": None, "stopped": None}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="fit", unit="step", disable=None)
    t0 = time.perf_counter()

    def evaluate(losses: dict) -> None:
        row = {"step": solver.step_count, "time_s": round(time.perf_counter() - t0, 1),
               **{k: float(v) for k, v in losses.items()}, **val(unwrap_map(solver))}
        if solver.T_ema is not None:
            row.update({f"ema_{k}": v for k, v in val(solver.T_ema).items()})
        curve["history"].append(row)
        (out / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")  # readable while it runs
        key = "ema_swd" if solver.T_ema is not None else "swd"
        if curve["best"] is None or row[key] < curve["best"]["swd"]:
            curve["best"] = {"step": row["step"], "swd": row[key],
                             "psnr": row["ema_psnr" if solver.T_ema is not None else "psnr"]}
            save_checkpoint(out / "best.pt", solver, config=params, extra={"selection": curve["best"]})
        if bar is not None:
            bar.set_postfix(swd=f"{row[key]:.1f}", bic=f"{val.bicubic['swd']:.1f}", psnr=f"{row['psnr']:.2f}")

    evaluate({})
    while solver.step_count < steps:
        losses = solver.step(next_lr, next_hr)
        if bar is not None:
            bar.update(1)
        done = time_budget and time.perf_counter() - t0 > time_budget
        if solver.step_count % eval_every == 0 or solver.step_count == steps or done:
            if not all(math.isfinite(float(v)) for v in losses.values()):
                raise NonFiniteLossError(f"non-finite loss at step {solver.step_count}: "
                                         f"{ {k: float(v) for k, v in losses.items()} }")
            evaluate(losses)
        if done:
            curve["stopped"] = f"time budget {time_budget:.0f} s reached at step {solver.step_count}"
            break
    if bar is not None:
        bar.close()
    curve["wall_s"] = round(time.perf_counter() - t0, 1)
    save_checkpoint(out / "final.pt", solver, config=params)
    (out / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    plot_curves(out / "curve.png", {out.name: curve})
    grid(out / "grid.png", val, solver.map_for_eval)
    return curve


def unwrap_map(solver) -> torch.nn.Module:
    from ots.models.wrapping import unwrap

    return unwrap(solver.T)
