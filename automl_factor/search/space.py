"""Search spaces: a YAML file, validated with pydantic, sampled define-by-run by Optuna.

A space names the model, the data and the training recipe, and splits the model's factorizable
layers into groups (glob patterns over layer names, first match wins) that share one choice of
factorization kind, rank, conv layout, init and regularizer. Every sampled configuration becomes
a plan that meets the parameter budget by construction (``plan_for``): the sampler proposes
relative ranks and how much of the budget to use, ``fit_to_budget`` scales the ranks to fit.
"""
from __future__ import annotations

import fnmatch
import statistics
import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from .._validation import first_problem
from ..factorization import (REGULARIZERS, LayerPlan, Plan, factorizable_layers, fit_to_budget, full_rank, get_kind,
                             planned_params, round_ranks)
from ..factorization.attention import is_attention
from ..train import TrainConfig

__all__ = ["SearchSpace", "LayerGroup", "DataOptions", "LatencyTarget", "load_space", "SpaceSampler",
           "paper_recipe_point", "plan_for", "plan_key", "plan_layers", "PlanKeys", "group_layers", "minimum_params",
           "smallest_plan_params", "energy_point"]

def _registered_kind(name: str) -> str:
    get_kind(name)  # an unknown name lists the registered ones
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LayerGroup(_Strict):
    """Layers that share one sampled choice. ``kinds`` are registered factorization kinds
    (``factorization.kind_names()``); each samples the value its kind names (``search_value``):
    ``rank_fraction``, the range (log-uniform) of the rank relative to each layer's full rank before
    the budget scales it, or ``scale`` from ``overcomplete_scales``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    layers: list[str] = ["*"]
    kinds: list[Annotated[str, AfterValidator(_registered_kind)]] = ["lowrank"]
    rank_fraction: tuple[float, float] = (0.05, 1.0)
    overcomplete_scales: list[float] = [2.0, 3.0]
    layouts: list[Literal["spatial", "channel"]] = ["spatial"]
    inits: list[Literal["spectral", "default", "activation"]] = ["spectral"]  # activation: channel layout only
    regularizers: list[Literal[REGULARIZERS]] = ["fd"]

    @model_validator(mode="after")
    def _ranges(self) -> "LayerGroup":
        low, high = self.rank_fraction
        if not 0 < low <= high <= 1:
            raise ValueError(f"rank_fraction must satisfy 0 < low <= high <= 1, got {list(self.rank_fraction)}")
        if any(scale <= 1 for scale in self.overcomplete_scales):
            raise ValueError(f"overcomplete_scales must all be > 1, got {self.overcomplete_scales}")
        for key in ("kinds", "layouts", "inits", "regularizers"):
            if not getattr(self, key):
                raise ValueError(f"{key} must list at least one choice")
        return self


class DataOptions(_Strict):
    name: str = "digits"
    root: str | None = None
    val_fraction: float = 0.2  # > 0: the search selects on validation, never on test
    train_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1)
    download: bool = False

    @field_validator("val_fraction")
    @classmethod
    def _validation_split(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError("must be in (0, 1): the search selects models on a validation split held out of "
                             "training, and reads the test split only for the final report")
        return value


class LatencyTarget(_Strict):
    """Where and how latency is measured: the deployment target, not the training device.
    Each trial times its collapsed model and the dense model alternately for ``rounds`` rounds."""

    device: Literal["cpu", "cuda"] = "cpu"
    batch_size: int = Field(1, ge=1)
    threads: int = Field(1, ge=1)
    rounds: int = Field(5, ge=1)
    # A Ray custom resource naming the machine to time on (one started with `ray start --resources
    # '{"latency_target": 1}'`); each timing takes all of it, so timings there never overlap.
    # None: where the trial trains, then again on the driver once the search has ended.
    resource: str | None = None


class SearchSpace(_Strict):
    """A search: the model (``model: NAME`` or ``model: {name: NAME, weights: FILE}`` to compress a
    trained one), data, recipe, epochs, latency target and layer groups."""

    model: str = "resnet20"
    weights: str | None = None  # a trained state dict: trials factorize its SVD and fine-tune
    model_kwargs: dict = {}
    data: DataOptions = DataOptions()
    recipe: TrainConfig = TrainConfig()  # the training recipe; its epochs come from max_epochs
    max_epochs: int = Field(15, ge=1)
    budget_use: tuple[float, float] = (0.1, 1.0)  # sampled log-uniform: small models are as likely as large
    latency: LatencyTarget = LatencyTarget()
    groups: list[LayerGroup] = [LayerGroup(name="all")]

    @model_validator(mode="before")
    @classmethod
    def _model_block(cls, raw):
        """``model: {name, weights}`` is the same as ``model: name`` plus ``weights``."""
        if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
            block = dict(raw["model"])
            unknown = sorted(set(block) - {"name", "weights"})
            if unknown or "name" not in block:
                raise ValueError(f"model block takes name and weights, got {sorted(block)}")
            raw = {**raw, "model": block["name"], "weights": block.get("weights")}
        return raw

    @model_validator(mode="after")
    def _check(self) -> "SearchSpace":
        low, high = self.budget_use
        if not 0 < low <= high <= 1:
            raise ValueError(f"budget_use must satisfy 0 < low <= high <= 1, got {list(self.budget_use)}")
        names = [group.name for group in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"group names must be unique, got {names}")
        if "epochs" in self.recipe.model_fields_set:
            raise ValueError("recipe.epochs is set by the search: use max_epochs (the epochs of a full trial)")
        return self

    def train_config(self) -> TrainConfig:
        """The recipe a full trial trains with (``max_epochs`` epochs)."""
        return self.recipe.model_copy(update={"epochs": self.max_epochs})


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space; errors are one line naming the file, the key and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"space file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"space file {str(path)!r} is not valid YAML: {str(error).splitlines()[0]}") from None
    try:
        return SearchSpace.model_validate(raw)
    except ValidationError as error:
        raise ValueError(f"space file {str(path)!r}: {first_problem(error, key_prefix='key ')}") from None


def group_layers(space: SearchSpace, model: nn.Module) -> dict[str, list[str]]:
    """Group name → factorizable layer names (first matching group wins; unmatched layers stay dense)."""
    grouped: dict[str, list[str]] = {group.name: [] for group in space.groups}
    names = factorizable_layers(model)
    for layer in names:
        for group in space.groups:
            if any(fnmatch.fnmatchcase(layer, pattern) for pattern in group.layers):
                grouped[group.name].append(layer)
                break
    for group_name, layers in grouped.items():
        if not layers:
            raise ValueError(f"group {group_name!r} matches no layer of {space.model}; layers are: {', '.join(names)}")
    return grouped


class SpaceSampler:
    """Optuna define-by-run function: samples one choice per group, plus the share of the budget.

    A class (not a closure) so Ray can pickle the searcher when it checkpoints the search.
    Parameters are named ``<group>.<choice>``; a choice with one option is not sampled.
    """

    def __init__(self, space: SearchSpace, *, smallest_share: float = 0.0):
        # Shares below the smallest plan's (rank 1 everywhere, as a share of the budget) all become
        # that plan: sampling them would crowd the search at the minimum size.
        self.space, self.smallest_share = space, smallest_share

    def budget_use_range(self) -> tuple[float, float]:
        """The ``budget_use`` values proposed: the space's range, raised to the smallest plan's share."""
        low, high = self.space.budget_use
        return min(max(low, self.smallest_share), high), high

    def __call__(self, trial) -> dict:
        fixed = {}
        for group in self.space.groups:
            prefix = group.name
            kind = get_kind(_categorical(trial, fixed, f"{prefix}.kind", group.kinds))
            if kind.search_value == "rank_fraction":
                low, high = group.rank_fraction
                if low == high:
                    fixed[f"{prefix}.rank_fraction"] = low
                else:
                    trial.suggest_float(f"{prefix}.rank_fraction", low, high, log=True)
            elif kind.search_value == "scale":
                _categorical(trial, fixed, f"{prefix}.scale", group.overcomplete_scales)
            if kind.search_value is not None:  # factorized: how, and what decays it
                _categorical(trial, fixed, f"{prefix}.layout", group.layouts)
                _categorical(trial, fixed, f"{prefix}.init", group.inits)
                _categorical(trial, fixed, f"{prefix}.regularizer", group.regularizers)
        low, high = self.budget_use_range()
        if low == high:
            fixed["budget_use"] = low
        else:
            trial.suggest_float("budget_use", low, high, log=True)
        return fixed


def _categorical(trial, fixed: dict, name: str, choices: list):
    if len(choices) == 1:
        fixed[name] = choices[0]
        return choices[0]
    return trial.suggest_categorical(name, choices)


def paper_recipe_point(space: SearchSpace) -> dict:
    """The paper's configuration as a first trial: one uniform rank ratio filling the whole
    budget, spectral init, Frobenius decay (falling back to a group's first option where the
    space does not offer these)."""
    point = {}
    for group in space.groups:
        prefix = group.name
        name = "lowrank" if "lowrank" in group.kinds else group.kinds[0]
        kind = get_kind(name)
        if len(group.kinds) > 1:
            point[f"{prefix}.kind"] = name
        if kind.search_value == "rank_fraction" and group.rank_fraction[0] != group.rank_fraction[1]:
            point[f"{prefix}.rank_fraction"] = group.rank_fraction[1]
        if kind.search_value == "scale" and len(group.overcomplete_scales) > 1:
            point[f"{prefix}.scale"] = group.overcomplete_scales[0]
        if kind.search_value is not None:
            for key, options, preferred in (("layout", group.layouts, "spatial"), ("init", group.inits, "spectral"),
                                            ("regularizer", group.regularizers, "fd")):
                if len(options) > 1:
                    point[f"{prefix}.{key}"] = preferred if preferred in options else options[0]
    if space.budget_use[0] != space.budget_use[1]:
        point["budget_use"] = space.budget_use[1]
    return point


def plan_for(space: SearchSpace, model: nn.Module, config: dict, budget: float, *, rank_multiple: int = 1) -> Plan:
    """The plan a sampled configuration stands for, scaled to at most
    ``budget_use × budget × dense params`` deployed parameters; with ``rank_multiple`` (8 on GPUs)
    its ranks then move to multiples of it where that budget allows (``round_ranks``)."""
    modules = dict(model.named_modules())
    plan: Plan = {}
    for group in space.groups:
        prefix = group.name
        kind = get_kind(config[f"{prefix}.kind"])
        for layer in group_layers(space, model)[prefix]:
            if kind.search_value is None:
                plan[layer] = LayerPlan(kind=kind.name)
                continue
            module, layout = modules[layer], config[f"{prefix}.layout"]
            # kinds that do not apply to attention (deep, overcomplete) leave its head pairs low-rank
            applied = kind if kind.attention or not is_attention(module) else get_kind("lowrank")
            rank = applied.rank_for(module, layout, config[f"{prefix}.{kind.search_value}"])
            plan[layer] = LayerPlan(kind=applied.name, rank=rank, layout=layout, init=config[f"{prefix}.init"],
                                    regularizer=config[f"{prefix}.regularizer"])
    target = config["budget_use"] * budget * planned_params(model, {})
    # A small budget_use may ask for less than rank 1 everywhere allows: take the smallest plan then.
    target = max(target, minimum_params(space, model, config))
    plan = fit_to_budget(model, plan, target)
    return plan if rank_multiple == 1 else round_ranks(model, plan, rank_multiple, target)


def smallest_plan_params(space: SearchSpace, model: nn.Module) -> int:
    """Deployed parameters of the smallest plan any sample can become (each group in its cheapest layout)."""
    config = {f"{group.name}.layout": group.layouts[0] for group in space.groups}
    for group in space.groups:
        key = f"{group.name}.layout"
        config[key] = min(group.layouts, key=lambda layout: minimum_params(space, model, {**config, key: layout}))
    return minimum_params(space, model, config)


def minimum_params(space: SearchSpace, model: nn.Module, config: dict | None = None) -> int:
    """Deployed parameters with every grouped layer at rank 1: the smallest plan a sample can become.

    With ``config``, in its conv layouts; without, in each group's costliest layout (the bound the
    command line checks against the budget before any trial starts).
    """
    modules = dict(model.named_modules())
    plan: Plan = {}
    for group in space.groups:
        layouts = group.layouts if config is None else [config.get(f"{group.name}.layout", "spatial")]
        for layer in group_layers(space, model)[group.name]:
            rank = modules[layer].num_heads if is_attention(modules[layer]) else 1
            options = [LayerPlan(kind="lowrank", rank=rank, layout=layout) for layout in layouts]
            plan[layer] = max(options, key=lambda option: planned_params(model, {layer: option}))
    return planned_params(model, plan)


def plan_key(plan: Plan) -> str:
    """Identity of a trained model: the hash of its plan's JSON. Proposals that round to the same
    integer ranks (and kinds, layouts, inits, regularizers) train the same model."""
    text = json.dumps({name: layer.model_dump() for name, layer in plan.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_layers(space: SearchSpace, model: nn.Module, plan: Plan) -> list[dict]:
    """One row per grouped layer: what was trained (group, kind, rank of full rank, deployed params)."""
    modules = dict(model.named_modules())
    rows = []
    for group, layers in group_layers(space, model).items():
        for layer in layers:
            entry = plan.get(layer, LayerPlan(kind="dense"))
            module = modules[layer]
            rows.append({"layer": layer, "group": group, "kind": entry.kind, "rank": entry.rank,
                         "full_rank": full_rank(module, entry.layout), "layout": entry.layout,
                         "params": planned_params(model, {layer: entry}) - planned_params(model, {}) +
                         sum(p.numel() for p in module.parameters()),
                         "dense_params": sum(p.numel() for p in module.parameters())})
    return rows


class PlanKeys:
    """config → plan key on the driver, from a dense model built once (picklable, for the searcher)."""

    def __init__(self, space: SearchSpace, dense: nn.Module, budget: float, rank_multiple: int = 1):
        self.space, self.dense, self.budget, self.rank_multiple = space, dense, budget, rank_multiple

    def __call__(self, config: dict) -> str:
        return plan_key(plan_for(self.space, self.dense, config, self.budget, rank_multiple=self.rank_multiple))


def energy_point(space: SearchSpace, model: nn.Module, energy: float = 0.9) -> dict:
    """A first proposal read from a trained model's spectra: each group's rank fraction is the one
    that keeps ``energy`` of its layers' squared singular values (the median over its layers, in the
    layout the paper point uses). Budget fitting then scales the groups together, so the proposal
    keeps the spectrum's profile across stages, where the uniform ratio keeps the same fraction of
    rank everywhere."""
    import torch

    from ..factorization.layers import conv_matrix

    point = paper_recipe_point(space)
    modules = dict(model.named_modules())
    for group in space.groups:
        low, high = group.rank_fraction
        if point.get(f"{group.name}.kind", group.kinds[0]) != "lowrank" or low == high:
            continue
        layout = point.get(f"{group.name}.layout", group.layouts[0])
        fractions = []
        for layer in group_layers(space, model)[group.name]:
            module = modules[layer]
            if is_attention(module):
                continue
            weight = module.weight.detach().double()
            matrix = conv_matrix(weight, layout) if weight.dim() == 4 else weight
            squared = torch.linalg.svdvals(matrix).square()
            kept = int((squared.cumsum(0) / squared.sum() < energy).sum()) + 1
            fractions.append(kept / squared.numel())
        if fractions:
            point[f"{group.name}.rank_fraction"] = min(max(statistics.median(fractions), low), high)
    return point
