"""Helpers shared by the pipeline stages: params loading, MLflow tracking-URI resolution, safe param logging.

Only ``pipelines/`` wires Ray/MLflow/DVC; these helpers import MLflow lazily.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

# Keys that may hold credentials: never logged, never stored.
_SECRET = re.compile(r"(^aws_|secret|password|passwd|token|credential|access_key|api_key|private_key)", re.I)


def load_params(path: str | os.PathLike) -> dict:
    """The whole params.yaml (or an overrides file) as a dict; one-line ConfigError when unreadable or when a
    top-level name is not a section (:func:`pipelines.params_schema.check_sections`)."""
    import yaml

    from ots.errors import ConfigError
    from ots.locations import not_regular
    from pipelines.params_schema import check_sections

    kind = not_regular(path)
    if kind:  # reading a FIFO would block for good
        raise ConfigError(f"{path}: {kind}, not a params file")
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read params ({' '.join(str(e).split())[:200]})") from e
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: params must be a mapping, got {type(doc).__name__}")
    check_sections(doc, path)
    return doc


def section(doc: dict, name: str, defaults: dict, path: str | os.PathLike = "params.yaml") -> dict:
    """One section of params.yaml over its defaults; an unknown key or a value of another type than its default
    is a one-line ConfigError (:func:`pipelines.params_schema.check_keys`)."""
    from pipelines.params_schema import check_keys

    sec = doc.get(name) or {}
    check_keys(sec, defaults, name, path)
    return {**defaults, **sec}


def stage_main(stage: str, doc: str | None, run: Callable[[dict, str], Any], argv: list[str] | None = None,
               report: Callable[[Any], None] | None = None) -> int:
    """The entry point every DVC stage shares: `python -m pipelines.<stage> --params params.yaml`.

    Bad input (OTSError) and MLflow failures (server down, permissions) end as one line and exit code 2.
    """
    from ots.errors import OTSError, one_line

    ap = argparse.ArgumentParser(description=(doc or stage).splitlines()[0])
    ap.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    args = ap.parse_args(argv)
    try:
        result = run(load_params(args.params), args.params)
    except OTSError as e:
        print(f"{stage}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        if type(e).__module__.split(".")[0] != "mlflow":
            raise
        print(f"{stage}: error: MLflow: {one_line(e, 500)}", file=sys.stderr)
        return 2
    if report is not None:
        report(result)
    return 0


def is_secret_key(key: str) -> bool:
    return bool(_SECRET.search(key.rsplit(".", 1)[-1]))


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Nested dict -> {"a.b.c": "value"} (strings), dropping keys that look like credentials and masking
    credentials inside URI values (``user:password@`` -> ``user:***@``)."""
    from ots.storage import redact_uri

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


def ray_storage(path: str) -> tuple[str, Any, str]:
    """Where Ray Train/Tune keep a run: ``(storage_path, storage_filesystem, uri)`` for ``RunConfig``.

    A local folder (or ``file://``) is made absolute and created (filesystem None: Ray's local default); an
    ``s3://bucket/prefix`` goes through ``ots.storage`` (endpoint and credentials from the environment, bucket
    created when missing) and gives ``bucket/prefix`` on that filesystem, never a local ``s3:/`` folder. The
    filesystem carries no keys unless the user gave them (role credentials refresh on every node) and retries
    each call ``LONG_RUN_ATTEMPTS`` times.
    """
    from ots.storage import LONG_RUN_ATTEMPTS, open_store

    path = str(path)
    if "://" not in path or path.startswith("file://"):
        local = str(Path(path.removeprefix("file://")).expanduser().resolve())
        try:
            Path(local).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            from ots.errors import StorageError, one_line

            raise StorageError(f"checkpoint storage {local} is not writable: {one_line(e, 200)}") from e
        return local, None, local
    store = open_store(path, create=True, attempts=LONG_RUN_ATTEMPTS)  # checked once now; checkpoint I/O retries
    return store.full(), store.fs, store.uri


def no_credential_links(tracking_uri: str) -> None:
    """MLflow prints "View run at <tracking URI>" links when runs end: never with a password in them."""
    from ots.storage import redact_uri

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
