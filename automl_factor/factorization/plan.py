"""Per-layer factorization plans: which layer becomes what, and what it costs once deployed.

A plan maps a layer's qualified name to a ``LayerPlan``. ``factorize`` applies it to a copy of a
model, ``collapse`` turns a trained factorized model back into plain ``torch.nn`` layers, and
``planned_params`` / ``fit_to_budget`` answer the search's question "how big will this be?" from
the plan alone, before any training.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from .._validation import first_problem
from .activation import input_covariances
from .attention import is_attention
from .kinds import dense_params, full_rank, get_kind, snap_rank
from .layers import is_factorized

__all__ = [
    "REGULARIZERS", "LayerPlan", "Plan", "parse_plan", "factorizable_layers", "factorize", "collapse", "count_params",
    "planned_params", "full_rank", "uniform_plan", "fit_to_budget", "round_ranks", "is_factorized",
]


REGULARIZERS = ("fd", "wd", "none")  # what decays a factorized layer's factors: the one vocabulary


class LayerPlan(BaseModel):
    """How one layer is factorized.

    ``kind`` names a registered factorization (``kinds.kind_names()``: dense, lowrank, deep,
    overcomplete). For attention modules ``rank`` is the attention embedding dimension (a multiple
    of the heads); a low-rank layer at or above full rank deploys as one dense layer. ``layout`` only
    matters for convolutions; ``regularizer`` says what decays this layer's factors in training:
    Frobenius decay (``fd``), plain weight decay (``wd``) or nothing (``none``); training reads it
    from the plan (``regularize.decayed_modules``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str = "lowrank"
    rank: int | None = Field(default=None, ge=1)
    init: Literal["spectral", "default", "activation"] = "spectral"
    layout: Literal["spatial", "channel"] = "spatial"
    regularizer: Literal[REGULARIZERS] = "fd"

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:
        get_kind(kind)  # raises with the registered names
        return kind

    @model_validator(mode="after")
    def _rank_given(self) -> "LayerPlan":
        if self.kind != "dense" and self.rank is None:
            raise ValueError(f"kind={self.kind!r} needs a rank")
        return self


Plan = dict[str, LayerPlan]


def parse_plan(plan: Mapping[str, LayerPlan | Mapping]) -> Plan:
    """Validate a plan given as ``LayerPlan`` objects or plain dicts (as read from JSON/YAML)."""
    parsed = {}
    for name, layer in plan.items():
        try:
            parsed[name] = layer if isinstance(layer, LayerPlan) else LayerPlan.model_validate(layer)
        except ValidationError as error:
            raise ValueError(f"plan for layer {name!r}: {first_problem(error)}") from None
    return parsed


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    """Every layer ``factorize`` can replace: groups=1 convs, linears, attention modules."""
    found: dict[str, nn.Module] = {}
    inside_attention: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside_attention):
            continue
        if is_attention(module):
            found[name] = module
            inside_attention.append(name)
        elif isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1):
            found[name] = module
    return found


def factorizable_layers(model: nn.Module, *, include_dense_defaults: bool = False) -> list[str]:
    """Names of the layers a plan factorizes by default: every conv, linear and attention module
    except the model's ``default_dense_layers`` (its stem and classifier)."""
    keep_dense = () if include_dense_defaults else tuple(getattr(model, "default_dense_layers", ()))
    return [name for name in _candidates(model) if name not in keep_dense]


def _layer_params(module: nn.Module, layer: LayerPlan | None) -> int:
    """Deployed parameter count of one dense layer under its plan, from shapes alone (the kind's formula)."""
    return dense_params(module) if layer is None else get_kind(layer.kind).deployed_params(module, layer)


def planned_params(model: nn.Module, plan: Mapping[str, LayerPlan]) -> int:
    """Inference parameters of ``collapse(factorize(model, plan))``, computed without building it."""
    candidates = _candidates(model)
    _check_names(plan, candidates)
    total = sum(p.numel() for p in model.parameters())
    for name, layer in plan.items():
        module = candidates[name]
        total += _layer_params(module, layer) - sum(p.numel() for p in module.parameters())
    return total


