"""Factorized Linear / Conv2d layers checked against independent dense computations (numpy SVD,
F.conv2d with a kernel rebuilt in the test)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from automl_factor.factorization import FactorizedConv2d, FactorizedLinear


@pytest.fixture(autouse=True)
def _float64():
    """Everything here is float64: the checks are exact up to rounding."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# (c_in, c_out, kernel, stride, padding, dilation, bias)
CONVS = [
    (3, 5, 3, 1, 1, 1, True),
    (4, 6, 3, 2, 1, 1, False),
    (4, 6, (3, 1), 2, (1, 0), 1, True),
    (3, 4, (1, 3), (1, 2), (0, 1), 1, False),
    (5, 3, (2, 3), (2, 1), (1, 2), (1, 2), True),
    (4, 4, 3, 1, 2, 2, False),
    (6, 8, 1, 2, 0, 1, False),
    (6, 8, 1, 1, 0, 1, True),
]
CONV_IDS = [f"c{c[0]}-{c[1]}-k{c[2]}-s{c[3]}-p{c[4]}-d{c[5]}-b{int(c[6])}" for c in CONVS]


def _conv(spec, seed=0) -> nn.Conv2d:
    c_in, c_out, k, s, p, d, bias = spec
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, k, stride=s, padding=p, dilation=d, bias=bias).double()
    if bias:
        with torch.no_grad():
            conv.bias.normal_()
    return conv


def _linear(n=7, m=5, bias=True, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(n, m, bias=bias).double()
    if bias:
        with torch.no_grad():
            lin.bias.normal_()
    return lin


def _matrix_np(weight: np.ndarray, layout: str) -> np.ndarray:
    """Independent reading of a conv kernel W[o,i,a,b]: spatial -> row (o,a), col (i,b)."""
    c_out, c_in, kh, kw = weight.shape
    if layout == "spatial":
        return np.transpose(weight, (0, 2, 1, 3)).reshape(c_out * kh, c_in * kw)
    return weight.reshape(c_out, c_in * kh * kw)


def _kernel_np(matrix: np.ndarray, shape, layout: str) -> np.ndarray:
    c_out, c_in, kh, kw = shape
    if layout == "spatial":
        return np.transpose(matrix.reshape(c_out, kh, c_in, kw), (0, 2, 1, 3))
    return matrix.reshape(c_out, c_in, kh, kw)


def _tail(matrix: np.ndarray, rank: int) -> float:
    s = np.linalg.svd(matrix, compute_uv=False)
    return float(np.sqrt(np.sum(s[rank:] ** 2)))


def _x_conv(spec, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, spec[0], 9, 8, generator=g, dtype=torch.float64)


def _full(spec, layout):
    c_in, c_out, k, *_ = spec
    kh, kw = (k, k) if isinstance(k, int) else k
    return min(c_out * kh, c_in * kw) if layout == "spatial" else min(c_out, c_in * kh * kw)


# --- full-rank SI reproduces the dense layer ---------------------------------------------------------


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rank_factor", [1, 2])
def test_linear_full_rank_si_reproduces_dense(deep, bias, rank_factor) -> None:
    lin = _linear(bias=bias)
    rank = rank_factor * min(5, 7)
    layer = FactorizedLinear.from_linear(lin, rank, deep=deep, generator=torch.Generator().manual_seed(0))
    assert layer.rank == rank and layer.U.shape == (5, rank) and layer.V.shape == (7, rank)
    assert layer.overcomplete
    x = torch.randn(4, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), lin(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.weight_matrix(), lin.weight, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layout", ["spatial", "channel"])
@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("rank_factor", [1, 2])
@pytest.mark.parametrize("spec", CONVS, ids=CONV_IDS)
def test_conv_full_rank_si_reproduces_dense(spec, layout, deep, rank_factor) -> None:
    conv = _conv(spec)
    rank = rank_factor * _full(spec, layout)
    layer = FactorizedConv2d.from_conv(conv, rank, layout=layout, deep=deep,
                                       generator=torch.Generator().manual_seed(0))
    x = _x_conv(spec)
    expected = conv(x)
    got = layer(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


# --- rank-r SI meets the Eckart–Young bound --------------------------------------------------------


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("rank", [1, 2, 4])
@pytest.mark.parametrize("shape", [(5, 7), (9, 4), (6, 6)])
def test_linear_si_is_eckart_young_optimal(shape, rank, deep) -> None:
    m, n = shape
    lin = _linear(n=n, m=m)
    layer = FactorizedLinear.from_linear(lin, rank, deep=deep)
    w = lin.weight.detach().numpy()
    err = torch.linalg.matrix_norm(layer.weight_matrix() - lin.weight).item()
    assert err == pytest.approx(_tail(w, rank), rel=1e-9, abs=1e-12)
    if rank < min(m, n):
        assert err > 0
    # singular values split evenly: UᵀU == VᵀV == diag(top-r singular values)
    s = np.linalg.svd(w, compute_uv=False)[:rank]
    np.testing.assert_allclose((layer.U.T @ layer.U).detach().numpy(), np.diag(s), atol=1e-10)
    np.testing.assert_allclose((layer.V.T @ layer.V).detach().numpy(), np.diag(s), atol=1e-10)


@pytest.mark.parametrize("layout", ["spatial", "channel"])
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("spec", CONVS, ids=CONV_IDS)
def test_conv_si_is_eckart_young_optimal(spec, layout, rank) -> None:
    conv = _conv(spec)
    layer = FactorizedConv2d.from_conv(conv, rank, layout=layout)
    target = _matrix_np(conv.weight.detach().numpy(), layout)
    assert tuple(layer.weight_matrix().shape) == target.shape
    err = np.linalg.norm(layer.weight_matrix().detach().numpy() - target)
    assert err == pytest.approx(_tail(target, rank), rel=1e-9, abs=1e-12)
    # the library's dense_matrix is the same reading as the test's
    np.testing.assert_array_equal(layer.dense_matrix(conv.weight).detach().numpy(), target)


# --- forward equals F.conv2d with the reconstructed kernel ------------------------------------------


@pytest.mark.parametrize("layout", ["spatial", "channel"])
@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("rank", [1, 3, 7])
@pytest.mark.parametrize("spec", CONVS, ids=CONV_IDS)
def test_conv_forward_equals_dense_conv_of_reconstructed_kernel(spec, layout, deep, rank) -> None:
    c_in, c_out, k, s, p, d, bias = spec
    layer = FactorizedConv2d(c_in, c_out, k, rank, stride=s, padding=p, dilation=d, layout=layout, deep=deep,
                             bias=bias).double()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=g, dtype=torch.float64))
    if deep:
        assert not torch.allclose(layer.M, torch.eye(rank, dtype=torch.float64))
    x = _x_conv(spec)
    kernel_lib = layer.kernel_from_matrix(layer.weight_matrix())
    # independent: U M Vᵀ in numpy, reshaped by the test's own reading
    prod = layer.U.detach().numpy()
    if deep:
        prod = prod @ layer.M.detach().numpy()
    prod = prod @ layer.V.detach().numpy().T
    kernel_np = _kernel_np(prod, (c_out, c_in) + tuple(conv_k for conv_k in layer.kernel_size), layout)
    np.testing.assert_allclose(kernel_lib.detach().numpy(), kernel_np, rtol=1e-12, atol=1e-12)
    expected = F.conv2d(x, torch.from_numpy(np.ascontiguousarray(kernel_np)), layer.bias, stride=s, padding=p,
                        dilation=d)
    torch.testing.assert_close(layer(x), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("deep", [False, True])
def test_linear_forward_equals_dense_product_random_factors(deep) -> None:
    layer = FactorizedLinear(6, 4, 3, deep=deep).double()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=g, dtype=torch.float64))
    u, v = layer.U.detach().numpy(), layer.V.detach().numpy()
    w = u @ (layer.M.detach().numpy() if deep else np.eye(3)) @ v.T
    x = torch.randn(5, 6, dtype=torch.float64, generator=g)
    expected = x.numpy() @ w.T + layer.bias.detach().numpy()
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-10, atol=1e-10)


