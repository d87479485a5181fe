"""Factorization kinds by name: how a dense layer is factorized, what it costs, how a search sizes it.

Each kind is one small class registered under its ``name`` when it is defined (as tensorly-torch
registers its factorized tensors), and everything else (plans, budgets, the search space, the
command lines) looks kinds up here, so adding a kind is one module plus its tests:

- ``build(module, layer, generator)``: the trainable module made from the dense one. Spectral init
  reads the dense weights, so on a trained layer it is that layer's truncated SVD.
- ``deployed_params(module, layer)``: parameters once collapsed, from shapes alone: the one cost
  formula behind ``planned_params``, budgets and the search.
- ``rank_for(module, layout, value)``: the rank a sampled ``search_value`` (a fraction of the full
  rank, or an overcomplete scale) stands for; ``scales_with_budget`` says whether budget fitting may
  shrink it.

What Frobenius decay acts on and how a trained layer collapses belong to the built module
(``FactorizedModule.frobenius_factors`` and ``collapse``).
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from .attention import FactorizedAttention, attention_params, is_attention
from .layers import FactorizedConv2d, FactorizedLinear, pair_params

__all__ = ["Factorization", "get_kind", "kind_names", "matrix_shape", "full_rank", "snap_rank", "dense_params"]

_REGISTRY: dict[str, type["Factorization"]] = {}


def matrix_shape(module: nn.Module, layout: str = "spatial") -> tuple[int, int]:
    """(m, n) of the matrix a layer's forward multiplies by, in the given conv layout."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        c_out, c_in = module.out_channels, module.in_channels
        return (c_out * kh, c_in * kw) if layout == "spatial" else (c_out, c_in * kh * kw)
    raise TypeError(f"no matrix shape for {type(module).__name__}")


def full_rank(module: nn.Module, layout: str = "spatial") -> int:
    """The rank at which a factorization stops compressing (for attention: the model width)."""
    if is_attention(module):
        return module.dim
    return min(matrix_shape(module, layout))


def snap_rank(module: nn.Module, rank: float) -> int:
    """The integer rank a real rank becomes, the one rounding rule everywhere: down to a whole
    number, for attention down to a multiple of the heads (each head keeps ``rank / heads``),
    never below the smallest (1, or one per head)."""
    if is_attention(module):
        heads = module.num_heads
        return max(heads, math.floor(rank / heads + 1e-9) * heads)
    return max(1, math.floor(rank + 1e-9))


def dense_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _bias_params(module: nn.Module) -> int:
    return 0 if getattr(module, "bias", None) is None else module.bias.numel()


class Factorization:
    """One way to factorize a dense layer. A subclass with a ``name`` registers itself."""

    name: ClassVar[str]
    search_value: ClassVar[str | None] = "rank_fraction"  # what a search group samples for this kind
    scales_with_budget: ClassVar[bool] = True  # budget fitting may shrink its rank
    attention: ClassVar[bool] = True  # applies to attention modules (else they stay low-rank)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            if cls.name in _REGISTRY:
                raise ValueError(f"factorization kind {cls.name!r} is already registered by {_REGISTRY[cls.name]}")
            _REGISTRY[cls.name] = cls

    @classmethod
    def build(cls, module: nn.Module, layer, generator: torch.Generator | None,
              covariance: torch.Tensor | None = None) -> nn.Module:
        """The trainable module (``covariance``: the layer's input second moment, for ``init="activation"``)."""
        raise NotImplementedError

    @classmethod
    def deployed_params(cls, module: nn.Module, layer) -> int:
        raise NotImplementedError

    @classmethod
    def rank_for(cls, module: nn.Module, layout: str, value: float) -> int:
        """The rank of ``value`` × full rank (rounded up before ``snap_rank``, so a small fraction still
        leaves rank 1 and a fraction never rounds a rank away)."""
        return snap_rank(module, _ceil_to_heads(module, value * full_rank(module, layout)))


def _ceil_to_heads(module: nn.Module, rank: float) -> float:
    step = module.num_heads if is_attention(module) else 1
    return math.ceil(rank / step - 1e-9) * step


class Dense(Factorization):
    """The layer as it is."""

    name = "dense"
    search_value = None
    scales_with_budget = False

    @classmethod
    def build(cls, module, layer, generator, covariance=None):
        return module

    @classmethod
    def deployed_params(cls, module, layer) -> int:
        return dense_params(module)


class LowRank(Factorization):
    """``U Vᵀ`` (attention: per-head pairs of rank ``attn_dim / heads``); two small ops once deployed."""

    name = "lowrank"
    deep = False

    @classmethod
    def build(cls, module, layer, generator, covariance=None):
        if is_attention(module):
            if layer.init == "activation":
                raise ValueError("init 'activation' works on linear and conv layers, not attention")
            return FactorizedAttention.from_attention(module, layer.rank, init=layer.init, generator=generator)
        if isinstance(module, nn.Conv2d):
            return FactorizedConv2d.from_conv(module, layer.rank, layout=layer.layout, deep=cls.deep, init=layer.init,
                                              generator=generator, covariance=covariance)
        return FactorizedLinear.from_linear(module, layer.rank, deep=cls.deep, init=layer.init, generator=generator,
                                            covariance=covariance)

    @classmethod
    def deployed_params(cls, module, layer) -> int:
        if is_attention(module):
            return attention_params(module, layer.rank)
        return pair_params(*matrix_shape(module, layer.layout), layer.rank, _bias_params(module))


class Deep(LowRank):
    """``U M Vᵀ`` with ``M = I`` at init; ``U M`` is multiplied once at deployment, so it costs
    what low-rank costs."""

    name = "deep"
    deep = True
    attention = False

    @classmethod
    def build(cls, module, layer, generator, covariance=None):
        if is_attention(module):
            raise ValueError("attention layers support kind 'lowrank', not 'deep': each head pair is already a factorization")
        return super().build(module, layer, generator, covariance)


class Overcomplete(LowRank):
    """``U Vᵀ`` wider than full rank (``rank = scale × full rank``): trained wide, collapsed to one
    dense layer before deployment (teacher-free overcomplete knowledge distillation)."""

    name = "overcomplete"
    search_value = "scale"
    scales_with_budget = False
    attention = False

    @classmethod
    def build(cls, module, layer, generator, covariance=None):
        if is_attention(module):
            raise ValueError("attention layers cannot be overcomplete: heads never merge back to the dense size")
        if layer.rank < full_rank(module, layer.layout):
            raise ValueError(f"overcomplete needs a rank >= full rank {full_rank(module, layer.layout)}, "
                             f"got {layer.rank}")
        return super().build(module, layer, generator, covariance)

    @classmethod
    def deployed_params(cls, module, layer) -> int:
        m, n = matrix_shape(module, layer.layout)
        return m * n + _bias_params(module)

    @classmethod
    def rank_for(cls, module, layout, value) -> int:
        return math.ceil(value * full_rank(module, layout))


def get_kind(name: str) -> type[Factorization]:
    """The registered kind called ``name``; an unknown name lists the kinds that exist."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown factorization kind {name!r}; choose one of: {', '.join(kind_names())}")
    return _REGISTRY[name]


def kind_names() -> list[str]:
    """Names of the registered kinds, in registration order."""
    return list(_REGISTRY)
