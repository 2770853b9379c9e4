"""Optimiser helpers as official DINO: parameter groups, per-parameter clipping, frozen head."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

__all__ = ["get_params_groups", "clip_gradients", "cancel_gradients_last_layer"]


def get_params_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Two optimiser groups as official DINO: decayed weights, then biases and 1-D parameters.

    Parameters that do not require gradients (a frozen ``weight_g``) are left out. The
    position embedding and CLS token are matrices / 3-D tensors and so ARE decayed, as in
    the official code.

    Returns:
        ``[{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]``.
    """
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or param.ndim <= 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


@torch.no_grad()
def clip_gradients(model: nn.Module, clip: float, return_norms: bool = True) -> list[float]:
    """Clip each parameter's gradient to L2 norm ``clip``, separately (official DINO).

    ``g <- g * clip / (||g|| + 1e-6)`` where ``||g|| > clip``; gradients below the bound
    are left bit-for-bit unchanged. DINOv2 instead clips the total norm of each student
    sub-module (backbone, DINO head, iBOT head) separately, one ``clip_grad_norm_`` per module.

    Args:
        model: its parameters' ``.grad`` are clipped in place.
        clip: the bound, ``> 0``.
        return_norms: False returns ``[]``: reading the norms back is one device-to-host copy
            per parameter, which a GPU training loop that does not log them should not pay.

    Returns:
        The gradient norms before clipping, one per parameter with a gradient.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return []
    norms = torch._foreach_norm(grads, 2.0)
    coefs = [torch.clamp(clip / (n + 1e-6), max=1.0) for n in norms]
    # Multiplying by exactly 1.0 leaves the small gradients unchanged, as the official `if`.
    torch._foreach_mul_(grads, coefs)
    return [float(n) for n in norms] if return_norms else []


def cancel_gradients_last_layer(epoch: int, model: nn.Module, freeze_last_layer: int) -> None:
    """Drop the gradient of every ``last_layer`` parameter while ``epoch < freeze_last_layer``."""
    if epoch >= freeze_last_layer:
        return
    for name, param in model.named_parameters():
        if "last_layer" in name:
            param.grad = None
