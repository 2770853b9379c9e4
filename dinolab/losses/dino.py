"""The DINO self-distillation loss: multi-crop cross-entropy against a centred, sharpened teacher.

For every pair of a teacher global crop ``i`` (of 2) and a student crop ``v != i`` (of
``ncrops``) the loss is the batch mean of ``-sum_k q_i[k] * log p_v[k]`` with

* ``q_i = softmax((t_i - c) / tau_t)``: the teacher's centred and sharpened distribution,
  detached from the graph;
* ``log p_v = log_softmax(s_v / tau_s)``: the student's log-probabilities (``tau_s = 0.1``);

and the ``2 * ncrops - 2`` pair losses are averaged. After the loss, the center ``c`` moves
towards the mean raw teacher logit: ``c <- m * c + (1 - m) * mean(t)``. This is official DINO's
``DINOLoss`` (facebookresearch/dino ``main_dino.py``); DINOv2's Sinkhorn-Knopp normalisation
of the teacher is available as ``teacher_centering="sinkhorn_knopp"``.

The module also holds the ``torch.distributed`` guards the other losses of this subpackage use:
every all-reduce happens only when a process group is initialised, so the same code runs on
one CPU and under ``torchrun``.

Examples:
    >>> import torch
    >>> loss_fn = DINOLoss(out_dim=32, ncrops=4, warmup_teacher_temp=0.04, teacher_temp=0.07,
    ...                    warmup_teacher_temp_epochs=5, nepochs=10)
    >>> student = torch.randn(4 * 8, 32, requires_grad=True)  # 2 global + 2 local crops, B=8
    >>> teacher = torch.randn(2 * 8, 32)                      # the 2 global crops only
    >>> loss = loss_fn(student, teacher, epoch=0)
    >>> loss.backward()
    >>> loss_fn.center.shape
    torch.Size([1, 32])
"""

from __future__ import annotations

import math
import operator
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from dinolab._checks import require_finite, require_int, require_positive, require_unit_interval
from dinolab.schedules import teacher_temp_schedule

__all__ = ["DINOLoss", "sinkhorn_knopp"]

TeacherCentering = Literal["centering", "sinkhorn_knopp", "none"]


# ---------------------------------------------------------------------------------------------
# Helpers shared by the losses of this subpackage (imported by ibot.py, koleo.py, ...).
# ---------------------------------------------------------------------------------------------


def _dist_ready() -> bool:
    """True when a ``torch.distributed`` process group can be used (available and initialised)."""
    return dist.is_available() and dist.is_initialized()


def _world_size() -> int:
    """Number of processes in the default group, 1 without ``torch.distributed``."""
    return dist.get_world_size() if _dist_ready() else 1


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place and return it; a no-op on a single process.

    Official DINO calls ``dist.all_reduce`` unconditionally, which fails outside ``torchrun``;
    the guard keeps the single-process result identical (a sum over one process).
    """
    if _dist_ready():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over all processes in place; a no-op on a single process."""
    if _dist_ready():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


# ---------------------------------------------------------------------------------------------
# Sinkhorn-Knopp (DINOv2)
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def sinkhorn_knopp(
    teacher_output: torch.Tensor, teacher_temp: float, n_iterations: int = 3
) -> torch.Tensor:
    """Teacher targets by Sinkhorn-Knopp, as DINOv2's ``sinkhorn_knopp_teacher``.

    Starting from ``Q = exp(t / teacher_temp)`` ``[K, B_total]`` (no center), the matrix is
    alternately scaled so that every prototype (row of ``Q``) holds mass ``1/K``, summed over
    the samples of all processes, and every sample (column) holds mass ``1/B_total``;
    ``n_iterations`` rounds, the last one normalising the samples. So each returned ROW (one
    sample) sums to 1 exactly and each COLUMN (one prototype) sums to about ``B_total / K``
    (exactly only in the limit of many iterations).

    Computed in float32 without autograd, in the log domain: each normalisation subtracts a
    log-sum-exp instead of dividing by a sum. The result is DINOv2's up to round-off (DINOv2's
    first division by the total mass is a constant the row step cancels), but ``exp`` can
    neither overflow nor underflow a whole row or column to 0, which in DINOv2 turns sharp
    temperatures (``|t| / tau`` beyond ~88) into NaN.

    Args:
        teacher_output: ``[B, K]`` raw teacher logits (this process's share of the batch).
        teacher_temp: temperature ``> 0``.
        n_iterations: rounds of row/column normalisation, ``>= 1`` (DINOv2 uses 3).

    Returns:
        ``[B, K]`` float32 assignment probabilities; each row sums to 1.

    Examples:
        >>> q = sinkhorn_knopp(torch.randn(8, 16), teacher_temp=0.07)
        >>> torch.allclose(q.sum(dim=1), torch.ones(8))
        True
    """
    owner = "sinkhorn_knopp"
    temp = require_positive(owner, "teacher_temp", teacher_temp)
    n_iterations = require_int(owner, "n_iterations", n_iterations, minimum=1)
    if teacher_output.ndim != 2:
        raise ValueError(
            f"{owner}: teacher_output must be 2-D [B, K], got shape {tuple(teacher_output.shape)}"
        )
    if teacher_output.shape[0] == 0 or teacher_output.shape[1] == 0:
        raise ValueError(f"{owner}: teacher_output is empty, shape {tuple(teacher_output.shape)}")
    log_q = (teacher_output.float() / temp).t()  # [K, B]: prototypes along rows, as in DINOv2
    log_k = math.log(log_q.shape[0])
    log_b = math.log(log_q.shape[1] * _world_size())
    for _ in range(n_iterations):
        log_q = log_q - _distributed_logsumexp_rows(log_q) - log_k
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - log_b
    return torch.exp(log_q + log_b).t()


