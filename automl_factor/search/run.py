"""Wiring one search together: MLflow parent run, Ray runtime, Optuna searcher, scheduler, Tuner.

Called by ``python -m automl_factor.search`` after every input has been validated.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import sys
import warnings
from pathlib import Path

# With num_to_keep=1 every trial checkpoint snapshots the experiment (trials checkpoint at rungs, the
# last epoch and every minute between, so this stays rare); Ray's warning about it is not for users.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Ray Tune's newer console output prints its own banner and paths even at verbose=0; the search
# prints its progress itself, so it asks for the reporter that stays quiet at verbose=0.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import mlflow
import optuna
import ray
import torch
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from ..cli import UsageError
from ..factorization import LayerPlan, factorize
from ..train import build_model, load_weights
from ..train.measure import paired_latency
from .pareto import MODES, NAMES, OBJECTIVES
from .ray_fixes import save_trials_stopped_without_actor
from .saved import STATE_FILE, absolute_store, read_state, saved_form, write_state
from .lock import search_lock
from .schedulers import STATE_FILE as MOASHA_STATE_FILE
from .schedulers import MultiObjectiveASHA, default_grace_period, rung_epochs
from .searcher import FullBudgetOptunaSearch, make_sampler
from .store import init_tracking_store
from .space import PlanKeys, SpaceSampler, energy_point, paper_recipe_point, smallest_plan_params
from .tracking import (FRONT_HTML, TIME_BUDGET_REASON, ChildRuns, RunFolder, SearchTracker, front_runs_path, pareto_rows,
                       search_hypervolume)
from .trainable import TrialSetup, start_cost_cache, train_trial, trial_dirname

__all__ = ["run_search", "print_front", "browse_lines", "absolute_store", "STATE_FILE"]

# Trials per GPU by default (4): measured on one H200, 5 processes sharing it gave 1.4x one alone with
# the old eager step; packing pays once each trial is lean (issue 10; benchmarks/speed.py `share`).
DEFAULT_GPU_SHARE = 0.25


def _parent_run(prepared, client: MlflowClient) -> tuple[str, str]:
    """(experiment id, parent run id): created for a new search, read back for --resume."""
    options = prepared.options
    state = read_state(prepared.run_uri)
    if options.resume:
        if state is None:
            raise UsageError(f"--resume: no search named {prepared.name!r} under {options.storage_path!r}")
        client.update_run(state["parent_run_id"], status="RUNNING")  # until this attempt says otherwise
        client.set_tag(state["parent_run_id"], "automl_factor.status", "running")
        return state["experiment_id"], state["parent_run_id"]
    if state is not None:
        raise UsageError(f"a search named {prepared.name!r} already exists; pass --resume or another --name")
    experiment = client.get_experiment_by_name(options.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(options.experiment)
    if experiment is None or "mlflow.experimentKind" not in experiment.tags:
        # MLflow 3 opens an experiment of unknown kind on its GenAI overview; these are training runs.
        client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")
    parent = client.create_run(experiment_id, run_name=prepared.name, tags={"automl_factor.role": "search"})
    run_id = parent.info.run_id
    params = {key: str(value) for key, value in options.model_dump().items()}
    params.update(model=prepared.space.model, dataset=prepared.space.data.name, dense_params=prepared.dense_params,
                  max_epochs=prepared.space.max_epochs, storage=prepared.run_uri,
                  objectives=", ".join(f"{o.name} ({o.direction})" for o in OBJECTIVES),
                  hypervolume_reference=str({("params_ratio/budget" if o.per_budget else o.name): o.hv_reference
                                             for o in OBJECTIVES}))
    for key, value in params.items():
        client.log_param(run_id, key, str(value))
    client.log_text(run_id, prepared.space_text, "space.yaml")
    write_state(prepared.run_uri, {"experiment_id": experiment_id, "parent_run_id": run_id,
                                   "tracking_uri": absolute_store(options.mlflow_uri), "options": saved_form(options)})
    return experiment_id, run_id


def _grace_period(options, max_epochs: int, schedule: str) -> int:
    return min(options.grace_period or default_grace_period(schedule, max_epochs), max_epochs)


def _judged_epochs(options, max_epochs: int, schedule: str) -> tuple[int, ...]:
    """The epochs where the scheduler may stop a trial (none for FIFO): trials checkpoint there."""
    if options.scheduler == "fifo":
        return ()
    return rung_epochs(_grace_period(options, max_epochs, schedule), options.reduction_factor, max_epochs)


def _scheduler(options, max_epochs: int, run_uri: str, schedule: str):
    grace_period = _grace_period(options, max_epochs, schedule)
    if options.scheduler == "moasha":
        return MultiObjectiveASHA(max_t=max_epochs, grace_period=grace_period,
                                  reduction_factor=options.reduction_factor,
                                  state_uri=f"{run_uri.rstrip('/')}/{MOASHA_STATE_FILE}")
    if options.scheduler == "asha":
        return ASHAScheduler(time_attr="epoch", metric="accuracy", mode="max", max_t=max_epochs,
                             grace_period=grace_period, reduction_factor=options.reduction_factor)
    return FIFOScheduler()


def _searcher(prepared, rank_multiple: int, child_runs: ChildRuns) -> FullBudgetOptunaSearch:
    options, space = prepared.options, prepared.space
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search prints its own progress
    storage = None
    if "://" not in prepared.run_uri:  # a local folder: keep the study on disk, readable after the search
        storage = optuna.storages.RDBStorage(f"sqlite:///{prepared.run_uri}/optuna.db")
    dense = build_model(space.model, prepared.data, **space.model_kwargs)
    smallest_share = smallest_plan_params(space, dense) / (options.budget_fraction * prepared.dense_params)
    sampler = SpaceSampler(space, smallest_share=smallest_share)
    low, high = sampler.budget_use_range()
    return FullBudgetOptunaSearch(
        space=sampler, metric=list(NAMES), mode=list(MODES),
        plan_key=PlanKeys(space, dense, options.budget_fraction, rank_multiple),
        # (no more than the search runs: an enqueued point never run would wait in the study forever)
        points_to_evaluate=_first_points(space, prepared.data, low if low < high else None)[:options.num_samples]
        if options.warm_start else None,
        sampler=make_sampler(options.sampler, options.seed, startup_trials=max(4, min(10, options.num_samples // 4))),
        storage=storage, study_name=prepared.name, max_epochs=space.max_epochs, mlflow_run_id=child_runs)


def _first_points(space, data, smallest_share: float | None = None) -> list[dict]:
    """The proposals the search starts from: the paper's uniform ratio filling the budget, the same
    recipe at the smallest size the sampler proposes (``smallest_share``, when it samples the size),
    and, when compressing a trained model, the ranks its spectra suggest (``energy_point``)."""
    points = [paper_recipe_point(space)]
    if smallest_share is not None:  # the front's small end, trained once rather than left to chance
        points.append({**points[0], "budget_use": smallest_share})
    if space.weights is not None:
        trained = load_weights(build_model(space.model, data, **space.model_kwargs), space.weights)
        energy = energy_point(space, trained)
        if energy != points[0]:
            points.append(energy)
    return points


def start_ray(address: str | None) -> None:
    """Join the cluster at ``address`` (or the one RAY_ADDRESS / `ray start` names), else start a
    local runtime that listens on 127.0.0.1 only: its GCS, raylet, object manager and workers bind
    to the node's IP, so the node IP is made loopback (Ray's own switch for single-machine use, read
    by the driver here and by the processes it starts through the environment)."""
    from ray._private.services import get_ray_address_from_environment

    if address is None and get_ray_address_from_environment(None, None) is None:
        from ray._private import ray_constants

        os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(address=address, include_dashboard=False, dashboard_host="127.0.0.1", log_to_driver=False,
             logging_level=logging.WARNING)


def check_cluster(space) -> None:
    """Refuse (``UsageError``) a space the cluster cannot serve: a latency resource no node has
    (its timing tasks would wait forever)."""
    resource = space.latency.resource
    if resource is not None and ray.cluster_resources().get(resource, 0) < 1:
        have = sorted(key for key in ray.cluster_resources() if not key.startswith("node:"))
        raise UsageError(f"latency.resource {resource!r} is on no node of the Ray cluster (resources: "
                         f"{', '.join(have)}); start the node to time on with "
                         f"`ray start --resources '{{\"{resource}\": 1}}'`, or leave latency.resource out")


def trial_gpus(options) -> float:
    """GPUs each trial asks Ray for: the option, or by default a quarter GPU when the cluster has
    GPUs (several trials per GPU: one CIFAR-size trial cannot fill one), else none."""
    if options.gpus_per_trial is not None:
        return options.gpus_per_trial
    return DEFAULT_GPU_SHARE if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def run_search(prepared) -> tuple[list[dict], dict]:
    """Run (or resume) the search; return the trial rows and the latency noise summary. One driver
    per search name at a time (``search_lock``); the tracking store is set up before any trial."""
    with search_lock(prepared.run_uri):
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its store setup lines; the search prints its own
        init_tracking_store(prepared.options.mlflow_uri)
        return _run_search(prepared)


def _run_search(prepared) -> tuple[list[dict], dict]:
    options, space = prepared.options, prepared.space
    # One try per MLflow request: the tracker's queue retries through an outage without blocking
    # the search (MLflow's own backoff would hold each call for minutes).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    mlflow.set_tracking_uri(options.mlflow_uri)
    client = MlflowClient(options.mlflow_uri)
    started_ray = not ray.is_initialized()
    if started_ray:
        start_ray(options.address)
    try:
        check_cluster(space)
        experiment_id, parent_run_id = _parent_run(prepared, client)
    except BaseException:
        if started_ray:
            ray.shutdown()
        raise
    print(f"search {prepared.name}: {space.model} on {space.data.name}, budget {options.budget_fraction:g} of "
          f"{prepared.dense_params:,} params, {options.num_samples} trials x {space.max_epochs} epochs, "
          f"{options.sampler} + {options.scheduler}", flush=True)
    print(f"results: {prepared.run_uri}   MLflow: {options.mlflow_uri} (parent run {parent_run_id})", flush=True)

    cost_cache = start_cost_cache()  # noqa: F841 - held so the actor lives as long as the search
    tracker = SearchTracker(tracking_uri=options.mlflow_uri, experiment_id=experiment_id, parent_run_id=parent_run_id,
                            folder=RunFolder(prepared.run_uri), max_epochs=space.max_epochs,
                            num_samples=options.num_samples, budget=options.budget_fraction, finalize_on_end=False,
                            time_budget_s=options.time_budget_s)
    gpus_per_trial = trial_gpus(options)
    rank_multiple = 8 if gpus_per_trial > 0 else 1  # GPU matrix units work in tiles of 8 channels
    scheduler = _scheduler(options, space.max_epochs, prepared.run_uri, space.recipe.schedule)
    setup = TrialSetup(space=space, budget=options.budget_fraction, seed=options.seed, rank_multiple=rank_multiple,
                       checkpoint_epochs=_judged_epochs(options, space.max_epochs, space.recipe.schedule),
                       checkpoint_every_s=options.checkpoint_every_s)
    trainable = tune.with_resources(tune.with_parameters(train_trial, data=prepared.data, setup=setup),
                                    {"cpu": options.cpus_per_trial, "gpu": gpus_per_trial})
    if gpus_per_trial:
        print(f"GPU trials: {gpus_per_trial:g} GPU each, ranks in multiples of 8 where the budget allows", flush=True)
    save_trials_stopped_without_actor()  # else a twice-died trial can be saved RUNNING, and resumed
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if options.resume and tune.Tuner.can_restore(prepared.run_uri):
                # Errored trials stay failed: a diverged or twice-crashed trial would only fail again.
                tuner = tune.Tuner.restore(prepared.run_uri, trainable, resume_unfinished=True, resume_errored=False)
            else:  # a new search, or one stopped before Ray saved any state: start it (again)
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(search_alg=_searcher(prepared, rank_multiple, ChildRuns(
                                                options.mlflow_uri, experiment_id, parent_run_id)),
                                                scheduler=scheduler,
                                                num_samples=options.num_samples, max_concurrent_trials=options.max_concurrent,
                                                time_budget_s=options.time_budget_s,
                                                trial_dirname_creator=trial_dirname,
                                                reuse_actors=True),  # no new process (and imports) per trial
                    run_config=tune.RunConfig(name=prepared.name, storage_path=os.path.dirname(prepared.run_uri),
                                              callbacks=[tracker], verbose=0,
                                              checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                              failure_config=tune.FailureConfig(max_failures=1)))
            tuner.fit()
    except BaseException as error:
        with contextlib.suppress(Exception):  # (MLflow may be what failed)
            client.set_terminated(parent_run_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        if started_ray:
            ray.shutdown()
    # (A fresh tracker: Ray may have run the search with a copy of ``tracker``.)
    after = SearchTracker(tracking_uri=tracker.tracking_uri, experiment_id=experiment_id, parent_run_id=parent_run_id,
                          folder=tracker.folder, max_epochs=tracker.max_epochs, num_samples=tracker.num_samples,
                          budget=tracker.budget)
    after.setup()  # the rows as the search left them
    # Re-measuring is skipped after Ctrl-C: the user is waiting.
    noise = {} if search_outcome(list(after.rows.values())) == "interrupted" else _remeasure_front(prepared, after)
    after.finalize()
    rows = RunFolder(prepared.run_uri).read_table("trials.parquet")
    _fail_unrun_optuna_trials(prepared, rows)
    outcome = search_outcome(rows)
    after.mlflow.submit(lambda client: client.set_tag(parent_run_id, "automl_factor.status", outcome))
    status = {"interrupted": "KILLED", "failed": "FAILED"}.get(outcome, "FINISHED")
    after.mlflow.submit(lambda client: client.set_terminated(parent_run_id, status))
    if after.flush():
        print(f"warning: MLflow at {options.mlflow_uri} is still unreachable; {after.mlflow.pending} updates were not "
              f"logged. The trial table in {prepared.run_uri} is complete; once MLflow is back, "
              f"`python -m automl_factor.search --resume --name {prepared.name}` brings it up to date", flush=True)
    return rows, noise


def search_outcome(rows: list[dict]) -> str:
    """How a search attempt ended: ``interrupted`` (Ctrl-C or a crash left trials to continue with
    --resume), ``out_of_time`` (the same, by --time-budget-s), ``failed`` (every trial failed) or
    ``finished``."""
    cut = [row for row in rows if row["status"] == "interrupted"]
    if cut:
        return "out_of_time" if all(row["reason"].startswith(TIME_BUDGET_REASON) for row in cut) else "interrupted"
    if rows and all(row["status"] == "failed" for row in rows):
        return "failed"
    return "finished"


def _fail_unrun_optuna_trials(prepared, rows: list[dict]) -> None:
    """Optuna trials asked for but never run (the driver stopped between asking and starting the
    trial) would stay RUNNING forever: tell them FAIL. Those of interrupted trials stay RUNNING,
    for --resume to complete. Only a study kept on disk (local storage) outlives the driver."""
    if "://" in prepared.run_uri or not os.path.exists(f"{prepared.run_uri}/optuna.db"):
        return
    waiting = {row["trial_id"] for row in rows if row["status"] == "interrupted"}
    storage = optuna.storages.RDBStorage(f"sqlite:///{prepared.run_uri}/optuna.db")
    study = optuna.load_study(study_name=prepared.name, storage=storage)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.user_attrs.get("ray_trial_id") not in waiting:
            storage.set_trial_user_attr(trial._trial_id, "reason", "asked for but never run: the driver stopped")
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def _remeasure_front(prepared, tracker: SearchTracker) -> dict:
    """Time the complete models (or, in large searches, the front's) again now that no trial loads
    the machine, and recompute the front. On the driver, on the space's latency target."""
    space = prepared.space
    target = space.latency
    if target.resource is not None:  # timed on a dedicated node, one timing at a time: already quiet
        return {}
    if target.device == "cuda" and not torch.cuda.is_available():
        print("latency: the driver has no GPU for latency.device 'cuda'; the front keeps the in-search timings")
        return {}
    dense = build_model(space.model, prepared.data, **space.model_kwargs)
    shape = (target.batch_size, *prepared.data.image_shape)

    timings: dict[str, dict] = {}  # by deployed architecture: the same architecture gets the same timing

    def measure(row: dict) -> dict:
        # Init and regularizer do not change the deployed architecture; default init skips the SVDs.
        plan = {name: LayerPlan.model_validate({**layer, "init": "default", "regularizer": "fd"})
                for name, layer in json.loads(row["plan"]).items()}
        key = json.dumps({name: layer.model_dump() for name, layer in plan.items()}, sort_keys=True)
        if key not in timings:
            timing = paired_latency(factorize(dense, plan), dense, shape, rounds=max(target.rounds, 7),
                                    threads=target.threads, device=target.device)
            timings[key] = {"latency_ratio": timing.ratio, "latency_ratio_spread": timing.spread,
                            "latency_ms": timing.ms, "dense_latency_ms": timing.dense_ms}
        return timings[key]

    return tracker.remeasure_front(measure)


def browse_lines(tracking_uri: str, run_uri: str | None = None) -> list[str]:
    """How to look at a search: the MLflow runs table filtered to its front (a link for a server;
    for a local store, the command that serves it and the path to open), the interactive front,
    and the Optuna study in optuna-dashboard."""
    state = read_state(run_uri) if run_uri else None
    path = front_runs_path(state["experiment_id"], state["parent_run_id"]) if state else ""
    if tracking_uri.startswith(("http://", "https://")):
        lines = [f"Browse it:  {tracking_uri.rstrip('/')}{path}"]
    else:
        command = shlex.join([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                              absolute_store(tracking_uri)])
        lines = [f"Browse it:  {command}",
                 f"            then open http://127.0.0.1:5000{path}" + ("  (the front's runs)" if path else "")]
    if run_uri:
        if "://" not in run_uri:
            lines.append(f"The front, interactive:  {Path(run_uri) / FRONT_HTML}")
            installed = Path(sys.executable).with_name("optuna-dashboard")  # this environment's, if installed
            dashboard = shlex.join([str(installed) if installed.exists() else "optuna-dashboard",
                                    f"sqlite:///{Path(run_uri) / 'optuna.db'}"])
            hint = "" if installed.exists() else "   (pip install -e '.[dashboard]' first)"
            lines.append(f"The Optuna study:  {dashboard}{hint}")
        else:
            lines.append(f"The front, interactive:  {run_uri.rstrip('/')}/{FRONT_HTML}")
    return lines


def print_front(rows: list[dict], tracking_uri: str, *, budget: float = 1.0, noise: dict | None = None,
                run_uri: str | None = None) -> None:
    """The Pareto table (objectives from ``pareto.OBJECTIVES``), latency noise, and how to browse it."""
    counts = {status: sum(row["status"] == status for row in rows) for status in ("complete", "pruned", "failed", "interrupted")}
    front = pareto_rows(rows)
    print(f"\nPareto front: {len(front)} models ({len(rows)} trials: {counts['complete']} complete, "
          f"{counts['pruned']} stopped early, {counts['failed']} failed"
          + (f", {counts['interrupted']} interrupted" if counts["interrupted"] else "") + ")")
    headers = {"accuracy": "val acc", "params_ratio": "params", "latency_ratio": "latency x dense"}
    print(f"{'trial':>12} " + " ".join(f"{headers.get(name, name):>15}" for name in NAMES)
          + f" {'test acc':>8} {'latency ms':>10} {'FLOPs':>6}  MLflow run")
    for row in front:
        test = row.get("test_accuracy")
        cells = []
        for objective in OBJECTIVES:
            cell = f"{row[objective.name]:.4f}"
            if objective.noise and row.get(objective.noise) is not None:
                cell += f" ±{100 * row[objective.noise]:.0f}%"
            cells.append(f"{cell:>15}")
        print(f"{row['trial_id']:>12} " + " ".join(cells) + f" {test if test is not None else float('nan'):8.4f} "
              f"{row['latency_ms']:10.3f} {row['flops_ratio']:6.3f}  {row['mlflow_run_id']}")
    if front:
        sizes = [row["params_ratio"] for row in front]
        print(f"front spans params {min(sizes):.4f}-{max(sizes):.4f} ({max(sizes) / min(sizes):.1f}x); "
              f"hypervolume {search_hypervolume(rows, budget):.4f} over all complete trials")
    if noise:
        print(f"latency noise (relative half-IQR of the per-round ratio to dense, median): "
              f"{100 * noise.get('latency_spread_median_search', float('nan')):.1f}% during the search, "
              f"{100 * noise.get('latency_spread_median_remeasured', float('nan')):.1f}% re-measured after it "
              f"({noise.get('latency_remeasured_models', 0):.0f} models timed again)")
    print()
    print("\n".join(browse_lines(tracking_uri, run_uri)))
