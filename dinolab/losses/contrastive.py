"""Contrastive and non-contrastive baselines of module 1: SimCLR, MoCo, BYOL.

* :func:`simclr_loss`: NT-Xent over the ``2N`` views of a batch; each view's positive is the
  other view of the same image, every other view is a negative.
* :class:`MoCoQueue`, :func:`moco_loss`, :class:`MoCo`: negatives come from a queue of keys
  produced by a slowly moving (EMA) key encoder, so they need no large batch.
* :func:`byol_loss`: no negatives at all; a predictor regresses an EMA target's projection.

Examples:
    >>> import torch
    >>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    >>> loss = simclr_loss(z1, z2, temperature=0.5)
    >>> queue = MoCoQueue(dim=16, K=32)
    >>> loss = moco_loss(z1, z2, queue.queue, temperature=0.07)
    >>> queue.enqueue(z2)
    >>> queue.ptr
    8
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from dinolab._checks import require_finite, require_int, require_positive, require_unit_interval
from dinolab.ema import ema_update
from dinolab.losses.dino import _dist_ready

__all__ = ["simclr_loss", "MoCoQueue", "moco_loss", "MoCo", "byol_loss"]


def _check_pair(owner: str, names: tuple[str, str], a: torch.Tensor, b: torch.Tensor) -> None:
    for name, t in zip(names, (a, b), strict=True):
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{owner}: {name} must be a 2-D tensor [N, D], got {shape}")
    if a.shape != b.shape:
        raise ValueError(
            f"{owner}: {names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)} must have the "
            "same shape [N, D]"
        )
    if a.shape[0] == 0:
        raise ValueError(f"{owner}: the batch is empty")
    require_finite(owner, **{names[0]: a.detach(), names[1]: b.detach()})


def simclr_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent (normalised temperature-scaled cross-entropy) of SimCLR.

    The ``2N`` rows ``z = [z1; z2]`` are L2-normalised; row ``r`` scores every other row by
    ``cos(z_r, z_s) / temperature`` (itself excluded) and is classified against its positive:
    row ``i`` against ``i + N`` and row ``i + N`` against ``i``. The loss is the mean
    cross-entropy over the ``2N`` rows.

    The TF reference (google-research/simclr ``objective.py``) adds the two views' mean
    cross-entropies, ``mean_a + mean_b``, which is exactly 2 x this value; gradients differ by
    the same factor 2, which an optimiser's learning rate absorbs.

    Args:
        z1: ``[N, D]`` projections of the first views.
        z2: ``[N, D]`` projections of the second views (row ``i`` pairs with ``z1[i]``).
        temperature: ``tau > 0`` (0.5 in SimCLR's CIFAR-10 run, 0.1 on ImageNet).

    Returns:
        Scalar loss in nats.

    Examples:
        >>> z = torch.randn(4, 8)
        >>> float(simclr_loss(z, z, temperature=0.5)) < float(simclr_loss(z, torch.randn(4, 8)))
        True
    """
    owner = "simclr_loss"
    tau = require_positive(owner, "temperature", temperature)
    _check_pair(owner, ("z1", "z2"), z1, z2)
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    logits = z @ z.t() / tau
    # -inf on the diagonal: a row is never its own candidate (exp(-inf) = 0 in the softmax).
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    idx = torch.arange(n, device=z.device)
    labels = torch.cat([idx + n, idx])
    return F.cross_entropy(logits, labels)


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL regression loss ``mean_i (2 - 2 cos(p_i, z_i))``, the target ``z`` detached.

    Equal to the squared distance between the L2-normalised vectors. BYOL symmetrises it:
    ``byol_loss(p1, z2) + byol_loss(p2, z1)`` with ``p`` the online predictor outputs and ``z``
    the EMA target projections of the other view.

    Args:
        p: ``[N, D]`` online predictions.
        z: ``[N, D]`` target projections (no gradient flows into them).

    Returns:
        Scalar in ``[0, 4]``.
    """
    owner = "byol_loss"
    _check_pair(owner, ("p", "z"), p, z)
    cos = F.cosine_similarity(p, z.detach(), dim=-1, eps=1e-8)
    return (2.0 - 2.0 * cos).mean()


def moco_loss(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """MoCo InfoNCE: each query against its key (label 0) and the ``K`` queued negatives.

    ``logits = [q . k, q . queue] / temperature``, ``[N, 1 + K]``; cross-entropy with label 0.
    ``q`` and ``k`` are L2-normalised here (a no-op for already normalised inputs); the queue
    is used as given (:class:`MoCoQueue` keeps normalised keys). ``k`` and ``queue`` are
    detached.

    Args:
        q: ``[N, D]`` queries from the query encoder.
        k: ``[N, D]`` keys from the key encoder (positives).
        queue: ``[D, K]`` negatives.
        temperature: ``T > 0`` (MoCo v1: 0.07, v2: 0.2).

    Returns:
        Scalar loss in nats.
    """
    owner = "moco_loss"
    tau = require_positive(owner, "temperature", temperature)
    _check_pair(owner, ("q", "k"), q, k)
    if not isinstance(queue, torch.Tensor) or queue.ndim != 2 or queue.shape[0] != q.shape[1]:
        shape = tuple(queue.shape) if isinstance(queue, torch.Tensor) else type(queue).__name__
        raise ValueError(f"{owner}: queue must be [D={q.shape[1]}, K], got {shape}")
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    l_pos = (q * k).sum(dim=1, keepdim=True)  # [N, 1]
    l_neg = q @ queue.detach().to(q.dtype)  # [N, K]
    logits = torch.cat([l_pos, l_neg], dim=1) / tau
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)


class MoCoQueue(nn.Module):
    """First-in-first-out queue of ``K`` L2-normalised keys, stored as columns of ``[dim, K]``.

    Starts with random unit vectors (official MoCo). :meth:`enqueue` overwrites the oldest
    columns, starting at ``ptr``; unlike official MoCo, ``K`` need not be a multiple of the
    batch size: a batch that runs past the end wraps around to column 0.

    Args:
        dim: key width ``D``.
        K: queue length (65536 in MoCo).

    Attributes:
        queue: buffer ``[dim, K]``.
        queue_ptr: buffer ``[1]`` (long), the next column to overwrite.
    """

    queue: torch.Tensor
    queue_ptr: torch.Tensor

    def __init__(self, dim: int, K: int = 65536) -> None:  # noqa: N803  (MoCo's name)
        super().__init__()
        self.dim = require_int("MoCoQueue", "dim", dim)
        self.K = require_int("MoCoQueue", "K", K)
        self.register_buffer("queue", F.normalize(torch.randn(self.dim, self.K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @property
    def ptr(self) -> int:
        """Column the next key goes to."""
        return int(self.queue_ptr)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys [N, dim]`` (L2-normalised here) over the ``N`` oldest entries.

        Raises:
            ValueError: wrong shape, non-finite keys, or ``N > K`` (the batch would overwrite
                its own keys).
        """
        owner = "MoCoQueue.enqueue"
        if not isinstance(keys, torch.Tensor) or keys.ndim != 2 or keys.shape[1] != self.dim:
            shape = tuple(keys.shape) if isinstance(keys, torch.Tensor) else type(keys).__name__
            raise ValueError(f"{owner}: keys must be [N, dim={self.dim}], got {shape}")
        n = keys.shape[0]
        if n > self.K:
            raise ValueError(f"{owner}: {n} keys do not fit in a queue of K={self.K}")
        require_finite(owner, keys=keys)
        keys = F.normalize(keys.detach(), dim=1).to(self.queue.dtype)
        ptr = self.ptr
        first = min(n, self.K - ptr)
        self.queue[:, ptr : ptr + first] = keys[:first].t()
        if first < n:
            self.queue[:, : n - first] = keys[first:].t()
        self.queue_ptr[0] = (ptr + n) % self.K

    def extra_repr(self) -> str:
        return f"dim={self.dim}, K={self.K}"


