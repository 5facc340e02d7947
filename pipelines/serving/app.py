"""The bounded HTTP front (ASGI): admission by concurrency and estimated memory, deadlines, one-line JSON errors.

`mlflow models serve` runs every request in a thread pool of ~cpu+4 threads with no admission control, keeps
computing after its 60 s timeout answers 504, echoes the request data (and, for unexpected errors, the stack
trace) in error bodies and waits for busy threads on SIGTERM. `python -m pipelines.serving` serves the same
payloads with those bounds (:class:`pipelines.serving.limits.ServeLimits`):
  * admission: at most `max_concurrent` requests compute at once and their estimated peak memory
    (ots.memory.estimate_memory, from the image headers) stays within `memory_budget`; otherwise 503 + Retry-After;
  * per request: at most `max_images` images and `max_request_pixels` input pixels, a body of at most
    `max_body_bytes`, and one request that alone needs more than the budget: 413 with the reason;
  * a request still running after `timeout_s` answers 504 and its work is cancelled (polled per tile batch);
    its memory stays reserved until the thread has really stopped;
  * SIGTERM/SIGINT: stop accepting, cancel the work in flight (503 "shutting down"), exit 0;
  * errors are one-line JSON {"error_code", "message"}; stack traces go to the server log only.
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException

from ots.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
from pipelines.serving.limits import ServeLimits
from pipelines.serving.payload import decode_b64, encode_b64, max_b64_chars, payload_image

__all__ = ["BoundedUpscaleServer"]


class _HTTPError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class BoundedUpscaleServer:
    """An ASGI app (``.app``) upscaling ``/invocations`` payloads under :class:`ServeLimits`."""

    def __init__(self, model, limits: ServeLimits | None = None, *, tile: int = DEFAULT_TILE,
                 overlap: int = DEFAULT_OVERLAP, device: str = "cpu", precision: str = "auto"):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        from ots.device import resolve_device
        from ots.memory import available_memory
        from ots.tiling import model_scale

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
        try:  # the 16-bit PNG decoder and encoder, imported now rather than inside the first request's deadline
            import cv2  # noqa: F401
            import torchvision.io  # noqa: F401
        except ImportError:  # pragma: no cover - both are dependencies
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
            if len(v) > max_b64_chars(self.limits.max_bytes):
                raise _HTTPError(413, "REQUEST_LIMIT_EXCEEDED",
                                 f"image[{k}]: larger than the limit of {self.limits.max_bytes} bytes")
            from ots.errors import DataError

            try:
                images.append(decode_b64(v, f"image[{k}]"))
            except DataError as e:
                raise _HTTPError(400, "BAD_REQUEST", str(e)) from e
        return images, params

    async def _invocations(self, body: bytes) -> dict:
        import asyncio

        from ots.errors import DataError
        from ots.imageio import image_info
        from ots.memory import estimate_memory

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
        from ots.imagewrite import encode_png
        from ots.infer import upscale_array
        from ots.tiling import Cancelled

        stop = lambda: cancel.is_set() or self.stopping.is_set()  # noqa: E731
        rows = []
        for k, data in enumerate(images):
            try:
                img = payload_image(data, max_bytes=self.limits.max_bytes, max_pixels=self.limits.max_pixels,
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
            except (MemoryError, RuntimeError) as e:
                from ots.memory import is_out_of_memory

                if not is_out_of_memory(e):
                    raise
                raise _HTTPError(503, "TEMPORARILY_UNAVAILABLE", "out of memory; retry later") from e
            rows.append({"image": encode_b64(encode_png(out)), "height": int(out.shape[0]),
                         "width": int(out.shape[1])})
        return rows
