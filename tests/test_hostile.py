"""Issue 19: hostile-but-fair inputs at every door -> one expected line, and nothing written.

The table drives five doors in-process (no server process, no Ray): the ``ots`` CLI (a nearest-neighbour map
stands in for a trained one, except for the checkpoint rows), the DVC stages' entry points, the built-in HTTP front
(its ASGI app), the MLflow pyfunc through MLflow's own scoring function (what ``mlflow models serve`` runs per
request) and storage. Every row runs under a deadline (a FIFO must not hang CI) and checks: the expected fragment,
one line, no ``<_io.BytesIO …>`` repr, no payload echoed, and no file left behind. The next round of probes starts
from this table: add a row per new door or input.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_infer import Nearest

import ots.commands.upscale as upscale_cmd
from ots.dotted import set_dotted
from ots.imagewrite import encode_png

PNG = encode_png(np.random.default_rng(0).integers(0, 256, (12, 10, 3)).astype(np.uint8))
TINY_MAP = {"arch": "edsr", "n_blocks": 1, "n_features": 8, "scale": 4}


def within(seconds: float, fn, unblock: Path | None = None):
    """``fn()`` in a daemon thread; fails (instead of hanging) after ``seconds``, first opening ``unblock`` (a
    FIFO) for writing so that a reader stuck on it returns."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        if unblock is not None:
            os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"still running after {seconds} s (blocked on a special file?)")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ------------------------------------------------------------------------------------------------ the doors