def _check_names(plan: Mapping, candidates: Mapping) -> None:
    unknown = [name for name in plan if name not in candidates]
    if unknown:
        raise ValueError(f"unknown layer {unknown[0]!r} in plan; factorizable layers are: {', '.join(candidates)}")


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def factorize(model: nn.Module, plan: Mapping[str, LayerPlan | Mapping], *,
              generator: torch.Generator | None = None,
              calibration: torch.Tensor | Iterable[torch.Tensor] | None = None) -> nn.Module:
    """A copy of ``model`` with each planned layer replaced by its factorized version.

    Spectral init reads each layer's current weights, so factorizing a freshly initialized model
    gives the paper's SI and factorizing a trained one compresses it. Layers planned with
    ``init="activation"`` keep instead what ``calibration`` (input batches of ``model``) makes them
    compute (``activation.py``). The input is left untouched.

    >>> plan = {n: LayerPlan(kind="lowrank", rank=8) for n in factorizable_layers(model)}
    >>> fmodel = factorize(model, plan)
    """
    plan = parse_plan(plan)
    candidates = _candidates(model)
    _check_names(plan, candidates)
    calibrated = [name for name, layer in plan.items() if layer.kind != "dense" and layer.init == "activation"]
    if calibrated and calibration is None:
        raise ValueError(f"init 'activation' (layer {calibrated[0]!r}) needs calibration data: "
                         f"factorize(model, plan, calibration=images)")
    covariances = input_covariances(model, calibrated, calibration) if calibrated else {}
    result = copy.deepcopy(model)
    for name, layer in plan.items():
        if layer.kind != "dense":
            new = get_kind(layer.kind).build(result.get_submodule(name), layer, generator, covariances.get(name))
            _replace(result, name, new)
    return result


def collapse(model: nn.Module) -> nn.Module:
    """A copy of a factorized model made of plain ``torch.nn`` layers only, computing the same
    function: low-rank layers become two small layers (or one dense layer when cheaper), deep
    and overcomplete layers one dense layer."""
    result = copy.deepcopy(model)
    names = [name for name, module in result.named_modules() if is_factorized(module)]
    for name in names:
        _replace(result, name, result.get_submodule(name).collapse())
    return result


def count_params(model: nn.Module, *, inference: bool = True) -> int:
    """Parameters of the model; with ``inference=True`` those of its collapsed (deployed) form."""
    if not inference:
        return sum(p.numel() for p in model.parameters())
    total = 0
    factorized_prefixes: list[str] = []
    for name, module in model.named_modules():
        if is_factorized(module):
            total += module.inference_params()
            factorized_prefixes.append(name + ".")
    for name, parameter in model.named_parameters():
        if not any(name.startswith(prefix) for prefix in factorized_prefixes):
            total += parameter.numel()
    return total


def uniform_plan(model: nn.Module, *, params_ratio: float | None = None, rank_scale: float | None = None,
                 kind: str = "lowrank", init: str = "spectral", layout: str = "spatial",
                 regularizer: str = "fd", layers: list[str] | None = None) -> Plan:
    """The paper's plan: every layer's rank is one fraction ``s`` of its full rank.

    Give ``rank_scale`` to fix ``s`` (above 1: overcomplete), or ``params_ratio`` to take the
    largest ``s`` whose deployed model keeps at most that fraction of the dense parameters.
    """
    if (params_ratio is None) == (rank_scale is None):
        raise ValueError("give exactly one of params_ratio or rank_scale")
    names = factorizable_layers(model) if layers is None else layers
    candidates = _candidates(model)
    _check_names(dict.fromkeys(names), candidates)

    def plan_at(scale: float) -> Plan:
        return {
            # Kinds that do not apply to attention (deep, overcomplete) leave it low-rank.
            name: LayerPlan(kind=kind if get_kind(kind).attention or not is_attention(candidates[name]) else "lowrank",
                            init=init, layout=layout,
                            regularizer=regularizer,
                            rank=snap_rank(candidates[name], scale * full_rank(candidates[name], layout)))
            for name in names
        }

    if rank_scale is not None:
        if rank_scale <= 0:
            raise ValueError(f"rank_scale must be > 0, got {rank_scale}")
        return plan_at(rank_scale)
    if not 0 < params_ratio <= 1:
        raise ValueError(f"params_ratio must be in (0, 1], got {params_ratio}")
    return _largest_fitting(model, plan_at, params_ratio * count_params(model))


