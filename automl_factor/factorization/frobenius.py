"""Frobenius decay (FD): penalize ‖U M Vᵀ‖²_F, never forming U Vᵀ.

Weight decay on the factors penalizes ‖U‖² + ‖V‖², an upper bound on twice the nuclear norm of
U Vᵀ; FD penalizes the product itself, as weight decay does for the dense model (Khodak et al.,
§4). Written with Gram matrices, ½‖U M Vᵀ‖² = ½ tr((UᵀU) M (VᵀV) Mᵀ): cost O((m+n) r² + r³), and
autograd of it gives exactly the cheap gradients ``U (VᵀV)`` and ``V (UᵀU)`` (deep:
``U M (VᵀV) Mᵀ``, ``V Mᵀ (UᵀU) M``, ``(UᵀU) M (VᵀV)``). All functions accept a leading batch
dimension (one pair per attention head).
"""
from __future__ import annotations

import torch

__all__ = ["half_frobenius_sq", "frobenius_grads", "nuclear_norm_and_bound"]


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-2, -1)


def half_frobenius_sq(u: torch.Tensor, v: torch.Tensor, m: torch.Tensor | None = None) -> torch.Tensor:
    """½‖U M Vᵀ‖²_F summed over any batch dimension, from the r × r Gram matrices only."""
    gram_u = _t(u) @ u
    gram_v = _t(v) @ v
    if m is not None:
        gram_u = _t(m) @ gram_u @ m  # (UM)ᵀ(UM)
    return 0.5 * (gram_u * gram_v).sum()  # tr(AB) = Σ A∘Bᵀ, and Gram matrices are symmetric


def frobenius_grads(
    u: torch.Tensor, v: torch.Tensor, m: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """Closed-form gradient of ``half_frobenius_sq`` w.r.t. (U, V) or (U, V, M)."""
    gram_u = _t(u) @ u
    gram_v = _t(v) @ v
    if m is None:
        return u @ gram_v, v @ gram_u
    return (
        u @ m @ gram_v @ _t(m),
        v @ _t(m) @ gram_u @ m,
        gram_u @ m @ gram_v,
    )


def nuclear_norm_and_bound(u: torch.Tensor, v: torch.Tensor) -> tuple[float, float]:
    """‖U Vᵀ‖_* and its variational upper bound ½(‖U‖²_F + ‖V‖²_F) (the quantity weight decay
    on the factors penalizes). Used to reproduce Figure 2 of the paper; forms the product."""
    nuclear = torch.linalg.matrix_norm(u.detach() @ _t(v.detach()), ord="nuc").sum()
    bound = 0.5 * (u.detach().square().sum() + v.detach().square().sum())
    return float(nuclear), float(bound)
