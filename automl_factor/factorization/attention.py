"""Factorized multi-head self-attention: per-head pairs ``Q_h K_hᵀ`` and ``V_h O_hᵀ``.

Multi-head attention is a sum of 2H factorized layers (Khodak et al., §3): head h scores with the
bilinear form ``W_q,hᵀ W_k,h`` and writes with ``O_h W_v,h``, both of rank ``head_dim``. Shrinking
the attention embedding dimension ``attn_dim`` (the rank knob) shrinks every pair; SI takes each
pair from the SVD of the dense pair's product and FD penalizes each product.

Works with any attention module that has ``q, k, v, o`` ``nn.Linear`` layers and ``dim``,
``num_heads``, ``attn_dim`` attributes (``automl_factor.models.attention.SelfAttention``); the
factorized module is the same class with a smaller ``attn_dim``, so deploying it needs nothing new.

Overcomplete attention (``attn_dim > dim``) cannot be collapsed to the dense size. The softmax is
taken per head, so heads never merge, and head h's products have rank up to its ``head_dim``
(at most ``dim + 1`` with biases). ``collapse`` therefore re-factorizes each head exactly, by
truncated SVD, at the largest rank any head can have (``deployed_attn_dim``). This is smaller
only when a head is wider than ``dim + 1``, and outputs stay equal. Otherwise the deployed module
keeps its trained width: ``inference_params`` (and the plan's ``planned_params``) count that width,
not the dense model's.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .layers import FactorizedModule
from .spectral import spectral_factors

__all__ = ["FactorizedAttention", "is_attention", "head_products", "deployed_attn_dim", "attention_params"]


def is_attention(module: nn.Module) -> bool:
    """True for modules with the q/k/v/o interface described above."""
    return all(isinstance(getattr(module, name, None), nn.Linear) for name in "qkvo") and hasattr(
        module, "num_heads"
    )


def deployed_attn_dim(dim: int, num_heads: int, attn_dim: int, bias: bool) -> int:
    """The attention width a trained module needs once deployed. Each head's products
    (``W̃_qᵀ W̃_k``: (dim+1)², ``O W̃_v``: dim × (dim+1)) have rank at most ``dim + bias``, so a head
    wider than that is collapsed to it, and a narrower head stays as it is."""
    head_dim = attn_dim // num_heads
    return num_heads * min(head_dim, dim + int(bias))


def attention_params(attn: nn.Module, attn_dim: int) -> int:
    """Deployed parameters of attention module ``attn`` trained at width ``attn_dim``: q, k, v, o at
    the width ``collapse`` keeps (``deployed_attn_dim``), with their biases."""
    bias = attn.q.bias is not None
    width = deployed_attn_dim(attn.dim, attn.num_heads, attn_dim, bias)
    return 4 * attn.dim * width + (3 * width if bias else 0) + (attn.dim if attn.o.bias is not None else 0)


def _augmented(linear: nn.Linear) -> torch.Tensor:
    """``[W | b]``: the affine map as a matrix acting on ``[x; 1]``."""
    if linear.bias is None:
        return linear.weight
    return torch.cat([linear.weight, linear.bias[:, None]], dim=1)


def head_products(attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head products (H, ·, ·) of an attention module: the score forms ``W̃_q,hᵀ W̃_k,h / √d_h``
    and the value-output maps ``O_h W̃_v,h`` (W̃ = [W | b] when biases exist)."""
    heads, head_dim = attn.num_heads, attn.attn_dim // attn.num_heads
    q = _augmented(attn.q).reshape(heads, head_dim, -1)
    k = _augmented(attn.k).reshape(heads, head_dim, -1)
    v = _augmented(attn.v).reshape(heads, head_dim, -1)
    o = attn.o.weight.reshape(attn.dim, heads, head_dim).permute(1, 0, 2)
    return q.transpose(1, 2) @ k / math.sqrt(head_dim), o @ v


