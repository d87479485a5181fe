"""Activation-aware truncation against an independent optimum, and models we did not write."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from automl_factor import models
from automl_factor.factorization import (LayerPlan, collapse, count_params, factorizable_layers, factorize,
                                         planned_params, uniform_plan)
from automl_factor.factorization.activation import input_covariances, layer_inputs


def _correlated(n_rows: int, dim: int, seed: int) -> torch.Tensor:
    """Inputs with a few dominant directions, as real activations have."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=g, dtype=torch.float64) * torch.logspace(0, -2, dim, dtype=torch.float64)
    return torch.randn(n_rows, dim, generator=g, dtype=torch.float64) @ mixing


def _optimum_error(weight: np.ndarray, inputs: np.ndarray, rank: int) -> float:
    """min over rank-r W' of ‖(W − W′) Xᵀ‖_F, independently: inputs span all directions, so the best
    W′X is the truncated SVD of W X itself (Eckart–Young), reachable as P_r(WX) X⁺."""
    singular = np.linalg.svd(weight @ inputs.T, compute_uv=False)
    return float(np.sqrt((singular[rank:] ** 2).sum()))


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_linear_activation_aware_error_is_the_optimum_and_beats_plain_svd(rank) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(12, 9).double()
    x = _correlated(400, 12, seed=rank)
    errors = {}
    for init in ("spectral", "activation"):
        fmodel = factorize(nn.Sequential(linear), {"0": LayerPlan(rank=rank, init=init)}, calibration=x)
        errors[init] = float((fmodel(x) - linear(x)).detach().norm())
    optimum = _optimum_error(linear.weight.detach().numpy(), x.numpy(), rank)
    assert errors["activation"] == pytest.approx(optimum, rel=1e-6)
    assert errors["activation"] <= errors["spectral"] + 1e-9
    assert errors["activation"] < 0.9 * errors["spectral"]  # correlated inputs: plain SVD wastes rank


def test_channel_conv_activation_aware_error_is_the_optimum() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False).double()
    g = torch.Generator().manual_seed(1)
    images = F.avg_pool2d(torch.randn(16, 4, 12, 12, generator=g, dtype=torch.float64), 3, 1, 1)  # smooth: correlated
    rank = 5
    errors = {}
    for init in ("spectral", "activation"):
        plan = {"0": LayerPlan(rank=rank, init=init, layout="channel")}
        fmodel = factorize(nn.Sequential(conv), plan, calibration=images)
        errors[init] = float((fmodel(images) - conv(images)).detach().norm())
    patches = layer_inputs(conv, images).numpy()  # (N, c_in·3·3), ordered as the kernel's matrix
    assert patches.shape == (16 * 6 * 6, 36)
    optimum = _optimum_error(conv.weight.detach().reshape(6, 36).numpy(), patches, rank)
    assert errors["activation"] == pytest.approx(optimum, rel=1e-6)
    assert errors["activation"] < errors["spectral"]


def test_input_covariances_sum_over_batches_and_leave_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double().train()
    batches = [torch.randn(7, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)]
    moments = input_covariances(model, ["0", "2"], batches)
    hidden = torch.cat([torch.relu(model[0](b)) for b in batches]).detach()
    torch.testing.assert_close(moments["0"], torch.cat(batches).T @ torch.cat(batches))
    torch.testing.assert_close(moments["2"], hidden.T @ hidden)
    assert model.training and not model[0]._forward_pre_hooks


def test_activation_init_needs_data_and_the_channel_layout() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3))
    with pytest.raises(ValueError, match="needs calibration data"):
        factorize(nn.Sequential(nn.Linear(4, 4)), {"0": LayerPlan(rank=2, init="activation")})
    with pytest.raises(ValueError, match="needs conv layout 'channel'"):
        factorize(model, {"0": LayerPlan(rank=2, init="activation")}, calibration=torch.randn(2, 2, 5, 5))


def test_torchvision_resnet18_factorizes_collapses_and_exports() -> None:
    """Strided convs, downsample shortcuts, a 7x7 stem and the final linear, from ``module:function``."""
    torch.manual_seed(0)
    model = models.create("torchvision.models:resnet18", num_classes=10).eval()
    names = factorizable_layers(model)
    assert "layer2.0.downsample.0" in names and "conv1" in names and "fc" in names and len(names) == 21
    x = torch.randn(2, 3, 32, 32)
    full = factorize(model, uniform_plan(model, rank_scale=1.0)).eval()
    torch.testing.assert_close(full(x), model(x), rtol=1e-4, atol=1e-4)  # full rank reproduces its outputs
    plan = uniform_plan(model, params_ratio=0.3)
    small = factorize(model, plan, calibration=x).eval()
    deployed = collapse(small)
    assert planned_params(model, plan) == count_params(small) == sum(p.numel() for p in deployed.parameters())
    assert count_params(small) <= 0.3 * count_params(model)
    torch.testing.assert_close(deployed(x), small(x), rtol=1e-4, atol=1e-4)
    program = torch.export.export(deployed, (x,))
    torch.testing.assert_close(program.module()(x), small(x), rtol=1e-4, atol=1e-4)
