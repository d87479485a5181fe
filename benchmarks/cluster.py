"""Cluster benchmark: trials per hour with 1, 2 and 3 Ray nodes, the same search on each.

Starts a ``ray.cluster_utils.Cluster`` (a head plus N-1 worker nodes, ``--cpus-per-node`` CPUs each,
all on this machine), runs the real command line against it with ``--address``, and reads the trial
table back: trials per hour over the span from the first trial's start to the last one's end (the
driver's start-up is left out), and how many distinct nodes trained. On a real cluster the nodes are
machines; here they share this machine's cores, so past its core count more nodes cannot help, and
the table says so.

    python benchmarks/cluster.py                    # 1/2/3 nodes x 1 CPU, 9 trials x 12 epochs (~3 min on 2 cores)
    python benchmarks/cluster.py --nodes 1 2 --trials 4 --max-epochs 2   # smoke test
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import _common  # noqa: F401  (puts the repo on sys.path)
import pyarrow.parquet as pq

from _common import REPO, machine, markdown_table, write_json

SPACE = """
model: resnet20
model_kwargs: {width_multiplier: 0.5}
data: {name: digits, val_fraction: 0.2, train_subset: 1150}
recipe: {lr: 0.05, batch_size: 64}
budget_use: [0.3, 1.0]
groups:
  - name: all
    layers: ["layer*"]
    kinds: [lowrank, deep]
"""


def run_on_cluster(nodes: int, args, folder: Path) -> dict:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.cpus_per_node,
                                                            "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=args.cpus_per_node)
    cluster.wait_for_nodes()
    try:
        (folder / "space.yaml").write_text(SPACE)
        command = [sys.executable, "-m", "automl_factor.search", "--address", cluster.address, "--space", "space.yaml",
                   "--num-samples", str(args.trials), "--max-epochs", str(args.max_epochs), "--scheduler", "fifo",
                   "--name", "bench", "--seed", str(args.seed)]
        completed = subprocess.run(command, cwd=folder, capture_output=True, text=True,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
        if completed.returncode != 0:
            raise SystemExit(f"search on {nodes} node(s) failed:\n{completed.stdout[-2000:]}{completed.stderr[-2000:]}")
    finally:
        cluster.shutdown()
    rows = pq.read_table(folder / "automl_runs" / "bench" / "trials.parquet").to_pylist()
    span_s = max(row["finished_at"] for row in rows) - min(row["started_at"] for row in rows)
    return {"nodes": nodes, "trials": len(rows), "span_s": span_s, "trials_per_hour": 3600 * len(rows) / span_s,
            "nodes_used": len({row["node_id"] for row in rows})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--trials", type=int, default=9)
    parser.add_argument("--max-epochs", type=int, default=12)  # trials of ~5 s: long enough to overlap
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "cluster")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for nodes in args.nodes:
        with tempfile.TemporaryDirectory() as folder:
            results.append(run_on_cluster(nodes, args, Path(folder)))
        print(f"{nodes} node(s): {results[-1]['trials_per_hour']:.0f} trials/hour "
              f"({results[-1]['nodes_used']} nodes trained)", flush=True)
    base = results[0]["trials_per_hour"]
    table = markdown_table(["nodes", "CPUs", "trials", "span s", "trials/hour", "vs first", "nodes that trained"],
                           [[r["nodes"], r["nodes"] * args.cpus_per_node, r["trials"], r["span_s"],
                             r["trials_per_hour"], r["trials_per_hour"] / base, r["nodes_used"]] for r in results])
    text = f"Machine: {machine()}\n\n{table}\n"
    print(text)
    (args.out / "cluster.md").write_text(text)
    write_json(args.out / "cluster.json", {"machine": machine(), "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
