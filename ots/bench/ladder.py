"""The image ladder: known-answer transports on real photos (the image counterpart of the Gaussian benchmark).

Each rung is one LR degradation with a known inverse (:mod:`ots.data.degradations`), built from real photos as
content-matched checkerboard cells (HR cells and degraded LR cells of the same photos, val photos held out).
Per rung, OTS and the content-regularized GAN train on the same data, model and budget (:func:`ots.fit.fit`,
one process, one thread each), and the final map (its EMA when kept) is scored on the val photos beside bicubic
and the *oracle* (bicubic of the LR with the degradation undone): PSNR, colour-aware SWD, the colour distance to
HR and ``grid_rms`` (the period-2 grid T(x) - R(x) carries). ``gap_closed = (method - bicubic) / (oracle -
bicubic)`` per metric: 1 = the oracle's value, 0 = bicubic's, negative = worse than bicubic.
"""

from __future__ import annotations

import copy
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ots.data.config import DataConfig
from ots.data.degradations import DEGRADATIONS, get_degradation
from ots.errors import ConfigError

RUNGS = ("cast", "noise10", "blur", "jpeg", "mix")
METHODS = ("ots", "gan")
SCORED = ("psnr", "swd", "color", "grid_rms")


@dataclass(frozen=True)
class RungData:
    """What one rung's photos gave: the AIM19-layout folder, its shard dataset and the val oracle's LR images."""

    rung: str
    src: str
    dataset: str


@dataclass(frozen=True)
class LadderJob:
    """One training run of the ladder: a method on a rung with a seed."""

    rung: str
    method: str
    seed: int
    dataset: str
    out: str
    params: dict = field(hash=False)
    steps: int = 300
    eval_every: int = 0
    val_patches: int | None = None  # SWD patches per val image and level (None: the evaluation default)


def method_params(params: dict, method: str) -> dict:
    """The recipe for ``method``: ``params`` as is for OTS; for the GAN, ``baseline.solver`` merged over
    ``solver`` (same model, data, steps and k_T: the pipeline's `train_gan` stage does the same)."""
    p = copy.deepcopy({k: v for k, v in params.items() if k != "baseline"})
    if method == "gan":
        p["solver"] = {**p.get("solver", {}), "kind": "gan", **((params.get("baseline") or {}).get("solver") or {})}
    elif method != "ots":
        raise ConfigError(f"unknown ladder method {method!r}; choose from {', '.join(METHODS)}")
    else:
        p["solver"] = {**p.get("solver", {}), "kind": "ots"}
    return p


def build_rung(rung: str, photos: str, work: str | Path, max_side: int = DataConfig.max_side,
               val_crop: int = DataConfig.val_crop, cell: int = DataConfig.cell, progress: bool = False) -> RungData:
    """The rung's AIM19-layout folder and shards under ``work/<rung>`` (reused when built with the same inputs)."""
    from ots.data.demo import build_demo
    from ots.data.shards import build_shards

    get_degradation(rung)
    src, shards = Path(work) / rung / "src", Path(work) / rung / "shards"
    build_demo(src, photos=photos, seed=0, max_side=max_side, val_crop=val_crop, progress=progress,
               split="regions", cell=cell, degradation=rung)
    build_shards(src, str(shards), progress=progress)
    return RungData(rung, str(src), str(shards))


def oracle_lr(data: RungData, names: list[str], lr: list[np.ndarray], hr: list[np.ndarray]) -> list[np.ndarray]:
    """The val LR images with the rung's degradation undone (what the oracle upsamples)."""
    meta = json.loads((Path(data.src) / "degradation.json").read_text())["val"]
    oracle = get_degradation(data.rung).oracle
    return [oracle(h, x, meta[Path(n).stem]) for n, x, h in zip(names, lr, hr)]


def _uint8_to_input(a: np.ndarray) -> torch.Tensor:
    from ots.data.loader import crops_to_tensor

    return crops_to_tensor(np.array(a)[None])  # a writable copy (Pillow arrays are read-only)


