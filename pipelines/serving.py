"""The served model: a custom MLflow pyfunc wrapping the trained map (checkpoint artifact) and the tiled inference.

Not the default ``pt2`` export (it freezes the input size): any image size goes through :mod:`ots.infer`.

Payload (``POST /invocations``, ``Content-Type: application/json``)::

    {"dataframe_split": {"columns": ["image"], "data": [["<base64 PNG>"], ...]},
     "params": {"tile": 256, "overlap": 32}}          # params optional

``image`` is a ``binary`` column: base64 in JSON (MLflow decodes it), raw ``bytes`` from Python
(``pyfunc_model.predict(pd.DataFrame({"image": [png_bytes]}))``). Any format Pillow reads is accepted (PNG, JPEG,
...; gray, gray+alpha, RGB, RGBA; 8 or 16 bit). Arrays: encode them with ``ots.infer.encode_png`` (lossless,
keeps 16 bit) -- or, bypassing the schema, ``unwrap_python_model().predict(None, df)`` takes uint8/uint16 numpy
arrays in the ``image`` column. The answer is ``{"predictions": [{"image": "<base64 PNG>", "height": H,
"width": W}, ...]}`` (same bit depth and channel layout as the input, ``scale`` times larger).

Bad inputs (not an image, empty, more than ``max_bytes`` bytes or ``max_pixels`` pixels, bad tiling params) raise
``MlflowException(INVALID_PARAMETER_VALUE)``: the scoring server answers HTTP 400 with the message and keeps
serving. Malformed JSON and a missing ``image`` column are rejected by MLflow itself with a 400.

Also :func:`load_map_from_uri`: the map from a checkpoint path, ``runs:/<run_id>/<path>``, a run id or
``models:/<name>@<alias>`` (used by ``ots upscale`` / ``ots evaluate`` for non-local sources).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    DEADLINE_EXCEEDED,
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    RESOURCE_EXHAUSTED,
    TEMPORARILY_UNAVAILABLE,
)

from ots.storage import redact_uri

DEFAULT_MAX_PIXELS = 2048 * 2048  # input (LR) pixels per image
DEFAULT_MAX_BYTES = 20 * 1024 * 1024  # encoded bytes per image
CHECKPOINT_ARTIFACT = "checkpoint"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _bad(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _limit(message: str) -> MlflowException:
    """Over a per-request limit (MLflow has no 413 code: RESOURCE_EXHAUSTED answers 429)."""
    return MlflowException(message, error_code=RESOURCE_EXHAUSTED)


DEFAULT_MAX_IMAGES = 8
# requests computing at once in one `mlflow models serve` worker process
_MAX_CONCURRENT = max(1, int(os.environ.get("OTS_SERVE_MAX_CONCURRENT", "1") or 1))
_SLOTS = threading.BoundedSemaphore(_MAX_CONCURRENT)


def _request_timeout() -> float:
    """The scoring server's request timeout (it answers 504 then): our work stops at the same deadline."""
    try:
        return float(os.environ.get("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "60"))
    except ValueError:
        return 60.0


# ------------------------------------------------------------------------------------------------- decoding


def decode_image(value: Any, *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
                 where: str = "image") -> np.ndarray:
    """bytes / base64 str / uint8|uint16 array -> (H, W, C) array; MlflowException (400) on anything else."""
    if isinstance(value, np.ndarray) and value.dtype != object:
        return _check_array(value, max_pixels, where)
    if isinstance(value, str):
        if len(value) > max_bytes * 4 // 3 + 8:
            raise _bad(f"{where}: payload larger than the limit of {max_bytes} bytes")
        try:
            value = base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError) as e:
            raise _bad(f"{where}: not valid base64 ({e})") from e
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise _bad(f"{where}: expected PNG/JPEG bytes (base64 in JSON), got {type(value).__name__}")
    if not value:
        raise _bad(f"{where}: empty image (0 bytes)")
    if len(value) > max_bytes:
        raise _bad(f"{where}: {len(value)} bytes, larger than the limit of {max_bytes} bytes")
    from ots.errors import DataError
    from ots.imageio import decode_image as _decode

    try:  # the decoder prepare and `ots upscale` share: 16-bit gray, RGB and RGBA PNGs stay 16-bit
        arr = _decode(value, where, max_pixels=max_pixels)
    except DataError as e:
        msg = str(e)
        if "too large" in msg or "empty" in msg:
            raise _bad(msg) from e
        raise _bad(f"{where}: not a decodable image ({msg.split(': ', 1)[-1]})") from e
    return _check_array(arr, max_pixels, where)


def _check_array(a: np.ndarray, max_pixels: int, where: str) -> np.ndarray:
    if a.dtype not in (np.uint8, np.uint16):
        raise _bad(f"{where}: arrays must be uint8 or uint16, got {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or min(a.shape[:2]) < 1:
        raise _bad(f"{where}: expected an (H, W[, 1|2|3|4]) image, got shape {a.shape}")
    if a.shape[0] * a.shape[1] > max_pixels:
        raise _bad(f"{where}: image is {a.shape[1]}x{a.shape[0]} = {a.shape[0] * a.shape[1]} pixels, "
                   f"more than the limit of {max_pixels}")
    return a


# ------------------------------------------------------------------------------------------------- the model


class OTSUpscaler(mlflow.pyfunc.PythonModel):
    """Upscales each row's ``image`` with the trained map, tiled; returns PNG bytes."""

    def __init__(self, tile: int = 256, overlap: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_bytes: int = DEFAULT_MAX_BYTES, device: str = "auto", precision: str = "auto",
                 max_images: int = DEFAULT_MAX_IMAGES, max_request_pixels: int | None = None):
        self.tile, self.overlap = int(tile), int(overlap)
        self.max_pixels, self.max_bytes = int(max_pixels), int(max_bytes)
        self.max_images = int(max_images)
        self.max_request_pixels = int(max_request_pixels or 2 * self.max_pixels)
        self.device, self.precision = device, precision
        self.model = None

    CONFIG_KEYS = ("tile", "overlap", "max_pixels", "max_bytes", "device", "precision", "max_images",
                   "max_request_pixels")

    def load_context(self, context) -> None:
        from ots.infer import resolve_device
        from ots.solver import load_map

        config = getattr(context, "model_config", None) or {}  # models-from-code: settings travel here
        for key in self.CONFIG_KEYS:
            if key in config and config[key] is not None:
                value = config[key]
                setattr(self, key, value if key in ("device", "precision") else int(value))

        device = os.environ.get("OTS_SERVE_DEVICE", self.device)
        self._device = resolve_device(device)
        self.model = load_map(context.artifacts[CHECKPOINT_ARTIFACT], device=str(self._device))

    def predict(self, context, model_input, params=None):  # no type hints: the signature is explicit
        from ots.errors import OTSError
        from ots.infer import Cancelled, encode_png, upscale_array

        if self.model is None:
            self.load_context(context)
        params = params or {}
        tile = int(params.get("tile", self.tile) or 0)
        overlap = int(params.get("overlap", self.overlap))
        if tile < 0 or overlap < 0 or (tile and overlap >= tile):
            raise _bad(f"bad tiling params: tile={tile} (0 = whole image), overlap={overlap} (0 <= overlap < tile)")
        if isinstance(model_input, pd.DataFrame):
            if "image" not in model_input.columns:
                raise _bad(f"input needs an 'image' column, got columns {list(model_input.columns)}")
            values = list(model_input["image"])
        elif isinstance(model_input, dict) and "image" in model_input:
            values = list(np.atleast_1d(np.asarray(model_input["image"], dtype=object)))
        else:
            raise _bad(f"input must be a DataFrame with an 'image' column, got {type(model_input).__name__}")
        if not values:
            raise _bad("no images in the request")
        max_images = int(getattr(self, "max_images", DEFAULT_MAX_IMAGES))  # older pickles lack the attribute
        if len(values) > max_images:
            raise _limit(f"{len(values)} images in one request, more than the limit of {max_images}")
        images = [decode_image(v, max_bytes=self.max_bytes, max_pixels=self.max_pixels, where=f"image[{i}]")
                  for i, v in enumerate(values)]  # validate every row before any work
        pixels = sum(a.shape[0] * a.shape[1] for a in images)
        max_request_pixels = int(getattr(self, "max_request_pixels", 2 * self.max_pixels))
        if pixels > max_request_pixels:
            raise _limit(f"{pixels} input pixels in one request, more than the limit of {max_request_pixels}")
        # `mlflow models serve` runs requests in a thread pool without admission control and keeps computing
        # after its timeout answers 504: bound both here (503 when busy, work stopped at the deadline)
        if not _SLOTS.acquire(blocking=False):
            raise MlflowException(f"busy: {_MAX_CONCURRENT} request(s) in progress; retry later",
                                  error_code=TEMPORARILY_UNAVAILABLE)
        try:
            deadline = time.monotonic() + _request_timeout()
            rows = []
            for img in images:
                try:
                    out = upscale_array(self.model, img, tile=tile or None, overlap=overlap, device=self._device,
                                        precision=self.precision, should_stop=lambda: time.monotonic() > deadline)
                except Cancelled as e:
                    raise MlflowException("request passed its deadline; its work was cancelled",
                                          error_code=DEADLINE_EXCEEDED) from e
                except OTSError as e:
                    raise _bad(str(e)) from e
                except Exception as e:  # noqa: BLE001 - OOM & co: one line to the client, the trace to the log
                    import logging

                    logging.getLogger("ots.serving").exception("upscaling failed")
                    code = TEMPORARILY_UNAVAILABLE if isinstance(e, MemoryError) or "out of memory" in str(e) \
                        else INTERNAL_ERROR
                    raise MlflowException(f"upscaling failed ({type(e).__name__}); see the server log",
                                          error_code=code) from None
                rows.append({"image": encode_png(out), "height": int(out.shape[0]), "width": int(out.shape[1])})
        finally:
            _SLOTS.release()
        return pd.DataFrame(rows, columns=["image", "height", "width"])


def signature(tile: int = 256, overlap: int = 32):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image")]),
        outputs=Schema([ColSpec("binary", "image"), ColSpec("long", "height"), ColSpec("long", "width")]),
        params=ParamSchema([ParamSpec("tile", "long", int(tile)), ParamSpec("overlap", "long", int(overlap))]),
    )


def example_png(h: int = 8, w: int = 8) -> bytes:
    from ots.infer import encode_png

    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 127 // max(h + w - 2, 1)], -1)
    return encode_png(img.astype(np.uint8))


def pip_requirements() -> list[str]:
    import torch

    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas",
            "pillow", "pyyaml", "tqdm"]


