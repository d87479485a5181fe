"""Model registry: build any network this project knows by name, or a user's own by import path.

Search configurations name their model as a string (``"resnet32_lt"``), so the registry keeps the
mapping from names to constructors in one place, as timm does. A user who wants a model of their
own does not need to register it: ``"my_pkg.nets:wide_net"`` is imported and called instead.

Example::

    from automl_factor import models
    net = models.create("resnet20", num_classes=100)
    net = models.create("my_pkg.nets:wide_net", num_classes=10)
"""

from __future__ import annotations

from ._registry import constructor, create, list_models, register_model
from .attention import SelfAttention
from .resnet import CifarResNet
from .vgg import VGG
from .vit import VisionTransformer

__all__ = [
    "CifarResNet",
    "SelfAttention",
    "VGG",
    "VisionTransformer",
    "constructor",
    "create",
    "list_models",
    "register_model",
]
