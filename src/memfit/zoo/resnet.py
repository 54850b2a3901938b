"""ResNet-50 v1.5 (He et al. 2016; torchvision's variant with the stride in the 3x3 conv).

Stem (7x7/2 conv, BatchNorm, ReLU, 3x3/2 max-pool), four stages of bottleneck blocks
(1x1 reduce, 3x3, 1x1 expand by 4; a 1x1 projection on the shortcut where the shape changes),
global average pooling and a linear classifier. Convolutions have no bias; ReLUs are in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memfit.zoo.output import ZooOutput

__all__ = ["ResNetConfig", "ResNet", "num_params"]

_EXPANSION = 4
"""Bottleneck output width / inner width."""


@dataclass(frozen=True, kw_only=True)
class ResNetConfig:
    """Sizes of a bottleneck ResNet; the defaults are ResNet-50."""

    blocks_per_stage: tuple[int, ...] = (3, 4, 6, 3)
    base_width: int = 64
    """Stem width and inner width of the first stage; stage ``i`` uses ``base_width * 2**i``."""
    num_classes: int = 1000
    channels: int = 3
    image_size: int = 224
    """Side of the example images (any size >= 32 runs)."""


def num_params(config: ResNetConfig) -> int:
    """Parameters: ``c_in * c_out * k * k`` per conv, ``2 * c`` per BatchNorm (running statistics
    are buffers), ``f * classes + classes`` for the classifier.
    """
    w = config.base_width
    total = config.channels * w * 7 * 7 + 2 * w
    in_ch = w
    for stage, num_blocks in enumerate(config.blocks_per_stage):
        width = w * 2**stage
        out_ch = width * _EXPANSION
        for block in range(num_blocks):
            total += in_ch * width + 2 * width  # 1x1 reduce
            total += width * width * 9 + 2 * width  # 3x3
            total += width * out_ch + 2 * out_ch  # 1x1 expand
            if _stride(stage, block) != 1 or in_ch != out_ch:
                total += in_ch * out_ch + 2 * out_ch  # shortcut projection
            in_ch = out_ch
    return total + in_ch * config.num_classes + config.num_classes


def _stride(stage: int, block: int) -> int:
    """Stages after the first halve the resolution in their first block."""
    return 2 if stage > 0 and block == 0 else 1


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    )


class Bottleneck(nn.Module):
    """``relu(x' + expand(relu(conv3x3(relu(reduce(x))))))``, ``x'`` the (projected) shortcut."""

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        out_ch = width * _EXPANSION
        self.reduce = _conv_bn(c_in, width, 1)
        self.conv = _conv_bn(width, width, 3, stride)  # v1.5: stride here, not in `reduce`
        self.expand = _conv_bn(width, out_ch, 1)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            _conv_bn(c_in, out_ch, 1, stride) if stride != 1 or c_in != out_ch else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.reduce(x))
        y = self.relu(self.conv(y))
        y = self.expand(y)
        y += self.shortcut(x)  # in place, as torchvision: BatchNorm does not save its output
        return self.relu(y)


class ResNet(nn.Module):
    """Bottleneck ResNet classifier.

    Args:
        config: sizes.
    """

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        w = config.base_width
        self.stem = nn.Sequential(
            _conv_bn(config.channels, w, 7, stride=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        stages = []
        in_ch = w
        for stage, num_blocks in enumerate(config.blocks_per_stage):
            width = w * 2**stage
            blocks = []
            for block in range(num_blocks):
                blocks.append(Bottleneck(in_ch, width, _stride(stage, block)))
                in_ch = width * _EXPANSION
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_ch, config.num_classes)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ZooOutput:
        """Class logits.

        Args:
            pixel_values: float ``[B, C, H, W]``.
            labels: int64 ``[B]`` class indices.

        Returns:
            ``ZooOutput`` with logits ``[B, num_classes]`` and, with labels, their cross-entropy.
        """
        x = self.stages(self.stem(pixel_values))
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ZooOutput(loss=loss, logits=logits)