# --- collapse --------------------------------------------------------------------------------------


def _only_plain(module: nn.Module) -> bool:
    return all(type(mod) in (nn.Conv2d, nn.Linear, nn.Sequential) for mod in module.modules())


def _randomize_(layer, seed=7):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in layer.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=g, dtype=param.dtype))


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("m,n,rank", [(5, 7, 1), (5, 7, 2), (5, 7, 3), (5, 7, 5), (5, 7, 10), (6, 6, 2), (6, 6, 3),
                                      (6, 6, 4)])
def test_linear_collapse_matches_and_picks_cheaper_form(m, n, rank, deep) -> None:
    # (6, 6, 3) is the tie r(m+n) == mn: one dense layer (one op, same parameters) is expected
    layer = FactorizedLinear.from_linear(_linear(n=n, m=m), rank, deep=deep,
                                         generator=torch.Generator().manual_seed(0))
    _randomize_(layer)
    plain = layer.collapse()
    assert _only_plain(plain)
    x = torch.randn(3, n, dtype=torch.float64)
    torch.testing.assert_close(plain(x), layer(x), rtol=1e-10, atol=1e-10)
    weights = sum(p.numel() for name, p in plain.named_parameters() if not name.endswith("bias"))
    assert weights == min(rank * (m + n), m * n)
    two_layers = rank * (m + n) < m * n
    assert isinstance(plain, nn.Sequential) == two_layers
    assert isinstance(plain, nn.Linear) == (not two_layers)
    assert sum(p.numel() for p in plain.parameters()) == layer.inference_params()


