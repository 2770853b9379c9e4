"""Parameters kept as views into one flat buffer, so an update of all of them is one kernel.

A ViT-S has 151 parameter tensors. An element-wise update of all of them (the EMA teacher's
``lerp``) launched tensor by tensor, or even with torch's multi-tensor ``_foreach`` kernels,
pays a per-tensor cost and, on a CPU, splits the work into many short loops. When every
parameter of a model is a contiguous slice of ONE 1-D buffer, the same update is a single
``lerp_`` over that buffer and runs at the speed of a plain copy-like loop over memory.

:func:`flatten_parameters` moves a module's floating parameters into such a buffer, in the
order of ``module.parameters()``, without changing anything a user sees: the same
:class:`~torch.nn.Parameter` objects (so optimiser groups, DDP hooks and gradient accumulators
are untouched), the same names, shapes and values, so ``state_dict()`` / ``load_state_dict()``
and checkpoints are exactly as before. Only ``param.data`` now points into the buffer.
:func:`flat_view` recognises the layout (also after a checkpoint was loaded into it, since
``load_state_dict`` copies in place) and returns the buffer as one tensor.

What breaks the layout: moving the module to another device or dtype (``.to()``, ``.half()``)
gives every parameter its own tensor again. :func:`flat_view` then returns None and callers
fall back to per-tensor kernels (:func:`dinolab.ema.ema_update` flattens again).

Two consequences worth knowing. A state dict's tensors are views into the buffer, so
``torch.save`` of ONE of them alone writes the whole buffer (saving a whole state dict writes
it once, the same bytes as before). And the parameters share one storage, so code that looks
for tensors sharing memory (safetensors' ``save_file``) must be given copies
(``{k: v.clone() for ...}``), as it must for any tied weights.

Examples:
    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    >>> buffer = flatten_parameters(net)
    >>> buffer.shape                     # 4*8 + 8 + 8*2 + 2 values, back to back
    torch.Size([58])
    >>> flat_view(list(net.parameters())).data_ptr() == buffer.data_ptr()
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["flat_view", "flatten_parameters", "floating_parameters"]


def floating_parameters(module: nn.Module) -> list[torch.Tensor]:
    """The module's floating-point parameters, each once, in ``module.parameters()`` order."""
    return [p for p in module.parameters() if p.is_floating_point()]


def flat_view(tensors: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """One 1-D tensor covering exactly ``tensors`` when they lie back to back in one storage.

    Args:
        tensors: ``N`` tensors of any shapes.

    Returns:
        A 1-D tensor ``[sum of numel]`` sharing their memory (writing to it writes to them),
        or None when they are not contiguous, not in one storage, not in this order without
        gaps, or of different dtypes or devices.
    """
    if not tensors:
        return None
    first = tensors[0]
    dtype, device, itemsize = first.dtype, first.device, first.element_size()
    # Addresses only (a data_ptr costs far less than a storage object per tensor): each
    # tensor must start where the previous one ended, and the whole run must lie inside the
    # first tensor's storage. Memory inside that allocation IS that storage's memory, so one
    # view over the storage covers exactly these tensors.
    expected = first.data_ptr()
    for t in tensors:
        if (
            t.data_ptr() != expected
            or t.dtype != dtype
            or not t.is_contiguous()
            or t.device != device
        ):
            return None
        expected += t.numel() * itemsize
    storage = first.untyped_storage()
    if expected > storage.data_ptr() + storage.nbytes():
        return None
    start = first.storage_offset()
    count = (expected - first.data_ptr()) // itemsize
    return torch.empty(0, dtype=dtype, device=device).set_(storage, start, (count,))


@torch.no_grad()
def flatten_parameters(module: nn.Module) -> torch.Tensor | None:
    """Lay the module's floating parameters out as views into one new flat buffer.

    Values, names, shapes, ``requires_grad``, gradients and the Parameter objects themselves
    are kept; only each parameter's storage changes. Already flat parameters are left alone.

    Args:
        module: its floating parameters must share one dtype and one device.

    Returns:
        The buffer, 1-D ``[total number of values]``, or None when the module has no floating
        parameter or they mix dtypes or devices (then nothing is changed).
    """
    params = floating_parameters(module)
    if not params:
        return None
    flat = flat_view(params)
    if flat is not None:
        return flat
    dtype, device = params[0].dtype, params[0].device
    if any(p.dtype != dtype or p.device != device for p in params):
        return None
    flat = torch.empty(sum(p.numel() for p in params), dtype=dtype, device=device)
    offset = 0
    for p in params:
        n = p.numel()
        piece = flat[offset : offset + n].view(p.shape)
        piece.copy_(p)
        # Same dtype and device: PyTorch keeps the parameter's gradient accumulator, so hooks
        # registered on it (DDP's) keep firing.
        p.data = piece
        offset += n
    return flat
