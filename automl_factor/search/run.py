"""Wiring one search together: MLflow parent run, Ray runtime, Optuna searcher, scheduler, Tuner.

Called by ``python -m automl_factor.search`` after every input has been validated.
"""
from __future__ import annotations

import json
import logging
import os
import warnings

# Checkpointing every epoch with num_to_keep=1 snapshots the experiment often; that is intended.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import mlflow
import optuna
import pyarrow.fs as pafs
import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from .pareto import HV_REFERENCE, OBJECTIVES
from .schedulers import MultiObjectiveASHA
from .searcher import FullBudgetOptunaSearch, make_sampler
from .space import SpaceSampler, paper_recipe_point
from .tracking import RunFolder, SearchTracker, pareto_rows
from .trainable import TrialSetup, start_cost_cache, train_trial, trial_dirname

__all__ = ["run_search", "print_front", "STATE_FILE"]

STATE_FILE = "search.json"  # parent run id and the arguments, for --resume and export


def _read_state(run_uri: str) -> dict | None:
    filesystem, path = pafs.FileSystem.from_uri(run_uri)
    if filesystem.get_file_info(f"{path}/{STATE_FILE}").type == pafs.FileType.NotFound:
        return None
    with filesystem.open_input_stream(f"{path}/{STATE_FILE}") as stream:
        return json.loads(stream.read())


def _write_state(run_uri: str, state: dict) -> None:
    filesystem, path = pafs.FileSystem.from_uri(run_uri)
    filesystem.create_dir(path, recursive=True)
    with filesystem.open_output_stream(f"{path}/{STATE_FILE}") as stream:
        stream.write(json.dumps(state, indent=1).encode())


