"""The MLflow server goes down mid-search: the search goes on, the trial table stays complete, and
MLflow catches up once the server is back; nothing lost, nothing doubled, nothing left RUNNING."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY_SPACE, free_port, mlflow_server_command, serve, stop

pytestmark = pytest.mark.integration

OUTAGE_S = 45  # longer than one MLflow request with its retries would wait (the queue retries instead)


def test_search_survives_an_mlflow_outage_and_catches_up(tmp_path: Path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = serve(mlflow_server_command(tmp_path, port), f"{uri}/health", "mlflow server")
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE.replace("train_subset: 400", "train_subset: 1100"))
    search = subprocess.Popen(
        [sys.executable, "-m", "automl_factor.search", "--space", "tiny.yaml", "--num-samples", "4",
         "--max-epochs", "3", "--scheduler", "fifo", "--name", "o", "--mlflow-uri", uri],
        cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    lines, down_at, finished_while_down = [], None, 0
    try:
        for line in search.stdout:
            lines.append(line)
            if down_at is None and "1/4 finished" in line:
                stop(server)  # the server goes away mid-search
                down_at = time.time()
            elif down_at is not None and server.poll() is not None and " finished |" in line:
                finished_while_down += 1
            if down_at is not None and server.poll() is not None and (
                    time.time() - down_at > OUTAGE_S and finished_while_down or time.time() - down_at > 300):
                server = serve(mlflow_server_command(tmp_path, port), f"{uri}/health", "mlflow server")
        output = "".join(lines) + search.communicate(timeout=600)[0]
        assert search.returncode == 0, output[-3000:]
        assert finished_while_down >= 1, output[-3000:]  # trials went on finishing while MLflow was down
        assert "unreachable" in output and "MLflow is back" in output, output[-3000:]

        rows = pq.read_table(tmp_path / "automl_runs" / "o" / "trials.parquet").to_pylist()
        assert len(rows) == 4 and {row["status"] for row in rows} == {"complete"}
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("automl-factor").experiment_id], max_results=100)
        children = {run.data.tags["automl_factor.trial_id"]: run for run in runs if "mlflow.parentRunId" in run.data.tags}
        assert len(children) == len([run for run in runs if "mlflow.parentRunId" in run.data.tags]) == 4
        assert sorted(children) == sorted(row["trial_id"] for row in rows)
        for row in rows:
            run = children[row["trial_id"]]
            assert row["mlflow_run_id"] == run.info.run_id
            assert run.info.status == "FINISHED" and run.data.tags["status"] == "complete"
            assert run.data.metrics["accuracy"] == pytest.approx(row["accuracy"])
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")]
            assert sorted(steps) == [1, 2, 3], steps  # every epoch once, those of the outage too
        parent = next(run for run in runs if "mlflow.parentRunId" not in run.data.tags)
        assert parent.info.status == "FINISHED" and "front.html" in [a.path for a in client.list_artifacts(
            parent.info.run_id)]
    finally:
        search.kill()
        stop(server)
