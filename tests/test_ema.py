"""dinolab.ema: the teacher update, checked against the formula on known tensors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from dinolab.ema import EMAUpdater, ema_update


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_ema_update_equals_formula_for_every_parameter():
    student, teacher = _net(), _net()  # different random weights
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    m = 0.9
    ema_update(teacher, student, m)
    s = student.state_dict()
    for name, p in teacher.named_parameters():
        want = m * before[name] + (1 - m) * s[name]
        # lerp vs the formula: float32 rounding only (a few ulps).
        torch.testing.assert_close(p, want, rtol=1e-6, atol=1e-7)


def test_ema_update_builds_no_graph_and_keeps_requires_grad():
    student, teacher = _net(), _net()
    for p in teacher.parameters():
        p.requires_grad_(False)
    loss = student(torch.randn(5, 4)).sum()
    ema_update(teacher, student, 0.5)
    assert all(p.grad_fn is None for p in teacher.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    loss.backward()  # the student's graph is untouched by the update


def test_momentum_extremes():
    student, teacher = _net(), _net()
    t0 = copy.deepcopy(teacher.state_dict())
    ema_update(teacher, student, 1.0)
    for k, v in teacher.named_parameters():
        assert torch.equal(v, t0[k])
    ema_update(teacher, student, 0.0)
    for (k, v), (_, s) in zip(teacher.named_parameters(), student.named_parameters(), strict=True):
        assert torch.equal(v, s), k


def test_buffers_keep_copy_ema():
    student, teacher = _net(), _net()
    student.train()
    student(torch.randn(16, 4))  # moves the student's BatchNorm running statistics
    bn_t, bn_s = teacher[1], student[1]
    start = bn_t.running_mean.clone()
    ema_update(teacher, student, 0.5)  # official DINO: buffers are not averaged
    assert torch.equal(bn_t.running_mean, start)
    ema_update(teacher, student, 0.5, buffers="ema")
    torch.testing.assert_close(bn_t.running_mean, 0.5 * start + 0.5 * bn_s.running_mean)
    ema_update(teacher, student, 0.5, buffers="copy")
    assert torch.equal(bn_t.running_mean, bn_s.running_mean)
    assert bn_t.num_batches_tracked == bn_s.num_batches_tracked


def test_mismatched_architectures_are_refused_with_names():
    with pytest.raises(ValueError, match="shape"):
        ema_update(nn.Linear(4, 3), nn.Linear(4, 2), 0.9)
    with pytest.raises(ValueError, match="only in the student"):
        ema_update(nn.Linear(4, 3, bias=False), nn.Linear(4, 3), 0.9)
    with pytest.raises(ValueError, match="momentum"):
        ema_update(nn.Linear(2, 2), nn.Linear(2, 2), 1.5)


def test_ddp_like_wrapper_is_unwrapped():
    student = _net()
    teacher = copy.deepcopy(student)
    ddp = nn.DataParallel(student)  # same .module convention as DDP, available on CPU
    ema_update(teacher, ddp, 0.5)  # names would differ by "module." if not unwrapped


def test_ema_updater_follows_the_cosine_and_counts_steps():
    total = 8
    ema = EMAUpdater(total_steps=total, base_momentum=0.99)
    student, teacher = _net(), _net()
    used = [ema.step(teacher, student) for _ in range(total + 2)]
    want = [1 - (1 - 0.99) * (math.cos(math.pi * i / total) + 1) / 2 for i in range(total)]
    assert used[:total] == pytest.approx(want, abs=1e-12)
    assert used[total:] == [1.0, 1.0]  # past the end: the final momentum
    assert ema.step_count == total + 2
    restored = EMAUpdater(total_steps=total, base_momentum=0.99)
    restored.load_state_dict(ema.state_dict())
    assert restored.step_count == ema.step_count
    with pytest.raises(ValueError, match="base_momentum"):
        EMAUpdater(total_steps=total).load_state_dict(ema.state_dict())
