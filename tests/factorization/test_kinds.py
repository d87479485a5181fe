"""The factorization registry: built-in kinds, the one cost formula, and a new kind added from a test."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from automl_factor import models
from automl_factor.factorization import (Factorization, FactorizedModule, LayerPlan, add_frobenius_grad_, collapse,
                                         count_params, factorizable_layers, factorize, fit_to_budget,
                                         frobenius_penalty, get_kind, kind_names, planned_params, snap_rank)
from automl_factor.factorization import kinds as kinds_module


def test_builtin_kinds_and_unknown_name() -> None:
    assert kind_names()[:4] == ["dense", "lowrank", "deep", "overcomplete"]
    with pytest.raises(ValueError, match="unknown factorization kind 'tt'; choose one of: dense, lowrank"):
        get_kind("tt")
    with pytest.raises(ValueError, match="unknown factorization kind"):
        LayerPlan(kind="tt", rank=2)


def test_snap_rank_is_the_one_rounding_rule() -> None:
    attention = models.create("vit", image_size=8, dim=24, depth=1, heads=3, mlp_dim=8, in_channels=1).blocks[0].attn
    linear = nn.Linear(10, 10)
    assert [snap_rank(linear, r) for r in (0.2, 1.0, 3.99, 4.0)] == [1, 1, 3, 4]
    assert [snap_rank(attention, r) for r in (1, 3, 5.9, 6, 8)] == [3, 3, 3, 6, 6]
    # a sampled fraction rounds up first (rank_for), so the search never rounds a layer away
    assert get_kind("lowrank").rank_for(attention, "spatial", 0.2) == 6  # 0.2 x 24 = 4.8 -> 6
    assert get_kind("lowrank").rank_for(linear, "spatial", 0.01) == 1
    assert get_kind("overcomplete").rank_for(linear, "spatial", 2.5) == 25


def test_overcomplete_kind_deploys_dense_and_is_not_scaled_by_budgets() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 8))
    plan = {"0": LayerPlan(kind="overcomplete", rank=30), "2": LayerPlan(kind="lowrank", rank=2)}
    fmodel = factorize(model, plan)
    x = torch.randn(5, 12)
    torch.testing.assert_close(fmodel[0](x), model[0](x), rtol=1e-5, atol=1e-5)  # SI of a wider rank is exact
    assert planned_params(model, plan) == count_params(fmodel) == sum(p.numel() for p in collapse(fmodel).parameters())
    assert planned_params(model, plan) == (12 * 10 + 10) + (2 * (10 + 8) + 8)
    fitted = fit_to_budget(model, plan, planned_params(model, plan) - 10)
    assert fitted["0"] == plan["0"] and fitted["2"].rank == 1
    with pytest.raises(ValueError, match="overcomplete needs a rank >= full rank 10, got 5"):
        factorize(model, {"0": LayerPlan(kind="overcomplete", rank=5)})


# --- a new kind, added by one class here ----------------------------------------------------------


class ToySumLinear(FactorizedModule):
    """A toy factorized linear layer: ``W = A Bᵀ + C Dᵀ`` (two rank-r/2 terms), deployed as one matmul
    chain through the concatenated factors. Nothing of the library knows it."""

    def __init__(self, linear: nn.Linear, rank: int):
        super().__init__()
        half = max(1, rank // 2)
        weight = linear.weight.detach()
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        root = s[: 2 * half].sqrt()
        left, right = u[:, : 2 * half] * root, vh[: 2 * half].T * root
        self.A, self.C = nn.Parameter(left[:, :half].clone()), nn.Parameter(left[:, half:].clone())
        self.B, self.D = nn.Parameter(right[:, :half].clone()), nn.Parameter(right[:, half:].clone())
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def forward(self, x):
        return F.linear(x, self.A @ self.B.T + self.C @ self.D.T, self.bias)

    def frobenius_factors(self, of=lambda t: t):
        # ‖A Bᵀ + C Dᵀ‖² = ‖[A C] [B D]ᵀ‖²: one pair of the concatenations is not a view, so this
        # toy decays each term on its own (a different regularizer, which is the point: it is the kind's choice).
        return [(of(self.A), of(self.B), None), (of(self.C), of(self.D), None)]

    def factor_parameters(self):
        return [self.A, self.B, self.C, self.D]

    def inference_params(self) -> int:
        m, n = self.A.shape[0], self.B.shape[0]
        return (self.A.shape[1] + self.C.shape[1]) * (m + n) + m

    def collapse(self):
        rank = self.A.shape[1] + self.C.shape[1]
        first = nn.Linear(self.B.shape[0], rank, bias=False)
        second = nn.Linear(rank, self.A.shape[0])
        with torch.no_grad():
            first.weight.copy_(torch.cat([self.B, self.D], 1).T)
            second.weight.copy_(torch.cat([self.A, self.C], 1))
            second.bias.copy_(self.bias)
        return nn.Sequential(first, second)


@pytest.fixture
def toy_kind():
    class ToySum(Factorization):
        name = "toysum"
        attention = False

        @classmethod
        def build(cls, module, layer, generator, covariance=None):
            return ToySumLinear(module, layer.rank)

        @classmethod
        def deployed_params(cls, module, layer) -> int:
            return 2 * max(1, layer.rank // 2) * (module.in_features + module.out_features) + module.out_features

    yield ToySum
    kinds_module._REGISTRY.pop("toysum")


def test_a_new_kind_works_everywhere_by_registering_one_class(toy_kind) -> None:
    assert "toysum" in kind_names()
    with pytest.raises(ValueError, match="already registered"):
        type("Again", (Factorization,), {"name": "toysum"})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3))
    plan = {"0": LayerPlan(kind="toysum", rank=8), "2": LayerPlan(kind="toysum", rank=12), "4": LayerPlan(rank=2)}
    fmodel = factorize(model, plan)
    assert isinstance(fmodel[0], ToySumLinear) and isinstance(fmodel[2], ToySumLinear)
    # costs: the kind's formula = the built module's count = the collapsed model's real parameters
    assert planned_params(model, plan) == count_params(fmodel) == sum(p.numel() for p in collapse(fmodel).parameters())
    # full rank reproduces the dense layer; collapse keeps the function
    x, hidden = torch.randn(7, 16), torch.randn(7, 12)
    torch.testing.assert_close(fmodel[2](hidden), model[2](hidden), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(collapse(fmodel)(x), fmodel(x), rtol=1e-5, atol=1e-5)
    # Frobenius decay reads the module's own factors: penalty and closed-form gradients
    want = sum(0.5 * (a @ b.T).square().sum() for m in (fmodel[0], fmodel[2]) for a, b, _ in m.frobenius_factors())
    want = want + 0.5 * (fmodel[4].U @ fmodel[4].V.T).square().sum()
    torch.testing.assert_close(frobenius_penalty(fmodel), want)
    params = list(fmodel.parameters())
    expected = torch.autograd.grad(want, params, allow_unused=True)
    add_frobenius_grad_(fmodel, 1.0)
    for p, g in zip(params, expected):
        if g is not None:
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)
    # budgets scale it like any low-rank kind
    fitted = fit_to_budget(model, plan, 0.6 * planned_params(model, plan))
    assert planned_params(model, fitted) <= 0.6 * planned_params(model, plan)
    assert fitted["0"].kind == "toysum" and fitted["0"].rank < 8


def test_resnet_plan_costs_match_every_builtin_kind() -> None:
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10)
    names = factorizable_layers(model)
    plan = {name: LayerPlan(kind=("lowrank", "deep", "overcomplete", "dense")[i % 4],
                            rank=(5, 7, 200, None)[i % 4], layout=("spatial", "channel")[(i // 4) % 2])
            for i, name in enumerate(names)}
    fmodel = factorize(model, plan)
    assert planned_params(model, plan) == count_params(fmodel) == sum(p.numel() for p in collapse(fmodel).parameters())