def log_pyfunc_model(checkpoint_path: str | os.PathLike, name: str = "model", *, tile: int = 256,
                     overlap: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES,
                     device: str = "auto", precision: str = "auto", include_code: bool = True,
                     registered_model_name: str | None = None, run_id: str | None = None):
    """Log the map checkpoint as an :class:`OTSUpscaler` pyfunc -- models-from-code (``serving_model.py`` +
    ``model_config``), signature, input example, the ``ots`` and ``pipelines`` code -- into ``run_id`` (default:
    the active run, else a new one). Returns mlflow's ModelInfo."""
    from ots.errors import CheckpointError

    ckpt = Path(checkpoint_path)
    if not ckpt.is_file():
        raise CheckpointError(f"no such checkpoint file: {ckpt}")
    from ots.solver import load_map

    load_map(ckpt)  # fail early (one line) on a checkpoint the server could not load
    kwargs = dict(
        name=name,
        # models-from-code: the registry stores serving_model.py + this config, not a cloudpickle of the object,
        # so loading the model runs our reviewed source instead of unpickling bundled code
        python_model=str(Path(__file__).with_name("serving_model.py")),
        model_config={"tile": int(tile), "overlap": int(overlap), "max_pixels": int(max_pixels),
                      "max_bytes": int(max_bytes), "device": device, "precision": precision},
        artifacts={CHECKPOINT_ARTIFACT: str(ckpt)},
        signature=signature(tile, overlap),
        input_example=pd.DataFrame({"image": [example_png()]}),
        pip_requirements=pip_requirements(),
        registered_model_name=registered_model_name,
    )
    with tempfile.TemporaryDirectory(prefix="ots-code-") as code:
        if include_code:  # the packages' sources, without caches, so the model serves from any checkout
            import shutil

            for pkg in ("ots", "pipelines"):
                shutil.copytree(REPO_ROOT / pkg, Path(code) / pkg,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".env", ".env.*"))
            kwargs["code_paths"] = [str(Path(code) / "ots"), str(Path(code) / "pipelines")]
        import warnings

        active = mlflow.active_run()
        with warnings.catch_warnings():  # we give an explicit signature; no type-hint inference wanted
            warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
            if run_id is None or (active is not None and active.info.run_id == run_id):
                return mlflow.pyfunc.log_model(**kwargs)
            with mlflow.start_run(run_id=run_id):
                return mlflow.pyfunc.log_model(**kwargs)


