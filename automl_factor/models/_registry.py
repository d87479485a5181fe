"""The name -> constructor table behind `automl_factor.models.create` (timm's _registry, in small).

Kept apart from ``__init__`` so that model files can import `register_model` without a cycle.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TypeVar

from torch import nn

__all__ = ["register_model", "create", "constructor", "list_models"]

_ModelFn = TypeVar("_ModelFn", bound=Callable[..., nn.Module])

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: _ModelFn) -> _ModelFn:
    """Register a model constructor under its function name; returns it unchanged.

    A duplicate name is an error rather than a silent overwrite, so two files cannot fight over
    which ``resnet20`` a search gets.
    """
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered by {_REGISTRY[name].__module__}")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_REGISTRY)


def create(name: str, **kwargs: object) -> nn.Module:
    """Build the model called `name` with `kwargs` (e.g. ``num_classes``, ``in_channels``).

    `name` is a registered name (see `list_models`) or ``"module.path:function"``, which imports
    ``module.path`` and calls ``function(**kwargs)``.
    """
    return constructor(name)(**kwargs)


def constructor(name: str) -> Callable[..., nn.Module]:
    """The function `create` would call for `name` (to inspect which arguments it takes)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        return _import_constructor(name)
    raise ValueError(
        f"unknown model {name!r}; choose one of: {', '.join(list_models())} or 'module.path:function'"
    )


def _import_constructor(path: str) -> Callable[..., nn.Module]:
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"model path {path!r} must look like 'module.path:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"model path {path!r}: cannot import module {module_name!r} ({error})") from error
    constructor = getattr(module, attribute, None)
    if not callable(constructor):
        raise ValueError(f"model path {path!r}: module {module_name!r} has no callable {attribute!r}")
    return constructor

