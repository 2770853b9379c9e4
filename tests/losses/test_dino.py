"""DINOLoss and sinkhorn_knopp against the official formulas written out as plain loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from dinolab.losses import DINOLoss, sinkhorn_knopp
from dinolab.losses.dino import _all_reduce_max, _all_reduce_sum, _world_size

K = 12
B = 3


def official_dino_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    center: torch.Tensor,
    ncrops: int,
    teacher_temp: float,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """Official DINO's double loop over (teacher global crop, student crop) pairs."""
    student_chunks = (student / student_temp).chunk(ncrops)
    teacher_chunks = F.softmax((teacher - center) / teacher_temp, dim=-1).detach().chunk(2)
    total, n_terms = 0.0, 0
    for iq, q in enumerate(teacher_chunks):
        for v, s in enumerate(student_chunks):
            if v == iq:
                continue
            total = total + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
            n_terms += 1
    assert n_terms == 2 * ncrops - 2
    return total / n_terms


def make_loss(ncrops: int = 4, **kw) -> DINOLoss:
    args = dict(
        out_dim=K,
        ncrops=ncrops,
        warmup_teacher_temp=0.04,
        teacher_temp=0.07,
        warmup_teacher_temp_epochs=5,
        nepochs=10,
    )
    args.update(kw)
    return DINOLoss(**args)


