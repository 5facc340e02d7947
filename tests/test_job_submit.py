"""Cluster runs against a real `ray start --head` on 127.0.0.1 (one per module, with the job server).

The head runs with token authentication (Ray 2.60's default whenever a token exists), every port it opens is
on loopback and the worker ports are a small range. The train stage, given the job server's address, submits
itself as a Ray job (pipelines/cluster.py: the README's runtime env -- working_dir + excludes -- and the same
command) with tiny params whose relative paths (params file, train.overrides, output_dir) resolve in the job's
working directory, follows its log and copies its outputs home; data and checkpoints are on S3 (moto on
127.0.0.1), tracking on an MLflow server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import TINY, copy_repo, make_aim19, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY_MODEL = {
    "map": {"arch": "edsr", "n_blocks": 1, "n_features": 8, "scale": 4, "bicubic_skip": True},
    "potential": {"arch": "resnet", "crop": 32, "n_filters": 8, "max_filters": 16},
}


def readme_runtime_env() -> dict:
    """The JSON after `--runtime-env-json` in the README's submit command."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"--runtime-env-json '(\{.*?\})'", text, re.S)
    assert m, "README has no `ray job submit ... --runtime-env-json '{...}'` command"
    return json.loads(m.group(1))


def test_readme_runtime_env_keeps_the_code():
    """The excludes drop the local state folders and secrets but never a package folder (``ots/data``)."""
    from ray._private.thirdparty.pathspec import PathSpec

    env = readme_runtime_env()
    assert "pip" not in env and "conda" not in env  # the project image has the dependencies
    spec = PathSpec.from_lines("gitwildmatch", env["excludes"])
    for dropped in (".venv", ".venv/bin/python", "data", "data/demo/manifest.json", "outputs", "outputs/ray/x",
                    "mlruns", "mlruns/0/meta.yaml", ".env", "mlflow.db", ".dvc/cache/ab/cd", ".git"):
        assert spec.match_file(dropped), dropped
    for kept in ("ots/data/loader.py", "ots/data", "pipelines/train/driver.py", "infra/params.cluster.yaml",
                 "params.yaml", ".env.example"):
        assert not spec.match_file(kept), kept
    submit = (ROOT / "infra" / "SUBMIT.md").read_text()
    assert json.loads(re.search(r"--runtime-env-json '(\{.*?\})'", submit, re.S).group(1)) == env
    from pipelines.cluster import EXCLUDES

    assert env["excludes"] == EXCLUDES  # the manual command uploads what the train stage's own submission does


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _free_range(size: int) -> int:
    """The first port of ``size`` consecutive free loopback ports."""
    rng = secrets.SystemRandom()
    for _ in range(200):
        base = rng.randrange(20000, 30000 - size)
        try:
            socks = []
            for p in range(base, base + size):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def _session_pids(leader: int) -> set[int]:
    import psutil

    out = set()
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == leader:
                out.add(p.pid)
        except (ProcessLookupError, PermissionError):
            pass
    return out


def _loopback(ip: str) -> bool:
    import ipaddress

    a = ipaddress.ip_address(ip)
    return a.is_loopback or (a.version == 6 and a.ipv4_mapped is not None and a.ipv4_mapped.is_loopback)


