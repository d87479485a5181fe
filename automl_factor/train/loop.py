"""Training and evaluation: one epoch, the optimizer with FD or weight decay, the LR schedule.

Regularization follows the paper, per layer as the plan says (``LayerPlan.regularizer``): ``fd``
decays a factorized layer by the Frobenius norm of its product, ``wd`` by ordinary weight decay on
its factors, ``none`` not at all; every other parameter gets ordinary weight decay. One coefficient,
``TrainConfig.weight_decay``, serves both (Khodak et al.: FD needs no new hyperparameter). Without a
plan every factorized layer is ``fd``. FD is applied in closed form straight to the gradients
(``add_frobenius_grad_``), not as a penalty.

Speed: a step is one forward+loss function and the closed-form FD, both compiled with
``torch.compile`` when ``TrainConfig.compile`` says so (by default on CUDA, where kernel launches
dominate small CIFAR models; off on CPU, see README "Training speed"), then a fused (CUDA) or
foreach optimizer step. Losses and accuracies accumulate on the device and are read once per epoch, so the
loop never waits for the GPU mid-epoch. A compiled step sees one batch shape only: the last partial
training batch is dropped and evaluation pads its last batch.
"""
from __future__ import annotations

import math
import functools
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..factorization import add_frobenius_grad_, decayed_modules, decoupled_frobenius_decay_, factor_parameters
from .data import DataBundle, Dataset, iterate_batches

__all__ = ["TrainConfig", "TrainingDiverged", "make_optimizer", "make_schedule", "steps_per_epoch", "train_one_epoch",
           "evaluate", "compile_seconds", "fit", "MULTISTEP_DROPS", "first_epoch_after_decay"]

# The multistep schedule multiplies the learning rate by 0.1 at these fractions of training.
MULTISTEP_DROPS = (0.5, 0.75)


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
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    channels_last: bool = False
    # torch.compile the forward+loss (None: on for CUDA, off for CPU). Off restores the eager loop.
    compile: bool | None = None
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = "default"

    def compiled_on(self, device: torch.device) -> bool:
        """Whether the step is compiled on ``device`` (the ``compile=None`` default: CUDA only)."""
        return device.type == "cuda" if self.compile is None else self.compile


def make_optimizer(model: nn.Module, config: TrainConfig, plan: Mapping | None = None) -> torch.optim.Optimizer:
    """SGD or AdamW. Factors of layers the plan decays with ``fd`` or ``none`` get no weight decay
    (FD replaces it); everything else gets ``config.weight_decay``. Without a plan every factorized
    layer is FD. On CUDA the optimizer's fused kernels update all parameters in a few launches."""
    undecayed = {id(p) for kind in ("fd", "none") for p in factor_parameters(model, plan, kind)}
    others = [p for p in model.parameters() if id(p) not in undecayed]
    factors = [p for p in model.parameters() if id(p) in undecayed]
    groups = [{"params": others, "weight_decay": config.weight_decay}]
    if factors:
        groups.append({"params": factors, "weight_decay": 0.0})
    fused = {"fused": True} if next(model.parameters()).device.type == "cuda" else {}
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, **fused)
    return torch.optim.AdamW(groups, lr=config.lr, **fused)


def steps_per_epoch(num_images: int, config: TrainConfig, device: torch.device | str = "cpu") -> int:
    """Optimizer steps in one epoch (a compiled step drops the last partial batch)."""
    if config.compiled_on(torch.device(device)):
        return max(1, num_images // config.batch_size)
    return math.ceil(num_images / config.batch_size)


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
        return 0.1 ** sum(step >= drop * total for drop in MULTISTEP_DROPS)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def first_epoch_after_decay(schedule: str, epochs: int) -> int | None:
    """The first epoch trained wholly after the multistep schedule's first drop (7 of 12), or None
    for cosine. Before it, validation accuracy at high learning rate says little about the final
    ranking (measured in ``search.schedulers.default_grace_period``), so early stopping waits for it."""
    if schedule != "multistep":
        return None
    return math.ceil(MULTISTEP_DROPS[0] * epochs) + 1


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _forward_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    with _autocast(images.device):
        logits = model(images)
        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing), logits


def _forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with _autocast(images.device):
        return model(images)


class _Compiled:
    """The torch.compile'd step functions of one model, and the seconds their first calls took
    (tracing and code generation; later models of the same shapes reuse the compiled code).

    ``loss`` is forward + loss (its backward compiled with it), ``forward`` the evaluation forward,
    ``fd`` the closed-form Frobenius decay (its small batched matmuls fused into a few kernels)."""

    def __init__(self, mode: str, device: torch.device):
        if torch._dynamo.config.recompile_limit < _RECOMPILE_LIMIT:  # a search's trials differ in shapes
            torch._dynamo.config.recompile_limit = _RECOMPILE_LIMIT
        self.functions = {"loss": torch.compile(_forward_loss, mode=mode), "forward": torch.compile(_forward, mode=mode),
                          "fd": torch.compile(add_frobenius_grad_, mode=mode)}
        self.device = device
        self.seconds = 0.0
        self._called: set[str] = set()

    def __call__(self, name: str, *args):
        if name in self._called:
            return self.functions[name](*args)
        start = time.perf_counter()
        result = self.functions[name](*args)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - start
        self._called.add(name)
        return result


