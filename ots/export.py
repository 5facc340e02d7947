"""Export a trained map to ONNX with dynamic batch/height/width, checked against eager PyTorch.

    ots export --checkpoint outputs/train/final.pt -o outputs/export/map.onnx --verify 3

The graph takes ``lr`` (N, 3, H, W) float32 in [-1, 1] and returns ``sr`` (N, 3, sH, sW), as the map does in
PyTorch (tiling, colour conversion and 8/16-bit I/O stay in ``ots.infer``). ``verify_onnx`` runs the file in
onnxruntime on random sizes and reports the largest absolute difference to eager inference; the export fails
(and leaves no file) when it exceeds ``atol``. Needs the ``export`` extra (``pip install 'ots[export]'``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ots.atomic import atomic_path
from ots.errors import CheckpointError, OTSError, one_line

DEFAULT_OPSET = 18
DEFAULT_ATOL = 1e-4


class ExportError(OTSError):
    """The model could not be exported, or the exported graph disagrees with eager inference."""


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ExportError(f"ONNX export needs {module} (pip install 'ots[export]')") from e


def export_onnx(model: nn.Module, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                example_hw: tuple[int, int] = (24, 32)) -> Path:
    """Write ``model`` (CPU, fp32, eval) as ONNX with dynamic N/H/W to ``path`` (atomically)."""
    _need("onnx")
    _need("onnxscript")
    model = model.float().cpu().eval()
    x = torch.rand(1, 3, *example_hw) * 2 - 1
    out = Path(path)
    dim = torch.export.Dim
    shapes = {"x": {0: dim("batch", min=1, max=1024), 2: dim("height", min=2, max=16384),
                    3: dim("width", min=2, max=16384)}}
    try:
        with torch.no_grad(), atomic_path(out) as tmp:
            torch.onnx.export(model, (x,), str(tmp), dynamo=True, dynamic_shapes=shapes, opset_version=opset,
                              input_names=["lr"], output_names=["sr"], external_data=False, verbose=False)
    except OTSError:
        raise
    except Exception as e:  # noqa: BLE001 - exporter errors are long; one line
        raise ExportError(f"cannot export the map to ONNX: {one_line(e, 300)}") from e
    return out


def verify_onnx(model: nn.Module, path: str | os.PathLike, sizes: list[tuple[int, int, int]]) -> list[dict]:
    """Eager vs onnxruntime on random inputs of each (batch, height, width); the max |difference| per size."""
    ort = _need("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = sess.get_inputs(), sess.get_outputs()
    model = model.float().cpu().eval()
    gen = torch.Generator().manual_seed(0)
    report = []
    for n, h, w in sizes:
        x = torch.rand(n, 3, h, w, generator=gen) * 2 - 1
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run([outp.name], {inp.name: x.numpy()})[0]
        if got.shape != ref.shape:
            raise ExportError(f"{path}: output shape {got.shape} for input {tuple(x.shape)}, eager gives {ref.shape}")
        report.append({"batch": n, "height": h, "width": w, "out_shape": list(got.shape),
                       "max_abs_diff": float(np.abs(got - ref).max())})
    return report


def random_sizes(count: int, seed: int = 0, lo: int = 5, hi: int = 48) -> list[tuple[int, int, int]]:
    """``count`` (batch, height, width) triples, odd and non-square sizes included."""
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(1, 3)), int(rng.integers(lo, hi)), int(rng.integers(lo, hi))) for _ in range(count)]


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                      verify: int = 3, atol: float = DEFAULT_ATOL, seed: int = 0) -> dict:
    """Checkpoint -> ONNX file, verified on ``verify`` random sizes. What registration beside the pyfunc calls."""
    from ots.checkpoint import load_map

    if not Path(checkpoint).is_file():
        raise CheckpointError(f"no such checkpoint file: {checkpoint}")
    model = load_map(checkpoint)
    path = export_onnx(model, output, opset=opset)
    checks = verify_onnx(model, path, random_sizes(verify, seed)) if verify else []
    worst = max((c["max_abs_diff"] for c in checks), default=0.0)
    if worst > atol:
        Path(path).unlink(missing_ok=True)
        raise ExportError(f"ONNX output differs from eager by {worst:.3g} (> atol {atol:g}); no file written")
    return {"onnx": str(path), "opset": opset, "inputs": "lr: float32 (N, 3, H, W) in [-1, 1]",
            "outputs": "sr: float32 (N, 3, sH, sW)", "verified": checks, "max_abs_diff": worst}
