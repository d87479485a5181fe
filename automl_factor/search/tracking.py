"""Tracking on the driver: MLflow parent/child runs, the Parquet trial table, progress lines.

A Ray Tune callback, so workers need no MLflow access. One parent run per search; one child run
per trial (``mlflow.parentRunId``) with its config, per-epoch metrics, final objectives and tags
``status``, ``early_stopped``, ``pareto``. The parent gets a ``hypervolume`` metric stepped as
trials finish, and at the end the tables and plots. The trial table is rewritten as each trial
ends, so an interrupted search leaves everything up to that point. All state is rebuilt from
MLflow and the table in ``setup``, so a resumed search neither loses nor duplicates runs.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from mlflow.entities import Metric  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from ray import tune  # noqa: E402

from .pareto import HV_OBJECTIVES, OBJECTIVES, hypervolume, nondominated, objective_matrix  # noqa: E402

__all__ = ["SearchTracker", "RunFolder", "TRIAL_TAG", "pareto_rows"]

TRIAL_TAG = "automl_factor.trial_id"
EPOCH_METRICS = ("accuracy", "loss", "train_accuracy", "seconds")
FINAL_METRICS = ("accuracy", "test_accuracy", "params_ratio", "latency_ms", "latency_ratio", "flops_ratio", "params")
COLUMNS = ["trial_id", "mlflow_run_id", "status", "reason", "early_stopped", "pareto", "epochs_trained",
           *FINAL_METRICS, "training_seconds", "wall_seconds", "started_at", "finished_at", "config", "plan",
           "checkpoint"]


@dataclass(frozen=True)
class RunFolder:
    """Where a search keeps its tables: a local folder or an object-store URI (via pyarrow.fs)."""

    uri: str

    def _resolve(self, name: str) -> tuple[pafs.FileSystem, str]:
        filesystem, path = pafs.FileSystem.from_uri(self.uri)
        return filesystem, f"{path.rstrip('/')}/{name}"

    def write_table(self, name: str, rows: list[dict]) -> None:
        filesystem, path = self._resolve(name)
        filesystem.create_dir(path.rpartition("/")[0], recursive=True)
        table = pa.Table.from_pylist([{c: row.get(c) for c in COLUMNS} for row in rows], schema=_schema())
        pq.write_table(table, path + ".tmp", filesystem=filesystem)
        filesystem.move(path + ".tmp", path)  # readers never see a half-written table

    def read_table(self, name: str) -> list[dict]:
        filesystem, path = self._resolve(name)
        if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
            return []
        return pq.read_table(path, filesystem=filesystem).to_pylist()


def _schema() -> pa.Schema:
    types = {"early_stopped": pa.bool_(), "pareto": pa.bool_(), "epochs_trained": pa.int64(), "params": pa.int64()}
    floats = {*FINAL_METRICS, "training_seconds", "wall_seconds", "started_at", "finished_at"}
    return pa.schema([(c, types.get(c, pa.float64() if c in floats else pa.string())) for c in COLUMNS])


def pareto_rows(rows: list[dict]) -> list[dict]:
    """The complete (full-budget) trials no other complete trial dominates, most accurate first."""
    front = [row for row in rows if row["status"] == "complete" and row.get("pareto")]
    return sorted(front, key=lambda row: -row["accuracy"])


class SearchTracker(tune.Callback):
    """Logs every trial of one search to MLflow and the Parquet table, and prints progress."""

    def __init__(self, *, tracking_uri: str, experiment_id: str, parent_run_id: str, folder: RunFolder,
                 max_epochs: int, num_samples: int, log=print):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.folder, self.max_epochs, self.num_samples, self.log = folder, max_epochs, num_samples, log
        self._client: MlflowClient | None = None
        self.rows: dict[str, dict] = {}
        self.child_runs: dict[str, str] = {}
        self.epoch_seconds: dict[str, float] = {}
        self.started = time.time()

    def __getstate__(self) -> dict:  # Ray pickles callbacks with the run config; clients don't travel
        state = self.__dict__.copy()
        state["_client"] = None
        state["log"] = print
        return state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # Ray Tune hooks ----------------------------------------------------------------------------

    def setup(self, **info) -> None:
        """Rebuild state from MLflow and the table (a resumed search continues, nothing doubles)."""
        self.rows = {row["trial_id"]: row for row in self.folder.read_table("trials.parquet")}
        runs = self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'",
                                       max_results=10000)
        self.child_runs = {run.data.tags[TRIAL_TAG]: run.info.run_id for run in runs if TRIAL_TAG in run.data.tags}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._child_run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if trial.trial_id in self.rows:
            return
        epoch = int(result.get("epoch", 0))
        self.epoch_seconds[trial.trial_id] = self.epoch_seconds.get(trial.trial_id, 0.0) + result.get("seconds", 0.0)
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(result[key]), now, epoch) for key in EPOCH_METRICS if key in result]
        self.client.log_batch(self._child_run(trial), metrics=metrics)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        full = int(result.get("epoch", 0)) >= self.max_epochs
        self._finish(trial, "complete" if full else "pruned", "", trials)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        reason = str(trial.error_file or "error")
        try:
            reason = trial.get_pickled_error() or reason
        except Exception:  # noqa: BLE001 - best effort: the reason is informational
            pass
        self._finish(trial, "failed", str(reason).strip().splitlines()[-1][:500], trials)

    def on_experiment_end(self, trials, **info) -> None:
        # Trials still running when --time-budget-s ran out get no completion event: record them too.
        for trial in trials:
            if trial.trial_id not in self.rows and trial.last_result:
                full = int(trial.last_result.get("epoch", 0)) >= self.max_epochs
                self._finish(trial, "complete" if full else "pruned", "" if full else "stopped by the time budget",
                             trials)
        self.finalize()

    # Internals ----------------------------------------------------------------------------------

    def _child_run(self, trial) -> str:
        if trial.trial_id not in self.child_runs:
            run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial.trial_id}",
                                         tags={"mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: trial.trial_id,
                                               "status": "running"})
            params = {key: str(value) for key, value in sorted(trial.config.items())}
            self.client.log_batch(run.info.run_id, params=[_param(k, v) for k, v in params.items()])
            self.child_runs[trial.trial_id] = run.info.run_id
        return self.child_runs[trial.trial_id]

    def _finish(self, trial, status: str, reason: str, trials) -> None:
        if trial.trial_id in self.rows:  # already logged before an interruption
            return
        result = trial.last_result or {}
        run_id = self._child_run(trial)
        checkpoint = trial.checkpoint
        row = {
            "trial_id": trial.trial_id, "mlflow_run_id": run_id, "status": status, "reason": reason,
            "early_stopped": status == "pruned", "pareto": False, "epochs_trained": int(result.get("epoch", 0)),
            **{key: result.get(key) for key in FINAL_METRICS},
            "training_seconds": self.epoch_seconds.get(trial.trial_id, 0.0),
            "wall_seconds": result.get("time_total_s"), "started_at": _start_time(result),
            "finished_at": time.time(), "config": json.dumps(trial.config, sort_keys=True),
            "plan": result.get("plan"), "checkpoint": checkpoint.path if checkpoint else None,
        }
        self.rows[trial.trial_id] = row
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(row[key]), now, row["epochs_trained"]) for key in FINAL_METRICS
                   if row[key] is not None and key not in EPOCH_METRICS]  # those are logged every epoch
        metrics.append(Metric("epochs_trained", row["epochs_trained"], now, row["epochs_trained"]))
        self.client.log_batch(run_id, metrics=metrics, tags=[_tag("status", status), _tag("pareto", "false"),
                                                            _tag("early_stopped", str(status == "pruned").lower())])
        if row["plan"]:
            self.client.log_text(run_id, row["plan"], "plan.json")
        if checkpoint:
            self.client.set_tag(run_id, "checkpoint", checkpoint.path)
        self.client.set_terminated(run_id, {"complete": "FINISHED", "pruned": "KILLED"}.get(status, "FAILED"))
        self._update_front()
        self.folder.write_table("trials.parquet", list(self.rows.values()))
        self.log(self.progress_line(trials))

    def _update_front(self) -> None:
        """Re-tag ``pareto`` where membership changed and step the parent's hypervolume."""
        complete = [row for row in self.rows.values() if row["status"] == "complete"]
        mask = nondominated(objective_matrix(complete, OBJECTIVES))
        for row, on_front in zip(complete, mask):
            if row["pareto"] != bool(on_front):
                row["pareto"] = bool(on_front)
                self.client.set_tag(row["mlflow_run_id"], "pareto", str(bool(on_front)).lower())
        front = [row for row in complete if row["pareto"]]
        volume = hypervolume(objective_matrix(front, HV_OBJECTIVES))
        self.client.log_metric(self.parent_run_id, "hypervolume", volume, step=len(self.rows))

    def progress_line(self, trials) -> str:
        counts = {status: sum(row["status"] == status for row in self.rows.values())
                  for status in ("complete", "pruned", "failed")}
        running = sum(t.status == "RUNNING" and t.trial_id not in self.rows for t in trials or [])
        front = pareto_rows(list(self.rows.values()))
        best = (f"front {len(front)} models, best accuracy {front[0]['accuracy']:.3f} at params "
                f"{front[0]['params_ratio']:.3f}, smallest {min(r['params_ratio'] for r in front):.3f}"
                if front else "front empty")
        return (f"[{time.time() - self.started:5.0f}s] {len(self.rows)}/{self.num_samples} finished: "
                f"{counts['complete']} complete, {counts['pruned']} stopped early, {counts['failed']} failed, "
                f"{running} running | {best}")

    def finalize(self) -> None:
        """Front tables and plots on the parent run (also safe to call twice)."""
        rows = list(self.rows.values())
        front = pareto_rows(rows)
        self.folder.write_table("trials.parquet", rows)
        self.folder.write_table("pareto.parquet", front)
        columns = ["trial_id", "accuracy", "test_accuracy", "params_ratio", "latency_ms", "flops_ratio",
                   "mlflow_run_id"]
        self.client.log_table(self.parent_run_id, {c: [row[c] for row in front] for c in columns}, "pareto.json")
        self.client.log_text(self.parent_run_id, _to_json(rows), "trials.json")
        for name, figure in plot_fronts(rows).items():
            self.client.log_figure(self.parent_run_id, figure, name)
            plt.close(figure)


