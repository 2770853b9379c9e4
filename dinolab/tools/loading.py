"""Read a backbone for a tool: the checks every command makes before it looks inside a file."""

from __future__ import annotations

import os
from pathlib import Path

from dinolab.models.checkpoints import LoadedBackbone

__all__ = ["read_backbone"]


def read_backbone(
    path: str | os.PathLike[str],
    which: str = "teacher",
    *,
    arch: str | None = None,
    patch_size: int | None = None,
    num_heads: int | None = None,
    flag: str = "--pretrained_weights",
) -> LoadedBackbone:
    """The ``which`` backbone of a checkpoint, read once with ``weights_only=True``.

    A thin layer over :func:`dinolab.models.backbone_from_checkpoint`: a dinolab training
    checkpoint is built from the settings it saved, any other file (official DINO / DINOv2,
    a bare state dict) from its tensors, ``arch`` / ``patch_size`` / ``num_heads`` filling in
    what those leave open.

    Args:
        path: the checkpoint file.
        which: ``"teacher"`` or ``"student"``.
        flag: the command-line flag that named ``path``, for the error messages.

    Returns:
        A :class:`~dinolab.models.LoadedBackbone` (backbone in eval mode, on the CPU, and a
        dinolab checkpoint's saved settings in ``args``).

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: ``path`` is a folder, not a checkpoint, or has no backbone under ``which``
            (the message names the entries it has).
    """
    from dinolab.models import backbone_from_checkpoint, read_checkpoint

    p = Path(path)
    if p.is_dir():
        raise ValueError(
            f"{flag} {str(p)!r} is a folder; give the checkpoint file in it (e.g. checkpoint.pth)"
        )
    if not p.is_file():
        raise FileNotFoundError(f"{flag} {str(p)!r} does not exist")
    checkpoint = read_checkpoint(p, who=flag)
    return backbone_from_checkpoint(
        checkpoint, which, arch=arch, patch_size=patch_size, num_heads=num_heads, path=p
    )
