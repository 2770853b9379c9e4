"""ResNet backbones (torchvision architectures, never pretrained) that return pooled features.

``ResNetBackbone`` IS a torchvision ``ResNet`` with its classifier replaced by ``nn.Identity``,
so its state-dict keys (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...) are torchvision's
and official DINO ResNet-50 checkpoints load into it. Global average pooling makes it accept
any input size. Weights are always randomly initialised: nothing is downloaded.

For tiny images (32 px CIFAR-style) the ImageNet stem (7x7 stride-2 conv + max-pool) divides
the resolution by 4 before the first block; ``small_input=True`` uses a 3x3 stride-1 conv and
no max-pool instead, the usual CIFAR ResNet stem.

Examples:
    >>> import torch
    >>> net = ResNetBackbone("resnet18", small_input=True)
    >>> net(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 512])
    >>> net.embed_dim
    512
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["ResNetBackbone", "RESNET_ARCHS"]

# Block type and blocks per stage, as torchvision's resnetXX builders define them.
RESNET_ARCHS: dict[str, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
}


class ResNetBackbone(ResNet):
    """torchvision ResNet without classifier: images [B, C, H, W] -> features [B, embed_dim].

    Args:
        arch: one of ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``, ``resnet152``.
        small_input: replace the stem by a 3x3 stride-1 conv and drop the max-pool (for 32 px
            images; the state dict then no longer matches ImageNet checkpoints' ``conv1``).
        in_chans: input channels (3 for RGB).
        zero_init_residual: start each residual branch's last BatchNorm at zero (torchvision
            option; off by default as in torchvision).

    Attributes:
        embed_dim: feature width (512 for resnet18/34, 2048 for resnet50 and deeper).
        arch: the architecture name.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        small_input: bool = False,
        in_chans: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        if arch not in RESNET_ARCHS:
            raise ValueError(
                f"ResNetBackbone: unknown arch {arch!r}; expected one of {sorted(RESNET_ARCHS)}"
            )
        block, layers = RESNET_ARCHS[arch]
        super().__init__(block, layers, zero_init_residual=zero_init_residual)
        self.arch = arch
        self.small_input = small_input
        self.embed_dim = self.num_features = 512 * block.expansion
        if small_input or in_chans != 3:
            k, s, p = (3, 1, 1) if small_input else (7, 2, 3)
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=k, stride=s, padding=p, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        if small_input:
            self.maxpool = nn.Identity()
        self.fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] (any H, W) -> globally average-pooled features [B, embed_dim]."""
        if x.ndim != 4:
            raise ValueError(
                f"ResNetBackbone: expected images [B, C, H, W], got shape {tuple(x.shape)}"
            )
        return super().forward(x)
