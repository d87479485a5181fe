"""A trained factorized model on disk: its state and how to rebuild it (model, plan, data shape).

Written by each search trial every epoch, read by ``python -m automl_factor.export``. Loading uses
``torch.load(..., weights_only=True)``: the files hold tensors and plain values only.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..factorization import collapse, factorize
from .build import build_model_for

__all__ = ["STATE_FILE", "INFO_FILE", "write_checkpoint", "read_state", "rebuild_model"]

STATE_FILE = "state.pt"   # model, optimizer, schedule and RNG state, epoch
INFO_FILE = "trial.json"  # model name and kwargs, classes, image shape, normalization, plan, config


def write_checkpoint(folder: str, state: dict, info: dict) -> None:
    torch.save(state, os.path.join(folder, STATE_FILE))
    Path(folder, INFO_FILE).write_text(json.dumps(info))


def read_state(data: bytes | str, device: torch.device | str = "cpu") -> dict:
    """The state dict saved by ``write_checkpoint`` (from the file's bytes or path)."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    return torch.load(source, map_location=device, weights_only=True)


def rebuild_model(info: dict, model_state: dict) -> nn.Module:
    """The trained model of a checkpoint, collapsed to plain ``torch.nn`` layers, in eval mode."""
    dense = build_model_for(info["model"], info["num_classes"], tuple(info["image_shape"]), **info["model_kwargs"])
    model = factorize(dense, info["plan"])
    model.load_state_dict(model_state)
    return collapse(model).eval()
