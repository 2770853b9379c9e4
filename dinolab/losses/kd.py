"""Hinton knowledge distillation: match the teacher's temperature-softened class probabilities.

``L_KD = T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``, summed over classes and averaged
over the batch ("batchmean"), as RepDistiller's ``DistillKL``. The ``T^2`` factor keeps the
gradient scale independent of ``T`` (the soft-target gradients shrink as ``1 / T^2``), so the
KD term can be mixed with the hard-label cross-entropy:

``L = alpha * L_KD + (1 - alpha) * CE(z_s, y)``.

Examples:
    >>> import torch
    >>> kd = DistillKL(T=4.0)
    >>> student = torch.randn(8, 10, requires_grad=True)
    >>> teacher = torch.randn(8, 10)
    >>> loss = kd(student, teacher)
    >>> mixed = kd_loss(student, teacher, labels=torch.randint(0, 10, (8,)), T=4.0, alpha=0.9)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dinolab._checks import require_finite, require_positive, require_unit_interval

__all__ = ["DistillKL", "kd_loss"]


def _check_logits(owner: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    for name, t in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{owner}: {name} must be a 2-D tensor [B, C], got {shape}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"{owner}: student_logits {tuple(student_logits.shape)} and teacher_logits "
            f"{tuple(teacher_logits.shape)} must have the same shape [B, C]"
        )
    if student_logits.shape[0] == 0:
        raise ValueError(f"{owner}: the batch is empty")
    require_finite(owner, student_logits=student_logits.detach(), teacher_logits=teacher_logits)


def _distill_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float  # noqa: N803
) -> torch.Tensor:
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    p_t = F.softmax(teacher_logits.detach() / T, dim=1)
    # "batchmean": sum over classes and rows, divided by B (plain "mean" would also divide by C).
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * (T * T)


class DistillKL(nn.Module):
    """Temperature-scaled KL divergence from teacher to student, ``T^2``-scaled, batch mean.

    Args:
        T: temperature ``> 0`` (4 is the usual CIFAR choice).

    Shapes:
        ``student_logits [B, C]``, ``teacher_logits [B, C]`` -> scalar (nats * T^2). No
        gradient reaches the teacher logits.
    """

    def __init__(self, T: float) -> None:  # noqa: N803  (RepDistiller's name)
        super().__init__()
        self.T = require_positive("DistillKL", "T", T)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        _check_logits("DistillKL", student_logits, teacher_logits)
        return _distill_kl(student_logits, teacher_logits, self.T)

    def extra_repr(self) -> str:
        return f"T={self.T}"


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    T: float = 4.0,  # noqa: N803
    alpha: float = 0.9,
) -> torch.Tensor:
    """Hinton distillation loss, optionally mixed with the hard-label cross-entropy.

    Args:
        student_logits: ``[B, C]`` student logits.
        teacher_logits: ``[B, C]`` teacher logits (detached here).
        labels: ``[B]`` integer class labels in ``[0, C)``, or None.
        T: temperature ``> 0``.
        alpha: weight of the KD term in ``[0, 1]``; the cross-entropy gets ``1 - alpha``.

    Returns:
        With labels: ``alpha * DistillKL(T) + (1 - alpha) * CE(student_logits, labels)``.
        Without labels: the KD term alone, unweighted (``alpha`` is ignored: with a single term
        there is nothing to balance).
    """
    owner = "kd_loss"
    T = require_positive(owner, "T", T)
    alpha = require_unit_interval(owner, "alpha", alpha)
    _check_logits(owner, student_logits, teacher_logits)
    distill = _distill_kl(student_logits, teacher_logits, T)
    if labels is None:
        return distill
    n, c = student_logits.shape
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,):
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{owner}: labels must be a tensor [B={n}], got {shape}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{owner}: labels must be integer class indices, got {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= c:
        raise ValueError(f"{owner}: labels range over [{lo}, {hi}], expected values in [0, C={c})")
    return alpha * distill + (1.0 - alpha) * F.cross_entropy(student_logits, labels)
