"""CLSTokenLoss: each kind against its plain formula; teacher detached; bad input."""

from __future__ import annotations

import math

import pytest
import torch

from dinolab.losses import CLSTokenLoss


def make(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(
        4, 6, generator=g, dtype=torch.float64
    )


def reference(kind: str, s: torch.Tensor, t: torch.Tensor) -> float:
    rows_s, rows_t = s.tolist(), t.tolist()
    if kind == "cosine":
        total = 0.0
        for a, b in zip(rows_s, rows_t, strict=True):
            dot = sum(x * y for x, y in zip(a, b, strict=True))
            na = math.sqrt(sum(x * x for x in a))
            nb = math.sqrt(sum(y * y for y in b))
            total += 1.0 - dot / (na * nb)
        return total / len(rows_s)
    diffs = [x - y for a, b in zip(rows_s, rows_t, strict=True) for x, y in zip(a, b, strict=True)]
    if kind == "mse":
        return sum(d * d for d in diffs) / len(diffs)
    return sum(0.5 * d * d if abs(d) < 1.0 else abs(d) - 0.5 for d in diffs) / len(diffs)


@pytest.mark.parametrize("kind", ["cosine", "mse", "smooth_l1"])
def test_matches_formula_and_detaches_teacher(kind: str) -> None:
    s, t = make()
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss = CLSTokenLoss(kind)(s, t)
    # float64 throughout.
    assert float(loss.detach()) == pytest.approx(reference(kind, s.detach(), t.detach()), rel=1e-12)
    loss.backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_cosine_is_zero_for_parallel_and_scale_free() -> None:
    s, _ = make(1)
    assert float(CLSTokenLoss("cosine")(s, 3.0 * s)) == pytest.approx(0.0, abs=1e-12)
    assert float(CLSTokenLoss("cosine")(s, -s)) == pytest.approx(2.0, abs=1e-12)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="kind must be 'cosine', 'mse' or 'smooth_l1'"):
        CLSTokenLoss("l1")
    with pytest.raises(ValueError, match=r"differ; project the student"):
        CLSTokenLoss()(torch.randn(4, 6), torch.randn(4, 8))
    with pytest.raises(ValueError, match=r"student_cls must be a 2-D tensor"):
        CLSTokenLoss()(torch.randn(4, 6, 2), torch.randn(4, 6))
    t = torch.randn(4, 6)
    t[0, 0] = float("nan")
    with pytest.raises(ValueError, match="teacher_cls has 1 NaN"):
        CLSTokenLoss()(torch.randn(4, 6), t)
