"""automl-factor: find smaller, faster networks by searching over factorized layers.

The library part (no Ray, no MLflow)::

    import automl_factor as af
    model = af.models.create("resnet20", num_classes=10)
    plan = {n: af.LayerPlan(kind="lowrank", rank=8) for n in af.factorizable_layers(model)}
    fmodel = af.factorize(model, plan)      # spectral init from model's own weights
    dense = af.collapse(fmodel)             # plain torch.nn, for deployment
"""
from . import models
from .factorization import (FactorizedAttention, FactorizedConv2d, FactorizedLinear, LayerPlan, add_frobenius_grad_,
                            collapse, count_params, decoupled_frobenius_decay_, factorizable_layers, factorize,
                            fit_to_budget, frobenius_penalty, planned_params, uniform_plan)

__version__ = "0.1.0"


def __getattr__(name: str):
    """``af.train`` and ``af.search`` on first use (the search imports Ray, Optuna and MLflow)."""
    if name in ("train", "search"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'automl_factor' has no attribute {name!r}")

__all__ = [
    "FactorizedAttention", "FactorizedConv2d", "FactorizedLinear", "LayerPlan", "add_frobenius_grad_", "collapse", "count_params",
    "decoupled_frobenius_decay_", "factorizable_layers", "factorize", "fit_to_budget", "frobenius_penalty",
    "models", "planned_params", "uniform_plan",
]
