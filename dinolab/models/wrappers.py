"""Wrappers that turn a backbone and a head into DINO's student and teacher.

* :class:`MultiCropWrapper` runs a list of crops of different sizes through one backbone (one
  pass per run of equal-sized crops) and the head once, as official DINO.
* :class:`StudentTeacherWrapper` holds a student and a teacher: either an EMA copy of the
  student (DINO's self-distillation) or a fixed, pretrained teacher of any architecture
  (plain distillation, with no EMA).

Examples:
    >>> import torch
    >>> from dinolab.models import DINOHead, vit_course
    >>> student = MultiCropWrapper(vit_course(), DINOHead(128, 256, hidden_dim=64,
    ...                                                    bottleneck_dim=32))
    >>> pair = StudentTeacherWrapper(student, momentum_schedule=0.996)
    >>> crops = [torch.randn(4, 3, 32, 32)] * 2 + [torch.randn(4, 3, 16, 16)] * 4
    >>> pair.forward_student(crops).shape       # 6 crops x 4 images, crop-major
    torch.Size([24, 256])
    >>> pair.forward_teacher(crops[:2]).shape   # the teacher sees the 2 global crops
    torch.Size([8, 256])
    >>> pair.update_teacher()                   # after optimizer.step(), every iteration
    0.996
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from dinolab.ema import EMAUpdater, ema_update
from dinolab.models.vit import DropPath

__all__ = ["MultiCropWrapper", "StudentTeacherWrapper"]


class MultiCropWrapper(nn.Module):
    """Backbone + head over a list of crops: list of V tensors [B, 3, H_v, W_v] -> [V*B, K].

    Consecutive crops with the same (H, W) are concatenated and go through the backbone in
    one pass (DINO orders crops globals first, then locals, so a step costs two backbone
    passes); the features of all crops are then concatenated and the head runs once. The
    output is crop-major: rows ``v*B : (v+1)*B`` belong to crop ``v``.

    Like official DINO, the backbone's own classifier (``backbone.fc`` of a ResNet,
    ``backbone.head`` of a ViT) is replaced by ``nn.Identity`` if it has one. A backbone that
    returns a tuple contributes its first element.

    Args:
        backbone: ``[N, 3, H, W] -> [N, D]`` feature extractor.
        head: ``[N, D] -> [N, K]`` projection head (e.g. :class:`DINOHead`).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        for name in ("fc", "head"):
            if hasattr(backbone, name) and isinstance(getattr(backbone, name), nn.Module):
                setattr(backbone, name, nn.Identity())
        self.backbone = backbone
        self.head = head

    def forward(
        self,
        x: torch.Tensor | Sequence[torch.Tensor],
        return_features: bool = False,
        masks: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | dict[str, torch.Tensor]:
        """Crops -> head logits [V*B, K] (and backbone features [V*B, D] if asked).

        Args:
            x: one tensor [B, 3, H, W] (treated as V=1) or a list of V such tensors.
            return_features: also return the backbone features, e.g. for KoLeo or a
                CLS-token loss that acts before the head.
            masks: iBOT masking (DINOv2): bool ``[B_0, N]`` for the first run of equal-sized
                crops (the global crops, ``B_0`` images in all, ``N`` patches each); True
                patches are replaced by the backbone's ``mask_token`` (the backbone must have
                ``forward_features(x, masks=...)``, as :class:`~dinolab.models.VisionTransformer`).
                The head then also runs on the patch tokens at the masked positions, in the
                same call as the CLS features, and a dict is returned: ``logits`` [V*B, K],
                ``features`` [V*B, D] and ``patch_logits_masked`` [M, K] (``M = masks.sum()``,
                rows in the order of ``patch_tokens[masks]``).
        """
        crops = [x] if isinstance(x, torch.Tensor) else list(x)
        if not crops:
            raise ValueError("MultiCropWrapper: got an empty list of crops")
        feats = []
        masked_patches: torch.Tensor | None = None
        start = 0
        while start < len(crops):
            end = start + 1
            size = tuple(crops[start].shape[-2:])
            while end < len(crops) and tuple(crops[end].shape[-2:]) == size:
                end += 1
            batch = torch.cat(crops[start:end])
            if start == 0 and masks is not None:
                masked_patches, cls = self._masked_pass(batch, masks)
                feats.append(cls)
            else:
                out = self.backbone(batch)
                feats.append(out[0] if isinstance(out, tuple) else out)
            start = end
        features = torch.cat(feats)
        if masked_patches is None:
            logits = self.head(features)
            return (logits, features) if return_features else logits
        # One head call for CLS features and masked patches (DINOv2 fuses them the same way).
        out = self.head(torch.cat([features, masked_patches]))
        n = features.shape[0]
        return {"logits": out[:n], "features": features, "patch_logits_masked": out[n:]}

    def _masked_pass(
        self, batch: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked backbone pass: ``[B, 3, H, W]``, ``[B, N]`` -> (``[M, D]`` masked patch
        tokens, ``[B, D]`` CLS tokens)."""
        if not hasattr(self.backbone, "forward_features") or not hasattr(
            self.backbone, "mask_token"
        ):
            raise ValueError(
                "MultiCropWrapper: masks need a backbone with forward_features(x, masks=...) "
                f"and a mask_token (a VisionTransformer), got {type(self.backbone).__name__}"
            )
        if masks.dtype != torch.bool or masks.ndim != 2 or masks.shape[0] != batch.shape[0]:
            raise ValueError(
                f"MultiCropWrapper: masks must be a bool tensor [B, N] with B={batch.shape[0]} "
                f"(the first run of equal-sized crops), got {masks.dtype} "
                f"{tuple(masks.shape)}"
            )
        out = self.backbone.forward_features(batch, masks=masks)
        return out["x_norm_patchtokens"][masks], out["x_norm_clstoken"]


def _disable_stochastic_layers(model: nn.Module) -> None:
    """Turn off drop-path and dropout: official DINO builds its teacher without drop_path."""
    for m in model.modules():
        if isinstance(m, DropPath):
            m.drop_prob = 0.0
        elif isinstance(m, nn.Dropout):
            m.p = 0.0


class StudentTeacherWrapper(nn.Module):
    """A student trained by gradient descent and a teacher that is never back-propagated.

    Two modes:

    * ``teacher=None`` (DINO self-distillation, ``is_ema=True``): the teacher is a deep copy
      of the student with ``requires_grad=False`` everywhere and stochastic depth / dropout
      switched off (official DINO builds its teacher without drop_path). After every
      optimiser step, :meth:`update_teacher` moves it towards the student by EMA,
      ``teacher <- m * teacher + (1 - m) * student`` (:func:`dinolab.ema.ema_update`, buffers
      such as BatchNorm statistics kept, as official DINO). The teacher follows the
      wrapper's train/eval mode, like DINO v1's teacher.
    * ``teacher`` given (knowledge distillation from a fixed model, ``is_ema=False``): the
      teacher may have any architecture; it is frozen (``requires_grad=False``), put in eval
      mode and kept there by :meth:`train`, and :meth:`update_teacher` leaves it unchanged
      and returns None. Passing a ``momentum_schedule`` as well is refused, because it would
      have no effect.

    Args:
        student: the trained network, e.g. a :class:`MultiCropWrapper`.
        teacher: None for an EMA teacher, or a fixed pretrained network.
        momentum_schedule: EMA momentum ``m`` in [0, 1]. A float (constant), a 1-D sequence /
            array with one value per update (indexed by the internal counter; past its end
            the last value is used), or a :class:`dinolab.ema.EMAUpdater` (its counter is set
            from the wrapper's before every step). Default: constant 0.996.

    Attributes:
        student, teacher: the two networks. is_ema: whether the teacher is an EMA copy.
        num_updates: [] long buffer counting :meth:`update_teacher` calls; saved in the
            state dict so a resumed run continues the schedule where it stopped.

    ``forward(x)`` is :meth:`forward_student`, so the wrapper can be given to DDP.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        momentum_schedule: float | Sequence[float] | np.ndarray | EMAUpdater | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.is_ema = teacher is None
        if teacher is None:
            teacher = copy.deepcopy(student)
            _disable_stochastic_layers(teacher)
        elif momentum_schedule is not None:
            raise ValueError(
                "StudentTeacherWrapper: a momentum_schedule was given with a fixed teacher; "
                "a given teacher is frozen and never averaged. Pass teacher=None for an EMA "
                "teacher, or drop momentum_schedule."
            )
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher
        if not self.is_ema:
            self.teacher.eval()
        self.momentum_schedule = self._check_schedule(momentum_schedule)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _check_schedule(
        schedule: float | Sequence[float] | np.ndarray | EMAUpdater | None,
    ) -> float | np.ndarray | EMAUpdater:
        if schedule is None:
            return 0.996
        if isinstance(schedule, EMAUpdater):
            return schedule
        if isinstance(schedule, int | float | np.floating):
            if not 0.0 <= float(schedule) <= 1.0:
                raise ValueError(
                    f"StudentTeacherWrapper: momentum must be in [0, 1], got {schedule!r}"
                )
            return float(schedule)
        try:
            arr = np.asarray(schedule, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(
                "StudentTeacherWrapper: momentum_schedule must be a float, a 1-D sequence of "
                f"floats or an EMAUpdater, got {type(schedule).__name__}"
            ) from err
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(
                "StudentTeacherWrapper: momentum_schedule must be a non-empty 1-D sequence, "
                f"got shape {arr.shape}"
            )
        if np.any(arr < 0) or np.any(arr > 1) or not np.all(np.isfinite(arr)):
            raise ValueError(
                "StudentTeacherWrapper: momentum_schedule values must lie in [0, 1], got "
                f"min {arr.min()!r}, max {arr.max()!r}"
            )
        return arr

    @property
    def momentum(self) -> float | None:
        """Momentum the next :meth:`update_teacher` will use (None for a fixed teacher)."""
        if not self.is_ema:
            return None
        step = int(self.num_updates)
        sched = self.momentum_schedule
        if isinstance(sched, EMAUpdater):
            sched.step_count = step
            return sched.momentum
        if isinstance(sched, np.ndarray):
            return float(sched[min(step, sched.size - 1)])
        return sched

    def forward(self, x: Any, **kwargs: Any) -> Any:
        """Same as :meth:`forward_student`."""
        return self.student(x, **kwargs)

    def forward_student(self, x: Any, **kwargs: Any) -> Any:
        """Student output for ``x`` (with gradients), e.g. [V*B, K] for V crops.

        Keyword arguments go to the student, e.g. ``return_features=True`` for a
        :class:`MultiCropWrapper`.
        """
        return self.student(x, **kwargs)

    @torch.no_grad()
    def forward_teacher(self, x: Any, **kwargs: Any) -> Any:
        """Teacher output for ``x``, computed under ``torch.no_grad()`` (no graph is built)."""
        return self.teacher(x, **kwargs)

    @torch.no_grad()
    def update_teacher(self) -> float | None:
        """One EMA step of the teacher towards the student; call once per iteration.

        Returns:
            The momentum used, or None (and nothing changes) for a fixed teacher.
        """
        if not self.is_ema:
            return None
        m = self.momentum
        if isinstance(self.momentum_schedule, EMAUpdater):
            self.momentum_schedule.step(self.teacher, self.student)
        else:
            ema_update(self.teacher, self.student, m)
        self.num_updates += 1
        return m

    def student_parameters(self) -> Iterator[nn.Parameter]:
        """The student's trainable parameters (``requires_grad=True``), for the optimiser."""
        return (p for p in self.student.parameters() if p.requires_grad)

    def train(self, mode: bool = True) -> StudentTeacherWrapper:
        """Set train/eval mode; a fixed teacher stays in eval mode."""
        super().train(mode)
        if not self.is_ema:
            self.teacher.eval()
        return self
