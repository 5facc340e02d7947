"""The per-worker training loop on Ray Train: solver steps, validation, guards, checkpoints, MLflow (rank 0).

``TrainWorker(config).run()`` is what every Ray Train worker executes. The loop reads top to bottom like
BasicSR's driver: step; on log steps, losses to MLflow; on checkpoint steps, validate (rank 0: SWD of the full
val images mapped by T -- the EMA when kept -- against the val HR images, which selects the best map, and PSNR),
check the divergence guard and report a checkpoint to Ray. Each concern is one method.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from ots.errors import NonFiniteLossError

CKPT = "checkpoint.pt"
NONFINITE = "nonfinite.json"  # written next to the checkpoints when a loss goes NaN/inf


def solver_cfg(solver: dict):
    """params.yaml's ``solver:`` section as a validated SolverConfig (finiteness checked by the loop)."""
    from ots.solver import SolverConfig

    return SolverConfig.from_dict({**solver, "check_every": 0})


class TrainWorker:
    """One Ray Train worker: builds the solver and its streams, restores from Ray's checkpoint, runs the loop."""

    def __init__(self, config: dict):
        import ray.train
        import torch

        from ots.build import build_solver
        from ots.data import CropStream

        self.config, self.params = config, config["params"]
        self.train, self.seed = self.params["train"], int(self.params["seed"])
        self.ctx = ray.train.get_context()
        self.rank, self.world = self.ctx.get_world_rank(), self.ctx.get_world_size()
        self.dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.device = ray.train.torch.get_device() if self.train["use_gpu"] else torch.device("cpu")
        self.solver = build_solver(self.params["model"], solver_cfg(self.params.get("solver") or {}),
                                   device=self.device, distributed=self.dist, seed=self.seed)
        self.scale = int(self.params["model"]["map"].get("scale", 4))
        self.batch = int(self.train["batch_size"])
        uri, margin = self.train["dataset"], self.solver.cfg.margin
        self.streams = {
            "lr": CropStream(uri, "lr", crop=self.train["lr_crop"] + 2 * margin, batch_size=self.batch,
                             seed=self.seed, rank=self.rank, world_size=self.world),
            "hr": CropStream(uri, "hr", crop=self.train["hr_crop"], batch_size=self.batch, seed=self.seed,
                             rank=self.rank, world_size=self.world),
        }
        self.pos = {"lr": 0, "hr": 0}
        self.best = {"val_swd": None, "step": None}
        self.bad_evals = 0  # consecutive validations worse than bicubic (the divergence guard)
        self.run_id = config["mlflow_run_id"]
        self.resumed_from = self._restore()
        self.node_ids = self._node_ids()
        self.tracker = Tracker(self) if self.rank == 0 else None

    # -- data ----------------------------------------------------------------------------------------------
    def _next(self, domain: str):
        b = self.pos[domain]
        self.pos[domain] += 1
        return self.streams[domain].batch(b)

    def next_lr(self):
        return self._next("lr")

    def next_hr(self):
        return self._next("hr")

    # -- state ---------------------------------------------------------------------------------------------
    def _restore(self) -> int:
        import ray.train

        from ots.solver import resume

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return 0
        with ckpt.as_directory() as d:
            state = resume(self.solver, os.path.join(d, CKPT))
        extra = state.get("extra") or {}
        self.pos.update(extra.get("data", {}).get("position", {}))
        self.best.update(extra.get("best") or {})
        self.bad_evals = int(extra.get("bad_evals", 0))
        self.run_id = extra.get("mlflow_run_id", self.run_id)
        return self.solver.step_count

    def _node_ids(self) -> list[str]:
        import ray
        import torch

        node_ids = [ray.get_runtime_context().get_node_id()]
        if self.dist and self.world > 1:
            gathered = [None] * self.world
            torch.distributed.all_gather_object(gathered, node_ids[0])
            node_ids = gathered
        return node_ids

    def save(self, folder: str, step: int, val: dict | None) -> None:
        from ots.solver import save_checkpoint

        extra = {"data": {"position": dict(self.pos), "seed": self.seed, "world_size": self.world},
                 "mlflow_run_id": self.run_id, "best": dict(self.best), "bad_evals": self.bad_evals,
                 "run_name": self.config["run_name"]}
        save_checkpoint(os.path.join(folder, CKPT), self.solver, config=self.params, extra=extra)
        with open(os.path.join(folder, "meta.json"), "w") as fh:  # after the checkpoint: names a complete one
            json.dump({"step": step, **(val or {}), "mlflow_run_id": self.run_id}, fh)

    # -- collective checks ---------------------------------------------------------------------------------
    def _any_rank(self, msg: str | None, what: str) -> str | None:
        """A message raised on any rank, seen by all (one all-reduce)."""
        import torch

        if self.dist and self.world > 1:
            flag = torch.tensor([1.0 if msg else 0.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if flag.item() and not msg:
                msg = f"{what} on another rank by step {self.solver.step_count}"
        return msg

    def nonfinite(self) -> str | None:
        msg = None
        try:
            self.solver.check_finite()
        except NonFiniteLossError as e:
            msg = str(e)
        return self._any_rank(msg, "non-finite loss")

    def _from_rank0(self, msg: str | None) -> str | None:
        import torch

        if self.dist and self.world > 1:
            box = [msg]
            torch.distributed.broadcast_object_list(box, src=0)
            msg = box[0]
        return msg

    def guard(self, step: int, val: dict, cost: float) -> str | None:
        """Why training should stop now (rank 0), or None: a diverging map is not worth more compute."""
        g, bicubic = self.train["guard"], self.tracker.validation.bicubic["swd"]
        worse = val["val_swd"] > bicubic * (1 + float(g["tolerance"]))
        self.bad_evals = self.bad_evals + 1 if worse else 0
        if g["patience"] and self.bad_evals >= g["patience"]:
            return (f"stopped at step {step}: val SWD {val['val_swd']:.2f} worse than bicubic's {bicubic:.2f} "
                    f"(+{100 * float(g['tolerance']):.0f}% tolerance) for {self.bad_evals} validations in a row")
        if g["max_cost"] and cost > float(g["max_cost"]):
            return f"stopped at step {step}: transport cost {cost:.4g} above train.guard.max_cost={g['max_cost']}"
        return None

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self) -> None:
        import ray.train
        import torch

        from ots.costs import unwrap

        train, target = self.train, int(self.train["steps"])
        if self.rank == 0 and not self.resumed_from:
            self.tracker.validate_initial()
        timer = Throughput((self.solver.cfg.k_T + 1) * self.batch * self.world)
        while self.solver.step_count < target:
            losses = self.solver.step(self.next_lr, self.next_hr)
            step = self.solver.step_count
            timer.tick()
            hook = self.config.get("inject_nan_at_step")
            if hook is not None and step == int(hook):  # test hook (passed in by tests, not params)
                with torch.no_grad():
                    for p in unwrap(self.solver.T).parameters():
                        p.fill_(float("nan"))
            do_log = step % train["log_every"] == 0 or step == target
            do_ckpt = step % train["checkpoint_every"] == 0 or step == target
            if do_log or do_ckpt:
                bad = self.nonfinite()
                if bad:  # every rank stops here; rank 0 leaves the message next to the checkpoints
                    if self.rank == 0:
                        _write_storage(self.ctx.get_storage(), NONFINITE, json.dumps({"step": step, "error": bad}))
                    ray.train.report({"step": step, "nonfinite": bad})
                    return
            metrics = {}
            if do_log:
                metrics = {k: float(v.float().item()) for k, v in losses.items()} | timer.rates()
                if self.tracker:
                    self.tracker.log(step, target, metrics)
            if self.tracker and train["image_every"] and (step % train["image_every"] == 0 or step == target):
                self.tracker.log_images(step)
            self._maybe_fail(step)
            if do_ckpt and self.checkpoint(step, metrics, float(losses["cost"].float().item())):
                return

    def checkpoint(self, step: int, metrics: dict, cost: float) -> bool:
        """Validate (rank 0), save and report a checkpoint; True when the guard says stop."""
        import ray.train

        report = {"step": step, "resumed_from": self.resumed_from, "node_ids": ",".join(self.node_ids), **metrics}
        stop = None
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if self.rank == 0:
                val = self.tracker.validate(step)
                report.update(val)
                is_best = self.best["val_swd"] is None or val["val_swd"] < self.best["val_swd"]
                if is_best:
                    self.best = {"val_swd": val["val_swd"], "val_psnr": val["val_psnr"], "step": step}
                stop = self.guard(step, val, cost)
                self.save(d, step, val)
                if is_best:
                    _upload_best(self.ctx.get_storage(), d)
                report.update(best_val_swd=self.best["val_swd"], best_step=self.best["step"])
                checkpoint = ray.train.Checkpoint.from_directory(d)
            stop = self._from_rank0(stop)
            if stop:
                report["diverged"] = stop
            ray.train.report(report, checkpoint=checkpoint)
        return stop is not None

    def _maybe_fail(self, step: int) -> None:
        """Test hook: rank 0 fails once at ``inject_failure_at_step`` (a marker file makes it once)."""
        at = self.config.get("inject_failure_at_step")
        if self.rank != 0 or at is None or step != int(at):
            return
        marker = Path(self.config["marker_dir"]) / f".failure-injected-{self.config['run_name']}"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(step))
            raise RuntimeError(f"injected failure at step {step}")


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
    """Rank 0's side: validation, MLflow metrics (each step logged once, replays compared), image grids."""

    def __init__(self, worker: TrainWorker):
        from mlflow import MlflowClient

        from ots.data import CropStream
        from ots.fit import Validation
        from pipelines.common import no_credential_links

        self.w, train = worker, worker.train
        no_credential_links(worker.config["tracking_uri"])
        self.client = MlflowClient(tracking_uri=worker.config["tracking_uri"])
        self.logged, self.last_logged, self.replay_diff = {}, 0, 0.0
        if worker.resumed_from:
            self.logged = {m.step: m.value for m in self.client.get_metric_history(worker.run_id, "loss_map")}
            self.last_logged = max(self.logged, default=0)
            self.client.set_tag(worker.run_id, "resumed_from_step", str(worker.resumed_from))
            print(f"train: resumed from step {worker.resumed_from} (attempt with {worker.world} worker(s))",
                  flush=True)
        self.validation = Validation(train["dataset"], worker.scale, worker.device,
                                     max_images=train["val_images"], seed=worker.seed)
        self.fixed_lr = CropStream(train["dataset"], "lr", crop=train["lr_crop"],
                                   batch_size=max(1, train["image_count"]), seed=worker.seed + 7919,
                                   augment=False).batch(0)[: train["image_count"]]
        self.val_lr, self.val_hr = _val_crops(train["dataset"], train["val_pairs"], train["lr_crop"], worker.scale)

    def _metrics(self, step: int, values: dict) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(self.w.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in values.items()])

    def validate(self, step: int) -> dict:
        """Full val images through the map to evaluate (EMA when kept): SWD (selection) and PSNR."""
        score = self.validation(self.w.solver.map_for_eval)
        val = {"val_swd": score["swd"], "val_psnr": score["psnr"]}
        if step > self.last_logged or step == 0:
            bic = self.validation.bicubic
            self._metrics(step, {**val, "val_bicubic_swd": bic["swd"], "val_bicubic_psnr": bic["psnr"]})
        return val

    def validate_initial(self) -> None:
        """Step 0: the untrained map (bicubic, with the zero-initialised skip) is the first best candidate."""
        val = self.validate(0)
        self.w.best = {"val_swd": val["val_swd"], "val_psnr": val["val_psnr"], "step": 0}
        with tempfile.TemporaryDirectory() as d:
            self.w.save(d, 0, val)
            _upload_best(self.w.ctx.get_storage(), d)

    def log(self, step: int, target: int, metrics: dict) -> None:
        if self.w.train["progress"]:
            losses = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("loss_") or k == "cost")
            print(f"train: step {step}/{target} {losses} crops/s={metrics['crops_per_s']:.1f}", flush=True)
        if step <= self.last_logged and step in self.logged:  # replayed after a restart: compare, don't re-log
            diff = abs(metrics["loss_map"] - self.logged[step])
            self.replay_diff = max(self.replay_diff, diff)
            self.client.log_metric(self.w.run_id, "resume_replay_diff", self.replay_diff, step=step)
            print(f"train: replayed step {step}: |loss_map - logged| = {diff:.3g}", flush=True)
        if step > self.last_logged:
            self._metrics(step, metrics)

    def log_images(self, step: int) -> None:
        """LR (nearest) | bicubic | T(LR) [| HR] grids for fixed train and val crops."""
        import torch
        import torch.nn.functional as F

        if step <= self.last_logged:
            return
        net = self.w.solver.map_for_eval
        with tempfile.TemporaryDirectory() as tmp:
            for tag, lr, hr in (("train", self.fixed_lr, None), ("val", self.val_lr, self.val_hr)):
                if lr is None or len(lr) == 0:
                    continue
                was = net.training
                net.eval()
                with torch.no_grad():
                    mapped = net(lr.to(self.w.device)).float().cpu()
                net.train(was)
                up = [F.interpolate(lr, scale_factor=self.w.scale, mode="nearest"),
                      F.interpolate(lr, scale_factor=self.w.scale, mode="bicubic", align_corners=False), mapped]
                p = os.path.join(tmp, f"{tag}_step{step:06d}.png")
                _grid_png(p, up + ([hr] if hr is not None else []))
                self.client.log_artifact(self.w.run_id, p, artifact_path=f"images/{tag}")


