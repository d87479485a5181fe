"""Activation-aware truncation: the rank-r factorization that keeps what the data uses.

Plain spectral init keeps the best rank-r approximation of ``W`` itself. When a trained layer is
compressed, what matters is its output on real inputs: with inputs ``X`` (one per column) and their
second moment ``C = X Xᵀ = S Sᵀ`` (Cholesky), ``‖(W − W′) X‖_F = ‖(W − W′) S‖_F``, so the best rank-r
``W′`` is the truncated SVD of ``W S`` mapped back, ``(W S)_r S⁻¹`` (SVD-LLM, Wang et al. 2024; ASVD
scales by activations in the same spirit). Factors: ``U = U_r √Σ_r``, ``V = S⁻ᵀ V_r √Σ_r``.

Inputs are what the layer's matrix multiplies: features for a linear layer, im2col patches
(``F.unfold``, ordered as the kernel's ``c_in·kh·kw``) for a convolution in the ``channel`` layout.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .spectral import spectral_factors

__all__ = ["whitened_spectral_factors", "input_covariances", "layer_inputs"]


def whitened_spectral_factors(matrix: torch.Tensor, rank: int, covariance: torch.Tensor, *, damping: float = 1e-6,
                              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, V)`` with ``U Vᵀ`` the rank-``rank`` matrix closest to ``matrix`` on inputs whose second
    moment is ``covariance`` (n × n). ``damping`` (relative to the mean diagonal) keeps the Cholesky
    factor invertible when some input directions never occur."""
    work = matrix.detach().to(torch.float64)
    moment = covariance.detach().to(torch.float64)
    ridge = damping * moment.diagonal().mean().clamp_min(1e-12)
    root = torch.linalg.cholesky(moment + ridge * torch.eye(moment.shape[0], dtype=torch.float64))
    u, v = spectral_factors(work @ root, rank, generator=generator)  # W S ≈ u vᵀ
    v = torch.linalg.solve_triangular(root.T, v, upper=True)  # S⁻ᵀ v, so u vᵀ = (W S)_r S⁻¹
    return u.to(matrix.dtype), v.to(matrix.dtype)


def layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, n): the vectors ``module``'s weight matrix multiplies, from a batch of its inputs."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, module.in_features)
    if isinstance(module, nn.Conv2d):
        patches = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                           stride=module.stride)  # (B, c_in·kh·kw, L)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    raise TypeError(f"activation-aware init needs a Linear or Conv2d layer, got {type(module).__name__}")


@torch.no_grad()
def input_covariances(model: nn.Module, names: Sequence[str], batches: torch.Tensor | Iterable[torch.Tensor]
                      ) -> dict[str, torch.Tensor]:
    """``X Xᵀ`` (float64) of the inputs each named layer sees while ``model`` (in eval mode) runs on
    ``batches`` (one tensor, or an iterable of them): the calibration statistics."""
    modules = dict(model.named_modules())
    moments: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module, args):
            inputs = layer_inputs(module, args[0]).to(torch.float64)
            moments[name] = moments.get(name, 0) + inputs.T @ inputs
        return record

    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in names]
    was_training = model.training
    model.eval()
    try:
        for batch in [batches] if isinstance(batches, torch.Tensor) else batches:
            model(batch)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return moments
