"""Frobenius decay over a whole model: the penalty, the factor parameters it owns, decoupled FD.

Coupled FD (SGD) adds ``coeff · frobenius_penalty(model, fd_only=True)`` to the loss: its gradient is
``coeff · U(VᵀV)`` and ``coeff · V(UᵀU)``, computed from r × r Gram matrices (see ``frobenius``).
Those factors are then left out of the optimizer's weight decay. Decoupled FD (AdamW) subtracts
``lr · coeff ·`` the same gradient from the factors directly, as AdamW does for weight decay.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import FactorizedAttention
from .frobenius import half_frobenius_sq
from .layers import FactorizedLayer

__all__ = ["frobenius_penalty", "factor_parameters", "decoupled_frobenius_decay_"]


def _factor_groups(model: nn.Module, fd_only: bool):
    """(A, B, M) triples, batched per attention module, of every factorized layer."""
    for module in model.modules():
        if fd_only and getattr(module, "regularizer", None) != "fd":
            continue
        if isinstance(module, FactorizedLayer):
            yield module.factors()
        elif isinstance(module, FactorizedAttention):
            yield from module.head_factors()


def frobenius_penalty(model: nn.Module, *, fd_only: bool = False) -> torch.Tensor:
    """Σ ½‖U M Vᵀ‖²_F over factorized layers (per head for attention), differentiable, never
    forming a product. ``fd_only`` restricts it to layers planned with ``regularizer='fd'``."""
    terms = [half_frobenius_sq(u, v, m) for u, v, m in _factor_groups(model, fd_only)]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def factor_parameters(model: nn.Module, *, regularizer: str = "fd") -> list[nn.Parameter]:
    """The factor matrices (not biases) of factorized layers planned with ``regularizer``."""
    params: list[nn.Parameter] = []
    for module in model.modules():
        if getattr(module, "regularizer", None) != regularizer:
            continue
        if isinstance(module, FactorizedLayer):
            params += [p for p in (module.U, module.V, module.M) if p is not None]
        elif isinstance(module, FactorizedAttention):
            params += [module.inner.q.weight, module.inner.k.weight, module.inner.v.weight, module.inner.o.weight]
    return params


@torch.no_grad()
def decoupled_frobenius_decay_(model: nn.Module, lr: float, coeff: float) -> None:
    """One decoupled FD step for Adam-type optimizers: ``θ -= lr · coeff · ∇θ ½‖U M Vᵀ‖²``."""
    params = factor_parameters(model, regularizer="fd")
    if not params or coeff == 0:
        return
    with torch.enable_grad():
        grads = torch.autograd.grad(frobenius_penalty(model, fd_only=True), params)
    for param, grad in zip(params, grads):
        param.sub_(grad, alpha=lr * coeff)