_RECOMPILE_LIMIT = 64
# Compiled functions by model, so a model is traced once however many epochs call it (and dropped with it).
_COMPILED: "weakref.WeakKeyDictionary[nn.Module, dict[str, _Compiled]]" = weakref.WeakKeyDictionary()


def _step_function(model: nn.Module, config: TrainConfig | None, device: torch.device, name: str) -> Callable:
    if config is None or not config.compiled_on(device):
        return {"loss": _forward_loss, "forward": _forward, "fd": add_frobenius_grad_}[name]
    compiled = _COMPILED.setdefault(model, {})
    if config.compile_mode not in compiled:
        compiled[config.compile_mode] = _Compiled(config.compile_mode, device)
    return functools.partial(compiled[config.compile_mode], name)


def compile_seconds(model: nn.Module) -> float:
    """Seconds this model's compiled steps spent on their first calls (0 when never compiled)."""
    return sum(compiled.seconds for compiled in _COMPILED.get(model, {}).values())


def train_one_epoch(model: nn.Module, data: DataBundle, optimizer: torch.optim.Optimizer,
                    schedule: torch.optim.lr_scheduler.LRScheduler, config: TrainConfig, *,
                    generator: torch.Generator, epoch: int = 0, plan: Mapping | None = None) -> dict[str, float]:
    """One pass over the training split (Frobenius decay on the layers ``plan`` gives ``fd``; all
    factorized layers without a plan). Returns mean loss, train accuracy, images and seconds."""
    device = next(model.parameters()).device
    compiled = config.compiled_on(device)
    forward_loss = _step_function(model, config, device, "loss")
    frobenius_decay = _step_function(model, config, device, "fd")
    fd_modules = nn.ModuleList(decayed_modules(model, plan))
    fd_coupled = len(fd_modules) > 0 and config.optimizer == "sgd"
    fd_decoupled = len(fd_modules) > 0 and config.optimizer == "adamw"
    model.train()
    start = time.perf_counter()
    seen = 0
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    batches = iterate_batches(data.train, data, config.batch_size, train=True, generator=generator,
                              device=device, channels_last=config.channels_last, drop_last=compiled)
    for images, labels in batches:
        loss, logits = forward_loss(model, images, labels, config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if fd_coupled:
            frobenius_decay(fd_modules, config.weight_decay)
        if fd_decoupled:
            decoupled_frobenius_decay_(fd_modules, schedule.get_last_lr()[0], config.weight_decay)
        optimizer.step()
        schedule.step()
        seen += labels.numel()
        correct += (logits.argmax(1) == labels).sum()
        loss_sum += loss.detach() * labels.numel()
    mean_loss = float(loss_sum) / max(1, seen)  # the epoch's one device-to-host sync
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(f"loss became {mean_loss} in epoch {epoch}; lower the learning rate (lr={config.lr})")
    return {"loss": mean_loss, "train_accuracy": int(correct) / max(1, seen), "images": seen,
            "seconds": time.perf_counter() - start}


@torch.no_grad()
def evaluate(model: nn.Module, split: Dataset, data: DataBundle, *, batch_size: int = 512,
             channels_last: bool = False, config: TrainConfig | None = None) -> float:
    """Top-1 accuracy on a split. With a ``config`` that compiles, the forward is compiled and the
    last batch is padded to ``batch_size`` so every call has one shape."""
    device = next(model.parameters()).device
    compiled = config is not None and config.compiled_on(device)
    forward = _step_function(model, config, device, "forward")
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for images, labels in iterate_batches(split, data, batch_size, train=False, device=device,
                                          channels_last=channels_last):
        count = labels.numel()
        if compiled and count < batch_size:
            images = torch.cat([images, images.new_zeros((batch_size - count, *images.shape[1:]))])
        correct += (forward(model, images)[:count].argmax(1) == labels).sum()
    return int(correct) / len(split.labels)


def fit(model: nn.Module, data: DataBundle, config: TrainConfig, *, seed: int = 0, plan: Mapping | None = None,
        on_epoch: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Train for ``config.epochs`` and evaluate after each epoch on validation (or test if none).

    The data move to the model's device once; augmentation draws on a generator on that device.
    ``on_epoch(epoch, metrics)`` is called after each epoch (progress display, reporting).
    """
    device = next(model.parameters()).device
    data = data.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config, plan)
    schedule = make_schedule(optimizer, config, steps_per_epoch(len(data.train), config, device))
    eval_split = data.val if data.val is not None else data.test
    history = []
    for epoch in range(1, config.epochs + 1):
        metrics = train_one_epoch(model, data, optimizer, schedule, config, generator=generator, epoch=epoch,
                                  plan=plan)
        metrics["accuracy"] = evaluate(model, eval_split, data, channels_last=config.channels_last, config=config)
        metrics["epoch"] = epoch
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    return history
