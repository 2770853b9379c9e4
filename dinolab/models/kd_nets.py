"""The small CNNs of the knowledge-distillation lesson: a 12-conv teacher and a tiny student.

``TeacherNet`` is the course draft's network: 12 3x3 convolutions of ``width`` channels with a
2x2 max-pool after every third one, then one Linear classifier. The draft has NO activation
between its convolutions. ``nonlinear=False`` keeps that design so the lesson can show its
cost, and ``nonlinear=True`` adds BatchNorm + ReLU after every convolution.

``StudentNet`` is a much smaller ReLU network (two conv stages, global average pooling) with
at least 5x fewer parameters than the default teacher.

Examples:
    >>> import torch
    >>> teacher, student = TeacherNet(nonlinear=True), StudentNet()
    >>> teacher(torch.randn(2, 3, 32, 32)).shape, student(torch.randn(2, 3, 32, 32)).shape
    (torch.Size([2, 10]), torch.Size([2, 10]))
    >>> count_parameters(teacher) // count_parameters(student) >= 5
    True
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["TeacherNet", "StudentNet", "count_parameters"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class TeacherNet(nn.Module):
    """12 conv layers (3x3, padding 1, ``width`` channels), max-pool after conv 3, 6, 9, 12.

    Args:
        num_classes: outputs of the final Linear layer.
        in_channels: input channels (3 for RGB, 1 for grey digits).
        img_size: input side in pixels; a positive multiple of 16 because of the four 2x2
            pools. The classifier sees ``width * (img_size/16)**2`` features.
        width: channels of every conv layer (12 in the draft).
        nonlinear: False reproduces the draft (no activations at all). Then the three
            convolutions between two pools compose into ONE affine map (the same as a single
            7x7 convolution), so the 12 conv layers are really 4 linear maps, and the only
            non-linearity in the whole network is max-pooling. True adds BatchNorm2d + ReLU
            after each convolution, which is what a 12-layer CNN is meant to be.

    Shapes: forward [B, in_channels, img_size, img_size] -> logits [B, num_classes].
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        img_size: int = 32,
        width: int = 12,
        nonlinear: bool = False,
    ) -> None:
        super().__init__()
        if int(img_size) != img_size or img_size < 16 or img_size % 16 != 0:
            raise ValueError(
                f"TeacherNet: img_size must be a positive multiple of 16 (four 2x2 max-pools), "
                f"got {img_size!r}"
            )
        for name, v in (("num_classes", num_classes), ("in_channels", in_channels),
                        ("width", width)):
            if int(v) != v or v < 1:
                raise ValueError(f"TeacherNet: {name} must be a positive integer, got {v!r}")
        self.img_size = img_size
        self.nonlinear = nonlinear
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(1, 13):
            layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=1))
            if nonlinear:
                layers += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            if i % 3 == 0:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.embed_dim = width * (img_size // 16) ** 2
        self.fc = nn.Linear(self.embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, img_size, img_size] -> logits [B, num_classes]."""
        if x.ndim != 4 or tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(
                f"TeacherNet: expected images [B, C, {self.img_size}, {self.img_size}], got "
                f"shape {tuple(x.shape)}"
            )
        return self.fc(torch.flatten(self.features(x), 1))


class StudentNet(nn.Module):
    """Small ReLU CNN: two conv stages, global average pooling, Linear classifier.

    ``conv(in, width) -> BN -> ReLU -> pool -> conv(width, 2*width) -> BN -> ReLU -> global
    avg-pool -> Linear(2*width, num_classes)``. With the defaults it has 1,610 parameters
    against the default TeacherNet's 15,214 (about 9x fewer).

    Args:
        num_classes: outputs of the classifier.
        in_channels: input channels.
        img_size: expected input side in pixels (>= 2); adaptive pooling makes the network
            itself work at any size, the value is only checked against the input.
        width: channels of the first conv (the second has ``2 * width``).

    Shapes: forward [B, in_channels, img_size, img_size] -> logits [B, num_classes].
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        img_size: int = 32,
        width: int = 8,
    ) -> None:
        super().__init__()
        for name, v in (("num_classes", num_classes), ("in_channels", in_channels),
                        ("width", width)):
            if int(v) != v or v < 1:
                raise ValueError(f"StudentNet: {name} must be a positive integer, got {v!r}")
        if int(img_size) != img_size or img_size < 2:
            raise ValueError(f"StudentNet: img_size must be an integer >= 2, got {img_size!r}")
        self.img_size = img_size
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.embed_dim = 2 * width
        self.fc = nn.Linear(self.embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, img_size, img_size] -> logits [B, num_classes]."""
        if x.ndim != 4 or tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(
                f"StudentNet: expected images [B, C, {self.img_size}, {self.img_size}], got "
                f"shape {tuple(x.shape)}"
            )
        return self.fc(torch.flatten(self.features(x), 1))
