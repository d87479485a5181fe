"""The math of factorized layers: modules, kinds, spectral init, Frobenius decay, plans (torch and pydantic)."""
from .attention import FactorizedAttention, head_products, is_attention
from .frobenius import frobenius_grads, half_frobenius_sq, nuclear_norm_and_bound
from .kinds import Factorization, full_rank, get_kind, kind_names, matrix_shape, snap_rank
from .layers import FactorizedConv2d, FactorizedLayer, FactorizedLinear, FactorizedModule, is_factorized
from .plan import (LayerPlan, Plan, collapse, count_params, factorizable_layers, factorize, fit_to_budget,
                   parse_plan, planned_params, round_ranks, uniform_plan)
from .regularize import (REGULARIZERS, add_frobenius_grad_, decayed_modules, decoupled_frobenius_decay_,
                         factor_parameters, frobenius_penalty)
from .spectral import best_rank_error, spectral_factors

__all__ = [
    "Factorization", "FactorizedAttention", "FactorizedConv2d", "FactorizedLayer", "FactorizedLinear",
    "FactorizedModule", "LayerPlan", "Plan", "get_kind", "kind_names", "matrix_shape", "snap_rank",
    "REGULARIZERS", "add_frobenius_grad_", "best_rank_error", "decayed_modules", "collapse", "count_params", "decoupled_frobenius_decay_", "factor_parameters",
    "factorizable_layers", "factorize", "fit_to_budget", "frobenius_grads", "frobenius_penalty", "full_rank",
    "half_frobenius_sq", "head_products", "is_attention", "is_factorized", "nuclear_norm_and_bound",
    "parse_plan", "planned_params", "round_ranks", "spectral_factors", "uniform_plan",
]
