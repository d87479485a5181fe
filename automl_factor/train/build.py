"""Models sized for a dataset: classes, channels and (for ViTs) image size come from the data."""
from __future__ import annotations

import inspect

from torch import nn

from .. import models
from .data import DataBundle

__all__ = ["build_model", "build_model_for"]


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
