"""The served model: custom pyfunc (tiling, validation), registry alias, and a real `mlflow models serve`."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("mlflow")

import mlflow  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from ots.imagewrite import encode_png  # noqa: E402
from ots.infer import upscale_array  # noqa: E402
from pipelines import registry  # noqa: E402
from pipelines.serving.package import log_pyfunc_model, signature  # noqa: E402
from pipelines.serving.payload import payload_image  # noqa: E402
from pipelines.serving.pyfunc import OTSUpscaler  # noqa: E402

MAP = {"arch": "edsr", "n_blocks": 1, "n_features": 8, "scale": 4}
POT = {"arch": "resnet", "crop": 32, "n_filters": 8, "max_filters": 16}
TILE, OVERLAP = 16, 4
MAX_PIXELS, MAX_BYTES = 48 * 48, 40_000


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    """A tiny EDSR whose weights are all non-zero (so its output differs from plain bicubic)."""
    from ots.checkpoint import save_checkpoint
    from ots.config import SolverConfig
    from ots.costs import ReferenceMap, WeightedCost
    from ots.models import build_map, build_potential
    from ots.solver import OTSSolver

    torch.manual_seed(seed)
    solver = OTSSolver(build_map(MAP), build_potential(POT), WeightedCost("mse"), ReferenceMap(4), SolverConfig(k_T=1),
                       device="cpu", map_config=MAP)
    with torch.no_grad():
        for p in solver.T.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_checkpoint(path, solver, {"model": {"map": MAP, "potential": POT}})
    return path


def astronaut(h: int = 24, w: int = 20) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[100 : 100 + h, 180 : 180 + w])


def decode_png(b: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(b)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("serving") / "map.pt")


@pytest.fixture(scope="module")
def direct_model(checkpoint):
    from ots.checkpoint import load_map

    return load_map(checkpoint)


# --------------------------------------------------------------------------------------------- in-process


def test_served_model_requirements_cover_every_package_its_code_imports():
    """Issue 20.4: the logged model's pip requirements (what `mlflow models build-docker` and `--env-manager
    virtualenv` install) bring every third-party package the served code imports, lazy imports included (the
    16-bit PNG decoder's torchvision was missing)."""
    from packaging.requirements import Requirement
    from test_dvc import ROOT, import_closure
    from test_infra import _closure, _top_level_imports

    from pipelines.serving.package import pip_requirements

    dists = {"PIL": "pillow", "yaml": "pyyaml", "skimage": "scikit-image", "cv2": "opencv-python-headless"}
    s3_only = {"boto3", "botocore"}  # ots.storage imports them for s3:// checkpoints; the model's is a local file
    imported = _top_level_imports(ROOT / f for f in import_closure("pipelines.serving.model"))
    imported -= set(sys.stdlib_module_names) | {"ots", "pipelines", "__future__"} | s3_only
    assert "torchvision" in imported  # the scan sees the lazy import in ots.imageio
    brought = _closure([Requirement(r) for r in pip_requirements()])
    missing = sorted(dists.get(n, n) for n in imported if dists.get(n, n) not in brought)
    assert not missing, f"the served model imports {missing} but its requirements do not bring them"


def test_payload_image_validation():
    png = encode_png(astronaut())
    assert payload_image(png).shape == (24, 20, 3)
    assert payload_image(base64.b64encode(png).decode()).shape == (24, 20, 3)
    assert payload_image(np.zeros((4, 5), np.uint16)).shape == (4, 5, 1)
    with pytest.raises(MlflowException, match="empty image"):
        payload_image(b"")
    with pytest.raises(MlflowException, match="not a decodable image"):
        payload_image(b"hello, I am not a PNG")
    with pytest.raises(MlflowException, match="more than the limit of 100"):
        payload_image(png, max_pixels=100)
    with pytest.raises(MlflowException, match="larger than the limit of 10 bytes"):
        payload_image(png, max_bytes=10)
    with pytest.raises(MlflowException, match="uint8 or uint16"):
        payload_image(np.zeros((4, 4, 3), np.float32))
    err = pytest.raises(MlflowException, payload_image, b"").value
    assert err.get_http_status_code() == 400


def test_python_model_predict_matches_direct_inference(checkpoint, direct_model):
    class Ctx:
        artifacts = {"checkpoint": str(checkpoint)}

    m = OTSUpscaler(tile=TILE, overlap=OVERLAP, device="cpu")
    m.load_context(Ctx())
    img = astronaut()
    gray16 = (np.arange(10 * 12, dtype=np.uint16).reshape(10, 12) * 500)
    out = m.predict(None, pd.DataFrame({"image": [encode_png(img), gray16]}))
    assert list(out.columns) == ["image", "height", "width"] and len(out) == 2
    want = upscale_array(direct_model, img, tile=TILE, overlap=OVERLAP, device="cpu")
    np.testing.assert_array_equal(decode_png(base64.b64decode(out["image"][0])), want)
    assert (out["height"][0], out["width"][0]) == (96, 80)
    got16 = decode_png(base64.b64decode(out["image"][1]))
    assert got16.dtype == np.uint16 and got16.shape == (40, 48)  # 16-bit gray stays 16-bit gray
    untiled = m.predict(None, pd.DataFrame({"image": [encode_png(img)]}), params={"tile": 0})
    np.testing.assert_array_equal(decode_png(base64.b64decode(untiled["image"][0])),
                                  upscale_array(direct_model, img, tile=None, device="cpu"))
    with pytest.raises(MlflowException, match="bad tiling params"):
        m.predict(None, pd.DataFrame({"image": [encode_png(img)]}), params={"tile": 8, "overlap": 8})


def test_one_base64_convention_for_both_servers(checkpoint, direct_model):
    """Issue 20 item 7: the pyfunc behind MLflow's own JSON parsing and encoding (as `mlflow models serve` runs
    it) and the bounded server accept the same forms and give the same answer: standard base64, one line."""
    import asyncio

    from mlflow.pyfunc.scoring_server import _split_data_and_params, infer_and_parse_data, predictions_to_json

    from pipelines.serving.app import BoundedUpscaleServer, _HTTPError
    from pipelines.serving.limits import ServeLimits

    class Ctx:
        artifacts = {"checkpoint": str(checkpoint)}

    pyfunc = OTSUpscaler(tile=TILE, overlap=OVERLAP, device="cpu")
    pyfunc.load_context(Ctx())
    bounded = BoundedUpscaleServer(direct_model, ServeLimits(memory_budget=1 << 30), tile=TILE, overlap=OVERLAP)

    def both(*images: str) -> tuple:
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[i] for i in images]}})
        answers = []
        try:  # the pyfunc, as MLflow's scoring server calls it
            data, params = _split_data_and_params(body)
            df = infer_and_parse_data(data, signature(TILE, OVERLAP).inputs)
            buf = io.StringIO()
            predictions_to_json(pyfunc.predict(None, df, params), buf)
            answers.append(json.loads(buf.getvalue())["predictions"])
        except MlflowException as e:
            answers.append((e.get_http_status_code(), e.message))
        try:
            answers.append(asyncio.run(bounded._invocations(body.encode()))["predictions"])
        except _HTTPError as e:
            answers.append((e.status, e.message))
        return tuple(answers)

    try:
        png = encode_png(astronaut(10, 9))
        plain = base64.b64encode(png).decode()
        assert plain.endswith("=")  # the padding is exercised
        mlflow_answer, bounded_answer = both(plain, f"data:image/png;base64,{plain}", base64.encodebytes(png).decode())
        assert mlflow_answer == bounded_answer
        assert [p["image"] for p in mlflow_answer] == [mlflow_answer[0]["image"]] * 3  # three forms, one image
        out = mlflow_answer[0]["image"]
        assert "\n" not in out and base64.b64encode(base64.b64decode(out, validate=True)).decode() == out
        np.testing.assert_array_equal(decode_png(base64.b64decode(out)),
                                      upscale_array(direct_model, astronaut(10, 9), tile=TILE, overlap=OVERLAP))
        for bad in (plain.rstrip("="), plain.replace("/", "_").replace("+", "-"), "not base64!"):
            (code, msg), (code2, msg2) = both(bad)
            assert code == code2 == 400 and msg == msg2 and "image[0]: not valid base64" in msg, (msg, msg2)
    finally:
        bounded.pool.shutdown()


# ---------------------------------------------------------------------------------------- registry + serve


def _post(url: str, body: bytes, content_type: str = "application/json", timeout: float = 60):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _split(*images_b64: str, params: dict | None = None) -> bytes:
    doc = {"dataframe_split": {"columns": ["image"], "data": [[b] for b in images_b64]}}
    if params:
        doc["params"] = params
    return json.dumps(doc).encode()


@pytest.mark.slow
def test_registered_champion_is_served_and_rejects_bad_payloads(checkpoint, direct_model, mlflow_server,
                                                               monkeypatch, tmp_path):
    from conftest import free_port, stop_process_group, wait_http

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    name = f"ots-serve-{uuid.uuid4().hex[:8]}"
    mlflow.set_experiment(f"serving-{uuid.uuid4().hex[:8]}")
    with mlflow.start_run() as run:
        info = log_pyfunc_model(checkpoint, tile=TILE, overlap=OVERLAP, max_pixels=MAX_PIXELS,
                                        max_bytes=MAX_BYTES, device="cpu")
    client = mlflow.MlflowClient()
    mv = mlflow.register_model(info.model_uri, name)
    client.set_registered_model_alias(name, "champion", mv.version)
    uri = f"models:/{name}@champion"
    # issue 20.4: the image `mlflow models build-docker` bakes installs these; 16-bit RGB PNGs need torchvision
    import torchvision

    logged_reqs = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text().split()
    assert f"torchvision=={torchvision.__version__.split('+')[0]}" in logged_reqs, logged_reqs

    # the pipelines' loader (registry alias, run id), then `ots upscale` on the file `pipelines.registry fetch` wrote
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    ref = direct_model(x)
    for source in (uri, run.info.run_id):
        torch.testing.assert_close(registry.load_map(source)(x), ref)
    from ots.cli import main as ots_main
    from ots.imageio import read_image
    from ots.imagewrite import write_image

    src = write_image(tmp_path / "in.png", astronaut())
    assert ots_main(["upscale", str(src), "-o", str(tmp_path / "x.png"), "--model", uri]) == 2  # files only
    assert registry.main(["fetch", uri, "-o", str(tmp_path / "map.pt")]) == 0
    assert ots_main(["upscale", str(src), "-o", str(tmp_path / "up.png"), "--model", str(tmp_path / "map.pt"),
                     "--tile", str(TILE), "--overlap", str(OVERLAP), "--device", "cpu", "--no-progress"]) == 0
    np.testing.assert_array_equal(read_image(tmp_path / "up.png"),
                                  upscale_array(direct_model, astronaut(), tile=TILE, overlap=OVERLAP, device="cpu"))
    assert registry.main(["fetch", f"models:/{name}@nope", "-o", str(tmp_path / "y.pt")]) == 2
    assert not (tmp_path / "y.pt").exists()

    port = free_port()
    venv_bin = str(Path(sys.executable).parent)  # `mlflow models serve` execs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "OTS_SERVE_DEVICE": "cpu",
           "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{base}/ping", timeout=180, proc=proc)
        except (RuntimeError, TimeoutError) as e:
            raise AssertionError(f"{e}\n{(tmp_path / 'serve.log').read_text()[-3000:]}") from e
        inv = f"{base}/invocations"
        img, img2 = astronaut(), astronaut(20, 28)
        b64 = base64.b64encode(encode_png(img)).decode()
        b64_2 = base64.b64encode(encode_png(img2)).decode()

        t0 = time.monotonic()
        status, body = _post(inv, _split(b64, b64_2))
        assert status == 200, body
        preds = json.loads(body)["predictions"]
        assert len(preds) == 2 and preds[0]["height"] == 96 and preds[0]["width"] == 80
        for p, src in zip(preds, (img, img2)):
            got = decode_png(base64.b64decode(p["image"])).astype(int)
            want = upscale_array(direct_model, src, tile=TILE, overlap=OVERLAP, device="cpu").astype(int)
            assert got.shape == want.shape and np.abs(got - want).max() <= 1
        assert time.monotonic() - t0 < 30

        # records format + per-request params
        records = json.dumps({"dataframe_records": [{"image": b64}], "params": {"tile": 0}}).encode()
        status, body = _post(inv, records)
        assert status == 200, body
        got = decode_png(base64.b64decode(json.loads(body)["predictions"][0]["image"])).astype(int)
        assert np.abs(got - upscale_array(direct_model, img, tile=None, device="cpu").astype(int)).max() <= 1

        too_big = base64.b64encode(encode_png(astronaut(64, 64))).decode()  # 4096 px > MAX_PIXELS
        bad = {
            "not an image": (_split(base64.b64encode(b"this is not an image at all").decode()),
                             "not a decodable image"),
            "empty": (_split(""), "empty image"),
            "too many pixels": (_split(too_big), f"more than the limit of {MAX_PIXELS}"),
            "too many bytes": (_split(base64.b64encode(b"\x89PNG" + bytes(MAX_BYTES)).decode()),
                               f"larger than the limit of {MAX_BYTES} bytes"),
            "malformed json": (b'{"dataframe_split": {"columns": ["image"], "data": [[', "valid JSON"),
            "wrong column": (json.dumps({"dataframe_split": {"columns": ["img"], "data": [[b64]]}}).encode(),
                             "image"),
            "bad tiling": (_split(b64, params={"tile": 8, "overlap": 8}), "bad tiling params"),
        }
        for what, (payload, expected) in bad.items():
            status, body = _post(inv, payload)
            assert 400 <= status < 500, (what, status, body[:500])
            message = json.loads(body)["message"]
            assert expected in message, (what, message[:1000])
            if what not in ("malformed json", "wrong column"):  # ours (#19.4): one line, the payload not echoed
                assert "\n" not in message and "Failed to predict" not in message, (what, message[:1000])
            assert proc.poll() is None, what

        status, body = _post(inv, _split(b64))  # still serving after the bad requests
        assert status == 200 and len(json.loads(body)["predictions"]) == 1
    finally:
        stop_process_group(proc)
        log.close()


@pytest.mark.slow
def test_run_id_resolves_to_its_logged_model_from_another_experiment(checkpoint, mlflow_server, monkeypatch):
    """A run id names the pyfunc the run logged (a LoggedModel), whatever experiment is active when resolving."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment(f"serving-a-{uuid.uuid4().hex[:8]}")
    with mlflow.start_run() as run:
        info = log_pyfunc_model(checkpoint, device="cpu")
        mlflow.log_artifact(str(checkpoint), artifact_path="checkpoints")  # the fallback would find this one
    mlflow.set_experiment(f"serving-b-{uuid.uuid4().hex[:8]}")  # resolving from elsewhere
    assert registry._run_model_uri(run.info.run_id) == f"models:/{info.model_id}"