def _val_crops(uri: str, n: int, lr_crop: int, scale: int):
    """Centre crops of the first ``n`` val pairs (LR and the matching HR), for the image grids."""
    import numpy as np

    from ots.data import read_val_pairs
    from ots.data.loader import crops_to_tensor

    lrs, hrs = [], []
    for _, lr, hr in read_val_pairs(uri)[:n]:
        h, w = lr.shape[:2]
        if h < lr_crop or w < lr_crop:
            continue
        y, x = (h - lr_crop) // 2, (w - lr_crop) // 2
        lrs.append(lr[y : y + lr_crop, x : x + lr_crop])
        hrs.append(hr[y * scale : (y + lr_crop) * scale, x * scale : (x + lr_crop) * scale])
    if not lrs:
        return None, None
    return crops_to_tensor(np.stack(lrs)), crops_to_tensor(np.stack(hrs))


def _grid_png(path: str, columns: list) -> None:
    """Rows = samples, columns = [-1, 1] NCHW tensors of the same HR size; 2-px gaps."""
    import numpy as np
    from PIL import Image

    cols = [((c.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
            for c in columns]
    n, h, w, _ = cols[0].shape
    gap = 2
    img = np.full((n * h + (n - 1) * gap, len(cols) * w + (len(cols) - 1) * gap, 3), 255, np.uint8)
    for i in range(n):
        for j, c in enumerate(cols):
            img[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = c[i]
    Image.fromarray(img).save(path)


def _write_storage(storage, name: str, text: str) -> None:
    fs, root = storage.storage_filesystem, storage.experiment_fs_path
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{name}") as fh:
        fh.write(text.encode())


def _upload_best(storage, local_dir: str) -> None:
    import pyarrow.fs as pafs

    fs, dest = storage.storage_filesystem, f"{storage.experiment_fs_path}/best"
    fs.create_dir(dest, recursive=True)
    for name in (CKPT, "meta.json"):  # checkpoint first: meta.json names a complete checkpoint
        pafs.copy_files(os.path.join(local_dir, name), f"{dest}/{name}",
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def train_loop(config: dict) -> None:
    """Ray Train's per-worker entry point."""
    TrainWorker(config).run()
