"""Argument checks shared by the losses and the evaluation: one wording for every error.

Each raises ``ValueError`` naming the caller (``owner``), the argument, the value received and
what was expected, e.g. ``"DINOLoss: student_temp must be a positive finite number, got 0"``.
"""

from __future__ import annotations

import math
import operator

import torch

__all__ = [
    "nonfinite_summary",
    "require_finite",
    "require_int",
    "require_positive",
    "require_unit_interval",
]


def nonfinite_summary(name: str, tensor: torch.Tensor) -> str | None:
    """``"name has 2 NaN and 1 infinite values (of 64)"`` or None when every value is finite."""
    n_nan = int(torch.isnan(tensor).sum())
    n_inf = int(torch.isinf(tensor).sum())
    if n_nan == 0 and n_inf == 0:
        return None
    return f"{name} has {n_nan} NaN and {n_inf} infinite values (of {tensor.numel()})"


def require_finite(owner: str, **tensors: torch.Tensor) -> None:
    """Raise ValueError naming every tensor that holds NaN or Inf (one host sync per tensor)."""
    problems = [p for name, t in tensors.items() if (p := nonfinite_summary(name, t)) is not None]
    if problems:
        raise ValueError(f"{owner}: " + "; ".join(problems) + "; expected finite values")


def require_positive(owner: str, name: str, value: float) -> float:
    """Return ``float(value)`` if it is a finite number > 0, else raise ValueError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: {name} must be a positive number, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{owner}: {name} must be a positive finite number, got {value!r}")
    return v


def require_unit_interval(owner: str, name: str, value: float) -> float:
    """Return ``float(value)`` if it lies in ``[0, 1]`` (a momentum, a mixing weight)."""
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{owner}: {name} must be in [0, 1], got {value!r}")
    return v


def require_int(owner: str, name: str, value: int, minimum: int = 1) -> int:
    """Return ``value`` as an int if it is an integer (not a float) ``>= minimum``."""
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{owner}: {name} must be an integer, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value!r}")
    return v
