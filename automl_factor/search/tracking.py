"""Tracking on the driver: MLflow parent/child runs, the Parquet trial table, progress lines.

A Ray Tune callback, so workers need no MLflow access. One parent run per search; one child run
per trial (``mlflow.parentRunId``) with its config, per-epoch metrics, final objectives and tags
``status``, ``early_stopped``, ``pareto``. The parent gets a ``hypervolume`` metric stepped as
trials finish, and at the end the tables and plots. The trial table is rewritten as each trial
ends, so an interrupted search leaves everything up to that point. All state is rebuilt from
MLflow and the table in ``setup``, so a resumed search neither loses nor duplicates runs.

Made to read at a glance in the MLflow UI: a trial stopped early by the scheduler is a finished run
(status FINISHED, tag ``early_stopped=true``), not a killed one; a trial's run is named after the
model once it ends (``lr·SI+FD·p0.094·acc0.990·<trial id>``, ``★`` on the front; the stable key is
the tag ``automl_factor.trial_id``); the parent run's description holds the front table and the
export command, and its artifacts the interactive ``front.html``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

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

from .pareto import (NAMES, hypervolume, hypervolume_matrix, nondominated, objective_matrix,  # noqa: E402
                     tolerance_matrix)
from .pick import (Search, export_command, knee, model_name, plan_label, plan_summary,  # noqa: E402
                   python_command)
from .mlflow_queue import MlflowQueue  # noqa: E402
from .plots import front_html, front_pngs  # noqa: E402
from .trainable import FAILED_REASON  # noqa: E402

__all__ = ["SearchTracker", "RunFolder", "ChildRuns", "TRIAL_TAG", "FRONT_HTML", "pareto_rows", "front_mask",
           "unique_complete", "search_hypervolume", "hypervolume_history", "plan_markdown", "front_runs_path",
           "front_markdown"]

TRIAL_TAG = "automl_factor.trial_id"
FRONT_HTML = "front.html"  # next to pareto.parquet, and on the parent run
EPOCH_METRICS = ("accuracy", "loss", "train_accuracy", "seconds")
EPOCH_METRICS_EVERY_S = 5.0  # a trial's epoch metrics reach MLflow in batches at most this far apart
# The objectives first (what decides), then what is reported alongside (latency_ms never decides).
FINAL_METRICS = tuple(dict.fromkeys((*NAMES, "test_accuracy", "latency_ratio_spread", "latency_ms",
                                     "dense_latency_ms", "flops_ratio", "params",
                                     "zero_shot_accuracy",  # compressing a trained model: before fine-tuning
                                     "compile_seconds")))
# How a trial ended. ``interrupted``: cut by a stop (Ctrl-C, a crash, the time budget) before its
# end; --resume continues it and its row is then rewritten with how it really ended.
FINAL_STATUSES = ("complete", "pruned", "failed")
STATUSES = (*FINAL_STATUSES, "interrupted")
TIME_BUDGET_REASON = "stopped by the time budget"
COLUMNS = ["trial_id", "mlflow_run_id", "status", "reason", "early_stopped", "pareto", "plan_key", "epochs_trained",
           *FINAL_METRICS, "latency_remeasured", "node_id", "latency_node_id", "training_seconds", "wall_seconds",
           "started_at", "finished_at",
           "config", "plan", "plan_layers", "checkpoint"]


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

    def write_text(self, name: str, text: str) -> None:
        filesystem, path = self._resolve(name)
        filesystem.create_dir(path.rpartition("/")[0], recursive=True)
        with filesystem.open_output_stream(path + ".tmp") as stream:
            stream.write(text.encode())
        filesystem.move(path + ".tmp", path)

    def search(self, rows: list[dict]) -> Search:
        """This folder as ``pick.Search`` (for export commands): storage is the folder above."""
        storage, _, name = self.uri.rstrip("/").rpartition("/")
        return Search(name=name, storage=storage, uri=self.uri, rows=rows)

    def read_table(self, name: str) -> list[dict]:
        filesystem, path = self._resolve(name)
        if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
            return []
        return pq.read_table(path, filesystem=filesystem).to_pylist()


def _schema() -> pa.Schema:
    types = {"early_stopped": pa.bool_(), "pareto": pa.bool_(), "latency_remeasured": pa.bool_(),
             "epochs_trained": pa.int64(), "params": pa.int64()}
    floats = {*FINAL_METRICS, "training_seconds", "wall_seconds", "started_at", "finished_at"}
    return pa.schema([(c, types.get(c, pa.float64() if c in floats else pa.string())) for c in COLUMNS])


def pareto_rows(rows: list[dict]) -> list[dict]:
    """The complete (full-budget) trials no other complete trial dominates, most accurate first."""
    front = [row for row in rows if row["status"] == "complete" and row.get("pareto")]
    return sorted(front, key=lambda row: -row["accuracy"])


def unique_complete(rows: list[dict]) -> list[dict]:
    """Complete trials, one per plan (the first to finish): each model counts once."""
    seen, unique = set(), []
    for row in sorted(rows, key=lambda row: row.get("finished_at") or 0.0):
        key = row.get("plan_key") or row.get("plan") or id(row)
        if row["status"] == "complete" and key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


def front_mask(rows: list[dict]) -> np.ndarray:
    """Which of ``rows`` are on the front: ε-non-dominated over ``pareto.OBJECTIVES``."""
    return nondominated(objective_matrix(rows), tolerance_matrix(rows))


def search_hypervolume(rows: list[dict], budget: float) -> float:
    """Hypervolume of all complete trials (not just the tagged front) in normalized coordinates."""
    return hypervolume(hypervolume_matrix(unique_complete(rows), budget))


def hypervolume_history(rows: list[dict], budget: float) -> list[tuple[float, float]]:
    """(seconds since the first trial started, hypervolume of the complete trials finished by then),
    one point per finished trial."""
    done = sorted((row for row in rows if row.get("finished_at")), key=lambda row: row["finished_at"])
    if not done:
        return []
    start = min(row.get("started_at") or row["finished_at"] for row in done)
    return [(row["finished_at"] - start, search_hypervolume(done[:index + 1], budget))
            for index, row in enumerate(done)]


def front_runs_path(experiment_id: str, parent_run_id: str) -> str:
    """The MLflow UI's runs table (training runs, not the GenAI overview) filtered to the front of
    one search, as the URL fragment after the server's address."""
    query = urlencode({"workflowType": "machine_learning",
                       "searchFilter": f"tags.pareto = 'true' and tags.mlflow.parentRunId = '{parent_run_id}'",
                       "orderByKey": "metrics.`accuracy`", "orderByAsc": "false"}, quote_via=quote)
    return f"/#/experiments/{experiment_id}/runs?{query}"


