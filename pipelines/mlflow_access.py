"""Connecting to MLflow safely: the tracking URI, a client whose links never show a password, experiments, and
params logged with credentials dropped. MLflow is imported lazily."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

# Keys that may hold credentials: never logged, never stored.
_SECRET = re.compile(r"(^aws_|secret|password|passwd|token|credential|access_key|api_key|private_key)", re.I)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET.search(key.rsplit(".", 1)[-1]))


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Nested dict -> {"a.b.c": "value"} (strings), dropping keys that look like credentials and masking
    credentials inside URI values (``user:password@`` -> ``user:***@``)."""
    from ots.redaction import redact_uri

    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if is_secret_key(str(k)):
                continue
            out.update(flatten(v, key))
    else:
        out[prefix or "value"] = redact_uri(str(d))[:6000]
    return out


def resolve_tracking_uri(configured: str | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the configured URI, else ``sqlite:///mlflow.db`` (embedded).

    Relative sqlite paths and plain folders are made absolute (workers may run in another directory).
    The result may hold ``user:password@``: connect with it, but print/store ``redact_uri(uri)`` only.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_TRACKING_URI
    uri = str(uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    elif "://" not in uri:
        uri = Path(uri).resolve().as_uri()
    return uri


def no_credential_links(tracking_uri: str) -> None:
    """MLflow prints "View run at <tracking URI>" links when runs end: never with a password in them."""
    from ots.redaction import redact_uri

    if redact_uri(tracking_uri) != tracking_uri:
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def mlflow_client(tracking_uri: str):
    from mlflow import MlflowClient

    no_credential_links(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def get_or_create_experiment(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # noqa: BLE001 - created concurrently by someone else
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def log_params(client, run_id: str, params: dict, skip: dict | None = None) -> None:
    """Flattened params (credentials dropped) in batches of 100; keys in ``skip`` (already logged: MLflow params
    are write-once) are left out."""
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in sorted(flatten(params).items()) if k not in (skip or {})]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
