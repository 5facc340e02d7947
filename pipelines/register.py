"""DVC stage ``register``: log the served model into the training run, register a version, gate the champion.

    python -m pipelines.register --params params.yaml

Logs the :mod:`pipelines.serving.pyfunc` pyfunc (map checkpoint + tiling, ``serve:`` section) into the training run,
registers a new version of ``register.model_name``, tags it with the evaluation metrics (``metric.<name>``),
always points the alias ``register.challenger`` (``challenger``: the newest version, what `make demo` leaves to
serve) at it, and moves the alias ``register.alias`` (``champion``: the version to serve in production) to it
only when (1) it beats *bicubic* on ``register.metric`` (bicubic is the floor: a map no better than plain
upsampling is never served) while its PSNR is no more than
``register.psnr_tolerance_db`` below bicubic's, and (2) it beats the current champion on ``register.metric``
(``greater_is_better``). Ties, a missing metric on the new version, and a champion without that metric keep the
old champion. The decision and its reason go to the version's description and to tags
``champion.decision`` / ``champion.reason`` / ``champion.previous``; ``register.out`` (``result.json``) records
them for DVC. The evaluation metrics are also logged against the new logged model (``model_id``), so MLflow
shows them on the model's page and a champion's metrics can be read from its model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ots.atomic import write_text
from ots.errors import one_line
from ots.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
from pipelines.params import section
from pipelines.run_record import read_metrics, read_run_info, selected_checkpoint, tracking_uri
from pipelines.stage import stage_main

DEFAULTS = {
    "model_name": "ots-sr",
    "alias": "champion",
    "challenger": "challenger",      # always the new version (MLflow's champion/challenger convention; null: none)
    "metric": "val_swd",             # the unpaired distribution metric the map was selected by
    "greater_is_better": False,
    "floor": "bicubic",              # the map must beat this method on `metric` (null: no floor)
    "floor_margin": 0.01,            # ... by at least this fraction of its value (a tie with bicubic is no gain)
    "psnr_tolerance_db": 0.5,        # ... while its val PSNR is at most this far below the floor's (null: no check)
    "metrics_file": "outputs/evaluate/metrics.json",
    "run_info": "outputs/train/run.json",
    "checkpoint": None,  # default: run.json's best_checkpoint, else its final_checkpoint
    "out": "outputs/register/result.json",
}
SERVE_DEFAULTS = {
    "tile": DEFAULT_TILE,
    "overlap": DEFAULT_OVERLAP,
    "max_pixels": 2048 * 2048,
    "max_bytes": 20 * 1024 * 1024,
    "device": "auto",
    "precision": "auto",
}
METRIC_TAG = "metric."


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def decide(new: float | None, current: float | None, *, has_champion: bool, metric: str,
           greater_is_better: bool = True, current_version: str | None = None) -> tuple[bool, str]:
    """(move the alias?, why). Only a strict improvement moves it."""
    new, current = _number(new), _number(current)
    if new is None:
        return False, f"not promoted: this version has no {metric}"
    if not has_champion:
        return True, f"promoted: no champion yet ({metric}={new:.6g})"
    who = f"champion v{current_version}" if current_version else "the champion"
    if current is None:
        return False, f"not promoted: {who} has no {metric} to compare with; it stays"
    if new == current:
        return False, f"not promoted: {metric}={new:.6g} ties {who}; ties keep the champion"
    better = new > current if greater_is_better else new < current
    direction = "higher" if greater_is_better else "lower"
    if better:
        return True, f"promoted: {metric}={new:.6g} beats {who} ({current:.6g}; {direction} is better)"
    return False, f"not promoted: {metric}={new:.6g} does not beat {who} ({current:.6g}; {direction} is better)"


def below_floor(metrics: dict[str, float], metric: str, greater_is_better: bool, floor: str | None,
                psnr_tolerance_db: float | None, margin: float = 0.0) -> str | None:
    """Why this map is not better than the floor method (bicubic) by ``margin`` (relative), or None when it is."""
    if not floor:
        return None
    name = metric.removeprefix("val_")
    new, base = _number(metrics.get(metric)), _number(metrics.get(f"val_{floor}_{name}"))
    if new is None or base is None:
        return f"not promoted: {metric} or {floor}'s val_{floor}_{name} is missing, so the {floor} floor is unchecked"
    need = abs(base) * float(margin or 0.0)
    if not (new > base + need if greater_is_better else new < base - need):
        by = f" by {100 * float(margin):g}%" if margin else ""
        return f"not promoted: {metric}={new:.6g} is not better than {floor} ({base:.6g}){by}; {floor} is the floor"
    if psnr_tolerance_db is not None:
        p, pb = _number(metrics.get("val_psnr")), _number(metrics.get(f"val_{floor}_psnr"))
        if p is not None and pb is not None and p < pb - float(psnr_tolerance_db):
            return (f"not promoted: val_psnr={p:.4g} dB is more than {psnr_tolerance_db} dB below {floor} "
                    f"({pb:.4g} dB)")
    return None


def _champion(client, name: str, alias: str, metric: str):
    """(version or None, its metric or None): from its ``metric.<name>`` tag, else its logged model's metrics,
    else its run's metrics."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, None
    value = _number((mv.tags or {}).get(METRIC_TAG + metric))
    if value is None and getattr(mv, "model_id", None):
        try:
            value = _number({m.key: m.value for m in client.get_logged_model(mv.model_id).metrics or []}.get(metric))
        except MlflowException:
            value = None
    if value is None and mv.run_id:
        try:
            value = _number(client.get_run(mv.run_id).data.metrics.get(metric))
        except MlflowException:
            value = None
    return mv, value


