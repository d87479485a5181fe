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
