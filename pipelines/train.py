"""DVC stage ``train``: distributed OTS training on Ray Train (DDP), checkpoints in storage, MLflow tracking.

    python -m pipelines.train --params params.yaml

Reads ``seed``, ``model``, ``solver`` and ``train`` from params.yaml. A Ray Train ``TorchTrainer`` runs
``train.num_workers`` workers; each builds the map and potential, streams its share of the shards
(``CropStream``; batch ``b`` is a pure function of (seed, rank, b), so resuming = restarting at the saved
batch index) and runs ``OTSSolver.step`` (the solver wraps both networks in DDP over the process group Ray
set up: gloo on CPU, nccl on GPU).

Checkpoints (``checkpoint.pt``, written by ``ots.solver.save_checkpoint``) are reported to Ray every
``checkpoint_every`` potential steps and at the last step into ``storage_path`` (a local folder or
``s3://bucket/prefix``; endpoint/credentials from the environment). Ray keeps the last ``keep_last_k``;
the best one by validation PSNR is kept apart under ``<storage>/<run>/best/``. ``FailureConfig(max_failures)``
restarts the worker group after a failure; workers restore from ``ray.train.get_checkpoint()`` (networks,
optimizers, reference map, step, RNG, data position, MLflow run id) and continue to ``train.steps``.

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
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from ots.errors import ConfigError, NonFiniteLossError, OTSError

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
    "val_pairs": 4,             # fixed val crops (grid + val_psnr, which picks the best checkpoint)
    "output_dir": "outputs/train",
    "mlflow": {"tracking_uri": None, "experiment": "ots"},
    "progress": True,
    # test hooks
    "inject_failure_at_step": None,  # rank 0 raises once at this step (marker file in output_dir)
    "inject_nan_at_step": None,      # the map weights become NaN after this step
    "overrides": None,          # a YAML of params overrides (e.g. outputs/tune/best_params.yaml), deep-merged first
}
CKPT = "checkpoint.pt"
NONFINITE = "nonfinite.json"  # written next to the checkpoints when a loss goes NaN/inf


class TrainingError(OTSError):
    """Training failed (after the allowed restarts)."""


# -- config ---------------------------------------------------------------------------------------------------
def resolve(params: dict) -> dict:
    """Validate and complete params (returns a deep copy with a full ``train`` section)."""
    from ots.models import check_sizes

    params = copy.deepcopy(params)
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
    train = {**TRAIN_DEFAULTS, **train, "mlflow": mlf}
    if not train["dataset"]:
        train["dataset"] = (params.get("data") or {}).get("output") or "data/demo"
    for k in ("steps", "batch_size", "checkpoint_every", "keep_last_k", "num_workers", "log_every"):
        if not isinstance(train[k], int) or train[k] < 1:
            raise ConfigError(f"train.{k} must be an integer >= 1, got {train[k]!r}")
    for k in ("max_failures", "image_every", "image_count", "val_pairs"):
        if not isinstance(train[k], int) or train[k] < 0:
            raise ConfigError(f"train.{k} must be an integer >= 0, got {train[k]!r}")
    model = params.get("model") or {}
    if "map" not in model or "potential" not in model:
        raise ConfigError("params need model.map and model.potential")
    check_sizes(model["map"], model["potential"], int(train["lr_crop"]), int(train["hr_crop"]))
    solver = dict(params.get("solver") or {})
    solver_cfg(solver)  # validates
    params["train"] = train
    params.setdefault("seed", 0)
    return params


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def solver_cfg(solver: dict) -> dict:
    from ots.solver import SolverConfig

    cfg = {k: v for k, v in solver.items() if k not in ("cost", "anchor_every")}
    cfg["check_every"] = 0  # the train loop checks (collectively) at log/checkpoint steps
    SolverConfig.from_dict(cfg)
    return cfg


def _abs_local(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


# -- worker ---------------------------------------------------------------------------------------------------
def _psnr(a, b) -> float:
    """PSNR (dB) of [-1, 1] tensors, on the [0, 1] scale."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).square().mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def _val_crops(uri: str, n: int, lr_crop: int, scale: int):
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


