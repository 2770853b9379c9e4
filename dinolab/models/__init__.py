"""Networks: ViT and ResNet backbones, DINOv3's ViT, the DINO head, multi-crop and
student-teacher wrappers, the knowledge-distillation CNNs, and loading of official DINO / DINOv2 /
DINOv3 checkpoints and of dinolab's own (:func:`load_backbone`: the trained backbone of any of
them, built as the file says).

Examples:
    >>> import torch
    >>> from dinolab.models import DINOHead, MultiCropWrapper, build_backbone
    >>> backbone = build_backbone("vit_course")              # patch 8, 32 px, D = 128
    >>> student = MultiCropWrapper(backbone, DINOHead(backbone.embed_dim, 512, hidden_dim=256,
    ...                                               bottleneck_dim=64))
    >>> student([torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16)]).shape
    torch.Size([4, 512])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

from dinolab.models.checkpoints import (
    LoadedBackbone,
    backbone_from_checkpoint,
    infer_dino_head_options,
    infer_vit_options,
    is_dinolab_checkpoint,
    load_backbone,
    load_pretrained,
    read_checkpoint,
)
from dinolab.models.dinov3 import (
    DINOV3_SIZES,
    DINOv3ViT,
    dinov3_vitb16,
    dinov3_vith16plus,
    dinov3_vitl16,
    dinov3_vitl16plus,
    dinov3_vits16,
    dinov3_vits16plus,
)
from dinolab.models.heads import DINOHead, WeightNormLinear
from dinolab.models.kd_nets import StudentNet, TeacherNet, count_parameters
from dinolab.models.resnet import RESNET_ARCHS, ResNetBackbone
from dinolab.models.vit import (
    DropPath,
    VisionTransformer,
    ViTBackbone,
    interpolate_pos_embed,
    vit_base,
    vit_course,
    vit_large,
    vit_micro,
    vit_small,
    vit_tiny,
)
from dinolab.models.wrappers import MultiCropWrapper, StudentTeacherWrapper

__all__ = [
    "BACKBONES",
    "DINOV3_SIZES",
    "DINOHead",
    "DINOv3ViT",
    "DropPath",
    "MultiCropWrapper",
    "ResNetBackbone",
    "StudentNet",
    "StudentTeacherWrapper",
    "TeacherNet",
    "ViTBackbone",
    "VisionTransformer",
    "WeightNormLinear",
    "build_backbone",
    "count_parameters",
    "dinov3_vitb16",
    "dinov3_vith16plus",
    "dinov3_vitl16",
    "dinov3_vitl16plus",
    "dinov3_vits16",
    "dinov3_vits16plus",
    "interpolate_pos_embed",
    "LoadedBackbone",
    "backbone_from_checkpoint",
    "is_dinolab_checkpoint",
    "load_backbone",
    "load_pretrained",
    "infer_vit_options",
    "infer_dino_head_options",
    "read_checkpoint",
    "vit_base",
    "vit_course",
    "vit_micro",
    "vit_large",
    "vit_small",
    "vit_tiny",
]

_VITS: dict[str, Callable[..., VisionTransformer]] = {
    "vit_tiny": vit_tiny,
    "vit_small": vit_small,
    "vit_base": vit_base,
    "vit_large": vit_large,
    "vit_course": vit_course,
    "vit_micro": vit_micro,
}

#: Names accepted by :func:`build_backbone` (and the CLI's ``--arch``).
BACKBONES: tuple[str, ...] = (*_VITS, *RESNET_ARCHS)


def build_backbone(
    arch: str,
    patch_size: int | None = None,
    img_size: int | None = None,
    **kw: Any,
) -> nn.Module:
    """Build a backbone by name; it has an ``embed_dim`` and maps [B, 3, H, W] -> [B, D].

    Args:
        arch: one of :data:`BACKBONES` (``vit_tiny``, ``vit_small``, ``vit_base``,
            ``vit_large``, ``vit_course``, ``resnet18`` ... ``resnet152``).
        patch_size: ViT patch side in pixels; None keeps the architecture's default (16 for
            the ``vit_*`` sizes, 8 for ``vit_course``). Ignored by ResNets.
        img_size: ViT position-embedding resolution in pixels; None keeps the default
            (224, or 32 for ``vit_course``). Ignored by ResNets, which take any size.
        **kw: passed to the constructor (``drop_path_rate``, ``init_values``,
            ``num_register_tokens`` for ViTs; ``small_input`` for ResNets).

    Raises:
        ValueError: unknown ``arch``.
    """
    if arch in _VITS:
        sizes = {k: v for k, v in (("patch_size", patch_size), ("img_size", img_size))
                 if v is not None}
        return _VITS[arch](**sizes, **kw)
    if arch in RESNET_ARCHS:
        return ResNetBackbone(arch, **kw)
    raise ValueError(f"build_backbone: unknown arch {arch!r}; expected one of {list(BACKBONES)}")