# ---------------------------------------------------------------------------------------------- map loading

_RUN_ID = re.compile(r"[0-9a-f]{32}")


def _checkpoint_in(path: Path) -> Path:
    """A checkpoint file inside a downloaded artifact: the file itself, a pyfunc model dir, or a lone *.pt."""
    from ots.errors import CheckpointError

    if path.is_file():
        return path
    mlmodel = path / "MLmodel"
    if mlmodel.is_file():
        import yaml

        conf = yaml.safe_load(mlmodel.read_text()) or {}
        art = ((conf.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}
        rel = (art.get(CHECKPOINT_ARTIFACT) or {}).get("path")
        if rel and (path / rel).is_file():
            return path / rel
    found = sorted(path.rglob("*.pt"))
    if len(found) == 1:
        return found[0]
    finals = [p for p in found if p.name == "final.pt"]
    if len(finals) == 1:
        return finals[0]
    raise CheckpointError(f"no unique map checkpoint in {path} ({len(found)} *.pt files)")


def _run_model_uri(run_id: str) -> str:
    """The newest pyfunc model logged by a run, else the run's checkpoint artifact."""
    from ots.errors import CheckpointError

    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise CheckpointError(f"no MLflow run {run_id} at {redact_uri(mlflow.get_tracking_uri())}") from e
    try:  # in the run's experiment: without experiment_ids MLflow searches the *active* one only
        models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                             filter_string=f"source_run_id = '{run_id}'", output_format="list")
    except MlflowException:
        models = []
    models = sorted(models, key=lambda m: m.creation_timestamp or 0, reverse=True)
    if models:
        return f"models:/{models[0].model_id}"
    stack, pts = [""], []
    while stack:
        for f in client.list_artifacts(run_id, stack.pop() or None):
            if f.is_dir:
                stack.append(f.path)
            elif f.path.endswith(".pt"):
                pts.append(f.path)
    if not pts:
        raise CheckpointError(f"MLflow run {run_id} has no logged model and no *.pt artifact")
    pts.sort(key=lambda p: (Path(p).name != "final.pt", p))
    return f"runs:/{run_id}/{pts[0]}"


