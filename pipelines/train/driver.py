"""DVC stage ``train``: distributed OTS training on Ray Train (DDP), checkpoints in storage, MLflow tracking.

    python -m pipelines.train --params params.yaml [--fresh]

This module is the *driver*: it validates params, decides which MLflow run and Ray run folder this invocation
continues or starts (:mod:`pipelines.train.resume`: by default the latest unfinished run of the same config resumes;
``--fresh`` / ``train.fresh`` starts over), starts Ray (:mod:`pipelines.raywire`) and a ``TorchTrainer`` with
``train.num_workers`` workers (:mod:`pipelines.train.worker`), and turns the result into ``run.json``.

Checkpoints (``checkpoint.pt`` + ``meta.json``) are reported to Ray at step 0 (the untrained, bicubic-equivalent
map), every ``checkpoint_every`` steps and at the last step, into ``storage_path`` (a local folder or
``s3://bucket/prefix``; uploads to S3 are asynchronous). Ray keeps the ``keep_best_k`` best by ``val_swd`` plus
the latest; ``best.pt`` is Ray's best checkpoint by val SWD. ``FailureConfig(max_failures)`` restarts the worker
group from the latest checkpoint after a transient failure (preempted nodes count separately, without limit);
deterministic ones (damaged data, bad checkpoint, unwritable or full storage) end the run at once in one line.
The divergence guard (``train.guard``) stops a run whose val SWD stays worse than bicubic's, keeping the best map.
Outputs: ``<output_dir>/final.pt`` (loadable by ``ots.checkpoint.load_map``), ``best.pt`` and ``run.json``.

Where it trains: with a Ray job server (``train.cluster``, or ``RAY_ADDRESS=http(s)://head:8265``) the stage
submits itself there as a Ray job and brings the outputs home (:mod:`pipelines.cluster`); inside a Ray job
(``RAY_ADDRESS`` = the cluster's GCS) it joins that cluster; otherwise it starts a local Ray on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

from ots.atomic import atomic_path
from ots.config import OTSConfig
from ots.errors import NonFiniteLossError, OTSError
from pipelines.cluster import JOB_OUTPUT_ENV, publish
from pipelines.raywire import init_ray  # before anything imports ray: it sets Ray's loopback switch
from pipelines.train.stage import _on_term, stage
from pipelines.train.worker import CKPT, train_loop

# Test hooks, passed in by tests through the environment (never params): rank 0 raises once at this step /
# the map weights become NaN after this step.
TEST_HOOKS = {"inject_failure_at_step": "OTS_TEST_FAIL_AT_STEP", "inject_nan_at_step": "OTS_TEST_NAN_AT_STEP"}


class TrainingError(OTSError):
    """Training failed (after the allowed restarts)."""


# -- driver ---------------------------------------------------------------------------------------------------
def run(config: OTSConfig, fresh: bool = False) -> dict:
    """Train (resuming the unfinished run of the same config unless ``fresh``); returns (and writes to
    ``<output_dir>/run.json``) the run summary. The MLflow run ends FINISHED, FAILED or KILLED (interrupted)."""
    from ots.data.shard_reader import open_dataset
    from ots.redaction import redact_uri
    from pipelines.mlflow_access import get_or_create_experiment, mlflow_client, resolve_tracking_uri
    from pipelines.raywire import probe_storage, ray_storage
    from pipelines.train import resume

    config = config.replace(train={"dataset": _abs_local(config.train.dataset),  # workers may run elsewhere
                                   "output_dir": str(Path(config.train.output_dir).resolve())})
    train = config.train
    fresh = fresh or train.fresh
    dataset = open_dataset(train.dataset, verify=False)  # fail early, on the driver, with one line
    # what MLflow logs and the resume hash reads: the params layout, with the dataset's identity (new data is a new
    # run, not a resume)
    params = {**config.to_params(), "dataset": resume.dataset_identity(dataset.manifest)}
    out_dir = Path(train.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage_path, storage_fs, storage_uri = ray_storage(train.storage_path)
    probe_storage(storage_path, storage_fs, storage_uri)  # before any MLflow run is made for nothing
    tracking_uri = resolve_tracking_uri(train.mlflow.tracking_uri)
    client = mlflow_client(tracking_uri)
    exp_id = get_or_create_experiment(client, train.mlflow.experiment)
    chash = resume.config_hash(params)
    plan = resume.plan(client, exp_id, params, chash, storage_uri, fresh)
    run_id, run_name = _open_run(client, exp_id, config, params, plan, chash, storage_path, storage_uri, dataset)
    for old, reason in plan.retire:
        kept = resume.retire(client, old, reason, run_id, run_name, storage_path, storage_fs)
        print(f"train: ended unfinished run {old.info.run_id} as KILLED ({reason[:200]}); kept its best: {kept}",
              flush=True)
    if not plan.run_id:  # a new run never restores someone else's checkpoints (a fixed name's finished run)
        kept = resume.prune_to_best(storage_fs, f"{storage_path.rstrip('/')}/{run_name}",
                                    f"{storage_path.rstrip('/')}/{run_name}-{time.strftime('%Y%m%d-%H%M%S')}")
        if kept:
            print(f"train: {storage_uri}/{run_name} held an earlier run: its best is kept in {kept}", flush=True)
    print(f"train: mlflow run {run_id} at {redact_uri(tracking_uri)} (experiment {train.mlflow.experiment!r}); "
          f"checkpoints in {storage_uri}/{run_name}" + (f"; {plan.note}" if plan.note else ""), flush=True)
    status = "FAILED"
    try:
        summary = _fit(config, client, run_id, run_name, chash, (storage_path, storage_fs, storage_uri), out_dir)
        status = "FINISHED"
        if os.environ.get(JOB_OUTPUT_ENV):  # a cluster run: the submitting stage copies these home
            publish(out_dir, os.environ[JOB_OUTPUT_ENV])
        return summary
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM
        status = "KILLED"
        raise
    finally:
        client.set_terminated(run_id, status)


def _abs_local(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def _open_run(client, exp_id: str, config: OTSConfig, params: dict, plan, chash: str, storage_path: str,
              storage_uri: str, dataset) -> tuple[str, str]:
    """The MLflow run and Ray run name this invocation writes to: the planned one, or a new one (tagged with
    ``params``, the config's layout)."""
    from pipelines.mlflow_access import log_params

    train = config.train
    if plan.run_id:  # resume: same MLflow run, same Ray name (Ray restores the latest checkpoint in its folder)
        client.update_run(plan.run_id, status="RUNNING")
        old = client.get_run(plan.run_id).data.params
        log_params(client, plan.run_id, params, skip=old)  # params are write-once: new keys only
        client.set_tag(plan.run_id, "ots.steps", str(train.steps))  # may have grown
        return plan.run_id, plan.ray_name
    kind = config.solver.kind
    run_name = plan.ray_name or f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    tags = {"ots.stage": "train", "ots.solver": kind, "ots.output": train.output_dir, "ots.config_hash": chash,
            "ots.storage": storage_uri, "ots.storage_path": storage_path, "ots.steps": str(train.steps),
            **_git_tags()}
    run_id = client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
    if not plan.ray_name:
        run_name = f"{run_name}-{run_id[:8]}"
    client.set_tag(run_id, "ots.ray_run", run_name)
    log_params(client, run_id, params)
    _log_dataset(client, run_id, train.dataset, dataset)
    return run_id, run_name


def _git_tags() -> dict:
    """``mlflow.source.git.commit`` when the working directory is a git checkout."""
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit.stdout.strip()} if commit.returncode == 0 else {}


