"""Issue 10, items 6-7: the bounded server (`python -m pipelines.serving`) on 127.0.0.1.

A deterministic slow map (sleeps per tile batch) makes busy/timeout/SIGTERM behaviour exact; a load test with a
real EDSR checkpoint records status codes and the server's peak RSS against its stated memory budget.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ots.imagewrite import encode_png

pytest.importorskip("uvicorn")

REPO = Path(__file__).resolve().parent.parent

SLOW_SERVER = """
import sys, time, torch, torch.nn.functional as F
from torch import nn
from pipelines.serving.limits import ServeLimits
from pipelines.serving.server import serve

class Slow(nn.Module):
    scale = 2
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
    def forward(self, x):
        time.sleep(0.25)  # per tile batch
        return F.interpolate(x, scale_factor=2, mode="nearest") + self.w

limits = ServeLimits(max_concurrent=2, max_images=3, max_pixels=64 * 64, max_request_pixels=64 * 64 + 512,
                     memory_budget=512 << 20, timeout_s=float(sys.argv[2]))
raise SystemExit(serve(Slow(), port=int(sys.argv[1]), limits=limits, tile=8, overlap=2, hard_exit=True))
"""


def _png_b64(h, w, c=3, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, np.iinfo(dtype).max, size=(h, w, c), endpoint=True).astype(dtype)
    return a, base64.b64encode(encode_png(a)).decode()


def _split(*b64s, params=None):
    doc = {"dataframe_split": {"columns": ["image"], "data": [[b] for b in b64s]}}
    if params:
        doc["params"] = params
    return json.dumps(doc).encode()


def _post(url, body, timeout=60):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def _start(tmp_path, args, name):
    from conftest import free_port, wait_http

    port = free_port()
    log = open(tmp_path / f"{name}.log", "wb")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, *args(port)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/ping", timeout=120, proc=proc)
    except (RuntimeError, TimeoutError) as e:
        raise AssertionError(f"{e}\n{(tmp_path / f'{name}.log').read_text()[-3000:]}") from e
    return proc, base


def _active(base):
    with urllib.request.urlopen(f"{base}/ping", timeout=5) as r:
        return json.loads(r.read())["active"]


@pytest.mark.slow
def test_bounded_server_limits_busy_timeout_and_sigterm(tmp_path):
    from conftest import stop_process_group

    proc, base = _start(tmp_path, lambda port: ["-c", SLOW_SERVER, str(port), "3"], "slow")
    inv = f"{base}/invocations"
    try:
        img, small = _png_b64(16, 16)  # 2x2 tiles of 8 px -> one batch of 4: ~0.25 s
        _, long = _png_b64(32, 32, seed=1)  # 5x5 tiles of 8 px (overlap 2) -> 7 batches: ~1.75 s alone
        _, huge = _png_b64(64, 64, seed=2)  # 10x10 tiles -> 25 batches: ~6.3 s, over the 3 s timeout
        # bad input and per-request limits: JSON reasons, never a stack trace
        cases = {
            "not json": (b'{"dataframe_split": [', 400, "not valid JSON"),
            "not an image": (_split(base64.b64encode(b"hello").decode()), 400, "not an image"),
            "too many images": (_split(small, small, small, small), 413, "more than the limit of 3"),
            "image too large": (_split(_png_b64(65, 65)[1]), 413, "more than the limit of 4096"),
            "request pixels": (_split(huge, long), 413, "input pixels in one request"),
            "bad tiling": (_split(small, params={"tile": 4, "overlap": 4}), 400, "bad tiling params"),
        }
        for what, (payload, status, reason) in cases.items():
            code, body, _ = _post(inv, payload)
            msg = json.loads(body)["message"]
            assert code == status and reason in msg, (what, code, body)
            assert "Traceback" not in body and "File \"" not in body, what
        code, body, _ = _post(inv, _split(small))
        assert code == 200
        out = json.loads(body)["predictions"][0]
        assert (out["height"], out["width"]) == (32, 32)

        # 16-bit RGB is served as 16-bit RGB (item 7)
        a16, b16 = _png_b64(8, 8, 3, np.uint16, seed=5)
        code, body, _ = _post(inv, _split(b16))
        assert code == 200, body
        from ots.imageio import decode_image

        got = decode_image(base64.b64decode(json.loads(body)["predictions"][0]["image"]))
        assert code == 200 and got.dtype == np.uint16 and np.array_equal(got, a16.repeat(2, 0).repeat(2, 1))

        # bounded concurrency: 2 long requests run, the others are told to retry (503 + Retry-After)
        results = []

        def fire():
            results.append(_post(inv, _split(long)))

        threads = [threading.Thread(target=fire) for _ in range(5)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join(timeout=60)
        codes = sorted(r[0] for r in results)
        assert codes.count(200) == 2 and codes.count(503) == 3, codes
        busy = next(r for r in results if r[0] == 503)
        assert "busy" in json.loads(busy[1])["message"] and busy[2].get("Retry-After") == "1"

        # a request over the deadline answers 504 and its work stops (the slot frees long before 13 batches)
        t0 = time.monotonic()
        code, body, _ = _post(inv, _split(huge))
        waited = time.monotonic() - t0
        assert code == 504 and "cancelled" in json.loads(body)["message"] and waited < 3.9, (code, waited)
        t1 = time.monotonic()
        while _active(base) and time.monotonic() - t1 < 5:
            time.sleep(0.05)
        assert _active(base) == 0 and time.monotonic() - t0 < 4.0  # stopped, not run to completion

        # SIGTERM while busy: the request in flight is cancelled (503), the server exits 0 promptly
        res = []
        th = threading.Thread(target=lambda: res.append(_post(inv, _split(long))))
        th.start()
        time.sleep(0.6)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=15)
        th.join(timeout=15)
        assert rc == 0 and time.monotonic() - t0 < 3.0
        assert res and res[0][0] == 503 and "shutting down" in res[0][1]
        log = (tmp_path / "slow.log").read_text()
        assert "serving: stopped" in log and "Traceback" not in log
    finally:
        stop_process_group(proc)


LOAD_REQUESTS, LOAD_CONCURRENCY, BUDGET_MB = 12, 6, 600


@pytest.mark.slow
def test_load_memory_stays_under_the_budget(tmp_path):
    """Fixed load on loopback: 12 requests from 6 clients at once, 192x192 -> 768x768 each, real EDSR."""
    from conftest import stop_process_group
    from test_serving import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "map.pt")
    proc, base = _start(tmp_path, lambda port: ["-m", "pipelines.serving", "--model", str(ckpt), "--port",
                                                str(port), "--max-concurrent", "2", "--memory-budget-gb",
                                                str(BUDGET_MB / 1024), "--timeout", "60", "--tile", "64",
                                                "--overlap", "8"], "load")
    inv = f"{base}/invocations"
    try:
        def rss(key):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
            return 0

        idle = rss("VmRSS")
        _, b64 = _png_b64(192, 192, seed=3)
        codes, lock = [], threading.Lock()

        def client(n):
            for _ in range(n):
                code, body, _ = _post(inv, _split(b64), timeout=120)
                with lock:
                    codes.append(code)
                if code == 503:
                    time.sleep(0.2)

        t0 = time.monotonic()
        threads = [threading.Thread(target=client, args=(LOAD_REQUESTS // LOAD_CONCURRENCY,))
                   for _ in range(LOAD_CONCURRENCY)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        wall = time.monotonic() - t0
        peak = rss("VmHWM")
        summary = {"requests": len(codes), "200": codes.count(200), "503": codes.count(503),
                   "other": [c for c in codes if c not in (200, 503)], "idle_rss_mb": idle >> 20,
                   "peak_rss_mb": peak >> 20, "budget_mb": BUDGET_MB, "wall_s": round(wall, 1)}
        print("LOAD", json.dumps(summary))
        (tmp_path / "load.json").write_text(json.dumps(summary))
        assert len(codes) == LOAD_REQUESTS and not summary["other"] and summary["200"] >= 2
        assert peak - idle <= BUDGET_MB << 20, summary
    finally:
        stop_process_group(proc)


def test_pyfunc_model_bounds_under_mlflow_serve(monkeypatch, tmp_path):
    """The registered pyfunc (for `mlflow models serve`): 429/503/504 codes, no stack trace for crashes."""
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from test_serving import make_checkpoint

    from pipelines.serving import scoring_server
    from pipelines.serving.pyfunc import OTSUpscaler

    ckpt = make_checkpoint(tmp_path / "map.pt")

    class Ctx:
        artifacts = {"checkpoint": str(ckpt)}

    m = OTSUpscaler(tile=16, overlap=4, device="cpu", max_images=2, max_pixels=32 * 32, max_request_pixels=1500)
    m.load_context(Ctx())
    png = encode_png(_png_b64(16, 16)[0])
    df = pd.DataFrame({"image": [png]})

    def code_of(fn):
        with pytest.raises(MlflowException) as e:
            fn()
        assert "stack_trace" not in e.value.json_kwargs
        return e.value.get_http_status_code(), e.value.message

    assert code_of(lambda: m.predict(None, pd.DataFrame({"image": [png] * 3})))[0] == 429
    assert "input pixels in one request" in code_of(
        lambda: m.predict(None, pd.DataFrame({"image": [encode_png(_png_b64(32, 32)[0])] * 2})))[1]
    assert scoring_server.SLOTS.acquire(blocking=False)
    try:
        status, msg = code_of(lambda: m.predict(None, df))
        assert status == 503 and "busy" in msg
    finally:
        scoring_server.SLOTS.release()
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "0")
    status, msg = code_of(lambda: m.predict(None, df))
    assert status == 504 and "cancelled" in msg
    monkeypatch.delenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT")

    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB\n  File x.py, line 1")

    monkeypatch.setattr("ots.infer.upscale_array", oom)
    status, msg = code_of(lambda: m.predict(None, df))
    assert status == 503 and msg == "upscaling failed (RuntimeError); see the server log"
    monkeypatch.undo()
    assert len(m.predict(None, df)) == 1  # still serving afterwards, slot released


def test_registered_model_is_code_not_a_pickle(tmp_path, monkeypatch):
    """Item 8: the logged model is models-from-code (no python_model.pkl); its settings come from model_config."""
    import mlflow
    import pandas as pd
    import yaml
    from test_serving import astronaut, make_checkpoint

    from pipelines.serving.package import log_pyfunc_model

    ckpt = make_checkpoint(tmp_path / "map.pt")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/m.db")
    mlflow.set_experiment("registered-model-code")  # not the active experiment id another test left behind
    try:
        with mlflow.start_run():
            info = log_pyfunc_model(ckpt, tile=16, overlap=4, max_pixels=48 * 48, device="cpu")
        local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "dl")))
        files = {p.name for p in local.rglob("*")}
        assert "python_model.pkl" not in files and (local / "model.py").is_file()  # pipelines/serving/model.py
        flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
        assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
        assert flavor["config"]["tile"] == 16 and flavor["config"]["max_pixels"] == 48 * 48
        m = mlflow.pyfunc.load_model(str(local))
        inner = m.unwrap_python_model()
        assert (inner.tile, inner.overlap, inner.max_pixels) == (16, 4, 48 * 48)
        out = m.predict(pd.DataFrame({"image": [encode_png(astronaut())]}))
        assert list(out["height"]) == [96]
    finally:
        mlflow.set_tracking_uri(None)
