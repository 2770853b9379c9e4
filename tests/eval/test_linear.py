"""dinolab.eval.linear: the linear probe learns what a linear layer can learn, and only that."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dinolab.eval import LinearClassifier, train_linear_probe
from dinolab.schedules import cosine_schedule


def _separable(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes given by the arg-max of a fixed linear map (linearly separable by
    construction), with feature dimensions on scales from 0.01 to 100."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([100.0, 0.01, 1.0, 1.0, 5.0, 1.0])
    x = torch.randn(n, 6, generator=g) * scale
    w = torch.randn(3, 6, generator=torch.Generator().manual_seed(99)) / scale
    return x, (x @ w.T).argmax(dim=1)


def test_probe_reaches_high_accuracy_on_linearly_separable_features():
    x, y = _separable(300, seed=0)
    result = train_linear_probe(x[:200], y[:200], x[200:], y[200:], num_classes=3, epochs=30,
                                batch_size=32, progress=False)
    assert result.accuracy >= 0.95, result.accuracy
    assert result.history["train_accuracy"][-1] >= 0.95
    assert result.history["train_loss"][-1] < result.history["train_loss"][0]
    # the returned classifier applies to raw features and gives the reported accuracy
    with torch.no_grad():
        acc = (result.classifier(x[200:]).argmax(1) == y[200:]).double().mean().item()
    assert acc == pytest.approx(result.accuracy)
    assert not result.classifier.training


def test_probe_is_at_chance_on_shuffled_labels():
    x, y = _separable(300, seed=1)
    g = torch.Generator().manual_seed(2)
    y_shuffled = y[torch.randperm(300, generator=g)]  # labels carry no information
    result = train_linear_probe(x[:200], y_shuffled[:200], x[200:], y_shuffled[200:],
                                num_classes=3, epochs=30, batch_size=32, progress=False)
    # chance is about 1/3 (a fixed map's classes are roughly balanced); 100 test points
    assert result.accuracy < 0.6, result.accuracy


def test_lr_follows_the_cosine_schedule_and_history_is_per_epoch():
    x, y = _separable(40, seed=3)
    result = train_linear_probe(x, y, x, y, num_classes=3, epochs=4, lr=0.2, batch_size=16,
                                progress=False)
    niter = math.ceil(40 / 16)
    want = cosine_schedule(0.2, 0.0, 4, niter)[niter - 1 :: niter]  # last iteration per epoch
    np.testing.assert_allclose(result.history["lr"], want, rtol=1e-12)
    assert result.history["epoch"] == [0.0, 1.0, 2.0, 3.0]


def test_same_seed_same_result_and_global_rng_untouched():
    x, y = _separable(60, seed=4)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = train_linear_probe(x, y, x, y, 3, epochs=3, batch_size=16, seed=7, progress=False)
    assert torch.equal(torch.rand(1), expected_next)
    b = train_linear_probe(x, y, x, y, 3, epochs=3, batch_size=16, seed=7, progress=False)
    assert torch.equal(a.classifier.linear.weight, b.classifier.linear.weight)
    assert a.history == b.history


def test_standardisation_uses_training_statistics_and_skips_constant_dims():
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])  # dim 1 constant
    y = torch.tensor([0, 1, 1])
    result = train_linear_probe(x, y, x, y, 2, epochs=1, progress=False)
    clf = result.classifier
    torch.testing.assert_close(clf.mean, torch.tensor([3.0, 5.0]))
    # population std of [1, 3, 5] is sqrt(8/3); the constant dim keeps scale 1
    torch.testing.assert_close(clf.std, torch.tensor([math.sqrt(8 / 3), 1.0]))


def test_linear_classifier_applies_standardisation():
    clf = LinearClassifier(2, 2, mean=torch.tensor([1.0, 2.0]), std=torch.tensor([2.0, 4.0]))
    with torch.no_grad():
        clf.linear.weight.copy_(torch.eye(2))
        clf.linear.bias.zero_()
        out = clf(torch.tensor([[3.0, 10.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0]]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"lr": 0.0}, "lr must be a finite number > 0"),
        ({"weight_decay": -1.0}, "weight_decay must be a finite number >= 0"),
        ({"num_classes": 1}, r"train_labels must lie in \[0, num_classes=1\)"),
        ({"test_features": torch.randn(5, 4)}, "D=3 but test_features have D=4"),
        ({"train_labels": torch.zeros(7, dtype=torch.long)}, r"train_labels must have shape \[8\]"),
        ({"test_features": torch.full((5, 3), float("inf"))}, "NaN or infinite"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
    ],
)
def test_bad_input_raises_value_error(kwargs, message):
    args = {
        "train_features": torch.randn(8, 3),
        "train_labels": torch.arange(8) % 2,
        "test_features": torch.randn(5, 3),
        "test_labels": torch.arange(5) % 2,
        "num_classes": 2,
        "epochs": 1,
        "progress": False,
    }
    with pytest.raises(ValueError, match=message):
        train_linear_probe(**(args | kwargs))
