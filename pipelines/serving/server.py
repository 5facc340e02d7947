"""`python -m pipelines.serving`: load a map (file or registry URI) and serve it with the bounded HTTP front.

The ASGI app is :mod:`pipelines.serving.app`, its limits :mod:`pipelines.serving.limits`, registry URIs
:mod:`pipelines.registry`; the served pyfunc (``mlflow models serve``) is :mod:`pipelines.serving.pyfunc`.
"""

from __future__ import annotations

import os

from ots.redaction import redact_uri
from ots.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
from pipelines.registry import load_map
from pipelines.serving.app import BoundedUpscaleServer
from pipelines.serving.limits import ServeLimits


def serve(model_source, *, host: str = "127.0.0.1", port: int = 5001, limits: ServeLimits | None = None,
          tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, device: str = "cpu", precision: str = "auto",
          hard_exit: bool = False) -> int:
    """Load the map (checkpoint, ``runs:/``, run id or ``models:/name@alias``: only the checkpoint is fetched,
    no pickled code runs; or an ``nn.Module`` with ``.scale``) and serve it until SIGTERM/SIGINT.

    ``hard_exit`` (the CLI): once every response is sent, leave the process with ``os._exit(0)`` -- after a
    served signal the interpreter's teardown was seen to hang in native code (no Python frame) for minutes.
    """
    import sys

    import uvicorn

    from ots.device import resolve_device

    if isinstance(model_source, str):
        model = load_map(model_source, device=str(resolve_device(device)))
    else:
        model, model_source = model_source, type(model_source).__name__
    srv = BoundedUpscaleServer(model, limits, tile=tile, overlap=overlap, device=device, precision=precision)

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # first signal: cancel the work in flight, then uvicorn's stop
            srv.stopping.set()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(srv.app, host=host, port=port, log_level="warning", lifespan="on", interface="asgi3",
                            timeout_graceful_shutdown=max(5, int(srv.limits.timeout_s)), access_log=False)
    print(f"serving {redact_uri(model_source)} on http://{host}:{port}/invocations: at most "
          f"{srv.limits.max_concurrent} request(s) at once, memory budget {srv.budget >> 20} MiB, "
          f"timeout {srv.limits.timeout_s:g} s, <= {srv.limits.max_images} images and "
          f"{srv.limits.max_request_pixels} pixels per request", file=sys.stderr, flush=True)
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises the signal it caught once it has stopped: let that end here, with exit code 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
    _Server(config).run()
    print(f"serving: stopped ({srv.stats})", file=sys.stderr, flush=True)
    if hard_exit:
        sys.stdout.flush()
        os._exit(0)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.serving --model models:/ots@champion [--port 5001] ...``"""
    import sys

    from ots.argparsing import ArgumentParser
    from ots.errors import OTSError, one_line

    d = ServeLimits()
    ap = ArgumentParser(prog="python -m pipelines.serving",
                        description="Serve a trained map over HTTP with bounded work and memory.")
    ap.add_argument("--model", required=True, help="checkpoint file, runs:/..., run id or models:/<name>@<alias>")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5001)
    ap.add_argument("--tile", type=int, default=DEFAULT_TILE)
    ap.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    ap.add_argument("--device", default=os.environ.get("OTS_SERVE_DEVICE", "cpu"))
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--max-concurrent", type=int, default=d.max_concurrent)
    ap.add_argument("--max-images", type=int, default=d.max_images)
    ap.add_argument("--max-pixels", type=int, default=d.max_pixels, help="per image (input pixels)")
    ap.add_argument("--max-request-pixels", type=int, default=d.max_request_pixels)
    ap.add_argument("--max-body-mb", type=float, default=d.max_body_bytes / 2**20)
    ap.add_argument("--memory-budget-gb", type=float, default=None, help="default: half the available memory")
    ap.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds per request; then 504 + cancel")
    a = ap.parse_args(argv)
    limits = ServeLimits(max_concurrent=a.max_concurrent, max_images=a.max_images, max_pixels=a.max_pixels,
                         max_request_pixels=a.max_request_pixels, max_body_bytes=int(a.max_body_mb * 2**20),
                         memory_budget=int(a.memory_budget_gb * 2**30) if a.memory_budget_gb else None,
                         timeout_s=a.timeout)
    try:
        return serve(a.model, host=a.host, port=a.port, limits=limits, tile=a.tile, overlap=a.overlap,
                     device=a.device, precision=a.precision, hard_exit=True)
    except OTSError as e:
        print(f"serving: error: {one_line(e)}", file=sys.stderr)
        return 2


__all__ = ["main", "serve"]
