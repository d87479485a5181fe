"""The Ray Tune trial: config → plan → factorized model → epochs, reporting and checkpointing.

Each epoch ends with ``tune.report`` of the objectives. A checkpoint (model, optimizer, schedule,
RNG) goes with it at the epochs where the scheduler may stop the trial, at the last epoch and at
least every ``checkpoint_every_s`` seconds between, so a trial that is retried or restored
continues from there, and a stopped trial keeps the model it was judged on. Not every epoch: Ray
saves the whole experiment's state with each trial checkpoint (on the driver, while trials wait for
it to take their results), which cost the default search 9 s of the driver's CPU. The
data arrive through ``tune.with_parameters`` (one copy in the object store per node). Latency is
measured once per distinct deployed architecture on the space's latency target (with FLOPs),
interleaved with the dense model over several rounds so both see the same machine load
(``paired_latency``), and shared through a named actor. Accuracy is on the validation split; the
test split is read once, after the last epoch, for the report.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass

import ray
import torch
from ray import tune
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from ..factorization import collapse, count_params, factorize
from ..train import (DataBundle, TrainingDiverged, build_model, compile_seconds, count_flops, evaluate, iterate_batches, load_weights,
                     make_optimizer, make_schedule, steps_per_epoch, train_one_epoch)
from ..train.checkpoint import STATE_FILE, read_state, write_checkpoint
from ..train.measure import paired_latency
from .options import CHECKPOINT_EVERY_S
from .space import LatencyTarget, SearchSpace, plan_for, plan_key, plan_layers

__all__ = ["TrialSetup", "checkpoint_due", "train_trial", "start_cost_cache", "trial_dirname", "architecture_key", "measure_cost",
           "cached_cost", "FAILED_REASON"]
COST_CACHE = "automl_factor_cost_cache"
FAILED_REASON = "failed_reason"  # in a trial's last result: it ended failed, for this reason (not retried)


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one search shares (besides the data)."""

    space: SearchSpace
    budget: float
    seed: int = 0
    rank_multiple: int = 1  # 8 when trials train on GPUs: ranks in multiples of 8 where the budget allows
    checkpoint_epochs: tuple[int, ...] = ()  # where the scheduler judges trials (its rungs)
    checkpoint_every_s: float = CHECKPOINT_EVERY_S


def checkpoint_due(epoch: int, setup: TrialSetup, seconds_since_checkpoint: float) -> bool:
    """Whether epoch ``epoch`` ends with a checkpoint: the last epoch, a rung, or time's up."""
    return (epoch == setup.space.max_epochs or epoch in setup.checkpoint_epochs
            or seconds_since_checkpoint >= setup.checkpoint_every_s)


@ray.remote(num_cpus=0)
class CostCache:
    """Latency and FLOPs by architecture key, shared by all trials of a search."""

    def __init__(self):
        self._values: dict[str, dict] = {}

    def get(self, key: str) -> dict | None:
        return self._values.get(key)

    def put(self, key: str, value: dict) -> None:
        self._values.setdefault(key, value)


def architecture_key(model: torch.nn.Module, input_shape: tuple[int, ...], device: torch.device) -> str:
    """Hash of the deployed (collapsed) architecture, the input shape and the device kind."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    text = f"{collapse(model)!r}|{input_shape}|{name}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def start_cost_cache() -> "ray.actor.ActorHandle":
    """Called by the driver, which holds the handle for the whole search (the actor lives as long).
    Pinned to the driver's node: a worker node lost mid-search must not take the cache with it."""
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return CostCache.options(name=COST_CACHE, get_if_exists=True, scheduling_strategy=here).remote()


