"""dinolab.models.kd_nets: the 12-conv teacher, the small student, parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dinolab.models.kd_nets import StudentNet, TeacherNet, count_parameters


def teacher_params(width: int, in_ch: int, img: int, classes: int) -> int:
    """Hand count: 12 3x3 convs with bias, then Linear(width * (img/16)^2, classes)."""
    first = in_ch * width * 9 + width
    rest = 11 * (width * width * 9 + width)
    return first + rest + width * (img // 16) ** 2 * classes + classes


@pytest.mark.parametrize("nonlinear", [False, True])
@pytest.mark.parametrize("img, in_ch, classes", [(32, 3, 10), (16, 1, 10), (64, 3, 200)])
def test_teacher_shapes_and_size(nonlinear, img, in_ch, classes):
    net = TeacherNet(num_classes=classes, in_channels=in_ch, img_size=img, nonlinear=nonlinear)
    assert net(torch.randn(2, in_ch, img, img)).shape == (2, classes)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    pools = [i for i, m in enumerate(net.features) if isinstance(m, nn.MaxPool2d)]
    assert len(convs) == 12 and len(pools) == 4
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    bn = 2 * 12 * 12 if nonlinear else 0  # BatchNorm weight + bias per conv
    assert count_parameters(net) == teacher_params(12, in_ch, img, classes) + bn
    assert any(isinstance(m, nn.ReLU) for m in net.modules()) == nonlinear


def test_pools_follow_conv_3_6_9_12():
    net = TeacherNet()
    kinds = ["c" if isinstance(m, nn.Conv2d) else "p" for m in net.features]
    assert "".join(kinds) == "cccp" * 4


def test_draft_teacher_stages_are_affine_and_the_fixed_one_is_not():
    """Without activations, three stacked convs are one affine map: f(x+y) = f(x)+f(y)-f(0)."""
    x, y, zero = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.zeros(2, 3, 32, 32)
    linear_stage = TeacherNet(nonlinear=False).features[:3]
    relu_stage = TeacherNet(nonlinear=True).eval().features[:9]  # 3 x (conv, BN, ReLU)
    with torch.no_grad():
        for stage, affine in ((linear_stage, True), (relu_stage, False)):
            gap = stage(x + y) - (stage(x) + stage(y) - stage(zero))
            assert (gap.abs().max().item() < 1e-4) == affine  # float32 rounding: ~1e-6


def test_student_is_at_least_five_times_smaller():
    for classes, img in ((10, 32), (200, 64)):
        teacher = TeacherNet(num_classes=classes, img_size=img)
        student = StudentNet(num_classes=classes, img_size=img)
        assert count_parameters(teacher) >= 5 * count_parameters(student)
        assert student(torch.randn(3, 3, img, img)).shape == (3, classes)
    assert any(isinstance(m, nn.ReLU) for m in StudentNet().modules())


def test_count_parameters_trainable_only():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))  # 16 + 10
    net[0].weight.requires_grad_(False)
    assert count_parameters(net) == 26
    assert count_parameters(net, trainable_only=True) == 14


@pytest.mark.parametrize("img", [0, 8, 24, 33, -16])
def test_teacher_img_size_must_be_a_multiple_of_16(img):
    with pytest.raises(ValueError, match=f"positive multiple of 16 .*got {img}"):
        TeacherNet(img_size=img)


def test_wrong_input_sizes_are_refused():
    with pytest.raises(ValueError, match=r"expected images \[B, C, 32, 32\], got shape"):
        TeacherNet()(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="img_size must be an integer >= 2"):
        StudentNet(img_size=1)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        StudentNet(width=0)