def _listening(pids: set[int]) -> set[tuple[str, int]]:
    import psutil

    return {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory, moto_endpoint):
    """A `ray start --head` on 127.0.0.1 with token auth and the job server; yields (address, env, temp dir,
    head process). Its jobs reach the moto S3 server with test credentials, as nodes with an instance role would."""
    root = tmp_path_factory.mktemp("ray_head")
    temp = Path(tempfile.mkdtemp(prefix="otsray-", dir="/tmp"))  # short: Unix socket paths are limited to 107 bytes
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    gcs, dash, nm, om, client_port, agent, agent_grpc, rt_agent, metrics = _free_ports(9)
    worker_base = _free_range(16)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": "",
           "AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": str(root / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(root / "no-creds"),
           "RAY_worker_niceness": "0"}  # workers keep this test's priority (Ray's default lowers it)
    for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        env.pop(k, None)
    log_path = root / "head.log"
    log = open(log_path, "wb")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--node-manager-port={nm}", f"--object-manager-port={om}", f"--ray-client-server-port={client_port}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={rt_agent}", f"--metrics-export-port={metrics}",
         f"--min-worker-port={worker_base}", f"--max-worker-port={worker_base + 15}",
         "--num-cpus=2", "--object-store-memory=100000000", f"--temp-dir={temp}", "--disable-usage-stats"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 300
        while True:  # the job API answers (401 without the token: auth is on)
            assert head.poll() is None, log_path.read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{address}/api/jobs/", timeout=2)
                code = 200
            except urllib.error.HTTPError as e:
                code = e.code
            except OSError:
                code = None
            if code is not None:
                break
            assert time.monotonic() < deadline, "the job API did not come up"
            time.sleep(1)
        assert code == 401, f"the job API answered {code} without a token (token auth is off?)"
        auth = {"Authorization": f"Bearer {token.read_text().strip()}"}
        while True:  # the job module answers with the token (the dashboard loads its modules one by one)
            assert head.poll() is None, log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(urllib.request.Request(f"{address}/api/jobs/", headers=auth),
                                            timeout=10) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the job API did not answer with the token"
            time.sleep(1)
        yield address, env, temp, head
    finally:
        stop_process_group(head, grace=3)  # `ray start --block` ignores SIGTERM; its temp dir goes below
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _stage(repo: Path, env: dict, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    """`python -m pipelines.train ...` in ``repo`` (as `dvc repro` runs the stage), with ``env``."""
    return subprocess.run([sys.executable, "-m", "pipelines.train", *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_train_stage_runs_as_a_ray_job_and_brings_its_outputs_home(tmp_path, ray_head, mlflow_server, s3_env):
    """Issue 20 item 7: with RAY_ADDRESS = the job server, the train stage submits itself (the README's runtime
    env: working_dir + excludes), streams the job's log, waits, and writes final.pt/best.pt/run.json locally."""
    from mlflow import MlflowClient

    from ots.checkpoint import load_map
    from ots.data.shards import ShardConfig, prepare_dataset

    address, head_env, temp, head = ray_head
    # data and checkpoints on S3, as on a cluster
    bucket = f"ots-job-{uuid.uuid4().hex[:8]}"
    s3_env.create_bucket(Bucket=bucket)
    dataset = f"s3://{bucket}/ds"
    prepare_dataset(str(make_aim19(tmp_path / "aim19")), dataset, cfg=ShardConfig(**TINY, shard_bytes=40_000),
                    progress=False)

    # the repo as a user has it: code + local state that must stay local
    repo = tmp_path / "repo"
    copy_repo(repo, git=False)
    for junk in (".venv/bin/python", "data/big.bin", "outputs/ray/old.bin", "mlruns/0/x"):
        (repo / junk).parent.mkdir(parents=True, exist_ok=True)
        (repo / junk).write_bytes(b"x" * 1024)
    for secret in (".env", ".envrc", "prod.env", ".aws/credentials"):  # .rayignore's allow-list keeps them home
        (repo / secret).parent.mkdir(parents=True, exist_ok=True)
        (repo / secret).write_text("AWS_SECRET_ACCESS_KEY=do-not-upload\n")
    (repo / "infra" / "tuned.yaml").write_text(yaml.safe_dump({"solver": {"lr_map": 2e-4}}))
    params = {
        "seed": 0, "model": TINY_MODEL, "data": {"output": dataset},
        "solver": {"k_T": 2, "lr_map": 1e-4, "lr_potential": 1e-4, "cost": {"mse": 1.0}, "anchor_every": 0},
        "train": {"steps": 4, "batch_size": 2, "lr_crop": 8, "hr_crop": 32, "checkpoint_every": 2,
                  "keep_best_k": 2, "max_failures": 0, "num_workers": 1, "resources_per_worker": {"CPU": 1},
                  "storage_path": f"s3://{bucket}/ray", "log_every": 2, "image_every": 0, "val_pairs": 2,
                  "output_dir": "outputs/train",  # relative: here, and in the job's working directory
                  "overrides": "infra/tuned.yaml",  # relative: inside the uploaded working_dir
                  "mlflow": {"tracking_uri": None, "experiment": "test-job"}},
    }
    (repo / "infra" / "params.job.yaml").write_text(yaml.safe_dump(params))

    env = {**head_env, "RAY_ADDRESS": address, "MLFLOW_TRACKING_URI": mlflow_server}
    r = _stage(repo, env, "--params", "infra/params.job.yaml")
    assert r.returncode == 0, f"{r.stdout[-6000:]}\n{r.stderr[-4000:]}"
    assert re.search(r"^train: ray job ots-train-\S+ submitted to http://127\.0\.0\.1:\d+ \(python -m "
                     r"pipelines\.train --params infra/params\.job\.yaml\)", r.stdout, re.M), r.stdout[-3000:]
    assert re.search(r"train: step 4/4 loss_map=", r.stdout), r.stdout[-3000:]  # the job's log, streamed

    # the outputs are here, for DVC, evaluate and register
    info = json.loads((repo / "outputs" / "train" / "run.json").read_text())
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["mlflow_run_id"] == info["mlflow_run_id"] and info["steps"] == 4
    assert info["final_checkpoint"] == str(repo / "outputs" / "train" / "final.pt")
    assert info["best_checkpoint"] == str(repo / "outputs" / "train" / "best.pt")
    load_map(info["best_checkpoint"])
    job = info["ray_job"]
    assert job["submission_id"].startswith("ots-train-") and job["outputs"] == f"s3://{bucket}/ray/jobs/" \
        + job["submission_id"]

    # every port the head's processes listen on is a loopback port
    listening = _listening(_session_pids(head.pid))
    assert listening and all(_loopback(ip) for ip, _ in listening), listening

    # its MLflow run and its checkpoints on S3
    run = MlflowClient(mlflow_server).get_run(info["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["solver.lr_map"] == "0.0002"  # overrides applied
    arts = {a.path for a in MlflowClient(mlflow_server).list_artifacts(run.info.run_id, "checkpoints")}
    assert arts == {"checkpoints/final.pt"}
    keys = [o["Key"] for o in s3_env.list_objects_v2(Bucket=bucket, Prefix="ray/")["Contents"]]
    assert any(k.endswith("/checkpoint.pt") and "/checkpoint_" in k for k in keys), keys

    # the job ran in the uploaded copy of the project, without the local state
    published = json.loads(s3_env.get_object(Bucket=bucket, Key=f"ray/jobs/{job['submission_id']}/run.json")
                           ["Body"].read())
    (pkg,) = [p for p in (temp / "session_latest" / "runtime_resources" / "working_dir_files").iterdir()
              if (p / "infra" / "params.job.yaml").is_file()]
    assert published["final_checkpoint"] == str((pkg / "outputs" / "train" / "final.pt").resolve())
    assert (pkg / "ots" / "data" / "loader.py").is_file()
    for local in (".venv", ".env", ".envrc", "prod.env", ".aws", "data", "mlruns", "outputs/ray/old.bin"):
        assert not (pkg / local).exists(), local


@pytest.mark.slow
def test_a_failed_cluster_job_fails_the_stage_in_one_line(tmp_path, ray_head):
    """`train.cluster` (instead of RAY_ADDRESS) sends the stage to the job server; the job's own one-line error
    comes back as the stage's one line, exit code 2, no traceback."""
    address, head_env, _, _ = ray_head
    repo = copy_repo(tmp_path / "repo", git=False)
    params = {"seed": 0, "model": TINY_MODEL,
              "train": {"dataset": str(tmp_path / "no-such-dataset"), "storage_path": str(tmp_path / "ray"),
                        "lr_crop": 8, "hr_crop": 32, "cluster": address,
                        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}}}
    (repo / "params.fail.yaml").write_text(yaml.safe_dump(params))
    r = _stage(repo, head_env, "--params", "params.fail.yaml", timeout=600)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert re.fullmatch(r"train: error: ray job ots-train-\S+ failed: train: error: .*no-such-dataset.*", err[-1]), \
        r.stderr[-3000:]
    assert not (repo / "outputs" / "train" / "run.json").exists()


def test_where_the_train_stage_runs(monkeypatch, tmp_path):
    """job_server: train.cluster, else an http(s) RAY_ADDRESS; never inside the job; bad setups are one line
    before anything is uploaded."""
    import dataclasses

    from ots.config import TrainConfig
    from ots.errors import ConfigError
    from pipelines import cluster

    for k in ("RAY_ADDRESS", cluster.API_SERVER_ENV, cluster.IN_RAY_JOB_ENV, cluster.JOB_OUTPUT_ENV):
        monkeypatch.delenv(k, raising=False)
    assert cluster.job_server(TrainConfig(cluster=None)) is None  # a local Ray
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a GCS address (inside a job): join, do not submit
    assert cluster.job_server(TrainConfig(cluster=None)) is None
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert cluster.job_server(TrainConfig(cluster=None)) == "http://head:8265"
    assert cluster.job_server(TrainConfig(cluster="https://other:443")) == "https://other:443"
    monkeypatch.setenv(cluster.IN_RAY_JOB_ENV, "{}")  # inside any Ray job (e.g. a manual `ray job submit`)
    assert cluster.job_server(TrainConfig(cluster="https://other:443")) is None
    monkeypatch.delenv(cluster.IN_RAY_JOB_ENV)
    train = TrainConfig(lr_crop=8, hr_crop=32, dataset="s3://b/ds", storage_path="outputs/ray")
    with pytest.raises(ConfigError, match="train.storage_path is 'outputs/ray': a cluster run needs a location"):
        cluster.submit("pipelines.train", "params.yaml", train, "http://127.0.0.1:9")
    train = dataclasses.replace(train, storage_path=str(tmp_path / "ray"))
    with pytest.raises(ConfigError, match="outside the project"):
        cluster.submit("pipelines.train", str(tmp_path / "p.yaml"), train, "http://127.0.0.1:9")
    nobody = f"http://127.0.0.1:{_free_ports(1)[0]}"
    with pytest.raises(cluster.ClusterJobError, match=f"^cannot submit to the Ray job server {nobody}: "):
        cluster.submit("pipelines.train", "params.yaml", train, nobody)