def _largest_fitting(model: nn.Module, plan_at, max_params: float) -> Plan:
    """``plan_at(s)`` for the largest ``s`` in [0, 1] that fits (bisection: params grow with s)."""
    smallest = planned_params(model, plan_at(0.0))
    if smallest > max_params:
        raise ValueError(f"budget of {max_params:.0f} parameters is too small: the layers that stay dense "
                         f"plus rank 1 everywhere need {smallest}")
    if planned_params(model, plan_at(1.0)) <= max_params:
        return plan_at(1.0)
    low, high = 0.0, 1.0
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (middle, high) if planned_params(model, plan_at(middle)) <= max_params else (low, middle)
    return plan_at(low)


def fit_to_budget(model: nn.Module, plan: Mapping[str, LayerPlan], max_params: float) -> Plan:
    """Shrink a plan until its deployed model has at most ``max_params`` parameters.

    Low-rank and deep layers keep their relative ranks and are scaled down together by the largest
    common factor that fits (bisection). Dense and overcomplete layers cost their full size; if
    they alone break the budget, the largest become low-rank first. Raises ``ValueError`` when even
    rank 1 everywhere does not fit.
    """
    plan = dict(parse_plan(plan))
    candidates = _candidates(model)
    _check_names(plan, candidates)

    def compressible(name: str, layer: LayerPlan) -> bool:  # dense, overcomplete, rank > full stay as planned
        return get_kind(layer.kind).scales_with_budget and layer.rank <= full_rank(candidates[name], layer.layout)

    def scaled(scale: float) -> Plan:
        return {
            name: layer.model_copy(update={"rank": snap_rank(candidates[name], scale * layer.rank)})
            if compressible(name, layer) else layer
            for name, layer in plan.items()
        }

    fixed = sorted((n for n, layer in plan.items() if not compressible(n, layer)),
                   key=lambda n: -sum(p.numel() for p in candidates[n].parameters()))
    while planned_params(model, scaled(0.0)) > max_params and fixed:
        name = fixed.pop(0)
        module, layer = candidates[name], plan[name]
        rank = full_rank(module, layer.layout) - (module.num_heads if is_attention(module) else 1)
        kind = layer.kind if get_kind(layer.kind).scales_with_budget else "lowrank"
        plan[name] = layer.model_copy(update={"kind": kind, "rank": max(1, rank)})
    return _largest_fitting(model, scaled, max_params)


def round_ranks(model: nn.Module, plan: Mapping[str, LayerPlan], multiple: int, max_params: float) -> Plan:
    """Ranks moved to multiples of ``multiple`` where the budget allows (GPU matrix units work in
    tiles of 8 or 16 channels: a rank-37 layer computes like a rank-40 one, only slower).

    Each low-rank/deep layer (attention and overcomplete layers stay) goes to its nearest multiple;
    if that breaks ``max_params``, the costliest layers that went up go down instead, one by one.
    Ranks below ``multiple``, and those whose next multiple reaches full rank, are kept as they are.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    plan = dict(parse_plan(plan))
    candidates = _candidates(model)
    _check_names(plan, candidates)
    down: dict[str, LayerPlan] = {}
    for name, layer in plan.items():
        module = candidates[name]
        if not get_kind(layer.kind).scales_with_budget or is_attention(module) or layer.rank < multiple:
            continue
        full = full_rank(module, layer.layout)
        lower, upper = (layer.rank // multiple) * multiple, -(-layer.rank // multiple) * multiple
        if layer.rank >= full or upper >= full:
            continue
        nearest = upper if upper - layer.rank <= layer.rank - lower else lower
        plan[name] = layer.model_copy(update={"rank": nearest})
        if nearest > layer.rank:
            down[name] = layer.model_copy(update={"rank": lower})
    by_cost = sorted(down, key=lambda n: -_layer_params(candidates[n], plan[n]))
    while planned_params(model, plan) > max_params and by_cost:
        name = by_cost.pop(0)
        plan[name] = down[name]
    return plan