def register_version(model_uri: str, model_name: str, metrics: dict[str, float], *, run_id: str | None = None,
                     metric: str = "val_swd", greater_is_better: bool = False, alias: str = "champion",
                     floor: str | None = "bicubic", psnr_tolerance_db: float | None = 0.5,
                     floor_margin: float = 0.01, challenger: str | None = "challenger") -> dict:
    """Register ``model_uri`` as a new version of ``model_name``, point ``challenger`` at it and gate ``alias``
    (global tracking URI)."""
    import mlflow

    client = mlflow.MlflowClient()
    mv = mlflow.register_model(model_uri, model_name)
    version = str(mv.version)
    if challenger:
        client.set_registered_model_alias(model_name, challenger, version)
    for k, v in sorted(metrics.items()):
        if _number(v) is not None:
            client.set_model_version_tag(model_name, version, METRIC_TAG + k, repr(float(v)))
    champ, champ_value = _champion(client, model_name, alias, metric)
    if champ is not None and str(champ.version) == version:  # cannot happen for a fresh version; be safe
        champ, champ_value = None, None
    floor_reason = below_floor(metrics, metric, greater_is_better, floor, psnr_tolerance_db, floor_margin)
    if floor_reason:
        move, reason = False, floor_reason
    else:
        move, reason = decide(metrics.get(metric), champ_value, has_champion=champ is not None, metric=metric,
                              greater_is_better=greater_is_better, current_version=champ and str(champ.version))
    if move:
        client.set_registered_model_alias(model_name, alias, version)
    previous = str(champ.version) if champ is not None else ""
    client.set_model_version_tag(model_name, version, "champion.decision", "promoted" if move else "kept")
    client.set_model_version_tag(model_name, version, "champion.reason", reason)
    client.set_model_version_tag(model_name, version, "champion.previous", previous or "none")
    client.update_model_version(model_name, version, description=f"{alias}: {reason}")
    return {"model_name": model_name, "version": version, "model_uri": model_uri, "run_id": run_id or mv.run_id,
            "alias": alias, "alias_moved": move, "challenger": version if challenger else None,
            "champion": version if move else (previous or None),
            "previous_champion": previous or None, "metric": metric, "value": _number(metrics.get(metric)),
            "champion_value": champ_value, "greater_is_better": greater_is_better, "reason": reason,
            "metrics": {k: float(v) for k, v in metrics.items() if _number(v) is not None}}


