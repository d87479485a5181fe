"""Trials that fail: each ends failed exactly once with its reason, and every record agrees
(Ray trials = Parquet rows = MLflow child runs = finished Optuna trials, nothing RUNNING)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis

from conftest import TINY_SPACE

pytestmark = pytest.mark.integration

CRASHING_MODEL = '''
import os
import torch
from torch import nn


class Crashing(nn.Module):
    """Evaluates fine; its worker process dies at the first training step."""

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            os._exit(3)
        return self.head(self.features(x).mean((2, 3)))


def build(num_classes, in_channels):
    return Crashing(num_classes, in_channels)
'''

CRASHING_SPACE = """
model: crashing_model:build
data: {name: digits, val_fraction: 0.2, train_subset: 200}
max_epochs: 2
groups:
  - name: convs
    layers: ["features.*"]
    kinds: [lowrank]
"""


def _search(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "automl_factor.search", "--name", "f", "--scheduler", "fifo", *args],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=900)


def _records(folder: Path) -> tuple[list[dict], list, list, list, object]:
    run_folder = folder / "automl_runs" / "f"
    rows = pq.read_table(run_folder / "trials.parquet").to_pylist()
    ray_trials = ExperimentAnalysis(str(run_folder)).trials
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("automl-factor").experiment_id], max_results=100)
    study = optuna.load_study(study_name="f", storage=f"sqlite:///{run_folder / 'optuna.db'}")
    trained = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    assert sorted(t.trial_id for t in ray_trials) == sorted(row["trial_id"] for row in rows)
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert sorted(run.data.tags["automl_factor.trial_id"] for run in children) == sorted(r["trial_id"] for r in rows)
    assert len(trained) == len(rows) and all(t.state.is_finished() for t in trained)
    assert all(run.info.status != "RUNNING" for run in runs)
    parent = next(run for run in runs if "mlflow.parentRunId" not in run.data.tags)
    return rows, ray_trials, children, trained, parent


def test_a_diverging_trial_fails_once_with_its_reason_and_is_not_retried(tmp_path: Path):
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE.replace("lr: 0.05", "lr: 1.0e+12"))
    completed = _search(tmp_path, "--space", "tiny.yaml", "--num-samples", "2", "--max-epochs", "2")
    assert completed.returncode == 1, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert "every trial failed" in completed.stderr and "loss became" in completed.stderr
    rows, ray_trials, children, trained, parent = _records(tmp_path)
    assert len(rows) == 2 and [row["status"] for row in rows] == ["failed", "failed"]
    assert all(row["reason"].startswith("loss became") for row in rows)
    assert [trial.run_metadata.num_failures for trial in ray_trials] == [0, 0]  # ended itself, never retried
    assert all(row["epochs_trained"] == 1 for row in rows)  # it diverged in epoch 1 and stopped there
    assert [t.state for t in trained] == [optuna.trial.TrialState.FAIL] * 2
    assert all("loss became" in t.user_attrs["reason"] for t in trained)
    assert parent.info.status == "FAILED" and parent.data.tags["automl_factor.status"] == "failed"
    assert {run.info.status for run in children} == {"FAILED"}


def test_a_trial_whose_worker_dies_twice_fails_with_the_reason_kept(tmp_path: Path):
    (tmp_path / "crashing_model.py").write_text(CRASHING_MODEL)
    (tmp_path / "crashing.yaml").write_text(CRASHING_SPACE)
    completed = _search(tmp_path, "--space", "crashing.yaml", "--num-samples", "1", "--budget-params", "0.5")
    assert completed.returncode == 1, completed.stdout[-2000:] + completed.stderr[-2000:]
    rows, ray_trials, children, trained, parent = _records(tmp_path)
    assert [row["status"] for row in rows] == ["failed"]
    # Died, retried once (FailureConfig), died again: in our record, in Ray's error file and in the state
    # Ray saved (which said RUNNING and 1 failure in 1 run of 3 on a loaded machine before ray_fixes).
    assert rows[0]["reason"].startswith("failed 2 times: "), rows[0]["reason"]
    assert Path(ray_trials[0].path, "error.txt").read_text().count("Failure # ") == 2
    assert (ray_trials[0].status, ray_trials[0].run_metadata.num_failures) == ("ERROR", 2)
    assert "died" in rows[0]["reason"].lower() or "exit" in rows[0]["reason"].lower(), rows[0]["reason"]
    assert "/tmp" not in rows[0]["reason"]  # the reason, not the path of an error file
    assert [t.state for t in trained] == [optuna.trial.TrialState.FAIL]
    assert parent.info.status == "FAILED"
