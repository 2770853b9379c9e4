"""dinolab.eval.knn: DINO's weighted k-NN, checked against a plain-Python re-implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dinolab.eval import knn_accuracy, knn_classify, knn_votes


def _loop_knn(train, train_labels, test, num_classes, k, T):
    """The k-NN vote written out with Python loops over plain floats (no torch)."""
    train = train.tolist()
    test = test.tolist()
    labels = train_labels.tolist()

    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    train = [unit(v) for v in train]
    predictions, all_scores = [], []
    for q in test:
        q = unit(q)
        sims = [(sum(a * b for a, b in zip(q, t, strict=True)), j) for j, t in enumerate(train)]
        sims.sort(key=lambda pair: -pair[0])
        scores = [0.0] * num_classes
        for sim, j in sims[:k]:
            scores[labels[j]] += math.exp(sim / T)
        predictions.append(max(range(num_classes), key=lambda c: (scores[c], -c)))
        all_scores.append(scores)
    return predictions, all_scores


@pytest.mark.parametrize(("k", "T", "batch_size"), [(1, 0.07, 256), (5, 0.07, 7), (20, 0.5, 3)])
def test_knn_matches_loop_implementation(k, T, batch_size):
    g = torch.Generator().manual_seed(1)
    # rows of very different norms: only cosine similarity ranks them as the loops do
    train = torch.randn(60, 8, generator=g) * (0.1 + 5 * torch.rand(60, 1, generator=g))
    train_labels = torch.randint(0, 4, (60,), generator=g)
    test = torch.randn(25, 8, generator=g)
    want_pred, want_scores = _loop_knn(train, train_labels, test, 4, k, T)
    scores = knn_votes(train, train_labels, test, 4, k=k, T=T, batch_size=batch_size)
    pred = knn_classify(train, train_labels, test, 4, k=k, T=T, batch_size=batch_size)
    assert pred.tolist() == want_pred
    # float32 similarities vs float64 loops: exp(sim/T) relative error ~ 1e-6 / T
    torch.testing.assert_close(
        scores, torch.tensor(want_scores, dtype=torch.float32), rtol=1e-4, atol=1e-6
    )
    assert pred.dtype == torch.int64 and pred.shape == (25,)


def test_knn_separated_clusters_are_classified_perfectly():
    g = torch.Generator().manual_seed(0)
    centers = 10 * torch.eye(5, 16)
    train = centers.repeat(20, 1) + torch.randn(100, 16, generator=g)
    train_labels = torch.arange(5).repeat(20)
    test = centers.repeat(4, 1) + torch.randn(20, 16, generator=g)
    test_labels = torch.arange(5).repeat(4)
    assert knn_accuracy(train, train_labels, test, test_labels, num_classes=5) == 1.0


def test_knn_accepts_numpy_and_returns_fraction():
    g = np.random.default_rng(0)
    train = g.normal(size=(30, 4)).astype(np.float32)
    labels = (train[:, 0] > 0).astype(np.int64)
    acc = knn_accuracy(train, labels, train, labels, num_classes=2, k=1)
    assert acc == 1.0  # with k=1 every training point is its own nearest neighbour


def test_temperature_decides_between_nearest_and_majority():
    # One class-0 neighbour very close to the query, two class-1 neighbours farther away.
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    # sims 1.0 vs 0.8 twice: class 0 wins iff exp(1/T) > 2 exp(0.8/T), i.e. T < 0.2/ln 2 ~ 0.29
    assert knn_classify(train, labels, query, 2, k=3, T=0.07).item() == 0
    assert knn_classify(train, labels, query, 2, k=3, T=1.0).item() == 1
    scores = knn_votes(train, labels, query, 2, k=3, T=1.0)
    torch.testing.assert_close(
        scores, torch.tensor([[math.e, 2 * math.exp(0.8)]]), rtol=1e-5, atol=0
    )


def test_only_top_k_neighbours_vote():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 1.0], [0.2, 1.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    assert knn_classify(train, labels, query, 2, k=2).item() == 0
    # with all five neighbours and a flat temperature the majority (class 1) wins
    assert knn_classify(train, labels, query, 2, k=5, T=100.0).item() == 1
    assert knn_votes(train, labels, query, 2, k=2)[0, 1].item() == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 11}, "k=11 neighbours requested but train_features has only N=10"),
        ({"k": 0}, "k must be >= 1"),
        ({"T": 0.0}, "T must be a positive finite temperature"),
        ({"num_classes": 2}, r"train_labels must lie in \[0, num_classes=2\)"),
        ({"test_features": torch.randn(4, 5)}, "D=3 but test_features have D=5"),
        ({"train_labels": torch.zeros(9, dtype=torch.long)}, r"must have shape \[10\]"),
        ({"train_labels": torch.zeros(10)}, "integer class indices"),
        ({"train_features": torch.full((10, 3), float("nan"))}, "NaN or infinite"),
        ({"train_features": torch.randn(10)}, "must be 2-D"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_bad_input_raises_value_error(kwargs, message):
    args = {
        "train_features": torch.randn(10, 3),
        "train_labels": torch.arange(10) % 3,
        "test_features": torch.randn(4, 3),
        "num_classes": 3,
        "k": 3,
    }
    with pytest.raises(ValueError, match=message):
        knn_classify(**(args | kwargs))


def test_accuracy_rejects_mismatched_test_labels():
    train = torch.randn(10, 3)
    with pytest.raises(ValueError, match=r"test_labels must have shape \[4\]"):
        knn_accuracy(train, torch.arange(10) % 2, torch.randn(4, 3), torch.zeros(5).long(), 2, k=3)
