#!/usr/bin/env bash
# A shared MLflow tracking server for the cluster: Postgres (or sqlite) backend, artifacts proxied to S3.
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow@db:5432/mlflow MLFLOW_ARTIFACTS_DESTINATION=s3://ots-artifacts/mlflow \
#   MLFLOW_HOST=0.0.0.0 MLFLOW_PUBLIC_HOSTS=mlflow.mlflow.svc.cluster.local infra/mlflow-server.sh
# Clients (the Ray driver and rank 0) only need MLFLOW_TRACKING_URI=http://<host>:5000; S3 credentials stay on
# the server (--artifacts-destination proxies uploads). Binds 127.0.0.1 unless MLFLOW_HOST says otherwise.
#
# Host header check (MLflow >= 3.5 answers 403 "Invalid Host header" to any name that is not localhost or a
# private IP): MLFLOW_PUBLIC_HOSTS lists the DNS names clients use (comma-separated, default: the in-cluster
# name the infra/ manifests give clients). Each name is allowed bare and with any port (a client sends
# "name:5000"), next to localhost/127.0.0.1 and the private IP ranges (probes, port-forward, pod IPs).
# MLFLOW_SERVER_ALLOWED_HOSTS, when set, is used verbatim instead (MLflow's own variable).
set -euo pipefail
: "${MLFLOW_BACKEND_STORE_URI:=sqlite:///mlflow-server.db}"
: "${MLFLOW_ARTIFACTS_DESTINATION:=./mlartifacts}"
: "${MLFLOW_HOST:=127.0.0.1}"
: "${MLFLOW_PORT:=5000}"
: "${MLFLOW_PUBLIC_HOSTS=mlflow.mlflow.svc.cluster.local}"
if [[ -z "${MLFLOW_SERVER_ALLOWED_HOSTS:-}" ]]; then
  hosts="localhost,localhost:*,127.0.0.1,127.0.0.1:*,10.*,192.168.*"
  for i in $(seq 16 31); do hosts+=",172.$i.*"; done
  IFS=',' read -r -a names <<< "$MLFLOW_PUBLIC_HOSTS"
  for n in "${names[@]}"; do
    n="${n// /}"
    [[ -n "$n" ]] && hosts+=",$n,$n:*"
  done
  MLFLOW_SERVER_ALLOWED_HOSTS="$hosts"
fi
export MLFLOW_SERVER_ALLOWED_HOSTS
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false   # no background job workers (~2.5 GB)
exec mlflow server \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --allowed-hosts "$MLFLOW_SERVER_ALLOWED_HOSTS" \
  --host "$MLFLOW_HOST" --port "$MLFLOW_PORT" --workers "${MLFLOW_WORKERS:-2}"
