"""The served model: a custom MLflow pyfunc wrapping the trained map (checkpoint artifact) and the tiled inference.

Not the default ``pt2`` export (it freezes the input size): any image size goes through :mod:`ots.infer`. The
bounded HTTP front is :mod:`pipelines.serving.app`; registry URIs are :mod:`pipelines.registry`; logging this
model to MLflow is :mod:`pipelines.serving.package`.

Payload (``POST /invocations``, ``Content-Type: application/json``)::

    {"dataframe_split": {"columns": ["image"], "data": [["<base64 PNG>"], ...]},
     "params": {"tile": 256, "overlap": 32}}          # params optional

``image``: a ``string`` column, base64 as in :mod:`pipelines.serving.payload` (decoded there, not by MLflow); raw
``bytes`` or uint8/uint16 arrays from Python; any format Pillow reads, 8 or 16 bit. The answer, as from
:mod:`pipelines.serving.app`: ``{"predictions": [{"image": "<base64 PNG>", "height": H, "width": W}, ...]}``
(same bit depth and channel layout as the input, ``scale`` times larger).

Bad inputs (not an image, empty, over ``max_bytes`` bytes or ``max_pixels`` pixels, bad tiling params) raise
``MlflowException(INVALID_PARAMETER_VALUE)``: HTTP 400 with the message (malformed JSON: MLflow's own 400).
"""

from __future__ import annotations

import os
import time

import mlflow
import numpy as np
import pandas as pd
from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED, INTERNAL_ERROR, TEMPORARILY_UNAVAILABLE

from ots.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
from pipelines.registry import CHECKPOINT_ARTIFACT
from pipelines.serving.limits import MAX_INPUT_BYTES, MAX_INPUT_PIXELS, MAX_REQUEST_IMAGES
from pipelines.serving.payload import encode_b64, payload_image
from pipelines.serving.scoring_server import (
    MAX_CONCURRENT,
    SLOTS,
    ServingError,
    bad_input,
    over_limit,
    request_timeout,
    server_stopping,
)


class OTSUpscaler(mlflow.pyfunc.PythonModel):
    """Upscales each row's ``image`` with the trained map, tiled; returns base64 PNGs."""

    def __init__(self, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, max_pixels: int = MAX_INPUT_PIXELS,
                 max_bytes: int = MAX_INPUT_BYTES, device: str = "auto", precision: str = "auto",
                 max_images: int = MAX_REQUEST_IMAGES, max_request_pixels: int | None = None):
        self.tile, self.overlap = int(tile), int(overlap)
        self.max_pixels, self.max_bytes = int(max_pixels), int(max_bytes)
        self.max_images = int(max_images)
        self.max_request_pixels = int(max_request_pixels or 2 * self.max_pixels)
        self.device, self.precision = device, precision
        self.model = None

    CONFIG_KEYS = ("tile", "overlap", "max_pixels", "max_bytes", "device", "precision", "max_images",
                   "max_request_pixels")

    def load_context(self, context) -> None:
        from ots.checkpoint import load_map
        from ots.device import resolve_device

        config = getattr(context, "model_config", None) or {}  # models-from-code: settings travel here
        for key in self.CONFIG_KEYS:
            if key in config and config[key] is not None:
                value = config[key]
                setattr(self, key, value if key in ("device", "precision") else int(value))

        device = os.environ.get("OTS_SERVE_DEVICE", self.device)
        self._device = resolve_device(device)
        self.model = load_map(context.artifacts[CHECKPOINT_ARTIFACT], device=str(self._device))

    # pd.DataFrame hints: MLflow validates nothing more (the logged signature says what a request holds) and does
    # not warn about a hint-less predict
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from ots.errors import OTSError
        from ots.imagewrite import encode_png
        from ots.infer import upscale_array
        from ots.memory import is_out_of_memory
        from ots.tiling import Cancelled

        if self.model is None:
            self.load_context(context)
        params = params or {}
        tile = int(params.get("tile", self.tile) or 0)
        overlap = int(params.get("overlap", self.overlap))
        if tile < 0 or overlap < 0 or (tile and overlap >= tile):
            raise bad_input(f"bad tiling params: tile={tile} (0 = whole image), overlap={overlap} "
                            "(0 <= overlap < tile)")
        if isinstance(model_input, pd.DataFrame):
            if "image" not in model_input.columns:
                raise bad_input(f"input needs an 'image' column, got columns {list(model_input.columns)}")
            values = list(model_input["image"])
        elif isinstance(model_input, dict) and "image" in model_input:
            values = list(np.atleast_1d(np.asarray(model_input["image"], dtype=object)))
        else:
            raise bad_input(f"input must be a DataFrame with an 'image' column, got {type(model_input).__name__}")
        if not values:
            raise bad_input("no images in the request")
        max_images = int(getattr(self, "max_images", MAX_REQUEST_IMAGES))  # older pickles lack the attribute
        if len(values) > max_images:
            raise over_limit(f"{len(values)} images in one request, more than the limit of {max_images}")
        images = [payload_image(v, max_bytes=self.max_bytes, max_pixels=self.max_pixels, where=f"image[{i}]")
                  for i, v in enumerate(values)]  # validate every row before any work
        pixels = sum(a.shape[0] * a.shape[1] for a in images)
        max_request_pixels = int(getattr(self, "max_request_pixels", 2 * self.max_pixels))
        if pixels > max_request_pixels:
            raise over_limit(f"{pixels} input pixels in one request, more than the limit of {max_request_pixels}")
        # `mlflow models serve` runs requests in a thread pool without admission control and keeps computing
        # after its timeout answers 504: bound both here (503 when busy, work stopped at the deadline)
        if not SLOTS.acquire(blocking=False):
            raise ServingError(f"busy: {MAX_CONCURRENT} request(s) in progress; retry later",
                               error_code=TEMPORARILY_UNAVAILABLE)
        try:
            deadline = time.monotonic() + request_timeout()
            rows = []
            for img in images:
                try:
                    out = upscale_array(self.model, img, tile=tile or None, overlap=overlap, device=self._device,
                                        precision=self.precision,
                                        should_stop=lambda: time.monotonic() > deadline or server_stopping())
                except Cancelled as e:
                    if server_stopping():
                        raise ServingError("server is shutting down; its work was cancelled",
                                           error_code=TEMPORARILY_UNAVAILABLE) from e
                    raise ServingError("request passed its deadline; its work was cancelled",
                                       error_code=DEADLINE_EXCEEDED) from e
                except OTSError as e:
                    raise bad_input(str(e)) from e
                except Exception as e:  # noqa: BLE001 - OOM & co: one line to the client, the trace to the log
                    import logging

                    logging.getLogger("ots.serving").exception("upscaling failed")
                    code = TEMPORARILY_UNAVAILABLE if is_out_of_memory(e) else INTERNAL_ERROR
                    raise ServingError(f"upscaling failed ({type(e).__name__}); see the server log",
                                       error_code=code) from None
                rows.append({"image": encode_b64(encode_png(out)), "height": int(out.shape[0]),
                             "width": int(out.shape[1])})
        finally:
            SLOTS.release()
        return pd.DataFrame(rows, columns=["image", "height", "width"])