def _parent_run(prepared, client: MlflowClient) -> tuple[str, str]:
    """(experiment id, parent run id): created for a new search, read back for --resume."""
    args = prepared.args
    state = _read_state(prepared.run_uri)
    if args.resume:
        if state is None:
            raise SystemExit(f"error: --resume: no search named {prepared.name!r} under {args.storage_path!r}")
        return state["experiment_id"], state["parent_run_id"]
    if state is not None:
        raise SystemExit(f"error: a search named {prepared.name!r} already exists; pass --resume or another --name")
    experiment = client.get_experiment_by_name(args.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(args.experiment)
    parent = client.create_run(experiment_id, run_name=prepared.name, tags={"automl_factor.role": "search"})
    run_id = parent.info.run_id
    params = {key: str(value) for key, value in vars(args).items()}
    params.update(model=prepared.space.model, dataset=prepared.space.data.name, dense_params=prepared.dense_params,
                  max_epochs=prepared.space.max_epochs, storage=prepared.run_uri,
                  hypervolume_reference=str(dict(zip(("accuracy", "params_ratio", "latency_ratio"), HV_REFERENCE))))
    for key, value in params.items():
        client.log_param(run_id, key, str(value))
    client.log_text(run_id, prepared.space_text, "space.yaml")
    _write_state(prepared.run_uri, {"experiment_id": experiment_id, "parent_run_id": run_id,
                                    "tracking_uri": args.mlflow_uri, "args": {k: str(v) for k, v in vars(args).items()}})
    return experiment_id, run_id


def _scheduler(args, max_epochs: int):
    if args.scheduler == "moasha":
        return MultiObjectiveASHA(max_t=max_epochs, grace_period=min(args.grace_period, max_epochs),
                                  reduction_factor=args.reduction_factor)
    if args.scheduler == "asha":
        return ASHAScheduler(time_attr="epoch", metric="accuracy", mode="max", max_t=max_epochs,
                             grace_period=min(args.grace_period, max_epochs), reduction_factor=args.reduction_factor)
    return FIFOScheduler()


def _searcher(prepared) -> FullBudgetOptunaSearch:
    args, space = prepared.args, prepared.space
    storage = None
    if "://" not in prepared.run_uri:  # a local folder: keep the study on disk, readable after the search
        storage = optuna.storages.RDBStorage(f"sqlite:///{prepared.run_uri}/optuna.db")
    return FullBudgetOptunaSearch(
        space=SpaceSampler(space), metric=list(OBJECTIVES), mode=["max", "min", "min"],
        points_to_evaluate=None if args.no_warm_start else [paper_recipe_point(space)],
        sampler=make_sampler(args.sampler, args.seed, startup_trials=max(4, min(10, args.num_samples // 4))),
        storage=storage, study_name=prepared.name, max_epochs=space.max_epochs)


def run_search(prepared) -> list[dict]:
    """Run (or resume) the search and return the trial rows."""
    args, space = prepared.args, prepared.space
    mlflow.set_tracking_uri(args.mlflow_uri)
    client = MlflowClient(args.mlflow_uri)
    experiment_id, parent_run_id = _parent_run(prepared, client)
    print(f"search {prepared.name}: {space.model} on {space.data.name}, budget {args.budget_params:g} of "
          f"{prepared.dense_params:,} params, {args.num_samples} trials x {space.max_epochs} epochs, "
          f"{args.sampler} + {args.scheduler}", flush=True)
    print(f"results: {prepared.run_uri}   MLflow: {args.mlflow_uri} (parent run {parent_run_id})", flush=True)

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=args.address, include_dashboard=False, dashboard_host="127.0.0.1", log_to_driver=False,
                 logging_level=logging.WARNING)
    cost_cache = start_cost_cache()  # noqa: F841 - held so the actor lives as long as the search
    tracker = SearchTracker(tracking_uri=args.mlflow_uri, experiment_id=experiment_id, parent_run_id=parent_run_id,
                            folder=RunFolder(prepared.run_uri), max_epochs=space.max_epochs,
                            num_samples=args.num_samples)
    setup = TrialSetup(space=space, budget=args.budget_params, seed=args.seed)
    trainable = tune.with_resources(tune.with_parameters(train_trial, data=prepared.data, setup=setup),
                                    {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if args.resume:
                tuner = tune.Tuner.restore(prepared.run_uri, trainable, resume_unfinished=True, resume_errored=True)
            else:
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(search_alg=_searcher(prepared), scheduler=_scheduler(args, space.max_epochs),
                                                num_samples=args.num_samples, max_concurrent_trials=args.max_concurrent,
                                                time_budget_s=args.time_budget_s,
                                                trial_dirname_creator=trial_dirname,
                                                reuse_actors=True),  # no new process (and imports) per trial
                    run_config=tune.RunConfig(name=prepared.name, storage_path=os.path.dirname(prepared.run_uri),
                                              callbacks=[tracker], verbose=0,
                                              checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                              failure_config=tune.FailureConfig(max_failures=1)))
            tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    rows = RunFolder(prepared.run_uri).read_table("trials.parquet")
    client.set_terminated(parent_run_id, "FINISHED")
    return rows


def print_front(rows: list[dict], tracking_uri: str) -> None:
    """The Pareto table and how to browse it."""
    counts = {status: sum(row["status"] == status for row in rows) for status in ("complete", "pruned", "failed")}
    front = pareto_rows(rows)
    print(f"\nPareto front: {len(front)} models ({len(rows)} trials: {counts['complete']} complete, "
          f"{counts['pruned']} stopped early, {counts['failed']} failed)")
    print(f"{'trial':>12} {'val acc':>8} {'test acc':>8} {'params':>7} {'latency ms':>10} {'FLOPs':>6}  MLflow run")
    for row in front:
        test = row.get("test_accuracy")
        print(f"{row['trial_id']:>12} {row['accuracy']:8.4f} {test if test is not None else float('nan'):8.4f} "
              f"{row['params_ratio']:7.4f} {row['latency_ms']:10.3f} {row['flops_ratio']:6.3f}  {row['mlflow_run_id']}")
    uri = tracking_uri
    print(f"\nBrowse it:  mlflow ui --backend-store-uri {uri}" if not uri.startswith("http")
          else f"\nBrowse it:  {uri}")