def plot_fronts(rows: list[dict]) -> dict:
    """Accuracy against params and against latency; the front highlighted, early-stopped greyed."""
    complete = [row for row in rows if row["status"] == "complete"]
    figures = {}
    for key, label in (("params_ratio", "parameters (fraction of dense)"), ("latency_ms", "latency (ms)")):
        figure, axes = plt.subplots(figsize=(6, 4))
        for subset, style in ((complete, dict(color="tab:blue", alpha=0.5, label="complete")),
                              ([r for r in complete if r["pareto"]], dict(color="tab:red", label="Pareto front"))):
            if subset:
                axes.scatter([r[key] for r in subset], [r["accuracy"] for r in subset], **style)
        axes.set_xlabel(label)
        axes.set_ylabel("validation accuracy")
        axes.legend(loc="lower right")
        axes.grid(alpha=0.3)
        figure.tight_layout()
        figures[f"accuracy_vs_{key.split('_')[0]}.png"] = figure
    return figures


def _to_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=1, default=lambda value: None if isinstance(value, float) and np.isnan(value)
                      else str(value))


def _start_time(result: dict) -> float | None:
    if "timestamp" in result and "time_total_s" in result:
        return float(result["timestamp"]) - float(result["time_total_s"])
    return None


def _param(key: str, value: str):
    from mlflow.entities import Param
    return Param(key, value[:6000])


def _tag(key: str, value: str):
    from mlflow.entities import RunTag
    return RunTag(key, value)