def resolve_checkpoint(source: str, dst: str | os.PathLike) -> Path:
    """Download (into ``dst``) the map checkpoint behind a path, ``runs:/``, ``models:/`` URI or run id."""
    from ots.errors import CheckpointError

    if Path(source).is_file():
        return Path(source)
    uri = _run_model_uri(source) if _RUN_ID.fullmatch(source) else source
    if not uri.startswith(("runs:/", "models:/")):
        raise CheckpointError(f"{source!r} is neither a checkpoint file nor an MLflow runs:/, models:/ URI or run id")
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst))
    except MlflowException as e:
        raise CheckpointError(f"cannot fetch {uri} from {redact_uri(mlflow.get_tracking_uri())}: "
                              f"{redact_uri(str(e).strip().splitlines()[0])}") from e
    return _checkpoint_in(Path(local))


def load_map_from_uri(source: str, device: str = "cpu"):
    """The trained map (eval mode) from a checkpoint path, ``runs:/...``, a run id or ``models:/name@alias``."""
    from ots.solver import load_map

    with tempfile.TemporaryDirectory(prefix="ots-model-") as tmp:
        return load_map(resolve_checkpoint(source, tmp), device=device)


# ------------------------------------------------------------------------------------ the bounded HTTP server
#
# `mlflow models serve` runs every request in a thread pool of ~cpu+4 threads with no admission control, keeps
# computing after its 60 s timeout answers 504, echoes the request data (and, for unexpected errors, the stack
# trace) in error bodies and waits for busy threads on SIGTERM. `python -m pipelines.serving` serves the same
# payloads with those bounds:
#   * admission: at most `max_concurrent` requests compute at once and their estimated peak memory
#     (ots.infer.estimate_memory, from the image headers) stays within `memory_budget`; otherwise 503 + Retry-After;
#   * per request: at most `max_images` images and `max_request_pixels` input pixels, a body of at most
#     `max_body_bytes`, and one request that alone needs more than the budget: 413 with the reason;
#   * a request still running after `timeout_s` answers 504 and its work is cancelled (polled per tile batch);
#     its memory stays reserved until the thread has really stopped;
#   * SIGTERM/SIGINT: stop accepting, cancel the work in flight (503 "shutting down"), exit 0;
#   * errors are one-line JSON {"error_code", "message"}; stack traces go to the server log only.


