"""What the served pyfunc must know about MLflow's scoring server (`mlflow models serve`: uvicorn + FastAPI).

It rewrites predict's errors into ``Failed to predict data '<the request's DataFrame>'. \nError: …`` (several
lines echoing the payload back): :class:`ServingError` keeps the one line we wrote. On SIGTERM uvicorn waits for
the request in flight (until ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``): :func:`server_stopping` lets that work
notice the signal and stop.
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException


class ServingError(MlflowException):
    """An MlflowException whose message stays the one line it was made with: the scoring server's prefix is
    dropped when it sets ``message``."""

    @property
    def message(self) -> str:
        return self.__dict__.get("_one_line", "")

    @message.setter
    def message(self, value: str) -> None:
        self.__dict__["_one_line"] = str(value).rsplit("\nError: ", 1)[-1]


def server_stopping() -> bool:
    """True once the scoring server caught SIGTERM/SIGINT: `mlflow models serve` runs uvicorn, whose signal
    handler is its server's ``handle_exit`` and sets ``should_exit``; uvicorn then waits for the request in
    flight, so the work must notice and stop (else SIGTERM waits for the request timeout)."""
    import signal

    handler = signal.getsignal(signal.SIGTERM)
    return bool(getattr(getattr(handler, "__self__", None), "should_exit", False))
