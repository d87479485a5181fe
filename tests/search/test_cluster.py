"""The search on an existing multi-node Ray cluster (three nodes on this machine) via --address:
trials spread over the nodes, and a node lost mid-search costs no trial."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster
from ray.tune import ExperimentAnalysis

from conftest import TINY_SPACE, run_cli

pytestmark = pytest.mark.integration
# Trials long enough (seconds, not one) that several train at once, so they need several nodes.
SPACE = TINY_SPACE.replace("train_subset: 400", "train_subset: 1150")


@pytest.fixture
def three_node_cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    # The last node is the deployment target latency is timed on (a custom resource marks it).
    workers = [cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1, resources={"latency_target": 1})]
    cluster.wait_for_nodes()
    yield cluster, workers
    cluster.shutdown()


def _rows(folder: Path) -> list[dict]:
    return pq.read_table(folder / "automl_runs" / "c" / "trials.parquet").to_pylist()


def test_search_spreads_trials_over_an_existing_cluster(three_node_cluster, tmp_path: Path):
    """Trials on all nodes; latency timed on the node with the space's latency.resource only."""
    cluster, workers = three_node_cluster
    (tmp_path / "tiny.yaml").write_text(SPACE + "latency: {resource: latency_target}\n")
    completed = run_cli("automl_factor.search", "--address", cluster.address, "--space", "tiny.yaml",
                        "--num-samples", "4", "--max-epochs", "4", "--scheduler", "fifo", "--name", "c", cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    rows = _rows(tmp_path)
    assert [row["status"] for row in rows] == ["complete"] * 4
    # One CPU per node and per trial: trials overlapping in time ran on different nodes.
    assert len({row["node_id"] for row in rows}) >= 2, [row["node_id"] for row in rows]
    assert {row["latency_node_id"] for row in rows} == {workers[1].node_id}
    # The driver joined the cluster instead of starting its own runtime: the cluster is still up.
    assert len([node for node in cluster.list_all_nodes() if node.remaining_processes_alive()]) == 3


EPOCHS = 10


def test_a_worker_node_lost_mid_search_costs_no_trial(three_node_cluster, tmp_path: Path):
    """A node removed while its trial trains: the trial resumes from its checkpoint on another node;
    4 Ray trials = 4 Parquet rows = 4 MLflow child runs, all complete, none twice. (Checkpoints every
    epoch, so each result reaches the run folder with its trial checkpoint, and the test sees it; 10
    epochs, so a trial is seen mid-way: with 4, trials finishing 2 s apart were all missed once in CI.)"""
    cluster, workers = three_node_cluster
    (tmp_path / "tiny.yaml").write_text(SPACE)
    process = subprocess.Popen(
        [sys.executable, "-m", "automl_factor.search", "--address", cluster.address, "--space", "tiny.yaml",
         "--num-samples", "4", "--max-epochs", str(EPOCHS), "--scheduler", "fifo", "--name", "c",
         "--checkpoint-every-s", "0"],
        cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    # Remove a worker node while a trial trains there, past its first checkpoint (each result names
    # its node). (A trial whose actor is still starting when its node goes is failed by Tune.)
    run_folder, deadline, lost = tmp_path / "automl_runs" / "c", time.time() + 300, None
    while lost is None and time.time() < deadline and process.poll() is None:
        for results in run_folder.glob("trial_*/result.json"):
            last = (results.read_text().strip().splitlines() or ["{}"])[-1]
            result = json.loads(last) if last.endswith("}") else {}
            lost = next((node for node in workers if node.node_id == result.get("node_id")
                         and result.get("epoch", EPOCHS) < EPOCHS - 3), lost)
        time.sleep(0.1)
    if lost is None:
        process.kill()
        pytest.fail(f"no trial seen training on a worker node:\n{process.communicate()[0][-3000:]}")
    cluster.remove_node(lost)
    output = process.communicate(timeout=900)[0]
    assert process.returncode == 0, output[-3000:]
    rows = _rows(tmp_path)
    assert len(rows) == 4 and {row["status"] for row in rows} == {"complete"}, output[-3000:]
    ray_trials = ExperimentAnalysis(str(tmp_path / "automl_runs" / "c")).trials
    assert sorted(t.trial_id for t in ray_trials) == sorted(row["trial_id"] for row in rows)
    assert sum(t.run_metadata.num_failures for t in ray_trials) >= 1, "no trial was on the removed node"
    for trial in ray_trials:  # a restarted trial went on from its checkpoint: no epoch trained twice
        epochs = [json.loads(line)["epoch"] for line in Path(trial.path, "result.json").read_text().splitlines()]
        assert epochs == list(range(1, EPOCHS + 1)), (trial.trial_id, epochs)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("automl-factor").experiment_id], max_results=100)
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert sorted(run.data.tags["automl_factor.trial_id"] for run in children) == sorted(r["trial_id"] for r in rows)
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), steps  # each epoch once, though one trial restarted mid-way


def test_a_latency_resource_no_node_has_is_refused(three_node_cluster, tmp_path: Path):
    cluster, _ = three_node_cluster
    (tmp_path / "tiny.yaml").write_text(SPACE + "latency: {resource: phone}\n")
    completed = run_cli("automl_factor.search", "--address", cluster.address, "--space", "tiny.yaml", "--name", "c",
                        cwd=tmp_path)
    assert completed.returncode == 2, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert completed.stderr.startswith("error: latency.resource 'phone' is on no node") and \
        completed.stderr.count("\n") == 1, completed.stderr
    assert not (tmp_path / "automl_runs" / "c" / "search.json").exists()
