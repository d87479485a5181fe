"""Data, the training loop and measurement. Knows nothing of Ray or MLflow."""
from .build import build_model, build_model_for
from .data import DataBundle, Dataset, iterate_batches, load
from .loop import TrainConfig, TrainingDiverged, evaluate, fit, make_optimizer, make_schedule, train_one_epoch
from .measure import count_flops, count_params, latency_ms

__all__ = [
    "DataBundle", "Dataset", "TrainConfig", "TrainingDiverged", "build_model", "build_model_for", "count_flops", "count_params",
    "evaluate", "fit", "iterate_batches", "latency_ms", "load", "make_optimizer", "make_schedule",
    "train_one_epoch",
]
