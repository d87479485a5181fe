"""Factorized Linear and Conv2d layers: ``W = U Vᵀ`` (low-rank / overcomplete) or ``U M Vᵀ`` (deep).

Each layer stores its factors as matrices ``U (m × r)``, ``V (n × r)`` and optionally ``M (r × r)``
so the math (SI, FD) sees plain matrices; the forward reshapes them into the two small ops the
matrix reading implies. ``collapse()`` turns a trained layer into plain ``torch.nn`` modules for
deployment: the cheaper of two ops (``r(m+n)`` params) or one dense op (``mn``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .activation import whitened_spectral_factors
from .spectral import spectral_factors

__all__ = ["FactorizedModule", "FactorizedLayer", "FactorizedLinear", "FactorizedConv2d", "CONV_LAYOUTS",
           "is_factorized", "pair_params", "conv_matrix"]

CONV_LAYOUTS = ("spatial", "channel")


class FactorizedModule(nn.Module):
    """What every factorized module offers the rest of the library (Frobenius decay, parameter
    counts, deployment), whatever its factors look like."""

    def frobenius_factors(self, of=lambda tensor: tensor) -> list[tuple]:
        """``[(U, V, M or None), ...]`` (each may carry a leading batch dimension) whose products
        ``U M Vᵀ`` Frobenius decay penalizes. ``of`` picks what is viewed: the factors (default) or,
        e.g., ``lambda p: p.grad``: views of their gradients laid out the same way."""
        raise NotImplementedError

    def factor_parameters(self) -> list[nn.Parameter]:
        """The parameters the factors are views of (what FD decays instead of weight decay)."""
        raise NotImplementedError

    def inference_params(self) -> int:
        """Parameters of ``collapse()``, from shapes alone."""
        raise NotImplementedError

    def collapse(self) -> nn.Module:
        """Plain ``torch.nn`` modules computing the same function, for deployment."""
        raise NotImplementedError


def is_factorized(module: nn.Module) -> bool:
    return isinstance(module, FactorizedModule)


def conv_matrix(weight: torch.Tensor, layout: str) -> torch.Tensor:
    """A conv kernel ``(c_out, c_in, kh, kw)`` as the matrix a factorized forward multiplies by:
    ``spatial``, W[o,i,a,b] at row (o,a), column (i,b); ``channel``, row o, column (i,a,b)."""
    c_out, c_in, kh, kw = weight.shape
    if layout == "spatial":
        return weight.permute(0, 2, 1, 3).reshape(c_out * kh, c_in * kw)
    return weight.reshape(c_out, c_in * kh * kw)


def _calibrated(init: str, covariance: torch.Tensor | None) -> torch.Tensor | None:
    """The input covariance the init uses: required by ``activation``, ignored by ``spectral``."""
    if init != "activation":
        return None
    if covariance is None:
        raise ValueError("init 'activation' needs calibration data: factorize(model, plan, calibration=images)")
    return covariance


def pair_params(m: int, n: int, rank: int, bias: int) -> int:
    """Deployed parameters of an ``m × n`` matrix factorized at ``rank``, plus ``bias`` entries: the
    cheaper of two small ops, ``r(m+n)``, and one dense op, ``mn`` (what ``collapse`` picks)."""
    return min(rank * (m + n), m * n) + bias


class FactorizedLayer(FactorizedModule):
    """Common part of factorized layers: the factors, their product, and the deployment cost.

    Subclasses define ``shape`` (m, n) of the weight matrix, ``dense_matrix`` (read a dense layer's
    weight the way the forward uses it), ``forward`` and the two ``_to_*`` conversions.
    """

    def _init_factors(self, m: int, n: int, rank: int, deep: bool, bias: bool) -> None:
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.rank = rank
        self.U = nn.Parameter(torch.empty(m, rank))
        self.V = nn.Parameter(torch.empty(n, rank))
        self.M = nn.Parameter(torch.eye(rank)) if deep else None
        self.bias = nn.Parameter(torch.zeros(self.out_channels_or_features)) if bias else None

    @property
    def kind(self) -> str:
        return "deep" if self.M is not None else "lowrank"

    @property
    def overcomplete(self) -> bool:
        return self.rank >= min(self.U.shape[0], self.V.shape[0])

    def outer_factor(self) -> torch.Tensor:
        """``U M`` for deep layers (multiplied once per forward), else ``U``."""
        return self.U if self.M is None else self.U @ self.M

    def factors(self, of=lambda tensor: tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(U, V, M) with ``W = U M Vᵀ`` (``of`` as in ``frobenius_factors``)."""
        return of(self.U), of(self.V), None if self.M is None else of(self.M)

    def frobenius_factors(self, of=lambda tensor: tensor) -> list[tuple]:
        return [self.factors(of)]

    def factor_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.U, self.V, self.M) if p is not None]

    def weight_matrix(self) -> torch.Tensor:
        """The effective m × n matrix ``U M Vᵀ``."""
        return self.outer_factor() @ self.V.T

    def init_spectral(self, dense_weight: torch.Tensor, generator: torch.Generator | None = None,
                      covariance: torch.Tensor | None = None) -> None:
        """SI: factors from the truncated SVD of ``dense_weight`` read as this layer's matrix; with the
        layer's input ``covariance``, the activation-aware truncation (``activation.py``)."""
        matrix = self.dense_matrix(dense_weight)
        if covariance is None:
            u, v = spectral_factors(matrix, self.rank, generator=generator)
        else:
            u, v = whitened_spectral_factors(matrix, self.rank, covariance, generator=generator)
        with torch.no_grad():
            self.U.copy_(u)
            self.V.copy_(v)
            if self.M is not None:
                self.M.copy_(torch.eye(self.rank, dtype=self.M.dtype))

    def init_default(self, outer_fan_in: int, generator: torch.Generator | None = None) -> None:
        """Each factor gets PyTorch's own default (Kaiming-uniform, a=√5) init as the small layer
        it implements: bound 1/√fan_in. ``M`` starts at the identity."""
        with torch.no_grad():
            bound_v = 1.0 / math.sqrt(self.V.shape[0])
            bound_u = 1.0 / math.sqrt(outer_fan_in)
            self.V.copy_((torch.rand(self.V.shape, generator=generator) * 2 - 1) * bound_v)
            self.U.copy_((torch.rand(self.U.shape, generator=generator) * 2 - 1) * bound_u)

    def inference_params(self) -> int:
        """Parameters once collapsed: ``min(r(m+n), mn)`` plus the bias."""
        return pair_params(self.U.shape[0], self.V.shape[0], self.rank, 0 if self.bias is None else self.bias.numel())

    def collapse(self) -> nn.Module:
        """Plain torch.nn replacement with the same outputs: two small ops, or one dense op when
        that has fewer parameters (always the case for overcomplete and full-rank layers)."""
        m, n = self.U.shape[0], self.V.shape[0]
        with torch.no_grad():
            if self.rank * (m + n) < m * n:
                return self._to_pair(self.outer_factor().detach().clone(), self.V.detach().clone())
            return self._to_dense(self.weight_matrix().detach().clone())

    def _factory(self) -> dict:
        """dtype and device for the plain layers ``collapse`` builds."""
        return {"dtype": self.U.dtype, "device": self.U.device}


