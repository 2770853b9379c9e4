"""The iBOT masked-patch loss, as DINOv2's ``iBOTPatchLoss``.

The student sees its global crops with some patches replaced by a learned mask token; the
teacher sees them intact. At every masked position the student predicts the teacher's
distribution over the ``K`` patch prototypes:

* teacher: ``q = softmax((t - c_p) / tau_t)`` with its own EMA center ``c_p`` ``[1, 1, K]``;
* student: ``log p = log_softmax(s / 0.1)``;
* per image: the mean of ``-sum_k q log p`` over that image's masked patches;
* the loss: the sum of the per-image means divided by the number of images ``B`` (every
  global crop counts, masked or not, so an image without masked patches contributes 0).

After the loss, ``c_p <- m c_p + (1 - m) * mean of the teacher logits at masked positions``.

Examples:
    >>> import torch
    >>> loss_fn = iBOTPatchLoss(patch_out_dim=16)
    >>> s, t = torch.randn(4, 9, 16, requires_grad=True), torch.randn(4, 9, 16)
    >>> masks = torch.rand(4, 9) < 0.4
    >>> loss = loss_fn(s, t, masks, teacher_temp=0.07)
    >>> loss.backward()
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dinolab._checks import require_finite, require_int, require_positive, require_unit_interval
from dinolab.losses.dino import _all_reduce_sum

__all__ = ["iBOTPatchLoss"]


class iBOTPatchLoss(nn.Module):  # noqa: N801  (DINOv2's name)
    """Masked-patch distillation with a centred, sharpened teacher (DINOv2 defaults).

    Args:
        patch_out_dim: ``K``, prototypes of the patch head.
        student_temp: student temperature (0.1).
        center_momentum: momentum of the patch center update (0.9).
        teacher_centering: ``"centering"`` (DINOv2's softmax-center mode, the default) or
            ``"none"``: no center is subtracted or updated (the collapse study's "no centering"
            variants remove it from both losses).

    Attributes:
        center: buffer ``[1, 1, K]``, the EMA of the teacher's masked-patch logits.

    Examples:
        >>> loss_fn = iBOTPatchLoss(8)
        >>> masks = torch.zeros(2, 4, dtype=torch.bool); masks[0, :2] = True
        >>> s, t = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
        >>> loss = loss_fn(s, t, masks, teacher_temp=0.04)  # image 1 has no mask: adds 0
    """

    center: torch.Tensor

    def __init__(
        self,
        patch_out_dim: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        teacher_centering: str = "centering",
    ) -> None:
        super().__init__()
        owner = "iBOTPatchLoss"
        if teacher_centering not in ("centering", "none"):
            raise ValueError(
                f"{owner}: teacher_centering must be 'centering' or 'none', "
                f"got {teacher_centering!r}"
            )
        self.teacher_centering = teacher_centering
        self.patch_out_dim = require_int(owner, "patch_out_dim", patch_out_dim)
        self.student_temp = require_positive(owner, "student_temp", student_temp)
        self.center_momentum = require_unit_interval(owner, "center_momentum", center_momentum)
        self.register_buffer("center", torch.zeros(1, 1, self.patch_out_dim))

    @torch.no_grad()
    def teacher_probs(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """``softmax((t - c_p) / teacher_temp)`` over the last axis; ``[..., K] -> [..., K]``."""
        temp = require_positive("iBOTPatchLoss", "teacher_temp", teacher_temp)
        if self.teacher_centering == "none":
            return F.softmax(teacher_logits / temp, dim=-1)
        return F.softmax((teacher_logits - self.center.reshape(-1)) / temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_masked: torch.Tensor) -> None:
        """Move the center towards the mean of ``teacher_masked`` ``[M, K]`` (all processes).

        With no masked patch on any process the center is left unchanged (DINOv2 would divide
        by zero).
        """
        stats = torch.cat(
            [
                teacher_masked.detach().float().sum(dim=0),
                torch.tensor([teacher_masked.shape[0]], dtype=torch.float32,
                             device=teacher_masked.device),
            ]
        )
        stats = _all_reduce_sum(stats)  # sum and count travel together: one collective
        count = stats[-1]
        mean = stats[:-1] / count.clamp(min=1.0)
        m = torch.where(count > 0, self.center_momentum, 1.0)
        self.center.mul_(m).add_((1.0 - m) * mean.reshape(1, 1, -1).to(self.center.dtype))

    def forward(
        self,
        student_patch_logits: torch.Tensor,
        teacher_patch_logits: torch.Tensor,
        masks: torch.Tensor,
        teacher_temp: float,
    ) -> torch.Tensor:
        """iBOT loss from full patch grids.

        Args:
            student_patch_logits: ``[B, N, K]`` student head outputs for every patch.
            teacher_patch_logits: ``[B, N, K]`` teacher head outputs (no gradient flows).
            masks: ``[B, N]`` bool, True where the student saw the mask token.
            teacher_temp: teacher temperature.

        Returns:
            Scalar loss (nats per masked patch, averaged per image, then over all ``B`` images).
        """
        owner = "iBOTPatchLoss"
        for name, t in (("student_patch_logits", student_patch_logits),
                        ("teacher_patch_logits", teacher_patch_logits)):
            if t.ndim != 3:
                raise ValueError(f"{owner}: {name} must be 3-D [B, N, K], got {tuple(t.shape)}")
            if t.shape[-1] != self.patch_out_dim:
                raise ValueError(
                    f"{owner}: {name} has K={t.shape[-1]}, expected "
                    f"patch_out_dim={self.patch_out_dim}"
                )
        if student_patch_logits.shape != teacher_patch_logits.shape:
            raise ValueError(
                f"{owner}: student_patch_logits {tuple(student_patch_logits.shape)} and "
                f"teacher_patch_logits {tuple(teacher_patch_logits.shape)} must have the same shape"
            )
        self._check_masks(masks, tuple(student_patch_logits.shape[:2]))
        return self.forward_masked(
            student_patch_logits[masks], teacher_patch_logits[masks], masks, teacher_temp
        )

    def forward_masked(
        self,
        student_masked: torch.Tensor,
        teacher_masked: torch.Tensor,
        masks: torch.Tensor,
        teacher_temp: float,
    ) -> torch.Tensor:
        """iBOT loss from the masked rows only (what a model that gathers them first produces).

        Args:
            student_masked: ``[M, K]`` student logits at the masked positions, in the order of
                ``x[masks]`` (row-major over ``[B, N]``); ``M = masks.sum()``.
            teacher_masked: ``[M, K]`` teacher logits at the same positions.
            masks: ``[B, N]`` bool mask that selected them.
            teacher_temp: teacher temperature.

        Returns:
            Scalar loss, equal to :meth:`forward` on the full grids.
        """
        owner = "iBOTPatchLoss"
        self._check_masks(masks, None)
        n_masked = int(masks.sum())
        for name, t in (("student_masked", student_masked), ("teacher_masked", teacher_masked)):
            if t.ndim != 2 or t.shape[1] != self.patch_out_dim:
                raise ValueError(
                    f"{owner}: {name} must be [M, K={self.patch_out_dim}], got {tuple(t.shape)}"
                )
            if t.shape[0] != n_masked:
                raise ValueError(
                    f"{owner}: {name} has {t.shape[0]} rows but masks has {n_masked} True entries"
                )
        require_finite(
            owner, student_masked=student_masked.detach(), teacher_masked=teacher_masked
        )
        temp = require_positive(owner, "teacher_temp", teacher_temp)

        q = self.teacher_probs(teacher_masked, temp)
        log_p = F.log_softmax(student_masked / self.student_temp, dim=-1)
        per_patch = -(q * log_p).sum(dim=-1)  # [M]
        # Weight 1/(masked patches of the image) turns the sum into per-image means.
        per_image_count = masks.sum(dim=1).clamp(min=1)
        weights = (1.0 / per_image_count.to(per_patch.dtype)).unsqueeze(1).expand_as(masks)[masks]
        loss = (per_patch * weights).sum() / masks.shape[0]
        if self.teacher_centering == "centering":
            self.update_center(teacher_masked)
        return loss

    @staticmethod
    def _check_masks(masks: torch.Tensor, expected: tuple[int, int] | None) -> None:
        owner = "iBOTPatchLoss"
        if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool:
            what = masks.dtype if isinstance(masks, torch.Tensor) else type(masks).__name__
            raise ValueError(f"{owner}: masks must be a bool tensor [B, N], got {what}")
        if masks.ndim != 2:
            raise ValueError(f"{owner}: masks must be 2-D [B, N], got shape {tuple(masks.shape)}")
        if masks.shape[0] == 0:
            raise ValueError(f"{owner}: masks has no images (shape {tuple(masks.shape)})")
        if expected is not None and tuple(masks.shape) != expected:
            raise ValueError(
                f"{owner}: masks has shape {tuple(masks.shape)}, expected [B, N] = {list(expected)}"
            )
