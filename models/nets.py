"""The torch networks: the small edge MLP, the more accurate cloud CNN, and MobileNetV2.

The edge and cloud models are the two tiers of the digits classifier; both take the
same ``[N, 64]`` float input and return ``[N, 10]`` logits so they are interchangeable
behind one tensor contract. MobileNetV2 exists only as a realistic-size latency workload
(random weights), written out here because torchvision is not a dependency.
"""

from __future__ import annotations

import torch
from torch import nn

from models.data import NUM_CLASSES, NUM_FEATURES

EDGE_PARAMETER_LIMIT = 50_000


class EdgeMLP(nn.Module):
    """64 -> 128 -> 64 -> 10 with ReLU: about 17k parameters, cheap on any CPU."""

    def __init__(self, hidden: tuple[int, int] = (128, 64)) -> None:
        super().__init__()
        first, second = hidden
        self.fc1 = nn.Linear(NUM_FEATURES, first)
        self.fc2 = nn.Linear(first, second)
        self.fc3 = nn.Linear(second, NUM_CLASSES)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        logits: torch.Tensor = self.fc3(x)
        return logits


class CloudCNN(nn.Module):
    """A small CNN over the 8x8 image; about 150k parameters.

    The input stays ``[N, 64]`` so the cloud tier accepts exactly what the edge tier
    forwards; the reshape to ``[N, 1, 8, 8]`` happens inside the graph.
    """

    def __init__(self, dropout: float = 0.25) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(128, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x.reshape(-1, 1, 8, 8)
        logits: torch.Tensor = self.classifier(self.features(image))
        return logits


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round channel counts the way the MobileNetV2 paper's reference code does."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class _ConvBNReLU6(nn.Sequential):
    def __init__(
        self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> linear project (1x1), residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_ConvBNReLU6(in_ch, hidden, kernel=1))
        layers += [
            _ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.block(x)
        return x + out if self.use_residual else out


# (expansion t, output channels c, repeats n, first stride s) from the MobileNetV2 paper.
_MOBILENET_V2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
    """MobileNetV2, width 1.0, 224x224x3 input, 1000 classes (about 3.5M parameters)."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0) -> None:
        super().__init__()
        in_ch = _make_divisible(32 * width)
        last_ch = _make_divisible(1280 * max(1.0, width))
        layers: list[nn.Module] = [_ConvBNReLU6(3, in_ch, stride=2)]
        for t, c, n, s in _MOBILENET_V2_SETTINGS:
            out_ch = _make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        layers.append(_ConvBNReLU6(in_ch, last_ch, kernel=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_ch, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        # The reference initialisation keeps activations in a sane range through the
        # 17 blocks, which matters for int8 calibration even with random weights.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        out: torch.Tensor = self.classifier(torch.flatten(x, 1))
        return out


def build_mobilenet_v2(seed: int = 0) -> MobileNetV2:
    """A random-weight MobileNetV2 in eval mode, reproducible from ``seed``."""
    torch.manual_seed(seed)
    return MobileNetV2().eval()
