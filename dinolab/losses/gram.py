"""DINOv3's Gram anchoring: keep the student's patch-to-patch similarities those of a teacher.

DINOv3 found that long training erodes its dense features (patch similarity maps get noisy)
while the global ones still improve. Its fix compares, per image, the Gram matrices of the
L2-normalised patch features of the student and of a *Gram teacher* (an earlier checkpoint
with clean dense features):

    L = mean_{i, j} ( <s_i, s_j> - <t_i, t_j> )^2       over the N x N patch pairs of an image

Only the similarities are matched, never the features themselves, so the student's features
may move (and have another width than the teacher's) as long as their pairwise geometry stays
anchored. Negative similarities are set to 0 on both sides by default (``remove_neg``): what is
anchored is which patches resemble each other, not how unlike the others are.

Seed 002's :class:`~dinolab.losses.SPDLogEuclideanLoss` (``kind="gram"``) starts from the same
cosine Gram matrix but compares matrix logarithms (a Riemannian distance) instead of entries.

The options are those of the official ``GramLoss`` (facebookresearch/dinov3,
``dinov3/loss/gram_loss.py``); written here from its behaviour. With
``remove_only_teacher_neg`` the official code clips the teacher's negatives and then the
student's where the (already clipped) teacher is negative, which never happens: only the
teacher's negatives are removed, and this module does the same so its numbers are the official
ones.

Examples:
    >>> import torch
    >>> loss_fn = GramLoss()
    >>> student = torch.randn(2, 16, 32, requires_grad=True)   # [B, N, D_student]
    >>> teacher = torch.randn(2, 16, 64)                       # [B, N, D_teacher]
    >>> loss = loss_fn(student, teacher)
    >>> loss.backward()
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GramLoss", "gram_matrix"]


def gram_matrix(x: torch.Tensor, apply_norm: bool = True) -> torch.Tensor:
    """Pairwise similarities of tokens: ``[..., N, D] -> [..., N, N]`` in float32.

    Args:
        x: tokens, e.g. ``[B, N, D]`` (one matrix per image) or ``[M, D]`` (one for all).
        apply_norm: L2-normalise each token first (cosine similarities in [-1, 1]).
    """
    x = x.float()
    if apply_norm:
        x = F.normalize(x, dim=-1)
    return x @ x.transpose(-1, -2)


class GramLoss(nn.Module):
    """Mean squared difference between student and teacher patch Gram matrices (DINOv3).

    Args:
        apply_norm: L2-normalise the features before the Gram matrices (official default).
        img_level: one ``[N, N]`` Gram matrix per image (True, default of the official
            class) or one ``[B*N, B*N]`` matrix over the whole batch (False, the default of
            DINOv3's training config), where patches of different images are compared too.
        remove_neg: set negative similarities to 0 in both matrices (default).
        remove_only_teacher_neg: set only the teacher's negative similarities to 0 (exclusive
            with ``remove_neg``).

    ``forward(output_feats, target_feats, img_level=None)``: student features ``[B, N, D_s]``
    and teacher features ``[B, N, D_t]`` (``D_s`` and ``D_t`` may differ; with
    ``img_level=False`` also ``[M, D]``), the teacher's computed without gradient. Returns a
    scalar. ``img_level`` overrides the constructor's for this call, as the official
    ``forward`` argument.
    """

    def __init__(
        self,
        apply_norm: bool = True,
        img_level: bool = True,
        remove_neg: bool = True,
        remove_only_teacher_neg: bool = False,
    ) -> None:
        super().__init__()
        if remove_neg and remove_only_teacher_neg:
            raise ValueError(
                "GramLoss: remove_neg=True and remove_only_teacher_neg=True exclude each other; "
                "expected at most one of them"
            )
        self.apply_norm = bool(apply_norm)
        self.img_level = bool(img_level)
        self.remove_neg = bool(remove_neg)
        self.remove_only_teacher_neg = bool(remove_only_teacher_neg)

    def forward(
        self,
        output_feats: torch.Tensor,
        target_feats: torch.Tensor,
        img_level: bool | None = None,
    ) -> torch.Tensor:
        """Scalar loss; see the class docstring for the shapes."""
        img_level = self.img_level if img_level is None else bool(img_level)
        student, teacher = output_feats, target_feats
        for name, t in (("output_feats", student), ("target_feats", teacher)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise ValueError(f"GramLoss: {name} must be a floating-point tensor, got {t!r:.60}")
            if img_level and t.ndim != 3:
                raise ValueError(
                    f"GramLoss: with img_level=True {name} must be [B, N, D], got shape "
                    f"{tuple(t.shape)}"
                )
            if not img_level and t.ndim not in (2, 3):
                raise ValueError(
                    f"GramLoss: {name} must be [B, N, D] or [M, D], got shape {tuple(t.shape)}"
                )
        if not img_level:
            student = student.flatten(0, -2)
            teacher = teacher.flatten(0, -2)
        if student.shape[:-1] != teacher.shape[:-1]:
            raise ValueError(
                f"GramLoss: student tokens {tuple(student.shape[:-1])} and teacher tokens "
                f"{tuple(teacher.shape[:-1])} differ; expected the same images and patch grid "
                "(the feature widths may differ)"
            )
        target = gram_matrix(teacher, self.apply_norm)
        sim = gram_matrix(student, self.apply_norm)
        if self.remove_neg or self.remove_only_teacher_neg:
            target = target.clamp_min(0.0)
        if self.remove_neg:
            sim = torch.where(sim < 0, torch.zeros_like(sim), sim)
        return F.mse_loss(sim, target)

    def extra_repr(self) -> str:
        return (
            f"apply_norm={self.apply_norm}, img_level={self.img_level}, "
            f"remove_neg={self.remove_neg}, remove_only_teacher_neg={self.remove_only_teacher_neg}"
        )