@dataclass(frozen=True)
class ServeLimits:
    max_concurrent: int = 2
    max_images: int = 8
    max_pixels: int = DEFAULT_MAX_PIXELS  # per image (LR pixels)
    max_request_pixels: int = 2 * DEFAULT_MAX_PIXELS  # per request, all images together
    max_bytes: int = DEFAULT_MAX_BYTES  # per encoded image
    max_body_bytes: int = 64 * 1024 * 1024
    memory_budget: int | None = None  # bytes; default: half of the memory available at start
    timeout_s: float = 60.0

    def validate(self) -> ServeLimits:
        from ots.errors import ConfigError

        for k in ("max_concurrent", "max_images", "max_pixels", "max_request_pixels", "max_bytes", "max_body_bytes"):
            if int(getattr(self, k)) < 1:
                raise ConfigError(f"serve limit {k} must be >= 1, got {getattr(self, k)}")
        if self.timeout_s <= 0 or (self.memory_budget is not None and self.memory_budget <= 0):
            raise ConfigError("serve timeout and memory budget must be positive")
        return self


class _HTTPError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class BoundedUpscaleServer:
    """An ASGI app (``.app``) upscaling ``/invocations`` payloads under :class:`ServeLimits`."""

    def __init__(self, model, limits: ServeLimits | None = None, *, tile: int = 256, overlap: int = 32,
                 device: str = "cpu", precision: str = "auto"):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        from ots.infer import available_memory, model_scale, resolve_device

        self.limits = (limits or ServeLimits()).validate()
        self.model, self.scale = model, model_scale(model)
        self.tile, self.overlap = int(tile), int(overlap)
        self.device, self.precision = resolve_device(device), precision
        self.n_features = int(getattr(model, "n_features", 64))
        self.budget = int(self.limits.memory_budget or available_memory() // 2)
        self.pool = ThreadPoolExecutor(max_workers=self.limits.max_concurrent, thread_name_prefix="ots-serve")
        self.stopping = threading.Event()
        self.active = 0  # requests computing (only touched on the event loop)
        self.reserved = 0  # their estimated bytes
        self.stats = {"ok": 0, "busy": 0, "too_large": 0, "bad": 0, "timeout": 0, "cancelled": 0, "error": 0}
        try:  # the 16-bit PNG decoder, imported now rather than inside the first request's deadline
            import torchvision.io  # noqa: F401
        except ImportError:  # pragma: no cover - torchvision is a dependency
            pass

    # -- request handling (event loop) ------------------------------------------------------------------
    async def app(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    self.stopping.set()
                    self.pool.shutdown(wait=False, cancel_futures=True)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        try:
            if path in ("/ping", "/health") and method == "GET":
                status = 503 if self.stopping.is_set() else 200
                return await self._send(send, status, {"status": "stopping" if status == 503 else "ok",
                                                       "active": self.active})
            if path != "/invocations" or method != "POST":
                raise _HTTPError(404, "ENDPOINT_NOT_FOUND", f"no endpoint {method} {path}")
            body = await self._body(scope, receive)
            result = await self._invocations(body)
            self.stats["ok"] += 1
            return await self._send(send, 200, result)
        except _HTTPError as e:
            key = {503: "busy", 413: "too_large", 504: "timeout", 500: "error"}.get(e.status, "bad")
            self.stats[key] += 1
            return await self._send(send, e.status, {"error_code": e.code, "message": e.message}, e.headers)
        except Exception as e:  # noqa: BLE001 - never a stack trace in a response; the log has it
            import logging

            logging.getLogger("ots.serving").exception("internal error")
            self.stats["error"] += 1
            return await self._send(send, 500, {"error_code": "INTERNAL_ERROR",
                                                "message": f"internal error ({type(e).__name__}); see the server log"})

    async def _body(self, scope, receive) -> bytes:
        limit = self.limits.max_body_bytes
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise _HTTPError(413, "REQUEST_LIMIT_EXCEEDED", f"request body of {int(length)} bytes is larger than "
                             f"the limit of {limit} bytes")
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise _HTTPError(400, "BAD_REQUEST", "client disconnected")
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _HTTPError(413, "REQUEST_LIMIT_EXCEEDED", f"request body larger than the limit of {limit} bytes")
            chunks.append(chunk)
            if not msg.get("more_body"):
                return b"".join(chunks)

    @staticmethod
    async def _send(send, status: int, payload: dict, headers: dict | None = None) -> None:
        import json

        body = json.dumps(payload).encode()
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        hdrs += [(k.encode(), str(v).encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

    def _parse(self, body: bytes) -> tuple[list[bytes], dict]:
        import json

        try:
            doc = json.loads(body)
        except ValueError as e:
            raise _HTTPError(400, "BAD_REQUEST", f"request body is not valid JSON ({e})") from e
        if not isinstance(doc, dict):
            raise _HTTPError(400, "BAD_REQUEST", "request body must be a JSON object")
        params = doc.get("params") or {}
        if "dataframe_split" in doc:
            split = doc["dataframe_split"] or {}
            cols, rows = split.get("columns") or [], split.get("data") or []
            if "image" not in cols:
                raise _HTTPError(400, "BAD_REQUEST", f"input needs an 'image' column, got columns {cols}")
            i = cols.index("image")
            values = [r[i] if isinstance(r, list) and len(r) > i else None for r in rows]
        elif "dataframe_records" in doc:
            values = [r.get("image") if isinstance(r, dict) else None for r in doc["dataframe_records"] or []]
        elif "inputs" in doc or "instances" in doc:
            v = doc.get("inputs", doc.get("instances"))
            values = v.get("image") if isinstance(v, dict) else v
            values = values if isinstance(values, list) else [values]
        else:
            raise _HTTPError(400, "BAD_REQUEST", "expected dataframe_split, dataframe_records, inputs or instances")
        if not values:
            raise _HTTPError(400, "BAD_REQUEST", "no images in the request")
        if len(values) > self.limits.max_images:
            raise _HTTPError(413, "REQUEST_LIMIT_EXCEEDED", f"{len(values)} images in one request, more than the "
                             f"limit of {self.limits.max_images}; send them in several requests")
        images = []
        for k, v in enumerate(values):
            if not isinstance(v, str):
                raise _HTTPError(400, "BAD_REQUEST", f"image[{k}]: expected a base64 string")
            if len(v) > self.limits.max_bytes * 4 // 3 + 8:
                raise _HTTPError(413, "REQUEST_LIMIT_EXCEEDED",
                                 f"image[{k}]: larger than the limit of {self.limits.max_bytes} bytes")
            try:
                images.append(base64.b64decode(v, validate=False))
            except (binascii.Error, ValueError) as e:
                raise _HTTPError(400, "BAD_REQUEST", f"image[{k}]: not valid base64 ({e})") from e
        return images, params

    async def _invocations(self, body: bytes) -> dict:
        import asyncio

        from ots.errors import DataError
        from ots.imageio import image_info
        from ots.infer import estimate_memory

        if self.stopping.is_set():
            raise _HTTPError(503, "TEMPORARILY_UNAVAILABLE", "server is shutting down")
        images, params = self._parse(body)
        try:
            tile = int(params.get("tile", self.tile) or 0)
            overlap = int(params.get("overlap", self.overlap))
        except (TypeError, ValueError) as e:
            raise _HTTPError(400, "BAD_REQUEST", f"bad tiling params: {e}") from e
        if tile < 0 or overlap < 0 or (tile and overlap >= tile):
            raise _HTTPError(400, "BAD_REQUEST", f"bad tiling params: tile={tile} (0 = whole image), "
                             f"overlap={overlap} (0 <= overlap < tile)")
        need, pixels = 0, 0
        for k, data in enumerate(images):  # headers only: nothing is decoded before admission
            if not data:
                raise _HTTPError(400, "BAD_REQUEST", f"image[{k}]: empty image (0 bytes)")
            if len(data) > self.limits.max_bytes:
                raise _HTTPError(413, "REQUEST_LIMIT_EXCEEDED", f"image[{k}]: {len(data)} bytes, larger than the "
                                 f"limit of {self.limits.max_bytes} bytes")
            try:
                h, w, c, item = image_info(data, f"image[{k}]")
            except DataError as e:
                raise _HTTPError(400, "BAD_REQUEST", str(e)) from e
            if h * w > self.limits.max_pixels:
                raise _HTTPError(413, "REQUEST_LIMIT_EXCEEDED", f"image[{k}]: {w}x{h} = {w * h} pixels, more than "
                                 f"the limit of {self.limits.max_pixels}")
            pixels += h * w
            need += estimate_memory(h, w, c, self.scale, tile=tile or None, n_features=self.n_features,
                                    itemsize=item)
        if pixels > self.limits.max_request_pixels:
            raise _HTTPError(413, "REQUEST_LIMIT_EXCEEDED", f"{pixels} input pixels in one request, more than the "
                             f"limit of {self.limits.max_request_pixels}; send fewer or smaller images")
        if need > self.budget:
            raise _HTTPError(413, "REQUEST_LIMIT_EXCEEDED", f"this request needs about {need >> 20} MiB, more than "
                             f"the server's memory budget of {self.budget >> 20} MiB; send fewer or smaller images")
        if self.active >= self.limits.max_concurrent or self.reserved + need > self.budget:
            raise _HTTPError(503, "TEMPORARILY_UNAVAILABLE",
                             f"busy: {self.active} request(s) in progress using about {self.reserved >> 20} of "
                             f"{self.budget >> 20} MiB (at most {self.limits.max_concurrent} at once); retry later",
                             {"Retry-After": "1"})
        self.active += 1
        self.reserved += need
        import threading

        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.pool, self._work, images, tile, overlap, cancel)

        def release(f) -> None:  # only when the thread has really finished: the memory bound holds
            self.active -= 1
            self.reserved -= need
            if not f.cancelled():
                f.exception()  # retrieved: no "never retrieved" warning for abandoned work

        fut.add_done_callback(release)
        try:
            rows = await asyncio.wait_for(asyncio.shield(fut), timeout=self.limits.timeout_s)
        except (asyncio.TimeoutError, TimeoutError) as e:
            cancel.set()
            raise _HTTPError(504, "DEADLINE_EXCEEDED", f"request took longer than {self.limits.timeout_s:g} s; "
                             "its work was cancelled") from e
        except _HTTPError:
            raise
        return {"predictions": rows}

    def _work(self, images: list[bytes], tile: int, overlap: int, cancel) -> list[dict]:
        from ots.errors import OTSError
        from ots.infer import Cancelled, encode_png, upscale_array

        stop = lambda: cancel.is_set() or self.stopping.is_set()  # noqa: E731
        rows = []
        for k, data in enumerate(images):
            try:
                img = decode_image(data, max_bytes=self.limits.max_bytes, max_pixels=self.limits.max_pixels,
                                   where=f"image[{k}]")
                out = upscale_array(self.model, img, tile=tile or None, overlap=overlap, device=self.device,
                                    precision=self.precision, should_stop=stop)
            except Cancelled as e:
                self.stats["cancelled"] += 1
                if self.stopping.is_set():
                    raise _HTTPError(503, "TEMPORARILY_UNAVAILABLE", "server is shutting down") from e
                raise _HTTPError(504, "DEADLINE_EXCEEDED", "request cancelled after its deadline") from e
            except MlflowException as e:
                raise _HTTPError(400, "BAD_REQUEST", e.message) from e
            except OTSError as e:
                raise _HTTPError(400, "BAD_REQUEST", str(e)) from e
            except MemoryError as e:
                raise _HTTPError(503, "TEMPORARILY_UNAVAILABLE", "out of memory; retry later") from e
            rows.append({"image": base64.b64encode(encode_png(out)).decode(), "height": int(out.shape[0]),
                         "width": int(out.shape[1])})
        return rows


def serve(model_source, *, host: str = "127.0.0.1", port: int = 5001, limits: ServeLimits | None = None,
          tile: int = 256, overlap: int = 32, device: str = "cpu", precision: str = "auto",
          hard_exit: bool = False) -> int:
    """Load the map (checkpoint, ``runs:/``, run id or ``models:/name@alias``: only the checkpoint is fetched,
    no pickled code runs; or an ``nn.Module`` with ``.scale``) and serve it until SIGTERM/SIGINT.

    ``hard_exit`` (the CLI): once every response is sent, leave the process with ``os._exit(0)`` -- after a
    served signal the interpreter's teardown was seen to hang in native code (no Python frame) for minutes.
    """
    import sys

    import uvicorn

    from ots.infer import resolve_device

    if isinstance(model_source, str):
        model = load_map_from_uri(model_source, device=str(resolve_device(device)))
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
    import argparse
    import sys

    from ots.errors import OTSError

    d = ServeLimits()
    ap = argparse.ArgumentParser(description="Serve a trained map over HTTP with bounded work and memory.")
    ap.add_argument("--model", required=True, help="checkpoint file, runs:/..., run id or models:/<name>@<alias>")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5001)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=32)
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
        print(f"serving: error: {redact_uri(' '.join(str(e).split()))}", file=sys.stderr)
        return 2


__all__ = [
    "BoundedUpscaleServer",
    "OTSUpscaler",
    "ServeLimits",
    "decode_image",
    "load_map_from_uri",
    "log_pyfunc_model",
    "resolve_checkpoint",
    "serve",
    "signature",
]


if __name__ == "__main__":
    raise SystemExit(main())
