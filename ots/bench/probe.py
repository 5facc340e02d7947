"""The separability probe: can the potential's architecture tell R(x) from y at all, within a budget?

The potential network (``model.potential``) is trained *alone* as a domain classifier -- logistic loss, HR crops
y labelled 1, R(x) = bicubic x scale of LR crops labelled 0, with the solver's margin cut off as in training --
with the solver's potential learning rate and betas. Every ``eval_every`` steps its pairwise accuracy
P(f(y) > f(R x)) (the ROC AUC: a constant shift of f, which the OT dual ignores, does not change it) is measured
on held-out crops: R(val LR) vs val HR (photos it never trained on). Accuracy near 0.5 after the budget means no
schedule of the max-min game can move T toward Q along that degradation: the potential cannot see it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ots.config import OTSConfig


def _val_crops(dataset: str, lr_crop: int, scale: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random LR crops of the val LR images (with margin room) and ``n`` HR crops of the val HR images."""
    from ots.data import read_val_pairs
    from ots.data.loader import crops_to_tensor, random_crops

    pairs = read_val_pairs(dataset)
    rng = np.random.default_rng(seed)
    lr = random_crops([p[1] for p in pairs], lr_crop, n, rng, augment=False)
    hr = random_crops([p[2] for p in pairs], lr_crop * scale, n, rng, augment=False)
    return crops_to_tensor(lr), crops_to_tensor(hr)


def probe_rung(dataset: str, cfg: OTSConfig, steps: int = 300, seed: int = 0, eval_every: int = 25,
               n_val: int = 256) -> dict:
    """Train the potential alone on one dataset's R(x) vs y; accuracy (and mean logit gap) vs steps."""
    from ots.data.loader import CropStream
    from ots.models import build_potential

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    scale, B, lr_crop, m = cfg.model.scale, cfg.train.batch_size, cfg.train.lr_crop, cfg.solver.margin
    f = build_potential(cfg.model.potential)
    opt = torch.optim.Adam(f.parameters(), lr=cfg.solver.lr_potential, betas=cfg.solver.betas)
    lr_stream = CropStream(dataset, "lr", crop=lr_crop + 2 * m, batch_size=B, seed=seed)
    hr_stream = CropStream(dataset, "hr", crop=lr_crop * scale, batch_size=B, seed=seed + 1)

    def reference(x: torch.Tensor) -> torch.Tensor:
        r = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
        c = m * scale
        return r[..., c:-c, c:-c] if c else r

    vx, vy = _val_crops(dataset, lr_crop + 2 * m, scale, n_val, seed)
    vr = reference(vx)
    vy = vy[..., : vr.shape[-2], : vr.shape[-1]]
    history = []

    def evaluate(step: int) -> None:
        f.eval()
        with torch.no_grad():
            fr, fy = f(vr), f(vy)
        f.train()
        # Pairwise accuracy P(f(y) > f(R x)) (the ROC AUC): like the OT dual, blind to a constant shift of f.
        acc = float((fy[:, None] > fr[None, :]).float().mean())
        history.append({"step": step, "accuracy": round(acc, 4), "gap": round(float(fy.mean() - fr.mean()), 4)})

    evaluate(0)
    for step in range(1, steps + 1):
        x, y = reference(lr_stream.draw()), hr_stream.draw()
        loss = F.softplus(f(x)).mean() + F.softplus(-f(y)).mean()  # logistic: y -> 1, R(x) -> 0
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            evaluate(step)
    return {"accuracy": [h["accuracy"] for h in history], "history": history}


def plot_probe(path: str | Path, result: dict) -> None:
    """Held-out accuracy vs steps, one line per rung; 0.5 = the potential cannot tell the domains apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for rung, r in result["rungs"].items():
        ax.plot([h["step"] for h in r["history"]], r["accuracy"], label=rung)
    ax.axhline(0.5, color="k", ls="--", lw=1, label="chance")
    ax.set_xlabel("classifier step")
    ax.set_ylabel("held-out accuracy, R(x) vs y")
    ax.set_ylim(0.4, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
