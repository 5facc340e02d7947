"""Packaging the served model: its signature, requirements and input example, and logging it to MLflow.

The model itself (the pyfunc that runs in ``mlflow models serve``) is :mod:`pipelines.serving.pyfunc`, logged as
code: :mod:`pipelines.serving.model` (MLflow runs that file to load it) plus the ``ots`` and ``pipelines`` sources.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from ots.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
from pipelines.registry import CHECKPOINT_ARTIFACT
from pipelines.serving.limits import MAX_INPUT_BYTES, MAX_INPUT_PIXELS
from pipelines.serving.payload import encode_b64

REPO_ROOT = Path(__file__).resolve().parents[2]


def signature(tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        # string, not binary: MLflow would decode a binary column itself (no data-URI prefix) and re-encode
        # answers with line breaks; pipelines.serving.payload does both, the same way as the bounded server
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema([ColSpec("string", "image"), ColSpec("long", "height"), ColSpec("long", "width")]),
        params=ParamSchema([ParamSpec("tile", "long", int(tile)), ParamSpec("overlap", "long", int(overlap))]),
    )


def example_png(h: int = 8, w: int = 8) -> bytes:
    from ots.imagewrite import encode_png

    y, x = np.mgrid[0:h, 0:w]
    return encode_png(np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1),
                                (x + y) * 127 // max(h + w - 2, 1)], -1).astype(np.uint8))


def pip_requirements() -> list[str]:
    """What the served code imports (tests/test_serving.py checks): torchvision (16-bit PNGs) pinned with torch."""
    import torch
    import torchvision

    pins = {n: m.__version__.split("+")[0] for n, m in (("torch", torch), ("torchvision", torchvision))}  # no +cu
    return [f"mlflow=={mlflow.__version__}", *(f"{n}=={v}" for n, v in pins.items()), "numpy", "pandas", "pillow",
            "opencv-python-headless", "pyyaml", "tqdm"]  # cv2: 16-bit colour PNG answers


def log_pyfunc_model(checkpoint_path: str | os.PathLike, name: str = "model", *,
                     tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, max_pixels: int = MAX_INPUT_PIXELS,
                     max_bytes: int = MAX_INPUT_BYTES, device: str = "auto", precision: str = "auto",
                     include_code: bool = True, registered_model_name: str | None = None, run_id: str | None = None):
    """Log the map checkpoint as an :class:`OTSUpscaler` pyfunc -- models-from-code (``pipelines/serving/model.py`` +
    ``model_config``), signature, input example, the ``ots`` and ``pipelines`` code -- into ``run_id`` (default:
    the active run, else a new one). Returns mlflow's ModelInfo."""
    from ots.errors import CheckpointError

    ckpt = Path(checkpoint_path)
    if not ckpt.is_file():
        raise CheckpointError(f"no such checkpoint file: {ckpt}")
    from ots.checkpoint import load_map

    load_map(ckpt)  # fail early (one line) on a checkpoint the server could not load
    kwargs = dict(
        name=name,
        # models-from-code: the registry stores model.py (this folder's) + this config, not a cloudpickle of the object,
        # so loading the model runs our reviewed source instead of unpickling bundled code
        python_model=str(Path(__file__).with_name("model.py")),
        model_config={"tile": int(tile), "overlap": int(overlap), "max_pixels": int(max_pixels),
                      "max_bytes": int(max_bytes), "device": device, "precision": precision},
        artifacts={CHECKPOINT_ARTIFACT: str(ckpt)},
        signature=signature(tile, overlap),
        input_example=pd.DataFrame({"image": [encode_b64(example_png())]}),
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

