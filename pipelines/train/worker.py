"""The per-worker training loop on Ray Train: solver steps, guards and checkpoints reported to Ray.

``TrainWorker(config).run()`` is what every Ray Train worker executes. The loop reads top to bottom like
BasicSR's driver: step; on log steps, losses to MLflow (rank 0, :mod:`pipelines.train.tracking`); on checkpoint steps
(and at step 0: the untrained map, bicubic-equivalent, is the first candidate), validate (rank 0: SWD of the full
val images mapped by T -- the EMA when kept -- against the val HR images, and PSNR), check the divergence guard
and report the checkpoint with ``val_swd`` to Ray, which keeps the best by it (``CheckpointConfig``). A
non-finite loss is reported as the ``nonfinite`` metric and ends the loop on every rank.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from ots.errors import CheckpointError, NonFiniteLossError

CKPT = "checkpoint.pt"


class TrainWorker:
    """One Ray Train worker: builds the solver and its streams, restores from Ray's checkpoint, runs the loop."""

    def __init__(self, config: dict):
        import ray.train
        import torch

        from ots.data.loader import CropStream
        from ots.data.shard_reader import open_dataset
        from ots.solver import build_solver

        self.config, self.cfg = config, config["config"]  # cfg: the typed OTSConfig the driver checked
        self.train, self.seed = self.cfg.train, self.cfg.seed
        self.ctx = ray.train.get_context()
        self.rank, self.world = self.ctx.get_world_rank(), self.ctx.get_world_size()
        self.dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.device = ray.train.torch.get_device() if self.train.use_gpu else torch.device("cpu")
        self.solver = build_solver(self.cfg.model, self.cfg.solver, device=self.device, distributed=self.dist,
                                   seed=self.seed)
        self.batch = self.train.batch_size
        self.dataset = open_dataset(self.train.dataset, verify=False)  # the manifest, read once for every reader
        crops = {"lr": self.train.lr_crop + 2 * self.cfg.solver.margin, "hr": self.train.hr_crop}
        self.streams = {d: CropStream(self.dataset, d, crop=c, batch_size=self.batch, seed=self.seed, rank=self.rank,
                                      world_size=self.world) for d, c in crops.items()}
        self.best = {"val_swd": None, "step": None}
        self.bad_evals = 0  # consecutive validations worse than bicubic (the divergence guard)
        self.run_id = config["mlflow_run_id"]
        self.resumed_from = self._restore()
        self.node_ids = self._node_ids()
        self.tracker = None
        if self.rank == 0:
            from ots.validation import Validation
            from pipelines.train.tracking import Tracker

            validation = Validation(self.dataset, self.cfg.model.scale, self.device,
                                    max_images=self.train.val_images, seed=self.seed)
            self.tracker = Tracker(validation, self.train, self.run_id, config["tracking_uri"], self.resumed_from,
                                   self.world)

    # -- state ---------------------------------------------------------------------------------------------
    def _restore(self) -> int:
        import ray.train

        from ots.checkpoint import resume

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return 0
        with ckpt.as_directory() as d:
            state = resume(self.solver, os.path.join(d, CKPT))
        extra = state.get("extra") or {}
        want, have = self.config["config_hash"], extra.get("config_hash")
        if have != want or extra.get("mlflow_run_id", self.run_id) != self.run_id:
            raise CheckpointError(f"the checkpoint in {ckpt.path} is from another config or run (config {have}, "
                                  f"run {extra.get('mlflow_run_id')}; this run: config {want}, run {self.run_id}); "
                                  f"rerun with --fresh to start over")
        for domain, position in (extra.get("data", {}).get("position") or {}).items():
            self.streams[domain].next_batch = int(position)  # the cursors continue where the checkpoint left
        self.best.update(extra.get("best") or {})
        self.bad_evals = int(extra.get("bad_evals", 0))
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
        from ots.checkpoint import save_checkpoint

        position = {d: s.next_batch for d, s in self.streams.items()}
        extra = {"data": {"position": position, "seed": self.seed, "world_size": self.world},
                 "mlflow_run_id": self.run_id, "best": dict(self.best), "bad_evals": self.bad_evals,
                 "run_name": self.config["run_name"], "config_hash": self.config["config_hash"]}
        save_checkpoint(os.path.join(folder, CKPT), self.solver, config=self.cfg.to_params(), extra=extra)
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
        g, bicubic = self.train.guard, self.tracker.validation.bicubic["swd"]
        worse = val["val_swd"] > bicubic * (1 + float(g.tolerance))
        self.bad_evals = self.bad_evals + 1 if worse else 0
        if g.patience and self.bad_evals >= g.patience:
            return (f"stopped at step {step}: val SWD {val['val_swd']:.2f} worse than bicubic's {bicubic:.2f} "
                    f"(+{100 * float(g.tolerance):.0f}% tolerance) for {self.bad_evals} validations in a row")
        if g.max_cost and cost > float(g.max_cost):
            return f"stopped at step {step}: transport cost {cost:.4g} above train.guard.max_cost={g.max_cost}"
        return None

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self) -> dict | None:
        import torch

        from ots.models.wrapping import unwrap
        from pipelines.train.tracking import Throughput

        train, target = self.train, self.train.steps
        if not self.resumed_from:  # step 0: the untrained map is the first best candidate
            self.checkpoint(0, {}, 0.0)
        timer = Throughput((self.solver.cfg.k_T + 1) * self.batch * self.world)
        while self.solver.step_count < target:
            losses = self.solver.step(self.streams["lr"].draw, self.streams["hr"].draw)
            step = self.solver.step_count
            timer.tick()
            hook = self.config.get("inject_nan_at_step")
            if hook is not None and step == int(hook):  # test hook (passed in by tests, not params)
                with torch.no_grad():
                    for p in unwrap(self.solver.T).parameters():
                        p.fill_(float("nan"))
            do_log = step % train.log_every == 0 or step == target
            do_ckpt = step % train.checkpoint_every == 0 or step == target
            if do_log or do_ckpt:
                bad = self.nonfinite()
                if bad:  # every rank stops here; the driver reads rank 0's return value (the last checkpoint is good)
                    return {"step": step, "nonfinite": bad}
            metrics = {}
            if do_log:
                metrics = {k: float(v.float().item()) for k, v in losses.items()} | timer.rates()
                if self.tracker:
                    self.tracker.log(step, target, metrics)
            if self.tracker and train.image_every and (step % train.image_every == 0 or step == target):
                self.tracker.log_images(step, self.solver.map_for_eval)
            self._maybe_fail(step)
            if do_ckpt and self.checkpoint(step, metrics, float(losses["cost"].float().item())):
                return None
        return None

    def checkpoint(self, step: int, metrics: dict, cost: float) -> bool:
        """Validate (rank 0), save and report a checkpoint scored by ``val_swd``; True when the guard says stop."""
        import ray.train

        report = {"step": step, "resumed_from": self.resumed_from, "node_ids": ",".join(self.node_ids), **metrics}
        stop, checkpoint = None, None
        d = tempfile.mkdtemp(prefix="ots-ckpt-")  # Ray deletes it after the upload
        if self.rank == 0:
            val = self.tracker.validate(step, self.solver.map_for_eval)
            report.update(val)
            if self.best["val_swd"] is None or val["val_swd"] < self.best["val_swd"]:
                self.best = {"val_swd": val["val_swd"], "val_psnr": val["val_psnr"], "step": step}
            stop = self.guard(step, val, cost) if step else None
            self.save(d, step, val)
            self.tracker.client.set_tag(self.run_id, "ots.last_checkpoint_step", str(step))  # read by resume
            report.update(best_val_swd=self.best["val_swd"], best_step=self.best["step"])
            checkpoint = ray.train.Checkpoint.from_directory(d)
        stop = self._from_rank0(stop)
        if stop:
            report["diverged"] = stop
        mode = ray.train.CheckpointUploadMode[self.config["upload_mode"]]  # ASYNC: training goes on meanwhile
        ray.train.report(report, checkpoint=checkpoint, checkpoint_upload_mode=mode,
                         delete_local_checkpoint_after_upload=True)
        if checkpoint is None:
            os.rmdir(d)
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


def train_loop(config: dict) -> dict | None:
    """Ray Train's per-worker entry point; rank 0's return value (``Result.return_value``) names a non-finite
    loss."""
    # Ray Train logs every report ("Reporting training result …") at INFO through the root logger's console
    # handler (its logger is named by file path, so LoggingConfig's level does not reach it); our progress lines
    # are prints. Warnings and errors still show.
    logging.getLogger().setLevel(logging.WARNING)
    worker = TrainWorker(config)
    try:
        return worker.run()
    finally:
        if worker.tracker is not None:
            worker.tracker.close()
