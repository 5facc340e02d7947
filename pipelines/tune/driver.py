"""DVC stage ``tune``: drive a Ray Tune (ASHA) search over params.yaml keys, best params out for ``train``.

    python -m pipelines.tune --params params.yaml     # or: dvc repro pipelines/optional/dvc.yaml:tune

Reads ``tune`` (the search: :mod:`pipelines.tune.space`, where its defaults live), ``seed``, ``model``,
``solver`` and ``train`` (crops, batch size, dataset, MLflow settings) from params.yaml::

    tune:
      space:
        solver.lr_map: {loguniform: [3.0e-5, 3.0e-4]}
        solver.k_T: {choice: [3, 5, 10]}
        solver.cost.mse: {uniform: [0.5, 4.0]}
        train.batch_size: {choice: [4, 8]}

Each trial (:mod:`pipelines.tune.trial`) is a single-worker function trainable holding
``tune.resources_per_trial`` (custom resource names kept as written; a reserved GPU is the trial's device): it
builds the solver with ``ots.solver.build_solver``, runs up to ``tune.max_steps`` potential steps and every
``report_every`` steps reports the unpaired validation metric (SWD; ``metric: fid`` when the Inception weights
resolve, else SWD and a note). ASHA (``time_attr=step``) stops bad trials at ``grace_period``,
``grace_period * reduction_factor``, ... steps; ``num_samples`` and ``time_budget_s`` bound the search. Trials
live in ``tune.storage_path``: a folder, or ``s3://bucket/prefix`` (endpoint and credentials from the environment).

MLflow (:mod:`pipelines.tune.report`; experiment ``train.mlflow.experiment``): one parent run (tag
``ots.stage=tune``) and one child run per trial (tag ``mlflow.parentRunId``) with the trial's params and metric
history, logged live from the driver; the parent gets the best config (``best.<key>``, ``best_<metric>``) and the
outputs. Outputs, next to ``tune.output``: ``best_params.yaml`` -- the searched keys only, nested -- which the
train stage merges with ``train.overrides``; ``results.json`` (every trial: config, steps, metric history,
last/best value, status); ``metric_vs_step.png``. The best trial has the lowest *last* reported metric among
the trials that did not fail.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ots.errors import OTSError
from pipelines.tune.space import TuneConfig, param_space, resolve_tune, trial_resources


class TuneError(OTSError):
    """The search failed (e.g. every trial failed)."""


def _metric(tune: TuneConfig) -> tuple[str, str | None]:
    """(the metric the search uses, why it differs from ``tune.metric`` or None)."""
    if tune.metric != "fid":
        return tune.metric, None
    from ots.metrics import build_inception, load_optional

    model, reason = load_optional(build_inception, weights=tune.inception_weights)
    if model is None:
        return "swd", f"metric fid unavailable ({reason}); using swd"
    return "fid", None


def _start_parent(client, exp_id: str, tune: TuneConfig, base: dict, metric: str, note: str | None):
    """The parent MLflow run of the search, with the search's settings as params."""
    from pipelines.mlflow_access import flatten, log_params

    name = f"tune-{time.strftime('%Y%m%d-%H%M%S')}"
    parent_id = client.create_run(exp_id, run_name=name, tags={"ots.stage": "tune", "ots.metric": metric}).info.run_id
    if note:
        client.set_tag(parent_id, "ots.note", note)
    log_params(client, parent_id, {"tune": {**tune.knobs(), "metric": metric},
                                   **{k: base[k] for k in ("seed", "model", "solver")}})
    space = flatten({"space": tune.space_spec()})
    log_params(client, parent_id, {"tune": {k.replace("space.", "space/", 1): v for k, v in space.items()}})
    return parent_id, f"{name}-{parent_id[:8]}"


