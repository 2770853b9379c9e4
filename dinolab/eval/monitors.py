"""Collapse and training-health monitors for self-distillation.

The DINO loss is a cross-entropy, and a cross-entropy splits into two readable parts
(DINO paper §5.3, Fig. 7):

``H(P_t, P_s) = h(P_t) + KL(P_t || P_s)``

* ``h(P_t)``, the teacher's entropy, tells which collapse is happening: near 0 every image
  puts its mass on one dominant prototype (no centering); near ``log K`` the teacher outputs the
  uniform distribution (no sharpening).
* ``KL(P_t || P_s)`` is what the student can still learn. It goes to 0 under either collapse,
  because a constant target is trivially matched; with both centering and sharpening it stays
  positive.

All entropies and divergences are in nats. The functional monitors keep autograd (they are
plain formulas); :func:`collapse_metrics` detaches and returns Python floats for logging.

Beyond the head's distributions, :func:`feature_std` and :func:`cosine_spread` check the
backbone features (a collapsed encoder maps every image to the same direction), and
:func:`parameter_divergence` measures how far an EMA teacher trails its student.

Examples:
    >>> import math, torch
    >>> uniform = torch.full((4, 8), 1 / 8)
    >>> round(float(teacher_entropy(uniform)), 4) == round(math.log(8), 4)
    True
    >>> round(float(kl_to_uniform(uniform)), 6)  # float32 rounding aside, exactly 0
    0.0
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from dinolab.ema import unwrap_model

if TYPE_CHECKING:
    from dinolab.losses.dino import DINOLoss

__all__ = [
    "teacher_entropy",
    "kl_to_uniform",
    "kl_teacher_student",
    "collapse_metrics",
    "parameter_divergence",
    "CosineSpread",
    "cosine_spread",
    "feature_std",
]

# Probabilities must sum to 1 per row within this; a wider gap means logits were passed.
_ROW_SUM_ATOL = 1e-3


def _check_probs(owner: str, name: str, probs: torch.Tensor) -> None:
    if not isinstance(probs, torch.Tensor):
        raise ValueError(f"{owner}: {name} must be a torch.Tensor, got {type(probs).__name__}")
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(
            f"{owner}: {name} must be a non-empty 2-D [B, K] tensor, got shape "
            f"{tuple(probs.shape)}"
        )
    if not probs.is_floating_point():
        raise ValueError(f"{owner}: {name} must be floating point, got {probs.dtype}")
    detached = probs.detach()
    if not bool(torch.isfinite(detached).all()):
        raise ValueError(f"{owner}: {name} contains NaN or infinite values")
    if bool((detached < 0).any()):
        raise ValueError(
            f"{owner}: {name} has negative entries (min {float(detached.min()):.3g}); expected "
            "probabilities (softmax outputs), not logits"
        )
    row_sums = detached.double().sum(dim=1)
    worst = float((row_sums - 1).abs().max())
    if worst > _ROW_SUM_ATOL:
        raise ValueError(
            f"{owner}: {name} rows must sum to 1 (probabilities), but one sums to "
            f"{float(row_sums[(row_sums - 1).abs().argmax()]):.4g}; pass softmax outputs, "
            "not logits"
        )


def teacher_entropy(teacher_probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy ``h(P_t) = mean_b -sum_k p_bk log p_bk`` of a batch of distributions, nats.

    ``0 * log 0`` counts as 0, so one-hot rows have entropy 0 exactly.

    Args:
        teacher_probs: ``[B, K]`` probabilities, each row summing to 1.

    Returns:
        Scalar tensor in ``[0, log K]``.
    """
    _check_probs("teacher_entropy", "teacher_probs", teacher_probs)
    p = teacher_probs.float()
    return -torch.special.xlogy(p, p).sum(dim=1).mean()


def kl_to_uniform(probs: torch.Tensor) -> torch.Tensor:
    """Mean ``KL(P || uniform) = log K - h(P)``, nats: 0 for a uniform output, ``log K`` one-hot.

    Args:
        probs: ``[B, K]`` probabilities.

    Returns:
        Scalar tensor in ``[0, log K]``.
    """
    _check_probs("kl_to_uniform", "probs", probs)
    return math.log(probs.shape[1]) - teacher_entropy(probs)


