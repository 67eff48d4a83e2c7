"""The dx-chest network: a small U-Net (about 120k parameters) for 3-class segmentation.

Classes: 0 background, 1 lung field, 2 cardiac silhouette. Input (N, 1, 96, 96) in [0, 1]
as ``chest.preprocess`` makes it; output logits (N, 3, 96, 96). Only ``train.py`` imports
torch; the plugin runs the exported ONNX file.
"""

from __future__ import annotations

import torch
from torch import nn

CLASSES = ("background", "lungs", "heart")


def _block(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, padding=1, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
        nn.Conv2d(outputs, outputs, 3, padding=1, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    """Four resolutions (96, 48, 24, 12) with skip connections; widths ``base`` × 1, 2, 4, 8."""

    def __init__(self, base: int = 8, classes: int = len(CLASSES)) -> None:
        super().__init__()
        widths = (base, base * 2, base * 4, base * 8)
        self.down = nn.ModuleList()
        previous = 1
        for width in widths:
            self.down.append(_block(previous, width))
            previous = width
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(previous, width, 2, stride=2))
            self.merge.append(_block(width * 2, width))
            previous = width
        self.head = nn.Conv2d(previous, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for index, block in enumerate(self.down):
            x = block(x)
            if index < len(self.down) - 1:
                skips.append(x)
                x = self.pool(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)