def _log_dataset(client, run_id: str, uri: str, dataset) -> None:
    """Dataset lineage: the shard manifest as an MLflow dataset input (digest = the manifest's sha256)."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    from ots.redaction import redact_uri
    from pipelines.train.resume import manifest_digest

    digest = manifest_digest(dataset.manifest)
    name = Path(uri.rstrip("/")).name or "dataset"
    try:
        with warnings.catch_warnings():  # "can be interpreted in multiple ways" (two local-file sources)
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(redact_uri(uri))
    except Exception:  # noqa: BLE001 - lineage is best effort; training does not depend on it
        return
    entity = MetaDataset(source, name=name, digest=digest[:32])._to_mlflow_entity()
    client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", "training")])])


def _fit(config: OTSConfig, client, run_id: str, run_name: str, chash: str, storage: tuple, out_dir: Path) -> dict:
    """Run the TorchTrainer and turn its result into the outputs and the summary."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ots.redaction import redact_uri
    from pipelines.raywire import cause_of, fail_fast_callback

    train = config.train
    storage_path, storage_fs, storage_uri = storage
    ours = signal.getsignal(signal.SIGTERM) is _on_term
    init_ray()  # installs Ray's SIGTERM handler: inside ray.get it ends as an anonymous SystemExit(1)
    if ours:  # keep ours (the CLI's): the run still ends KILLED, and the exit code can say which signal
        signal.signal(signal.SIGTERM, _on_term)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # else each worker print() shows up twice
    resources = train.resources_per_worker
    scaling = ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu,
                            resources_per_worker=dict(resources) if resources else None)
    run_config = RunConfig(
        name=run_name, storage_path=storage_path, storage_filesystem=storage_fs,
        checkpoint_config=CheckpointConfig(num_to_keep=train.keep_best_k, checkpoint_score_attribute="val_swd",
                                           checkpoint_score_order="min"),
        failure_config=FailureConfig(max_failures=train.max_failures),
        callbacks=[fail_fast_callback()],
        # Ray Train's own records (tracebacks of failures we report in one line, per-report INFO lines) stay in
        # the session's ray-train-*.log files; the console gets our lines
        logging_config=LoggingConfig(log_level="CRITICAL"),
    )
    loop_config = {"config": config, "mlflow_run_id": run_id, "tracking_uri": client.tracking_uri,
                   "run_name": run_name, "marker_dir": str(out_dir), "config_hash": chash,
                   "upload_mode": "SYNC" if storage_fs is None else "ASYNC",  # local copies are fast
                   **{k: int(os.environ[v]) for k, v in TEST_HOOKS.items() if os.environ.get(v)}}
    trainer = TorchTrainer(train_loop, train_loop_config=loop_config, scaling_config=scaling, run_config=run_config)
    t0 = time.perf_counter()
    try:
        result = trainer.fit()
    except Exception as e:  # noqa: BLE001 - Ray wraps worker errors; report one line
        from ots.errors import one_line

        inner = cause_of(e)
        if inner is not None:
            raise inner from None
        raise TrainingError(f"training failed ({type(e).__name__}): {one_line(str(e).strip().splitlines()[0])}") from e
    wall = time.perf_counter() - t0
    metrics = dict(result.metrics or {})
    last = result.checkpoint
    where = f"{storage_uri.rstrip('/')}/{run_name}/{os.path.basename(last.path)}" if last is not None else None
    stopped = result.return_value or {}
    if stopped.get("nonfinite"):
        raise NonFiniteLossError(f"{stopped['nonfinite']}; last good checkpoint: {where or 'none'}")
    diverged = metrics.get("diverged")
    if last is None or (int(metrics.get("step", -1)) != train.steps and not diverged):
        raise TrainingError(f"training stopped at step {metrics.get('step')} of {train.steps}")
    if diverged:  # the guard stopped a diverging run: say so, keep the best map, let evaluate/register judge it
        print(f"train: {diverged}; keeping the best map (step {metrics.get('best_step')}, "
              f"val SWD {metrics.get('best_val_swd', float('nan')):.2f})", flush=True)
        client.set_tag(run_id, "ots.stopped_early", diverged)
    final, best_file = out_dir / "final.pt", out_dir / "best.pt"
    best = result.get_best_checkpoint("val_swd", "min") or last  # step 0 (bicubic-equivalent) is a candidate
    best_meta: dict = {}
    for ckpt, dest in ((last, final), (best, best_file)):
        with ckpt.as_directory() as d:
            with atomic_path(dest) as part:
                shutil.copyfile(os.path.join(d, CKPT), part)
            best_meta = json.loads(Path(d, "meta.json").read_text())
    client.log_artifact(run_id, str(final), artifact_path="checkpoints")
    summary = {
        "mlflow_run_id": run_id,
        "tracking_uri": redact_uri(client.tracking_uri),  # never a password in a file; readers use the environment
        "experiment": train.mlflow.experiment,
        "ray_run_name": run_name,
        "config_hash": chash,
        "steps": int(metrics["step"]),
        "final_checkpoint": str(final),
        "final_checkpoint_storage": f"{where}/{CKPT}",
        "best_checkpoint": str(best_file),
        "best_checkpoint_storage": f"{storage_uri.rstrip('/')}/{run_name}/{os.path.basename(best.path)}/{CKPT}",
        "best_metric": {"name": "val_swd", "value": best_meta.get("val_swd"), "step": best_meta.get("step")},
        "final_metrics": {k: metrics[k] for k in ("loss_map", "loss_potential", "cost", "crops_per_s", "val_swd",
                                                  "val_psnr") if k in metrics},
        "stopped_early": diverged,
        "resumed_from": metrics.get("resumed_from", 0),
        "num_workers": train.num_workers,
        "worker_nodes": [n for n in str(metrics.get("node_ids", "")).split(",") if n] or None,
        "wall_s": round(wall, 2),
    }
    client.log_metric(run_id, "train_wall_s", wall)
    from ots.atomic import write_text

    write_text(out_dir / "run.json", json.dumps(summary, indent=2) + "\n")
    client.log_artifact(run_id, str(out_dir / "run.json"))
    from pipelines.train.dvc_metrics import write_train_metrics

    write_train_metrics(client, run_id, summary, train.summary, train.curves)
    return summary


def main(argv: list[str] | None = None) -> int:
    return stage("train", __doc__, None, argv, ("mlflow_run_id", "steps", "final_checkpoint", "wall_s"),
                 run=run)


if __name__ == "__main__":
    raise SystemExit(main())
