"""Training and evaluation: one epoch, the optimizer with FD or weight decay, the LR schedule.

The regularizer follows the paper: ``fd`` decays each factorized layer planned with FD by its
Frobenius norm (coefficient = the ordinary weight decay) and everything else by ordinary weight
decay; ``wd`` applies ordinary weight decay to all parameters, factors included; ``none`` none.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..factorization import decoupled_frobenius_decay_, factor_parameters, frobenius_penalty
from .data import DataBundle, Dataset, iterate_batches

__all__ = ["TrainConfig", "TrainingDiverged", "make_optimizer", "make_schedule", "train_one_epoch", "evaluate",
           "fit"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainConfig(BaseModel):
    """The training recipe. Defaults are the paper's CIFAR recipe (SGD 0.9, lr 0.1, steps at 50%/75%)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)  # also the Frobenius decay coefficient
    schedule: Literal["multistep", "cosine"] = "multistep"
    warmup_epochs: float = Field(0.0, ge=0)
    regularizer: Literal["fd", "wd", "none"] = "fd"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    channels_last: bool = False


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW. Under ``fd``, factors of FD layers get no weight decay (FD replaces it)."""
    decay = 0.0 if config.regularizer == "none" else config.weight_decay
    fd_ids = {id(p) for p in factor_parameters(model, regularizer="fd")} if config.regularizer == "fd" else set()
    others = [p for p in model.parameters() if id(p) not in fd_ids]
    factors = [p for p in model.parameters() if id(p) in fd_ids]
    groups = [{"params": others, "weight_decay": decay}]
    if factors:
        groups.append({"params": factors, "weight_decay": 0.0})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    return torch.optim.AdamW(groups, lr=config.lr)


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig,
                  steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LR factor: linear warmup, then ×0.1 at 50% and 75% of training, or cosine to 0."""
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 0.1 ** ((step >= 0.5 * total) + (step >= 0.75 * total))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_one_epoch(model: nn.Module, data: DataBundle, optimizer: torch.optim.Optimizer,
                    schedule: torch.optim.lr_scheduler.LRScheduler, config: TrainConfig, *,
                    generator: torch.Generator, epoch: int = 0) -> dict[str, float]:
    """One pass over the training split. Returns mean loss, train accuracy, images and seconds."""
    device = next(model.parameters()).device
    fd_coupled = config.regularizer == "fd" and config.optimizer == "sgd"
    fd_decoupled = config.regularizer == "fd" and config.optimizer == "adamw"
    model.train()
    start, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
    batches = iterate_batches(data.train, data, config.batch_size, train=True, generator=generator,
                              device=device, channels_last=config.channels_last)
    for step, (images, labels) in enumerate(batches):
        with _autocast(device):
            logits = model(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch} step {step}; "
                                   f"lower the learning rate (lr={config.lr})")
        objective = loss + config.weight_decay * frobenius_penalty(model, fd_only=True) if fd_coupled else loss
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if fd_decoupled:
            decoupled_frobenius_decay_(model, schedule.get_last_lr()[0], config.weight_decay)
        optimizer.step()
        schedule.step()
        seen += labels.numel()
        correct += int((logits.argmax(1) == labels).sum())
        loss_sum += float(loss.detach()) * labels.numel()
    return {"loss": loss_sum / max(1, seen), "train_accuracy": correct / max(1, seen), "images": seen,
            "seconds": time.perf_counter() - start}


@torch.no_grad()
def evaluate(model: nn.Module, split: Dataset, data: DataBundle, *, batch_size: int = 512,
             channels_last: bool = False) -> float:
    """Top-1 accuracy on a split."""
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    for images, labels in iterate_batches(split, data, batch_size, train=False, device=device,
                                          channels_last=channels_last):
        with _autocast(device):
            correct += int((model(images).argmax(1) == labels).sum())
    return correct / len(split.labels)


def fit(model: nn.Module, data: DataBundle, config: TrainConfig, *, seed: int = 0,
        on_epoch: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Train for ``config.epochs`` and evaluate after each epoch on validation (or test if none).

    ``on_epoch(epoch, metrics)`` is called after each epoch (progress display, reporting).
    """
    generator = torch.Generator().manual_seed(seed)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    steps = math.ceil(len(data.train.labels) / config.batch_size)
    schedule = make_schedule(optimizer, config, steps)
    eval_split = data.val if data.val is not None else data.test
    history = []
    for epoch in range(1, config.epochs + 1):
        metrics = train_one_epoch(model, data, optimizer, schedule, config, generator=generator, epoch=epoch)
        metrics["accuracy"] = evaluate(model, eval_split, data, channels_last=config.channels_last)
        metrics["epoch"] = epoch
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    return history
