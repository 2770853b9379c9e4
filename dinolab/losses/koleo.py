"""The KoLeo regulariser (Kozachenko-Leonenko entropy estimator), as DINOv2's ``KoLeoLoss``.

For L2-normalised features ``x_i`` and the nearest other sample ``x_j(i)`` (largest dot
product, the sample itself excluded) the loss is ``-mean_i log(||x_i - x_j(i)|| + eps)``: it
grows when two samples sit close together, so minimising it spreads the batch over the sphere.
DINOv2 adds it with weight 0.1 to the student CLS tokens (before the head) of each global crop.

Examples:
    >>> import torch
    >>> koleo = KoLeoLoss()
    >>> x = torch.randn(8, 16, requires_grad=True)
    >>> loss = koleo(x)
    >>> loss.backward()
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dinolab._checks import require_finite

__all__ = ["KoLeoLoss"]


class KoLeoLoss(nn.Module):
    """Nearest-neighbour log-distance regulariser, computed in float32.

    Numerical details follow DINOv2: ``F.normalize(x, eps=1e-8)``, neighbours by the largest
    inner product with the diagonal excluded, distance ``nn.PairwiseDistance(p=2, eps=1e-8)``
    (which adds ``eps`` to the difference before the norm), then ``-log(d + 1e-8)``. The loss is
    the mean over the samples of this process's batch (no cross-process gathering, as DINOv2).

    Shapes:
        ``x [B, D]`` with ``B >= 2`` -> scalar.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pdist = nn.PairwiseDistance(p=2, eps=1e-8)

    @staticmethod
    @torch.no_grad()
    def nearest_neighbours(x: torch.Tensor) -> torch.Tensor:
        """Index ``[B]`` of each row's nearest other row by inner product (x assumed normalised).

        The arg-max carries no gradient, so it is computed outside autograd.
        """
        dots = x @ x.t()
        # -2 is below any cosine, so a row never picks itself. DINOv2 fills -1, which ties with
        # an exactly opposite vector (cosine -1); its argmax may then pick the row itself.
        dots.fill_diagonal_(-2.0)
        return dots.argmax(dim=1)

    def forward(self, x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """KoLeo loss of a batch of features.

        Args:
            x: ``[B, D]`` features (any floating dtype; computed in float32).
            eps: the normalisation and log epsilon (DINOv2: 1e-8).

        Returns:
            Scalar float32 loss.
        """
        owner = "KoLeoLoss"
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{owner}: x must be a 2-D tensor [B, D], got {shape}")
        if x.shape[0] < 2:
            raise ValueError(
                f"{owner}: x has B={x.shape[0]} rows; at least 2 are needed for a nearest neighbour"
            )
        if not x.is_floating_point():
            raise ValueError(f"{owner}: x must be floating point, got {x.dtype}")
        require_finite(owner, x=x.detach())
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = F.normalize(x.float(), p=2, dim=-1, eps=eps)
            neighbours = self.nearest_neighbours(x)
            distances = self.pdist(x, x[neighbours])
            return -torch.log(distances + eps).mean()
