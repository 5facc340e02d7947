"""Rank 0's tracking: the validator's scores, MLflow metrics (each step logged once) and image grids, throughput."""

from __future__ import annotations

import time

from ots.config import TrainConfig


class Throughput:
    """Crops/s and steps/s since the last call to ``rates``."""

    def __init__(self, crops_per_step: int):
        self.crops_per_step, self.t, self.steps = crops_per_step, time.perf_counter(), 0

    def tick(self) -> None:
        self.steps += 1

    def rates(self) -> dict:
        dt = max(time.perf_counter() - self.t, 1e-9)
        out = {"crops_per_s": self.steps * self.crops_per_step / dt, "steps_per_s": self.steps / dt}
        self.t, self.steps = time.perf_counter(), 0
        return out


class Tracker:
    """Rank 0's side: the validator's scores and the image grids to MLflow (each step logged once, replays
    compared), progress lines."""

    def __init__(self, validation, train: TrainConfig, run_id: str, tracking_uri: str, resumed_from: int = 0,
                 world: int = 1):
        from mlflow import MlflowClient

        from ots.data.loader import CropStream
        from ots.validation import val_crops
        from pipelines.mlflow_access import no_credential_links

        self.validation, self.train, self.run_id = validation, train, run_id
        no_credential_links(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        # what this run logged before (a restart, or a driver killed before its first checkpoint): not re-logged
        self.logged = {m.step: m.value for m in self.client.get_metric_history(run_id, "loss_map")}
        self.last_logged, self.replay_diff = max(self.logged, default=0), 0.0
        if resumed_from:
            self.client.set_tag(run_id, "resumed_from_step", str(resumed_from))
            print(f"train: resumed from step {resumed_from} (attempt with {world} worker(s))", flush=True)
        dataset, seed = validation.dataset, validation.seed
        self.fixed_lr = CropStream(dataset, "lr", crop=train.lr_crop, batch_size=max(1, train.image_count),
                                   seed=seed + 7919, augment=False).batch(0)[: train.image_count]
        self.val_lr, self.val_hr = val_crops(validation.all_pairs, train.val_pairs, train.lr_crop, validation.scale)
        self.system = _system_metrics(run_id, tracking_uri, bool(resumed_from))

    def close(self) -> None:
        if self.system is not None:
            self.system.finish()
            self.system = None

    def _metrics(self, step: int, values: dict) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in values.items()])

    def validate(self, step: int, net) -> dict:
        """Full val images through ``net`` (the map to evaluate: EMA when kept): colour-aware SWD (selection),
        PSNR, colour."""
        score = self.validation(net)
        val = {"val_swd": score["swd"], "val_psnr": score["psnr"], "val_color": score["color"]}
        if step > self.last_logged or step == 0:
            bic = self.validation.bicubic
            self._metrics(step, {**val, "val_bicubic_swd": bic["swd"], "val_bicubic_psnr": bic["psnr"],
                                 "val_bicubic_color": bic["color"]})
        return val

    def log(self, step: int, target: int, metrics: dict) -> None:
        if self.train.progress:
            losses = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("loss_") or k == "cost")
            print(f"train: step {step}/{target} {losses} crops/s={metrics['crops_per_s']:.1f}", flush=True)
        if step <= self.last_logged and step in self.logged:  # replayed after a restart: compare, don't re-log
            diff = abs(metrics["loss_map"] - self.logged[step])
            self.replay_diff = max(self.replay_diff, diff)
            self.client.log_metric(self.run_id, "resume_replay_diff", self.replay_diff, step=step)
            print(f"train: replayed step {step}: |loss_map - logged| = {diff:.3g}", flush=True)
        if step > self.last_logged:
            self._metrics(step, metrics)

    def log_images(self, step: int, net) -> None:
        """LR (nearest) | bicubic | T(LR) [| HR] grids for fixed train and val crops (MLflow image keys
        ``train``/``val``, one per step)."""
        import torch
        import torch.nn.functional as F

        from ots.imagegrid import panel_grid, tensor_rgb8

        if step <= self.last_logged:
            return
        device, scale = self.validation.device, self.validation.scale
        for tag, lr, hr in (("train", self.fixed_lr, None), ("val", self.val_lr, self.val_hr)):
            if lr is None or len(lr) == 0:
                continue
            was = net.training
            net.eval()
            with torch.no_grad():
                mapped = net(lr.to(device)).float().cpu()
            net.train(was)
            columns = [F.interpolate(lr, scale_factor=scale, mode="nearest"),
                       F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False), mapped]
            columns += [hr] if hr is not None else []
            rows = [[tensor_rgb8((c[i] + 1) / 2) for c in columns] for i in range(len(lr))]
            self.client.log_image(self.run_id, panel_grid(rows, gap=2), key=tag, step=step)


def _system_metrics(run_id: str, tracking_uri: str, resumed: bool):
    """CPU/memory/disk/network (and GPU when present) every 10 s into the run, when psutil is installed."""
    try:
        import psutil  # noqa: F401 - MLflow's monitor needs it
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:
        return None
    import logging

    logging.getLogger(SystemMetricsMonitor.__module__).setLevel(logging.WARNING)  # no start/stop INFO lines
    monitor = SystemMetricsMonitor(run_id, sampling_interval=10, resume_logging=resumed, tracking_uri=tracking_uri)
    monitor.start()
    return monitor
