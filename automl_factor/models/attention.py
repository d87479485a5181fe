"""Multi-head self-attention with an attention width that can be smaller than the model width.

Khodak et al. (ICLR 2021) read multi-head attention as a sum of 2H factorized layers, ``Q_h K_hᵀ``
and ``V_h O_hᵀ``, each of rank ``attn_dim / H``. Shrinking ``attn_dim`` below ``dim`` is therefore
the attention's compression knob, and keeping q, k, v and o as four separate ``nn.Linear`` layers
lets spectral initialization and Frobenius decay reach each factor by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SelfAttention"]


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/o Linear layers and an attention
    embedding dimension `attn_dim` that may be smaller than `dim` (the compression knob).

    Example::

        attn = SelfAttention(dim=192, num_heads=3, attn_dim=96)   # rank 32 per head
        y = attn(torch.randn(8, 65, 192))                          # (8, 65, 192)
    """

    def __init__(self, dim: int, num_heads: int, attn_dim: int | None = None, bias: bool = True) -> None:
        super().__init__()
        attn_dim = dim if attn_dim is None else attn_dim
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        if attn_dim < 1 or attn_dim % num_heads != 0:
            raise ValueError(f"attn_dim must be a positive multiple of num_heads={num_heads}, got {attn_dim}")
        self.dim = dim
        self.num_heads = num_heads
        self.attn_dim = attn_dim
        self.head_dim = attn_dim // num_heads
        self.q = nn.Linear(dim, attn_dim, bias=bias)
        self.k = nn.Linear(dim, attn_dim, bias=bias)
        self.v = nn.Linear(dim, attn_dim, bias=bias)
        self.o = nn.Linear(attn_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        # (B, N, attn_dim) -> (B, H, N, head_dim); SDPA scales by 1/sqrt(head_dim) by default.
        q, k, v = (self._split_heads(proj(x), batch, tokens) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o(out.transpose(1, 2).reshape(batch, tokens, self.attn_dim))

    def _split_heads(self, t: torch.Tensor, batch: int, tokens: int) -> torch.Tensor:
        return t.reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, attn_dim={self.attn_dim}"
