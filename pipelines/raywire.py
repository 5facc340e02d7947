"""Ray wiring for the train driver: a local Ray on 127.0.0.1, a storage probe, fail-fast for deterministic errors.

Deterministic failures (damaged data, bad config or checkpoint, no permission, read-only or full storage) give
the same error on every retry: :class:`FailFast`, a Ray Train ``UserCallback`` on the controller, turns the first
such worker error into a controller error, which Ray's failure policy raises at once instead of restarting the
worker group ``max_failures`` times. Anything else (a killed worker, a lost node, a network blip) is retried.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any

from ots.errors import NonFiniteLossError, OTSError, StorageError

# Ray reads this once, at import: "0" keeps a local Ray's node address (and so every gRPC server) on the loopback
# instead of the non-loopback interface. Set here, before anything imports ray; the workers inherit it.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
if "ray" not in sys.modules:
    os.environ.setdefault(LOOPBACK_ENV, "0")

DETERMINISTIC_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


class DeterministicError(OTSError):
    """A worker error that a restart cannot fix; its message is the worker's one-line cause."""


def local_only() -> None:
    """Keep a local Ray on 127.0.0.1 (public switch: the environment variable, read when ray is imported)."""
    os.environ[LOOPBACK_ENV] = "0"
    if "ray" in sys.modules:
        from ray._private import ray_constants  # read only: was the switch seen at import time?

        if ray_constants.ENABLE_RAY_CLUSTER:
            from ots.errors import ConfigError

            raise ConfigError(f"ray was imported before {LOOPBACK_ENV}=0 was set, so a local Ray would listen on "
                              f"every interface; set {LOOPBACK_ENV}=0 in the environment")


def init_ray(num_cpus: int | None = None) -> None:
    """Join ``$RAY_ADDRESS`` (``ray job submit``, a cluster) or start a local Ray bound to 127.0.0.1."""
    import socket

    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    local_only()
    with socket.socket() as s:  # a free port for the dashboard, known before Ray starts
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The dashboard serves the state API that Ray Train's placement-group cleaner polls every second (without it:
    # "Failed to query Ray Train Controller actor state" each time); RAY_ADDRESS in the job's processes names this
    # cluster's API, else the cleaner crashes ("Found multiple active Ray instances") when other Rays run here.
    # One local node cannot be preempted: no preemption watcher (its actor start logs a core_worker error line).
    env = {"RAY_ADDRESS": f"http://127.0.0.1:{port}", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")  # read by the controller this node starts
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=port, runtime_env={"env_vars": env},
             _node_ip_address="127.0.0.1", configure_logging=False, log_to_driver=True)


def probe_storage(path: str, fs, uri: str) -> None:
    """Write and delete a small file under ``path`` now, on the driver: unwritable storage fails in one line
    before Ray starts a controller (which would otherwise die in its constructor)."""
    import pyarrow.fs as pafs

    fs = fs or pafs.LocalFileSystem()
    probe = f"{path.rstrip('/')}/.ots-write-probe-{os.getpid()}"
    try:
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(probe) as fh:
            fh.write(b"ok")
        fs.delete_file(probe)
    except OSError as e:
        from ots.errors import one_line

        raise StorageError(f"checkpoint storage {uri} is not writable: {one_line(e, 200)}") from e


def deterministic(e: BaseException | None) -> BaseException | None:
    """The error in ``e``'s chain that a restart cannot fix (OTSError except non-finite losses -- reported as a
    metric --, permission denied, read-only or full storage), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OTSError) and not isinstance(e, NonFiniteLossError):
            return e
        if isinstance(e, PermissionError) or (isinstance(e, OSError) and e.errno in DETERMINISTIC_ERRNOS):
            return e
        e = e.__cause__ or e.__context__
    return None


def _make_fail_fast():
    from ray.train import UserCallback

    class FailFast(UserCallback):
        """On the controller: a deterministic worker error ends the run now, without restarts."""

        def after_exception(self, run_context, worker_exceptions):
            from ots.errors import one_line

            for rank, err in sorted(worker_exceptions.items()):
                cause = deterministic(err)
                if cause is not None:
                    what = type(cause).__name__
                    raise DeterministicError(f"rank {rank}: {what}: {one_line(cause, 400)} (not retried)")

    return FailFast()


def fail_fast_callback():
    """A fresh :class:`FailFast` (``RunConfig(callbacks=[...])``)."""
    return _make_fail_fast()


def cause_of(e: BaseException) -> BaseException | None:
    """The first OTSError inside a Ray Train failure (worker and controller errors are wrapped)."""
    seen, todo = set(), [e]
    while todo:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OTSError):
            return x
        todo += list((getattr(x, "worker_failures", None) or {}).values())
        todo += [getattr(x, "controller_failure", None), getattr(x, "_base_exc", None), getattr(x, "cause", None),
                 x.__cause__, x.__context__]
    return None


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
            from ots.errors import one_line

            raise StorageError(f"checkpoint storage {local} is not writable: {one_line(e, 200)}") from e
        return local, None, local
    store = open_store(path, create=True, attempts=LONG_RUN_ATTEMPTS)  # checked once now; checkpoint I/O retries
    return store.full(), store.fs, store.uri
