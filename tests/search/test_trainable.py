"""The cost cache: paired latency of candidate and dense model, measured once per architecture."""
from __future__ import annotations

import ray
import torch
from torch import nn

from automl_factor.search.trainable import architecture_key, cached_cost, start_cost_cache
from automl_factor.train import count_flops


def _models():
    torch.manual_seed(0)
    small = nn.Sequential(nn.Linear(1024, 4), nn.ReLU(), nn.Linear(4, 10))
    dense = nn.Sequential(nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 10))
    return small, dense


def test_without_the_cache_actor_both_models_are_measured():
    small, dense = _models()
    latency, dense_latency, flops = cached_cost(small, dense, (1, 1024), threads=1)
    assert flops == count_flops(small, (1, 1024)) == 2 * (1024 * 4 + 4 * 10)
    assert 0 < latency < dense_latency  # 8k vs 2M multiply-adds


def test_the_cache_actor_measures_each_architecture_once():
    small, dense = _models()
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        cache = start_cost_cache()
        first = cached_cost(small, dense, (1, 1024), threads=1)
        other_weights = _models()[0].apply(lambda m: nn.init.zeros_(m.weight) if isinstance(m, nn.Linear) else None)
        assert architecture_key(other_weights, (1, 1024), torch.device("cpu")) == \
            architecture_key(small, (1, 1024), torch.device("cpu"))
        assert cached_cost(other_weights, dense, (1, 1024), threads=1) == first  # read back, not re-measured
        assert ray.get(cache.get.remote(architecture_key(small, (1, 1024), torch.device("cpu")))) == first
        assert ray.get(cache.get.remote(architecture_key(dense, (1, 1024), torch.device("cpu")))) is None
    finally:
        ray.shutdown()
