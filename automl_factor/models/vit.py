"""A small Vision Transformer for 32x32 images (Dosovitskiy et al., ICLR 2021), patch size 4.

Pre-norm blocks with a class token and learned position embeddings. Attention is `SelfAttention`,
whose four separate q/k/v/o projections and optional narrower ``attn_dim`` are what the
factorization acts on (Khodak et al., ICLR 2021, section on attention).
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register_model
from .attention import SelfAttention

__all__ = ["Mlp", "Block", "VisionTransformer", "vit"]


class Mlp(nn.Module):
    """Two linear layers with a GELU, named so they read as ``blocks.i.mlp.fc1`` and ``.fc2``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1 x)``, then ``x + mlp(norm2 x)``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, attn_dim: int | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, attn_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patch-embedding conv `stem`, class token, learned position embeddings, `blocks`, then `fc` on the class token."""

    default_dense_layers: tuple[str, ...] = ("stem", "fc")

    def __init__(
        self,
        *,
        image_size: int = 32,
        patch_size: int = 4,
        num_classes: int = 10,
        in_channels: int = 3,
        dim: int = 192,
        depth: int = 6,
        heads: int = 3,
        mlp_dim: int = 384,
        attn_dim: int | None = None,
    ) -> None:
        super().__init__()
        if patch_size < 1 or image_size % patch_size != 0:
            raise ValueError(f"image_size must be a multiple of patch_size={patch_size}, got {image_size}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        num_patches = (image_size // patch_size) ** 2
        self.image_size = image_size
        self.stem = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_dim, attn_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # The timm/DeiT recipe: small truncated normals, zero biases; the conv stem keeps its default.
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"input must be {self.image_size}x{self.image_size}, got {tuple(x.shape[-2:])}")
        tokens = self.stem(x).flatten(2).transpose(1, 2)  # (B, num_patches, dim)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.fc(self.norm(x[:, 0]))


@register_model
def vit(image_size: int = 32, **kwargs) -> VisionTransformer:
    """ViT with patch 4, dim 192, depth 6, 3 heads, MLP 384 (1.8M parameters at 32x32, 10 classes).

    ``image_size`` is named so that ``train.build_model`` sees the model wants the data's image size;
    the other keywords are ``VisionTransformer``'s."""
    return VisionTransformer(image_size=image_size, **kwargs)