@torch.no_grad()
def _concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Rows of every process, concatenated (rank order); the tensor itself on one process."""
    if not _dist_ready():
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


class MoCo(nn.Module):
    """Momentum Contrast (MoCo v1 step order) around any encoder ``[N, ...] -> [N, dim]``.

    Each :meth:`forward`:

    1. ``q = normalize(encoder_q(x_q))`` with gradients;
    2. under ``no_grad``: EMA update of ``encoder_k`` towards ``encoder_q`` with momentum ``m``
       (:func:`dinolab.ema.ema_update`), THEN ``k = normalize(encoder_k(x_k))``;
    3. loss :func:`moco_loss` against the current queue;
    4. enqueue ``k`` (gathered from every process under ``torchrun``).

    Official MoCo also shuffles BatchNorm across GPUs; that is not done here (use an encoder
    without BatchNorm, or GroupNorm, in multi-GPU runs).

    Args:
        encoder: the query encoder; its deep copy becomes the key encoder (frozen, EMA only).
        dim: encoder output width.
        K: queue length.
        m: key-encoder momentum (0.999).
        T: softmax temperature (0.07).
    """

    def __init__(
        self,
        encoder: nn.Module,
        dim: int = 128,
        K: int = 65536,  # noqa: N803
        m: float = 0.999,
        T: float = 0.07,  # noqa: N803
    ) -> None:
        super().__init__()
        self.m = require_unit_interval("MoCo", "m", m)
        self.T = require_positive("MoCo", "T", T)
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)
        for param in self.encoder_k.parameters():
            param.requires_grad_(False)
        self.queue = MoCoQueue(dim, K)

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor) -> torch.Tensor:
        """Loss of one batch of query views ``x_q`` and key views ``x_k`` (both ``[N, ...]``)."""
        q = F.normalize(self.encoder_q(x_q), dim=1)
        with torch.no_grad():
            ema_update(self.encoder_k, self.encoder_q, self.m)
            k = F.normalize(self.encoder_k(x_k), dim=1)
        # clone: enqueue below writes into the buffer that backward of q @ queue still needs.
        loss = moco_loss(q, k, self.queue.queue.clone(), self.T)
        self.queue.enqueue(_concat_all_gather(k))
        return loss
