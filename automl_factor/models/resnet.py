"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, section 4.2).

Three stages of BasicBlocks on a 3x3 stem, global average pooling and one linear classifier. Two
shortcut styles exist where a block changes shape:

- ``"pad"`` (the paper's option A): subsample by the stride and zero-pad the new channels. It has no
  parameters, so ``resnet20`` has exactly 269,722 of them for 10 classes, the published ~0.27M.
- ``"conv"``: a 1x1 conv + BN projection, as in the lottery-ticket ResNet-32 of widths 64/128/256
  (Frankle & Carbin, ICLR 2019) that Khodak et al. (ICLR 2021) use as their main benchmark. These
  shortcut convs are factorized too, so they are named ``layerS.B.shortcut.0``.

Any input of at least 4x4 works (the 8x8 digits reach 2x2 in the last stage), in either memory format.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model

__all__ = ["BasicBlock", "CifarResNet", "init_weights", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet32_lt"]

_SHORTCUTS = ("pad", "conv")


class _PadShortcut(nn.Module):
    """Option A: stride-s subsampling plus zero channels, so the identity path stays parameter-free."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection: ``relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut x)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            if shortcut == "pad":
                self.shortcut = _PadShortcut(in_channels, out_channels, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(out_channels),
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet of depth ``6n + 2``: a stem, three stages of ``n`` BasicBlocks, average pool, `fc`.

    Example::

        net = CifarResNet(32, (64, 128, 256), shortcut="conv", num_classes=100)
    """

    default_dense_layers: tuple[str, ...] = ("stem", "fc")

    def __init__(
        self,
        depth: int,
        widths: Sequence[int],
        shortcut: str = "pad",
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth}")
        if len(widths) != 3:
            raise ValueError(f"widths must name 3 stage widths, got {tuple(widths)}")
        if shortcut not in _SHORTCUTS:
            raise ValueError(f"shortcut must be one of {_SHORTCUTS}, got {shortcut!r}")
        blocks_per_stage = (depth - 2) // 6
        self.depth = depth
        self.widths = tuple(widths)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        channels = widths[0]
        stages = []
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(blocks_per_stage):
                blocks.append(BasicBlock(channels, width, stride if block_index == 0 else 1, shortcut))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def init_weights(model: nn.Module) -> None:
    """Kaiming fan_out for convs (as torchvision does), unit BN; linear layers keep PyTorch's default.
    The CIFAR ResNets' init, shared by VGG."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


_NARROW = (16, 32, 64)


def _create_resnet(depth: int, widths: tuple[int, int, int], shortcut: str, *, num_classes: int = 10,
                   in_channels: int = 3, width_multiplier: float = 1.0) -> CifarResNet:
    """The one constructor behind every registered ResNet: its variant's depth, widths and shortcut,
    the stage widths scaled by ``width_multiplier``."""
    if width_multiplier <= 0:
        raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}")
    scaled = tuple(max(1, round(width * width_multiplier)) for width in widths)
    return CifarResNet(depth, scaled, shortcut, num_classes, in_channels)


@register_model
def resnet20(**kwargs) -> CifarResNet:
    """ResNet-20, widths 16/32/64, option-A shortcuts (0.27M parameters)."""
    return _create_resnet(20, _NARROW, "pad", **kwargs)


@register_model
def resnet32(**kwargs) -> CifarResNet:
    """ResNet-32, widths 16/32/64, option-A shortcuts (0.46M parameters)."""
    return _create_resnet(32, _NARROW, "pad", **kwargs)


@register_model
def resnet44(**kwargs) -> CifarResNet:
    """ResNet-44, widths 16/32/64, option-A shortcuts (0.66M parameters)."""
    return _create_resnet(44, _NARROW, "pad", **kwargs)


@register_model
def resnet56(**kwargs) -> CifarResNet:
    """ResNet-56, widths 16/32/64, option-A shortcuts (0.85M parameters)."""
    return _create_resnet(56, _NARROW, "pad", **kwargs)


@register_model
def resnet110(**kwargs) -> CifarResNet:
    """ResNet-110, widths 16/32/64, option-A shortcuts (1.7M parameters)."""
    return _create_resnet(110, _NARROW, "pad", **kwargs)


@register_model
def resnet32_lt(**kwargs) -> CifarResNet:
    """Lottery-ticket ResNet-32: widths 64/128/256, 1x1-conv shortcuts (7.4M parameters); Khodak et al.'s model."""
    return _create_resnet(32, (64, 128, 256), "conv", **kwargs)
