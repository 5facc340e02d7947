"""One Tune trial: the solver from ``ots.solver.build_solver``, stepped, scored on an unpaired metric for Tune.

The metric is unpaired: SWD (weights-free, lower is better) -- or FID when the driver found the Inception
weights -- between T(fixed LR crops) and fixed HR crops drawn independently. Like ``OTSSolver.step`` the trial
holds no Ray or MLflow wiring beyond ``ray.tune.report``; the driver (:mod:`pipelines.tune`) records everything.
"""

from __future__ import annotations

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


def run_trial(config: dict, ctx: TrialContext) -> None:
    """Tune's function trainable: ``tune.max_steps`` solver steps, a metric report every ``report_every``."""
    import torch
    from ray import tune as rt

    from ots.config import OTSConfig
    from ots.data.loader import CropStream
    from ots.data.shard_reader import open_dataset
    from ots.solver import build_solver
    from ots.validation import crop_score, unpaired_crops

    device = torch.device(trial_device(ctx.resources))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("tune.resources_per_trial reserves a GPU but the trial sees no CUDA device "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    torch.set_num_threads(max(1, int(ctx.resources.get("CPU", 1) or 1)))
    cfg = OTSConfig.from_params(apply_overrides(ctx.params, sampled(config)))  # the sampled point, typed once
    train, seed, tune = cfg.train, cfg.seed, ctx.tune
    solver = build_solver(cfg.model, cfg.solver, device=device, distributed=False, seed=seed)
    dataset = open_dataset(train.dataset, verify=False)
    lr = CropStream(dataset, "lr", crop=train.lr_crop + 2 * cfg.solver.margin, batch_size=train.batch_size, seed=seed)
    hr = CropStream(dataset, "hr", crop=train.hr_crop, batch_size=train.batch_size, seed=seed)
    val_lr, val_hr, _ = unpaired_crops(dataset, tune.val_crops, train.lr_crop, train.hr_crop, seed)
    score = crop_score(ctx.metric, lambda: solver.map_for_eval, val_lr, val_hr, device, seed, tune.inception_weights)

    t0 = time.perf_counter()
    while solver.step_count < tune.max_steps:
        losses = solver.step(lr.draw, hr.draw)
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
