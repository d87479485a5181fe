"""Search spaces: a YAML file, validated with pydantic, sampled define-by-run by Optuna.

A space names the model, the data and the training recipe, and splits the model's factorizable
layers into groups (glob patterns over layer names, first match wins) that share one choice of
factorization kind, rank, conv layout, init and regularizer. Every sampled configuration becomes
a plan that meets the parameter budget by construction (``plan_for``): the sampler proposes
relative ranks and how much of the budget to use, ``fit_to_budget`` scales the ranks to fit.
"""
from __future__ import annotations

import fnmatch
import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from ..factorization import LayerPlan, Plan, factorizable_layers, fit_to_budget, full_rank, planned_params
from ..factorization.attention import is_attention
from ..train import TrainConfig

__all__ = ["SearchSpace", "LayerGroup", "DataOptions", "load_space", "SpaceSampler", "paper_recipe_point",
           "plan_for", "group_layers", "minimum_params"]

Kind = Literal["dense", "lowrank", "deep", "overcomplete"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LayerGroup(_Strict):
    """Layers that share one sampled choice. ``rank_fraction`` is the range (log-uniform) of the
    rank relative to each layer's full rank, before the budget scales it."""

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    layers: list[str] = ["*"]
    kinds: list[Kind] = ["lowrank"]
    rank_fraction: tuple[float, float] = (0.05, 1.0)
    overcomplete_scales: list[float] = [2.0, 3.0]
    layouts: list[Literal["spatial", "channel"]] = ["spatial"]
    inits: list[Literal["spectral", "default"]] = ["spectral"]
    regularizers: list[Literal["fd", "wd"]] = ["fd"]

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
    val_fraction: float = Field(0.2, ge=0, lt=1)
    train_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1)
    download: bool = False


class Recipe(_Strict):
    """The training recipe (everything of ``TrainConfig`` but epochs, which the search controls)."""

    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["multistep", "cosine"] = "multistep"
    warmup_epochs: float = Field(0.0, ge=0)
    channels_last: bool = False


class SearchSpace(_Strict):
    model: str = "resnet20"
    model_kwargs: dict = {}
    data: DataOptions = DataOptions()
    recipe: Recipe = Recipe()
    max_epochs: int = Field(15, ge=1)
    budget_use: tuple[float, float] = (0.25, 1.0)
    groups: list[LayerGroup] = [LayerGroup(name="all")]

    @model_validator(mode="after")
    def _check(self) -> "SearchSpace":
        low, high = self.budget_use
        if not 0 < low <= high <= 1:
            raise ValueError(f"budget_use must satisfy 0 < low <= high <= 1, got {list(self.budget_use)}")
        names = [group.name for group in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"group names must be unique, got {names}")
        return self

    def train_config(self, regularizer: str = "fd") -> TrainConfig:
        return TrainConfig(epochs=self.max_epochs, regularizer=regularizer, **self.recipe.model_dump())


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
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ValueError(f"space file {str(path)!r}: key {key}: {first['msg']} "
                         f"(got {first.get('input')!r})") from None


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

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial) -> dict:
        fixed = {}
        for group in self.space.groups:
            prefix = group.name
            kind = _categorical(trial, fixed, f"{prefix}.kind", group.kinds)
            if kind in ("lowrank", "deep"):
                low, high = group.rank_fraction
                if low == high:
                    fixed[f"{prefix}.rank_fraction"] = low
                else:
                    trial.suggest_float(f"{prefix}.rank_fraction", low, high, log=True)
            if kind == "overcomplete":
                _categorical(trial, fixed, f"{prefix}.scale", group.overcomplete_scales)
            if kind != "dense":
                _categorical(trial, fixed, f"{prefix}.layout", group.layouts)
                _categorical(trial, fixed, f"{prefix}.init", group.inits)
                _categorical(trial, fixed, f"{prefix}.regularizer", group.regularizers)
        low, high = self.space.budget_use
        if low == high:
            fixed["budget_use"] = low
        else:
            trial.suggest_float("budget_use", low, high)
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
        kind = "lowrank" if "lowrank" in group.kinds else group.kinds[0]
        if len(group.kinds) > 1:
            point[f"{prefix}.kind"] = kind
        if kind in ("lowrank", "deep") and group.rank_fraction[0] != group.rank_fraction[1]:
            point[f"{prefix}.rank_fraction"] = group.rank_fraction[1]
        if kind == "overcomplete" and len(group.overcomplete_scales) > 1:
            point[f"{prefix}.scale"] = group.overcomplete_scales[0]
        if kind != "dense":
            for key, options, preferred in (("layout", group.layouts, "spatial"), ("init", group.inits, "spectral"),
                                            ("regularizer", group.regularizers, "fd")):
                if len(options) > 1:
                    point[f"{prefix}.{key}"] = preferred if preferred in options else options[0]
    if space.budget_use[0] != space.budget_use[1]:
        point["budget_use"] = space.budget_use[1]
    return point


def plan_for(space: SearchSpace, model: nn.Module, config: dict, budget: float) -> Plan:
    """The plan a sampled configuration stands for, scaled to at most
    ``budget_use × budget × dense params`` deployed parameters."""
    modules = dict(model.named_modules())
    plan: Plan = {}
    for group in space.groups:
        prefix = group.name
        kind = config[f"{prefix}.kind"]
        for layer in group_layers(space, model)[prefix]:
            if kind == "dense":
                plan[layer] = LayerPlan(kind="dense")
                continue
            layout = config[f"{prefix}.layout"]
            full = full_rank(modules[layer], layout)
            scale = config[f"{prefix}.scale"] if kind == "overcomplete" else config[f"{prefix}.rank_fraction"]
            rank = math.ceil(scale * full)
            if is_attention(modules[layer]):
                heads = modules[layer].num_heads
                rank = max(heads, math.ceil(rank / heads) * heads)
            deep = kind == "deep" and not is_attention(modules[layer])  # attention pairs are low-rank only
            plan[layer] = LayerPlan(kind="deep" if deep else "lowrank", rank=rank, layout=layout,
                                    init=config[f"{prefix}.init"], regularizer=config[f"{prefix}.regularizer"])
    target = config["budget_use"] * budget * planned_params(model, {})
    # A small budget_use may ask for less than rank 1 everywhere allows: take the smallest plan then.
    return fit_to_budget(model, plan, max(target, minimum_params(space, model, config)))


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