def run(params: dict) -> dict:
    """Search; returns the summary (also written to ``results.json``)."""
    from ray import tune as rt
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from ots.data import open_dataset
    from ots.locations import parse_uri
    from ots.redaction import redact_uri
    from pipelines.mlflow_access import get_or_create_experiment, mlflow_client, resolve_tracking_uri
    from pipelines.raywire import init_ray, ray_storage
    from pipelines.tune.report import MLflowChildren, error_line, record_best, trial_summary, write_outputs
    from pipelines.tune.trial import TrialContext, run_trial

    tune, base = resolve_tune(params)
    base["train"]["dataset"] = parse_uri(base["train"]["dataset"]).uri  # absolute: trials run elsewhere
    open_dataset(base["train"]["dataset"], verify=False)  # fail early, on the driver, with one line
    out_file = Path(tune.output).resolve()
    storage_path, storage_fs, storage_uri = ray_storage(tune.storage_path)  # a folder or s3://, never Path()
    metric, note = _metric(tune)
    if note:
        print(f"tune: note: {note}", flush=True)

    mlf = base["train"]["mlflow"]
    tracking_uri = resolve_tracking_uri(mlf["tracking_uri"])
    client = mlflow_client(tracking_uri)
    exp_id = get_or_create_experiment(client, mlf["experiment"])
    parent_id, name = _start_parent(client, exp_id, tune, base, metric, note)
    print(f"tune: mlflow parent run {parent_id} at {redact_uri(tracking_uri)} (experiment {mlf['experiment']!r}); "
          f"{tune.num_samples} trial(s) x {tune.max_steps} steps, metric {metric}; "
          f"trials in {storage_uri}/{name}", flush=True)

    init_ray()
    res = trial_resources(tune.resources_per_trial)
    ctx = TrialContext(params=base, tune=tune, metric=metric, resources=res)
    callback = MLflowChildren(client, exp_id, parent_id, base, metric, tune.max_steps)
    tuner = rt.Tuner(
        rt.with_resources(rt.with_parameters(run_trial, ctx=ctx), res),
        param_space=param_space(tune.space),
        tune_config=rt.TuneConfig(
            metric=metric, mode="min", num_samples=tune.num_samples, time_budget_s=tune.time_budget_s,
            scheduler=ASHAScheduler(time_attr="step", max_t=tune.max_steps, grace_period=tune.grace_period,
                                    reduction_factor=tune.reduction_factor),
            max_concurrent_trials=tune.max_concurrent_trials,
            search_alg=BasicVariantGenerator(random_state=int(base["seed"])),
        ),
        run_config=rt.RunConfig(name=name, storage_path=storage_path, storage_filesystem=storage_fs,
                                callbacks=[callback], verbose=tune.verbose,
                                failure_config=rt.FailureConfig(max_failures=0)),
    )
    t0 = time.perf_counter()
    try:
        grid = tuner.fit()
    except Exception as e:  # noqa: BLE001 - report one line
        client.set_terminated(parent_id, "FAILED")
        raise TuneError(f"search failed ({type(e).__name__}): {error_line(e)}") from e
    finally:
        callback.close()
    wall = time.perf_counter() - t0

    trials = [trial_summary(r, metric, tune.max_steps) for r in grid]
    for t in trials:
        t["mlflow_run_id"] = callback.runs.get(t["trial_id"])
    ok = [t for t in trials if t["status"] != "error" and t["last"] is not None and math.isfinite(t["last"])]
    if not ok:
        client.set_terminated(parent_id, "FAILED")
        first = next((t.get("error") for t in trials if t.get("error")), "no trial reported a metric")
        raise TuneError(f"all {len(trials)} trial(s) failed: {first}")
    best = min(ok, key=lambda t: t["last"])
    summary = {
        "metric": metric, "mode": "min", "note": note, "mlflow_parent_run_id": parent_id,
        "tracking_uri": redact_uri(tracking_uri), "experiment": mlf["experiment"], "ray_run_name": name,
        "ray_storage": f"{storage_uri.rstrip('/')}/{name}", "space": tune.space_spec(),
        "best": {"trial_id": best["trial_id"], "value": best["last"], "step": best["steps"][-1],
                 "config": best["config"], "mlflow_run_id": best["mlflow_run_id"]},
        "best_params_file": str(out_file), "n_trials": len(trials), "wall_s": round(wall, 2), "trials": trials,
    }
    files = write_outputs(summary, trials, out_file, tune.output)
    record_best(client, parent_id, summary, files, wall)
    print(f"tune: best {metric}={best['last']:.4g} (trial {best['trial_id']}): {json.dumps(best['config'])}; "
          f"wrote {out_file}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    from pipelines.stage import stage_main

    def report(summary: dict) -> None:
        print(json.dumps({"best": summary["best"]["config"], summary["metric"]: summary["best"]["value"],
                          "n_trials": summary["n_trials"], "wall_s": summary["wall_s"]}))

    return stage_main("tune", __doc__, lambda params, _path: run(params), argv, report)

