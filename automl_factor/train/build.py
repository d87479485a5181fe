"""Models sized for a dataset: classes, channels and (for ViTs) image size come from the data."""
from __future__ import annotations

import inspect

from torch import nn

from .. import models
from .data import DataBundle

__all__ = ["build_model"]


def build_model(name: str, data: DataBundle, **kwargs) -> nn.Module:
    """``models.create(name)`` with ``num_classes``/``in_channels``/``image_size`` taken from ``data``
    (``image_size`` only for constructors that accept it)."""
    channels, height, _ = data.image_shape
    sized = {"num_classes": data.num_classes, "in_channels": channels}
    constructor = models.constructor(name)
    if "image_size" in inspect.signature(constructor).parameters:
        sized["image_size"] = height
    return constructor(**{**sized, **kwargs})