def _distributed_logsumexp_rows(x: torch.Tensor) -> torch.Tensor:
    """``log sum_j exp(x[i, j])`` over the columns of every process, ``[K, B] -> [K, 1]``."""
    row_max = _all_reduce_max(x.amax(dim=1, keepdim=True))
    row_sum = _all_reduce_sum(torch.exp(x - row_max).sum(dim=1, keepdim=True))
    return row_max + torch.log(row_sum)


# ---------------------------------------------------------------------------------------------
# DINO loss
# ---------------------------------------------------------------------------------------------


class DINOLoss(nn.Module):
    """Official DINO loss with per-epoch teacher temperature and an EMA center.

    Args:
        out_dim: ``K``, the number of prototypes (head outputs).
        ncrops: crops per image seen by the student, ``2 + local_crops_number`` (>= 2).
        warmup_teacher_temp: teacher temperature at epoch 0.
        teacher_temp: teacher temperature after the warm-up.
        warmup_teacher_temp_epochs: epochs of linear warm-up from ``warmup_teacher_temp`` to
            ``teacher_temp`` (official default 0; the paper's long runs use 30).
        nepochs: total training epochs; ``epoch`` must lie in ``[0, nepochs)``.
        student_temp: student temperature ``tau_s`` (0.1).
        center_momentum: ``m`` of the center update ``c <- m c + (1 - m) mean(t)`` (0.9).
        teacher_centering: ``"centering"`` (official DINO), ``"sinkhorn_knopp"`` (DINOv2's
            choice for large models: the teacher targets come from :func:`sinkhorn_knopp` and
            the center is neither used nor updated, as in DINOv2) or ``"none"`` (plain
            ``softmax(t / tau_t)``, center untouched; only for showing collapse in the course).
        check_finite: validate that the inputs are finite. The check costs one host-device
            synchronisation per call; set False in tight GPU loops once a run is known good.

    Attributes:
        center: buffer ``[1, K]`` (saved in ``state_dict`` like official checkpoints'
            ``dino_loss`` entry).
        teacher_temp_schedule: ``[nepochs]`` NumPy array of teacher temperatures.
        last_teacher_temp: temperature used by the latest :meth:`forward` (for logging).

    Shapes:
        ``student_output [ncrops * B, K]`` crop-major (all images of crop 0, then crop 1, ...,
        the first two crops being the global ones); ``teacher_output [2 * B, K]``.

    Examples:
        >>> loss_fn = DINOLoss(64, ncrops=10, warmup_teacher_temp=0.04, teacher_temp=0.04,
        ...                    warmup_teacher_temp_epochs=0, nepochs=100)
        >>> s, t = torch.randn(10 * 4, 64), torch.randn(2 * 4, 64)
        >>> loss = loss_fn(s, t, epoch=3)
        >>> loss_fn.teacher_temp_at(3)
        0.04
    """

    center: torch.Tensor

    def __init__(
        self,
        out_dim: int,
        ncrops: int,
        warmup_teacher_temp: float,
        teacher_temp: float,
        warmup_teacher_temp_epochs: int,
        nepochs: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        teacher_centering: TeacherCentering = "centering",
        *,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        owner = "DINOLoss"
        self.out_dim = require_int(owner, "out_dim", out_dim)
        self.ncrops = require_int(owner, "ncrops", ncrops, minimum=2)
        self.nepochs = require_int(owner, "nepochs", nepochs)
        warmup_epochs = require_int(
            owner, "warmup_teacher_temp_epochs", warmup_teacher_temp_epochs, minimum=0
        )
        if warmup_epochs > self.nepochs:
            raise ValueError(
                f"{owner}: warmup_teacher_temp_epochs={warmup_epochs} exceeds nepochs={nepochs}"
            )
        require_positive(owner, "warmup_teacher_temp", warmup_teacher_temp)
        require_positive(owner, "teacher_temp", teacher_temp)
        self.student_temp = require_positive(owner, "student_temp", student_temp)
        self.center_momentum = require_unit_interval(owner, "center_momentum", center_momentum)
        if teacher_centering not in ("centering", "sinkhorn_knopp", "none"):
            raise ValueError(
                f"{owner}: teacher_centering must be 'centering', 'sinkhorn_knopp' or 'none', "
                f"got {teacher_centering!r}"
            )
        self.teacher_centering: TeacherCentering = teacher_centering
        self.check_finite = bool(check_finite)
        self.register_buffer("center", torch.zeros(1, self.out_dim))
        self.teacher_temp_schedule: np.ndarray = teacher_temp_schedule(
            warmup_teacher_temp, teacher_temp, warmup_epochs, self.nepochs
        )
        self.last_teacher_temp: float | None = None

    # -- pieces reusable by monitors and the training engine ---------------------------------

    def teacher_temp_at(self, epoch: int) -> float:
        """Teacher temperature of ``epoch`` (per-epoch schedule, as official DINO)."""
        try:
            e = operator.index(epoch)
        except TypeError:
            raise ValueError(f"DINOLoss: epoch must be an integer, got {epoch!r}") from None
        if not 0 <= e < self.nepochs:
            raise ValueError(f"DINOLoss: epoch={epoch} is outside [0, nepochs={self.nepochs})")
        return float(self.teacher_temp_schedule[e])

    def student_log_probs(self, student_output: torch.Tensor) -> torch.Tensor:
        """``log_softmax(student_output / student_temp)``, ``[rows, K]`` -> ``[rows, K]``."""
        return F.log_softmax(student_output / self.student_temp, dim=-1)

    @torch.no_grad()
    def teacher_probs(
        self, teacher_output: torch.Tensor, epoch: int, teacher_temp: float | None = None
    ) -> torch.Tensor:
        """Teacher targets ``[2B, K]``: centred + sharpened softmax (or Sinkhorn-Knopp).

        Does not update the center. ``teacher_temp`` overrides the per-epoch schedule (DINOv2
        steps the temperature per iteration; see
        :func:`dinolab.schedules.teacher_temp_schedule_per_iter`).
        """
        temp = self._temperature(epoch, teacher_temp)
        if self.teacher_centering == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_output, temp, n_iterations=3)
        if self.teacher_centering == "none":
            return F.softmax(teacher_output / temp, dim=-1)
        return F.softmax((teacher_output - self.center) / temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """``c <- m c + (1 - m) * mean of the raw teacher logits`` (rows of every process)."""
        self._apply_center_update(self._batch_sum(teacher_output), teacher_output.shape[0])

    # -- the loss -------------------------------------------------------------------------------

    def forward(
        self,
        student_output: torch.Tensor,
        teacher_output: torch.Tensor,
        epoch: int,
        *,
        teacher_temp: float | None = None,
    ) -> torch.Tensor:
        """DINO loss of one batch; updates the center afterwards.

        Args:
            student_output: ``[ncrops * B, K]`` student logits, crop-major.
            teacher_output: ``[2 * B, K]`` teacher logits of the two global crops (gradients
                never flow into it).
            epoch: current epoch, selects the teacher temperature.
            teacher_temp: optional temperature overriding the schedule.

        Returns:
            Scalar loss (nats), the mean over the ``2 * ncrops - 2`` crop pairs.
        """
        batch = self._check_shapes(student_output, teacher_output)
        q = self.teacher_probs(teacher_output, epoch, teacher_temp)
        log_p = self.student_log_probs(student_output)
        loss = _multicrop_cross_entropy(log_p, q, self.ncrops, batch)

        batch_sum = self._batch_sum(teacher_output)
        if self.check_finite:
            # One sync: any NaN/Inf input makes the loss or the teacher sum non-finite.
            if not bool(torch.isfinite(loss) & torch.isfinite(batch_sum).all()):
                self._raise_nonfinite(student_output, teacher_output)
        if self.teacher_centering == "centering":
            self._apply_center_update(batch_sum, teacher_output.shape[0])
        return loss

    # -- internals --------------------------------------------------------------------------------

    def _temperature(self, epoch: int, teacher_temp: float | None) -> float:
        temp = self.teacher_temp_at(epoch)
        if teacher_temp is not None:
            temp = require_positive("DINOLoss", "teacher_temp", teacher_temp)
        self.last_teacher_temp = temp
        return temp

    @staticmethod
    def _batch_sum(teacher_output: torch.Tensor) -> torch.Tensor:
        return teacher_output.detach().float().sum(dim=0, keepdim=True)

    def _apply_center_update(self, batch_sum: torch.Tensor, rows: int) -> None:
        batch_sum = _all_reduce_sum(batch_sum.clone())
        batch_center = batch_sum / (rows * _world_size())
        m = self.center_momentum
        self.center.mul_(m).add_(batch_center.to(self.center.dtype), alpha=1.0 - m)

    def _check_shapes(self, student_output: torch.Tensor, teacher_output: torch.Tensor) -> int:
        owner = "DINOLoss"
        for name, t in (("student_output", student_output), ("teacher_output", teacher_output)):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{owner}: {name} must be a torch.Tensor, got {type(t).__name__}")
            if t.ndim != 2:
                raise ValueError(f"{owner}: {name} must be 2-D [rows, K], got {tuple(t.shape)}")
            if t.shape[1] != self.out_dim:
                raise ValueError(
                    f"{owner}: {name} has {t.shape[1]} columns, expected out_dim={self.out_dim}"
                )
            if not t.is_floating_point():
                raise ValueError(f"{owner}: {name} must be floating point, got {t.dtype}")
        rows = student_output.shape[0]
        if rows == 0 or rows % self.ncrops:
            raise ValueError(
                f"{owner}: student_output has {rows} rows, not a positive multiple of "
                f"ncrops={self.ncrops}"
            )
        batch = rows // self.ncrops
        if teacher_output.shape[0] != 2 * batch:
            raise ValueError(
                f"{owner}: teacher_output has {teacher_output.shape[0]} rows, expected "
                f"2 * B = {2 * batch} (student_output has {rows} rows = ncrops={self.ncrops} "
                f"x B={batch})"
            )
        return batch

    @staticmethod
    def _raise_nonfinite(student_output: torch.Tensor, teacher_output: torch.Tensor) -> None:
        require_finite(
            "DINOLoss", student_output=student_output.detach(), teacher_output=teacher_output
        )
        raise ValueError(
            "DINOLoss: the inputs are finite but the loss or the teacher mean is not; the "
            "logits overflow at this temperature (expected |logits| well below 1e30)"
        )


def _multicrop_cross_entropy(
    log_p: torch.Tensor, q: torch.Tensor, ncrops: int, batch: int
) -> torch.Tensor:
    """Mean over pairs (i in {0, 1}, v != i) of ``batch-mean(-sum_k q_i log_p_v)``.

    Equivalent to official DINO's double loop, without one kernel pair per crop pair:
    ``sum_i sum_{v != i} q_i . log_p_v = (q_0 + q_1) . sum_v log_p_v - sum_i q_i . log_p_i``.
    The first term is a single matrix-vector product over all student crops.

    Args:
        log_p: ``[ncrops * B, K]`` student log-probabilities, crop-major.
        q: ``[2 * B, K]`` teacher probabilities.
    """
    # At least float32, like official DINO under autocast (its softmax outputs are float32):
    # a half-precision dot product over B*K terms would lose the small teacher probabilities.
    dtype = torch.promote_types(log_p.dtype, torch.float32)
    k = log_p.shape[1]
    with torch.autocast(device_type=log_p.device.type, enabled=False):
        log_p_views = log_p.to(dtype).reshape(ncrops, batch * k)
        q_views = q.to(dtype).reshape(2, batch * k)
        all_views = log_p_views @ (q_views[0] + q_views[1])  # [ncrops]
        same_view = torch.linalg.vecdot(log_p_views[:2], q_views)  # [2]
    n_pairs = 2 * ncrops - 2
    return -(all_views.sum() - same_view.sum()) / (batch * n_pairs)