def train_loop(config: dict) -> None:  # noqa: C901 - one readable loop
    import ray.train
    import torch
    import torch.nn.functional as F

    from ots.costs import ReferenceMap, WeightedCost, unwrap
    from ots.data import CropStream
    from ots.models import build_map, build_potential
    from ots.solver import OTSSolver, resume, save_checkpoint

    params, run_id, tracking_uri = config["params"], config["mlflow_run_id"], config["tracking_uri"]
    train, seed = params["train"], int(params["seed"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    device = ray.train.torch.get_device() if train["use_gpu"] else torch.device("cpu")

    torch.manual_seed(seed)
    T, f = build_map(params["model"]["map"]), build_potential(params["model"]["potential"])
    scale = int(params["model"]["map"].get("scale", 4))
    solver_section = params.get("solver") or {}
    solver = OTSSolver(T, f, WeightedCost(solver_section.get("cost", "mse")),
                       ReferenceMap(scale, int(solver_section.get("anchor_every", 0))),
                       solver_cfg(solver_section), device=device, distributed=dist)
    k_T, B = solver.cfg.k_T, int(train["batch_size"])
    uri = train["dataset"]
    lr_stream = CropStream(uri, "lr", crop=train["lr_crop"], batch_size=B, seed=seed, rank=rank, world_size=world)
    hr_stream = CropStream(uri, "hr", crop=train["hr_crop"], batch_size=B, seed=seed, rank=rank, world_size=world)
    pos = {"lr": 0, "hr": 0}
    best = {"val_psnr": None, "step": None}

    ckpt = ray.train.get_checkpoint()
    resumed_from = 0
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = resume(solver, os.path.join(d, CKPT))
        extra = state.get("extra") or {}
        pos.update(extra.get("data", {}).get("position", {}))
        best.update(extra.get("best") or {})
        run_id = extra.get("mlflow_run_id", run_id)
        resumed_from = solver.step_count

    def next_lr():
        b = pos["lr"]
        pos["lr"] += 1
        return lr_stream.batch(b)

    def next_hr():
        b = pos["hr"]
        pos["hr"] += 1
        return hr_stream.batch(b)

    # Rank 0: MLflow client, fixed crops for image grids / val PSNR.
    client, last_logged, logged, replay_diff = None, 0, {}, 0.0
    if rank == 0:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        if resumed_from:
            logged = {m.step: m.value for m in client.get_metric_history(run_id, "loss_map")}
            last_logged = max(logged, default=0)
            client.set_tag(run_id, "resumed_from_step", str(resumed_from))
            print(f"train: resumed from step {resumed_from} (attempt with {world} worker(s))", flush=True)
        fixed_lr = CropStream(uri, "lr", crop=train["lr_crop"], batch_size=max(1, train["image_count"]),
                              seed=seed + 7919, augment=False).batch(0)[: train["image_count"]]
        val_lr, val_hr = _val_crops(uri, train["val_pairs"], train["lr_crop"], scale)

    node_ids = [ray.get_runtime_context().get_node_id()]
    if dist and world > 1:
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, node_ids[0])
        node_ids = gathered

    def forward_map(x):
        net = unwrap(solver.T)
        was = net.training
        net.eval()
        with torch.no_grad():
            y = net(x.to(device)).float().cpu()
        net.train(was)
        return y

    def log_images(step: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for tag, lr, hr in (("train", fixed_lr, None), ("val", val_lr, val_hr)):
                if lr is None or len(lr) == 0:
                    continue
                up = [F.interpolate(lr, scale_factor=scale, mode="nearest"),
                      F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False),
                      forward_map(lr)]
                p = os.path.join(tmp, f"{tag}_step{step:06d}.png")
                _grid_png(p, up + ([hr] if hr is not None else []))
                client.log_artifact(run_id, p, artifact_path=f"images/{tag}")

    def collective_finite() -> str | None:
        msg = None
        try:
            solver.check_finite()
        except NonFiniteLossError as e:
            msg = str(e)
        if dist and world > 1:
            flag = torch.tensor([1.0 if msg else 0.0], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if flag.item() and not msg:
                msg = f"non-finite loss on another rank by step {solver.step_count}"
        return msg

    target = int(train["steps"])
    marker = Path(config["marker_dir"]) / f".failure-injected-{config['run_name']}"
    t_last, steps_since = time.perf_counter(), 0
    while solver.step_count < target:
        losses = solver.step(next_lr, next_hr)
        step = solver.step_count
        steps_since += 1
        if train["inject_nan_at_step"] is not None and step == int(train["inject_nan_at_step"]):
            with torch.no_grad():
                for p in unwrap(solver.T).parameters():
                    p.fill_(float("nan"))
        do_log = step % train["log_every"] == 0 or step == target
        do_ckpt = step % train["checkpoint_every"] == 0 or step == target
        do_img = rank == 0 and train["image_every"] and (step % train["image_every"] == 0 or step == target)
        if do_log or do_ckpt:
            bad = collective_finite()
            if bad:  # every rank stops here; rank 0 leaves the message next to the checkpoints for the driver
                if rank == 0:
                    _write_storage(ctx.get_storage(), NONFINITE, json.dumps({"step": step, "error": bad}))
                ray.train.report({"step": step, "nonfinite": bad})
                return
        metrics = {}
        if do_log:
            dt = time.perf_counter() - t_last
            crops = steps_since * (k_T + 1) * B * world
            metrics = {k: float(v.float().item()) for k, v in losses.items()}
            metrics["crops_per_s"] = crops / max(dt, 1e-9)
            metrics["steps_per_s"] = steps_since / max(dt, 1e-9)
            t_last, steps_since = time.perf_counter(), 0
            if rank == 0:
                if train["progress"]:
                    print(f"train: step {step}/{target} loss_map={metrics['loss_map']:.4f} "
                          f"loss_potential={metrics['loss_potential']:.4f} cost={metrics['cost']:.4f} "
                          f"crops/s={metrics['crops_per_s']:.1f}", flush=True)
                if step <= last_logged and step in logged:  # replayed after a restart: compare, don't re-log
                    diff = abs(metrics["loss_map"] - logged[step])
                    replay_diff = max(replay_diff, diff)
                    client.log_metric(run_id, "resume_replay_diff", replay_diff, step=step)
                    print(f"train: replayed step {step}: |loss_map - logged| = {diff:.3g}", flush=True)
                if step > last_logged:
                    from mlflow.entities import Metric

                    ts = int(time.time() * 1000)
                    client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v in metrics.items()])
        if do_img and step > last_logged:
            log_images(step)
        if rank == 0 and train["inject_failure_at_step"] is not None and step == int(train["inject_failure_at_step"]) \
                and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(step))
            raise RuntimeError(f"injected failure at step {step}")
        if do_ckpt:
            report = {"step": step, "resumed_from": resumed_from, "node_ids": ",".join(node_ids), **metrics}
            with tempfile.TemporaryDirectory() as d:
                checkpoint = None
                if rank == 0:
                    if val_lr is not None:
                        v = _psnr(forward_map(val_lr), val_hr)
                        report["val_psnr"] = v
                        if step > last_logged:
                            client.log_metric(run_id, "val_psnr", v, step=step)
                    extra = {"data": {"position": dict(pos), "seed": seed, "world_size": world},
                             "mlflow_run_id": run_id, "best": dict(best), "run_name": config["run_name"]}
                    v = report.get("val_psnr")
                    is_best = v is not None and (best["val_psnr"] is None or v > best["val_psnr"])
                    if is_best:
                        best = {"val_psnr": report["val_psnr"], "step": step}
                        extra["best"] = dict(best)
                    save_checkpoint(os.path.join(d, CKPT), solver, config=params, extra=extra)
                    with open(os.path.join(d, "meta.json"), "w") as fh:
                        json.dump({"step": step, "val_psnr": report.get("val_psnr"), "mlflow_run_id": run_id}, fh)
                    if is_best:
                        _upload_best(ctx.get_storage(), d)
                    report["best_val_psnr"] = best["val_psnr"]
                    report["best_step"] = best["step"]
                    checkpoint = ray.train.Checkpoint.from_directory(d)
                ray.train.report(report, checkpoint=checkpoint)


