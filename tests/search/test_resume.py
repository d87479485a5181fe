"""A stopped search resumes as the same search: nothing finished is rerun or logged twice, trials cut
by the stop are continued, and every record agrees: Ray trials = Parquet rows = MLflow child runs =
finished Optuna trials, nothing left RUNNING."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis

from conftest import TINY_SPACE, run_cli

pytestmark = pytest.mark.integration

NUM_SAMPLES = 4
ARGS = ["--space", "tiny.yaml", "--num-samples", str(NUM_SAMPLES), "--name", "r", "--scheduler", "fifo",
        "--max-epochs", "3"]


def _start(folder: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "automl_factor.search", *ARGS], cwd=folder,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _stop_after(process: subprocess.Popen, needle: str, sig: int) -> str:
    """Send ``sig`` to the driver once a line containing ``needle`` is printed."""
    lines = []
    deadline = time.time() + 300
    for line in process.stdout:
        lines.append(line)
        if needle in line or time.time() > deadline:
            process.send_signal(sig)
            break
    return "".join(lines) + process.communicate(timeout=180)[0]


def _records(folder: Path) -> dict:
    """Every record of search ``r``: Ray's trials, the Parquet rows, the MLflow runs and Optuna's trials."""
    run_folder = folder / "automl_runs" / "r"
    rows = {row["trial_id"]: row for row in pq.read_table(run_folder / "trials.parquet").to_pylist()}
    ray_trials = {trial.trial_id: trial.status for trial in ExperimentAnalysis(str(run_folder)).trials}
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("automl-factor")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    study = optuna.load_study(study_name="r", storage=f"sqlite:///{run_folder / 'optuna.db'}")
    trained = [t for t in study.trials if "duplicate_of" not in t.user_attrs]  # duplicates are told, not run
    return {"rows": rows, "ray": ray_trials, "client": client, "parents": parents, "children": children,
            "optuna": trained}


def _assert_consistent(records: dict) -> None:
    rows, children = records["rows"], records["children"]
    assert sorted(records["ray"]) == sorted(rows), "Ray trials != Parquet rows"
    assert sorted(run.data.tags["automl_factor.trial_id"] for run in children) == sorted(rows), \
        "MLflow child runs != Parquet rows (missing or duplicated)"
    finished = [t for t in records["optuna"] if t.state.is_finished()]
    assert len(finished) == len(records["optuna"]) == len(rows), \
        f"Optuna: {[t.state.name for t in records['optuna']]} for {len(rows)} rows"
    assert {row["status"] for row in rows.values()} <= {"complete", "pruned", "failed"}
    assert [run.info.status for run in children + records["parents"]].count("RUNNING") == 0
    assert records["parents"][0].info.status == "FINISHED"
    for run in children:
        steps = [m.step for m in records["client"].get_metric_history(run.info.run_id, "accuracy")]
        assert len(steps) == len(set(steps)), f"epochs logged twice: {steps}"


def test_ctrl_c_then_the_printed_command_continues_the_same_search(tmp_path: Path):
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE)
    output = _stop_after(_start(tmp_path), f"1/{NUM_SAMPLES} finished", signal.SIGINT)
    assert "--resume --name r" in output, output[-3000:]
    records = _records(tmp_path)
    before = records["rows"]
    cut = [row for row in before.values() if row["status"] == "interrupted"]
    assert cut, "the trials running at Ctrl-C are marked interrupted"
    assert all("interrupted" in row["reason"] for row in cut)
    assert records["parents"][0].info.status == "KILLED"
    assert records["parents"][0].data.tags["automl_factor.status"] == "interrupted"

    # The resume command as printed (no --max-epochs, no --space): the saved settings apply.
    command = output[output.index("Continue the same search with:"):].splitlines()[1].split()
    assert "--max-epochs" not in command
    completed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    records = _records(tmp_path)
    after = records["rows"]
    assert len(after) == NUM_SAMPLES
    _assert_consistent(records)
    for trial_id, row in before.items():
        if row["status"] == "interrupted":  # continued to its end, under the saved 3 epochs
            assert after[trial_id]["status"] == "complete" and after[trial_id]["epochs_trained"] == 3
        else:  # finished trials were not rerun: same rows, same times
            assert after[trial_id]["finished_at"] == row["finished_at"]
            assert after[trial_id]["mlflow_run_id"] == row["mlflow_run_id"]


def test_resume_refuses_flags_that_differ_from_the_saved_search(tmp_path: Path):
    """Flags are checked against search.json before anything starts."""
    run_folder = tmp_path / "automl_runs" / "r"
    run_folder.mkdir(parents=True)
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE)
    from automl_factor.search import SearchOptions
    from automl_factor.search.saved import saved_form
    saved = saved_form(SearchOptions(space=str(tmp_path / "tiny.yaml"), max_epochs=3, num_samples=4, name="r"))
    (run_folder / "search.json").write_text(json.dumps({"experiment_id": "0", "parent_run_id": "x",
                                                        "options": saved}))
    completed = run_cli("automl_factor.search", "--resume", "--name", "r", "--max-epochs", "5", "--seed", "3",
                        "--checkpoint-every-s", "5", cwd=tmp_path, timeout=120)
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.count("\n") == 1
    assert "--max-epochs 5 (saved: 3)" in completed.stderr and "--seed 3 (saved: 0)" in completed.stderr
    assert "--checkpoint-every-s" not in completed.stderr  # how often to checkpoint is the resume command's choice
    assert sorted(p.name for p in run_folder.iterdir()) == ["search.json"]
    assert not (tmp_path / "mlflow.db").exists()


def test_driver_killed_then_resume_loses_nothing(tmp_path: Path):
    """kill -9 of the driver (no handler runs), then --resume: every record ends consistent."""
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE)
    process = _start(tmp_path)
    output = _stop_after(process, f"1/{NUM_SAMPLES} finished", signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL, output[-2000:]
    os.killpg(process.pid, signal.SIGKILL)  # the Ray processes the driver started (its session)
    time.sleep(2)
    completed = run_cli("automl_factor.search", "--resume", "--name", "r", cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    records = _records(tmp_path)
    assert len(records["rows"]) == NUM_SAMPLES
    _assert_consistent(records)
    assert all(row["epochs_trained"] == 3 for row in records["rows"].values())
