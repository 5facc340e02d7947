"""How long `mlflow models serve` takes to stop on SIGTERM with a request in flight (bench/RESULTS.md).

    python bench/mlflow_serve_stop.py [CODE_ROOT]      # CODE_ROOT: the checkout whose ots/pipelines are served

Logs a tiny EDSR as the pyfunc into a temporary sqlite store, serves it (`--env-manager local -w 1`,
MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT=30) on 127.0.0.1, posts a 1024² image in 8-px tiles (~30 s of work),
sends SIGTERM to the server's process group 4 s later and prints, as JSON, the seconds until no process of the
group is left and what the request got back.
"""

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = str(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]).resolve())
sys.path[:0] = [ROOT, f"{ROOT}/tests"]

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
from conftest import free_port, wait_http  # noqa: E402
from test_serving import make_checkpoint  # noqa: E402

from ots.imagewrite import encode_png  # noqa: E402
from pipelines.serving.package import log_pyfunc_model  # noqa: E402


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ots-serve-stop-"))
    uri = f"sqlite:///{tmp}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run():
        info = log_pyfunc_model(make_checkpoint(tmp / "map.pt"), tile=8, overlap=2, device="cpu")
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OTS_SERVE_DEVICE": "cpu", "PYTHONPATH": ROOT,
           "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "30",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(tmp / "serve.log", "wb") as log:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
                                 info.model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
                                 "-w", "1"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/ping", timeout=180, proc=proc)
    y, x = np.mgrid[0:1024, 0:1024]
    img = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(encode_png(img))
                                                                           .decode()]]},
                       "params": {"tile": 8, "overlap": 2}}).encode()
    answer: dict = {}

    def post() -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                     {"Content-Type": "application/json"})
        try:
            answer["status"] = urllib.request.urlopen(req, timeout=120).status
        except urllib.error.HTTPError as e:
            answer["status"], answer["body"] = e.code, e.read()[:200].decode(errors="replace")

    client = threading.Thread(target=post)
    client.start()
    time.sleep(4)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=90)  # the `mlflow` CLI (reaped: a zombie would count below); uvicorn outlives it
    while subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).returncode == 0:  # uvicorn too
        if time.monotonic() - t0 > 90:
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.05)
    stop_s = time.monotonic() - t0
    client.join(30)
    print(json.dumps({"code": ROOT, "stopped_after_s": round(stop_s, 2), "request": answer}))


if __name__ == "__main__":
    main()
