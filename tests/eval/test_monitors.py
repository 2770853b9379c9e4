"""dinolab.eval.monitors: every monitor against its formula written out with loops."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from dinolab.ema import ema_update
from dinolab.eval import (
    collapse_metrics,
    cosine_spread,
    feature_std,
    kl_teacher_student,
    kl_to_uniform,
    parameter_divergence,
    teacher_entropy,
)
from dinolab.losses.dino import DINOLoss


def _softmax_rows(logits: list[list[float]], temp: float = 1.0) -> list[list[float]]:
    out = []
    for row in logits:
        m = max(row)
        e = [math.exp((v - m) / temp) for v in row]
        s = sum(e)
        out.append([v / s for v in e])
    return out


def _entropy_loop(probs: list[list[float]]) -> float:
    return sum(-sum(p * math.log(p) for p in row if p > 0) for row in probs) / len(probs)


def _kl_loop(q: list[list[float]], p: list[list[float]]) -> float:
    total = 0.0
    for q_row, p_row in zip(q, p, strict=True):
        total += sum(a * (math.log(a) - math.log(b)) for a, b in zip(q_row, p_row, strict=True)
                     if a > 0)
    return total / len(q)


def test_entropy_of_uniform_is_log_k_and_of_one_hot_is_zero():
    k = 7
    uniform = torch.full((3, k), 1.0 / k)
    assert teacher_entropy(uniform).item() == pytest.approx(math.log(k), abs=1e-6)
    assert kl_to_uniform(uniform).item() == pytest.approx(0.0, abs=1e-6)
    one_hot = torch.eye(k)[:3]
    assert teacher_entropy(one_hot).item() == 0.0  # 0 log 0 counts as 0, no NaN
    assert kl_to_uniform(one_hot).item() == pytest.approx(math.log(k), abs=1e-6)


def test_entropy_and_kl_match_loops_on_fixed_inputs():
    g = torch.Generator().manual_seed(0)
    t_logits = torch.randn(5, 6, generator=g) * 3
    s_logits = torch.randn(5, 6, generator=g)
    q = torch.softmax(t_logits, dim=1)
    log_p = torch.log_softmax(s_logits, dim=1)
    q_loop = _softmax_rows(t_logits.tolist())
    p_loop = _softmax_rows(s_logits.tolist())
    # float32 tensors vs float64 loops: agreement to ~1e-6 relative
    assert teacher_entropy(q).item() == pytest.approx(_entropy_loop(q_loop), rel=1e-5)
    assert kl_teacher_student(q, log_p).item() == pytest.approx(_kl_loop(q_loop, p_loop), rel=1e-5)
    assert kl_teacher_student(q, q.log()).item() == pytest.approx(0.0, abs=1e-6)


def test_monitors_reject_logits_and_bad_shapes():
    logits = torch.randn(4, 5)
    with pytest.raises(ValueError, match="not logits"):
        teacher_entropy(logits)
    with pytest.raises(ValueError, match=r"rows must sum to 1"):
        teacher_entropy(torch.full((2, 4), 0.3))
    with pytest.raises(ValueError, match=r"must be a non-empty 2-D \[B, K\]"):
        teacher_entropy(torch.ones(4))
    q = torch.softmax(logits, dim=1)
    with pytest.raises(ValueError, match=r"student_log_probs must have the teacher's shape"):
        kl_teacher_student(q, torch.log_softmax(torch.randn(4, 6), dim=1))
    with pytest.raises(ValueError, match="pass log_softmax outputs, not logits"):
        kl_teacher_student(q, torch.randn(4, 5))


def _dino_loss(k: int, ncrops: int) -> DINOLoss:
    return DINOLoss(out_dim=k, ncrops=ncrops, warmup_teacher_temp=0.04, teacher_temp=0.07,
                    warmup_teacher_temp_epochs=2, nepochs=5)


def test_collapse_metrics_match_loops_and_the_loss_value():
    k, ncrops, b, epoch = 6, 4, 3, 1
    loss_fn = _dino_loss(k, ncrops)
    g = torch.Generator().manual_seed(1)
    loss_fn.center.copy_(torch.randn(1, k, generator=g))  # a non-zero center must be used
    teacher = torch.randn(2 * b, k, generator=g)
    student = torch.randn(ncrops * b, k, generator=g)
    center_before = loss_fn.center.clone()

    metrics = collapse_metrics(teacher, student, loss_fn, epoch)
    torch.testing.assert_close(loss_fn.center, center_before, rtol=0, atol=0)  # read only

    temp = 0.07  # warm-up linspace(0.04, 0.07, 2 epochs): epoch 1 is its last point
    c = center_before[0].tolist()
    q = _softmax_rows([[v - c[j] for j, v in enumerate(row)] for row in teacher.tolist()], temp)
    p = _softmax_rows(student.tolist(), 0.1)
    kls = [
        _kl_loop(q[i * b:(i + 1) * b], p[v * b:(v + 1) * b])
        for i in range(2) for v in range(ncrops) if v != i
    ]
    assert len(kls) == 2 * ncrops - 2
    h = _entropy_loop(q)
    # float32 softmax at temperature 0.07 vs float64 loops
    assert metrics["teacher_entropy"] == pytest.approx(h, rel=1e-4, abs=1e-6)
    assert metrics["kl_teacher_student"] == pytest.approx(sum(kls) / len(kls), rel=1e-4)
    assert metrics["kl_to_uniform"] == pytest.approx(math.log(k) - h, rel=1e-4)
    assert metrics["teacher_temp"] == pytest.approx(temp)
    assert metrics["student_entropy"] == pytest.approx(_entropy_loop(p), rel=1e-4)
    assert metrics["teacher_max_prob"] == pytest.approx(sum(max(r) for r in q) / len(q), rel=1e-5)
    mean_q = [sum(r[j] for r in q) / len(q) for j in range(k)]
    assert metrics["teacher_batch_entropy"] == pytest.approx(_entropy_loop([mean_q]), rel=1e-4)
    # H(P_t, P_s) = h(P_t) + KL(P_t || P_s): the cross-entropy IS the DINO loss of this batch
    loss = loss_fn(student, teacher, epoch)
    assert metrics["cross_entropy"] == pytest.approx(loss.item(), rel=1e-5)


def test_collapse_metrics_see_sharpening_and_its_absence():
    k, b = 16, 4
    g = torch.Generator().manual_seed(2)
    teacher = torch.randn(2 * b, k, generator=g) * 3
    student = torch.randn(2 * b, k, generator=g)
    sharp = DINOLoss(k, 2, warmup_teacher_temp=0.01, teacher_temp=0.01,
                     warmup_teacher_temp_epochs=0, nepochs=1)
    flat = DINOLoss(k, 2, warmup_teacher_temp=1e3, teacher_temp=1e3,
                    warmup_teacher_temp_epochs=0, nepochs=1)
    assert collapse_metrics(teacher, student, sharp, 0)["teacher_entropy"] < 0.05
    flat_metrics = collapse_metrics(teacher, student, flat, 0)
    assert flat_metrics["teacher_entropy"] == pytest.approx(math.log(k), abs=1e-3)
    assert flat_metrics["kl_to_uniform"] == pytest.approx(0.0, abs=1e-3)
    # Uniform collapse: the batch mean is uniform too.
    assert flat_metrics["teacher_batch_entropy"] == pytest.approx(math.log(k), abs=1e-3)
    # One prototype for every image: sharp AND the batch mean is sharp.
    one = torch.zeros(2 * b, k)
    one[:, 3] = 10.0
    collapsed = collapse_metrics(one, student, sharp, 0)
    assert collapsed["teacher_entropy"] < 0.05 and collapsed["teacher_batch_entropy"] < 0.05
    # Healthy: sharp per image, each image on its own prototype: the batch mean is spread.
    spread = torch.eye(k)[: 2 * b] * 10.0
    healthy = collapse_metrics(spread, student, sharp, 0)
    assert healthy["teacher_entropy"] < 0.05
    assert healthy["teacher_batch_entropy"] == pytest.approx(math.log(2 * b), abs=0.05)


def test_collapse_metrics_bad_shapes():
    loss_fn = _dino_loss(5, 3)
    with pytest.raises(ValueError, match="student_output has 10 rows, not a positive multiple "
                                         "of dino_loss.ncrops=3"):
        collapse_metrics(torch.randn(4, 5), torch.randn(10, 5), loss_fn, 0)
    with pytest.raises(ValueError, match=r"teacher_output has 5 rows, expected 2 \* B = 4"):
        collapse_metrics(torch.randn(5, 5), torch.randn(6, 5), loss_fn, 0)
    with pytest.raises(ValueError, match="K=4 columns"):
        collapse_metrics(torch.randn(4, 4), torch.randn(6, 5), loss_fn, 0)


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_parameter_divergence_zero_for_copies_and_matches_formula():
    student = _net()
    assert parameter_divergence(student, copy.deepcopy(student)) == 0.0
    teacher = _net()  # other random weights
    s = torch.cat([p.detach().flatten() for p in student.parameters()]).double()
    t = torch.cat([p.detach().flatten() for p in teacher.parameters()]).double()
    want = float((s - t).norm() / s.norm())
    assert parameter_divergence(student, teacher) == pytest.approx(want, rel=1e-12)


def test_parameter_divergence_shrinks_by_the_momentum_under_ema():
    # theta_t' - theta_s = m (theta_t - theta_s), so one EMA step scales the distance by m
    student, teacher = _net(), _net()
    before = parameter_divergence(student, teacher)
    ema_update(teacher, student, momentum=0.9)
    assert parameter_divergence(student, teacher) == pytest.approx(0.9 * before, rel=1e-5)


def test_parameter_divergence_rejects_other_architectures():
    with pytest.raises(ValueError, match="parameter names differ"):
        parameter_divergence(_net(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(4, 3\) in the student"):
        parameter_divergence(_net(), nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4),
                                                   nn.Linear(4, 2)))


def test_cosine_spread_against_loops_and_extremes():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 4, generator=g)
    rows = x.tolist()
    sims = []
    for i, a in enumerate(rows):
        for j, b in enumerate(rows):
            if i != j:
                dot = sum(u * v for u, v in zip(a, b, strict=True))
                sims.append(dot / math.sqrt(sum(u * u for u in a) * sum(v * v for v in b)))
    mean = sum(sims) / len(sims)
    std = math.sqrt(sum((s - mean) ** 2 for s in sims) / len(sims))
    spread = cosine_spread(x)
    assert spread.mean == pytest.approx(mean, rel=1e-9)
    assert spread.std == pytest.approx(std, rel=1e-9)

    collapsed = cosine_spread(torch.ones(6, 3) * torch.arange(1, 7.0)[:, None])
    assert collapsed.mean == pytest.approx(1.0) and collapsed.std == pytest.approx(0.0, abs=1e-7)
    orthogonal = cosine_spread(torch.eye(4))
    assert orthogonal.mean == 0.0 and orthogonal.std == 0.0


def test_feature_std_against_loops_and_collapse():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 3, generator=g)
    rows = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in x.tolist()]
    stds = []
    for d in range(3):
        col = [r[d] for r in rows]
        m = sum(col) / len(col)
        stds.append(math.sqrt(sum((c - m) ** 2 for c in col) / (len(col) - 1)))
    assert feature_std(x) == pytest.approx(sum(stds) / 3, rel=1e-9)
    assert feature_std(torch.ones(8, 5) * 3) == pytest.approx(0.0, abs=1e-12)
    wide = torch.randn(512, 256, generator=g)
    # spread-out features: about 1/sqrt(D) (SimSiam's reference value)
    assert feature_std(wide) == pytest.approx(1 / math.sqrt(256), rel=0.05)


def test_feature_checks_bad_input():
    with pytest.raises(ValueError, match="at least 2 rows"):
        feature_std(torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"2-D \[B, D\]"):
        cosine_spread(torch.randn(4))
    with pytest.raises(ValueError, match="NaN or infinite"):
        cosine_spread(torch.tensor([[1.0, float("nan")], [1.0, 0.0]]))