@pytest.mark.parametrize("layout", ["spatial", "channel"])
@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("rank_kind", ["one", "small", "full", "over"])
@pytest.mark.parametrize("spec", CONVS, ids=CONV_IDS)
def test_conv_collapse_matches_and_picks_cheaper_form(spec, layout, deep, rank_kind) -> None:
    conv = _conv(spec)
    full = _full(spec, layout)
    rank = {"one": 1, "small": max(1, full // 3), "full": full, "over": 2 * full}[rank_kind]
    layer = FactorizedConv2d.from_conv(conv, rank, layout=layout, deep=deep,
                                       generator=torch.Generator().manual_seed(0))
    _randomize_(layer)
    plain = layer.collapse()
    assert _only_plain(plain)
    x = _x_conv(spec)
    torch.testing.assert_close(plain(x), layer(x), rtol=1e-9, atol=1e-9)
    m, n = layer.U.shape[0], layer.V.shape[0]
    weights = sum(p.numel() for name, p in plain.named_parameters() if not name.endswith("bias"))
    assert weights == min(rank * (m + n), m * n)
    two = rank * (m + n) < m * n
    assert isinstance(plain, nn.Sequential) == two
    if two:
        assert len(plain) == 2 and all(isinstance(c, nn.Conv2d) for c in plain)
        assert plain[0].bias is None
    else:
        assert isinstance(plain, nn.Conv2d)
        assert plain.stride == conv.stride and plain.padding == conv.padding and plain.dilation == conv.dilation
    assert sum(p.numel() for p in plain.parameters()) == layer.inference_params()


# --- default init ----------------------------------------------------------------------------------


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("rank", [2, 5])
def test_linear_default_init_bounds(rank, deep) -> None:
    lin = _linear(n=200, m=150)
    layer = FactorizedLinear.from_linear(lin, rank, deep=deep, init="default",
                                         generator=torch.Generator().manual_seed(0))
    bound_v, bound_u = 1 / math.sqrt(200), 1 / math.sqrt(rank)
    assert layer.V.abs().max() <= bound_v and layer.U.abs().max() <= bound_u
    # actually uniform over the whole interval, not a narrower one (hundreds of samples per factor)
    assert layer.V.abs().max() > 0.97 * bound_v and layer.U.abs().max() > 0.97 * bound_u
    assert layer.V.min() < 0 < layer.V.max()
    if deep:
        torch.testing.assert_close(layer.M, torch.eye(rank, dtype=torch.float64))
    torch.testing.assert_close(layer.bias, lin.bias)


@pytest.mark.parametrize("kernel", [(3, 3), (3, 1), (1, 3), (1, 1)])
@pytest.mark.parametrize("layout", ["spatial", "channel"])
@pytest.mark.parametrize("deep", [False, True])
def test_conv_default_init_bounds(layout, deep, kernel) -> None:
    c_in, c_out, rank = 32, 64, 8
    kh, kw = kernel
    conv = nn.Conv2d(c_in, c_out, (kh, kw), padding=1).double()
    layer = FactorizedConv2d.from_conv(conv, rank, layout=layout, deep=deep, init="default",
                                       generator=torch.Generator().manual_seed(0))
    # the first conv has fan-in c_in·kw (spatial, 1×kw) or c_in·kh·kw (channel, kh×kw);
    # the second conv has fan-in r·kh (spatial, kh×1) or r (channel, 1×1)
    n = c_in * kw if layout == "spatial" else c_in * kh * kw
    fan_in_u = rank * kh if layout == "spatial" else rank
    assert layer.V.shape[0] == n
    assert layer.V.abs().max() <= 1 / math.sqrt(n)
    assert layer.V.abs().max() > 0.97 / math.sqrt(n)
    assert layer.U.abs().max() <= 1 / math.sqrt(fan_in_u)
    assert layer.U.abs().max() > 0.97 / math.sqrt(fan_in_u)
    if deep:
        torch.testing.assert_close(layer.M, torch.eye(rank, dtype=torch.float64))


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [0, -3])
def test_rank_below_one_is_rejected(rank) -> None:
    with pytest.raises(ValueError, match=str(rank)):
        FactorizedLinear(4, 3, rank)
    with pytest.raises(ValueError, match=str(rank)):
        FactorizedConv2d(4, 3, 3, rank)
    with pytest.raises(ValueError, match=str(rank)):
        FactorizedLinear.from_linear(nn.Linear(4, 3), rank)


def test_grouped_conv_is_rejected() -> None:
    with pytest.raises(ValueError, match="groups=2"):
        FactorizedConv2d.from_conv(nn.Conv2d(4, 6, 3, groups=2), 2)


@pytest.mark.parametrize("layout", ["diagonal", "Spatial", ""])
def test_unknown_layout_is_rejected(layout) -> None:
    with pytest.raises(ValueError, match=repr(layout)):
        FactorizedConv2d(4, 3, 3, 2, layout=layout)
    with pytest.raises(ValueError, match=repr(layout)):
        FactorizedConv2d.from_conv(nn.Conv2d(4, 3, 3), 2, layout=layout)


def test_string_padding_is_rejected() -> None:
    with pytest.raises(ValueError, match="same"):
        FactorizedConv2d.from_conv(nn.Conv2d(4, 3, 3, padding="same"), 2)
