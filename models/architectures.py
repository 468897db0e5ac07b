"""The two small CNNs of the registry, written to mirror timm's model interface.

Both expose ``forward_features`` (feature map), ``forward_head(x, pre_logits=...)``, ``num_features``
and ``get_classifier()`` like timm models, so embeddings, Grad-CAM and weight loading use one code
path for all four architectures. They end in global pooling, so any input size >= 32 px works.
"""

from __future__ import annotations

import torch
from torch import nn

MIN_INPUT_SIZE = 32


def _conv_relu(in_chans: int, out_chans: int) -> list[nn.Module]:
    return [nn.Conv2d(in_chans, out_chans, kernel_size=3, padding=1), nn.ReLU(inplace=True)]


def _conv_bn_relu(in_chans: int, out_chans: int) -> list[nn.Module]:
    # The conv has no bias: the batch norm right after it would cancel it.
    return [
        nn.Conv2d(in_chans, out_chans, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_chans),
        nn.ReLU(inplace=True),
    ]


class _StagedCNN(nn.Module):
    """What both small CNNs share: ``features`` stages, global pooling, ``head_drop`` then ``fc``."""

    features: nn.Sequential
    global_pool: nn.AdaptiveAvgPool2d
    head_drop: nn.Module
    fc: nn.Linear

    def gradcam_target_layer(self) -> nn.Module:
        """The last conv stage, whose output Grad-CAM weighs."""
        return self.features[-1]

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) image -> (N, num_features, h, w) feature map."""
        out: torch.Tensor = self.features(x)
        return out

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> logits, or the pooled (N, num_features) embedding when ``pre_logits``."""
        x = torch.flatten(self.global_pool(x), 1)
        if pre_logits:
            return x
        out: torch.Tensor = self.fc(self.head_drop(x))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class BaselineCNN(_StagedCNN):
    """Plain conv net: four conv+ReLU stages (max-pool after the first three), average pool, linear.

    No batch norm and no dropout: the study's baseline. About 0.39 M parameters.
    """

    def __init__(
        self, *, num_classes: int, in_chans: int, widths: tuple[int, ...] = (32, 64, 128, 256)
    ) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        prev = in_chans
        for i, width in enumerate(widths):
            layers = _conv_relu(prev, width)
            # The last stage is not pooled: a finer map gives a sharper Grad-CAM (8x8 at 64 px).
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
            prev = width
        self.features = nn.Sequential(*stages)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = prev
        self.num_classes = num_classes
        self.head_drop = nn.Identity()  # the baseline has no dropout
        self.fc = nn.Linear(prev, num_classes)


class ImprovedCNN(_StagedCNN):
    """Conv+BatchNorm+ReLU stages with spatial dropout late and dropout before the classifier.

    The dropout layers are ``nn.Dropout``/``nn.Dropout2d`` modules (not functional calls), so
    MC-dropout can switch just them to train mode while batch norm stays in eval mode.
    About 0.84 M parameters.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int,
        stages: tuple[tuple[int, int], ...] = ((32, 1), (64, 2), (128, 2), (192, 2)),
        drop_rate: float = 0.3,
        spatial_drop_rate: float = 0.1,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        prev = in_chans
        for i, (width, n_convs) in enumerate(stages):
            layers: list[nn.Module] = []
            for _ in range(n_convs):
                layers += _conv_bn_relu(prev, width)
                prev = width
            # Spatial dropout only in the two deepest stages: early layers carry too little redundancy.
            if spatial_drop_rate > 0 and i >= len(stages) - 2:
                layers.append(nn.Dropout2d(spatial_drop_rate))
            if i < len(stages) - 1:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*blocks)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = prev
        self.num_classes = num_classes
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(prev, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


class DropoutLinear(nn.Linear):
    """A linear classifier with an ``nn.Dropout`` in front of it.

    Replaces the head of the timm models, whose own ``drop_rate`` is a functional dropout tied to
    ``model.training`` (MC passes would then also put batch norm in train mode). The dropout has no
    parameters, so the state-dict keys stay ``fc.weight``/``fc.bias``: timm checkpoints still load.
    """

    def __init__(self, in_features: int, out_features: int, *, drop_rate: float) -> None:
        super().__init__(in_features, out_features)
        self.drop = nn.Dropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.drop(x))
