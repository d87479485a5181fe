"""Models sized for a dataset: classes, channels and (for ViTs) image size come from the data."""
from __future__ import annotations

import inspect
from pathlib import Path

from torch import nn

from .. import models
from .data import DataBundle

__all__ = ["build_model", "build_model_for", "load_weights"]


def build_model(name: str, data: DataBundle, **kwargs) -> nn.Module:
    """``models.create(name)`` with ``num_classes``/``in_channels``/``image_size`` taken from ``data``."""
    return build_model_for(name, data.num_classes, data.image_shape, **kwargs)


def build_model_for(name: str, num_classes: int, image_shape: tuple[int, int, int], **kwargs) -> nn.Module:
    """``models.create(name)`` sized for images of ``image_shape`` (C, H, W) and ``num_classes``
    (``image_size`` is passed only to constructors that accept it)."""
    channels, height, _ = image_shape
    sized = {"num_classes": num_classes, "in_channels": channels}
    constructor = models.constructor(name)
    if "image_size" in inspect.signature(constructor).parameters:
        sized["image_size"] = height
    return constructor(**{**sized, **kwargs})


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a trained ``state_dict`` into ``model`` (in place; returned for chaining).

    ``path`` is a ``torch.save``d state dict, a dict holding one under ``"model"`` or ``"state_dict"``
    (as ``train --out`` and many training scripts write), or a ``train --out`` folder. Loaded with
    ``weights_only=True``; a mismatch names the missing and unexpected keys.
    """
    import torch

    path = Path(path)
    if path.is_dir():
        path = path / "state.pt"
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise ValueError(f"weights file {str(path)!r} is not a PyTorch state dict ({type(error).__name__})") from None
    if isinstance(state, dict):
        state = state.get("model", state.get("state_dict", state))
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"weights file {str(path)!r} holds no state dict of tensors")
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or unexpected or wrong:
        def some(keys):
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
        problems = [f"missing {some(missing)}" if missing else "", f"unexpected {some(unexpected)}" if unexpected else "",
                    f"other shapes for {some(wrong)}" if wrong else ""]
        raise ValueError(f"weights file {str(path)!r} does not fit {type(model).__name__}: "
                         + "; ".join(p for p in problems if p))
    model.load_state_dict(state)
    return model