def inputs(ncrops: int, dtype=torch.float64, batch: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(ncrops)
    student = torch.randn(ncrops * batch, K, generator=g, dtype=dtype)
    teacher = torch.randn(2 * batch, K, generator=g, dtype=dtype)
    return student, teacher


@pytest.mark.parametrize("ncrops", [2, 3, 4, 6])
def test_matches_official_double_loop_float64(ncrops: int) -> None:
    loss_fn = make_loss(ncrops)
    loss_fn.center.copy_(torch.randn(1, K) * 0.3)  # a non-zero center must be subtracted
    center = loss_fn.center.clone().double()
    student, teacher = inputs(ncrops)
    got = loss_fn(student, teacher, epoch=7)
    want = official_dino_loss(student, teacher, center, ncrops, teacher_temp=0.07)
    # float64 throughout: only summation-order round-off separates the two.
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_matches_official_double_loop_float32() -> None:
    loss_fn = make_loss(6)
    student, teacher = inputs(6, dtype=torch.float32, batch=5)
    got = loss_fn(student, teacher, epoch=0)
    want = official_dino_loss(student, teacher, torch.zeros(1, K), 6, teacher_temp=0.04)
    # float32: the two summation orders agree to ~1e-6 relative.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_gradients_match_official_and_skip_teacher() -> None:
    ncrops = 4
    loss_fn = make_loss(ncrops)
    student, teacher = inputs(ncrops)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    loss_fn(student, teacher, epoch=2).backward()
    assert teacher.grad is None, "the teacher output must receive no gradient"
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0

    ref_student = student.detach().clone().requires_grad_(True)
    temp = 0.04 + (0.07 - 0.04) * 2 / 4
    official_dino_loss(ref_student, teacher.detach(), torch.zeros(1, K), ncrops, temp).backward()
    # float64 gradients of the same function: round-off only.
    torch.testing.assert_close(student.grad, ref_student.grad, rtol=1e-10, atol=1e-12)


def test_center_after_one_and_two_calls() -> None:
    ncrops = 3
    loss_fn = make_loss(ncrops, center_momentum=0.9)
    s1, t1 = inputs(ncrops)
    s2, t2 = inputs(ncrops + 10, batch=B)  # another seed
    s2 = s2[: ncrops * B]

    loss1 = loss_fn(s1, t1, epoch=9)
    c1 = 0.1 * t1.mean(dim=0, keepdim=True)  # c0 = 0
    torch.testing.assert_close(loss_fn.center.double(), c1, rtol=1e-6, atol=1e-7)
    # The first loss used c0 = 0: the update comes AFTER the loss.
    want1 = official_dino_loss(s1, t1, torch.zeros(1, K), ncrops, 0.07)
    torch.testing.assert_close(loss1, want1, rtol=1e-12, atol=1e-12)
    stored_c1 = loss_fn.center.clone().double()

    loss2 = loss_fn(s2, t2, epoch=9)
    c2 = 0.9 * c1 + 0.1 * t2.mean(dim=0, keepdim=True)
    # center is a float32 buffer: float32 round-off.
    torch.testing.assert_close(loss_fn.center.double(), c2, rtol=1e-6, atol=1e-7)
    # The second loss used c1, the center before the second update.
    want2 = official_dino_loss(s2, t2, stored_c1, ncrops, 0.07)
    torch.testing.assert_close(loss2, want2, rtol=1e-12, atol=1e-12)


def test_teacher_temperature_per_epoch() -> None:
    loss_fn = make_loss(2, warmup_teacher_temp=0.04, teacher_temp=0.07,
                        warmup_teacher_temp_epochs=5, nepochs=10)
    for epoch in range(10):
        # linspace(0.04, 0.07, 5) then constant 0.07
        expected = 0.04 + 0.03 * epoch / 4 if epoch < 5 else 0.07
        assert math.isclose(loss_fn.teacher_temp_at(epoch), expected, rel_tol=1e-12)
    schedule = loss_fn.teacher_temp_schedule
    np.testing.assert_allclose(schedule[[0, 4, 5, 9]], [0.04, 0.07, 0.07, 0.07], rtol=1e-12)

    student, teacher = inputs(2)
    for epoch in (0, 2, 6):
        loss_fn.center.zero_()
        got = loss_fn(student, teacher, epoch=epoch)
        assert loss_fn.last_teacher_temp == pytest.approx(loss_fn.teacher_temp_at(epoch))
        want = official_dino_loss(student, teacher, torch.zeros(1, K), 2,
                                  loss_fn.teacher_temp_at(epoch))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # The temperature matters: epoch 0 (0.04) and epoch 6 (0.07) give different losses.
    loss_fn.center.zero_()
    a = loss_fn(student, teacher, epoch=0)
    loss_fn.center.zero_()
    b = loss_fn(student, teacher, epoch=6)
    assert not torch.isclose(a, b)


def test_teacher_temp_override() -> None:
    loss_fn = make_loss(4)
    student, teacher = inputs(4)
    got = loss_fn(student, teacher, epoch=0, teacher_temp=0.055)
    want = official_dino_loss(student, teacher, torch.zeros(1, K), 4, 0.055)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_helper_methods_are_the_pieces_of_the_loss() -> None:
    loss_fn = make_loss(4)
    loss_fn.center.copy_(torch.randn(1, K))
    student, teacher = inputs(4)
    q = loss_fn.teacher_probs(teacher, epoch=1)
    want_q = F.softmax((teacher - loss_fn.center.double()) / (0.04 + 0.03 / 4), dim=-1)
    torch.testing.assert_close(q, want_q, rtol=1e-6, atol=1e-9)
    lp = loss_fn.student_log_probs(student)
    torch.testing.assert_close(lp, F.log_softmax(student / 0.1, dim=-1))
    before = loss_fn.center.clone()
    loss_fn.teacher_probs(teacher, epoch=1)
    assert torch.equal(loss_fn.center, before), "teacher_probs must not update the center"
    loss_fn.update_center(teacher)
    torch.testing.assert_close(
        loss_fn.center.double(), 0.9 * before.double() + 0.1 * teacher.mean(0, keepdim=True),
        rtol=1e-6, atol=1e-7,
    )


def test_center_is_in_state_dict() -> None:
    loss_fn = make_loss(2)
    student, teacher = inputs(2)
    loss_fn(student, teacher, epoch=0)
    restored = make_loss(2)
    restored.load_state_dict(loss_fn.state_dict())
    assert torch.equal(restored.center, loss_fn.center)


def test_half_precision_inputs_give_float32_loss() -> None:
    loss_fn = make_loss(4)
    student, teacher = inputs(4, dtype=torch.float32)
    got = loss_fn(student.bfloat16(), teacher.bfloat16(), epoch=5)
    assert got.dtype == torch.float32
    want = official_dino_loss(student.bfloat16().float(), teacher.bfloat16().float(),
                              torch.zeros(1, K), 4, 0.07)
    # bf16 log-softmax has ~3 significant digits.
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


# --- teacher_centering variants -------------------------------------------------------------


def reference_sinkhorn(t: np.ndarray, temp: float, n_iterations: int) -> np.ndarray:
    """DINOv2's Sinkhorn-Knopp on one process, written with explicit row/column loops."""
    q = np.exp(t / temp).T  # [K, B]
    n_k, n_b = q.shape
    q = q / q.sum()
    for _ in range(n_iterations):
        for k in range(n_k):
            q[k, :] = q[k, :] / q[k, :].sum() / n_k
        for b in range(n_b):
            q[:, b] = q[:, b] / q[:, b].sum() / n_b
    return (q * n_b).T


def test_sinkhorn_knopp_matches_reference_and_normalises() -> None:
    t = torch.randn(6, K)
    got = sinkhorn_knopp(t, teacher_temp=0.1, n_iterations=3)
    want = reference_sinkhorn(t.double().numpy(), 0.1, 3)
    # float32 inside sinkhorn_knopp vs float64 reference.
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4, atol=1e-7)
    assert got.dtype == torch.float32
    # The last step normalises samples: every row sums to 1.
    torch.testing.assert_close(got.sum(dim=1), torch.ones(6), rtol=0, atol=1e-5)
    # Prototype sums only approach B/K; with many iterations they get there.
    converged = sinkhorn_knopp(t, teacher_temp=0.1, n_iterations=200)
    torch.testing.assert_close(converged.sum(dim=0), torch.full((K,), 6 / K), rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(converged.sum(dim=1), torch.ones(6), rtol=0, atol=1e-5)


def test_sinkhorn_knopp_does_not_overflow_at_sharp_temperature() -> None:
    t = torch.randn(4, K) * 10
    q = sinkhorn_knopp(t, teacher_temp=0.01)  # exp(|t| / 0.01) overflows float32 outside logs
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(4), rtol=0, atol=1e-5)


