"""dinolab.schedules against the formulas of official DINO, written out here element by element."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dinolab.schedules import (
    cosine_schedule,
    linear_schedule,
    momentum_schedule,
    teacher_temp_schedule,
    teacher_temp_schedule_per_iter,
)

# Element-wise float64 comparisons: the library and these loops differ only in rounding.
ATOL = 1e-12


def reference_cosine(base, final, epochs, niter, warmup_epochs=0, start=0.0):
    """Official DINO's cosine_scheduler, one element at a time."""
    w = warmup_epochs * niter
    total = epochs * niter
    out = []
    for i in range(w):  # linspace(a, b, 1) == [a]
        out.append(start + (base - start) * (i / (w - 1) if w > 1 else 0.0))
    t = total - w
    for i in range(t):
        out.append(final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / t)))
    return np.array(out)


@pytest.mark.parametrize(
    "args",
    [
        (5e-4, 1e-6, 10, 7, 0, 0.0),
        (5e-4, 1e-6, 10, 7, 3, 0.0),
        (0.04, 0.4, 5, 4, 0, 0.0),  # weight decay rises
        (1.0, 0.0, 3, 1, 1, 0.5),
    ],
)
def test_cosine_schedule_matches_official_formula(args):
    got = cosine_schedule(*args)
    want = reference_cosine(*args)
    assert got.shape == (args[2] * args[3],)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_cosine_warmup_ends_on_base_and_cosine_never_reaches_final():
    s = cosine_schedule(1.0, 0.0, epochs=4, niter_per_ep=5, warmup_epochs=1, start_warmup_value=0.2)
    assert s[0] == pytest.approx(0.2) and s[4] == pytest.approx(1.0)  # linspace includes both ends
    assert s[5] == pytest.approx(1.0)  # cosine starts at base
    assert s[-1] > 0.0  # official schedule stops one step short of final


def test_linear_schedule_endpoints_and_spacing():
    s = linear_schedule(0.996, 1.0, epochs=2, niter_per_ep=5)
    np.testing.assert_allclose(s, [0.996 + i * 0.004 / 9 for i in range(10)], atol=ATOL)
    s = linear_schedule(1.0, 0.0, epochs=3, niter_per_ep=2, warmup_epochs=1)
    np.testing.assert_allclose(s, [0.0, 1.0, 1.0, 2 / 3, 1 / 3, 0.0], atol=ATOL)


def test_momentum_schedule_rises_from_base_towards_one():
    # Seed 000 mistake 1: its warm-up went DOWN from final to base. The reference rises.
    m = momentum_schedule(0.996, epochs=3, niter_per_ep=10)
    total = 30
    want = [1 - (1 - 0.996) * (math.cos(math.pi * it / total) + 1) / 2 for it in range(total)]
    np.testing.assert_allclose(m, want, atol=ATOL)
    assert m[0] == pytest.approx(0.996) and np.all(np.diff(m) > 0) and m[-1] < 1.0


def test_teacher_temp_per_epoch_and_per_iteration():
    t = teacher_temp_schedule(0.04, 0.07, warmup_teacher_temp_epochs=4, nepochs=6)
    np.testing.assert_allclose(t, [0.04, 0.05, 0.06, 0.07, 0.07, 0.07], atol=ATOL)
    assert teacher_temp_schedule(0.04, 0.04, 0, 3).tolist() == [0.04] * 3  # DINO's default
    ti = teacher_temp_schedule_per_iter(0.04, 0.07, 1, 3, niter_per_ep=4)
    np.testing.assert_allclose(ti[:4], [0.04, 0.05, 0.06, 0.07], atol=ATOL)
    np.testing.assert_allclose(ti[4:], [0.07] * 8, atol=ATOL)


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: cosine_schedule(1, 0, 0, 10), "epochs"),
        (lambda: cosine_schedule(1, 0, 5, 0), "niter_per_ep"),
        (lambda: cosine_schedule(1, 0, 5, 10, warmup_epochs=6), "warmup_epochs"),
        (lambda: momentum_schedule(1.5, 2, 2), "base_momentum"),
        (lambda: teacher_temp_schedule(0.04, 0.07, 10, 5), "warmup_teacher_temp_epochs"),
        (lambda: teacher_temp_schedule(0.0, 0.07, 1, 5), "warmup_teacher_temp"),
    ],
)
def test_bad_arguments_are_named(call, fragment):
    with pytest.raises(ValueError, match=fragment):
        call()
