"""DVC stage ``tune``: hyperparameter search with Ray Tune (ASHA) on an unpaired validation metric, MLflow tracking.

    python -m pipelines.tune --params params.yaml     # or: dvc repro pipelines/optional/dvc.yaml:tune

Reads ``tune`` (the search), ``seed``, ``model``, ``solver`` and ``train`` (crops, batch size, dataset, MLflow
settings) from params.yaml. ``tune.space`` maps dotted params keys to samplers::

    space:
      solver.lr_map: {loguniform: [3.0e-5, 3.0e-4]}
      solver.k_T: {choice: [3, 5, 10]}
      solver.cost.mse: {uniform: [0.5, 4.0]}
      train.batch_size: {choice: [4, 8]}

Samplers: ``uniform``/``loguniform`` [low, high], ``randint`` [low, high) and ``choice`` [values]. A key must name an
existing entry of ``solver``/``model``/``train``/``seed`` (or a known cost term under ``solver.cost``); every
bound/choice is validated as a full training config before Ray starts.

Each trial is a single-worker function trainable (``tune.resources_per_trial``, default 1 CPU): it builds the map
and potential, runs ``OTSSolver.step`` for up to ``tune.max_steps`` potential steps and every ``report_every``
steps reports the validation metric to Tune. The metric is unpaired: SWD (weights-free, lower is better) between
T(fixed LR crops) and fixed HR crops drawn independently (random crops of the validation pairs' LR and HR images,
or of the training domains when the dataset has no val pairs). ``metric: fid`` uses FID on the same crops when
the Inception weights resolve locally; otherwise the search falls back to SWD and says so. ASHA
(``time_attr=step``) stops bad trials at ``grace_period``, ``grace_period * reduction_factor``, ... steps. The search
is bounded by ``num_samples`` and ``time_budget_s``.

MLflow (experiment ``train.mlflow.experiment``): one parent run (tag ``ots.stage=tune``) and one child run per trial
(tag ``mlflow.parentRunId``) with the trial's params and its metric history, logged live from the driver. The
parent gets the best config (``best.<key>`` params, ``best_<metric>``), ``best_params.yaml``, ``results.json`` and
``metric_vs_step.png`` (the metric against step for every trial).

Outputs (next to ``tune.output``): ``best_params.yaml`` -- only the searched keys, nested (``{solver: {lr_map: ...}}``)
-- which the train stage merges with ``train.overrides: outputs/tune/best_params.yaml``; ``results.json`` (every
trial: config, steps, metric history, last/best value, status); ``metric_vs_step.png``.

The best trial is the one with the lowest *last* reported metric (Ray's ``scope="last"``), among trials that did
not fail.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ots.errors import ConfigError, NonFiniteLossError, OTSError

TUNE_DEFAULTS: dict = {
    "space": None,                  # {dotted.key: {sampler: args}}; required
    "metric": "swd",                # swd | fid (fid only when the Inception weights resolve; else swd)
    "num_samples": 4,               # trials
    "time_budget_s": 600,           # the whole search
    "max_steps": 20,                # potential steps per trial (ASHA max_t)
    "report_every": 5,              # steps between metric reports
    "grace_period": 5,              # ASHA: steps before a trial can be stopped
    "reduction_factor": 2,          # ASHA
    "val_crops": 16,                # fixed LR crops (mapped by T) and HR crops for the metric
    "resources_per_trial": {"CPU": 1},
    "max_concurrent_trials": None,  # None: as many as the resources allow
    "storage_path": "outputs/tune/ray",
    "output": "outputs/tune/best_params.yaml",  # results.json and metric_vs_step.png go next to it
    "inception_weights": None,      # metric=fid: None = resolved locally (hub cache / $OTS_INCEPTION_WEIGHTS)
    "verbose": 1,                   # Ray Tune console verbosity (0-3)
}
SAMPLERS = {"uniform": 2, "loguniform": 2, "randint": 2, "choice": None}
SECTIONS = ("solver", "model", "train", "seed")
NOT_SEARCHABLE = {"train.steps", "train.dataset", "train.mlflow", "train.overrides", "train.output_dir",
                  "train.storage_path", "train.num_workers", "train.use_gpu", "train.resources_per_worker"}
NONFINITE_VALUE = 1e12  # reported when a trial's losses go NaN/inf (then the trial stops)


class TuneError(OTSError):
    """The search failed (e.g. every trial failed)."""


# -- config ---------------------------------------------------------------------------------------------------
def _get(d: Any, dotted: str) -> tuple[bool, Any]:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return False, None
        d = d[part]
    return True, d


def _set(d: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        if not isinstance(d.get(part), dict):
            d[part] = {}
        d = d[part]
    d[last] = value


def nest(flat: dict) -> dict:
    """{"a.b": 1, "a.c": 2} -> {"a": {"b": 1, "c": 2}}."""
    out: dict = {}
    for k, v in sorted(flat.items()):
        _set(out, k, v)
    return out


def apply_overrides(params: dict, flat: dict) -> dict:
    """A deep copy of params with dotted keys set."""
    params = copy.deepcopy(params)
    for k, v in flat.items():
        _set(params, k, v)
    return params


def _plain(v: Any) -> Any:
    """numpy scalars (from Tune's samplers) -> Python numbers, so they dump to YAML/JSON."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (list, dict, str)) else v


def _check_space(space: Any, base: dict) -> dict:
    """Validate the search-space spec against the resolved params; returns {key: (sampler, args)}."""
    from ots.costs import COSTS

    if not isinstance(space, dict) or not space:
        raise ConfigError("tune.space must be a non-empty mapping {dotted.key: {sampler: args}}")
    out = {}
    for key, spec in space.items():
        key = str(key)
        section = key.split(".", 1)[0]
        if section not in SECTIONS or any(key == k or key.startswith(k + ".") for k in NOT_SEARCHABLE):
            raise ConfigError(f"tune.space: {key!r} cannot be searched (keys under {', '.join(SECTIONS)}; "
                              f"not {', '.join(sorted(NOT_SEARCHABLE))})")
        found, cur = _get(base, key)
        parent, _, leaf = key.rpartition(".")
        is_cost_term = parent == "solver.cost" and isinstance(_get(base, parent)[1], dict) and leaf in COSTS
        if not found and not is_cost_term:
            raise ConfigError(f"tune.space: unknown key {key!r} (not in the resolved params)")
        if found and isinstance(cur, dict):
            raise ConfigError(f"tune.space: {key!r} is a section; search one of its values")
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ConfigError(f"tune.space.{key}: expected one sampler, e.g. {{uniform: [low, high]}}, got {spec!r}")
        (name, args), = spec.items()
        if name not in SAMPLERS:
            raise ConfigError(f"tune.space.{key}: unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
        if not isinstance(args, list) or not args or (SAMPLERS[name] and len(args) != SAMPLERS[name]):
            want = "[low, high]" if SAMPLERS[name] else "a non-empty list of values"
            raise ConfigError(f"tune.space.{key}: {name} needs {want}, got {args!r}")
        if name != "choice":
            if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args) or args[0] >= args[1]:
                raise ConfigError(f"tune.space.{key}: {name} needs numbers low < high, got {args!r}")
            if name == "loguniform" and args[0] <= 0:
                raise ConfigError(f"tune.space.{key}: loguniform needs low > 0, got {args!r}")
            if name == "randint" and not all(isinstance(a, int) for a in args):
                raise ConfigError(f"tune.space.{key}: randint needs integers, got {args!r}")
        out[key] = (name, args)
    # Every bound / choice must give a valid training config (sizes, solver options, cost weights).
    from pipelines.train import resolve

    for key, (name, args) in out.items():
        values = args if name == "choice" else ([args[0], args[1] - 1] if name == "randint" else args)
        for v in values:
            try:
                resolve(apply_overrides(base, {key: v}))
            except ConfigError as e:
                raise ConfigError(f"tune.space.{key}: value {v!r} is invalid: {e}") from None
    return out


def resolve_tune(params: dict) -> tuple[dict, dict, dict]:
    """(tune section completed, base params resolved for training, validated space)."""
    from pipelines.train import resolve

    tune = params.get("tune") or {}
    if not isinstance(tune, dict):
        raise ConfigError("tune section must be a mapping")
    unknown = sorted(set(tune) - set(TUNE_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown keys in tune section: {', '.join(unknown)}")
    tune = {**TUNE_DEFAULTS, **tune}
    for k in ("num_samples", "max_steps", "report_every", "grace_period", "val_crops"):
        if not isinstance(tune[k], int) or isinstance(tune[k], bool) or tune[k] < 1:
            raise ConfigError(f"tune.{k} must be an integer >= 1, got {tune[k]!r}")
    if not isinstance(tune["reduction_factor"], (int, float)) or tune["reduction_factor"] < 2:
        raise ConfigError(f"tune.reduction_factor must be >= 2, got {tune['reduction_factor']!r}")
    if not isinstance(tune["time_budget_s"], (int, float)) or tune["time_budget_s"] <= 0:
        raise ConfigError(f"tune.time_budget_s must be > 0, got {tune['time_budget_s']!r}")
    if tune["grace_period"] > tune["max_steps"]:
        raise ConfigError(f"tune.grace_period ({tune['grace_period']}) exceeds tune.max_steps ({tune['max_steps']})")
    if tune["metric"] not in ("swd", "fid"):
        raise ConfigError(f"tune.metric must be 'swd' or 'fid', got {tune['metric']!r}")
    res = tune["resources_per_trial"]
    if not isinstance(res, dict) or not res or not all(isinstance(v, (int, float)) and v >= 0 for v in res.values()):
        raise ConfigError(f"tune.resources_per_trial must be a mapping like {{CPU: 1}}, got {res!r}")
    trial_resources(res)  # validates the names
    mct = tune["max_concurrent_trials"]
    if mct is not None and (not isinstance(mct, int) or mct < 1):
        raise ConfigError(f"tune.max_concurrent_trials must be null or an integer >= 1, got {mct!r}")
    base = {k: copy.deepcopy(params[k]) for k in ("seed", "model", "solver", "train", "data") if k in params}
    base.setdefault("train", {})
    if isinstance(base["train"], dict):
        base["train"] = {**base["train"], "overrides": None}  # tune searches from params.yaml itself
    base = resolve(base)
    space = _check_space(tune["space"], base)
    return tune, base, space


def trial_resources(spec: dict) -> dict:
    """Ray resource names for one trial: ``cpu``/``gpu``/``memory`` in Ray's spelling, custom names as given
    (Ray resource names are case-sensitive: ``{node_A: 1}`` only schedules on a node that offers ``node_A``)."""
    canon = {"cpu": "CPU", "gpu": "GPU", "memory": "memory"}
    out: dict = {}
    for k, v in spec.items():
        name = canon.get(str(k).lower(), str(k))
        if name in out:
            raise ConfigError(f"tune.resources_per_trial: {k!r} given twice (as {name!r})")
        out[name] = float(v)
    return out


def trial_device(resources: dict) -> str:
    """Where a trial trains: the GPU Tune reserved for it (Ray sets CUDA_VISIBLE_DEVICES to it), else the CPU."""
    return "cuda" if resources.get("GPU", 0) > 0 else "cpu"


def param_space(space: dict) -> dict:
    from ray import tune as rt

    make = {"uniform": lambda a: rt.uniform(*a), "loguniform": lambda a: rt.loguniform(*a),
            "randint": lambda a: rt.randint(*a), "choice": lambda a: rt.choice(list(a))}
    return {key: make[name](args) for key, (name, args) in space.items()}


# -- trial ----------------------------------------------------------------------------------------------------
def _val_crops(uri: str, n: int, lr_crop: int, hr_crop: int, seed: int):
    """Fixed, independent (unpaired) LR and HR crops: from the val pairs, else from the training domains."""
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


def trial_fn(config: dict, ctx: dict) -> None:
    """One trial: OTS steps, the validation metric every ``report_every`` steps reported to Tune."""
    import torch
    from ray import tune as rt

    from ots.build import build_solver
    from ots.data import CropStream
    from pipelines.worker import solver_cfg

    device = torch.device(ctx["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("tune.resources_per_trial reserves a GPU but the trial sees no CUDA device "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    overrides = {k: _plain(v) for k, v in config.items()}
    params = apply_overrides(ctx["params"], overrides)
    train, seed, tune = params["train"], int(params["seed"]), ctx["tune"]
    torch.set_num_threads(max(1, int(ctx["threads"])))
    solver = build_solver(params["model"], solver_cfg(params["solver"]), device=device, distributed=False, seed=seed)
    B, uri = int(train["batch_size"]), train["dataset"]
    lr_stream = CropStream(uri, "lr", crop=train["lr_crop"] + 2 * solver.cfg.margin, batch_size=B, seed=seed)
    hr_stream = CropStream(uri, "hr", crop=train["hr_crop"], batch_size=B, seed=seed)
    pos = {"lr": 0, "hr": 0}

    def nxt(stream, key):
        def f_():
            b = pos[key]
            pos[key] += 1
            return stream.batch(b)
        return f_

    val_lr, val_hr, _ = _val_crops(uri, int(tune["val_crops"]), train["lr_crop"], train["hr_crop"], seed)
    metric = ctx["metric"]
    inception = None
    if metric == "fid":
        from ots.metrics import build_inception

        inception = build_inception(tune["inception_weights"])

    def evaluate() -> float:
        T = solver.map_for_eval
        was = T.training
        T.eval()
        with torch.no_grad():  # on the trial's device; the metric on the host
            sr = T(val_lr.to(device)).float().clamp(-1, 1).cpu()
        T.train(was)
        if metric == "fid":
            from ots.metrics import fid

            return float(fid(inception, (sr + 1) / 2, (val_hr + 1) / 2))
        from ots.metrics import swd

        return float(swd(sr, val_hr, seed=seed)["mean"])

    max_steps, every = int(tune["max_steps"]), int(tune["report_every"])
    t0 = time.perf_counter()
    while solver.step_count < max_steps:
        losses = solver.step(nxt(lr_stream, "lr"), nxt(hr_stream, "hr"))
        step = solver.step_count
        if step % every and step != max_steps:
            continue
        report = {"step": step, "elapsed_s": time.perf_counter() - t0, "device": str(device)}
        try:
            solver.check_finite()
        except NonFiniteLossError as e:
            rt.report({**report, metric: NONFINITE_VALUE, "nonfinite": str(e)})
            return
        report.update({k: float(v) for k, v in losses.items()})
        report[metric] = evaluate()
        rt.report(report)


# -- MLflow (driver side, live) -------------------------------------------------------------------------------
def _mlflow_callback(client, exp_id: str, parent_id: str, base: dict, metric: str, max_steps: int):
    from mlflow.entities import Metric
    from ray.tune import Callback

    from pipelines.common import log_params

    class MLflowChildren(Callback):
        """One child run per trial: its params on start, its metrics at every report, its status at the end."""

        def __init__(self):
            self.runs: dict[str, str] = {}
            self.steps: dict[str, int] = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            if trial.trial_id in self.runs:
                return
            overrides = {k: _plain(v) for k, v in trial.config.items()}
            run = client.create_run(exp_id, run_name=f"trial-{trial.trial_id}", tags={
                "mlflow.parentRunId": parent_id, "ots.stage": "tune", "ots.trial_id": trial.trial_id,
                "ots.searched": ",".join(sorted(overrides))})
            self.runs[trial.trial_id] = run.info.run_id
            params = apply_overrides({k: base[k] for k in ("seed", "model", "solver", "train")}, overrides)
            params["train"] = {k: v for k, v in params["train"].items() if k != "mlflow"}
            log_params(client, run.info.run_id, params)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            run_id = self.runs.get(trial.trial_id)
            if run_id is None or "step" not in result:
                return
            step, ts = int(result["step"]), int(time.time() * 1000)
            keys = (metric, "loss_map", "loss_potential", "cost", "elapsed_s")
            client.log_batch(run_id, metrics=[Metric(k, float(result[k]), ts, step) for k in keys if k in result])
            self.steps[trial.trial_id] = step
            if "nonfinite" in result:
                client.set_tag(run_id, "ots.nonfinite", str(result["nonfinite"])[:500])

        def _end(self, trial, status: str):
            run_id = self.runs.get(trial.trial_id)
            if run_id is None:
                return
            steps = self.steps.get(trial.trial_id, 0)
            client.set_tag(run_id, "ots.steps", str(steps))
            if status == "FINISHED" and steps < max_steps:
                client.set_tag(run_id, "ots.stopped_early", "true")
            client.set_terminated(run_id, status)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._end(trial, "FINISHED")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._end(trial, "FAILED")

        def close(self) -> None:
            """Child runs Tune never ended (time budget): KILLED."""
            for run_id in self.runs.values():
                if client.get_run(run_id).info.status == "RUNNING":
                    client.set_terminated(run_id, "KILLED")

    return MLflowChildren()


def plot(trials: list[dict], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for t in trials:
        if t["steps"]:
            label = f"{t['trial_id']} ({t['status']})"
            ax.plot(t["steps"], t["history"], marker="o", markersize=3, label=label)
    ax.set_xlabel("potential step")
    ax.set_ylabel(f"{metric} (lower is better)")
    ax.set_title(f"Tune: validation {metric} per trial")
    ax.grid(alpha=0.3)
    if any(t["steps"] for t in trials):
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


# -- driver ---------------------------------------------------------------------------------------------------
def _trial_summary(result, metric: str, max_steps: int) -> dict:
    df = result.metrics_dataframe
    steps, hist = [], []
    if df is not None and len(df) and metric in df and "step" in df:
        rows = df[["step", metric]].dropna()
        steps = [int(s) for s in rows["step"]]
        hist = [float(v) for v in rows[metric]]
    trial_id = (result.metrics or {}).get("trial_id") or Path(str(result.path)).name
    device = (result.metrics or {}).get("device")
    status = "error" if result.error else ("completed" if steps and steps[-1] >= max_steps else "stopped_early")
    if result.metrics and "nonfinite" in result.metrics:
        status = "nonfinite"
    out = {
        "trial_id": trial_id,
        "config": {k: _plain(v) for k, v in (result.config or {}).items()},
        "status": status,
        "device": device,
        "steps": steps,
        "history": hist,
        "last": hist[-1] if hist else None,
        "best": min(hist) if hist else None,
        "best_step": steps[hist.index(min(hist))] if hist else None,
    }
    if result.error:
        out["error"] = str(result.error).strip().splitlines()[0][:300] if str(result.error).strip() else "error"
    return out


def run(params: dict) -> dict:
    """Search; returns the summary (also written to ``results.json``)."""
    import yaml
    from ray import tune as rt
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from ots.data import open_dataset
    from ots.storage import redact_uri
    from pipelines.common import (
        flatten,
        get_or_create_experiment,
        log_params,
        mlflow_client,
        ray_storage,
        resolve_tracking_uri,
    )
    from pipelines.train import _abs_local, _init_ray

    tune, base, space = resolve_tune(params)
    base["train"]["dataset"] = _abs_local(base["train"]["dataset"])
    open_dataset(base["train"]["dataset"], verify=False)  # fail early, on the driver, with one line
    out_file = Path(tune["output"]).resolve()
    out_dir = out_file.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    storage_path, storage_fs, storage_uri = ray_storage(tune["storage_path"])  # a folder or s3://, never Path()

    metric, note = tune["metric"], None
    if metric == "fid":
        from ots.metrics import build_inception, load_optional

        model, reason = load_optional(build_inception, weights=tune["inception_weights"])
        if model is None:
            metric, note = "swd", f"metric fid unavailable ({reason}); using swd"
            print(f"tune: note: {note}", flush=True)
        del model

    mlf = base["train"]["mlflow"]
    tracking_uri = resolve_tracking_uri(mlf["tracking_uri"])
    client = mlflow_client(tracking_uri)
    exp_id = get_or_create_experiment(client, mlf["experiment"])
    name = f"tune-{time.strftime('%Y%m%d-%H%M%S')}"
    parent = client.create_run(exp_id, run_name=name, tags={"ots.stage": "tune", "ots.metric": metric})
    parent_id = parent.info.run_id
    name = f"{name}-{parent_id[:8]}"
    if note:
        client.set_tag(parent_id, "ots.note", note)
    log_params(client, parent_id, {"tune": {**{k: v for k, v in tune.items() if k != "space"}, "metric": metric},
                                   **{k: base[k] for k in ("seed", "model", "solver")}})
    space_params = flatten({"space": {k: {n: a} for k, (n, a) in space.items()}})
    log_params(client, parent_id, {"tune": {k.replace("space.", "space/", 1): v for k, v in space_params.items()}})
    print(f"tune: mlflow parent run {parent_id} at {redact_uri(tracking_uri)} (experiment {mlf['experiment']!r}); "
          f"{tune['num_samples']} trial(s) x {tune['max_steps']} steps, metric {metric}; "
          f"trials in {storage_uri}/{name}", flush=True)

    _init_ray()
    res = trial_resources(tune["resources_per_trial"])
    ctx = {"params": base, "tune": tune, "metric": metric, "threads": res.get("CPU", 1) or 1,
           "device": trial_device(res)}
    trainable = rt.with_resources(rt.with_parameters(trial_fn, ctx=ctx), res)
    callback = _mlflow_callback(client, exp_id, parent_id, base, metric, tune["max_steps"])
    scheduler = ASHAScheduler(time_attr="step", max_t=tune["max_steps"], grace_period=tune["grace_period"],
                              reduction_factor=tune["reduction_factor"])
    tuner = rt.Tuner(
        trainable,
        param_space=param_space(space),
        tune_config=rt.TuneConfig(
            metric=metric, mode="min", scheduler=scheduler, num_samples=tune["num_samples"],
            time_budget_s=tune["time_budget_s"], max_concurrent_trials=tune["max_concurrent_trials"],
            search_alg=BasicVariantGenerator(random_state=int(base["seed"])),
        ),
        run_config=rt.RunConfig(name=name, storage_path=storage_path, storage_filesystem=storage_fs,
                                callbacks=[callback],
                                verbose=int(tune["verbose"]), failure_config=rt.FailureConfig(max_failures=0)),
    )
    t0 = time.perf_counter()
    try:
        grid = tuner.fit()
    except Exception as e:  # noqa: BLE001 - report one line
        client.set_terminated(parent_id, "FAILED")
        raise TuneError(f"search failed ({type(e).__name__}): {str(e).strip().splitlines()[0][:300]}") from e
    finally:
        callback.close()
    wall = time.perf_counter() - t0

    trials = [_trial_summary(r, metric, tune["max_steps"]) for r in grid]
    for t in trials:
        t["mlflow_run_id"] = callback.runs.get(t["trial_id"])
    ok = [t for t in trials if t["status"] != "error" and t["last"] is not None and math.isfinite(t["last"])]
    if not ok:
        client.set_terminated(parent_id, "FAILED")
        first = next((t.get("error") for t in trials if t.get("error")), "no trial reported a metric")
        raise TuneError(f"all {len(trials)} trial(s) failed: {first}")
    best = min(ok, key=lambda t: t["last"])
    best_nested = nest(best["config"])
    out_file.write_text("# Best config from `python -m pipelines.tune` (searched keys only). Train with it:\n"
                        f"#   train.overrides: {tune['output']}\n" + yaml.safe_dump(best_nested, sort_keys=True))
    summary = {
        "metric": metric, "mode": "min", "note": note, "mlflow_parent_run_id": parent_id,
        "tracking_uri": redact_uri(tracking_uri), "experiment": mlf["experiment"], "ray_run_name": name,
        "ray_storage": f"{storage_uri.rstrip('/')}/{name}",
        "space": {k: {n: a} for k, (n, a) in space.items()},
        "best": {"trial_id": best["trial_id"], "value": best["last"], "step": best["steps"][-1],
                 "config": best["config"], "mlflow_run_id": best["mlflow_run_id"]},
        "best_params_file": str(out_file), "n_trials": len(trials), "wall_s": round(wall, 2), "trials": trials,
    }
    results = out_dir / "results.json"
    results.write_text(json.dumps(summary, indent=2) + "\n")
    png = out_dir / "metric_vs_step.png"
    plot(trials, metric, png)

    log_params(client, parent_id, {"best": best["config"]})
    client.log_metric(parent_id, f"best_{metric}", best["last"])
    client.log_metric(parent_id, "tune_wall_s", wall)
    client.set_tag(parent_id, "ots.best_trial", best["trial_id"])
    if best["mlflow_run_id"]:
        client.set_tag(parent_id, "ots.best_run_id", best["mlflow_run_id"])
    for p in (out_file, results, png):
        client.log_artifact(parent_id, str(p))
    client.set_terminated(parent_id, "FINISHED")
    print(f"tune: best {metric}={best['last']:.4g} (trial {best['trial_id']}): {json.dumps(best['config'])}; "
          f"wrote {out_file}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    from pipelines.common import stage_main

    def report(summary: dict) -> None:
        print(json.dumps({"best": summary["best"]["config"], summary["metric"]: summary["best"]["value"],
                          "n_trials": summary["n_trials"], "wall_s": summary["wall_s"]}))

    return stage_main("tune", __doc__, lambda params, _path: run(params), argv, report)

if __name__ == "__main__":
    raise SystemExit(main())
