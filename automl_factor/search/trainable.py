"""The Ray Tune trial: config → plan → factorized model → epochs, reporting and checkpointing.

Each epoch ends with ``tune.report`` of the objectives and a checkpoint (model, optimizer,
schedule, RNG), so a trial that is paused, retried or restored continues where it stopped. The
data arrive through ``tune.with_parameters`` (one copy in the object store per node). Latency is
measured once per distinct deployed architecture and device (with FLOPs), back to back with the
dense model so both see the same machine load, and shared through a named actor.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass

import ray
import torch
from ray import tune

from ..factorization import collapse, count_params, factorize
from ..train import (DataBundle, build_model, count_flops, evaluate, latency_ms, make_optimizer, make_schedule,
                     train_one_epoch)
from ..train.checkpoint import STATE_FILE, read_state, write_checkpoint
from .space import SearchSpace, plan_for

__all__ = ["TrialSetup", "train_trial", "start_cost_cache", "trial_dirname", "architecture_key"]
COST_CACHE = "automl_factor_cost_cache"


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one search shares (besides the data)."""

    space: SearchSpace
    budget: float
    seed: int = 0
    latency_threads: int = 1


@ray.remote(num_cpus=0)
class CostCache:
    """(latency ms, dense latency ms, FLOPs) by architecture key, shared by all trials of a search."""

    def __init__(self):
        self._values: dict[str, tuple[float, float, int]] = {}

    def get(self, key: str) -> tuple[float, float, int] | None:
        return self._values.get(key)

    def put(self, key: str, value: tuple[float, float, int]) -> None:
        self._values.setdefault(key, value)


def architecture_key(model: torch.nn.Module, input_shape: tuple[int, ...], device: torch.device) -> str:
    """Hash of the deployed (collapsed) architecture, the input shape and the device kind."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    text = f"{collapse(model)!r}|{input_shape}|{name}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def start_cost_cache() -> "ray.actor.ActorHandle":
    """Called by the driver, which holds the handle for the whole search (the actor lives as long)."""
    return CostCache.options(name=COST_CACHE, get_if_exists=True).remote()


def cached_cost(model: torch.nn.Module, dense: torch.nn.Module, input_shape: tuple[int, ...],
                threads: int) -> tuple[float, float, int]:
    """(latency ms, dense latency ms, FLOPs) of the deployed model, measured once per architecture and
    device; later trials with the same architecture reuse it. The dense model is timed right after
    the candidate, so their ratio holds even when other trials load the machine. Without the
    driver's cache actor, always measures."""
    def measure() -> tuple[float, float, int]:
        latency = latency_ms(model, input_shape, threads=threads)
        return latency, latency_ms(dense, input_shape, threads=threads), count_flops(model, input_shape)

    if not ray.is_initialized():  # outside Ray (ray.get_actor would start a local Ray runtime)
        return measure()
    key = architecture_key(model, input_shape, next(model.parameters()).device)
    try:
        cache = ray.get_actor(COST_CACHE)
    except ValueError:
        return measure()
    value = ray.get(cache.get.remote(key))
    if value is None:
        value = measure()
        ray.get(cache.put.remote(key, value))
    return tuple(value)


def trial_dirname(trial) -> str:
    """Short trial folder names (Ray's default embeds the whole config)."""
    return f"trial_{trial.trial_id}"


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu")


def train_trial(config: dict, *, data: DataBundle, setup: TrialSetup) -> None:
    """Ray Tune function trainable for one sampled configuration."""
    space = setup.space
    torch.manual_seed(setup.seed)
    device = _device()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    dense = build_model(space.model, data, **space.model_kwargs)
    plan = plan_for(space, dense, config, setup.budget)
    model = factorize(dense, plan, generator=torch.Generator().manual_seed(setup.seed)).to(device)
    train_config = space.train_config()
    if train_config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, train_config)
    schedule = make_schedule(optimizer, train_config, math.ceil(len(data.train.labels) / train_config.batch_size))
    generator = torch.Generator().manual_seed(setup.seed)

    first_epoch = 1
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = read_state(os.path.join(folder, STATE_FILE), device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        first_epoch = state["epoch"] + 1

    shape = (1, *data.image_shape)
    dense = dense.to(device)
    dense_params = count_params(dense)
    latency, dense_latency, flops = cached_cost(model, dense, shape, setup.latency_threads)
    dense_flops = count_flops(dense, shape)
    fixed = {
        "params": count_params(model),
        "params_ratio": count_params(model) / dense_params,
        "latency_ms": latency,
        "latency_ratio": latency / dense_latency,
        "flops_ratio": flops / dense_flops,
    }
    eval_split = data.val if data.val is not None else data.test
    trial_info = {"model": space.model, "model_kwargs": space.model_kwargs, "num_classes": data.num_classes,
                  "image_shape": list(data.image_shape), "mean": list(data.mean), "std": list(data.std),
                  "plan": {name: layer.model_dump() for name, layer in plan.items()}, "config": config}
    plan_json = json.dumps(trial_info["plan"], sort_keys=True)
    for epoch in range(first_epoch, space.max_epochs + 1):
        metrics = train_one_epoch(model, data, optimizer, schedule, train_config, generator=generator, epoch=epoch)
        metrics.update(fixed, epoch=epoch, accuracy=evaluate(model, eval_split, data), plan=plan_json)
        if epoch == space.max_epochs:
            metrics["test_accuracy"] = evaluate(model, data.test, data)
        with tempfile.TemporaryDirectory() as folder:
            write_checkpoint(folder, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                      "schedule": schedule.state_dict(), "generator": generator.get_state(),
                                      "epoch": epoch}, trial_info)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
