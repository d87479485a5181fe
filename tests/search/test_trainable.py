"""Latency as a ratio to dense: candidate and dense timed interleaved, measured once per architecture."""
from __future__ import annotations

import pytest
import ray
import torch
from torch import nn

from automl_factor.search.space import LatencyTarget
from automl_factor.search.trainable import architecture_key, cached_cost, start_cost_cache
from automl_factor.train import count_flops
from automl_factor.train.measure import paired_latency

TARGET = LatencyTarget(device="cpu", batch_size=1, threads=1, rounds=3)


def _models():
    torch.manual_seed(0)
    small = nn.Sequential(nn.Linear(1024, 4), nn.ReLU(), nn.Linear(4, 10))
    dense = nn.Sequential(nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 10))
    return small, dense


def test_paired_latency_gives_ratio_spread_and_both_timings():
    small, dense = _models()
    timing = paired_latency(small, dense, (1, 1024), rounds=4, min_run_time=0.01)
    assert timing.rounds == 4 and timing.spread >= 0
    assert 0 < timing.ms < timing.dense_ms and 0 < timing.ratio < 1  # 8k vs 2M multiply-adds
    same = paired_latency(dense, dense, (1, 1024), rounds=5, min_run_time=0.01)
    assert same.ratio == pytest.approx(1.0, abs=0.5)
    with pytest.raises(ValueError, match="rounds must be >= 1, got 0"):
        paired_latency(small, dense, (1, 1024), rounds=0)


def test_without_the_cache_actor_both_models_are_measured():
    small, dense = _models()
    cost = cached_cost(small, dense, (1024,), TARGET)
    assert cost["flops"] == count_flops(small, (1, 1024)) == 2 * (1024 * 4 + 4 * 10)
    assert 0 < cost["latency_ms"] < cost["dense_latency_ms"]
    assert cost["latency_ratio"] < 1 and cost["latency_ratio_spread"] >= 0


def test_the_cache_actor_measures_each_architecture_once():
    small, dense = _models()
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        cache = start_cost_cache()
        first = cached_cost(small, dense, (1024,), TARGET)
        other_weights = _models()[0].apply(lambda m: nn.init.zeros_(m.weight) if isinstance(m, nn.Linear) else None)
        assert architecture_key(other_weights, (1, 1024), torch.device("cpu")) == \
            architecture_key(small, (1, 1024), torch.device("cpu"))
        assert cached_cost(other_weights, dense, (1024,), TARGET) == first  # read back, not re-measured
        key = architecture_key(small, (1, 1024), torch.device("cpu")) + "|1|3|None"
        assert ray.get(cache.get.remote(key)) == first
        assert ray.get(cache.get.remote(architecture_key(dense, (1, 1024), torch.device("cpu")) + "|1|3|None")) is None
    finally:
        ray.shutdown()


def test_trials_checkpoint_at_the_rungs_the_last_epoch_and_once_a_minute_between():
    """On the default space (12 epochs, MO-ASHA's rung at 7) a quick trial checkpoints twice, not 12
    times; a slow one also when a minute has passed since its last checkpoint."""
    from automl_factor.search.options import SearchOptions
    from automl_factor.search.prepare import DEFAULT_SPACE
    from automl_factor.search.run import _judged_epochs
    from automl_factor.search.space import load_space
    from automl_factor.search.trainable import CHECKPOINT_EVERY_S, TrialSetup, checkpoint_due

    space = load_space(DEFAULT_SPACE)
    rungs = _judged_epochs(SearchOptions(), space.max_epochs, space.recipe.schedule)
    assert rungs == (7,)
    setup = TrialSetup(space=space, budget=0.1, checkpoint_epochs=rungs)
    quick = [epoch for epoch in range(1, 13) if checkpoint_due(epoch, setup, seconds_since_checkpoint=0.5)]
    assert quick == [7, 12]
    assert all(checkpoint_due(epoch, setup, seconds_since_checkpoint=CHECKPOINT_EVERY_S) for epoch in range(1, 13))
    assert _judged_epochs(SearchOptions(scheduler="fifo"), 12, "multistep") == ()
    assert _judged_epochs(SearchOptions(grace_period=1, reduction_factor=2), 9, "cosine") == (1, 2, 4, 8)