def test_dino_loss_with_sinkhorn_knopp() -> None:
    loss_fn = make_loss(4, teacher_centering="sinkhorn_knopp")
    student, teacher = inputs(4, dtype=torch.float32)
    got = loss_fn(student, teacher, epoch=9)
    q = torch.from_numpy(reference_sinkhorn(teacher.double().numpy(), 0.07, 3))
    log_p = F.log_softmax(student.double() / 0.1, dim=-1).chunk(4)
    q_chunks = q.chunk(2)
    terms = [(-q_chunks[i] * log_p[v]).sum(-1).mean() for i in range(2) for v in range(4) if v != i]
    want = torch.stack(terms).mean().float()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert torch.equal(loss_fn.center, torch.zeros(1, K)), "SK mode leaves the center alone"


def test_no_centering_variant() -> None:
    loss_fn = make_loss(3, teacher_centering="none")
    student, teacher = inputs(3)
    loss_fn.center.fill_(5.0)  # must be ignored
    got = loss_fn(student, teacher, epoch=9)
    want = official_dino_loss(student, teacher, torch.zeros(1, K), 3, 0.07)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(loss_fn.center, torch.full((1, K), 5.0))


# --- distributed guard ------------------------------------------------------------------------


def test_all_reduce_guard_is_a_no_op_without_process_group(monkeypatch) -> None:
    assert not (dist.is_available() and dist.is_initialized())

    def forbidden(*args, **kwargs):
        raise AssertionError("all_reduce called without an initialised process group")

    monkeypatch.setattr(dist, "all_reduce", forbidden)
    x = torch.randn(1, K)
    assert torch.equal(_all_reduce_sum(x.clone()), x)
    assert torch.equal(_all_reduce_max(x.clone()), x)
    assert _world_size() == 1
    loss_fn = make_loss(2)
    student, teacher = inputs(2)
    loss_fn(student, teacher, epoch=0)  # center update runs through the guard
    torch.testing.assert_close(
        loss_fn.center.double(), 0.1 * teacher.mean(0, keepdim=True), rtol=1e-6, atol=1e-7
    )
    sinkhorn_knopp(teacher, 0.05)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "match"),
    [
        ((12,), (6, K), "student_output must be 2-D"),
        ((12, K), (6, K, 1), "teacher_output must be 2-D"),
        ((12, K + 1), (6, K), r"student_output has 13 columns, expected out_dim=12"),
        ((12, K), (6, K - 1), r"teacher_output has 11 columns"),
        ((10, K), (6, K), r"student_output has 10 rows, not a positive multiple of ncrops=4"),
        ((0, K), (0, K), r"student_output has 0 rows"),
        ((12, K), (4, K), r"teacher_output has 4 rows, expected 2 \* B = 6"),
    ],
)
def test_bad_shapes(student_shape, teacher_shape, match) -> None:
    loss_fn = make_loss(4)
    with pytest.raises(ValueError, match=match):
        loss_fn(torch.randn(student_shape), torch.randn(teacher_shape), epoch=0)


