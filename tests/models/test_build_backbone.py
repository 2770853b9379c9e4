"""dinolab.models (package level): the build_backbone factory and the exported names."""

from __future__ import annotations

import pytest
import torch

import dinolab.models as models
from dinolab.models import BACKBONES, ResNetBackbone, VisionTransformer, build_backbone


def test_every_public_name_is_exported():
    for name in models.__all__:
        assert hasattr(models, name), name
    for name in ("DINOHead", "MultiCropWrapper", "StudentTeacherWrapper", "load_pretrained",
                 "vit_tiny", "vit_small", "vit_base", "vit_large", "ResNetBackbone",
                 "TeacherNet", "StudentNet", "ViTBackbone"):
        assert name in models.__all__


@pytest.mark.parametrize("arch", BACKBONES)
def test_build_every_architecture(arch):
    with torch.device("meta"):  # shapes only
        net = build_backbone(arch)
    assert net.embed_dim > 0
    if arch.startswith("vit"):
        assert isinstance(net, VisionTransformer)
    else:
        assert isinstance(net, ResNetBackbone) and net.arch == arch


def test_sizes_default_per_architecture_and_can_be_overridden():
    course = build_backbone("vit_course")
    assert (course.patch_size, course.img_size, course.embed_dim) == (8, 32, 128)
    with torch.device("meta"):
        small = build_backbone("vit_small")
        custom = build_backbone("vit_small", patch_size=8, img_size=96, drop_path_rate=0.1)
    assert (small.patch_size, small.img_size) == (16, 224)
    assert (custom.patch_size, custom.img_size) == (8, 96)
    assert custom.blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    with torch.device("meta"):
        resnet = build_backbone("resnet18", patch_size=16, small_input=True)  # patch ignored
    assert resnet.small_input and resnet.conv1.kernel_size == (3, 3)


def test_unknown_arch_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown arch 'vit_huge'.*vit_small.*resnet50"):
        build_backbone("vit_huge")


def test_vit_micro_is_the_course_teachers_size():
    import torch

    from dinolab.models import build_backbone

    vit = build_backbone("vit_micro")
    assert (vit.embed_dim, len(vit.blocks), vit.patch_embed.patch_size) == (96, 4, 4)
    assert vit.blocks[0].mlp.fc1.out_features == 192  # MLP ratio 2
    x = torch.randn(2, 3, 32, 32)
    assert vit(x).shape == (2, 96)
    assert vit.get_last_selfattention(x).shape == (2, 3, 65, 65)  # 1 + 8x8 tokens
    assert vit(torch.randn(2, 3, 16, 16)).shape == (2, 96)  # a local crop
