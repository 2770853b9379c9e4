"""A Log-Euclidean loss between symmetric positive-definite (SPD) matrices of token features.

Seed 002 replaces DINOv3's Gram anchoring with a distance on the SPD manifold: from the
patch tokens of the student and of the frozen teacher, build one SPD matrix per image, map
both to the flat space of symmetric matrices with the matrix logarithm, and compare them with
the Frobenius norm there, the Log-Euclidean distance (Arsigny et al. 2006):

    d(A, B) = || log A - log B ||_F

The loss is its square d(A, B)^2, averaged over the batch (as a mean squared error is a squared
Euclidean distance).

``log A = U diag(log lambda) U^T`` from the symmetric eigendecomposition ``A = U diag(lambda)
U^T``. Its gradient needs care: the autograd of ``torch.linalg.eigh`` divides by eigenvalue
gaps ``lambda_i - lambda_j`` and returns Inf/NaN when eigenvalues repeat (the identity, the
``eps * I`` floor of a rank-deficient Gram matrix). :func:`spd_log` therefore has its own
backward, the Daleckii-Krein formula

    dL/dA = U (F o (U^T sym(G) U)) U^T,
    F_ij = (log lambda_i - log lambda_j) / (lambda_i - lambda_j),  F_ii = 1 / lambda_i,

whose divided differences have a finite limit ``1 / lambda`` when two eigenvalues meet.

Everything is computed in float64: an ``eps = 1e-4`` floor next to eigenvalues of order ``N``
spans 6-7 decades, where float32 eigenvectors lose most of their digits.

Examples:
    >>> import torch
    >>> loss_fn = SPDLogEuclideanLoss(kind="gram")
    >>> student = torch.randn(2, 16, 32, requires_grad=True)  # [B, N, D_student]
    >>> teacher = torch.randn(2, 16, 64)                      # [B, N, D_teacher], other width
    >>> loss = loss_fn(student, teacher)
    >>> loss.backward()
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from dinolab._checks import require_finite, require_positive

__all__ = ["spd_matrix", "spd_log", "log_euclidean_distance", "SPDLogEuclideanLoss"]

SPDKind = Literal["gram", "covariance"]

# Eigenvalue gaps below this fraction of the eigenvalue count as "equal" in the backward. The
# log1p form below is accurate for any non-zero gap, so only (near-)exact ties need the limit.
_TIE_RTOL = 1e-12


def spd_matrix(x: torch.Tensor, kind: SPDKind = "gram", eps: float = 1e-4) -> torch.Tensor:
    """One SPD matrix per image from its tokens.

    Args:
        x: ``[..., N, D]`` tokens (``N`` patches of width ``D``), e.g. ``[B, N, D]``.
        kind: ``"gram"``: L2-normalise each token and take ``x x^T`` ``[..., N, N]``, the cosine
            similarities between patches; it does not depend on ``D``, so a D=384 student can
            match a D=1024 teacher with the same patch grid. ``"covariance"``: the channel
            covariance ``(x - mean)^T (x - mean) / (N - 1)`` ``[..., D, D]`` (needs ``N >= 2``
            and equal widths on both sides of a loss).
        eps: added to the diagonal (``+ eps * I``) so that rank-deficient matrices (``N > D`` for
            the Gram matrix, ``N <= D`` for the covariance) are positive definite.

    Returns:
        ``[..., N, N]`` (gram) or ``[..., D, D]`` (covariance), exactly symmetric, dtype of ``x``.
    """
    owner = "spd_matrix"
    if kind not in ("gram", "covariance"):
        raise ValueError(f"{owner}: kind must be 'gram' or 'covariance', got {kind!r}")
    eps = require_positive(owner, "eps", eps)
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{owner}: x must be a tensor [..., N, D] (>= 2 dims), got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{owner}: x must be floating point, got {x.dtype}")
    n, d = x.shape[-2], x.shape[-1]
    if n == 0 or d == 0:
        raise ValueError(f"{owner}: x has an empty token axis, shape {tuple(x.shape)}")
    if kind == "gram":
        xn = F.normalize(x, p=2, dim=-1)
        mat = xn @ xn.mT
        size = n
    else:
        if n < 2:
            raise ValueError(f"{owner}: the covariance needs N >= 2 tokens, got N={n}")
        xc = x - x.mean(dim=-2, keepdim=True)
        mat = xc.mT @ xc / (n - 1)
        size = d
    mat = 0.5 * (mat + mat.mT)  # a GEMM need not be bitwise symmetric
    return mat + eps * torch.eye(size, dtype=x.dtype, device=x.device)


def _log_divided_differences(lam: torch.Tensor) -> torch.Tensor:
    """``F_ij = (log l_i - log l_j) / (l_i - l_j)``, ``1 / l`` on ties; ``[..., n] -> [..., n, n]``.

    ``log1p((l_i - l_j) / l_j) / (l_i - l_j)`` equals the divided difference but stays accurate
    when the gap is tiny, where ``log l_i - log l_j`` would cancel. Exact (or near-exact) ties
    take the limit ``2 / (l_i + l_j)``, i.e. ``1 / l_i`` for equal eigenvalues, keeping ``F``
    symmetric.
    """
    li = lam.unsqueeze(-1)
    lj = lam.unsqueeze(-2)
    gap = li - lj
    tie = gap.abs() <= _TIE_RTOL * torch.maximum(li, lj)
    safe_gap = torch.where(tie, torch.ones_like(gap), gap)
    divided = torch.log1p(safe_gap / lj) / safe_gap
    f = torch.where(tie, 2.0 / (li + lj), divided)
    return 0.5 * (f + f.mT)


class _SPDLog(torch.autograd.Function):
    """Matrix logarithm of SPD matrices with a Daleckii-Krein backward (float64 inside)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        a64 = a.detach().to(torch.float64)
        a64 = 0.5 * (a64 + a64.mT)
        lam, u = torch.linalg.eigh(a64)
        _check_positive_definite(lam, a.dtype)
        lam = lam.clamp(min=eps)
        out = (u * torch.log(lam).unsqueeze(-2)) @ u.mT
        ctx.save_for_backward(u, lam)
        ctx.in_dtype = a.dtype
        return out.to(a.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        u, lam = ctx.saved_tensors
        g = grad_out.to(torch.float64)
        g = 0.5 * (g + g.mT)  # log acts on symmetric matrices: only the symmetric part counts
        inner = u.mT @ g @ u
        grad_a = u @ (_log_divided_differences(lam) * inner) @ u.mT
        return grad_a.to(ctx.in_dtype), None


def _check_positive_definite(lam: torch.Tensor, dtype: torch.dtype) -> None:
    """Raise ValueError when an eigenvalue is clearly negative (beyond round-off of ``dtype``)."""
    scale = lam.abs().amax(dim=-1).clamp(min=1.0)
    tol = 1e3 * torch.finfo(dtype).eps * scale
    bad = lam[..., 0] < -tol
    if bool(bad.any()):
        index = int(torch.nonzero(bad.reshape(-1))[0])
        smallest = float(lam[..., 0].reshape(-1)[index])
        raise ValueError(
            f"spd_log: matrix {index} of the batch is not positive definite: smallest eigenvalue "
            f"{smallest:.3g}; expected eigenvalues > 0 (add eps * I, see spd_matrix)"
        )


def spd_log(a: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Matrix logarithm of SPD matrices, with finite gradients at repeated eigenvalues.

    Args:
        a: ``[..., n, n]`` symmetric positive-definite matrices (float32 or float64).
        eps: eigenvalues below ``eps`` (round-off of a singular matrix) are raised to ``eps``;
            the gradient is then that of the clamped matrix.

    Returns:
        ``[..., n, n]`` symmetric matrices ``log a``, dtype of ``a`` (computed in float64).

    Raises:
        ValueError: not square, NaN/Inf, not symmetric (relative tolerance ``1e3 * machine
            eps`` of the dtype), or an eigenvalue clearly below 0.

    Examples:
        >>> a = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
        >>> torch.diagonal(spd_log(a))
        tensor([0.0000, 0.6931, 1.3863], dtype=torch.float64)
    """
    owner = "spd_log"
    if not isinstance(a, torch.Tensor) or a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
        raise ValueError(f"{owner}: a must be square matrices [..., n, n], got {shape}")
    if a.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{owner}: a must be float32 or float64, got {a.dtype}")
    if a.shape[-1] == 0:
        raise ValueError(f"{owner}: a is empty, shape {tuple(a.shape)}")
    eps = require_positive(owner, "eps", eps)
    a_values = a.detach()
    require_finite(owner, a=a_values)
    asym = float((a_values - a_values.mT).abs().amax())
    scale = max(1.0, float(a_values.abs().amax()))
    tol = 1e3 * torch.finfo(a.dtype).eps * scale
    if asym > tol:
        raise ValueError(
            f"{owner}: a is not symmetric: max |a - a^T| = {asym:.3g} > tolerance {tol:.3g}"
        )
    return _SPDLog.apply(a, eps)


def log_euclidean_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Log-Euclidean distance ``||log a - log b||_F^2`` per matrix.

    Args:
        a: ``[..., n, n]`` SPD matrices.
        b: ``[..., n, n]`` SPD matrices of the same shape.

    Returns:
        ``[...]`` distances (a 0-d tensor for single matrices).
    """
    if a.shape != b.shape:
        raise ValueError(
            f"log_euclidean_distance: a {tuple(a.shape)} and b {tuple(b.shape)} must have the "
            "same shape"
        )
    return (spd_log(a) - spd_log(b)).pow(2).sum(dim=(-2, -1))


class SPDLogEuclideanLoss(nn.Module):
    """Batch mean of the squared Log-Euclidean distance between student and teacher SPD matrices.

    Args:
        kind: ``"gram"`` (patch-by-patch cosine matrix ``[B, N, N]``; widths may differ) or
            ``"covariance"`` (channel covariance ``[B, D, D]``; widths must match, project in
            the model).
        eps: diagonal floor of :func:`spd_matrix`.

    The distance is a sum over ``N^2`` (or ``D^2``) entries, so its scale grows with the token
    count; pick the loss weight for the patch grid in use. The teacher side carries no gradient.

    Shapes:
        ``student_tokens [B, N, D_s]``, ``teacher_tokens [B, N, D_t]`` -> scalar (dtype of the
        student tokens).
    """

    def __init__(self, kind: SPDKind = "gram", eps: float = 1e-4) -> None:
        super().__init__()
        if kind not in ("gram", "covariance"):
            raise ValueError(
                f"SPDLogEuclideanLoss: kind must be 'gram' or 'covariance', got {kind!r}"
            )
        self.kind: SPDKind = kind
        self.eps = require_positive("SPDLogEuclideanLoss", "eps", eps)

    def forward(self, student_tokens: torch.Tensor, teacher_tokens: torch.Tensor) -> torch.Tensor:
        owner = "SPDLogEuclideanLoss"
        for name, t in (("student_tokens", student_tokens), ("teacher_tokens", teacher_tokens)):
            if not isinstance(t, torch.Tensor) or t.ndim != 3:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{owner}: {name} must be a 3-D tensor [B, N, D], got {shape}")
        (bs, ns, ds), (bt, nt, dt) = student_tokens.shape, teacher_tokens.shape
        if bs != bt:
            raise ValueError(f"{owner}: student has B={bs} images, teacher B={bt}; expected equal")
        if self.kind == "gram" and ns != nt:
            raise ValueError(
                f"{owner}: kind='gram' compares [N, N] matrices, but the student has N={ns} "
                f"tokens and the teacher N={nt}; expected the same patch grid"
            )
        if self.kind == "covariance" and ds != dt:
            raise ValueError(
                f"{owner}: kind='covariance' compares [D, D] matrices, but the student has "
                f"D={ds} and the teacher D={dt}; project the student in the model or use 'gram'"
            )
        teacher_tokens = teacher_tokens.detach()
        require_finite(
            owner, student_tokens=student_tokens.detach(), teacher_tokens=teacher_tokens
        )
        with torch.autocast(device_type=student_tokens.device.type, enabled=False):
            log_s = spd_log(spd_matrix(student_tokens.to(torch.float64), self.kind, self.eps))
            with torch.no_grad():
                log_t = spd_log(spd_matrix(teacher_tokens.to(torch.float64), self.kind, self.eps))
            loss = (log_s - log_t).pow(2).sum(dim=(-2, -1)).mean()
        return loss.to(student_tokens.dtype)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, eps={self.eps}"
