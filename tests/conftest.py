"""Shared fixtures: tiny AIM19-layout folders and an S3-protocol server (moto) on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Never reach the internet for backbone weights (tests inject random backbones); the download path has its own
# test against a server on 127.0.0.1 that switches this off.
os.environ["OTS_OFFLINE"] = "1"
# `pipelines` is not installed (pyproject.toml): it runs from the project root. Tests that chdir elsewhere start
# Ray workers, DVC and servers there, so they get the root through the environment, as the image does.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)


def copy_repo(dst: Path, git: bool = True) -> Path:
    """The repo's tracked and untracked-but-not-ignored files copied to ``dst`` (no venv, data or outputs), as a
    fresh git repo with one commit when ``git`` (what DVC and `ray job submit` see on a clean checkout)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    if git:
        for args in (["git", "init", "-q"], ["git", "add", "-A"],
                     ["git", "-c", "user.email=ci@ots", "-c", "user.name=ci", "commit", "-qm", "copy"]):
            subprocess.run(args, cwd=dst, check=True, capture_output=True)
    return dst


def write_png(path: Path, h: int, w: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    # smooth-ish content (compresses a little, crops differ)
    base = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = np.repeat(np.repeat(base, 8, axis=0), 8, axis=1)[:h, :w]
    img = (img.astype(np.int16) + rng.integers(-8, 9, size=img.shape)).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def make_aim19(root: Path) -> Path:
    """A tiny folder in the exact AIM19 layout: flat and nested files, val pairs with modcrop."""
    write_png(root / "train_clean" / "0001.png", 200, 170, 1)
    write_png(root / "train_clean" / "sub" / "0002.png", 150, 140, 2)
    write_png(root / "train_noisy" / "0101.png", 60, 50, 3)
    write_png(root / "train_noisy" / "sub" / "0102.png", 48, 40, 4)
    write_png(root / "val_hr" / "0801.png", 130, 131, 5)  # modcrop -> 128 x 128
    write_png(root / "val_lr" / "0801.png", 32, 32, 6)
    write_png(root / "val_hr" / "0802.png", 96, 128, 7)
    write_png(root / "val_lr" / "0802.png", 24, 32, 8)
    return root


# Small tiles/crops so the fixture yields several tiles per image.
TINY = {"hr_tile": 96, "lr_tile": 24, "hr_crop": 64, "lr_crop": 16, "overlap": 0.25}


@pytest.fixture
def aim19_dir(tmp_path) -> Path:
    return make_aim19(tmp_path / "aim19")


@pytest.fixture
def tiny_cfg():
    from ots.data.shards import ShardConfig

    return ShardConfig(**TINY, shard_bytes=40_000)


@pytest.fixture(scope="session")
def moto_endpoint():
    """An S3-protocol server on loopback for the whole session; yields its http endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(moto_endpoint, monkeypatch, tmp_path):
    """Environment pointing at the moto server with test credentials; returns a boto3 client."""
    import boto3

    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc=None) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` exits."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (sqlite backend, local artifacts) on 127.0.0.1; yields its tracking URI."""
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", timeout=120, proc=proc)
        yield uri
    finally:
        stop_process_group(proc)
        log.close()


def stop_process_group(proc, grace: float = 20) -> None:
    """SIGTERM a server started with start_new_session=True, SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> str:
    """Shards of the tiny AIM19 fixture (tiles for LR 16 / HR 64 crops), shared by the train and tune tests."""
    from ots.data.shards import ShardConfig, prepare_dataset

    root = tmp_path_factory.mktemp("tiny_data")
    out = root / "ds"
    prepare_dataset(str(make_aim19(root / "aim19")), str(out), cfg=ShardConfig(**TINY, shard_bytes=40_000),
                    progress=False)
    return str(out)


# `make test` runs two pytest workers (pytest-xdist, --dist loadgroup). The modules that start Ray clusters, train
# through Ray or run `dvc repro` share one worker, in file order, as they did in one process; the rest of the suite
# runs beside them on the other worker.
RAY_MODULES = {"test_train.py", "test_tune.py", "test_job_submit.py", "test_e2e.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in RAY_MODULES:
            item.add_marker(pytest.mark.xdist_group("ray"))