def _write_storage(storage, name: str, text: str) -> None:
    fs, root = storage.storage_filesystem, storage.experiment_fs_path
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{name}") as fh:
        fh.write(text.encode())


def _read_storage(fs, path: str) -> str | None:
    import pyarrow.fs as pafs

    fs = fs or pafs.LocalFileSystem()
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as fh:
        return fh.read().decode()


def _upload_best(storage, local_dir: str) -> None:
    import pyarrow.fs as pafs

    fs, dest = storage.storage_filesystem, f"{storage.experiment_fs_path}/best"
    fs.create_dir(dest, recursive=True)
    for name in (CKPT, "meta.json"):  # checkpoint first: meta.json names a complete checkpoint
        pafs.copy_files(os.path.join(local_dir, name), f"{dest}/{name}",
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


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


def _storage(path: str):
    """(storage_path, storage_filesystem) for RunConfig: local folders absolute, s3:// through ots.storage."""
    from ots.storage import open_store

    if "://" not in path or path.startswith("file://"):
        local = _abs_local(path.removeprefix("file://"))
        Path(local).mkdir(parents=True, exist_ok=True)
        return local, None, local
    store = open_store(path, create=True)
    return store.full(), store.fs, store.uri


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
    from pipelines.common import get_or_create_experiment, log_params, mlflow_client, resolve_tracking_uri

    params = resolve(params)
    train = params["train"]
    train["dataset"] = _abs_local(train["dataset"])
    open_dataset(train["dataset"], verify=False)  # fail early, on the driver, with one line
    out_dir = Path(train["output_dir"]).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    storage_path, storage_fs, storage_uri = _storage(train["storage_path"])

    tracking_uri = resolve_tracking_uri(train["mlflow"]["tracking_uri"])
    client = mlflow_client(tracking_uri)
    exp_id = get_or_create_experiment(client, train["mlflow"]["experiment"])
    run_name = train["run_name"] or f"ots-{time.strftime('%Y%m%d-%H%M%S')}"
    mrun = client.create_run(exp_id, run_name=run_name, tags={"ots.stage": "train", "ots.ray_run": run_name})
    run_id = mrun.info.run_id
    if not train["run_name"]:
        run_name = f"{run_name}-{run_id[:8]}"
        client.set_tag(run_id, "ots.ray_run", run_name)
    log_params(client, run_id, params)
    print(f"train: mlflow run {run_id} at {tracking_uri} (experiment {train['mlflow']['experiment']!r}); "
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
                   "run_name": run_name, "marker_dir": str(out_dir)}
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
    if last_ckpt is None or int(metrics.get("step", -1)) != train["steps"]:
        client.set_terminated(run_id, "FAILED")
        raise TrainingError(f"training stopped at step {metrics.get('step')} of {train['steps']}")

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
    except (OSError, FileNotFoundError):
        best_remote = None
    client.log_artifact(run_id, str(final), artifact_path="checkpoints")
    summary = {
        "mlflow_run_id": run_id,
        "tracking_uri": tracking_uri,
        "experiment": train["mlflow"]["experiment"],
        "ray_run_name": run_name,
        "steps": int(metrics["step"]),
        "final_checkpoint": str(final),
        "final_checkpoint_storage": f"{storage_uri.rstrip('/')}/{run_name}/{os.path.basename(ckpt_path)}",
        "best_checkpoint": best_path,
        "best_checkpoint_storage": best_remote,
        "best_metric": {"name": "val_psnr", "value": metrics.get("best_val_psnr"), "step": metrics.get("best_step")},
        "final_metrics": {k: metrics[k] for k in ("loss_map", "loss_potential", "cost", "crops_per_s", "val_psnr")
                          if k in metrics},
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
