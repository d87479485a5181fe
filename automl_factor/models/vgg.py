"""VGG-19 with batch norm for CIFAR (Simonyan & Zisserman, ICLR 2015; the CIFAR variant with one
512 -> classes linear layer, as in the lottery-ticket and Khodak et al. experiments).

Each max-pool halves the image only while it is larger than 1x1, and an adaptive average pool ends
the features, so the same network runs on 32x32 CIFAR and on 8x8 digits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model
from .resnet import init_weights

__all__ = ["VGG", "vgg19"]

_VGG19: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)


class _HalvingMaxPool(nn.Module):
    """2x2 max-pool that leaves a 1-pixel-high or -wide map alone instead of failing on it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < 2 or x.shape[-2] < 2:
            return x
        return F.max_pool2d(x, 2)


class VGG(nn.Module):
    """Conv-BN-ReLU stack described by `config` (ints are widths, ``"M"`` a max-pool), then `fc`.

    The first conv is the `stem`, so it can stay dense like every other model's stem.
    """

    default_dense_layers: tuple[str, ...] = ("stem", "fc")

    def __init__(self, config: Sequence[int | str], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if not config or not isinstance(config[0], int):
            raise ValueError(f"config must start with a conv width, got {tuple(config)[:1]}")
        width = config[0]
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        for item in config[1:]:
            if item == "M":
                layers.append(_HalvingMaxPool())
            elif isinstance(item, int):
                conv = nn.Conv2d(width, item, 3, padding=1, bias=False)
                layers += [conv, nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                width = item
            else:
                raise ValueError(f"config entries must be ints or 'M', got {item!r}")
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)
        init_weights(self)  # Kaiming fan_out convs, unit BN: the same init as the CIFAR ResNets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(F.relu(self.stem_bn(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model
def vgg19(**kwargs) -> VGG:
    """VGG-19 with batch norm, CIFAR variant (20.0M parameters for 10 classes)."""
    return _create_vgg(_VGG19, **kwargs)


def _create_vgg(config: Sequence[int | str], *, num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(config, num_classes, in_channels)
