"""An interrupted search resumes from its storage: nothing finished is rerun or logged twice."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY_SPACE, run_cli

pytestmark = pytest.mark.integration

NUM_SAMPLES = 4
ARGS = ["--space", "tiny.yaml", "--num-samples", str(NUM_SAMPLES), "--name", "r", "--scheduler", "fifo",
        "--max-epochs", "2"]


def _interrupt_after(folder: Path, finished: int) -> str:
    """Start a search and send Ctrl-C once ``finished`` trials are done."""
    process = subprocess.Popen([sys.executable, "-m", "automl_factor.search", *ARGS], cwd=folder,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 240
    for line in process.stdout:
        lines.append(line)
        if f"{finished}/{NUM_SAMPLES} finished" in line or time.time() > deadline:
            process.send_signal(signal.SIGINT)
            break
    output = "".join(lines) + process.communicate(timeout=120)[0]
    return output


def test_resume_continues_without_rerunning_or_duplicating(tmp_path: Path):
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE)
    output = _interrupt_after(tmp_path, finished=1)
    assert "--resume --name r" in output, output[-3000:]
    table = tmp_path / "automl_runs" / "r" / "trials.parquet"
    before = {row["trial_id"]: row for row in pq.read_table(table).to_pylist()}
    assert 1 <= len(before) < NUM_SAMPLES

    completed = run_cli("automl_factor.search", *ARGS, "--resume", cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    after = {row["trial_id"]: row for row in pq.read_table(table).to_pylist()}
    assert len(after) == NUM_SAMPLES
    for trial_id, row in before.items():  # finished trials were not rerun: same rows, same times
        assert after[trial_id]["finished_at"] == row["finished_at"]
        assert after[trial_id]["mlflow_run_id"] == row["mlflow_run_id"]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("automl-factor")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len([run for run in runs if "mlflow.parentRunId" not in run.data.tags]) == 1
    assert sorted(run.data.tags["automl_factor.trial_id"] for run in children) == sorted(after)
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")]
        assert len(steps) == len(set(steps)), f"epochs logged twice: {steps}"
