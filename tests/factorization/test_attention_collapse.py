"""Overcomplete attention deployed no wider than its heads' rank, with equal outputs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from automl_factor.factorization import LayerPlan, collapse, count_params, factorize, planned_params
from automl_factor.factorization.attention import FactorizedAttention
from automl_factor.models.attention import SelfAttention


class Block(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2):
        super().__init__()
        self.attn = SelfAttention(dim, heads)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        return self.head(self.attn(x))


def _trained(attn_dim: int) -> nn.Module:
    torch.manual_seed(0)
    model = factorize(Block(), {"attn": LayerPlan(kind="lowrank", rank=attn_dim)})
    with torch.no_grad():  # as if trained: the factors leave their spectral init
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize(("attn_dim", "deployed"), [(40, 18), (24, 18), (12, 12)])
def test_collapse_keeps_outputs_and_narrows_heads_wider_than_their_rank(attn_dim, deployed):
    # dim 8 + bias: a head's products have rank <= 9, so heads of 20 or 12 become 9 wide; heads of 6 stay.
    model = _trained(attn_dim).double()
    assert isinstance(model.attn, FactorizedAttention)
    x = torch.randn(4, 5, 8, dtype=torch.float64)
    deployed_model = collapse(model)
    assert isinstance(deployed_model.attn, SelfAttention) and deployed_model.attn.attn_dim == deployed
    torch.testing.assert_close(deployed_model(x), model(x), rtol=1e-9, atol=1e-9)
    # The deployed count is what the plan promised and what count_params reports, wide or not.
    assert count_params(model) == count_params(deployed_model, inference=False) == \
        planned_params(Block(), {"attn": LayerPlan(kind="lowrank", rank=attn_dim)})


def test_overcomplete_attention_narrower_than_its_rank_is_deployed_wider_than_dense():
    model = _trained(12)  # 1.5x dense width, heads of 6 <= dim: nothing to collapse exactly
    assert count_params(model) > count_params(Block())