def reference_scores(data: RungData, val) -> dict:
    """Bicubic and oracle on the val photos, with the same scorer the trained maps get."""
    from ots.data import read_val_pairs
    from ots.metrics import grid_rms

    pairs = read_val_pairs(data.dataset)[: len(val.lr)]
    names, lrs, hrs = [p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs]
    bicubic = val.bicubic_outputs()
    oracle = val.bicubic_outputs([_uint8_to_input(a) for a in oracle_lr(data, names, lrs, hrs)])
    out = {}
    for name, outputs in (("bicubic", bicubic), ("oracle", oracle)):
        out[name] = {**val.score(outputs), "grid_rms": grid_rms([o[0] for o in outputs], [b[0] for b in bicubic])}
    return out


def score_map(net: torch.nn.Module, val) -> dict:
    """A trained map on the val photos: PSNR, colour-aware SWD, colour distance, and its period-2 grid."""
    from ots.metrics import grid_rms

    outputs = val.outputs(net)
    return {**val.score(outputs), "grid_rms": grid_rms([o[0] for o in outputs],
                                                       [b[0] for b in val.bicubic_outputs()])}


def run_job(job: LadderJob) -> dict:
    """Train one method on one rung (one CPU thread unless on a GPU) and score its final map."""
    from ots.checkpoint import load_map
    from ots.config import OTSConfig
    from ots.fit import fit
    from ots.validation import Validation

    torch.set_num_threads(1)
    params = method_params(job.params, job.method)
    cfg = OTSConfig.from_params({**params, "train": {**(params.get("train") or {}), "dataset": job.dataset}})
    curve = fit(cfg, job.out, steps=job.steps, eval_every=job.eval_every or max(1, job.steps // 4),
                seed=job.seed, progress=False, val_patches=job.val_patches)
    dev = torch.device(curve["device"])
    val = Validation(job.dataset, cfg.model.scale, dev, seed=0, patches=job.val_patches)
    scores = score_map(load_map(Path(job.out) / "final.pt", dev), val)
    return {"rung": job.rung, "method": job.method, "seed": job.seed, "out": job.out, "wall_s": curve["wall_s"],
            **scores, "curve": [{k: r[k] for k in r if k in ("step", "swd", "psnr", "ema_swd", "ema_psnr")}
                                for r in curve["history"]]}


def gap_closed(method: float, bicubic: float, oracle: float) -> float | None:
    """(method - bicubic) / (oracle - bicubic): 1 = the oracle, 0 = bicubic (the sign is right for both
    higher-is-better PSNR and lower-is-better SWD). None when the oracle does not differ from bicubic."""
    span = oracle - bicubic
    return None if abs(span) < 1e-9 else (method - bicubic) / span


def summarise(rung: str, refs: dict, runs: list[dict]) -> dict:
    """One rung's entry of ladder.json: every method's mean (and spread over seeds), and the gap closed."""
    methods = {name: {**{k: round(v, 4) for k, v in s.items()}, "psnr_std": 0.0, "swd_std": 0.0}
               for name, s in refs.items()}
    for m in METHODS:
        mine = [r for r in runs if r["method"] == m]
        if not mine:
            continue
        row = {k: round(statistics.fmean(r[k] for r in mine), 4) for k in SCORED}
        for k in ("psnr", "swd"):
            row[f"{k}_std"] = round(statistics.pstdev([r[k] for r in mine]), 4)
            row[f"{k}_seeds"] = [round(r[k], 4) for r in mine]
        methods[m] = row
    gaps = {}
    for m in METHODS:
        if m in methods:
            gaps[m] = {}
            for k in ("psnr", "swd"):
                g = gap_closed(methods[m][k], methods["bicubic"][k], methods["oracle"][k])
                gaps[m][k] = None if g is None else round(g, 4)
    return {"degradation": {"name": rung, "about": DEGRADATIONS[rung].about}, "methods": methods,
            "gap_closed": gaps}
