"""Direct distillation of the CLS token: the student's global feature regresses the teacher's.

Used when a small student learns from a frozen large teacher (lesson 6), beside the DINO,
iBOT, KoLeo and SPD losses. The student and teacher widths must agree: a ViT-S student
(D=384) and a ViT-L teacher (D=1024) need a projection, which belongs to the MODEL (a
trainable ``nn.Linear(384, 1024)`` on the student side), not to this loss.

Examples:
    >>> import torch
    >>> loss_fn = CLSTokenLoss("cosine")
    >>> s = torch.randn(4, 32, requires_grad=True)
    >>> t = torch.randn(4, 32)
    >>> loss = loss_fn(s, t)   # mean over the batch of 1 - cos(s_i, t_i), in [0, 2]
    >>> loss.backward()
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from dinolab._checks import require_finite

__all__ = ["CLSTokenLoss"]

CLSLossKind = Literal["cosine", "mse", "smooth_l1"]


class CLSTokenLoss(nn.Module):
    """Distance between student and teacher CLS features, teacher side detached.

    Args:
        kind: ``"cosine"``: ``mean_i (1 - cos(s_i, t_i))`` (scale-free; the usual choice);
            ``"mse"``: mean squared error over all ``B * D`` entries;
            ``"smooth_l1"``: Huber loss with ``beta=1`` averaged over all entries.

    Shapes:
        ``student_cls [B, D]``, ``teacher_cls [B, D]`` -> scalar.
    """

    def __init__(self, kind: CLSLossKind = "cosine") -> None:
        super().__init__()
        if kind not in ("cosine", "mse", "smooth_l1"):
            raise ValueError(
                f"CLSTokenLoss: kind must be 'cosine', 'mse' or 'smooth_l1', got {kind!r}"
            )
        self.kind: CLSLossKind = kind

    def forward(self, student_cls: torch.Tensor, teacher_cls: torch.Tensor) -> torch.Tensor:
        """Loss of ``student_cls [B, D]`` vs ``teacher_cls [B, D]`` (teacher detached)."""
        owner = "CLSTokenLoss"
        for name, t in (("student_cls", student_cls), ("teacher_cls", teacher_cls)):
            if not isinstance(t, torch.Tensor) or t.ndim != 2:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{owner}: {name} must be a 2-D tensor [B, D], got {shape}")
        if student_cls.shape != teacher_cls.shape:
            raise ValueError(
                f"{owner}: student_cls {tuple(student_cls.shape)} and teacher_cls "
                f"{tuple(teacher_cls.shape)} differ; project the student to the teacher's width "
                "in the model (e.g. nn.Linear(D_student, D_teacher)) before this loss"
            )
        if student_cls.shape[0] == 0:
            raise ValueError(f"{owner}: the batch is empty")
        teacher_cls = teacher_cls.detach()
        require_finite(owner, student_cls=student_cls.detach(), teacher_cls=teacher_cls)
        if self.kind == "cosine":
            return (1.0 - F.cosine_similarity(student_cls, teacher_cls, dim=-1)).mean()
        if self.kind == "mse":
            return F.mse_loss(student_cls, teacher_cls)
        return F.smooth_l1_loss(student_cls, teacher_cls, beta=1.0)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"