def cli_door(tmp: Path, case: str, monkeypatch, capsys) -> str:
    """``ots upscale`` with one bad input; returns the error line (exit code 2 checked)."""
    from test_serving import make_checkpoint

    from ots.cli import main

    src, ckpt, extra = tmp / "in.png", tmp / "map.pt", []
    src.write_bytes(PNG)
    if case.startswith("checkpoint"):
        state = torch.load(make_checkpoint(ckpt), weights_only=True)
        if case == "checkpoint empty":
            ckpt.write_bytes(b"")
        elif case == "checkpoint fifo":
            ckpt.unlink()
            os.mkfifo(ckpt)
        else:
            state["map_config"] = {**TINY_MAP, "n_features": 10**6 if case == "checkpoint absurd" else 12}
            torch.save(state, ckpt)
    else:
        monkeypatch.setattr(upscale_cmd, "load_map", lambda path, device="cpu": Nearest(2))
        if case == "fifo":
            src.unlink()
            os.mkfifo(src)
        elif case == "empty image":
            src.write_bytes(b"")
        elif case == "not an image":
            src.write_bytes(b"hello, not pixels")
        elif case == "truncated png":
            src.write_bytes(PNG[: len(PNG) // 2])
        elif case == "folder without images":
            src.unlink()
            src = tmp / "empty_dir"
            src.mkdir()
        elif case == "missing":
            src = tmp / "nowhere.png"
        elif case == "output is the input":
            extra = ["--suffix", "", "--ext", "auto"]
        elif case == "outscale 0":
            extra = ["-s", "0"]
    out = tmp if case == "output is the input" else tmp / "out.png"
    before = files_under(tmp)
    rc = within(20, lambda: main(["upscale", str(src), "-o", str(out), "--checkpoint", str(ckpt), "--no-progress",
                                  *extra]), unblock=src if case == "fifo" else ckpt)
    assert rc == 2 and files_under(tmp) == before
    return capsys.readouterr().err


STAGE_PARAMS = {"data": {"output": "data/demo"}, "model": {"map": TINY_MAP, "potential": {
    "arch": "resnet", "crop": 32, "n_filters": 8, "max_filters": 16}}, "solver": {"k_T": 1},
    "train": {"lr_crop": 8, "hr_crop": 32, "overrides": None}}


STAGE_DOORS = {"tune": "pipelines.tune.driver", "train": "pipelines.train.driver", "baseline": "pipelines.train.gan"}


def stage_door(tmp: Path, case: tuple, monkeypatch, capsys) -> str:
    """A DVC stage's ``main(["--params", file])`` with one bad value; returns the error line (exit code 2)."""
    import importlib

    stage, change = case
    monkeypatch.chdir(tmp)
    path = tmp / "params.yaml"
    if change in ("fifo", "folder"):
        os.mkfifo(path) if change == "fifo" else path.mkdir()
    else:
        doc = json.loads(json.dumps(STAGE_PARAMS))
        for dotted, value in change.items():
            set_dotted(doc, dotted, value)
        path.write_text(yaml.safe_dump(doc))
    before = files_under(tmp)
    module = importlib.import_module(STAGE_DOORS.get(stage, f"pipelines.{stage}"))
    call = lambda: module.main(["--params", str(path)])  # noqa: E731
    rc = within(20, call, unblock=path) if change == "fifo" else call()  # the train stage sets signal handlers
    assert rc == 2 and files_under(tmp) == before
    return capsys.readouterr().err


def http_door(body, srv=None) -> tuple[int, str]:
    """One POST /invocations to the built-in front's ASGI app, in-process: (status, the JSON message)."""
    from pipelines.serving.app import BoundedUpscaleServer
    from pipelines.serving.limits import ServeLimits

    srv = srv or BoundedUpscaleServer(Nearest(2), ServeLimits(max_images=2, max_bytes=4096, max_pixels=64 * 64,
                                                               memory_budget=256 << 20), tile=8, overlap=2)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent: list = []

    async def receive():
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "path": "/invocations", "method": "POST", "headers": []}
    asyncio.run(srv.app(scope, receive, send))
    doc = json.loads(sent[1]["body"])
    return sent[0]["status"], doc["message"] if "message" in doc else json.dumps(doc)


class Served:
    """What ``mlflow models serve`` calls per request: a pyfunc's ``predict(data, params)`` and its metadata."""

    def __init__(self, model=None, **limits):
        from mlflow.models import Model

        from pipelines.serving.package import signature
        from pipelines.serving.pyfunc import OTSUpscaler

        self.upscaler = OTSUpscaler(tile=8, overlap=2, device="cpu", max_images=2, max_bytes=4096,
                                    max_pixels=64 * 64, **limits)
        self.upscaler.model, self.upscaler._device = model or Nearest(2), torch.device("cpu")
        self.metadata = Model(signature=signature(8, 2))

    def predict(self, data, params=None):
        return self.upscaler.predict(None, data, params)


def mlflow_door(body: dict, served: Served | None = None) -> tuple[int, str]:
    """MLflow's own request handler (``scoring_server.invocations`` + its exception-to-response wrapper)."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    served = served or Served()
    try:
        r = scoring_server.invocations(json.dumps(body), "application/json", served,
                                       served.metadata.get_input_schema())
        return r.status, r.response
    except MlflowException as e:
        return e.get_http_status_code(), json.loads(e.serialize_as_json())["message"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def split(*images: str, params: dict | None = None) -> dict:
    return {"dataframe_split": {"columns": ["image"], "data": [[i] for i in images]}, **({"params": params}
                                                                                         if params else {})}


def storage_door(tmp: Path, case: str) -> str:
    from ots.data import open_dataset
    from ots.errors import OTSError
    from ots.storage import open_store

    ds = tmp / "ds"
    ds.mkdir()
    before = files_under(tmp)
    try:
        if case == "manifest is a FIFO":
            os.mkfifo(ds / "manifest.json")
            before = files_under(tmp)
            within(20, lambda: open_dataset(str(ds)), unblock=ds / "manifest.json")
        elif case == "object is a FIFO":
            os.mkfifo(ds / "x")
            before = files_under(tmp)
            within(20, lambda: open_store(str(ds)).read_bytes("x"), unblock=ds / "x")
        elif case == "object is a folder":
            (ds / "x").mkdir()
            before = files_under(tmp)
            open_store(str(ds)).read_bytes("x")
        elif case == "unsupported scheme":
            open_store("ftp://host/bucket")
        elif case == "not a dataset":
            open_dataset(str(ds))
    except OTSError as e:
        assert files_under(tmp) == before
        return str(e)
    pytest.fail(f"storage accepted {case}")


CASES = [
    # door, case, expected fragment of the one line
    ("cli", "fifo", "a FIFO, not a regular file"),
    ("cli", "empty image", "empty file (0 bytes)"),
    ("cli", "not an image", "not an image"),
    ("cli", "truncated png", "in.png"),
    ("cli", "folder without images", "no image files in folder"),
    ("cli", "missing", "no such file or folder"),
    ("cli", "output is the input", "is an input file"),
    ("cli", "outscale 0", "--outscale must be positive"),
    ("cli", "checkpoint empty", "empty file (0 bytes)"),
    ("cli", "checkpoint fifo", "is not a file"),
    ("cli", "checkpoint absurd", "n_features=1000000 is beyond any map"),
    ("cli", "checkpoint mismatch", "does not fit the weights stored with it"),
    ("stage", ("prepare", {"trian": {}}), "unknown top-level key 'trian' (did you mean 'train'?)"),
    ("stage", ("prepare", {"data.sed": 1}), "unknown key 'data.sed' (did you mean 'seed'?)"),
    ("stage", ("prepare", {"data.seed": "one"}), "data.seed must be a number, got 'one' (str)"),
    ("stage", ("prepare", {"data.skip_invalid": "yes"}), "data.skip_invalid must be true or false"),
    ("stage", ("prepare", "fifo"), "a FIFO, not a params file"),
    ("stage", ("prepare", "folder"), "a folder, not a params file"),
    ("stage", ("train", {"train.steps": True}), "train.steps must be a number, got True (bool)"),
    ("stage", ("train", {"train.guard.patinece": 2}), "unknown key 'train.guard.patinece' (did you mean 'patience'?)"),
    ("stage", ("train", {"solver.lr_mapp": 1e-4}), "unknown key 'solver.lr_mapp' (did you mean 'lr_map'?)"),
    ("stage", ("train", {"model.map.n_featurs": 8}), "unknown key 'model.map.n_featurs' (did you mean 'n_features'?)"),
    ("stage", ("train", {"model.map.icnr": "no"}), "model.map.icnr must be true or false"),
    ("stage", ("train", {"seed": "zero"}), "seed must be a number, got 'zero' (str)"),
    ("stage", ("baseline", {"baseline.trian": {}}), "unknown key 'baseline.trian' (did you mean 'train'?)"),
    ("stage", ("evaluate", {"evaluate.tile": "big"}), "evaluate.tile must be a number, got 'big' (str)"),
    ("stage", ("register", {"serve.max_pixel": 1}), "unknown key 'serve.max_pixel' (did you mean 'max_pixels'?)"),
    ("stage", ("tune", {"tune.num_sample": 2, "tune.space": {}}), "(did you mean 'num_samples'?)"),
    ("http", b"{not json", "not valid JSON"),
    ("http", split(""), "empty image (0 bytes)"),
    ("http", split(b64(b"hello, not pixels")), "image[0]: not an image"),
    ("http", split(b64(PNG[:40])), "image[0]"),
    ("http", split(*[b64(PNG)] * 3), "3 images in one request, more than the limit of 2"),
    ("http", split(b64(b"\x89PNG" + bytes(5000))), "larger than the limit of 4096 bytes"),
    ("http", split(b64(PNG), params={"tile": -1}), "bad tiling params"),
    ("mlflow", split(b64(b"\x89PNG" + bytes(5000))), "larger than the limit of 4096 bytes"),
    ("mlflow", split(b64(b"hello, not pixels")), "image[0]: not a decodable image"),
    ("mlflow", split(b64(b"")), "empty image (0 bytes)"),
    ("mlflow", split(*[b64(PNG)] * 3), "3 images in one request, more than the limit of 2"),
    ("mlflow", split(b64(PNG), params={"tile": -1}), "bad tiling params"),
    ("storage", "manifest is a FIFO", "not a dataset (no manifest.json"),
    ("storage", "object is a FIFO", "a FIFO, not a regular file"),
    ("storage", "object is a folder", "a folder, not a regular file"),
    ("storage", "unsupported scheme", "unsupported scheme"),
    ("storage", "not a dataset", "not a dataset"),
]


@pytest.mark.parametrize("door, case, expected", CASES, ids=[f"{d}-{i}" for i, (d, _, _) in enumerate(CASES)])
def test_hostile_input_is_one_line_and_writes_nothing(door, case, expected, tmp_path, monkeypatch, capsys):
    if door == "cli":
        line = cli_door(tmp_path, case, monkeypatch, capsys)
        assert line.startswith("ots: error:")
    elif door == "stage":
        line = stage_door(tmp_path, case, monkeypatch, capsys)
        assert line.startswith(f"{case[0] if case[0] != 'baseline' else 'train_gan'}: error:")
    elif door == "http":
        status, line = http_door(case)
        assert status in (400, 413)
    elif door == "mlflow":
        status, line = mlflow_door(case)
        assert status in (400, 429)
        assert "Failed to predict data" not in line and "dataframe" not in line.lower()  # no payload echoed
    else:
        line = storage_door(tmp_path, case)
    assert expected in line, line
    assert line.strip().count("\n") == 0 and "Traceback" not in line and "<_io." not in line, line
    assert len(line) < 600, line


def test_repo_params_files_pass_the_schema():
    """params.yaml and the shipped profiles are what the schema must accept."""
    from ots.data.config import DataConfig
    from pipelines import evaluate, register
    from pipelines import params as params_file
    from pipelines.params import run_config
    from pipelines.train import gan as baseline

    root = Path(__file__).resolve().parents[1]
    for name in ("params.yaml", "configs/cpu-small.yaml", "configs/gpu-study.yaml", "infra/params.cluster.yaml",
                 "configs/train_overrides.yaml"):
        doc = params_file.load_params(root / name)
        DataConfig.from_dict(doc.get("data"), name)
        for section, defaults in (("evaluate", evaluate.DEFAULTS),
                                  ("register", register.DEFAULTS), ("serve", register.SERVE_DEFAULTS)):
            params_file.section(doc, section, defaults, name)
        if "model" in doc:
            run_config(doc)
        if "baseline" in doc:
            run_config(baseline.baseline_params(doc))


# ------------------------------------------------------------------------------------- the items of #19
def _predicted(response: str) -> np.ndarray:
    from ots.imageio import decode_image

    return decode_image(base64.b64decode(json.loads(response)["predictions"][0]["image"]))


def test_exif_orientation_is_applied_at_every_door(tmp_path, monkeypatch):
    """#19.2: a phone JPEG stored sideways (EXIF orientation 6) comes out upright from prepare's decoder,
    `ots upscale`, the built-in server and the MLflow pyfunc."""
    from PIL import Image, ImageOps

    from ots.cli import main
    from ots.data.sources import decode_rgb8
    from ots.imageio import read_image

    stored = np.zeros((8, 16, 3), np.uint8)
    stored[:, :8] = 255  # white left half: upright (rotated 90 degrees clockwise) it is the top half
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    data = buf.getvalue()
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    assert upright.shape == (16, 8, 3) and upright[:8].mean() > 200 > 50 > upright[8:].mean()
    want = upright.repeat(2, 0).repeat(2, 1).astype(int)

    assert np.array_equal(decode_rgb8(data), upright)
    src = tmp_path / "phone.jpg"
    src.write_bytes(data)
    monkeypatch.setattr(upscale_cmd, "load_map", lambda path, device="cpu": Nearest(2))
    assert main(["upscale", str(src), "-o", str(tmp_path / "up.png"), "--checkpoint", "x.pt", "--no-progress"]) == 0
    assert np.abs(read_image(tmp_path / "up.png").astype(int) - want).max() <= 1
    status, body = http_door(split(b64(data)))
    assert status == 200 and np.abs(_predicted(body).astype(int) - want).max() <= 1
    status, body = mlflow_door(split(b64(data)))
    assert status == 200 and np.abs(_predicted(body).astype(int) - want).max() <= 1


class CpuOom(Nearest):
    """A map whose forward hits torch's CPU allocator limit (a real failed allocation, nothing allocated)."""

    def forward(self, x):
        torch.empty(1 << 46, dtype=torch.uint8)  # 64 TiB: "DefaultCPUAllocator: can't allocate memory"
        return super().forward(x)


def test_cpu_out_of_memory_is_503_at_both_servers():
    """#19.5: torch's CPU OOM ("can't allocate memory") is 503 (retry later) from both servers, not 500."""
    from pipelines.serving.app import BoundedUpscaleServer
    from pipelines.serving.limits import ServeLimits

    srv = BoundedUpscaleServer(CpuOom(2), ServeLimits(memory_budget=256 << 20), tile=8, overlap=2)
    status, message = http_door(split(b64(PNG), params={"tile": 0}), srv)
    assert status == 503 and message == "out of memory; retry later"
    status, message = mlflow_door(split(b64(PNG), params={"tile": 0}), Served(CpuOom(2)))
    assert status == 503 and message == "upscaling failed (RuntimeError); see the server log"


def test_mlflow_serve_work_stops_on_sigterm():
    """#19.4: `mlflow models serve` (uvicorn) waits for the request in flight on SIGTERM; the pyfunc's work now
    notices uvicorn's exit flag and stops within a tile batch (503 "shutting down") instead of running to its
    deadline. uvicorn's own handler is installed as it does it (``Server.handle_exit`` for SIGTERM)."""
    import signal
    import time

    import uvicorn
    from mlflow.exceptions import MlflowException

    class Slow(Nearest):
        def forward(self, x):
            time.sleep(0.1)  # per tile batch: a 64 x 64 image in 8-px tiles takes 16 batches, 1.6 s
            return super().forward(x)

    served = Served(Slow(2))
    server = uvicorn.Server(uvicorn.Config(app=lambda *a: None))
    previous = signal.signal(signal.SIGTERM, server.handle_exit)
    png = encode_png(np.zeros((64, 64, 3), np.uint8))
    outcome: dict = {}

    def request():
        import pandas as pd

        try:
            served.predict(pd.DataFrame({"image": [png]}))
        except MlflowException as e:
            outcome["error"] = e
        outcome["done"] = time.monotonic()

    try:
        worker = threading.Thread(target=request, daemon=True)
        worker.start()
        time.sleep(0.3)
        sent = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)  # handled here, in the main thread: uvicorn sets should_exit
        while worker.is_alive() and time.monotonic() - sent < 10:
            time.sleep(0.02)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert server.should_exit and "error" in outcome, "the work ran to the end after SIGTERM"
    assert outcome["done"] - sent < 0.5, outcome["done"] - sent
    assert outcome["error"].get_http_status_code() == 503 and "shutting down" in outcome["error"].message


def test_one_line_never_prints_an_object_repr():
    """#19.7: every door's line goes through ``one_line``; Pillow's buffer repr is not part of a reason."""
    from ots.errors import one_line
    from ots.imageio import image_info

    assert one_line("cannot identify image file <_io.BytesIO object at 0x7f0a1b2c3d40>") == "cannot identify image file"
    with pytest.raises(Exception, match=r"^image: not an image \(cannot identify image file\)$"):
        image_info(b"xx")
