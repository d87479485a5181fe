#!/usr/bin/env bash
# (Re)start the MLflow tracking server on the Ray head; run by the launch files' head_start_ray_commands.
# Bound to the head's private IP (never 0.0.0.0): the driver on the head and anything inside the cluster
# network reach it; from your machine, go through an SSH tunnel (README, "Run on a cluster").
# The backend store (runs, params, metrics) is a SQLite file on the head, served by one process;
# artifacts go to object storage through the server. Usage: start-mlflow.sh s3://BUCKET/mlflow-artifacts (or gs://...)
set -euo pipefail
artifacts=${1:?usage: start-mlflow.sh s3://BUCKET/mlflow-artifacts}
port=${MLFLOW_PORT:-5000}
home=~/mlflow
mkdir -p "$home"
if [ -f "$home/pid" ]; then  # the server started by a previous `ray up`: its whole process group
  kill -- "-$(cat "$home/pid")" 2>/dev/null || true
  sleep 2
fi
ip=$(python -c 'import ray.util; print(ray.util.get_node_ip_address())')
setsid nohup mlflow server --host "$ip" --port "$port" --workers 1 \
  --backend-store-uri "sqlite:///$home/mlflow.db" --artifacts-destination "$artifacts" \
  >"$home/server.log" 2>&1 </dev/null &
echo $! >"$home/pid"
echo "http://$ip:$port" >"$home/uri"
echo "MLflow: http://$ip:$port (log $home/server.log). From your machine: ssh -N -L $port:$ip:$port <head>"
