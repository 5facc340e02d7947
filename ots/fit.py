"""One-process OTS training with validation curves, no Ray/MLflow (laptop, GPU box, the study); ``ots fit`` runs it.

The same solver, data and validator as the pipeline: ``build_solver`` from typed configs (:mod:`ots.config`),
``CropStream`` cursors over a shard dataset, :class:`ots.validation.Validation`. Every ``eval_every`` potential
steps (and at step 0) the map -- and its EMA, when kept -- upscales the full validation LR images; the curve
records their SWD against the validation HR images (an unpaired distribution metric: the selection metric) and
their PSNR (a paired check), beside bicubic's values. The best map by SWD is kept. Writes ``curve.json``,
``curve.png``, ``grid.png`` (LR | bicubic | map | HR) and ``best.pt`` / ``final.pt`` (checkpoints ``ots upscale``
and ``evaluate`` read).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from ots.config import OTSConfig
from ots.errors import NonFiniteLossError
from ots.models.wrapping import unwrap


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


def fit(cfg: OTSConfig, out: str | Path, steps: int | None = None, time_budget: float = 0.0,
        eval_every: int | None = None, device: str = "auto", seed: int | None = None, progress: bool = True,
        max_val_images: int = 0, val_patches: int | None = None) -> dict:
    """Train ``cfg`` on ``cfg.train.dataset`` for ``steps`` potential steps (default ``cfg.train.steps``) or until
    ``time_budget`` seconds have passed; returns (and writes) the curve."""
    from ots.checkpoint import save_checkpoint
    from ots.data.loader import CropStream
    from ots.data.shard_reader import open_dataset
    from ots.solver import build_solver
    from ots.validation import Validation

    train = cfg.train
    seed = cfg.seed if seed is None else int(seed)
    steps = int(steps or train.steps)
    eval_every = int(eval_every or train.eval_every)
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    solver = build_solver(cfg.model, cfg.solver, device=dev, distributed=False, seed=seed)
    dataset = open_dataset(train.dataset, verify=False)
    lr = CropStream(dataset, "lr", crop=train.lr_crop + 2 * cfg.solver.margin, batch_size=train.batch_size, seed=seed)
    hr = CropStream(dataset, "hr", crop=train.hr_crop, batch_size=train.batch_size, seed=seed)
    val = Validation(dataset, cfg.model.scale, dev, max_images=max_val_images, seed=seed, patches=val_patches)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    params = cfg.to_params()
    curve = {"params": params, "dataset": train.dataset, "seed": seed, "device": str(dev), "bicubic": val.bicubic,
             "history": [], "best": None, "stopped": None}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="fit", unit="step", disable=None)
    t0 = time.perf_counter()

    def evaluate(losses: dict) -> None:
        row = {"step": solver.step_count, "time_s": round(time.perf_counter() - t0, 1),
               **{k: float(v) for k, v in losses.items()}, **val(unwrap(solver.T))}
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
        losses = solver.step(lr.draw, hr.draw)
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
    val.save_grid(out / "grid.png", solver.map_for_eval)
    return curve

