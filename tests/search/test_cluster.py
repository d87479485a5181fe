"""The search on an existing multi-node Ray cluster (two nodes on this machine) via --address."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from ray.cluster_utils import Cluster

from conftest import TINY_SPACE, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture
def two_node_cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def test_search_runs_on_an_existing_cluster(two_node_cluster, tmp_path: Path):
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE)
    completed = run_cli("automl_factor.search", "--address", two_node_cluster.address, "--space", "tiny.yaml",
                        "--num-samples", "3", "--max-epochs", "1", "--scheduler", "fifo", "--name", "c", cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    rows = pq.read_table(tmp_path / "automl_runs" / "c" / "trials.parquet").to_pylist()
    assert [row["status"] for row in rows] == ["complete"] * 3
    # The driver joined the cluster instead of starting its own runtime: the cluster is still up.
    assert len([node for node in two_node_cluster.list_all_nodes() if node.remaining_processes_alive()]) == 2