class FactorizedAttention(FactorizedModule):
    """A self-attention module whose heads are trained as factorized pairs (SI + FD per head)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.rank = inner.attn_dim

    kind = "lowrank"

    @classmethod
    def from_attention(cls, attn: nn.Module, attn_dim: int, *, init: str = "spectral",
                       generator: torch.Generator | None = None) -> "FactorizedAttention":
        if attn_dim % attn.num_heads:
            raise ValueError(f"attention rank (attn_dim) must be a multiple of num_heads={attn.num_heads}, "
                             f"got {attn_dim}")
        inner = type(attn)(attn.dim, attn.num_heads, attn_dim=attn_dim, bias=attn.q.bias is not None)
        inner = inner.to(attn.q.weight)
        if init == "spectral":
            _spectral_init(inner, attn, generator)
        with torch.no_grad():
            if attn.o.bias is not None:
                inner.o.bias.copy_(attn.o.bias)
        return cls(inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def frobenius_factors(self, of=lambda tensor: tensor) -> list[tuple[torch.Tensor, torch.Tensor, None]]:
        """[(A, B, None)] batched over heads with per-head products ``A_h B_hᵀ``: the score forms
        ``W_q,hᵀ W_k,h`` and the value-output maps ``O_h W_v,h`` (weights only, what FD decays).
        With ``of=lambda p: p.grad``: views of the gradients laid out the same way."""
        inner = self.inner
        heads, head_dim, dim = inner.num_heads, inner.attn_dim // inner.num_heads, inner.dim
        q = of(inner.q.weight).view(heads, head_dim, dim).transpose(1, 2)
        k = of(inner.k.weight).view(heads, head_dim, dim).transpose(1, 2)
        v = of(inner.v.weight).view(heads, head_dim, dim).transpose(1, 2)
        o = of(inner.o.weight).view(dim, heads, head_dim).permute(1, 0, 2)
        return [(q, k, None), (o, v, None)]

    def factor_parameters(self) -> list[nn.Parameter]:
        return [self.inner.q.weight, self.inner.k.weight, self.inner.v.weight, self.inner.o.weight]

    def inference_params(self) -> int:
        """Parameters of ``collapse()``, from shapes alone."""
        return attention_params(self.inner, self.inner.attn_dim)

    def collapse(self) -> nn.Module:
        """The plain attention module, each head no wider than the rank its products can have
        (exact: per-head truncated SVD at that rank; a copy when no head is wider)."""
        inner = self.inner
        bias = inner.q.bias is not None
        width = deployed_attn_dim(inner.dim, inner.num_heads, inner.attn_dim, bias)
        if width == inner.attn_dim:
            return copy.deepcopy(inner)
        deployed = type(inner)(inner.dim, inner.num_heads, attn_dim=width, bias=bias).to(inner.q.weight)
        _spectral_init(deployed, inner, None)
        with torch.no_grad():
            if inner.o.bias is not None:
                deployed.o.bias.copy_(inner.o.bias)
        return deployed

    def extra_repr(self) -> str:
        return f"attn_dim={self.rank}, heads={self.inner.num_heads}"


@torch.no_grad()
def _spectral_init(new: nn.Module, old: nn.Module, generator: torch.Generator | None) -> None:
    """Set each new head pair to the best rank-``head_dim'`` factorization of the old head's product.

    The score scale changes from 1/√d_h to 1/√d_h', so the target is rescaled to keep the scores.
    """
    heads, new_head_dim = new.num_heads, new.attn_dim // new.num_heads
    scores, value_maps = head_products(old)
    has_bias = new.q.bias is not None
    q_rows, k_rows, v_rows, o_cols = [], [], [], []
    for h in range(heads):
        u, v = spectral_factors(scores[h] * math.sqrt(new_head_dim), new_head_dim, generator=generator)
        q_rows.append(u.T)
        k_rows.append(v.T)
        u, v = spectral_factors(value_maps[h], new_head_dim, generator=generator)
        o_cols.append(u)
        v_rows.append(v.T)
    for linear, rows in ((new.q, q_rows), (new.k, k_rows), (new.v, v_rows)):
        matrix = torch.cat(rows, dim=0)  # (attn_dim, dim [+1])
        linear.weight.copy_(matrix[:, : new.dim])
        if has_bias:
            linear.bias.copy_(matrix[:, new.dim])
    new.o.weight.copy_(torch.cat(o_cols, dim=1))