class FactorizedLinear(FactorizedLayer):
    """``y = x V Mᵀ Uᵀ + b``: two matmuls through rank ``r``."""

    def __init__(self, in_features: int, out_features: int, rank: int, *, deep: bool = False, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.out_channels_or_features = out_features
        self._init_factors(out_features, in_features, rank, deep, bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, *, deep: bool = False, init: str = "spectral",
                    generator: torch.Generator | None = None,
                    covariance: torch.Tensor | None = None) -> "FactorizedLinear":
        layer = cls(linear.in_features, linear.out_features, rank, deep=deep, bias=linear.bias is not None)
        layer = layer.to(linear.weight)
        if init in ("spectral", "activation"):
            layer.init_spectral(linear.weight, generator, _calibrated(init, covariance))
        else:
            layer.init_default(outer_fan_in=rank, generator=generator)
        if linear.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(linear.bias)
        return layer

    def dense_matrix(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.V.T), self.outer_factor(), self.bias)

    def _to_pair(self, outer: torch.Tensor, inner: torch.Tensor) -> nn.Module:
        first = nn.Linear(self.in_features, self.rank, bias=False, **self._factory())
        second = nn.Linear(self.rank, self.out_features, bias=self.bias is not None, **self._factory())
        first.weight.copy_(inner.T)
        second.weight.copy_(outer)
        if self.bias is not None:
            second.bias.copy_(self.bias)
        return nn.Sequential(first, second)

    def _to_dense(self, matrix: torch.Tensor) -> nn.Module:
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, **self._factory())
        dense.weight.copy_(matrix)
        if self.bias is not None:
            dense.bias.copy_(self.bias)
        return dense

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, kind={self.kind}"


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class FactorizedConv2d(FactorizedLayer):
    """A Conv2d as two convolutions through ``r`` channels.

    ``layout="spatial"`` (the paper's): the kernel ``(c_out, c_in, kh, kw)`` is the matrix
    ``(c_out·kh) × (c_in·kw)``; forward = a ``1×kw`` conv ``c_in→r`` then a ``kh×1`` conv ``r→c_out``,
    stride, padding and dilation split along each axis. ``layout="channel"``: the matrix
    ``c_out × (c_in·kh·kw)``; forward = a ``kh×kw`` conv ``c_in→r`` then a ``1×1`` conv ``r→c_out``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int, *, stride=1, padding=0,
                 dilation=1, layout: str = "spatial", deep: bool = False, bias: bool = True):
        super().__init__()
        if layout not in CONV_LAYOUTS:
            raise ValueError(f"layout must be one of {CONV_LAYOUTS}, got {layout!r}")
        if isinstance(padding, str):
            raise ValueError(f"padding must be numbers, got {padding!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.out_channels_or_features = out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.layout = layout
        kh, kw = self.kernel_size
        m, n = (out_channels * kh, in_channels * kw) if layout == "spatial" else (out_channels, in_channels * kh * kw)
        self._init_factors(m, n, rank, deep, bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int, *, layout: str = "spatial", deep: bool = False,
                  init: str = "spectral", generator: torch.Generator | None = None,
                  covariance: torch.Tensor | None = None) -> "FactorizedConv2d":
        if init == "activation" and layout != "channel":
            raise ValueError(f"init 'activation' needs conv layout 'channel' (its matrix acts on im2col patches), "
                             f"got {layout!r}")
        if conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError(f"only groups=1, zero-padded convs can be factorized, got groups={conv.groups}, "
                             f"padding_mode={conv.padding_mode!r}")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, rank, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, layout=layout, deep=deep,
                    bias=conv.bias is not None).to(conv.weight)
        if init in ("spectral", "activation"):
            layer.init_spectral(conv.weight, generator, _calibrated(init, covariance))
        else:
            layer.init_default(outer_fan_in=rank * (conv.kernel_size[0] if layout == "spatial" else 1),
                               generator=generator)
        if conv.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(conv.bias)
        return layer

    def dense_matrix(self, weight: torch.Tensor) -> torch.Tensor:
        """The kernel read exactly as the forward uses it (``conv_matrix``)."""
        return conv_matrix(weight, self.layout)

    def kernel_from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        """Inverse of ``dense_matrix``."""
        kh, kw = self.kernel_size
        if self.layout == "spatial":
            return matrix.reshape(self.out_channels, kh, self.in_channels, kw).permute(0, 2, 1, 3)
        return matrix.reshape(self.out_channels, self.in_channels, kh, kw)

    def _pair_kernels(self, outer: torch.Tensor, inner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kh, kw = self.kernel_size
        r = self.rank
        if self.layout == "spatial":
            first = inner.T.reshape(r, self.in_channels, 1, kw)
            second = outer.reshape(self.out_channels, kh, r).permute(0, 2, 1).reshape(self.out_channels, r, kh, 1)
        else:
            first = inner.T.reshape(r, self.in_channels, kh, kw)
            second = outer.reshape(self.out_channels, r, 1, 1)
        return first, second

    def _pair_geometry(self) -> tuple[dict, dict]:
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        if self.layout == "spatial":
            return (dict(stride=(1, sw), padding=(0, pw), dilation=(1, dw)),
                    dict(stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1)))
        return (dict(stride=self.stride, padding=self.padding, dilation=self.dilation),
                dict(stride=1, padding=0, dilation=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self._pair_kernels(self.outer_factor(), self.V)
        geo_first, geo_second = self._pair_geometry()
        return F.conv2d(F.conv2d(x, first, None, **geo_first), second, self.bias, **geo_second)

    def _to_pair(self, outer: torch.Tensor, inner: torch.Tensor) -> nn.Module:
        first_w, second_w = self._pair_kernels(outer, inner)
        geo_first, geo_second = self._pair_geometry()
        first = nn.Conv2d(self.in_channels, self.rank, first_w.shape[2:], bias=False, **geo_first, **self._factory())
        second = nn.Conv2d(self.rank, self.out_channels, second_w.shape[2:], bias=self.bias is not None,
                           **geo_second, **self._factory())
        first.weight.copy_(first_w)
        second.weight.copy_(second_w)
        if self.bias is not None:
            second.bias.copy_(self.bias)
        return nn.Sequential(first, second)

    def _to_dense(self, matrix: torch.Tensor) -> nn.Module:
        dense = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                          padding=self.padding, dilation=self.dilation, bias=self.bias is not None, **self._factory())
        dense.weight.copy_(self.kernel_from_matrix(matrix))
        if self.bias is not None:
            dense.bias.copy_(self.bias)
        return dense

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"rank={self.rank}, layout={self.layout}, kind={self.kind}")
