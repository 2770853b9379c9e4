"""The DINO projection head, exactly as official DINO builds it.

``DINOHead`` maps backbone features [B, in_dim] to K "prototype" scores [B, K]:

1. an MLP ``Linear -> [BatchNorm] -> GELU`` repeated ``nlayers - 1`` times, then a Linear to a
   ``bottleneck_dim`` (256) vector;
2. that bottleneck vector is L2-normalised;
3. a weight-normalised Linear without bias (``last_layer``) maps it to K outputs.

The outputs are LOGITS: with ``norm_last_layer=True`` every row of the last layer has unit
norm, so each output is a cosine similarity in [-1, 1] that the DINO loss then divides by a
temperature (0.1 for the student). They are not unit vectors, and normalising them (as one
course draft did) would break the loss's temperature scaling.

The weight-normalised layer is written out as :class:`WeightNormLinear` with parameters
``weight_g`` [K, 1] and ``weight_v`` [K, bottleneck_dim], the names ``torch.nn.utils.weight_norm``
gives them, so state dicts match official DINO checkpoints (``head.last_layer.weight_g``)
without the deprecated torch helper.

Examples:
    >>> import torch
    >>> head = DINOHead(in_dim=128, out_dim=1024, hidden_dim=256, bottleneck_dim=64)
    >>> logits = head(torch.randn(8, 128))
    >>> logits.shape
    torch.Size([8, 1024])
    >>> head.last_layer.weight_g.requires_grad  # frozen: norm_last_layer=True
    False
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["WeightNormLinear", "DINOHead"]


class WeightNormLinear(nn.Module):
    """Linear layer without bias whose weight is ``g * v / ||v||`` row by row.

    Args:
        in_features: input width.
        out_features: output width ``K``.

    Parameters ``weight_v`` [K, in_features] (direction, initialised like ``nn.Linear``) and
    ``weight_g`` [K, 1] (gain, initialised to ``||v||`` per row so that the effective weight
    starts equal to ``weight_v``, as ``torch.nn.utils.weight_norm`` does).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        v = nn.Linear(in_features, out_features, bias=False).weight.detach().clone()
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=1, keepdim=True))

    @property
    def weight(self) -> torch.Tensor:
        """Effective weight [K, in_features]: each row has norm ``weight_g`` of that row."""
        # torch's fused kernel (the one nn.utils.weight_norm uses): the same g * v / ||v||,
        # with fewer element-wise passes in forward and backward than composing the ops.
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, in_features] -> [B, K]."""
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias=False"


class DINOHead(nn.Module):
    """Official DINO projection head: MLP -> L2-normalised bottleneck -> weight-normed Linear.

    Args:
        in_dim: backbone feature width ``D``.
        out_dim: number of prototypes ``K`` (DINO: 65536).
        use_bn: BatchNorm1d after each hidden Linear (DINO default off for ViTs).
        norm_last_layer: freeze the gain ``last_layer.weight_g`` at 1 so every prototype has
            unit norm (official default True; False trains faster but less stably).
        nlayers: Linear layers in the MLP (>= 1; 1 means a single Linear to the bottleneck).
        hidden_dim: width of the hidden layers (2048).
        bottleneck_dim: width of the normalised bottleneck (256).

    Shapes: forward ``[B, in_dim] -> [B, out_dim]`` logits (cosine scores when
    ``norm_last_layer``), not unit vectors.

    State-dict keys (no BN): ``mlp.{0,2,4}.{weight,bias}``, ``last_layer.weight_g`` [K, 1],
    ``last_layer.weight_v`` [K, bottleneck_dim]; with BN the Linears sit at mlp.0, 3, 6.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        use_bn: bool = False,
        norm_last_layer: bool = True,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ) -> None:
        super().__init__()
        for name, v in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim),
                        ("bottleneck_dim", bottleneck_dim)):
            if int(v) != v or v < 1:
                raise ValueError(f"DINOHead: {name} must be a positive integer, got {v!r}")
        if nlayers < 1:
            raise ValueError(f"DINOHead: nlayers must be >= 1, got {nlayers}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.norm_last_layer = norm_last_layer
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            width = in_dim
            for _ in range(nlayers - 1):
                layers.append(nn.Linear(width, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
                width = hidden_dim
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        # Created after apply(): official DINO leaves the last layer at nn.Linear's default init.
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        with torch.no_grad():
            self.last_layer.weight_g.fill_(1.0)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad_(False)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features [B, in_dim] -> logits [B, out_dim]."""
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(
                f"DINOHead: expected input [B, {self.in_dim}], got shape {tuple(x.shape)}"
            )
        z = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(z)
