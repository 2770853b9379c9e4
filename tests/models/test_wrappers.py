"""dinolab.models.wrappers: multi-crop batching and the student-teacher pair."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from dinolab.ema import EMAUpdater
from dinolab.models import DINOHead, MultiCropWrapper, StudentTeacherWrapper, VisionTransformer


def tiny_student(drop_path_rate: float = 0.0) -> MultiCropWrapper:
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2,
                            drop_path_rate=drop_path_rate)
    return MultiCropWrapper(vit, DINOHead(16, 12, hidden_dim=16, bottleneck_dim=8))


class CountingBackbone(nn.Module):
    """Pools and projects an image; counts its calls and the batch sizes it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 5)
        self.fc = nn.Linear(5, 1000)  # a classifier the wrapper must remove
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return self.fc(self.proj(x.mean(dim=(2, 3))))


class CountingHead(nn.Linear):
    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CountingHead.calls += 1
        return super().forward(x)


def crops(sizes: list[int], batch: int = 3) -> list[torch.Tensor]:
    return [torch.randn(batch, 3, s, s) for s in sizes]


def test_multicrop_output_equals_per_crop_forward():
    model = tiny_student().eval()
    views = crops([16, 16, 8, 8, 8])
    with torch.no_grad():
        out = model(views)
        want = torch.cat([model.head(model.backbone(v)) for v in views])
    assert out.shape == (5 * 3, 12)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)  # batched vs per-crop matmuls


@pytest.mark.parametrize(
    "sizes, groups",
    [([16, 16, 8, 8, 8], [6, 9]), ([16, 8, 16], [3, 3, 3]), ([8], [3]), ([16, 16], [6])],
)
def test_one_backbone_pass_per_run_of_equal_sizes(sizes, groups):
    backbone, head = CountingBackbone(), CountingHead(5, 7)
    model = MultiCropWrapper(backbone, head)
    CountingHead.calls = 0
    out = model(crops(sizes))
    assert backbone.batch_sizes == groups
    assert CountingHead.calls == 1
    assert out.shape == (3 * len(sizes), 7)


def test_single_tensor_features_and_classifier_removal():
    backbone = CountingBackbone()
    model = MultiCropWrapper(backbone, nn.Linear(5, 4))
    assert isinstance(model.backbone.fc, nn.Identity)
    x = torch.randn(2, 3, 8, 8)
    logits, feats = model(x, return_features=True)
    assert logits.shape == (2, 4) and feats.shape == (2, 5)
    torch.testing.assert_close(feats, backbone.proj(x.mean(dim=(2, 3))), rtol=0, atol=0)
    torch.testing.assert_close(logits, model.head(feats), rtol=0, atol=0)
    with pytest.raises(ValueError, match="empty list of crops"):
        model([])


def test_ema_teacher_is_a_frozen_copy_that_gets_no_gradients():
    pair = StudentTeacherWrapper(tiny_student())
    assert pair.is_ema and pair.teacher is not pair.student
    s_state, t_state = pair.student.state_dict(), pair.teacher.state_dict()
    assert all(torch.equal(s_state[k], t_state[k]) for k in s_state)
    assert not any(p.requires_grad for p in pair.teacher.parameters())
    views = crops([16, 16, 8])
    t_out, t_feats = pair.forward_teacher(views[:2], return_features=True)
    assert not t_out.requires_grad and t_out.grad_fn is None
    assert t_feats.shape == (6, 16) and not t_feats.requires_grad
    loss = pair.forward_student(views).sum() + t_out.sum()
    loss.backward()
    assert all(p.grad is None for p in pair.teacher.parameters())
    assert any(p.grad is not None for p in pair.student.parameters())
    trainable = list(pair.student_parameters())
    frozen_gain = pair.student.head.last_layer.weight_g  # norm_last_layer=True
    assert all(p is not frozen_gain for p in trainable)
    assert len(trainable) == sum(p.requires_grad for p in pair.student.parameters())


