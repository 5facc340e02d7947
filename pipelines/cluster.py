"""Cluster runs of the train stages: submit the stage as a Ray job, stream its log, bring its outputs home.

With a Ray job server to talk to -- ``train.cluster``, else ``$RAY_API_SERVER_ADDRESS``, else ``$RAY_ADDRESS``
when it is ``http(s)://head:8265`` -- ``python -m pipelines.train`` (so ``dvc repro``) does not train here: it
submits the same command as a Ray job
(Ray Job Submission SDK; working_dir = the project minus :data:`EXCLUDES`), prints the job's log as it comes,
waits, and copies the job's ``final.pt``, ``best.pt`` and ``run.json`` -- which the job publishes to
``<train.storage_path>/jobs/<job id>/`` -- into ``train.output_dir``: DVC records them, ``evaluate`` and
``register`` follow as after a local run. A failed or stopped job ends the stage in one line (the job's own error
line when it printed one); Ctrl-C/SIGTERM stops the job. Inside any Ray job (this one: ``$OTS_RAY_JOB_OUTPUT``
set; a manual ``ray job submit``: Ray's job config in the environment) the stage trains on the job's cluster.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
import uuid
from pathlib import Path

from ots.config import TrainConfig
from ots.errors import ConfigError, OTSError, one_line

__all__ = ["EXCLUDES", "JOB_OUTPUT_ENV", "ClusterJobError", "job_server", "publish", "submit"]

PROJECT = Path(__file__).resolve().parents[1]
JOB_OUTPUT_ENV = "OTS_RAY_JOB_OUTPUT"  # set in the job: where it publishes OUTPUTS
OUTPUTS = ("final.pt", "best.pt", "run.json")  # run.json last: once it is there, the checkpoints are complete
# Never uploaded with the code: local state, data, secrets, caches. Anchored (`/data`): a bare `data` would also
# drop the `ots/data` package. The README's manual `ray job submit` uses the same list (tests/test_job_submit.py).
EXCLUDES = ["/.venv", "/data", "/outputs", "/mlruns", "/mlartifacts", "/mlflow.db", "/.env", "/.dvc/cache",
            "/.dvc/config.local", "/.dvc/tmp", "/.git", "__pycache__"]
# Settings the job inherits from this shell when set; never credentials (the nodes have their own).
FORWARDED_ENV = ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL")
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"  # Ray's own name for the job server's address
IN_RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for every job's entrypoint
_ERROR_LINE = re.compile(r"^[\w-]+: error: .*$", re.M)


class ClusterJobError(OTSError):
    """The Ray job could not be submitted, failed, or left no outputs."""


def job_server(train: TrainConfig) -> str | None:
    """The Ray job server this stage submits itself to, or None: train here (or, inside a job, on its cluster)."""
    if os.environ.get(JOB_OUTPUT_ENV) or os.environ.get(IN_RAY_JOB_ENV):
        return None
    address = str(train.cluster or os.environ.get(API_SERVER_ENV) or os.environ.get("RAY_ADDRESS") or "")
    return address.rstrip("/") if address.startswith(("http://", "https://")) else None


def _shared(key: str, value: str) -> None:
    """Storage the job and this machine both reach: object storage, or an absolute path (a shared filesystem)."""
    path = str(value)
    if "://" in path and not path.startswith("file://"):
        return
    if not os.path.isabs(path.removeprefix("file://")):
        raise ConfigError(f"train.{key} is {path!r}: a cluster run needs a location the job and this machine "
                          "share: s3://bucket/prefix or an absolute path on a shared filesystem")


def _entrypoint(module: str, params_path: str, fresh: bool) -> str:
    try:
        rel = Path(params_path).resolve().relative_to(PROJECT)
    except ValueError as e:
        raise ConfigError(f"{params_path} is outside the project {PROJECT}: the job only sees the project's "
                          "files (working_dir)") from e
    return shlex.join(["python", "-m", module, "--params", rel.as_posix(), *(["--fresh"] if fresh else [])])


def submit(module: str, params_path: str, train: TrainConfig, address: str, fresh: bool = False, *,
           stage: str = "train") -> dict:
    """Run ``python -m module --params params_path`` as a Ray job at ``address``; returns the run summary
    (``run.json``, written to ``train.output_dir`` with the checkpoints next to it)."""
    from ots.locations import join_uri
    from ots.redaction import redact_uri
    from pipelines.mlflow_access import resolve_tracking_uri
    from pipelines.raywire import ray_storage

    for key in ("storage_path", "dataset"):  # checked params (bad ones failed before anything is uploaded)
        _shared(key, getattr(train, key))
    entrypoint = _entrypoint(module, params_path, fresh)
    job_id = f"ots-{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    outputs = join_uri(ray_storage(train.storage_path)[2], "jobs", job_id)
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    env.update({"MLFLOW_TRACKING_URI": redact_uri(resolve_tracking_uri(train.mlflow.tracking_uri)),
                "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", JOB_OUTPUT_ENV: outputs})
    runtime_env = {"working_dir": str(PROJECT), "excludes": EXCLUDES, "env_vars": env}
    where = redact_uri(address)
    try:
        client = _client(address)
        client.submit_job(entrypoint=entrypoint, submission_id=job_id, runtime_env=runtime_env,
                          metadata={"ots.stage": stage})
    except Exception as e:  # noqa: BLE001 - unreachable server, refused auth, bad runtime env: one line
        raise ClusterJobError(f"cannot submit to the Ray job server {where}: {one_line(e, 300)}") from e
    print(f"{stage}: ray job {job_id} submitted to {where} ({entrypoint}); following its log", flush=True)
    try:
        status = _follow(client, job_id)
    except (KeyboardInterrupt, SystemExit):
        client.stop_job(job_id)
        print(f"{stage}: stopped ray job {job_id}", file=sys.stderr, flush=True)
        raise
    if status != "SUCCEEDED":
        raise ClusterJobError(f"ray job {job_id} {status.lower()}: {_why(client, job_id)}")
    return _bring_home(outputs, Path(train.output_dir).resolve(), {"submission_id": job_id, "address": where,
                                                                      "outputs": redact_uri(outputs)})


def _client(address: str):
    """A JobSubmissionClient for ``address`` (Ray lets $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS override the
    argument; here the address this stage chose wins)."""
    from ray.job_submission import JobSubmissionClient

    saved = os.environ.get(API_SERVER_ENV)
    os.environ[API_SERVER_ENV] = address
    try:
        return JobSubmissionClient(address)
    finally:
        if saved is None:
            os.environ.pop(API_SERVER_ENV, None)
        else:
            os.environ[API_SERVER_ENV] = saved


def _follow(client, job_id: str) -> str:
    """Print the job's log as it comes; returns the job's final status (``SUCCEEDED``, ``FAILED``, ``STOPPED``)."""
    import asyncio

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except Exception as e:  # noqa: BLE001 - the log is a convenience; the job's status decides
        print(f"(log stream ended: {one_line(e, 200)}; waiting for the job)", file=sys.stderr, flush=True)
    while not (status := client.get_job_status(job_id)).is_terminal():
        time.sleep(1)
    return str(getattr(status, "value", status))


def _why(client, job_id: str) -> str:
    """The job's own one-line error (``<stage>: error: ...``), else the first line of Ray's message."""
    try:
        found = _ERROR_LINE.findall(client.get_job_logs(job_id))
    except Exception:  # noqa: BLE001
        found = []
    if found:
        return found[-1].strip()
    info = client.get_job_info(job_id)
    return one_line(info.message or "no message", 400)


def _bring_home(outputs: str, out_dir: Path, job: dict) -> dict:
    """Copy the job's published outputs into ``out_dir`` (atomically); run.json points at the local copies."""
    from ots.atomic import write_bytes, write_text
    from ots.errors import StorageError
    from ots.storage import open_store

    try:
        store = open_store(outputs)
        info = json.loads(store.read_bytes("run.json"))
        for name in OUTPUTS[:-1]:
            write_bytes(out_dir / name, store.read_bytes(name))
    except (StorageError, ValueError) as e:
        raise ClusterJobError(f"ray job {job['submission_id']} succeeded but its outputs are not readable at "
                              f"{job['outputs']}: {one_line(e, 300)}") from e
    info.update(final_checkpoint=str(out_dir / "final.pt"), best_checkpoint=str(out_dir / "best.pt"), ray_job=job)
    write_text(out_dir / "run.json", json.dumps(info, indent=2) + "\n")
    return info


def publish(out_dir: str | os.PathLike, outputs: str) -> None:
    """In the job: copy OUTPUTS from ``out_dir`` to ``outputs`` (storage URI) for the submitting stage."""
    from ots.storage import open_store

    store = open_store(outputs, create=True)
    for name in OUTPUTS:
        store.write_bytes(name, (Path(out_dir) / name).read_bytes())
