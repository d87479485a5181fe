"""``python -m automl_factor.train --mlflow-uri``: the run, its metrics and the saved model, read back."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient


def _train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "automl_factor.train", "--model", "resnet20", "--dataset", "digits",
                           "--train-subset", "200", "--epochs", "1", "--batch-size", "64", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


def test_train_logs_its_run_and_model_to_mlflow(tmp_path: Path) -> None:
    completed = _train("--out", "model", "--mlflow-uri", "sqlite:///mlflow.db", "--experiment", "t", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    printed = float(next(line for line in completed.stdout.splitlines() if line.startswith("test accuracy"))
                    .split()[-1].rstrip("%")) / 100
    assert abs(run.data.metrics["test_accuracy"] - printed) < 1e-4
    assert run.data.params["rank_ratio"] == "0.1" and run.info.run_name.startswith("train·resnet20·lowrank·p0.")
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} == {"model/state.pt", "model/trial.json"}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_accuracy")] == [1]


def test_an_unusable_tracking_uri_stops_before_training(tmp_path: Path) -> None:
    completed = _train("--mlflow-uri", "nope://tracking", cwd=tmp_path)
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert completed.returncode == 2 and lines[-1].startswith("error: --mlflow-uri"), completed.stderr[-2000:]
    assert "epoch" not in completed.stdout
