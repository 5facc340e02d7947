"""One Tune trial: the solver from ``ots.build.build_solver``, stepped, scored on an unpaired metric for Tune.

The metric is unpaired: SWD (weights-free, lower is better) -- or FID when the driver found the Inception
weights -- between T(fixed LR crops) and fixed HR crops drawn independently. Like ``OTSSolver.step`` the trial
holds no Ray or MLflow wiring beyond ``ray.tune.report``; the driver (:mod:`pipelines.tune`) records everything.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass

from ots.errors import ConfigError, NonFiniteLossError
from pipelines.tune.space import TuneConfig, apply_overrides, sampled

NONFINITE_VALUE = 1e12  # reported when a trial's losses go NaN/inf (then the trial stops)


@dataclass(frozen=True)
class TrialContext:
    """What every trial shares, fixed by the driver: the base params, the search config, the metric, resources."""

    params: dict        # resolved training params (the dataset an absolute path or URI)
    tune: TuneConfig
    metric: str         # the metric actually used (fid may have fallen back to swd)
    resources: dict     # Ray resources reserved per trial (``trial_resources``)


def trial_device(resources: dict) -> str:
    """Where a trial trains: the GPU Tune reserved for it (Ray sets CUDA_VISIBLE_DEVICES to it), else the CPU."""
    return "cuda" if resources.get("GPU", 0) > 0 else "cpu"


def unpaired_val_crops(uri: str, n: int, lr_crop: int, hr_crop: int, seed: int):
    """(LR crops, HR crops, source): ``n`` fixed random crops of each domain, drawn independently of each other
    -- from the val pairs' LR and HR images, else (no val pairs large enough) from the training domains."""
    import numpy as np

    from ots.data import CropStream, read_val_pairs
    from ots.data.loader import crops_to_tensor, random_crops

    pairs = read_val_pairs(uri)
    lrs = [lr for _, lr, _ in pairs if min(lr.shape[:2]) >= lr_crop]
    hrs = [hr for _, _, hr in pairs if min(hr.shape[:2]) >= hr_crop]
    if lrs and hrs:
        lr = random_crops(lrs, lr_crop, n, np.random.default_rng([seed, 1]), augment=False)
        hr = random_crops(hrs, hr_crop, n, np.random.default_rng([seed, 2]), augment=False)
        return crops_to_tensor(lr), crops_to_tensor(hr), "val"
    lr = CropStream(uri, "lr", crop=lr_crop, batch_size=n, seed=seed + 7919, augment=False).batch(0)
    hr = CropStream(uri, "hr", crop=hr_crop, batch_size=n, seed=seed + 104729, augment=False).batch(0)
    return lr, hr, "train"


def _scorer(metric: str, solver, val_lr, val_hr, device, seed: int, inception_weights):
    """A function of no arguments: the metric of the solver's current (eval) map on the fixed crops."""
    import torch

    from ots import metrics

    inception = metrics.build_inception(inception_weights) if metric == "fid" else None

    def score() -> float:
        T = solver.map_for_eval
        was = T.training
        T.eval()
        with torch.no_grad():  # the map on the trial's device; the metric on the host (this is a host sync)
            sr = T(val_lr.to(device)).float().clamp(-1, 1).cpu()
        T.train(was)
        if metric == "fid":
            return float(metrics.fid(inception, (sr + 1) / 2, (val_hr + 1) / 2))
        return float(metrics.swd(sr, val_hr, seed=seed)["mean"])

    return score


def run_trial(config: dict, ctx: TrialContext) -> None:
    """Tune's function trainable: ``tune.max_steps`` solver steps, a metric report every ``report_every``."""
    import torch
    from ray import tune as rt

    from ots.build import build_solver
    from ots.data import CropStream
    from pipelines.train_config import solver_config

    device = torch.device(trial_device(ctx.resources))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("tune.resources_per_trial reserves a GPU but the trial sees no CUDA device "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    torch.set_num_threads(max(1, int(ctx.resources.get("CPU", 1) or 1)))
    params = apply_overrides(ctx.params, sampled(config))
    train, seed, tune = params["train"], int(params["seed"]), ctx.tune
    solver = build_solver(params["model"], solver_config(params["solver"]), device=device, distributed=False, seed=seed)

    B, uri = int(train["batch_size"]), train["dataset"]
    lr_stream = CropStream(uri, "lr", crop=train["lr_crop"] + 2 * solver.cfg.margin, batch_size=B, seed=seed)
    hr_stream = CropStream(uri, "hr", crop=train["hr_crop"], batch_size=B, seed=seed)
    lr_batches = (lr_stream.batch(b) for b in itertools.count())  # batch b is a pure function of (seed, b)
    hr_batches = (hr_stream.batch(b) for b in itertools.count())
    val_lr, val_hr, _ = unpaired_val_crops(uri, tune.val_crops, train["lr_crop"], train["hr_crop"], seed)
    score = _scorer(ctx.metric, solver, val_lr, val_hr, device, seed, tune.inception_weights)

    t0 = time.perf_counter()
    while solver.step_count < tune.max_steps:
        losses = solver.step(lambda: next(lr_batches), lambda: next(hr_batches))
        step = solver.step_count
        if step % tune.report_every and step != tune.max_steps:
            continue
        report = {"step": step, "elapsed_s": time.perf_counter() - t0, "device": str(device)}
        try:
            solver.check_finite()  # a host sync: once per report
        except NonFiniteLossError as e:
            rt.report({**report, ctx.metric: NONFINITE_VALUE, "nonfinite": str(e)})
            return
        rt.report({**report, **{k: float(v) for k, v in losses.items()}, ctx.metric: score()})