def kl_teacher_student(
    teacher_probs: torch.Tensor, student_log_probs: torch.Tensor
) -> torch.Tensor:
    """Mean ``KL(P_t || P_s) = mean_b sum_k p_t (log p_t - log p_s)``, nats.

    Args:
        teacher_probs: ``[B, K]`` teacher probabilities (rows sum to 1).
        student_log_probs: ``[B, K]`` student LOG-probabilities (``log_softmax`` outputs), so
            that the divergence is finite even where the student's probability underflows.

    Returns:
        Scalar tensor ``>= 0``.
    """
    owner = "kl_teacher_student"
    _check_probs(owner, "teacher_probs", teacher_probs)
    if not isinstance(student_log_probs, torch.Tensor) or (
        student_log_probs.shape != teacher_probs.shape
    ):
        shape = getattr(student_log_probs, "shape", None)
        raise ValueError(
            f"{owner}: student_log_probs must have the teacher's shape "
            f"{tuple(teacher_probs.shape)}, got {tuple(shape) if shape is not None else shape}"
        )
    mass = student_log_probs.detach().double().exp().sum(dim=1)
    if float((mass - 1).abs().max()) > _ROW_SUM_ATOL:
        raise ValueError(
            f"{owner}: exp(student_log_probs) rows must sum to 1, one sums to "
            f"{float(mass[(mass - 1).abs().argmax()]):.4g}; pass log_softmax outputs, not logits"
        )
    q = teacher_probs.float()
    # Where the teacher puts no mass the term is 0, even if the student's log-prob is -inf.
    cross = torch.where(q > 0, q * student_log_probs.float(), torch.zeros_like(q))
    return (torch.special.xlogy(q, q) - cross).sum(dim=1).mean()