def _metrics(reg: dict, run_id: str) -> dict[str, float]:
    """Evaluation metrics: the evaluate stage's metrics.json, else the run's ``val_*`` metrics."""
    import mlflow

    from pipelines.run_record import METRIC_PREFIX

    if reg["metrics_file"] and Path(reg["metrics_file"]).is_file():
        return read_metrics(reg["metrics_file"])
    run = mlflow.MlflowClient().get_run(run_id)
    return {k: v for k, v in run.data.metrics.items() if k.startswith(METRIC_PREFIX)}


def log_served_model(ckpt: str, run_id: str, serve: dict):
    """The serving pyfunc logged into the training run (mlflow's ModelInfo), models-from-code (no cloudpickle)."""
    from pipelines.serving.package import log_pyfunc_model

    return log_pyfunc_model(ckpt, "model", run_id=run_id, tile=int(serve["tile"]), overlap=int(serve["overlap"]),
                            max_pixels=int(serve["max_pixels"]), max_bytes=int(serve["max_bytes"]),
                            device=serve["device"], precision=serve["precision"])


def run(doc: dict, params_path: str | Path = "params.yaml") -> dict:
    import mlflow

    from ots.errors import ConfigError

    reg = section(doc, "register", DEFAULTS, params_path)
    if reg["challenger"] and reg["challenger"] == reg["alias"]:
        raise ConfigError(f"register.challenger and register.alias are both {reg['alias']!r}: the challenger moves "
                          "on every version, the gated alias only through the gate; give them different names")
    serve = section(doc, "serve", SERVE_DEFAULTS, params_path)
    info = read_run_info(reg["run_info"])
    run_id = info.get("mlflow_run_id")
    if not run_id:
        raise ConfigError(f"{reg['run_info']}: no mlflow_run_id; the train stage must log to MLflow")
    ckpt = reg["checkpoint"] or selected_checkpoint(info) or "outputs/train/final.pt"
    mlflow.set_tracking_uri(tracking_uri(doc, info))
    try:
        mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        raise ConfigError(f"MLflow run {run_id} not found at the tracking server ({one_line(e, 200)})") from e
    metrics = _metrics(reg, run_id)
    model_info = log_served_model(str(ckpt), run_id, serve)
    # MLflow 3: the evaluation belongs to the logged model (its page, search_logged_models) as well as the run
    mlflow.log_metrics(metrics, step=int(info.get("steps") or 0), run_id=run_id, model_id=model_info.model_id)
    result = register_version(model_info.model_uri, str(reg["model_name"]), metrics, run_id=run_id,
                              metric=str(reg["metric"]), greater_is_better=bool(reg["greater_is_better"]),
                              alias=str(reg["alias"]), floor=reg["floor"],
                              psnr_tolerance_db=reg["psnr_tolerance_db"], floor_margin=float(reg["floor_margin"]),
                              challenger=reg["challenger"])
    result["checkpoint"] = str(ckpt)
    result["model_id"] = model_info.model_id
    write_text(reg["out"], json.dumps(result, indent=2, sort_keys=True) + "\n")
    name, version = result["model_name"], result["version"]
    if result["challenger"]:
        print(f"register: {name} v{version} is @{reg['challenger']} (serve it: models:/{name}@{reg['challenger']})")
    print(f"register: {name} v{version} @{result['alias']}: {result['reason']}")
    return result


def main(argv: list[str] | None = None) -> int:
    return stage_main("register", __doc__, run, argv)

if __name__ == "__main__":
    raise SystemExit(main())
