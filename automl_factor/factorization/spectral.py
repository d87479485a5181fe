"""Spectral initialization (SI): factors from the truncated SVD of a dense weight.

Pure tensor math. Given the matrix a layer's forward multiplies by, ``W ≈ U_r S_r V_rᵀ``
and the factors are ``U = U_r √S_r``, ``V = V_r √S_r`` (Khodak et al., ICLR 2021, §3).
By Eckart–Young this is the best rank-r approximation of ``W`` in Frobenius norm.
"""
from __future__ import annotations

import torch

__all__ = ["spectral_factors", "best_rank_error"]


def spectral_factors(
    matrix: torch.Tensor, rank: int, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(U, V)`` of shapes ``(m, rank)``, ``(n, rank)`` with ``U Vᵀ`` the best rank-``rank``
    approximation of ``matrix`` (m × n), its singular values split evenly between the factors.

    A rank above ``min(m, n)`` (overcomplete) reproduces ``matrix`` exactly: the full factors are
    rotated into the wider space by a random matrix ``P`` with orthonormal columns (``PᵀP = I``),
    so ``U Vᵀ = U_k √S Pᵀ P √S V_kᵀ = W``.
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    work = matrix.detach().to(torch.float64)
    left, singular, right_t = torch.linalg.svd(work, full_matrices=False)
    keep = min(rank, singular.numel())
    root = singular[:keep].sqrt()
    u = left[:, :keep] * root
    v = right_t[:keep].T * root
    if rank > keep:
        noise = torch.randn(rank, keep, generator=generator, dtype=torch.float64)
        rotation, _ = torch.linalg.qr(noise)  # (rank, keep), orthonormal columns
        u, v = u @ rotation.T, v @ rotation.T
    return u.to(matrix.dtype), v.to(matrix.dtype)


def best_rank_error(matrix: torch.Tensor, rank: int) -> float:
    """Frobenius error of the best rank-``rank`` approximation: ``√Σ_{i>r} σᵢ²`` (Eckart–Young)."""
    singular = torch.linalg.svdvals(matrix.detach().to(torch.float64))
    return float(singular[rank:].square().sum().sqrt())
