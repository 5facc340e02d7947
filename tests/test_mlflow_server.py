"""`infra/mlflow-server.sh` serves the names clients are told to use (Host header check of MLflow >= 3.5).

The server binds 127.0.0.1; requests carry the cluster name in the Host header, as a client resolving
``mlflow.mlflow.svc.cluster.local`` to this server would send it.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "infra" / "mlflow-server.sh"
CLUSTER_NAME = "mlflow.mlflow.svc.cluster.local"


def status_for_host(port: int, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default",
                     headers={"Host": host})
        return conn.getresponse().status
    finally:
        conn.close()


def test_clients_are_told_the_name_the_script_allows():
    cm = yaml.safe_load((ROOT / "infra" / "mlflow-s3-settings.yaml").read_text())
    assert cm["data"]["MLFLOW_TRACKING_URI"] == f"http://{CLUSTER_NAME}:5000"
    assert f"MLFLOW_PUBLIC_HOSTS={CLUSTER_NAME}" in SCRIPT.read_text() or \
        f'MLFLOW_PUBLIC_HOSTS={CLUSTER_NAME}}}' in SCRIPT.read_text()


@pytest.mark.slow
def test_script_accepts_the_cluster_name_and_refuses_others(tmp_path, mlflow_server):
    from conftest import free_port, stop_process_group, wait_http

    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"), "MLFLOW_HOST": "127.0.0.1",
           "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1"}
    for k in ("MLFLOW_SERVER_ALLOWED_HOSTS", "MLFLOW_PUBLIC_HOSTS", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(["bash", str(SCRIPT)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=proc)
        assert status_for_host(port, f"{CLUSTER_NAME}:5000") == 200  # what a client on the cluster sends
        assert status_for_host(port, CLUSTER_NAME) == 200
        assert status_for_host(port, f"127.0.0.1:{port}") == 200  # port-forward / probes still work
        assert status_for_host(port, "10.1.2.3:5000") == 200  # pod IPs
        assert status_for_host(port, "evil.example:5000") == 403  # any other name: refused
        assert status_for_host(port, f"{CLUSTER_NAME}.evil.example") == 403
    finally:
        stop_process_group(proc)
        log.close()
    # the same request to a server started without the setting (the conftest one) is refused: what the
    # script fixes
    mport = int(mlflow_server.rsplit(":", 1)[1])
    assert status_for_host(mport, f"{CLUSTER_NAME}:5000") == 403
    assert status_for_host(mport, f"127.0.0.1:{mport}") == 200
