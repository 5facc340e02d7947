"""`ray job submit`, as the README writes it, against a real `ray start --head` on 127.0.0.1.

The head runs with token authentication (Ray 2.60's default whenever a token exists), every port it opens is
on loopback and the worker ports are a small range. The job carries the repo through the README's runtime env
(working_dir + excludes + env_vars, parsed from the README itself) and runs `python -m pipelines.train` with
tiny params whose relative paths (params file, train.overrides, output_dir) resolve in the job's working
directory; data and checkpoints are on S3 (moto on 127.0.0.1), tracking on an MLflow server on 127.0.0.1.
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
    for kept in ("ots/data/loader.py", "ots/data", "pipelines/train.py", "infra/params.cluster.yaml",
                 "params.yaml", ".env.example"):
        assert not spec.match_file(kept), kept
    submit = (ROOT / "infra" / "SUBMIT.md").read_text()
    assert json.loads(re.search(r"--runtime-env-json '(\{.*?\})'", submit, re.S).group(1)) == env


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


@pytest.mark.slow
def test_ray_job_submit_trains_with_the_readme_runtime_env(tmp_path, s3_env, mlflow_server):
    from mlflow import MlflowClient

    from ots.data.shards import ShardConfig, prepare_dataset

    # data on S3, as on a cluster
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
                  "output_dir": "outputs/train",  # relative: the job's working directory
                  "overrides": "infra/tuned.yaml",  # relative: inside the uploaded working_dir
                  "mlflow": {"tracking_uri": None, "experiment": "test-job"}},
    }
    (repo / "infra" / "params.job.yaml").write_text(yaml.safe_dump(params))

    # a head node on 127.0.0.1 with token auth; short temp dir (Unix socket paths are limited to 107 bytes)
    temp = Path(tempfile.mkdtemp(prefix="otsray-", dir="/tmp"))
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    gcs, dash, nm, om, client_port, agent, agent_grpc, rt_agent, metrics = _free_ports(9)
    worker_base = _free_range(16)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": "",
           "RAY_worker_niceness": "0"}  # workers keep this test's priority (Ray's default lowers it)
    for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    log = open(tmp_path / "head.log", "wb")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--node-manager-port={nm}", f"--object-manager-port={om}", f"--ray-client-server-port={client_port}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={rt_agent}", f"--metrics-export-port={metrics}",
         f"--min-worker-port={worker_base}", f"--max-worker-port={worker_base + 15}",
         "--num-cpus=2", "--object-store-memory=100000000", f"--temp-dir={temp}", "--disable-usage-stats"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"

    def ray_cli(*args, timeout=120, check=True):
        p = subprocess.run([str(BIN / "ray"), *args], cwd=repo, env={**env, "RAY_ADDRESS": address},
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"ray {' '.join(args[:2])} failed ({p.returncode}):\n{p.stdout[-4000:]}\n"
                                 f"{p.stderr[-4000:]}\nhead log:\n{(tmp_path / 'head.log').read_text()[-3000:]}")
        return p

    try:
        deadline = time.monotonic() + 300
        while True:  # the job API answers (401 without the token: auth is on)
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
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
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(urllib.request.Request(f"{address}/api/jobs/", headers=auth),
                                            timeout=10) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the job API did not answer with the token"
            time.sleep(1)

        runtime_env = readme_runtime_env()
        runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] = mlflow_server
        job_id = f"ots-test-{uuid.uuid4().hex[:8]}"
        ray_cli("job", "submit", "--no-wait", f"--submission-id={job_id}", "--working-dir", ".",
                "--runtime-env-json", json.dumps(runtime_env), "--",
                "python", "-m", "pipelines.train", "--params", "infra/params.job.yaml")
        deadline = time.monotonic() + 1500  # generous: on a loaded 2-core machine worker start-up takes minutes
        status = None
        while time.monotonic() < deadline:
            req = urllib.request.Request(f"{address}/api/jobs/{job_id}", headers=auth)
            with urllib.request.urlopen(req, timeout=30) as r:
                status = json.loads(r.read())["status"]
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                break
            time.sleep(3)
        logs = ray_cli("job", "logs", job_id).stdout
        assert status == "SUCCEEDED", f"{status}\n{logs[-6000:]}"

        # every port the head's processes listen on is a loopback port
        listening = _listening(_session_pids(head.pid))
        assert listening and all(_loopback(ip) for ip, _ in listening), listening

        # the job's summary line, its MLflow run and its checkpoints on S3
        summary = json.loads([ln for ln in logs.splitlines() if ln.startswith('{"mlflow_run_id"')][-1])
        assert summary["steps"] == 4
        run = MlflowClient(mlflow_server).get_run(summary["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.params["solver.lr_map"] == "0.0002"  # overrides applied
        arts = {a.path for a in MlflowClient(mlflow_server).list_artifacts(run.info.run_id, "checkpoints")}
        assert arts == {"checkpoints/final.pt"}
        keys = [o["Key"] for o in s3_env.list_objects_v2(Bucket=bucket, Prefix="ray/")["Contents"]]
        assert any(k.endswith("/checkpoint.pt") and "/checkpoint_" in k for k in keys), keys

        # relative output_dir resolved in the job's working directory: the uploaded copy, without local state
        (pkg,) = [p for p in (temp / "session_latest" / "runtime_resources" / "working_dir_files").iterdir()
                  if (p / "pipelines").is_dir()]
        assert summary["final_checkpoint"] == str((pkg / "outputs" / "train" / "final.pt").resolve())
        assert (pkg / "ots" / "data" / "loader.py").is_file()
        for local in (".venv", ".env", ".envrc", "prod.env", ".aws", "data", "mlruns", "outputs/ray/old.bin"):
            assert not (pkg / local).exists(), local
    finally:
        stop_process_group(head)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