def measure_cost(model: torch.nn.Module, dense: torch.nn.Module, image_shape: tuple[int, ...],
                 target: LatencyTarget) -> dict:
    """The deployed model's latency on ``target`` (paired with dense: ratio, spread, both ms) and FLOPs;
    with ``target.resource``, on the node that has it (a Ray task holding all of it)."""
    if target.resource is not None and ray.is_initialized():
        # Outside the trial's placement group (which has no such resource): on the node that has it.
        remote = _measure_remote.options(resources={target.resource: 1}, scheduling_strategy=(
            PlacementGroupSchedulingStrategy(placement_group=None)))
        return ray.get(remote.remote(model, dense, image_shape, target.model_copy(update={"resource": None})))
    if target.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("latency.device is 'cuda' but this worker sees no GPU; use --gpus-per-trial or "
                         "latency.device: cpu")
    shape = (target.batch_size, *image_shape)
    timing = paired_latency(model, dense, shape, rounds=target.rounds, threads=target.threads, device=target.device)
    return {"latency_ratio": timing.ratio, "latency_ratio_spread": timing.spread, "latency_ms": timing.ms,
            "dense_latency_ms": timing.dense_ms, "flops": count_flops(model, (1, *image_shape)),
            "latency_node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None}


@ray.remote(num_cpus=0)
def _measure_remote(model, dense, image_shape, target: LatencyTarget) -> dict:
    return measure_cost(model, dense, image_shape, target)


def cached_cost(model: torch.nn.Module, dense: torch.nn.Module, image_shape: tuple[int, ...],
                target: LatencyTarget) -> dict:
    """``measure_cost`` once per architecture and target; later trials with the same deployed
    architecture reuse it. Without the driver's cache actor, always measures."""
    if not ray.is_initialized():  # outside Ray (ray.get_actor would start a local Ray runtime)
        return measure_cost(model, dense, image_shape, target)
    key = architecture_key(model, (target.batch_size, *image_shape), torch.device(target.device))
    key += f"|{target.threads}|{target.rounds}|{target.resource}"
    try:
        cache = ray.get_actor(COST_CACHE)
    except ValueError:
        return measure_cost(model, dense, image_shape, target)
    try:
        value = ray.get(cache.get.remote(key))
    except ray.exceptions.RayActorError:  # the cache is gone (its node died): measure, as without it
        return measure_cost(model, dense, image_shape, target)
    if value is None:
        value = measure_cost(model, dense, image_shape, target)
        cache.put.remote(key, value)  # (not waited for: a lost cache costs a re-measurement, not the trial)
    return dict(value)


def trial_dirname(trial) -> str:
    """Short trial folder names (Ray's default embeds the whole config)."""
    return f"trial_{trial.trial_id}"


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu")


def _calibration(data: DataBundle, plan: dict) -> torch.Tensor | None:
    """The first 256 training images, normalized, when a layer's init is activation-aware."""
    if not any(layer.init == "activation" for layer in plan.values()):
        return None
    images, _ = next(iterate_batches(data.train, data, 256, train=False))
    return images


def train_trial(config: dict, *, data: DataBundle, setup: TrialSetup) -> None:
    """Ray Tune function trainable for one sampled configuration."""
    space = setup.space
    torch.manual_seed(setup.seed)
    device = _device()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    dense = build_model(space.model, data, **space.model_kwargs)
    if space.weights is not None:  # compressing a trained model: SI is the SVD of its trained weights
        load_weights(dense, space.weights)
    plan = plan_for(space, dense, config, setup.budget, rank_multiple=setup.rank_multiple)
    model = factorize(dense, plan, generator=torch.Generator().manual_seed(setup.seed),
                      calibration=_calibration(data, plan)).to(device)
    data = data.to(device)  # once per trial; augmentation then draws on the device's generator
    train_config = space.train_config()
    if train_config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, train_config, plan)
    schedule = make_schedule(optimizer, train_config, steps_per_epoch(len(data.train), train_config, device))
    generator = torch.Generator(device=device).manual_seed(setup.seed)

    first_epoch = 1
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = read_state(os.path.join(folder, STATE_FILE), device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"].cpu())  # RNG states live on the host, whatever the device
        first_epoch = state["epoch"] + 1

    if data.val is None:
        raise ValueError("the search needs a validation split (data.val_fraction > 0): it never selects on test")
    dense_params = count_params(dense)
    cost = cached_cost(model, dense, tuple(data.image_shape), space.latency)
    fixed = {
        "params": count_params(model),
        "params_ratio": count_params(model) / dense_params,
        **{key: value for key, value in cost.items() if key != "flops"},
        "flops_ratio": cost["flops"] / count_flops(dense, (1, *data.image_shape)),
        "plan_key": plan_key(plan),
        "node_id": ray.get_runtime_context().get_node_id(),  # which machine of a cluster trained it
    }
    if space.weights is not None and first_epoch == 1:  # before any fine-tuning
        fixed["zero_shot_accuracy"] = evaluate(model, data.val, data)
    elif space.weights is not None:
        fixed["zero_shot_accuracy"] = state.get("zero_shot_accuracy", float("nan"))
    trial_info = {"model": space.model, "model_kwargs": space.model_kwargs, "num_classes": data.num_classes,
                  "image_shape": list(data.image_shape), "mean": list(data.mean), "std": list(data.std),
                  "plan": {name: layer.model_dump() for name, layer in plan.items()}, "config": config}
    plan_json = json.dumps(trial_info["plan"], sort_keys=True)
    layers_json = json.dumps(plan_layers(space, dense, plan))
    last_checkpoint = time.monotonic()
    for epoch in range(first_epoch, space.max_epochs + 1):
        try:
            metrics = train_one_epoch(model, data, optimizer, schedule, train_config, generator=generator,
                                      epoch=epoch, plan=plan)
        except TrainingDiverged as error:
            # Not a crash: it would diverge again, so the trial ends here, failed with its reason,
            # rather than raising (Ray would retry it from its last checkpoint).
            tune.report({**fixed, "epoch": epoch, "accuracy": 0.0, FAILED_REASON: str(error)})
            return
        metrics.update(fixed, epoch=epoch, accuracy=evaluate(model, data.val, data, config=train_config),
                       plan=plan_json, plan_layers=layers_json, compile_seconds=compile_seconds(model))
        if epoch == space.max_epochs:
            metrics["test_accuracy"] = evaluate(model, data.test, data, config=train_config)
        if not checkpoint_due(epoch, setup, time.monotonic() - last_checkpoint):
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as folder:
            write_checkpoint(folder, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                      "schedule": schedule.state_dict(), "generator": generator.get_state(),
                                      "epoch": epoch, "zero_shot_accuracy": fixed.get("zero_shot_accuracy")},
                             trial_info)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        last_checkpoint = time.monotonic()
