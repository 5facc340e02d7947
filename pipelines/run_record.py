"""What later stages read of earlier ones: the train stage's ``run.json`` and the evaluation metrics' names.

``evaluate`` and ``register`` both start from the training run (its MLflow run id, tracking URI and selected
checkpoint) and both speak of the evaluation as MLflow metrics (``val_<metric>`` for the OTS map,
``val_<method>_<metric>`` for bicubic and the GAN): this module is the one place that knows those shapes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ots.errors import ConfigError, one_line

METRIC_PREFIX = "val_"


def read_run_info(path: str | Path, required: bool = True) -> dict:
    """The training stage's run.json ({} when absent and not required)."""
    p = Path(path)
    if not p.is_file():
        if required:
            raise ConfigError(f"{p} not found: run the train stage first (or set the checkpoint explicitly)")
        return {}
    try:
        info = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{p}: not a readable run.json ({one_line(e)})") from e
    if not isinstance(info, dict):
        raise ConfigError(f"{p}: run.json must be a JSON object")
    return info


def selected_checkpoint(info: dict) -> str:
    """The map a training run stands for: its best checkpoint (val SWD), else its final one ('' if none)."""
    return str(info.get("best_checkpoint") or info.get("final_checkpoint") or "")


def tracking_uri(doc: dict, run_info: dict) -> str:
    """$MLFLOW_TRACKING_URI > run.json's tracking_uri > params ``train.mlflow.tracking_uri`` > the default."""
    from pipelines.mlflow_access import resolve_tracking_uri

    recorded = str(run_info.get("tracking_uri") or "")
    if "***" in recorded:  # a redacted URI cannot connect
        recorded = ""
    train = doc.get("train") or {}
    ml = train.get("mlflow") if isinstance(train, dict) else None
    configured = ml.get("tracking_uri") if isinstance(ml, dict) else None
    return resolve_tracking_uri(recorded or configured or None)


def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """Evaluation results -> MLflow metric names and values; unavailable (None) metrics left out."""
    from ots.evaluate import METRICS

    out = {}
    for method, vals in results.get("methods", {}).items():
        prefix = METRIC_PREFIX if method == "ots" else f"{METRIC_PREFIX}{method}_"
        for m in METRICS:
            if vals.get(m) is not None:
                out[f"{prefix}{m}"] = float(vals[m])
    return out


def read_metrics(path: str | Path) -> dict[str, float]:
    """The evaluate stage's ``metrics.json`` as MLflow metric names and values."""
    p = Path(path)
    try:
        return flat_metrics(json.loads(p.read_text()))
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise ConfigError(f"{p}: unreadable metrics ({one_line(e)})") from e