def front_markdown(search: Search, rows: list[dict], *, budget: float, max_epochs: int,
                   experiment_id: str | None = None, parent_run_id: str | None = None) -> str:
    """The parent run's description: counts, the front as a table, and the commands that export
    its knee, list it, and browse the Optuna study."""
    counts = {status: sum(row["status"] == status for row in rows) for status in STATUSES}
    front = pareto_rows(rows)
    interrupted = f", {counts['interrupted']} interrupted (continue with --resume)" if counts["interrupted"] else ""
    lines = [f"**Search `{search.name}`**: {len(rows)} trials, {counts['complete']} complete, {counts['pruned']} "
             f"stopped early (finished runs tagged `early_stopped=true`), {counts['failed']} failed{interrupted}. "
             f"**Front: {len(front)} models** (3-D: {', '.join(NAMES)}; in a 2-D view a front model may look "
             f"dominated), hypervolume {search_hypervolume(rows, budget):.4f}.", ""]
    if experiment_id and parent_run_id:
        lines += [f"[The front in the runs table]({front_runs_path(experiment_id, parent_run_id)[1:]}) · "
                  f"interactive plot: artifact `{FRONT_HTML}`", ""]
    if front:
        headers = ["trial", "model", "val acc", "params", "latency × dense", "test acc", "FLOPs", "plan"]
        lines += ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
        for row in front:
            test = row.get("test_accuracy")
            lines.append(f"| {row['trial_id']} | {model_name(row, max_epochs=max_epochs)} | {row['accuracy']:.4f} | "
                         f"{row['params_ratio']:.4f} | {row['latency_ratio']:.2f} | "
                         f"{'-' if test is None or np.isnan(test) else f'{test:.4f}'} | {row['flops_ratio']:.3f} | "
                         f"{plan_summary(row.get('plan'))} |")
        chosen = knee(front)
        lines += ["", f"Export the knee of the front (trial {chosen['trial_id']}):", "",
                  f"    {export_command(search, chosen)}", "",
                  "Every model with its export command:", "",
                  f"    {python_command()} -m automl_factor.show {search.name} --storage-path {search.storage}"]
    if "://" not in search.uri:
        lines += ["", "The Optuna study (pip install optuna-dashboard):", "",
                  f"    optuna-dashboard sqlite:///{search.uri}/optuna.db"]
    return "\n".join(lines) + "\n"


