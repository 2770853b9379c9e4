"""KoLeoLoss against a loop over samples with an explicit nearest-neighbour search."""

from __future__ import annotations

import math

import pytest
import torch

from dinolab.losses import KoLeoLoss


def reference_koleo(x: torch.Tensor, eps: float = 1e-8) -> float:
    """normalise; j(i) = argmax_{j != i} x_i . x_j; -mean log(||x_i - x_j + eps|| + eps)."""
    rows = [[float(v) for v in r] for r in x]
    normed = []
    for r in rows:
        norm = max(math.sqrt(sum(v * v for v in r)), eps)
        normed.append([v / norm for v in r])
    total = 0.0
    for i, xi in enumerate(normed):
        best_j, best_dot = -1, -math.inf
        for j, xj in enumerate(normed):
            if j == i:
                continue
            dot = sum(a * b for a, b in zip(xi, xj, strict=True))
            if dot > best_dot:
                best_j, best_dot = j, dot
        xj = normed[best_j]
        dist = math.sqrt(sum((a - b + eps) ** 2 for a, b in zip(xi, xj, strict=True)))
        total += -math.log(dist + eps)
    return total / len(normed)


@pytest.mark.parametrize(("batch", "dim"), [(2, 3), (7, 5), (8, 16)])
def test_matches_loop_reference(batch: int, dim: int) -> None:
    x = torch.randn(batch, dim) * 3
    got = KoLeoLoss()(x)
    assert got.dtype == torch.float32
    # float32 inside the loss vs float64 Python arithmetic.
    assert float(got) == pytest.approx(reference_koleo(x), rel=1e-5, abs=1e-5)


def test_nearest_neighbour_excludes_self() -> None:
    x = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    nn_idx = KoLeoLoss.nearest_neighbours(x)
    assert (nn_idx != torch.arange(6)).all()
    for i in range(6):
        dots = [float(x[i] @ x[j]) if j != i else -math.inf for j in range(6)]
        assert int(nn_idx[i]) == max(range(6), key=dots.__getitem__)


def test_duplicates_stay_finite_and_spread_lowers_loss() -> None:
    x = torch.randn(4, 8)
    x[1] = x[0]  # identical rows: distance is the eps floor, log stays finite
    loss = KoLeoLoss()(x)
    assert torch.isfinite(loss)
    spread = torch.eye(4, 8)  # orthogonal directions: far apart
    assert float(KoLeoLoss()(spread)) < float(loss)


def test_gradient_and_low_precision_input() -> None:
    x = torch.randn(5, 6, requires_grad=True)
    KoLeoLoss()(x).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    xb = torch.randn(5, 6).bfloat16()
    got = KoLeoLoss()(xb)
    assert got.dtype == torch.float32
    # bf16 values, upcast exactly: float32 computation agrees with the reference to ~1e-5.
    assert float(got) == pytest.approx(reference_koleo(xb.float()), rel=1e-5, abs=1e-5)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2 are needed"):
        KoLeoLoss()(torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"x must be a 2-D tensor \[B, D\], got \(4,\)"):
        KoLeoLoss()(torch.randn(4))
    x = torch.randn(3, 4)
    x[2, 1] = float("inf")
    with pytest.raises(ValueError, match="x has 0 NaN and 1 infinite"):
        KoLeoLoss()(x)
    with pytest.raises(ValueError, match="floating point"):
        KoLeoLoss()(torch.ones(3, 4, dtype=torch.long))
