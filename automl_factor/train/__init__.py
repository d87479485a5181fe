"""Data, the training loop and measurement. Knows nothing of Ray or MLflow."""
from .build import build_model, build_model_for, load_weights
from .data import DataBundle, Dataset, iterate_batches, load
from .loop import (TrainConfig, TrainingDiverged, compile_seconds, evaluate, first_epoch_after_decay, fit, make_optimizer,
                   make_schedule, steps_per_epoch, train_one_epoch)
from .measure import count_flops, count_params, latency_ms

__all__ = [
    "DataBundle", "Dataset", "TrainConfig", "TrainingDiverged", "build_model", "compile_seconds", "build_model_for", "load_weights", "count_flops", "count_params",
    "evaluate", "first_epoch_after_decay", "fit", "iterate_batches", "latency_ms", "load", "make_optimizer", "make_schedule", "steps_per_epoch",
    "train_one_epoch",
]
