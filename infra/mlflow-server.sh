#!/usr/bin/env bash
# A shared MLflow tracking server for the cluster: Postgres (or sqlite) backend, artifacts proxied to S3.
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow@db:5432/mlflow MLFLOW_ARTIFACTS_DESTINATION=s3://ots-artifacts/mlflow \
#   infra/mlflow-server.sh
# Clients (the Ray driver and rank 0) only need MLFLOW_TRACKING_URI=http://<host>:5000; S3 credentials stay on
# the server (--artifacts-destination proxies uploads). Binds 127.0.0.1 unless MLFLOW_HOST says otherwise.
set -euo pipefail
: "${MLFLOW_BACKEND_STORE_URI:=sqlite:///mlflow-server.db}"
: "${MLFLOW_ARTIFACTS_DESTINATION:=./mlartifacts}"
: "${MLFLOW_HOST:=127.0.0.1}"
: "${MLFLOW_PORT:=5000}"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false   # no background job workers (~2.5 GB)
exec mlflow server \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --host "$MLFLOW_HOST" --port "$MLFLOW_PORT" --workers "${MLFLOW_WORKERS:-2}"
