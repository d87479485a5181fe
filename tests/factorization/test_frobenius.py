"""Frobenius decay: the Gram-matrix penalty and its gradients against dense products and autograd."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from automl_factor import models
from automl_factor.factorization import (FactorizedAttention, FactorizedLayer, LayerPlan, add_frobenius_grad_,
                                         decoupled_frobenius_decay_,
                                         factor_parameters, factorizable_layers, factorize, frobenius_grads,
                                         frobenius_penalty, half_frobenius_sq, nuclear_norm_and_bound)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _dense_half_sq(u, v, m=None):
    w = u @ m @ v.transpose(-2, -1) if m is not None else u @ v.transpose(-2, -1)
    return 0.5 * (w * w).sum()


SHAPES = [(5, 7, 3), (8, 4, 6), (3, 3, 9), (10, 12, 1)]  # (m, n, r): low-rank, r > n, overcomplete, rank 1


@pytest.mark.parametrize("batch", [(), (3,)])
@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_half_frobenius_sq_value_and_gradients(shape, deep, batch) -> None:
    m, n, r = shape
    u = _rand(*batch, m, r, seed=1).requires_grad_()
    v = _rand(*batch, n, r, seed=2).requires_grad_()
    mm = _rand(*batch, r, r, seed=3).requires_grad_() if deep else None
    params = [u, v] + ([mm] if deep else [])
    value = half_frobenius_sq(u, v, mm)
    dense = _dense_half_sq(u, v, mm)
    torch.testing.assert_close(value, dense, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(value, params)
    dense_grads = torch.autograd.grad(dense, params)
    closed = frobenius_grads(*(p.detach() for p in params))
    assert len(closed) == len(params)
    for got, want, cf in zip(grads, dense_grads, closed):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(cf, want, rtol=1e-10, atol=1e-10)


def test_half_frobenius_sq_batched_is_sum_of_heads() -> None:
    u, v = _rand(4, 6, 2, seed=4), _rand(4, 5, 2, seed=5)
    total = sum(half_frobenius_sq(u[h], v[h]) for h in range(4))
    torch.testing.assert_close(half_frobenius_sq(u, v), total)


@pytest.mark.parametrize("shape", SHAPES)
def test_nuclear_norm_and_variational_bound(shape) -> None:
    m, n, r = shape
    u, v = _rand(m, r, seed=6), _rand(n, r, seed=7)
    nuclear, bound = nuclear_norm_and_bound(u, v)
    s = np.linalg.svd(u.numpy() @ v.numpy().T, compute_uv=False)
    assert nuclear == pytest.approx(s.sum(), rel=1e-10)
    assert bound == pytest.approx(0.5 * (u.square().sum() + v.square().sum()).item(), rel=1e-12)
    assert nuclear <= bound + 1e-12
    # the bound is attained at the balanced SI factors
    from automl_factor.factorization import spectral_factors
    us, vs = spectral_factors(u @ v.T, r)
    nuclear2, bound2 = nuclear_norm_and_bound(us, vs)
    assert bound2 == pytest.approx(nuclear2, rel=1e-9) and nuclear2 == pytest.approx(s.sum(), rel=1e-9)


# --- whole models ---------------------------------------------------------------------------------


def _resnet_factorized(regularizers=("fd",)):
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10).double()
    plan = {}
    for i, name in enumerate(factorizable_layers(model)):
        plan[name] = LayerPlan(kind=("lowrank", "deep")[i % 2], rank=(2, 5, 100)[i % 3],
                               layout=("spatial", "channel")[(i // 2) % 2],
                               regularizer=regularizers[i % len(regularizers)])
    fmodel = factorize(model, plan, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move away from SI so that M != I and products differ from the dense init
        for mod in fmodel.modules():
            if isinstance(mod, FactorizedLayer):
                for p in mod.factors():
                    if p is not None:
                        p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return fmodel, plan


def _vit(**kw):
    torch.manual_seed(0)
    return models.create("vit", image_size=8, dim=32, depth=1, heads=2, mlp_dim=32, in_channels=1, **kw).double()


def _attention_penalty_by_slicing(attn_module) -> torch.Tensor:
    heads, e = attn_module.num_heads, attn_module.attn_dim
    hd = e // heads
    total = torch.zeros((), dtype=torch.float64)
    for h in range(heads):
        rows = slice(h * hd, (h + 1) * hd)
        wq, wk, wv = attn_module.q.weight[rows], attn_module.k.weight[rows], attn_module.v.weight[rows]
        o = attn_module.o.weight[:, rows]
        total = total + 0.5 * (wq.T @ wk).square().sum() + 0.5 * (o @ wv).square().sum()
    return total


def test_frobenius_penalty_resnet_equals_sum_of_dense_products() -> None:
    fmodel, _ = _resnet_factorized()
    expected = sum(0.5 * mod.weight_matrix().square().sum() for mod in fmodel.modules()
                   if isinstance(mod, FactorizedLayer))
    n_layers = sum(isinstance(mod, FactorizedLayer) for mod in fmodel.modules())
    assert n_layers == 18
    torch.testing.assert_close(frobenius_penalty(fmodel), expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(frobenius_penalty(fmodel, _), expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("attn_rank", [32, 16, 8])
def test_frobenius_penalty_vit_attention_per_head(attn_rank) -> None:
    model = _vit()
    plan = {"blocks.0.attn": LayerPlan(rank=attn_rank), "blocks.0.mlp.fc1": LayerPlan(kind="deep", rank=7),
            "blocks.0.mlp.fc2": LayerPlan(kind="dense")}
    fmodel = factorize(model, plan)
    attn = fmodel.blocks[0].attn
    assert isinstance(attn, FactorizedAttention) and attn.inner.attn_dim == attn_rank
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(0.1 * _rand(*p.shape, seed=p.numel()))
    expected = _attention_penalty_by_slicing(attn.inner) + 0.5 * fmodel.blocks[0].mlp.fc1.weight_matrix().square().sum()
    torch.testing.assert_close(frobenius_penalty(fmodel), expected, rtol=1e-10, atol=0)
    # only attention: drop the MLP factorization
    fmodel2 = factorize(model, {"blocks.0.attn": LayerPlan(rank=attn_rank)})
    torch.testing.assert_close(frobenius_penalty(fmodel2), _attention_penalty_by_slicing(fmodel2.blocks[0].attn.inner),
                               rtol=1e-10, atol=0)


def test_the_plan_decides_which_layers_fd_decays() -> None:
    fmodel, plan = _resnet_factorized(regularizers=("fd", "wd", "none"))
    by_regularizer = {kind: [mod for name, mod in fmodel.named_modules() if isinstance(mod, FactorizedLayer)
                             and plan[name].regularizer == kind] for kind in ("fd", "wd", "none")}
    assert all(by_regularizer.values())
    assert not any(hasattr(mod, "regularizer") for mods in by_regularizer.values() for mod in mods)  # data, not state
    half_sq = {kind: sum(0.5 * m.weight_matrix().square().sum() for m in mods) for kind, mods in by_regularizer.items()}
    torch.testing.assert_close(frobenius_penalty(fmodel, plan), half_sq["fd"], rtol=1e-10, atol=0)
    torch.testing.assert_close(frobenius_penalty(fmodel), sum(half_sq.values()), rtol=1e-10, atol=0)  # no plan: all
    for kind, mods in by_regularizer.items():
        assert {id(p) for p in factor_parameters(fmodel, plan, kind)} == {id(p) for m in mods for p in m.factor_parameters()}
    with pytest.raises(ValueError, match="regularizer must be one of"):
        factor_parameters(fmodel, plan, "l1")


def test_the_plan_decides_for_attention_too() -> None:
    model = _vit()
    plan = {"blocks.0.attn": LayerPlan(rank=16, regularizer="wd"), "blocks.0.mlp.fc2": LayerPlan(rank=4)}
    fmodel = factorize(model, plan)
    expected = 0.5 * fmodel.blocks[0].mlp.fc2.weight_matrix().square().sum()
    torch.testing.assert_close(frobenius_penalty(fmodel, plan), expected, rtol=1e-10, atol=0)
    assert frobenius_penalty(fmodel) > expected


def test_penalty_of_dense_model_is_zero() -> None:
    assert float(frobenius_penalty(nn.Sequential(nn.Linear(3, 2)))) == 0.0


def _dense_fd_grads(fmodel, plan, params):
    """Autograd of Σ ½‖dense product‖² over FD layers, every product formed explicitly."""
    return torch.autograd.grad(_dense_fd_total(fmodel, plan), params)


@pytest.mark.parametrize("lr,coeff", [(0.1, 1e-3), (0.5, 0.2)])
def test_decoupled_frobenius_decay_step(lr, coeff) -> None:
    model = _vit()
    plan = {"blocks.0.attn": LayerPlan(rank=16), "blocks.0.mlp.fc1": LayerPlan(kind="deep", rank=5),
            "blocks.0.mlp.fc2": LayerPlan(rank=3, regularizer="wd")}
    fmodel = factorize(model, plan)
    with torch.no_grad():
        for i, p in enumerate(fmodel.parameters()):
            p.add_(0.1 * _rand(*p.shape, seed=100 + i))
    fd_params = factor_parameters(fmodel, plan, "fd")
    grads = _dense_fd_grads(fmodel, plan, fd_params)
    before = {name: p.detach().clone() for name, p in fmodel.named_parameters()}
    fd_ids = {id(p): g for p, g in zip(fd_params, grads)}
    decoupled_frobenius_decay_(fmodel, lr, coeff, plan)
    changed = 0
    for name, p in fmodel.named_parameters():
        if id(p) in fd_ids:
            torch.testing.assert_close(p.detach(), before[name] - lr * coeff * fd_ids[id(p)], rtol=1e-10, atol=1e-12)
            changed += int(not torch.equal(p.detach(), before[name]))
        else:
            assert torch.equal(p.detach(), before[name]), name
    assert changed == len(fd_params) == 4 + 3


def test_decoupled_fd_with_zero_coeff_is_a_no_op() -> None:
    fmodel, _ = _resnet_factorized()
    before = [p.detach().clone() for p in fmodel.parameters()]
    decoupled_frobenius_decay_(fmodel, 0.1, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(before, fmodel.parameters()))


def test_factor_parameters_selects_factors_not_biases() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))
    plan = {"0": LayerPlan(rank=2), "2": LayerPlan(kind="deep", rank=3), "4": LayerPlan(rank=2, regularizer="wd")}
    fmodel = factorize(model, plan)
    fd = factor_parameters(fmodel, plan)
    want = [fmodel[0].U, fmodel[0].V, fmodel[2].U, fmodel[2].V, fmodel[2].M]
    assert {id(p) for p in fd} == {id(p) for p in want} and len(fd) == len(want)
    biases = {id(m.bias) for m in fmodel if getattr(m, "bias", None) is not None}
    assert len(biases) == 3 and not biases & {id(p) for p in fd}
    wd = factor_parameters(fmodel, plan, "wd")
    assert {id(p) for p in wd} == {id(fmodel[4].U), id(fmodel[4].V)}


def test_factor_parameters_of_attention_are_the_four_weights() -> None:
    fmodel = factorize(_vit(), {"blocks.0.attn": LayerPlan(rank=16)})
    inner = fmodel.blocks[0].attn.inner
    fd = factor_parameters(fmodel)
    assert {id(p) for p in fd} == {id(inner.q.weight), id(inner.k.weight), id(inner.v.weight), id(inner.o.weight)}


# --- closed-form FD on the gradients (what training uses) -----------------------------------------


def _vit_mixed():
    plan = {"blocks.0.attn": LayerPlan(rank=16), "blocks.0.mlp.fc1": LayerPlan(kind="deep", rank=5),
            "blocks.0.mlp.fc2": LayerPlan(rank=3, regularizer="wd")}
    fmodel = factorize(_vit(), plan)
    with torch.no_grad():
        for i, p in enumerate(fmodel.parameters()):
            p.add_(0.1 * _rand(*p.shape, seed=200 + i))
    return fmodel, plan


@pytest.mark.parametrize("build", [lambda: _resnet_factorized(("fd", "fd", "wd")), _vit_mixed],
                         ids=["resnet_kinds_layouts", "vit_attention"])
@pytest.mark.parametrize("coeff", [1e-3, 0.7])
def test_add_frobenius_grad_equals_autograd_of_dense_products(build, coeff) -> None:
    """Every kind (low-rank, deep, overcomplete rank 100), both conv layouts, attention heads, and a
    ``wd`` layer left alone: grad += coeff · autograd of Σ ½‖dense product‖² over FD layers."""
    fmodel, plan = build()
    params = list(fmodel.parameters())
    existing = [_rand(*p.shape, seed=300 + i) for i, p in enumerate(params)]
    for p, g in zip(params, existing):
        p.grad = g.clone()
    want = dict(zip(map(id, params), torch.autograd.grad(_dense_fd_total(fmodel, plan), params, allow_unused=True)))
    add_frobenius_grad_(fmodel, coeff, plan)
    fd_ids = {id(p) for p in factor_parameters(fmodel, plan)}
    assert fd_ids
    for p, g in zip(params, existing):
        if id(p) in fd_ids:
            torch.testing.assert_close(p.grad, g + coeff * want[id(p)], rtol=1e-10, atol=1e-12)
        else:
            assert torch.equal(p.grad, g)  # biases, BN, dense layers and wd factors untouched


def _dense_fd_total(fmodel, plan) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for name, mod in fmodel.named_modules():
        if name not in plan or plan[name].regularizer != "fd":
            continue
        if isinstance(mod, FactorizedLayer):
            total = total + 0.5 * mod.weight_matrix().square().sum()
        elif isinstance(mod, FactorizedAttention):
            total = total + _attention_penalty_by_slicing(mod.inner)
    return total


def test_add_frobenius_grad_equals_penalty_backward_and_starts_missing_grads_at_zero() -> None:
    fmodel, _ = _resnet_factorized()
    penalty_model, _ = _resnet_factorized()
    (0.01 * frobenius_penalty(penalty_model)).backward()
    add_frobenius_grad_(fmodel, 0.01)  # no backward before: every factor grad starts at zero
    for (name, p), q in zip(fmodel.named_parameters(), penalty_model.parameters()):
        if q.grad is None:
            assert p.grad is None, name
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-14, msg=name)
