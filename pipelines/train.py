"""DVC stage ``train``: distributed OTS training on Ray Train (DDP), checkpoints in storage, MLflow tracking.

    python -m pipelines.train --params params.yaml

This module is the *driver*: it validates params, creates the MLflow run, starts Ray and a ``TorchTrainer``
with ``train.num_workers`` workers, and turns the result into ``run.json``; what each worker does is
:mod:`pipelines.worker` (build the solver with ``ots.build.build_solver``, stream its share of the shards --
batch ``b`` is a pure function of (seed, rank, b), so resuming = restarting at the saved batch index -- and run
``solver.step``; DDP over the process group Ray set up: gloo on CPU, nccl on GPU).

Checkpoints (``checkpoint.pt``, written by ``ots.solver.save_checkpoint``) are reported to Ray every
``checkpoint_every`` potential steps and at the last step into ``storage_path`` (a local folder or
``s3://bucket/prefix``; endpoint/credentials from the environment). Ray keeps the last ``keep_last_k``. At step
0 and at every checkpoint the map (its EMA when kept) is validated on the full val images: SWD against the val
HR images selects the best map, kept apart under ``<storage>/<run>/best/`` (``best.pt``); the divergence guard
(``train.guard``) stops a run whose SWD stays worse than bicubic's, keeping the best map.
``FailureConfig(max_failures)`` restarts the worker group after a failure; workers restore from
``ray.train.get_checkpoint()`` (networks, optimizers, reference map, step, RNG, data position, MLflow run id)
and continue to ``train.steps``.

MLflow: the driver creates the run before ``fit()``, and rank 0 logs into it (so a restarted worker group
keeps logging into the same run): flattened params (no credentials), metrics every ``log_every`` steps, image
grids (LR | bicubic | T(LR) [| HR]) for fixed train and val crops every ``image_every`` steps, the final
checkpoint (``checkpoints/final.pt``). Outputs: ``<output_dir>/final.pt`` (loadable by
``ots.solver.load_map``), ``best.pt`` and ``run.json``.

When run under ``ray job submit`` (``RAY_ADDRESS`` set) it joins that cluster; otherwise it starts a local
Ray bound to 127.0.0.1.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path

from ots.errors import ConfigError, NonFiniteLossError, OTSError
from pipelines.worker import CKPT, NONFINITE, solver_cfg, train_loop

TRAIN_DEFAULTS: dict = {
    "dataset": None,            # dataset URI; None = data.output
    "steps": 60,                # target number of potential steps
    "batch_size": 8,            # per worker
    "lr_crop": 16,
    "hr_crop": 64,
    "checkpoint_every": 20,
    "keep_last_k": 2,
    "max_failures": 2,
    "num_workers": 1,
    "use_gpu": False,
    "resources_per_worker": None,  # e.g. {"CPU": 2} or {"CPU": 8, "GPU": 1}
    "storage_path": "outputs/ray",
    "run_name": None,           # Ray run name; None = ots-<time>-<mlflow run id>
    "log_every": 5,
    "image_every": 20,
    "image_count": 4,           # fixed train crops in the image grid
    "val_pairs": 4,             # fixed val crops in the image grid
    "val_images": 0,            # val images scored at every checkpoint (SWD selects the best map); 0 = all
    # divergence: val SWD worse than bicubic's by more than `tolerance` (relative) for `patience` validations in a
    # row, or the transport cost above `max_cost` -> stop, keep the best map
    "guard": {"patience": 3, "tolerance": 0.05, "max_cost": 1.0},
    "output_dir": "outputs/train",
    "mlflow": {"tracking_uri": None, "experiment": "ots"},
    "progress": True,
    "overrides": None,          # a YAML of params overrides (e.g. outputs/tune/best_params.yaml), deep-merged first
}
# Test hooks, passed in by tests through the environment (never params): rank 0 raises once at this step /
# the map weights become NaN after this step.
TEST_HOOKS = {"inject_failure_at_step": "OTS_TEST_FAIL_AT_STEP", "inject_nan_at_step": "OTS_TEST_NAN_AT_STEP"}


class TrainingError(OTSError):
    """Training failed (after the allowed restarts)."""


# -- config ---------------------------------------------------------------------------------------------------
def resolve(params: dict) -> dict:
    """Validate and complete params (returns a deep copy with a full ``train`` section)."""
    from ots.models import check_sizes

    params = copy.deepcopy(params)
    params.pop("baseline", None)  # the GAN baseline's overrides: pipelines.baseline merges them, not this run
    train = params.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError("train section must be a mapping")
    if train.get("overrides"):  # e.g. the tune stage's best_params.yaml: deep-merged over params
        from pipelines.common import load_params

        params = _deep_merge(params, load_params(train["overrides"]))
        train = params["train"]
    unknown = sorted(set(train) - set(TRAIN_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown keys in train section: {', '.join(unknown)}")
    mlf = {**TRAIN_DEFAULTS["mlflow"], **(train.get("mlflow") or {})}
    guard = {**TRAIN_DEFAULTS["guard"], **(train.get("guard") or {})}
    unknown = sorted(set(guard) - set(TRAIN_DEFAULTS["guard"]))
    if unknown:
        raise ConfigError(f"unknown keys in train.guard: {', '.join(unknown)}")
    train = {**TRAIN_DEFAULTS, **train, "mlflow": mlf, "guard": guard}
    if not train["dataset"]:
        train["dataset"] = (params.get("data") or {}).get("output") or "data/demo"
    for k in ("steps", "batch_size", "checkpoint_every", "keep_last_k", "num_workers", "log_every"):
        if not isinstance(train[k], int) or train[k] < 1:
            raise ConfigError(f"train.{k} must be an integer >= 1, got {train[k]!r}")
    for k in ("max_failures", "image_every", "image_count", "val_pairs", "val_images"):
        if not isinstance(train[k], int) or train[k] < 0:
            raise ConfigError(f"train.{k} must be an integer >= 0, got {train[k]!r}")
    model = params.get("model") or {}
    if "map" not in model or "potential" not in model:
        raise ConfigError("params need model.map and model.potential")
    check_sizes(model["map"], model["potential"], int(train["lr_crop"]), int(train["hr_crop"]))
    if not isinstance(guard["patience"], int) or guard["patience"] < 0:
        raise ConfigError(f"train.guard.patience must be an integer >= 0 (0 = off), got {guard['patience']!r}")
    solver_cfg(dict(params.get("solver") or {}))  # validates
    params["train"] = train
    params.setdefault("seed", 0)
    return params


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _abs_local(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def _read_storage(fs, path: str) -> str | None:
    import pyarrow.fs as pafs

    fs = fs or pafs.LocalFileSystem()
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as fh:
        return fh.read().decode()


# -- driver ---------------------------------------------------------------------------------------------------
def local_only() -> None:
    """Keep a local Ray on 127.0.0.1: without this Ray 2.60 turns 127.0.0.1 into the non-loopback interface
    and its gRPC servers listen on every interface (also inherited by the raylet, workers and ``Cluster``)."""
    import ray._private.ray_constants as rc

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    rc.ENABLE_RAY_CLUSTER = False


def _init_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    if not os.environ.get("RAY_ADDRESS"):
        local_only()
    if os.environ.get("RAY_ADDRESS"):  # under `ray job submit` or an explicit cluster
        ray.init(log_to_driver=True)
    else:
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
                 configure_logging=False, log_to_driver=True)


def _worker_error(e: BaseException) -> BaseException | None:
    """The first OTSError in a Ray Train failure (worker exceptions are wrapped)."""
    seen, todo = set(), [e]
    failures = getattr(e, "worker_failures", None) or {}
    todo += list(failures.values())
    while todo:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OTSError):
            return x
        todo += [getattr(x, "cause", None), x.__cause__, x.__context__]
    return None


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(e).__name__


def run(params: dict) -> dict:
    """Train; returns (and writes to ``<output_dir>/run.json``) the run summary."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ots.data import open_dataset
    from ots.storage import redact_uri
    from pipelines.common import (
        get_or_create_experiment,
        log_params,
        mlflow_client,
        ray_storage,
        resolve_tracking_uri,
    )

    params = resolve(params)
    train = params["train"]
    train["dataset"] = _abs_local(train["dataset"])
    open_dataset(train["dataset"], verify=False)  # fail early, on the driver, with one line
    out_dir = Path(train["output_dir"]).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    storage_path, storage_fs, storage_uri = ray_storage(train["storage_path"])

    tracking_uri = resolve_tracking_uri(train["mlflow"]["tracking_uri"])
    client = mlflow_client(tracking_uri)
    exp_id = get_or_create_experiment(client, train["mlflow"]["experiment"])
    kind = (params.get("solver") or {}).get("kind", "ots")
    run_name = train["run_name"] or f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    mrun = client.create_run(exp_id, run_name=run_name, tags={"ots.stage": "train", "ots.ray_run": run_name,
                                                                    "ots.solver": kind})
    run_id = mrun.info.run_id
    if not train["run_name"]:
        run_name = f"{run_name}-{run_id[:8]}"
        client.set_tag(run_id, "ots.ray_run", run_name)
    log_params(client, run_id, params)
    print(f"train: mlflow run {run_id} at {redact_uri(tracking_uri)} (experiment {train['mlflow']['experiment']!r}); "
          f"checkpoints in {storage_uri}/{run_name}", flush=True)

    _init_ray()
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # else each worker print() shows up twice
    resources = train["resources_per_worker"]
    scaling = ScalingConfig(num_workers=train["num_workers"], use_gpu=bool(train["use_gpu"]),
                            resources_per_worker=dict(resources) if resources else None)
    run_config = RunConfig(
        name=run_name, storage_path=storage_path, storage_filesystem=storage_fs,
        checkpoint_config=CheckpointConfig(num_to_keep=train["keep_last_k"]),
        failure_config=FailureConfig(max_failures=train["max_failures"]),
    )
    loop_config = {"params": params, "mlflow_run_id": run_id, "tracking_uri": tracking_uri,
                   "run_name": run_name, "marker_dir": str(out_dir),
                   **{k: int(os.environ[v]) for k, v in TEST_HOOKS.items() if os.environ.get(v)}}
    trainer = TorchTrainer(train_loop, train_loop_config=loop_config, scaling_config=scaling, run_config=run_config)
    t0 = time.perf_counter()
    try:
        result = trainer.fit()
    except Exception as e:  # noqa: BLE001 - Ray wraps worker errors; report one line
        client.set_terminated(run_id, "FAILED")
        inner = _worker_error(e)
        if inner is not None:
            raise inner from e
        raise TrainingError(f"training failed ({type(e).__name__}): {_first_line(e)}") from e
    wall = time.perf_counter() - t0
    metrics = dict(result.metrics or {})
    last_ckpt = result.checkpoint
    ckpt_path = last_ckpt.path if last_ckpt is not None else None
    nonfinite = _read_storage(storage_fs, f"{storage_path.rstrip('/')}/{run_name}/{NONFINITE}")
    if nonfinite:
        client.set_terminated(run_id, "FAILED")
        where = f"{storage_uri.rstrip('/')}/{run_name}/{os.path.basename(ckpt_path)}" if ckpt_path else "none"
        raise NonFiniteLossError(f"{json.loads(nonfinite)['error']}; last good checkpoint: {where}")
    diverged = metrics.get("diverged")
    if last_ckpt is None or (int(metrics.get("step", -1)) != train["steps"] and not diverged):
        client.set_terminated(run_id, "FAILED")
        raise TrainingError(f"training stopped at step {metrics.get('step')} of {train['steps']}")
    if diverged:  # the guard stopped a diverging run: say so, keep the best map, let evaluate/register judge it
        print(f"train: {diverged}; keeping the best map (step {metrics.get('best_step')}, "
              f"val SWD {metrics.get('best_val_swd', float('nan')):.2f})", flush=True)
        client.set_tag(run_id, "ots.stopped_early", diverged)

    final = out_dir / "final.pt"
    with last_ckpt.as_directory() as d:
        shutil.copyfile(os.path.join(d, CKPT), final)
    best_path = None
    best_remote = f"{storage_uri.rstrip('/')}/{run_name}/best/{CKPT}"
    try:
        import pyarrow.fs as pafs

        fs = storage_fs or pafs.LocalFileSystem()
        pafs.copy_files(f"{storage_path.rstrip('/')}/{run_name}/best/{CKPT}", str(out_dir / "best.pt"),
                        source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        best_path = str(out_dir / "best.pt")
    except (OSError, FileNotFoundError):  # no validated best (e.g. no val pairs): the final map stands for it
        best_remote = None
        shutil.copyfile(final, out_dir / "best.pt")
        best_path = str(out_dir / "best.pt")
    client.log_artifact(run_id, str(final), artifact_path="checkpoints")
    summary = {
        "mlflow_run_id": run_id,
        "tracking_uri": redact_uri(tracking_uri),  # never a password in a file; readers use the environment
        "experiment": train["mlflow"]["experiment"],
        "ray_run_name": run_name,
        "steps": int(metrics["step"]),
        "final_checkpoint": str(final),
        "final_checkpoint_storage": f"{storage_uri.rstrip('/')}/{run_name}/{os.path.basename(ckpt_path)}",
        "best_checkpoint": best_path,
        "best_checkpoint_storage": best_remote,
        "best_metric": {"name": "val_swd", "value": metrics.get("best_val_swd"), "step": metrics.get("best_step")},
        "final_metrics": {k: metrics[k] for k in ("loss_map", "loss_potential", "cost", "crops_per_s", "val_swd",
                                                  "val_psnr") if k in metrics},
        "stopped_early": diverged,
        "resumed_from": metrics.get("resumed_from", 0),
        "num_workers": train["num_workers"],
        "worker_nodes": [n for n in str(metrics.get("node_ids", "")).split(",") if n] or None,
        "wall_s": round(wall, 2),
    }
    client.log_metric(run_id, "train_wall_s", wall)
    (out_dir / "run.json").write_text(json.dumps(summary, indent=2) + "\n")
    client.log_artifact(run_id, str(out_dir / "run.json"))
    client.set_terminated(run_id, "FINISHED")
    return summary


def main(argv: list[str] | None = None) -> int:
    from pipelines.common import stage_main

    def report(summary: dict) -> None:
        print(json.dumps({k: summary[k] for k in ("mlflow_run_id", "steps", "final_checkpoint", "wall_s")}))

    return stage_main("train", __doc__, lambda params, _path: run(params), argv, report)

if __name__ == "__main__":
    raise SystemExit(main())
