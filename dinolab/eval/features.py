"""Frozen-feature extraction for k-NN and linear-probe evaluation.

The model runs in eval mode under ``torch.no_grad()`` (dropout off, BatchNorm on its running
statistics, no graph kept), and every submodule gets back exactly the train/eval flag it had
before, even when the loop raises. Forgetting that last step is a classic bug: a student
evaluated mid-training and never put back in train mode silently trains with frozen BatchNorm
statistics and no dropout.

Examples:
    >>> import torch
    >>> import torch.nn as nn
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> data = TensorDataset(torch.randn(10, 3, 8, 8), torch.arange(10) % 2)
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16))
    >>> feats, labels = extract_features(model, DataLoader(data, batch_size=4), progress=False)
    >>> feats.shape, labels.shape, model.training
    (torch.Size([10, 16]), torch.Size([10]), True)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = ["extract_features"]


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def _split_batch(batch: Any, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, Sequence) or isinstance(batch, str) or len(batch) != 2:
        raise ValueError(
            f"extract_features: batch {index} must be a pair (images, labels), got "
            f"{type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, Sequence) else "")
        )
    images, labels = batch
    if not isinstance(images, torch.Tensor):
        raise ValueError(
            f"extract_features: batch {index} images must be a tensor [B, C, H, W], got "
            f"{type(images).__name__}"
        )
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"extract_features: batch {index} has {images.shape[0]} images but labels of shape "
            f"{tuple(labels.shape)}; expected [{images.shape[0]}]"
        )
    return images, labels


def extract_features(
    model: nn.Module,
    loader: Iterable[Any],
    device: str | torch.device = "cpu",
    normalize: bool = True,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` over ``loader`` without gradients and stack its features and the labels.

    Args:
        model: maps ``[B, C, H, W]`` images to ``[B, D]`` features (a backbone such as
            :func:`dinolab.models.vit_small`, or a teacher's backbone). It must already live
            on ``device``; it is not moved, so the caller's model is left where it was.
        loader: iterable of ``(images [B, C, H, W], labels [B])`` batches, e.g. a
            ``DataLoader`` without shuffling.
        device: where the forward passes run; each batch is moved there.
        normalize: L2-normalise every feature row (official DINO does so before k-NN; the
            k-NN normalises again anyway, a linear probe may prefer raw features).
        progress: show a tqdm bar over batches.

    Returns:
        ``(features [N, D] float32 on CPU, labels [N] int64 on CPU)`` in loader order.

    Raises:
        ValueError: the loader is empty, a batch is not an ``(images, labels)`` pair, the
            model is on another device, or its output is not ``[B, D]``.
    """
    device = torch.device(device)
    model_device = _model_device(model)
    if model_device is not None and (
        model_device.type != device.type
        or (device.index is not None and model_device.index != device.index)
    ):
        raise ValueError(
            f"extract_features: the model's parameters are on {model_device} but device="
            f"{device}; move the model first (model.to({str(device)!r})) or pass "
            f"device={str(model_device)!r}"
        )

    # Each submodule's own flag: a teacher kept frozen in eval inside a training model must
    # come back in eval, not be switched to train by a blanket model.train().
    previous_modes = [(module, module.training) for module in model.modules()]
    feature_chunks: list[torch.Tensor] = []
    label_chunks: list[torch.Tensor] = []
    model.eval()
    try:
        with torch.no_grad():
            bar = tqdm(loader, desc="extract features", disable=not progress, leave=False)
            for index, batch in enumerate(bar):
                images, labels = _split_batch(batch, index)
                features = model(images.to(device, non_blocking=True))
                if not isinstance(features, torch.Tensor) or features.ndim != 2:
                    shape = tuple(features.shape) if isinstance(features, torch.Tensor) else None
                    raise ValueError(
                        "extract_features: the model must return [B, D] features, got "
                        f"{type(features).__name__} of shape {shape}; pool or flatten "
                        "feature maps first (e.g. a backbone whose head is nn.Identity)"
                    )
                if features.shape[0] != images.shape[0]:
                    raise ValueError(
                        f"extract_features: batch {index} has {images.shape[0]} images but the "
                        f"model returned {features.shape[0]} feature rows"
                    )
                features = features.float()
                if normalize:
                    features = F.normalize(features, dim=1)
                feature_chunks.append(features.cpu())
                label_chunks.append(labels.long().cpu())
    finally:
        # The attribute, not .train(): .train() recurses and would overwrite the children's
        # own flags restored on other iterations of this loop.
        for module, was_training in previous_modes:
            module.training = was_training

    if not feature_chunks:
        raise ValueError("extract_features: the loader yielded no batches; expected at least one")
    return torch.cat(feature_chunks), torch.cat(label_chunks)
