"""The search's record: MLflow child runs per trial (live), per-trial summaries, the outputs of the best trial.

Driver side only (a Ray Tune ``Callback`` and the code after ``Tuner.fit()``); trials never talk to MLflow.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mlflow.entities import Metric
from ray.tune import Callback

from ots.atomic import atomic_path, write_text
from ots.errors import one_line
from pipelines.mlflow_access import log_params
from pipelines.tune.space import apply_overrides, nest, sampled

LOGGED_METRICS = ("loss_map", "loss_potential", "cost", "elapsed_s")


class MLflowChildren(Callback):
    """One child run per trial: its params on start, its metrics at every report, its status at the end."""

    def __init__(self, client, exp_id: str, parent_id: str, base: dict, metric: str, max_steps: int):
        self.client, self.exp_id, self.parent_id = client, exp_id, parent_id
        self.base, self.metric, self.max_steps = base, metric, max_steps
        self.runs: dict[str, str] = {}   # trial id -> MLflow run id
        self.steps: dict[str, int] = {}  # trial id -> last reported step

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.runs:
            return
        overrides = sampled(trial.config)
        run = self.client.create_run(self.exp_id, run_name=f"trial-{trial.trial_id}", tags={
            "mlflow.parentRunId": self.parent_id, "ots.stage": "tune", "ots.trial_id": trial.trial_id,
            "ots.searched": ",".join(sorted(overrides))})
        self.runs[trial.trial_id] = run.info.run_id
        params = apply_overrides({k: self.base[k] for k in ("seed", "model", "solver", "train")}, overrides)
        params["train"] = {k: v for k, v in params["train"].items() if k != "mlflow"}
        log_params(self.client, run.info.run_id, params)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or "step" not in result:
            return
        step, ts = int(result["step"]), int(time.time() * 1000)
        keys = (self.metric, *LOGGED_METRICS)
        self.client.log_batch(run_id, metrics=[Metric(k, float(result[k]), ts, step) for k in keys if k in result])
        self.steps[trial.trial_id] = step
        if "nonfinite" in result:
            self.client.set_tag(run_id, "ots.nonfinite", str(result["nonfinite"])[:500])

    def _end(self, trial, status: str):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        steps = self.steps.get(trial.trial_id, 0)
        self.client.set_tag(run_id, "ots.steps", str(steps))
        if status == "FINISHED" and steps < self.max_steps:
            self.client.set_tag(run_id, "ots.stopped_early", "true")
        self.client.set_terminated(run_id, status)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED")

    def close(self) -> None:
        """Child runs Tune never ended (time budget): KILLED."""
        for run_id in self.runs.values():
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, "KILLED")


def trial_summary(result, metric: str, max_steps: int) -> dict:
    """One row of ``results.json`` from a Ray ``Result``: config, steps, metric history, last/best, status."""
    df = result.metrics_dataframe
    steps, hist = [], []
    if df is not None and len(df) and metric in df and "step" in df:
        rows = df[["step", metric]].dropna()
        steps = [int(s) for s in rows["step"]]
        hist = [float(v) for v in rows[metric]]
    metrics = result.metrics or {}
    status = "error" if result.error else ("completed" if steps and steps[-1] >= max_steps else "stopped_early")
    if "nonfinite" in metrics:
        status = "nonfinite"
    out = {
        "trial_id": metrics.get("trial_id") or Path(str(result.path)).name,
        "config": sampled(result.config),
        "status": status,
        "device": metrics.get("device"),
        "steps": steps,
        "history": hist,
        "last": hist[-1] if hist else None,
        "best": min(hist) if hist else None,
        "best_step": steps[hist.index(min(hist))] if hist else None,
    }
    if result.error:
        out["error"] = error_line(result.error)
    return out


def error_line(e: BaseException | str) -> str:
    """One line for a trial's or Tune's error: the exception line at the end of a (remote) traceback."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    top = [ln for ln in lines if not ln.startswith((" ", "\t"))]
    return one_line((top or lines or [type(e).__name__])[-1], 300)


def plot_metric(trials: list[dict], metric: str, path: Path) -> Path:
    """``metric_vs_step.png``: the metric against the step, one line per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for t in trials:
        if t["steps"]:
            ax.plot(t["steps"], t["history"], marker="o", markersize=3, label=f"{t['trial_id']} ({t['status']})")
    ax.set_xlabel("potential step")
    ax.set_ylabel(f"{metric} (lower is better)")
    ax.set_title(f"Tune: validation {metric} per trial")
    ax.grid(alpha=0.3)
    if any(t["steps"] for t in trials):
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def write_outputs(summary: dict, trials: list[dict], out_file: Path, output_name: str) -> list[Path]:
    """``best_params.yaml`` (the best trial's searched keys, nested), ``results.json`` and the plot, atomically."""
    import yaml

    best = summary["best"]
    write_text(out_file, "# Best config from `python -m pipelines.tune` (searched keys only). Train with it:\n"
                         f"#   train.overrides: {output_name}\n" + yaml.safe_dump(nest(best["config"]), sort_keys=True))
    results = write_text(out_file.parent / "results.json", json.dumps(summary, indent=2) + "\n")
    png = plot_metric(trials, summary["metric"], out_file.parent / "metric_vs_step.png")
    return [out_file, results, png]


def record_best(client, parent_id: str, summary: dict, files: list[Path], wall_s: float) -> None:
    """The parent run: the best config (``best.<key>``), ``best_<metric>``, the output files; FINISHED."""
    best, metric = summary["best"], summary["metric"]
    log_params(client, parent_id, {"best": best["config"]})
    client.log_metric(parent_id, f"best_{metric}", best["value"])
    client.log_metric(parent_id, "tune_wall_s", wall_s)
    client.set_tag(parent_id, "ots.best_trial", best["trial_id"])
    if best["mlflow_run_id"]:
        client.set_tag(parent_id, "ots.best_run_id", best["mlflow_run_id"])
    for p in files:
        client.log_artifact(parent_id, str(p))
    client.set_terminated(parent_id, "FINISHED")