def plan_markdown(layers: list[dict]) -> str:
    """The trained plan as a readable table: layer, group, kind, rank / full rank, params."""
    lines = ["| layer | group | kind | rank / full rank | params (dense) |", "| --- | --- | --- | --- | --- |"]
    for layer in layers:
        rank = "-" if layer["rank"] is None else f"{layer['rank']} / {layer['full_rank']}"
        lines.append(f"| {layer['layer']} | {layer['group']} | {layer['kind']} ({layer['layout']}) | {rank} | "
                     f"{layer['params']:,} ({layer['dense_params']:,}) |")
    return "\n".join(lines) + "\n"


def group_ranks(layers: list[dict]) -> dict[str, str]:
    """``ranks.<group>``: the trained ranks of a group's layers, in layer order ("dense" for dense)."""
    groups: dict[str, list[str]] = {}
    for layer in layers:
        groups.setdefault(layer["group"], []).append("dense" if layer["rank"] is None else str(layer["rank"]))
    return {f"ranks.{group}": ",".join(ranks) for group, ranks in groups.items()}


class SearchTracker(tune.Callback):
    """Logs every trial of one search to MLflow and the Parquet table, and prints progress."""

    def __init__(self, *, tracking_uri: str, experiment_id: str, parent_run_id: str, folder: RunFolder,
                 max_epochs: int, num_samples: int, budget: float = 1.0, finalize_on_end: bool = True,
                 time_budget_s: float | None = None, log=print):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.folder, self.max_epochs, self.num_samples, self.log = folder, max_epochs, num_samples, log
        self.budget, self.finalize_on_end, self.time_budget_s = budget, finalize_on_end, time_budget_s
        self.logged_epochs: dict[str, int] = {}  # trial id -> last epoch whose metrics MLflow has
        self._client: MlflowClient | None = None
        self._mlflow: MlflowQueue | None = None
        self.rows: dict[str, dict] = {}
        self.child_runs: dict[str, str] = {}
        self.epoch_seconds: dict[str, float] = {}
        self.unsent_metrics: dict[str, list[Metric]] = {}  # trial id -> epoch metrics not yet queued
        self.metrics_sent_at: dict[str, float] = {}  # trial id -> time.monotonic() of its last batch
        self.started = time.time()

    def __getstate__(self) -> dict:  # Ray pickles callbacks with the run config; clients don't travel
        state = self.__dict__.copy()
        state["_client"] = None
        state["_mlflow"] = None
        state["log"] = print
        return state

    @property
    def client(self) -> MlflowClient:
        """For reading MLflow, in ``setup`` only; every write goes through ``mlflow``."""
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    @property
    def mlflow(self) -> MlflowQueue:
        """MLflow writes, made in order off the Tune loop and retried through an outage."""
        if self._mlflow is None:
            self._mlflow = MlflowQueue(self.tracking_uri, log=self.log)
        return self._mlflow

    def flush(self, timeout_s: float = 300.0) -> int:
        """Wait (bounded) for MLflow to have every update; return how many are still waiting."""
        return self.mlflow.flush(timeout_s) if self._mlflow is not None else 0

    # Ray Tune hooks ----------------------------------------------------------------------------

    def setup(self, **info) -> None:
        """Rebuild state from MLflow and the table (a resumed search continues, nothing doubles)."""
        self.rows = {row["trial_id"]: row for row in self.folder.read_table("trials.parquet")}
        self.started = time.time()
        try:
            runs = self.client.search_runs([self.experiment_id],
                                           filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'",
                                           max_results=10000)
        except Exception as error:  # noqa: BLE001 - MLflow down: go on from the table, catch up later
            self.log(f"MLflow at {self.tracking_uri} unreachable ({type(error).__name__}); going on from the "
                     f"trial table, MLflow catches up when it is back")
            self.child_runs = {tid: row["mlflow_run_id"] for tid, row in self.rows.items() if row["mlflow_run_id"]}
            return
        self.child_runs = {run.data.tags[TRIAL_TAG]: run.info.run_id for run in runs if TRIAL_TAG in run.data.tags}
        # Trials the table has as ended but MLflow not (an outage outlasted the last attempt): sync them.
        ended = {run.data.tags[TRIAL_TAG] for run in runs if run.info.status != "RUNNING" and TRIAL_TAG in run.data.tags}
        for trial_id, row in self.rows.items():
            if self._final(trial_id) and trial_id not in ended:
                self._log_final(row, with_epoch_metrics=trial_id not in self.child_runs)
        # Trials a stop cut short continue: their epochs so far are in MLflow (a trial restored from
        # an older checkpoint repeats epochs, which are not logged twice) and their training time.
        for trial_id, run_id in self.child_runs.items():
            if self._final(trial_id):
                continue
            try:
                steps = [metric.step for metric in self.client.get_metric_history(run_id, "accuracy")]
            except Exception:  # noqa: BLE001 - MLflow down: an epoch may then be logged twice, not lost
                steps = []
            self.logged_epochs[trial_id] = max(steps, default=0)
            if trial_id in self.rows:
                self.epoch_seconds[trial_id] = self.rows[trial_id].get("training_seconds") or 0.0

    def _final(self, trial_id: str) -> bool:
        """Whether the trial has ended for good (its row is not rewritten)."""
        return trial_id in self.rows and self.rows[trial_id]["status"] in FINAL_STATUSES

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._on_run(trial.trial_id, trial.config, lambda client, run_id: None)  # its run, created now
        if trial.trial_id in self.rows and not self._final(trial.trial_id):  # interrupted, now continued
            self._on_run(trial.trial_id, trial.config, lambda client, run_id: client.update_run(run_id, "RUNNING"))
            self._on_run(trial.trial_id, trial.config,
                         lambda client, run_id: client.set_tag(run_id, "status", "running"))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if self._final(trial.trial_id):
            return
        epoch = int(result.get("epoch", 0))
        if epoch <= self.logged_epochs.get(trial.trial_id, 0) or FAILED_REASON in result:
            return  # an epoch repeated after a restore from a checkpoint, or the one that diverged
        self.logged_epochs[trial.trial_id] = epoch
        self.epoch_seconds[trial.trial_id] = self.epoch_seconds.get(trial.trial_id, 0.0) + result.get("seconds", 0.0)
        now = int(time.time() * 1000)
        self.unsent_metrics.setdefault(trial.trial_id, []).extend(
            Metric(key, float(result[key]), now, epoch) for key in EPOCH_METRICS if key in result)
        if time.monotonic() - self.metrics_sent_at.get(trial.trial_id, -EPOCH_METRICS_EVERY_S) >= EPOCH_METRICS_EVERY_S:
            self._send_epoch_metrics(trial.trial_id, trial.config)

    def _send_epoch_metrics(self, trial_id: str, config: dict) -> None:
        """Queue the trial's epoch metrics gathered so far as one MLflow batch: one call per epoch
        cost the default search 2 s of the driver's CPU (sqlite store), on the trials' 2 cores."""
        metrics = self.unsent_metrics.pop(trial_id, [])
        self.metrics_sent_at[trial_id] = time.monotonic()
        if metrics:
            self._on_run(trial_id, config, lambda client, run_id: client.log_batch(run_id, metrics=metrics))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        if FAILED_REASON in result:  # ended by the trial itself (it diverged), not by the scheduler
            return self._finish(trial, "failed", result[FAILED_REASON], trials)
        full = int(result.get("epoch", 0)) >= self.max_epochs
        self._finish(trial, "complete" if full else "pruned", "", trials)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, "failed", failure_reason(trial), trials)

    def on_experiment_end(self, trials, **info) -> None:
        # Trials a stop cut short get no completion event: each gets a row (and a run), ``interrupted``.
        out_of_time = self.time_budget_s is not None and time.time() - self.started >= self.time_budget_s
        reason = TIME_BUDGET_REASON if out_of_time else "the search was interrupted"
        for trial in trials:
            # (Ray has already marked them TERMINATED while stopping their actors, so status says nothing.)
            if not self._final(trial.trial_id):
                self._finish(trial, "interrupted", f"{reason}; --resume continues it", trials)
        if self.finalize_on_end:  # else the caller finalizes once, after re-measuring the front
            self.finalize()
        else:
            self.flush()  # MLflow catches up (bounded) before the driver goes on

    # Internals ----------------------------------------------------------------------------------

    def _run_of(self, client: MlflowClient, trial_id: str, config: dict) -> str:
        """(On the MLflow queue's thread.) The trial's child run, created with its config at first."""
        if trial_id not in self.child_runs:
            run = client.create_run(self.experiment_id, run_name=f"trial-{trial_id}",
                                    tags={"mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: trial_id,
                                          "status": "running"})
            params = {key: str(value) for key, value in sorted(config.items())}
            client.log_batch(run.info.run_id, params=[_param(k, v) for k, v in params.items()])
            self.child_runs[trial_id] = run.info.run_id
        if trial_id in self.rows:
            self.rows[trial_id]["mlflow_run_id"] = self.child_runs[trial_id]
        return self.child_runs[trial_id]

    def _on_run(self, trial_id: str, config: dict, call) -> None:
        """Queue ``call(client, run_id)`` on the trial's child run (one MLflow call each, so a retry
        after an outage repeats nothing that already went through)."""
        config = dict(config)
        self.mlflow.submit(lambda client: call(client, self._run_of(client, trial_id, config)))

    def _finish(self, trial, status: str, reason: str, trials) -> None:
        if self._final(trial.trial_id):  # already logged before an interruption
            return
        self._send_epoch_metrics(trial.trial_id, trial.config)
        result = trial.last_result or {}
        checkpoint = trial.checkpoint
        row = {
            "trial_id": trial.trial_id, "mlflow_run_id": self.child_runs.get(trial.trial_id), "status": status,
            "reason": reason, "early_stopped": status == "pruned", "pareto": False, "plan_key": result.get("plan_key"),
            "epochs_trained": int(result.get("epoch", 0)), **{key: result.get(key) for key in FINAL_METRICS},
            "latency_remeasured": False, "plan_layers": result.get("plan_layers"), "node_id": result.get("node_id"),
            "latency_node_id": result.get("latency_node_id"),
            "training_seconds": self.epoch_seconds.get(trial.trial_id, 0.0),
            "wall_seconds": result.get("time_total_s"), "started_at": _start_time(result),
            "finished_at": time.time(), "config": json.dumps(trial.config, sort_keys=True),
            "plan": result.get("plan"), "checkpoint": checkpoint.path if checkpoint else None,
        }
        self.rows[trial.trial_id] = row
        self._log_final(row)
        self._update_front()
        self.folder.write_table("trials.parquet", list(self.rows.values()))
        self.log(self.progress_line(trials, row))

    def _log_final(self, row: dict, with_epoch_metrics: bool = False) -> None:
        """Queue how a trial ended for its MLflow run: final metrics, tags, the plan, its status.
        The per-epoch ones too (their last value) for a run MLflow never saw."""
        now, status, epochs = int(time.time() * 1000), row["status"], row["epochs_trained"]
        metrics = [Metric(key, float(row[key]), now, epochs) for key in FINAL_METRICS
                   if row.get(key) is not None and (with_epoch_metrics or key not in EPOCH_METRICS)]
        metrics.append(Metric("epochs_trained", epochs, now, epochs))
        tags = [_tag("status", status), _tag("pareto", str(bool(row.get("pareto"))).lower()),
                _tag("early_stopped", str(status == "pruned").lower())]
        tags += [_tag(key, row[column]) for key, column in (("checkpoint", "checkpoint"), ("ray_node_id", "node_id"))
                 if row.get(column)]
        calls = [lambda client, run_id: client.log_batch(run_id, metrics=metrics, tags=tags)]
        if row["plan"]:
            calls.append(lambda client, run_id: client.log_text(run_id, row["plan"], "plan.json"))
        if row["plan_layers"]:
            layers = json.loads(row["plan_layers"])
            params = [_param(k, v) for k, v in {"plan_key": row["plan_key"] or "", **group_ranks(layers)}.items()]
            table = {key: [layer[key] for layer in layers] for key in layers[0]}
            calls += [lambda client, run_id: client.log_batch(run_id, params=params),
                      lambda client, run_id: client.log_text(run_id, plan_markdown(layers), "plan.md"),
                      lambda client, run_id: client.log_table(run_id, table, "plan_layers.json")]
        # Stopped early is a decision of the scheduler, not a failure: FINISHED, told apart by the tag.
        run_status = {"failed": "FAILED", "interrupted": "KILLED"}.get(status, "FINISHED")
        calls += [lambda client, run_id: client.update_run(run_id, name=model_name(row, max_epochs=self.max_epochs)),
                  lambda client, run_id: client.set_terminated(run_id, run_status)]
        config = json.loads(row["config"]) if row.get("config") else {}
        for call in calls:
            self._on_run(row["trial_id"], config, call)

    def _update_front(self, log_hypervolume: bool = True) -> None:
        """Re-tag ``pareto`` where membership changed (one row per plan) and step the parent's
        hypervolume over all complete trials."""
        unique = unique_complete(list(self.rows.values()))
        on_front = {row["trial_id"] for row, member in zip(unique, front_mask(unique)) if member}
        for row in self.rows.values():
            member = row["trial_id"] in on_front
            if row["pareto"] != member:
                row["pareto"] = member
                config, name = json.loads(row["config"]), model_name(row, max_epochs=self.max_epochs)
                self._on_run(row["trial_id"], config,
                             lambda client, run_id, tag=str(member).lower(): client.set_tag(run_id, "pareto", tag))
                self._on_run(row["trial_id"], config,
                             lambda client, run_id, name=name: client.update_run(run_id, name=name))
        if log_hypervolume:
            value, step = search_hypervolume(list(self.rows.values()), self.budget), len(self.rows)
            self.mlflow.submit(lambda client: client.log_metric(self.parent_run_id, "hypervolume", value, step=step))

    def remeasure_front(self, measure, max_passes: int = 5) -> dict:
        """Re-measure latency with ``measure(row) -> dict`` on a quiet machine (all trials done) and
        recompute the front: its members, then any model the new timings bring onto it, until every
        member has been re-measured (at most ``max_passes`` rounds). Models off the front keep their
        in-search timing: they are not shown as results, and timing them all cost the default search
        as much as 4 s of its end. Returns the median latency spread during the search and after."""
        unique = unique_complete(list(self.rows.values()))
        during = [row["latency_ratio_spread"] for row in unique if row.get("latency_ratio_spread") is not None]
        for _ in range(max_passes):
            todo = [row for row in pareto_rows(unique) if not row.get("latency_remeasured")]
            if not todo:
                break
            for row in todo:
                row.update(measure(row), latency_remeasured=True)
                now = int(time.time() * 1000)
                metrics = [Metric(key, float(row[key]), now, row["epochs_trained"])
                           for key in ("latency_ratio", "latency_ratio_spread", "latency_ms", "dense_latency_ms")]
                self._on_run(row["trial_id"], json.loads(row["config"]), lambda client, run_id, metrics=metrics:
                             client.log_batch(run_id, metrics=metrics, tags=[_tag("latency_remeasured", "true")]))
            self._update_front(log_hypervolume=False)
        remeasured = [row["latency_ratio_spread"] for row in self.rows.values() if row.get("latency_remeasured")]
        noise = {"latency_spread_median_search": float(np.median(during)) if during else float("nan"),
                 "latency_spread_median_remeasured": float(np.median(remeasured)) if remeasured else float("nan"),
                 "latency_remeasured_models": float(len(remeasured))}
        metrics = [Metric(k, v, int(time.time() * 1000), 0) for k, v in noise.items() if np.isfinite(v)]
        metrics.append(Metric("hypervolume_final", search_hypervolume(list(self.rows.values()), self.budget),
                              int(time.time() * 1000), 0))
        self.mlflow.submit(lambda client: client.log_batch(self.parent_run_id, metrics=metrics))
        return noise

    def progress_line(self, trials, row: dict | None = None) -> str:
        """One line per finished trial: which trial, how it ended and its objectives, then the search."""
        counts = {status: sum(row["status"] == status for row in self.rows.values())
                  for status in STATUSES}
        running = sum(t.status == "RUNNING" and not self._final(t.trial_id) for t in trials or [])
        finished = sum(counts[status] for status in FINAL_STATUSES)
        front = pareto_rows(list(self.rows.values()))
        best = (f"front {len(front)} models, best accuracy {front[0]['accuracy']:.3f} at params "
                f"{front[0]['params_ratio']:.3f}, smallest {min(r['params_ratio'] for r in front):.3f}"
                if front else "front empty")
        trial = f" | {_trial_summary(row, self.max_epochs)}" if row else ""
        return (f"[{time.time() - self.started:5.0f}s] {finished}/{self.num_samples} finished{trial} | "
                f"{counts['complete']} complete, {counts['pruned']} stopped early, {counts['failed']} failed, "
                + (f"{counts['interrupted']} interrupted, " if counts["interrupted"] else "") +
                f"{running} running | {best}")

    def finalize(self, timeout_s: float = 300.0) -> int:
        """Front tables and plots on the parent run (overwritten when called again, e.g. on resume).
        Waits (up to ``timeout_s``) for MLflow to catch up; returns the updates it still lacks."""
        self.flush(timeout_s)  # first the child runs, so the tables carry their run ids
        for trial_id, row in self.rows.items():  # (a run created after its trial's row was written)
            row["mlflow_run_id"] = row.get("mlflow_run_id") or self.child_runs.get(trial_id)
        rows = list(self.rows.values())
        front = pareto_rows(rows)
        self.folder.write_table("trials.parquet", rows)
        self.folder.write_table("pareto.parquet", front)
        columns = ["trial_id", *NAMES, "latency_ratio_spread", "test_accuracy", "latency_ms", "flops_ratio",
                   "plan_key", "mlflow_run_id"]
        # log_dict overwrites (log_table would append to the table of an earlier, interrupted finalize)
        table = {"columns": columns, "data": [[row[c] for c in columns] for row in front]}
        parent = self.parent_run_id
        self.mlflow.submit(lambda client: client.log_dict(parent, table, "pareto.json"))
        self.mlflow.submit(lambda client: client.log_text(parent, _to_json(rows), "trials.json"))
        search = self.folder.search(rows)
        title = (f"search {search.name}: {len(front)} models on the front of {len(rows)} trials "
                 f"(budget {self.budget:g} of the dense parameters)")
        page = front_html(rows, budget=self.budget, hypervolume=hypervolume_history(rows, self.budget),
                          export_command=lambda row: export_command(search, row), title=title,
                          max_epochs=self.max_epochs)
        self.folder.write_text(FRONT_HTML, page)
        self.mlflow.submit(lambda client: client.log_text(parent, page, FRONT_HTML))
        for name, figure in front_pngs(rows, budget=self.budget, title=title).items():
            self.mlflow.submit(lambda client, figure=figure, name=name: client.log_figure(parent, figure, name))
        note = front_markdown(search, rows, budget=self.budget, max_epochs=self.max_epochs,
                              experiment_id=self.experiment_id, parent_run_id=parent)
        self.mlflow.submit(lambda client: client.set_tag(parent, "mlflow.note.content", note))
        left = self.flush(timeout_s)
        plt.close("all")
        return left


