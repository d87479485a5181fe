"""Plans: factorize/collapse of whole models, parameter accounting from shapes, budgets, errors."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from automl_factor import models
from automl_factor.factorization import (FactorizedAttention, FactorizedConv2d, FactorizedLayer, LayerPlan,
                                         collapse, count_params, factorizable_layers, factorize, fit_to_budget,
                                         head_products, is_attention, parse_plan, planned_params, uniform_plan)
from automl_factor.models import SelfAttention


def _resnet20():
    torch.manual_seed(0)
    return models.create("resnet20", num_classes=10).double().eval()


def _resnet_lt(width=0.125):
    torch.manual_seed(0)
    return models.create("resnet32_lt", num_classes=10, width_multiplier=width).double().eval()


def _vit():
    torch.manual_seed(0)
    return models.create("vit", image_size=8, dim=32, depth=1, heads=2, mlp_dim=32, in_channels=1).double().eval()


def _randomize_bn_(model, seed=0):
    """Non-trivial BN statistics so eval outputs are not just identity-normalized."""
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(0.1 * torch.randn(mod.num_features, generator=g, dtype=torch.float64))
            mod.running_var.copy_(0.5 + torch.rand(mod.num_features, generator=g, dtype=torch.float64))


def _state_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _plain_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _full(module, layout):
    if is_attention(module):
        return module.dim
    if isinstance(module, nn.Linear):
        return min(module.in_features, module.out_features)
    c_out, c_in, kh, kw = module.weight.shape
    return min(c_out * kh, c_in * kw) if layout == "spatial" else min(c_out, c_in * kh * kw)


# --- factorize: input untouched, full-rank SI is exact ---------------------------------------------


@pytest.mark.parametrize("layout", ["spatial", "channel"])
@pytest.mark.parametrize("kind", ["lowrank", "deep"])
def test_full_rank_si_resnet20_reproduces_dense(layout, kind) -> None:
    model = _resnet20()
    with torch.no_grad():
        _randomize_bn_(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    plan = {name: LayerPlan(kind=kind, rank=_full(modules[name], layout), layout=layout)
            for name in factorizable_layers(model)}
    fmodel = factorize(model, plan, generator=torch.Generator().manual_seed(0)).eval()
    assert _state_equal(before, model.state_dict())
    assert sum(isinstance(m, FactorizedConv2d) for m in fmodel.modules()) == 18
    assert not any(isinstance(m, FactorizedLayer) for m in model.modules())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fmodel(x), model(x), rtol=1e-8, atol=1e-8)
    assert _state_equal(before, model.state_dict())


def test_full_rank_si_vit_reproduces_dense() -> None:
    model = _vit()
    with torch.no_grad():  # nonzero biases so the augmented [W | b] reading matters
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, dtype=torch.float64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert factorizable_layers(model) == ["blocks.0.attn", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    plan = {"blocks.0.attn": LayerPlan(rank=32), "blocks.0.mlp.fc1": LayerPlan(rank=32),
            "blocks.0.mlp.fc2": LayerPlan(kind="deep", rank=32)}
    fmodel = factorize(model, plan).eval()
    assert _state_equal(before, model.state_dict())
    assert isinstance(fmodel.blocks[0].attn, FactorizedAttention)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fmodel(x), model(x), rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(collapse(fmodel)(x), model(x), rtol=1e-8, atol=1e-8)


# --- attention SI is Eckart–Young per head -----------------------------------------------------------


def _aug(linear):
    w = linear.weight.detach().numpy()
    return np.concatenate([w, linear.bias.detach().numpy()[:, None]], axis=1) if linear.bias is not None else w


def _heads_np(attn):
    """Per head: score form Q̃_hᵀK̃_h/√d_h and value-output map O_h Ṽ_h, by slicing in numpy."""
    hd = attn.attn_dim // attn.num_heads
    q, k, v, o = _aug(attn.q), _aug(attn.k), _aug(attn.v), attn.o.weight.detach().numpy()
    scores, values = [], []
    for h in range(attn.num_heads):
        rows = slice(h * hd, (h + 1) * hd)
        scores.append(q[rows].T @ k[rows] / math.sqrt(hd))
        values.append(o[:, rows] @ v[rows])
    return scores, values


def _tail(matrix, rank):
    s = np.linalg.svd(matrix, compute_uv=False)
    return float(np.sqrt(np.sum(s[rank:] ** 2)))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dim,heads,attn_dim", [(12, 3, 12), (12, 3, 6), (12, 3, 3), (16, 2, 8), (16, 4, 4)])
def test_attention_si_is_best_rank_per_head(dim, heads, attn_dim, bias) -> None:
    torch.manual_seed(0)
    attn = SelfAttention(dim, heads, bias=bias).double()
    if bias:
        with torch.no_grad():
            for lin in (attn.q, attn.k, attn.v, attn.o):
                lin.bias.normal_()
    new = FactorizedAttention.from_attention(attn, attn_dim).inner
    assert new.attn_dim == attn_dim and new.num_heads == heads
    rank = attn_dim // heads
    old_scores, old_values = _heads_np(attn)
    new_scores, new_values = _heads_np(new)
    lib_scores, lib_values = head_products(new)
    for h in range(heads):
        # the library's head_products agree with the test's slicing
        np.testing.assert_allclose(lib_scores[h].detach().numpy(), new_scores[h], atol=1e-12)
        np.testing.assert_allclose(lib_values[h].detach().numpy(), new_values[h], atol=1e-12)
        # the (1/√d_h-scaled) score form and the value map are the best rank-(attn_dim/H) approximations
        err_s = np.linalg.norm(new_scores[h] - old_scores[h])
        err_v = np.linalg.norm(new_values[h] - old_values[h])
        assert err_s == pytest.approx(_tail(old_scores[h], rank), rel=1e-9, abs=1e-12)
        assert err_v == pytest.approx(_tail(old_values[h], rank), rel=1e-9, abs=1e-12)
        if rank < dim // heads:
            assert err_s > 1e-6 and err_v > 1e-6
    if bias:
        torch.testing.assert_close(new.o.bias, attn.o.bias)


@pytest.mark.parametrize("heads,factor", [(1, 1), (1, 2), (3, 1), (3, 2), (3, 4)])
def test_attention_full_and_overcomplete_si_reproduce_forward(heads, factor) -> None:
    torch.manual_seed(0)
    dim = 12
    attn = SelfAttention(dim, heads).double()
    with torch.no_grad():
        for lin in (attn.q, attn.k, attn.v, attn.o):
            lin.bias.normal_()
    new = FactorizedAttention.from_attention(attn, factor * dim, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 5, dim, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(new(x), attn(x), rtol=1e-9, atol=1e-9)


def test_attention_rank_must_be_multiple_of_heads() -> None:
    attn = SelfAttention(12, 3)
    with pytest.raises(ValueError, match="num_heads=3.*got 5|got 5"):
        FactorizedAttention.from_attention(attn, 5)


# --- parameter accounting --------------------------------------------------------------------------


def _analytic_params(model, plan) -> int:
    """Deployed parameters from shapes alone, written independently of the library."""
    modules = dict(model.named_modules())
    total = sum(p.numel() for p in model.parameters())
    for name, layer in plan.items():
        mod = modules[name]
        old = sum(p.numel() for p in mod.parameters())
        if layer.kind == "dense":
            continue
        if is_attention(mod):
            d, e = mod.dim, layer.rank
            new = 4 * d * e + (3 * e + d if mod.q.bias is not None else 0)
        else:
            bias = mod.bias.numel() if mod.bias is not None else 0
            if isinstance(mod, nn.Linear):
                m, n = mod.out_features, mod.in_features
            else:
                c_out, c_in, kh, kw = mod.weight.shape
                m, n = (c_out * kh, c_in * kw) if layer.layout == "spatial" else (c_out, c_in * kh * kw)
            new = min(layer.rank * (m + n), m * n) + bias
        total += new - old
    return total


def _mixed_plan(model, seed):
    rng = random.Random(seed)
    modules = dict(model.named_modules())
    plan = {}
    for name in factorizable_layers(model, include_dense_defaults=rng.random() < 0.5):
        mod = modules[name]
        layout = rng.choice(["spatial", "channel"])
        full = _full(mod, layout)
        if is_attention(mod):
            heads = mod.num_heads
            plan[name] = LayerPlan(rank=heads * rng.randint(1, 2 * full // heads))
            continue
        kind = rng.choice(["dense", "lowrank", "deep"])
        if kind == "dense":
            plan[name] = LayerPlan(kind="dense")
        else:
            rank = rng.choice([1, max(1, full // 4), full, 2 * full, rng.randint(1, 2 * full)])
            plan[name] = LayerPlan(kind=kind, rank=rank, layout=layout, init=rng.choice(["spectral", "default"]))
    return plan


MODELS = {"resnet20": _resnet20, "resnet32_lt": _resnet_lt, "vit": _vit}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_count_params_matches_collapse_planned_and_formula(model_name, seed) -> None:
    model = MODELS[model_name]()
    plan = _mixed_plan(model, seed)
    fmodel = factorize(model, plan, generator=torch.Generator().manual_seed(seed)).eval()
    plain = collapse(fmodel)
    expected = _analytic_params(model, plan)
    assert count_params(fmodel) == expected
    assert _plain_params(plain) == expected
    assert planned_params(model, plan) == expected
    assert count_params(plain) == expected
    assert count_params(fmodel, inference=False) == _plain_params(fmodel)
    assert count_params(model) == _plain_params(model)
    # collapse gives the same function, made of plain torch.nn layers only
    assert not any(isinstance(m, (FactorizedLayer, FactorizedAttention)) for m in plain.modules())
    assert any(isinstance(m, (FactorizedLayer, FactorizedAttention)) for m in fmodel.modules())
    x = torch.randn(2, 1 if model_name == "vit" else 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), fmodel(x), rtol=1e-8, atol=1e-8)


def test_collapse_leaves_factorized_model_untouched() -> None:
    model = _resnet_lt()
    fmodel = factorize(model, uniform_plan(model, rank_scale=0.3, kind="deep"))
    before = {k: v.clone() for k, v in fmodel.state_dict().items()}
    collapse(fmodel)
    assert _state_equal(before, fmodel.state_dict())


# --- uniform plans ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["spatial", "channel"])
@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_uniform_plan_params_ratio_is_largest_that_fits(ratio, layout) -> None:
    model = models.create("resnet32_lt", num_classes=10)
    budget = ratio * _plain_params(model)
    plan = uniform_plan(model, params_ratio=ratio, layout=layout)
    assert set(plan) == set(factorizable_layers(model))
    assert any(".shortcut.0" in name for name in plan)
    used = planned_params(model, plan)
    assert used <= budget and used > 0.8 * budget
    modules = dict(model.named_modules())
    fulls = {name: _full(modules[name], layout) for name in plan}
    # one common scale s: rank = floor(s · full) for every layer
    low = max(plan[n].rank / fulls[n] for n in plan if plan[n].rank > 1)
    high = min((plan[n].rank + 1) / fulls[n] for n in plan)
    assert low < high
    # the next scale at which any rank grows by one breaks the budget
    bigger = uniform_plan(model, rank_scale=high * (1 + 1e-12), layout=layout)
    assert all(bigger[n].rank >= plan[n].rank for n in plan)
    assert any(bigger[n].rank == plan[n].rank + 1 for n in plan)
    assert planned_params(model, bigger) > budget


def test_uniform_plan_overcomplete_rank_scale_collapses_to_dense() -> None:
    model = _resnet_lt()
    plan = uniform_plan(model, rank_scale=3)
    modules = dict(model.named_modules())
    assert all(layer.rank == 3 * _full(modules[name], "spatial") for name, layer in plan.items())
    fmodel = factorize(model, plan, generator=torch.Generator().manual_seed(0)).eval()
    assert count_params(fmodel) == _plain_params(model)
    plain = collapse(fmodel)
    for name in plan:
        mod = plain.get_submodule(name)
        assert type(mod) is nn.Conv2d and mod.weight.shape == modules[name].weight.shape
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():  # SI of an overcomplete layer is exact: the whole model is unchanged
        torch.testing.assert_close(plain(x), model(x), rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(fmodel(x), model(x), rtol=1e-8, atol=1e-8)


def test_uniform_plan_argument_errors() -> None:
    model = _resnet20()
    with pytest.raises(ValueError):
        uniform_plan(model)
    with pytest.raises(ValueError):
        uniform_plan(model, params_ratio=0.1, rank_scale=0.5)
    with pytest.raises(ValueError, match="1.5"):
        uniform_plan(model, params_ratio=1.5)
    with pytest.raises(ValueError, match="too small"):
        uniform_plan(model, params_ratio=0.001)


# --- fit_to_budget ---------------------------------------------------------------------------------


def _rank1_cost(model, plan) -> int:
    """Deployed params when every planned non-dense-default layer is at its smallest rank."""
    modules = dict(model.named_modules())
    smallest = {}
    for name, layer in plan.items():
        mod = modules[name]
        if is_attention(mod):
            smallest[name] = LayerPlan(rank=mod.num_heads)
        else:
            smallest[name] = LayerPlan(kind="lowrank", rank=1, layout=layer.layout)
    return _analytic_params(model, smallest)


def _random_plan(model, rng):
    modules = dict(model.named_modules())
    plan = {}
    for name in factorizable_layers(model):
        mod = modules[name]
        layout = rng.choice(["spatial", "channel"])
        full = _full(mod, layout)
        if is_attention(mod):
            kind = rng.choice(["dense", "lowrank"])
            plan[name] = (LayerPlan(kind="dense") if kind == "dense"
                          else LayerPlan(rank=mod.num_heads * rng.randint(1, 2 * full // mod.num_heads)))
            continue
        kind = rng.choice(["dense", "lowrank", "lowrank", "deep"])
        plan[name] = (LayerPlan(kind="dense") if kind == "dense"
                      else LayerPlan(kind=kind, rank=rng.randint(1, 2 * full), layout=layout))
    return plan


@pytest.mark.parametrize("model_name", ["resnet32_lt", "vit"])
def test_fit_to_budget_random_plans(model_name) -> None:
    model = MODELS[model_name]()
    modules = dict(model.named_modules())
    rng = random.Random(1234)
    dense = _plain_params(model)
    met = raised = 0
    for _ in range(25):
        plan = _random_plan(model, rng)
        minimum = _rank1_cost(model, plan)
        budget = rng.choice([rng.uniform(0.02, 1.0) * dense, rng.uniform(0.7, 1.5) * minimum])
        if minimum > budget:
            with pytest.raises(ValueError):
                fit_to_budget(model, plan, budget)
            raised += 1
            continue
        fitted = fit_to_budget(model, plan, budget)
        met += 1
        assert set(fitted) == set(plan)
        used = planned_params(model, fitted)
        assert used <= budget and used == _analytic_params(model, fitted)
        if planned_params(model, plan) <= budget:
            assert fitted == plan
            continue
        # compressible layers (non-dense, rank below full) share one scale s: new = max(1, floor(s · old))
        low, high = 0.0, math.inf
        for name, layer in plan.items():
            if layer.kind == "dense" or layer.rank >= _full(modules[name], layer.layout):
                continue
            step = modules[name].num_heads if is_attention(modules[name]) else 1
            old, new = layer.rank / step, fitted[name].rank / step
            assert fitted[name].kind == layer.kind and fitted[name].layout == layer.layout
            assert new <= old
            if new > 1:
                low = max(low, new / old)
            high = min(high, (new + 1) / old)
        assert low < high + 1e-12, (low, high)
        # fixed (dense / overcomplete) layers are either kept as planned or demoted, largest first
        fixed = [n for n, layer in plan.items()
                 if layer.kind == "dense" or layer.rank > _full(modules[n], layer.layout)]
        demoted = [n for n in fixed if fitted[n] != plan[n]]
        kept = [n for n in fixed if fitted[n] == plan[n]]
        if demoted and kept:
            assert min(_plain_params(modules[n]) for n in demoted) >= max(_plain_params(modules[n]) for n in kept)
        for n in demoted:
            assert fitted[n].kind in ("lowrank", "deep") and fitted[n].rank < _full(modules[n], fitted[n].layout)
    assert met >= 5 and raised >= 1


def test_fit_to_budget_demotes_dense_layers() -> None:
    model = _resnet_lt()
    plan = {name: LayerPlan(kind="dense") for name in factorizable_layers(model)}
    dense = _plain_params(model)
    assert planned_params(model, plan) == dense
    fitted = fit_to_budget(model, plan, 0.5 * dense)
    assert planned_params(model, fitted) <= 0.5 * dense
    assert any(layer.kind == "lowrank" for layer in fitted.values())
    # the largest layers go first
    modules = dict(model.named_modules())
    sizes = {n: _plain_params(modules[n]) for n in plan}
    demoted = [n for n in plan if fitted[n].kind != "dense"]
    kept = [n for n in plan if fitted[n].kind == "dense"]
    if kept:
        assert min(sizes[n] for n in demoted) >= max(sizes[n] for n in kept)


def test_fit_to_budget_overcomplete_alone_over_budget() -> None:
    model = _resnet_lt()
    plan = uniform_plan(model, rank_scale=2, kind="deep")
    fitted = fit_to_budget(model, plan, 0.3 * _plain_params(model))
    assert planned_params(model, fitted) <= 0.3 * _plain_params(model)


@pytest.mark.parametrize("budget", [0, 10, 1000])
def test_fit_to_budget_impossible_budget_raises(budget) -> None:
    model = _resnet_lt()
    plan = uniform_plan(model, rank_scale=0.5)
    with pytest.raises(ValueError, match="too small"):
        fit_to_budget(model, plan, budget)


# --- errors ----------------------------------------------------------------------------------------


def test_unknown_layer_name_lists_factorizable_layers() -> None:
    model = _resnet20()
    for call in (lambda p: factorize(model, p), lambda p: planned_params(model, p),
                 lambda p: fit_to_budget(model, p, 1e9)):
        with pytest.raises(ValueError) as info:
            call({"layer9.conv": LayerPlan(rank=2)})
        message = str(info.value)
        assert "'layer9.conv'" in message and "layer1.0.conv1" in message and "layer3.2.conv2" in message
        assert "\n" not in message


@pytest.mark.parametrize("layer,needle", [
    ({"kind": "lowrank"}, "rank"),
    ({"kind": "deep"}, "rank"),
    ({"kind": "tucker", "rank": 2}, "kind"),
    ({"kind": "lowrank", "rank": 0}, "rank"),
    ({"kind": "lowrank", "rank": 2, "layout": "diag"}, "layout"),
    ({"kind": "lowrank", "rank": 2, "colour": "red"}, "colour"),
])
def test_bad_layer_plans_raise_one_line_value_errors(layer, needle) -> None:
    model = _resnet20()
    for call in (parse_plan, lambda p: factorize(model, p)):
        with pytest.raises(ValueError) as info:
            call({"layer1.0.conv1": layer})
        message = str(info.value)
        assert "\n" not in message and needle in message and "layer1.0.conv1" in message


def test_attention_plan_errors() -> None:
    model = _vit()
    with pytest.raises(ValueError, match="'deep'"):
        factorize(model, {"blocks.0.attn": LayerPlan(kind="deep", rank=16)})
    with pytest.raises(ValueError, match="got 15"):
        factorize(model, {"blocks.0.attn": LayerPlan(rank=15)})


@pytest.mark.parametrize("kind", ["lowrank", "deep"])
def test_uniform_plan_on_vit_is_factorizable(kind) -> None:
    """A uniform plan must be one factorize accepts (attention supports only low-rank pairs):
    either uniform_plan refuses up front, or the plan it returns factorizes."""
    model = _vit()
    try:
        plan = uniform_plan(model, params_ratio=0.3, kind=kind)
    except ValueError:
        return
    assert plan["blocks.0.attn"].rank % 2 == 0
    fmodel = factorize(model, plan)
    assert isinstance(fmodel.blocks[0].attn, FactorizedAttention)
    assert count_params(fmodel) == planned_params(model, plan) <= 0.3 * _plain_params(model)


def test_parse_plan_accepts_dicts_and_layer_plans() -> None:
    parsed = parse_plan({"a": {"kind": "deep", "rank": 3, "layout": "channel"}, "b": LayerPlan(kind="dense")})
    assert parsed == {"a": LayerPlan(kind="deep", rank=3, layout="channel"), "b": LayerPlan(kind="dense")}


def test_round_ranks_to_multiples_of_8_within_the_budget() -> None:
    from automl_factor.factorization import round_ranks
    model = _resnet_lt(width=0.5)  # widths 32/64/128: spatial full ranks 96/192/384
    plan = fit_to_budget(model, uniform_plan(model, rank_scale=1.0), 0.1 * count_params(model))
    budget = planned_params(model, plan)  # the fitted plan exactly: rounding may not exceed it
    rounded = round_ranks(model, plan, 8, budget)
    assert planned_params(model, rounded) <= budget
    changed = 0
    for name, layer in plan.items():
        new = rounded[name].rank
        if layer.rank < 8:
            assert new == layer.rank
        else:
            assert new % 8 == 0 and abs(new - layer.rank) < 8, (name, layer.rank, new)
            changed += new != layer.rank
    assert changed > 0
    # with room to spare, every rank >= 8 goes to its nearest multiple (ties up)
    roomy = round_ranks(model, plan, 8, count_params(model))
    for name, layer in plan.items():
        if layer.rank >= 8:
            lower = layer.rank // 8 * 8
            assert roomy[name].rank == (lower + 8 if layer.rank - lower >= 4 else lower)
    # every rank 6 above a multiple of 8: all would round up, the budget forces the costliest back down
    ups = {name: layer.model_copy(update={"rank": 14}) for name, layer in plan.items()}
    tight = round_ranks(model, ups, 8, planned_params(model, ups))
    assert planned_params(model, tight) <= planned_params(model, ups)
    assert {layer.rank for layer in tight.values()} == {8, 16}
    # what rank 16 costs over rank 8 grows with the layer's cost: the layers sent down are the costliest
    extra = {name: planned_params(model, {name: ups[name].model_copy(update={"rank": 16})})
             - planned_params(model, {name: ups[name].model_copy(update={"rank": 8})}) for name in ups}
    assert min(extra[n] for n in tight if tight[n].rank == 8) >= max(extra[n] for n in tight if tight[n].rank == 16)
    with pytest.raises(ValueError, match="multiple must be >= 1"):
        round_ranks(model, plan, 0, budget)
