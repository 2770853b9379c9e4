"""Per-iteration schedules: learning rate, weight decay, teacher momentum and temperature.

Every schedule is a NumPy array with one value per training iteration (or per epoch for
the DINO v1 teacher temperature), indexed by ``it = epoch * niter_per_ep + i`` exactly as in
official DINO's ``main_dino.py``.

Examples:
    >>> lr = cosine_schedule(5e-4, 1e-6, epochs=100, niter_per_ep=10, warmup_epochs=10)
    >>> lr.shape
    (1000,)
    >>> float(lr[0]), float(lr[99])  # warm-up from 0 reaches the base value at its last step
    (0.0, 0.0005)
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "cosine_schedule",
    "linear_schedule",
    "momentum_schedule",
    "teacher_temp_schedule",
    "teacher_temp_schedule_per_iter",
]


def _check_lengths(epochs: int, niter_per_ep: int, warmup_epochs: int | float) -> None:
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if int(niter_per_ep) != niter_per_ep or niter_per_ep < 1:
        raise ValueError(f"niter_per_ep must be a positive integer, got {niter_per_ep!r}")
    if warmup_epochs < 0 or warmup_epochs > epochs:
        raise ValueError(f"warmup_epochs must be in [0, epochs={epochs}], got {warmup_epochs!r}")


def cosine_schedule(
    base_value: float,
    final_value: float,
    epochs: int,
    niter_per_ep: int,
    warmup_epochs: int = 0,
    start_warmup_value: float = 0,
) -> np.ndarray:
    """Cosine decay from ``base_value`` towards ``final_value``, after an optional linear warm-up.

    The same array as official DINO's ``utils.cosine_scheduler``:

    * warm-up: ``linspace(start_warmup_value, base_value, W)`` with
      ``W = warmup_epochs * niter_per_ep`` points, both ends included;
    * then ``final + 0.5 * (base - final) * (1 + cos(pi * i / T))`` for ``i = 0 .. T-1``,
      ``T = epochs * niter_per_ep - W``. The last value is close to, but never equal to,
      ``final_value``.

    Args:
        base_value: value at the end of warm-up (start of the cosine).
        final_value: value the cosine decays (or rises) towards.
        epochs: number of training epochs.
        niter_per_ep: iterations per epoch (``len(data_loader)``).
        warmup_epochs: epochs of linear warm-up before the cosine.
        start_warmup_value: first value of the warm-up.

    Returns:
        ``[epochs * niter_per_ep]`` float64 array, one value per iteration.
    """
    _check_lengths(epochs, niter_per_ep, warmup_epochs)
    warmup_iters = int(warmup_epochs * niter_per_ep)
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters)  # empty when 0
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    n = max(len(iters), 1)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / n))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def linear_schedule(
    base_value: float,
    final_value: float,
    epochs: int,
    niter_per_ep: int,
    warmup_epochs: int = 0,
    start_warmup_value: float = 0,
) -> np.ndarray:
    """Straight line from ``base_value`` to ``final_value``, after an optional linear warm-up.

    Laid out like :func:`cosine_schedule` (same length and warm-up) so the two can be swapped;
    unlike the cosine, the last value equals ``final_value``.

    Returns:
        ``[epochs * niter_per_ep]`` float64 array.
    """
    _check_lengths(epochs, niter_per_ep, warmup_epochs)
    warmup_iters = int(warmup_epochs * niter_per_ep)
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters)  # empty when 0
    line = np.linspace(base_value, final_value, epochs * niter_per_ep - warmup_iters)
    return np.concatenate((warmup, line))


def momentum_schedule(
    base_momentum: float, epochs: int, niter_per_ep: int, final_momentum: float = 1.0
) -> np.ndarray:
    """Teacher EMA momentum per iteration, rising from ``base_momentum`` towards ``final_momentum``.

    ``m_it = final - (final - base) * (1 + cos(pi * it / T)) / 2`` with
    ``T = epochs * niter_per_ep``, which is ``cosine_schedule(base, final, epochs, niter_per_ep)``
    (official DINO; BYOL uses the same formula).

    Returns:
        ``[epochs * niter_per_ep]`` array of momenta in ``[base_momentum, final_momentum)``.
    """
    for name, m in (("base_momentum", base_momentum), ("final_momentum", final_momentum)):
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {m!r}")
    return cosine_schedule(base_momentum, final_momentum, epochs, niter_per_ep)


def teacher_temp_schedule(
    warmup_teacher_temp: float, teacher_temp: float, warmup_teacher_temp_epochs: int, nepochs: int
) -> np.ndarray:
    """Teacher temperature per EPOCH, as official DINO's ``DINOLoss``.

    ``linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)`` followed by
    ``teacher_temp`` for the remaining epochs.

    Returns:
        ``[nepochs]`` array of temperatures.
    """
    if warmup_teacher_temp_epochs < 0 or warmup_teacher_temp_epochs > nepochs:
        raise ValueError(
            f"warmup_teacher_temp_epochs must be in [0, nepochs={nepochs}], "
            f"got {warmup_teacher_temp_epochs!r}"
        )
    for name, t in (("warmup_teacher_temp", warmup_teacher_temp), ("teacher_temp", teacher_temp)):
        if not t > 0 or not math.isfinite(t):
            raise ValueError(f"{name} must be a positive finite temperature, got {t!r}")
    return np.concatenate(
        (
            np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
            np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp,
        )
    )


def teacher_temp_schedule_per_iter(
    warmup_teacher_temp: float,
    teacher_temp: float,
    warmup_teacher_temp_epochs: int,
    nepochs: int,
    niter_per_ep: int,
) -> np.ndarray:
    """Teacher temperature per ITERATION, as DINOv2's ``train.py`` steps it.

    A linear ramp from ``warmup_teacher_temp`` to ``teacher_temp`` over the warm-up
    iterations (both ends included), then constant.

    Returns:
        ``[nepochs * niter_per_ep]`` array of temperatures.
    """
    _check_lengths(nepochs, niter_per_ep, warmup_teacher_temp_epochs)
    warm = int(warmup_teacher_temp_epochs * niter_per_ep)
    return np.concatenate(
        (
            np.linspace(warmup_teacher_temp, teacher_temp, warm),
            np.full(nepochs * niter_per_ep - warm, float(teacher_temp)),
        )
    )
