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
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

DEFAULT_MAX_PIXELS = 2048 * 2048  # input (LR) pixels per image
DEFAULT_MAX_BYTES = 20 * 1024 * 1024  # encoded bytes per image
CHECKPOINT_ARTIFACT = "checkpoint"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _bad(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


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
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(value))
            w, h = im.size
            if w * h > max_pixels:
                raise _bad(f"{where}: image is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}")
            im.load()
    except MlflowException:
        raise
    except Exception as e:  # noqa: BLE001 - anything Pillow cannot read is "not an image"
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _bad(f"{where}: not a decodable image ({reason})") from e
    if im.mode in ("I;16", "I;16B", "I;16L"):
        arr = np.asarray(im, dtype=np.uint16)
    else:
        if im.mode not in ("L", "LA", "RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
        arr = np.asarray(im)
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
                 max_bytes: int = DEFAULT_MAX_BYTES, device: str = "auto", precision: str = "auto"):
        self.tile, self.overlap = int(tile), int(overlap)
        self.max_pixels, self.max_bytes = int(max_pixels), int(max_bytes)
        self.device, self.precision = device, precision
        self.model = None

    def load_context(self, context) -> None:
        from ots.infer import resolve_device
        from ots.solver import load_map

        device = os.environ.get("OTS_SERVE_DEVICE", self.device)
        self._device = resolve_device(device)
        self.model = load_map(context.artifacts[CHECKPOINT_ARTIFACT], device=str(self._device))

    def predict(self, context, model_input, params=None):  # no type hints: the signature is explicit
        from ots.errors import OTSError
        from ots.infer import encode_png, upscale_array

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
        images = [decode_image(v, max_bytes=self.max_bytes, max_pixels=self.max_pixels, where=f"image[{i}]")
                  for i, v in enumerate(values)]  # validate every row before any work
        rows = []
        for img in images:
            try:
                out = upscale_array(self.model, img, tile=tile or None, overlap=overlap, device=self._device,
                                    precision=self.precision)
            except OTSError as e:
                raise _bad(str(e)) from e
            rows.append({"image": encode_png(out), "height": int(out.shape[0]), "width": int(out.shape[1])})
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
    """Log the map checkpoint as an :class:`OTSUpscaler` pyfunc (signature, input example, the ``ots`` and
    ``pipelines`` code) into ``run_id`` (default: the active run, else a new one). Returns mlflow's ModelInfo."""
    from ots.errors import CheckpointError

    ckpt = Path(checkpoint_path)
    if not ckpt.is_file():
        raise CheckpointError(f"no such checkpoint file: {ckpt}")
    from ots.solver import load_map

    load_map(ckpt)  # fail early (one line) on a checkpoint the server could not load
    kwargs = dict(
        name=name,
        python_model=OTSUpscaler(tile=tile, overlap=overlap, max_pixels=max_pixels, max_bytes=max_bytes,
                                 device=device, precision=precision),
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
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
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
        raise CheckpointError(f"no MLflow run {run_id} at {mlflow.get_tracking_uri()}") from e
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
        raise CheckpointError(f"cannot fetch {uri} from {mlflow.get_tracking_uri()}: "
                              f"{str(e).strip().splitlines()[0]}") from e
    return _checkpoint_in(Path(local))


def load_map_from_uri(source: str, device: str = "cpu"):
    """The trained map (eval mode) from a checkpoint path, ``runs:/...``, a run id or ``models:/name@alias``."""
    from ots.solver import load_map

    with tempfile.TemporaryDirectory(prefix="ots-model-") as tmp:
        return load_map(resolve_checkpoint(source, tmp), device=device)


__all__ = [
    "OTSUpscaler",
    "decode_image",
    "load_map_from_uri",
    "log_pyfunc_model",
    "resolve_checkpoint",
    "signature",
]
