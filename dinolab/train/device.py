"""Where and in which precision a run computes: seeds, ``--device`` and ``--precision``."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import numpy as np
import torch

__all__ = ["fix_random_seeds", "resolve_device", "autocast_context"]


def fix_random_seeds(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """The torch device for a ``--device`` value: ``cpu``, ``cuda[:i]``, ``mps`` or ``auto``.

    ``auto`` is CUDA when available, else the CPU; it never picks ``mps`` (Apple-silicon
    GPUs), which is used only when asked for by name: the lessons and recipes are tested on
    the CPU and on CUDA, not on MPS, where some operations are missing or fall back to the CPU.

    Raises:
        ValueError: an unknown device, or ``cuda``/``mps`` where this PyTorch or this machine
            has none.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be cpu, cuda, mps or auto, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was requested but CUDA is not available; use --device cpu"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        why = (
            "this machine has no MPS device (Apple silicon, macOS 12.3 or newer)"
            if torch.backends.mps.is_built()
            else f"this PyTorch ({torch.__version__}) was built without MPS"
        )
        raise ValueError(f"device {device!r} was requested but {why}; use --device cpu")
    return dev


def autocast_context(
    precision: str, device: torch.device
) -> contextlib.AbstractContextManager[Any]:
    """Autocast for ``bf16``/``fp16``; a null context for ``fp32``.

    Raises:
        ValueError: an unknown precision, ``fp16`` off CUDA, or ``bf16`` on a GPU without it.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        # Emulated bf16 (V100, T4: torch's default answer counts it) runs slower than fp32.
        if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
            raise ValueError(
                "precision 'bf16': this GPU has no native bfloat16 (it is emulated, slower "
                "than fp32); use fp16 or fp32"
            )
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError(
                "precision 'fp16' needs CUDA (a gradient scaler on GPU); on CPU use bf16 or fp32"
            )
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