def test_teacher_copy_has_no_stochastic_depth():
    pair = StudentTeacherWrapper(tiny_student(drop_path_rate=0.5)).train()
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(pair.forward_teacher(x), pair.forward_teacher(x), rtol=0, atol=0)
    assert not torch.allclose(pair.forward_student(x), pair.forward_student(x))


def test_update_teacher_equals_the_ema_formula():
    pair = StudentTeacherWrapper(tiny_student(), momentum_schedule=0.9)
    with torch.no_grad():  # make student and teacher differ, as after an optimiser step
        for p in pair.student.parameters():
            p.add_(torch.randn_like(p))
    before = copy.deepcopy(pair.teacher.state_dict())
    student = pair.student.state_dict()
    assert pair.update_teacher() == 0.9
    for name, p in pair.teacher.named_parameters():
        want = 0.9 * before[name] + 0.1 * student[name]
        torch.testing.assert_close(p, want, rtol=0, atol=1e-6)  # float32 rounding
    assert int(pair.num_updates) == 1


def test_default_momentum_is_0996():
    pair = StudentTeacherWrapper(nn.Linear(2, 2))
    assert pair.momentum == 0.996 and pair.update_teacher() == 0.996


def test_sequence_schedule_is_indexed_by_the_counter_and_holds_its_last_value():
    for schedule in ([0.5, 0.7, 0.8], np.array([0.5, 0.7, 0.8])):
        pair = StudentTeacherWrapper(nn.Linear(2, 2), momentum_schedule=schedule)
        used = [pair.update_teacher() for _ in range(5)]
        assert used == [0.5, 0.7, 0.8, 0.8, 0.8]


def test_emaupdater_schedule_follows_the_cosine_formula():
    total = 4
    pair = StudentTeacherWrapper(nn.Linear(2, 2), momentum_schedule=EMAUpdater(total))
    used = [pair.update_teacher() for _ in range(total + 2)]
    want = [1 - (1 - 0.996) * (1 + math.cos(math.pi * it / total)) / 2 for it in range(total)]
    want += [1.0, 1.0]  # past the end: the final momentum
    np.testing.assert_allclose(used, want, rtol=0, atol=1e-12)


def test_counter_is_saved_and_restored_with_the_state_dict():
    schedule = [0.1, 0.2, 0.3, 0.4]
    pair = StudentTeacherWrapper(nn.Linear(2, 2), momentum_schedule=schedule)
    pair.update_teacher()
    pair.update_teacher()
    state = pair.state_dict()
    assert int(state["num_updates"]) == 2
    resumed = StudentTeacherWrapper(nn.Linear(2, 2), momentum_schedule=schedule)
    resumed.load_state_dict(state)
    assert resumed.update_teacher() == 0.3


def test_fixed_teacher_of_another_architecture_stays_frozen():
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 6))
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                            nn.Linear(4 * 2 * 2, 6))
    pair = StudentTeacherWrapper(student, teacher)
    assert not pair.is_ema and pair.momentum is None
    assert not any(p.requires_grad for p in teacher.parameters())
    pair.train()
    assert not teacher.training and student.training
    before = copy.deepcopy(teacher.state_dict())
    x = torch.randn(5, 3, 4, 4)
    t_out = pair.forward_teacher(x)  # eval mode: BatchNorm statistics untouched
    assert pair.update_teacher() is None
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert t_out.shape == pair.forward_student(x).shape == (5, 6)


def test_invalid_schedules_are_refused():
    with pytest.raises(ValueError, match="momentum must be in \\[0, 1\\], got 1.5"):
        StudentTeacherWrapper(nn.Linear(2, 2), momentum_schedule=1.5)
    with pytest.raises(ValueError, match="non-empty 1-D sequence"):
        StudentTeacherWrapper(nn.Linear(2, 2), momentum_schedule=[])
    with pytest.raises(ValueError, match="values must lie in \\[0, 1\\]"):
        StudentTeacherWrapper(nn.Linear(2, 2), momentum_schedule=[0.9, 1.2])
    with pytest.raises(ValueError, match="a given teacher is frozen"):
        StudentTeacherWrapper(nn.Linear(2, 2), nn.Linear(2, 2), momentum_schedule=0.99)
