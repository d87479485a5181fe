"""A real search end to end: real Ray, real Optuna, a real MLflow store, read back afterwards."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli

pytestmark = pytest.mark.integration

BUDGET = 0.2
NUM_SAMPLES = 8


def _dominates(a: dict, b: dict) -> bool:
    """Independent of pareto.py: a is no worse in every objective (latency: beyond the pair's noise,
    at least 2%) and better in one."""
    noise = max(max(a["latency_ratio_spread"], 0.02) * a["latency_ratio"],
                max(b["latency_ratio_spread"], 0.02) * b["latency_ratio"])
    no_worse = a["accuracy"] >= b["accuracy"] and a["params_ratio"] <= b["params_ratio"] \
        and a["latency_ratio"] <= b["latency_ratio"] + noise
    better = a["accuracy"] > b["accuracy"] or a["params_ratio"] < b["params_ratio"] \
        or a["latency_ratio"] < b["latency_ratio"] - noise
    return no_worse and better


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """Run one tiny search (MO-ASHA with aggressive halving so some trials are stopped early)."""
    folder = tmp_path_factory.mktemp("search")
    from conftest import TINY_SPACE
    (folder / "tiny.yaml").write_text(TINY_SPACE)
    completed = run_cli("automl_factor.search", "--budget-params", str(BUDGET), "--space", "tiny.yaml",
                        "--num-samples", str(NUM_SAMPLES), "--reduction-factor", "2", "--name", "it",
                        "--cpus-per-trial", "1", "--seed", "3", cwd=folder)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return folder, completed


def _rows(folder: Path) -> list[dict]:
    return pq.read_table(folder / "automl_runs" / "it" / "trials.parquet").to_pylist()


def test_prints_progress_front_and_browse_command(search):
    folder, completed = search
    assert f"{NUM_SAMPLES}/{NUM_SAMPLES} finished" in completed.stdout
    assert "Pareto front:" in completed.stdout
    # This interpreter's mlflow and the absolute store, so the command works from any folder.
    assert f"{sys.executable} -m mlflow ui --backend-store-uri sqlite:///{folder / 'mlflow.db'}" in completed.stdout
    assert "then open http://127.0.0.1:5000/#/experiments/" in completed.stdout
    assert (folder / "automl_runs" / "it" / "front.html").is_file()


def test_parquet_table_is_complete_and_within_budget(search):
    folder, _ = search
    rows = _rows(folder)
    assert len(rows) == NUM_SAMPLES
    assert {row["status"] for row in rows} <= {"complete", "pruned", "failed"}
    assert all(row["status"] != "failed" for row in rows), [row["reason"] for row in rows]
    for row in rows:
        assert 0 < row["params_ratio"] <= BUDGET + 1e-9
        assert row["epochs_trained"] == 3 if row["status"] == "complete" else row["epochs_trained"] < 3
        plan = json.loads(row["plan"])
        assert plan and all(layer["kind"] in ("lowrank", "deep", "dense") for layer in plan.values())
    assert any(row["status"] == "pruned" for row in rows), "MO-ASHA with reduction factor 2 should stop some"
    # The first trial is the paper's recipe: one uniform rank ratio, spectral init, Frobenius decay.
    first = min(rows, key=lambda row: row["started_at"])
    config = json.loads(first["config"])
    assert config["budget_use"] == 1.0 and config["early.kind"] == "lowrank" and config["early.init"] == "spectral"


def test_mlflow_parent_children_and_pareto_tags(search):
    folder, _ = search
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("automl-factor")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parents) == 1 and len(children) == NUM_SAMPLES
    parent = parents[0]
    assert all(run.data.tags["mlflow.parentRunId"] == parent.info.run_id for run in children)
    history = client.get_metric_history(parent.info.run_id, "hypervolume")
    assert len(history) == NUM_SAMPLES and history[-1].value > 0
    assert parent.data.metrics["latency_spread_median_remeasured"] >= 0
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert {"space.yaml", "pareto.json", "front.html", "accuracy_vs_params.png", "accuracy_vs_latency.png"} <= artifacts
    table = json.loads((Path(client.download_artifacts(parent.info.run_id, "pareto.json"))).read_text())
    front_ids = [run.data.tags["automl_factor.trial_id"] for run in children if run.data.tags["pareto"] == "true"]
    assert len(table["data"]) == len(front_ids)  # logged once, not appended to

    complete = [run for run in children if run.data.tags["status"] == "complete"]
    for run in children:
        assert run.data.metrics["params_ratio"] <= BUDGET + 1e-9
        assert run.data.tags["early_stopped"] == str(run.data.tags["status"] == "pruned").lower()
    points = [{key: run.data.metrics[key] for key in ("accuracy", "params_ratio", "latency_ratio",
                                                       "latency_ratio_spread")} for run in complete]
    for run, point in zip(complete, points):
        expected = not any(_dominates(other, point) for other in points)
        assert run.data.tags["pareto"] == str(expected).lower(), (point, points)
    assert all(run.data.tags["pareto"] == "false" for run in children if run.data.tags["status"] != "complete")
    epochs = client.get_metric_history(complete[0].info.run_id, "accuracy")
    assert sorted(m.step for m in epochs) == [1, 2, 3]


def test_pruned_trials_are_pruned_in_the_optuna_study(search):
    folder, _ = search
    rows = _rows(folder)
    study = optuna.load_study(study_name="it", storage=f"sqlite:///{folder / 'automl_runs' / 'it' / 'optuna.db'}")
    # (A proposal that rounds to a plan already trained is told with that plan's outcome, not run.)
    trained = [trial for trial in study.trials if "duplicate_of" not in trial.user_attrs]
    states = [trial.state for trial in trained]
    assert len(trained) == len(rows)
    assert states.count(optuna.trial.TrialState.PRUNED) == sum(row["status"] == "pruned" for row in rows)
    assert states.count(optuna.trial.TrialState.COMPLETE) == sum(row["status"] == "complete" for row in rows)
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert len(trial.values) == 3


def test_exported_model_loads_without_the_package_and_gives_logged_accuracy(search, tmp_path):
    folder, _ = search
    rows = [row for row in _rows(folder) if row["status"] == "complete"]
    row = max(rows, key=lambda r: r["accuracy"])
    out = tmp_path / "model.pt2"
    completed = run_cli("automl_factor.export", "--run-id", row["mlflow_run_id"], "--out", str(out), cwd=folder)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "params" in completed.stdout and "latency" in completed.stdout

    from automl_factor.train import load
    test = load("digits").test
    images = tmp_path / "images.pt"
    import torch
    torch.save({"images": test.images, "labels": test.labels}, images)
    script = (
        "import sys; sys.modules['automl_factor'] = None\n"  # any import of the package would now fail
        "import torch\n"
        f"data = torch.load({str(images)!r}, weights_only=True)\n"
        f"model = torch.export.load({str(out)!r}).module()\n"
        "with torch.no_grad():\n"
        "    predictions = model(data['images'].float() / 255).argmax(1)\n"
        "print((predictions == data['labels']).float().mean().item())\n"
    )
    fresh = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert float(fresh.stdout.strip().splitlines()[-1]) == pytest.approx(row["test_accuracy"], abs=1e-6)


def test_each_plan_trained_once_and_logged_as_trained(search):
    folder, _ = search
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    rows = _rows(folder)
    keys = [row["plan_key"] for row in rows]
    assert all(keys) and len(keys) == len(set(keys))
    row = next(row for row in rows if row["status"] == "complete")
    run = client.get_run(row["mlflow_run_id"])
    layers = json.loads(row["plan_layers"])
    assert run.data.params["plan_key"] == row["plan_key"]
    assert run.data.params["ranks.late"] == ",".join(str(layer["rank"]) for layer in layers if layer["group"] == "late")
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"plan.json", "plan.md", "plan_layers.json"} <= artifacts
    text = Path(client.download_artifacts(run.info.run_id, "plan.md")).read_text()
    assert f"{layers[0]['rank']} / {layers[0]['full_rank']}" in text


def test_each_trial_keeps_the_model_of_the_epoch_it_ended_on(search):
    """Trials checkpoint at the rungs and the last epoch (not every epoch): a stopped trial's
    checkpoint is the model its rung judged, a complete one's the last epoch's."""
    from automl_factor.train.checkpoint import STATE_FILE, read_state

    folder, _ = search
    ended = [row for row in _rows(folder) if row["status"] in ("complete", "pruned")]
    assert {row["status"] for row in ended} == {"complete", "pruned"}
    for row in ended:
        assert read_state(str(Path(row["checkpoint"]) / STATE_FILE))["epoch"] == row["epochs_trained"], row["trial_id"]