@pytest.mark.parametrize("epoch", [-1, 10, 2.5, "3"])
def test_bad_epoch(epoch) -> None:
    loss_fn = make_loss(2)
    student, teacher = inputs(2)
    with pytest.raises(ValueError, match="epoch"):
        loss_fn(student, teacher, epoch=epoch)


@pytest.mark.parametrize(
    ("which", "value", "match"),
    [
        ("student", float("nan"), r"student_output has 1 NaN and 0 infinite"),
        ("student", float("inf"), r"student_output has 0 NaN and 1 infinite"),
        ("student", float("-inf"), r"student_output has 0 NaN and 1 infinite"),
        ("teacher", float("nan"), r"teacher_output has 1 NaN"),
        ("teacher", float("-inf"), r"teacher_output has 0 NaN and 1 infinite"),
    ],
)
@pytest.mark.parametrize("centering", ["centering", "sinkhorn_knopp", "none"])
def test_non_finite_inputs(which, value, match, centering) -> None:
    loss_fn = make_loss(2, teacher_centering=centering)
    student, teacher = inputs(2)
    (student if which == "student" else teacher)[1, 3] = value
    with pytest.raises(ValueError, match=match):
        loss_fn(student, teacher, epoch=0)
    assert torch.equal(loss_fn.center, torch.zeros(1, K)), "a rejected batch moved the center"


def test_check_finite_off_skips_the_check() -> None:
    loss_fn = make_loss(2, check_finite=False)
    student, teacher = inputs(2)
    student[0, 0] = float("nan")
    assert torch.isnan(loss_fn(student, teacher, epoch=0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ncrops": 1}, "ncrops must be >= 2"),
        ({"out_dim": 0}, "out_dim must be >= 1"),
        ({"student_temp": 0.0}, "student_temp must be a positive"),
        ({"teacher_temp": -0.1}, "teacher_temp must be a positive"),
        ({"warmup_teacher_temp": float("nan")}, "warmup_teacher_temp must be a positive"),
        ({"center_momentum": 1.5}, r"center_momentum must be in \[0, 1\]"),
        ({"warmup_teacher_temp_epochs": 11}, "warmup_teacher_temp_epochs=11 exceeds nepochs=10"),
        ({"teacher_centering": "sinkhorn"}, "teacher_centering must be"),
    ],
)
def test_bad_constructor_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        make_loss(**({"ncrops": 2} | kwargs))


def test_sinkhorn_bad_input() -> None:
    with pytest.raises(ValueError, match="teacher_output must be 2-D"):
        sinkhorn_knopp(torch.randn(2, 3, 4), 0.1)
    with pytest.raises(ValueError, match="teacher_temp must be a positive"):
        sinkhorn_knopp(torch.randn(2, 3), 0.0)
    with pytest.raises(ValueError, match="n_iterations must be >= 1"):
        sinkhorn_knopp(torch.randn(2, 3), 0.1, n_iterations=0)
