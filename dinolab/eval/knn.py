"""Weighted k-nearest-neighbour classification of frozen features, as official DINO's k-NN eval.

Each test feature votes with its ``k`` most cosine-similar training features: neighbour ``j``
adds ``exp(sim_j / T)`` to the score of its label, and the label with the largest score wins
(facebookresearch/dino ``eval_knn.py``, ``knn_classifier``). Both feature sets are
L2-normalised first, so ``sim = test @ train^T`` is a cosine similarity in ``[-1, 1]``; with
``T = 0.07`` a neighbour at similarity 0.9 outweighs one at 0.8 by ``exp(0.1 / 0.07) ~ 4``.

The similarity matrix is built in chunks of ``batch_size`` test rows, so memory stays at
``batch_size x N`` floats however large the test set is.

Examples:
    >>> import torch
    >>> train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> labels = torch.tensor([0, 0, 1, 1])
    >>> test = torch.tensor([[1.0, 0.2], [0.2, 1.0]])
    >>> knn_classify(train, labels, test, num_classes=2, k=2)
    tensor([0, 1])
    >>> knn_accuracy(train, labels, test, torch.tensor([0, 1]), num_classes=2, k=2)
    1.0
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from dinolab._checks import require_int

__all__ = ["knn_votes", "knn_classify", "knn_accuracy"]

ArrayLike = torch.Tensor | np.ndarray


# The three checks below are shared with the linear probe (``owner`` prefixes the message).


def _as_tensor(name: str, value: ArrayLike, owner: str = "knn") -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise ValueError(
        f"{owner}: {name} must be a torch.Tensor or a NumPy array, got {type(value).__name__}"
    )


def _check_features(name: str, features: torch.Tensor, owner: str = "knn") -> None:
    if features.ndim != 2:
        raise ValueError(
            f"{owner}: {name} must be 2-D [rows, D], got shape {tuple(features.shape)}"
        )
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"{owner}: {name} is empty, shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"{owner}: {name} must be floating point, got {features.dtype}")
    bad = int((~torch.isfinite(features)).sum())
    if bad:
        raise ValueError(
            f"{owner}: {name} has {bad} NaN or infinite values (of {features.numel()}); "
            "expected finite features"
        )


def _check_labels(
    name: str, labels: torch.Tensor, rows: int, num_classes: int, owner: str = "knn"
) -> torch.Tensor:
    if labels.ndim != 1 or labels.shape[0] != rows:
        raise ValueError(
            f"{owner}: {name} must have shape [{rows}] (one label per feature row), "
            f"got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(
            f"{owner}: {name} must hold integer class indices, got dtype {labels.dtype}"
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{owner}: {name} must lie in [0, num_classes={num_classes}), got values in "
            f"[{low}, {high}]"
        )
    return labels.long()


@torch.no_grad()
def knn_votes(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    num_classes: int,
    k: int = 20,
    T: float = 0.07,
    batch_size: int = 256,
) -> torch.Tensor:
    """Class scores of the weighted k-NN vote: ``sum over the top-k neighbours of exp(sim / T)``.

    Args:
        train_features: ``[N, D]`` features of the labelled (memory) set; any scale, they are
            L2-normalised here.
        train_labels: ``[N]`` integer labels in ``[0, num_classes)``.
        test_features: ``[M, D]`` features to classify.
        num_classes: ``C``, the number of classes.
        k: neighbours per test feature, ``1 <= k <= N`` (DINO reports 10, 20, 100, 200; 20 is
            usually best).
        T: temperature ``> 0`` of the vote weights (DINO: 0.07). Small ``T`` lets the nearest
            neighbour dominate; large ``T`` approaches an unweighted majority vote.
        batch_size: test rows per similarity chunk.

    Returns:
        ``[M, C]`` float32 scores on the device of ``test_features``; every row sums over the
        ``k`` weights, classes without a neighbour score 0.

    Raises:
        ValueError: shapes disagree, labels are not integers in ``[0, num_classes)``, features
            contain NaN/Inf, ``k`` is outside ``[1, N]``, or ``T`` is not a positive number.
    """
    train = _as_tensor("train_features", train_features)
    test = _as_tensor("test_features", test_features)
    labels = _as_tensor("train_labels", train_labels)
    num_classes = require_int("knn", "num_classes", num_classes, 1)
    batch_size = require_int("knn", "batch_size", batch_size, 1)
    k = require_int("knn", "k", k, 1)
    _check_features("train_features", train)
    _check_features("test_features", test)
    if train.shape[1] != test.shape[1]:
        raise ValueError(
            f"knn: train_features have D={train.shape[1]} but test_features have "
            f"D={test.shape[1]}; expected the same feature width"
        )
    n_train = train.shape[0]
    if k > n_train:
        raise ValueError(
            f"knn: k={k} neighbours requested but train_features has only N={n_train} rows; "
            f"use k <= {n_train}"
        )
    try:
        temperature = float(T)
    except (TypeError, ValueError):
        raise ValueError(f"knn: T must be a positive number, got {T!r}") from None
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"knn: T must be a positive finite temperature, got {T!r}")
    labels = _check_labels("train_labels", labels, n_train, num_classes)

    device = test.device
    # float32 at least: exp(1 / 0.07) ~ 1.6e6 overflows float16 (max 65504).
    dtype = torch.promote_types(test.dtype, torch.float32)
    train = F.normalize(train.to(device=device, dtype=dtype), dim=1)
    test = F.normalize(test.to(dtype=dtype), dim=1)
    labels = labels.to(device)

    scores = torch.zeros(test.shape[0], num_classes, dtype=dtype, device=device)
    for start in range(0, test.shape[0], batch_size):
        chunk = test[start : start + batch_size]
        similarity = chunk @ train.T  # [b, N] cosine similarities
        top_sim, top_idx = similarity.topk(k, dim=1, largest=True, sorted=True)
        weights = (top_sim / temperature).exp()  # [b, k]
        scores[start : start + chunk.shape[0]].scatter_add_(1, labels[top_idx], weights)
    return scores


def knn_classify(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    num_classes: int,
    k: int = 20,
    T: float = 0.07,
    batch_size: int = 256,
) -> torch.Tensor:
    """Predict a label for every test feature by DINO's weighted k-NN vote.

    Arguments as :func:`knn_votes`.

    Returns:
        ``[M]`` int64 predictions, the arg-max of the vote scores (ties go to the lower class
        index).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> centers = 5 * torch.eye(3, 8)
        >>> train = centers.repeat(10, 1) + torch.randn(30, 8, generator=g)
        >>> labels = torch.arange(3).repeat(10)
        >>> test = centers + 0.1 * torch.randn(3, 8, generator=g)
        >>> knn_classify(train, labels, test, num_classes=3, k=5)
        tensor([0, 1, 2])
    """
    return knn_votes(
        train_features, train_labels, test_features, num_classes, k=k, T=T, batch_size=batch_size
    ).argmax(dim=1)


def knn_accuracy(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
    num_classes: int,
    k: int = 20,
    T: float = 0.07,
    batch_size: int = 256,
) -> float:
    """Top-1 accuracy in ``[0, 1]`` of :func:`knn_classify` against ``test_labels [M]``."""
    predictions = knn_classify(
        train_features, train_labels, test_features, num_classes, k=k, T=T,
        batch_size=batch_size,
    )
    truth = _check_labels(
        "test_labels", _as_tensor("test_labels", test_labels), predictions.shape[0], num_classes
    )
    return float((predictions.cpu() == truth.cpu()).double().mean())
