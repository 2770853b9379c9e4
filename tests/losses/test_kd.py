"""DistillKL and kd_loss against the sum formula T^2 / B * sum_i sum_c p_t log(p_t / p_s)."""

from __future__ import annotations

import math

import pytest
import torch

from dinolab.losses import DistillKL, kd_loss


def softmax(row: list[float], T: float) -> list[float]:  # noqa: N803
    m = max(row)
    exps = [math.exp((v - m) / T) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def reference_kd(s: torch.Tensor, t: torch.Tensor, T: float) -> float:  # noqa: N803
    total = 0.0
    for rs, rt in zip(s.tolist(), t.tolist(), strict=True):
        ps, pt = softmax(rs, T), softmax(rt, T)
        total += sum(b * math.log(b / a) for a, b in zip(ps, pt, strict=True))
    return T * T * total / s.shape[0]  # "batchmean": divide by B only


def reference_ce(s: torch.Tensor, labels: torch.Tensor) -> float:
    total = 0.0
    for row, y in zip(s.tolist(), labels.tolist(), strict=True):
        total += -math.log(softmax(row, 1.0)[y])
    return total / s.shape[0]


def make(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(5, 7, generator=g, dtype=torch.float64) * 3,
            torch.randn(5, 7, generator=g, dtype=torch.float64) * 3)


@pytest.mark.parametrize("T", [1.0, 4.0, 0.5])
def test_distill_kl_matches_sum_formula(T: float) -> None:  # noqa: N803
    s, t = make()
    got = DistillKL(T)(s, t)
    # float64 vs float64 Python arithmetic.
    assert float(got) == pytest.approx(reference_kd(s, t, T), rel=1e-10)


def test_distill_kl_zero_when_equal_and_teacher_detached() -> None:
    s, t = make(1)
    assert float(DistillKL(4.0)(s, s.clone())) == pytest.approx(0.0, abs=1e-12)
    s.requires_grad_(True)
    t.requires_grad_(True)
    DistillKL(4.0)(s, t).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


def test_kd_loss_mixes_kd_and_ce() -> None:
    s, t = make(2)
    labels = torch.tensor([0, 6, 3, 3, 1])
    got = kd_loss(s, t, labels, T=4.0, alpha=0.9)
    want = 0.9 * reference_kd(s, t, 4.0) + 0.1 * reference_ce(s, labels)
    assert float(got) == pytest.approx(want, rel=1e-10)
    # Without labels: the KD term alone (alpha ignored).
    assert float(kd_loss(s, t, T=2.0, alpha=0.3)) == pytest.approx(reference_kd(s, t, 2.0),
                                                                    rel=1e-10)
    # alpha = 0: pure cross-entropy.
    assert float(kd_loss(s, t, labels, T=4.0, alpha=0.0)) == pytest.approx(
        reference_ce(s, labels), rel=1e-10
    )


def test_bad_input() -> None:
    s, t = make(3)
    for bad_t in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="T must be a positive"):
            DistillKL(bad_t)
    with pytest.raises(ValueError, match="must have the same shape"):
        DistillKL(4.0)(s, t[:, :5])
    with pytest.raises(ValueError, match="student_logits must be a 2-D tensor"):
        DistillKL(4.0)(s[0], t[0])
    bad = t.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="teacher_logits has 0 NaN and 1 infinite"):
        DistillKL(4.0)(s, bad)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        kd_loss(s, t, alpha=1.5)
    with pytest.raises(ValueError, match=r"labels range over \[0, 7\], expected .* \[0, C=7\)"):
        kd_loss(s, t, torch.tensor([0, 1, 2, 3, 7]))
    with pytest.raises(ValueError, match=r"labels must be a tensor \[B=5\]"):
        kd_loss(s, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer class indices"):
        kd_loss(s, t, torch.zeros(5))