@torch.no_grad()
def collapse_metrics(
    teacher_output: torch.Tensor,
    student_output: torch.Tensor,
    dino_loss: DINOLoss,
    epoch: int,
) -> dict[str, float]:
    """The DINO paper's collapse diagnostics for one batch, with the loss's own settings.

    The teacher targets come from ``dino_loss.teacher_probs`` (its current center and the
    teacher temperature of ``epoch``) and the student distributions from
    ``dino_loss.student_log_probs``. Teacher global crop ``i`` is paired with every student crop
    ``v != i``, as in the loss. Call it BEFORE ``dino_loss(...)`` on the same batch to measure
    exactly the targets that loss call uses (the loss moves the center afterwards); then
    ``cross_entropy`` equals the loss value.

    Args:
        teacher_output: ``[2B, K]`` teacher logits of the two global crops, crop-major.
        student_output: ``[V*B, K]`` student logits, crop-major, ``V = dino_loss.ncrops``.
        dino_loss: a :class:`dinolab.losses.DINOLoss`; its center is read, never updated.
        epoch: selects the teacher temperature.

    Returns:
        ``{"teacher_entropy": h(P_t), "kl_to_uniform": log K - h(P_t),
        "kl_teacher_student": mean KL over the crop pairs, "cross_entropy": their sum,
        "student_entropy": mean h(P_s) over all student crops, "teacher_temp": tau_t,
        "teacher_max_prob": mean over rows of max_k P_t, "teacher_batch_entropy": h of the
        batch-mean teacher distribution}``, all Python floats (nats). The two entropies tell
        the collapses apart: per image (``teacher_entropy``) and of the batch mean both near
        ``log K`` is the uniform collapse; both near 0, every image on one prototype; a low
        per-image entropy with a high batch-mean one is the healthy state (sharp targets,
        spread over the prototypes).

    Raises:
        ValueError: the row counts do not match ``2B`` and ``ncrops * B``, or ``K`` differs.
    """
    owner = "collapse_metrics"
    for name, t in (("teacher_output", teacher_output), ("student_output", student_output)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{owner}: {name} must be a 2-D [rows, K] tensor, got {shape}")
    ncrops = int(dino_loss.ncrops)
    rows = student_output.shape[0]
    if rows == 0 or rows % ncrops:
        raise ValueError(
            f"{owner}: student_output has {rows} rows, not a positive multiple of "
            f"dino_loss.ncrops={ncrops}"
        )
    batch = rows // ncrops
    if teacher_output.shape[0] != 2 * batch:
        raise ValueError(
            f"{owner}: teacher_output has {teacher_output.shape[0]} rows, expected 2 * B = "
            f"{2 * batch} (student_output has {rows} rows = ncrops={ncrops} x B={batch})"
        )
    if teacher_output.shape[1] != student_output.shape[1]:
        raise ValueError(
            f"{owner}: teacher_output has K={teacher_output.shape[1]} columns but "
            f"student_output has K={student_output.shape[1]}"
        )

    q = dino_loss.teacher_probs(teacher_output.detach(), epoch).float()
    log_p = dino_loss.student_log_probs(student_output.detach()).float()
    q_views = q.chunk(2)
    log_p_views = log_p.chunk(ncrops)

    kl_terms = [
        kl_teacher_student(q_views[i], log_p_views[v])
        for i in range(2)
        for v in range(ncrops)
        if v != i
    ]
    entropy = teacher_entropy(q)
    kl = torch.stack(kl_terms).mean()
    p = log_p.exp()
    student_entropy = -torch.special.xlogy(p, p).sum(dim=1).mean()
    return {
        "teacher_entropy": float(entropy),
        "kl_to_uniform": math.log(q.shape[1]) - float(entropy),
        "kl_teacher_student": float(kl),
        "cross_entropy": float(entropy + kl),
        "student_entropy": float(student_entropy),
        "teacher_temp": float(dino_loss.teacher_temp_at(epoch)),
        "teacher_max_prob": float(q.max(dim=1).values.mean()),
        "teacher_batch_entropy": float(teacher_entropy(q.mean(dim=0, keepdim=True))),
    }


@torch.no_grad()
def parameter_divergence(student: nn.Module, teacher: nn.Module) -> float:
    """Relative L2 distance ``||theta_s - theta_t|| / ||theta_s||`` over all floating parameters.

    Parameters are paired by name (DDP / DataParallel wrappers are unwrapped), and the norms
    are taken over the concatenation of every parameter, in float64. 0 for identical
    weights; for an EMA teacher it grows while the student moves faster than the momentum lets
    the teacher follow.

    Args:
        student: the trained network.
        teacher: a network with the same parameter names and shapes (e.g. its EMA copy).

    Returns:
        A float ``>= 0`` (0 when the student's weights are all zero and equal the teacher's).

    Raises:
        ValueError: the parameter names or shapes differ.

    Examples:
        >>> import copy
        >>> net = nn.Linear(3, 2)
        >>> parameter_divergence(net, copy.deepcopy(net))
        0.0
    """
    s_items = list(unwrap_model(student).named_parameters())
    t_items = dict(unwrap_model(teacher).named_parameters())
    s_names = [name for name, _ in s_items]
    if set(s_names) != set(t_items) or len(s_names) != len(t_items):
        only_s = sorted(set(s_names) - set(t_items))[:5]
        only_t = sorted(set(t_items) - set(s_names))[:5]
        raise ValueError(
            f"parameter_divergence: parameter names differ; only in the student: {only_s}, "
            f"only in the teacher: {only_t}; expected two copies of one architecture"
        )
    diff_sq = torch.zeros((), dtype=torch.float64)
    norm_sq = torch.zeros((), dtype=torch.float64)
    for name, s in s_items:
        t = t_items[name]
        if s.shape != t.shape:
            raise ValueError(
                f"parameter_divergence: {name!r} has shape {tuple(s.shape)} in the student but "
                f"{tuple(t.shape)} in the teacher"
            )
        if not s.is_floating_point():
            continue
        s64 = s.detach().double()
        diff_sq += (s64 - t.detach().to(s64.device).double()).pow(2).sum().cpu()
        norm_sq += s64.pow(2).sum().cpu()
    if float(norm_sq) == 0.0:
        return 0.0 if float(diff_sq) == 0.0 else math.inf
    return math.sqrt(float(diff_sq) / float(norm_sq))


class CosineSpread(NamedTuple):
    """Mean and standard deviation of the pairwise cosine similarities of a batch."""

    mean: float
    std: float


def _check_features(owner: str, features: torch.Tensor) -> None:
    if not isinstance(features, torch.Tensor) or features.ndim != 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else None
        raise ValueError(f"{owner}: features must be a 2-D [B, D] tensor, got shape {shape}")
    if features.shape[0] < 2 or features.shape[1] == 0:
        raise ValueError(
            f"{owner}: features need at least 2 rows and 1 column, got shape "
            f"{tuple(features.shape)}"
        )
    if not bool(torch.isfinite(features.detach()).all()):
        raise ValueError(f"{owner}: features contain NaN or infinite values")


@torch.no_grad()
def cosine_spread(features: torch.Tensor) -> CosineSpread:
    """Mean and std of the cosine similarity over all pairs ``i != j`` of a batch.

    Healthy features of different images spread out (mean near 0 for wide random-like
    features, std clearly above 0); a collapsed encoder gives mean near 1 and std near 0.

    Args:
        features: ``[B, D]`` features, ``B >= 2``; any scale (they are L2-normalised here).

    Returns:
        :class:`CosineSpread` ``(mean, std)``; the std is the population std over the
        ``B * (B - 1)`` off-diagonal entries.
    """
    _check_features("cosine_spread", features)
    z = F.normalize(features.detach().double(), dim=1)
    sim = z @ z.T
    off_diagonal = sim[~torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)]
    return CosineSpread(float(off_diagonal.mean()), float(off_diagonal.std(correction=0)))


@torch.no_grad()
def feature_std(features: torch.Tensor) -> float:
    """Mean over dimensions of the per-dimension std of L2-normalised features (SimSiam's check).

    For features spread over the unit sphere the value is about ``1 / sqrt(D)``; it falls to
    0 when every image is mapped to the same direction (SimSiam, Chen & He 2021, §4.1).

    Args:
        features: ``[B, D]`` features, ``B >= 2``; L2-normalised here.

    Returns:
        Float ``>= 0``: ``mean_d std_b(z_bd)`` with ``z = features / ||features||`` and the
        unbiased (``B - 1``) standard deviation.
    """
    _check_features("feature_std", features)
    z = F.normalize(features.detach().double(), dim=1)
    return float(z.std(dim=0, correction=1).mean())
