"""What the served pyfunc must know about MLflow's scoring server (`mlflow models serve`: uvicorn + FastAPI).

It rewrites predict's errors into ``Failed to predict data '<the request's DataFrame>'. \nError: …`` (several
lines echoing the payload back): :class:`ServingError` keeps the one line we wrote (:func:`bad_input` 400,
:func:`over_limit` 429). On SIGTERM uvicorn waits for the request in flight (until
``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``): :func:`server_stopping` lets that work notice the signal and stop.
It runs requests in a thread pool without admission control and keeps computing after its timeout answers 504:
:data:`SLOTS` bounds the requests computing at once in one worker process, :func:`request_timeout` is the deadline.
"""

from __future__ import annotations

import os
import threading

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_EXHAUSTED

# requests computing at once in one `mlflow models serve` worker process
MAX_CONCURRENT = max(1, int(os.environ.get("OTS_SERVE_MAX_CONCURRENT", "1") or 1))
SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT)


class ServingError(MlflowException):
    """An MlflowException whose message stays the one line it was made with: the scoring server's prefix is
    dropped when it sets ``message``."""

    @property
    def message(self) -> str:
        return self.__dict__.get("_one_line", "")

    @message.setter
    def message(self, value: str) -> None:
        self.__dict__["_one_line"] = str(value).rsplit("\nError: ", 1)[-1]


def bad_input(message: str) -> MlflowException:
    """A bad request (HTTP 400)."""
    return ServingError(message, error_code=INVALID_PARAMETER_VALUE)


def over_limit(message: str) -> MlflowException:
    """Over a per-request limit (MLflow has no 413 code: RESOURCE_EXHAUSTED answers 429)."""
    return ServingError(message, error_code=RESOURCE_EXHAUSTED)


def request_timeout() -> float:
    """The scoring server's request timeout (it answers 504 then): our work stops at the same deadline."""
    try:
        return float(os.environ.get("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "60"))
    except ValueError:
        return 60.0


def server_stopping() -> bool:
    """True once the scoring server caught SIGTERM/SIGINT: `mlflow models serve` runs uvicorn, whose signal
    handler is its server's ``handle_exit`` and sets ``should_exit``; uvicorn then waits for the request in
    flight, so the work must notice and stop (else SIGTERM waits for the request timeout)."""
    import signal

    handler = signal.getsignal(signal.SIGTERM)
    return bool(getattr(getattr(handler, "__self__", None), "should_exit", False))
