"""The CLI door of the train-like stages (``train``, ``train_gan``): train here or as a Ray job; signals end runs."""

from __future__ import annotations

import argparse
import json
import os
import signal

from ots.config import OTSConfig
from pipelines.cluster import job_server, submit
from pipelines.params import read_run_config

_SIGNALLED: list[int] = []  # the signals ``_on_term`` received


def _on_term(signum, _frame):
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def stage(name: str, doc: str, make_params, argv: list[str] | None, keys: tuple, run,
          module: str = "pipelines.train") -> int:
    """The train-like stages' CLI (``python -m module``): ``--params``, ``--fresh``; trains here or, with a Ray job
    server (:func:`pipelines.cluster.job_server`), as a Ray job of the same command. SIGTERM ends the MLflow run
    KILLED (via KeyboardInterrupt), not RUNNING forever, stops a submitted job, and ends the process with
    128 + the signal (143; Ctrl-C: 130). ``make_params`` adjusts the params document before it is typed (the GAN
    merges its ``baseline:`` section; None: as read); ``run(config, fresh)`` trains here
    (:func:`pipelines.train.driver.run`)."""
    import sys

    from pipelines.stage import stage_main

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--fresh", action="store_true", help="start over instead of resuming an unfinished run")
    flags, rest = pre.parse_known_args(argv)

    def train_or_submit(config: OTSConfig, path: str) -> dict:
        address = job_server(config.train)
        if address:
            return submit(module, path, config.train, address, fresh=flags.fresh, stage=name)
        return run(config, fresh=flags.fresh)

    previous = signal.signal(signal.SIGTERM, _on_term)
    try:
        return stage_main(name, doc, train_or_submit, rest,
                          lambda summary: print(json.dumps({k: summary[k] for k in keys})),
                          read=lambda path: read_run_config(path, make_params))  # params typed once, here
    except (KeyboardInterrupt, SystemExit) as e:
        signum = _SIGNALLED[-1] if _SIGNALLED else signal.SIGINT if isinstance(e, KeyboardInterrupt) else None
        if signum is None:  # sys.exit() from argparse (--help) or elsewhere
            raise
        print(f"{name}: stopped by signal {signum}", file=sys.stderr, flush=True)
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            # Ray's native handlers abort the interpreter's teardown after a signal (exit code 134): stop Ray
            # here, then leave without that teardown
            sys.modules["ray"].shutdown()
            sys.stdout.flush()
            os._exit(128 + signum)
        return 128 + signum
    finally:
        signal.signal(signal.SIGTERM, previous)
