"""A trial the table has but MLflow lacks (an outage outlasted the search) is logged on the next
start of the tracker (``--resume``), once, with how it ended."""
from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from automl_factor.search.tracking import RunFolder, SearchTracker


def test_setup_logs_the_rows_mlflow_missed(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("sync")
    parent = client.create_run(experiment).info.run_id
    folder = RunFolder(str(tmp_path / "search"))
    row = {"trial_id": "t1", "status": "complete", "reason": "", "early_stopped": False, "pareto": True,
           "epochs_trained": 3, "accuracy": 0.75, "params_ratio": 0.05, "latency_ratio": 0.8,
           "config": json.dumps({"budget_use": 0.5}), "finished_at": 1.0}
    folder.write_table("trials.parquet", [row])

    def tracker() -> SearchTracker:
        return SearchTracker(tracking_uri=uri, experiment_id=experiment, parent_run_id=parent, folder=folder,
                             max_epochs=3, num_samples=1, log=lambda line: None)

    first = tracker()
    first.setup()
    assert first.flush(60) == 0
    runs = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["automl_factor.trial_id"] == "t1" and run.data.tags["status"] == "complete"
    assert run.info.status == "FINISHED" and run.data.metrics["accuracy"] == 0.75
    assert run.data.params["budget_use"] == "0.5"

    second = tracker()  # a second start finds MLflow up to date: nothing logged again
    second.setup()
    assert second.flush(60) == 0
    assert len(client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent}'")) == 1
    assert len(client.get_metric_history(run.info.run_id, "accuracy")) == 1


def test_remeasuring_times_the_front_then_whoever_the_new_timings_bring_onto_it(tmp_path: Path):
    """After the search only the front is timed again; a model the new timings let onto the front is
    timed in turn, and a model that stays dominated keeps its in-search timing."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("remeasure")
    parent = client.create_run(experiment).info.run_id

    def row(trial_id: str, accuracy: float, params: float, latency: float, finished: float) -> dict:
        return {"trial_id": trial_id, "status": "complete", "reason": "", "early_stopped": False, "pareto": False,
                "epochs_trained": 3, "accuracy": accuracy, "params_ratio": params, "latency_ratio": latency,
                "latency_ratio_spread": 0.01, "latency_ms": latency, "dense_latency_ms": 1.0,
                "plan_key": trial_id, "latency_remeasured": False, "config": json.dumps({"budget_use": params}),
                "finished_at": finished}

    rows = [row("a", 0.90, 0.05, 0.80, 1.0),   # on the front; re-timed slower than c
            row("b", 0.80, 0.03, 0.80, 2.0),   # on the front (smallest)
            row("c", 0.85, 0.06, 0.85, 3.0),   # dominated by a until a is re-timed
            row("d", 0.70, 0.09, 0.95, 4.0)]   # dominated by a, b and c throughout
    folder = RunFolder(str(tmp_path / "search"))
    folder.write_table("trials.parquet", rows)
    tracker = SearchTracker(tracking_uri=uri, experiment_id=experiment, parent_run_id=parent, folder=folder,
                            max_epochs=3, num_samples=4, log=lambda line: None)
    tracker.setup()
    tracker._update_front(log_hypervolume=False)
    assert {r["trial_id"] for r in tracker.rows.values() if r["pareto"]} == {"a", "b"}

    quiet = {"a": 0.95, "b": 0.78, "c": 0.90}  # "d" is never asked for
    timed = []

    def measure(r: dict) -> dict:
        timed.append(r["trial_id"])
        return {"latency_ratio": quiet[r["trial_id"]], "latency_ratio_spread": 0.01,
                "latency_ms": quiet[r["trial_id"]], "dense_latency_ms": 1.0}

    noise = tracker.remeasure_front(measure)
    assert sorted(timed) == ["a", "b", "c"] and timed[-1] == "c"  # c only once a's new timing let it on
    assert {r["trial_id"] for r in tracker.rows.values() if r["pareto"]} == {"a", "b", "c"}
    assert tracker.rows["d"]["latency_ratio"] == 0.95 and not tracker.rows["d"]["latency_remeasured"]
    assert noise["latency_remeasured_models"] == 3
    assert tracker.flush(60) == 0


def test_epoch_metrics_reach_mlflow_batched_and_whole(tmp_path: Path):
    """Epochs inside one batching interval wait for one call; every epoch's metrics are in MLflow,
    once each, when the trial has ended."""
    from types import SimpleNamespace

    from automl_factor.search.tracking import EPOCH_METRICS

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("batched")
    parent = client.create_run(experiment).info.run_id
    tracker = SearchTracker(tracking_uri=uri, experiment_id=experiment, parent_run_id=parent,
                            folder=RunFolder(str(tmp_path / "search")), max_epochs=6, num_samples=1,
                            log=lambda line: None)
    tracker.setup()
    trial = SimpleNamespace(trial_id="t1", config={"budget_use": 0.5}, checkpoint=None, status="RUNNING")
    results = [{"epoch": epoch, "accuracy": epoch / 10, "loss": 1 / epoch, "train_accuracy": epoch / 9,
                "seconds": 0.5} for epoch in range(1, 7)]
    tracker.on_trial_start(0, [trial], trial)
    for result in results:
        tracker.on_trial_result(0, [trial], trial, result)
    assert len(tracker.unsent_metrics["t1"]) == len(EPOCH_METRICS) * 5  # the first went at once, 5 wait
    trial.last_result = {**results[-1], "params_ratio": 0.05, "latency_ratio": 0.8}
    tracker.on_trial_complete(0, [trial], trial)
    assert tracker.flush(60) == 0 and not tracker.unsent_metrics.get("t1")
    run_id = tracker.child_runs["t1"]
    for key in EPOCH_METRICS:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(r["epoch"], r[key]) for r in results], key
    assert tracker.rows["t1"]["training_seconds"] == 3.0