class ChildRuns:
    """The MLflow run id of a trial of one search, by Ray trial id (the searcher's link from an
    Optuna trial to its run). Holds only strings, so it pickles with the searcher and still
    answers after ``--resume``; asks MLflow once per trial and remembers."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self._known: dict[str, str] = {}

    def __call__(self, trial_id: str) -> str | None:
        if trial_id not in self._known:
            wanted = f"tags.mlflow.parentRunId = '{self.parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'"
            try:
                runs = MlflowClient(self.tracking_uri).search_runs([self.experiment_id], filter_string=wanted,
                                                                   max_results=1)
            except Exception:  # noqa: BLE001 - MLflow down: the link is optional, the search goes on
                return None
            if not runs:
                return None
            self._known[trial_id] = runs[0].info.run_id
        return self._known[trial_id]


def failure_reason(trial) -> str:
    """Why a trial failed, in one line: the exception a Python error raised, or Ray's account of a
    dead worker (not the path of Ray's error file), with how many times it failed."""
    summary = ""
    try:
        error = trial.get_pickled_error()
        cause = getattr(error, "cause", None)  # a RayTaskError wraps the trainable's own exception
        if isinstance(cause, BaseException):
            summary = f"{type(cause).__name__}: {cause}"
        elif error is not None:
            summary = str(error)
        if not summary.strip():
            summary = str(trial.get_error() or "") or Path(trial.error_file or "").read_text()
    except Exception:  # noqa: BLE001 - the reason is informational; fall back to what Ray recorded
        summary = summary or str(trial.error_file or "")
    lines = [line.strip() for line in summary.rsplit("Failure # ", 1)[-1].splitlines() if line.strip()]
    failures = trial.run_metadata.num_failures
    return (f"failed {failures} times: " if failures > 1 else "") + (lines[-1] if lines else "error")[:500]


def _trial_summary(row: dict, max_epochs: int) -> str:
    """``trial 67087d45 complete: acc 0.9900 params 0.0940 latency 0.81× (lr·SI+FD)``."""
    how = {"complete": "complete", "failed": "failed",
           "pruned": f"stopped early at epoch {row['epochs_trained']}/{max_epochs}",
           "interrupted": f"interrupted at epoch {row['epochs_trained']}/{max_epochs}"}[row["status"]]
    formats = {"accuracy": "acc {:.4f}", "params_ratio": "params {:.4f}", "latency_ratio": "latency {:.2f}×"}
    values = " ".join(formats.get(name, name + " {:.4g}").format(row[name])
                      for name in NAMES if row.get(name) is not None and np.isfinite(row[name]))
    return f"trial {row['trial_id']} {how}: {values or 'no metrics'} ({plan_label(row.get('plan'))})"


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
