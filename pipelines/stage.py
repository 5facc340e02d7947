"""The entry point every DVC stage shares: ``python -m pipelines.<stage> --params params.yaml``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


def stage_main(stage: str, doc: str | None, run: Callable[[Any, str], Any], argv: list[str] | None = None,
               report: Callable[[Any], None] | None = None, read: Callable[[str], Any] | None = None) -> int:
    """The entry point every DVC stage shares: `python -m pipelines.<stage> --params params.yaml`.

    ``run(read(path), path)`` does the stage's work; ``read`` turns the params file into what the stage needs
    (default: the document, :func:`pipelines.params.load_params`; the train-like stages read a typed config in
    one call, :func:`pipelines.params.read_run_config`). Bad input (OTSError) and MLflow failures (server down,
    permissions) end as one line and exit code 2.
    """
    from ots.errors import OTSError, one_line
    from pipelines.params import load_params

    ap = argparse.ArgumentParser(description=(doc or stage).splitlines()[0])
    ap.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    args = ap.parse_args(argv)
    try:
        result = run((read or load_params)(args.params), args.params)
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
