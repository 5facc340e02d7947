"""`ots export`: the map as ONNX with dynamic batch/height/width, equal to eager inference on random sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from ots.cli import main as ots_main  # noqa: E402
from ots.export import ExportError, export_checkpoint, export_onnx, random_sizes, verify_onnx  # noqa: E402


@pytest.fixture
def ckpt(tmp_path):
    from test_serving import make_checkpoint

    return make_checkpoint(tmp_path / "map.pt")


@pytest.mark.slow
def test_onnx_matches_eager_on_random_sizes(ckpt, tmp_path):
    import onnxruntime as ort

    from ots.checkpoint import load_map

    model = load_map(ckpt)
    path = export_onnx(model, tmp_path / "out" / "map.onnx", example_hw=(24, 32))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = sess.get_inputs()[0].shape
    assert shape[1] == 3 and all(isinstance(d, str) for d in (shape[0], shape[2], shape[3]))  # symbolic N/H/W
    sizes = random_sizes(4, seed=1) + [(1, 7, 41), (2, 33, 9)]  # none of them the export size
    assert (1, 24, 32) not in sizes
    report = verify_onnx(model, path, sizes)
    for (n, h, w), r in zip(sizes, report):
        assert r["out_shape"] == [n, 3, 4 * h, 4 * w]
        assert r["max_abs_diff"] < 1e-4, r
    # the bicubic skip is in the graph: the output is not just the network's residual
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 10, 12)).astype(np.float32)
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    bic = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=4, mode="bicubic",
                                          align_corners=False).numpy()
    assert np.abs(out - bic).mean() < 0.5 and np.abs(out - bic).max() > 1e-4
    assert not list(path.parent.glob(".*tmp*"))


@pytest.mark.slow
def test_cli_export_and_errors(ckpt, tmp_path, capsys):
    out = tmp_path / "map.onnx"
    assert ots_main(["export", "--checkpoint", str(ckpt), "-o", str(out), "--verify", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["onnx"] == str(out) and len(res["verified"]) == 2 and res["max_abs_diff"] < 1e-4
    assert ots_main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ots: error: no such checkpoint file") and "\n" not in err
    with pytest.raises(ExportError, match="differs from eager"):  # a parity failure leaves no file behind
        export_checkpoint(ckpt, tmp_path / "strict.onnx", verify=1, atol=1e-12)
    assert not (tmp_path / "strict.onnx").exists()
