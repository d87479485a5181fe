"""Frobenius decay over a whole model: which layers it acts on, the penalty, closed-form FD steps.

What decays a layer's factors is data in the plan (``LayerPlan.regularizer``: ``fd``, ``wd`` or
``none``), read here by layer name; without a plan every factorized layer gets FD (the paper's recipe).

Coupled FD (SGD) adds ``coeff · U(VᵀV)`` and ``coeff · V(UᵀU)`` to the factors' gradients after the
backward pass (``add_frobenius_grad_``): exactly the gradient of ``coeff · frobenius_penalty`` added to
the loss, but in closed form and batched over layers of equal shape, so it costs a few kernels per
distinct shape instead of a penalty graph per layer (on a GPU that graph was 43% of a step). Those
factors are left out of the optimizer's weight decay. Decoupled FD (AdamW) subtracts ``lr · coeff ·``
the same gradient from the factors directly, as AdamW does for weight decay. ``frobenius_penalty``
stays for reporting.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import torch
from torch import nn

from .frobenius import frobenius_grads, half_frobenius_sq
from .layers import FactorizedModule, is_factorized
from .plan import REGULARIZERS

__all__ = ["REGULARIZERS", "decayed_modules", "frobenius_penalty", "factor_parameters", "add_frobenius_grad_",
           "decoupled_frobenius_decay_"]


def decayed_modules(model: nn.Module, plan: Mapping | None = None, regularizer: str = "fd") -> list[FactorizedModule]:
    """The factorized modules of ``model`` whose plan entry says ``regularizer`` (a plan maps layer
    names to ``LayerPlan`` or dicts); without a plan, all of them count as ``fd``."""
    if regularizer not in REGULARIZERS:
        raise ValueError(f"regularizer must be one of {REGULARIZERS}, got {regularizer!r}")
    found = [(name, module) for name, module in model.named_modules() if is_factorized(module)]
    if plan is None:
        return [module for _, module in found] if regularizer == "fd" else []
    return [module for name, module in found if name in plan and _regularizer(plan[name]) == regularizer]


def _regularizer(layer) -> str:
    return layer["regularizer"] if isinstance(layer, Mapping) else layer.regularizer


def frobenius_penalty(model: nn.Module, plan: Mapping | None = None) -> torch.Tensor:
    """Σ ½‖U M Vᵀ‖²_F (per head for attention) over the FD layers of ``plan`` (all factorized layers
    without one), differentiable, never forming a product."""
    terms = [half_frobenius_sq(u, v, m) for module in decayed_modules(model, plan)
             for u, v, m in module.frobenius_factors()]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def factor_parameters(model: nn.Module, plan: Mapping | None = None, regularizer: str = "fd") -> list[nn.Parameter]:
    """The factor matrices (not biases) of the layers ``regularizer`` decays (see ``decayed_modules``)."""
    return [param for module in decayed_modules(model, plan, regularizer) for param in module.factor_parameters()]


def _closed_form_updates(modules: list[FactorizedModule], of) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(destinations, gradients): the closed-form gradient of Σ ½‖U M Vᵀ‖² for every factor of
    ``modules``, and the tensor ``of(parameter)`` (laid out like the factor) it belongs to.

    Triples of equal shapes are stacked and handled by one batched matmul chain (``frobenius_grads``
    accepts a batch dimension), so a model costs a few kernels per distinct layer shape, not per layer.
    """
    groups: dict[tuple, list[tuple[tuple, tuple]]] = defaultdict(list)
    for module in modules:
        for factors, destinations in zip(module.frobenius_factors(), module.frobenius_factors(of)):
            key = tuple(None if t is None else (tuple(t.shape), t.dtype, t.device) for t in factors)
            groups[key].append((factors, destinations))
    all_destinations, all_grads = [], []
    for members in groups.values():
        stacked = [None if members[0][0][i] is None else torch.stack([m[0][i].detach() for m in members])
                   for i in range(3)]
        grads = frobenius_grads(*stacked)  # (U, V) or (U, V, M) gradients, each (L, ...)
        for i, grad in enumerate(grads):
            all_destinations += [m[1][i] for m in members]
            all_grads += list(grad.unbind(0))
    return all_destinations, all_grads


@torch.no_grad()
def add_frobenius_grad_(model: nn.Module, coeff: float, plan: Mapping | None = None) -> None:
    """Coupled FD without a penalty term: ``p.grad += coeff · ∂/∂p Σ ½‖U M Vᵀ‖²`` for every factor of
    an FD layer, in closed form (``U (VᵀV)``, ``V (UᵀU)``, …), batched over equal shapes.

    Call it between ``loss.backward()`` and ``optimizer.step()``: the result equals backpropagating
    ``loss + coeff · frobenius_penalty(model, plan)``, without the penalty's forward and backward
    graph (several small kernels per layer). Missing gradients start at zero.
    """
    modules = decayed_modules(model, plan)
    if coeff == 0 or not modules:
        return
    for module in modules:
        for param in module.factor_parameters():
            if param.grad is None:
                param.grad = torch.zeros_like(param)
    destinations, grads = _closed_form_updates(modules, lambda p: p.grad)
    torch._foreach_add_(destinations, grads, alpha=coeff)


@torch.no_grad()
def decoupled_frobenius_decay_(model: nn.Module, lr: float, coeff: float, plan: Mapping | None = None) -> None:
    """One decoupled FD step for Adam-type optimizers: ``θ -= lr · coeff · ∇θ ½‖U M Vᵀ‖²``, in closed
    form and batched like ``add_frobenius_grad_`` (every gradient is taken before any factor moves)."""
    modules = decayed_modules(model, plan)
    if coeff == 0 or not modules:
        return
    destinations, grads = _closed_form_updates(modules, lambda p: p)
    torch._foreach_add_(destinations, grads, alpha=-lr * coeff)
