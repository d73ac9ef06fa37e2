"""The paper's CNNs; the ViT-LoRA model is built in `tda/backends/vit.py`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn



class CNN(nn.Module):
    """2 conv layers: conv(k)-GELU-pool-conv(k)-GELU-pool-fc(1600,128)-GELU-fc(128,10); k=3 grey, 5 RGB."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        k = 3 if in_channels == 1 else 5
        # creation order conv1, conv2, fc1, fc2 = the reference's, so a seed gives its init
        self.conv1 = nn.Conv2d(in_channels, 32, k)
        self.conv2 = nn.Conv2d(32, 64, k)
        self.fc1 = nn.Linear(1600, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.gelu(self.conv1(x)), 2)
        x = F.max_pool2d(F.gelu(self.conv2(x)), 2)
        return self.fc2(F.gelu(self.fc1(x.flatten(1))))


class CNN3L(nn.Module):
    """3 conv layers (32, 64, 128; kernel 3) then fc(2048,256)-GELU-fc(256,10) ."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        grey = in_channels == 1
        self.conv1 = nn.Conv2d(in_channels, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=2 if grey else 0)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=2)
        self.fc1 = nn.Linear(2048, 256)
        self.fc2 = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.gelu(self.conv1(x)), 2)
        x = F.max_pool2d(F.gelu(self.conv2(x)), 2)
        x = F.max_pool2d(F.gelu(self.conv3(x)), 2)
        return self.fc2(F.gelu(self.fc1(x.flatten(1))))
