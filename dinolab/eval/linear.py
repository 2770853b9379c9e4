"""Linear probe: a single linear layer trained on frozen features, as official DINO's linear eval.

The recipe follows facebookresearch/dino ``eval_linear.py``: a ``Linear(D, C)`` layer with
weights drawn from ``N(0, 0.01^2)`` and zero bias, cross-entropy, SGD with momentum 0.9,
weight decay 0 and a cosine learning-rate decay to 0 (here per iteration, with
:func:`dinolab.schedules.cosine_schedule`). Two differences, both deliberate:

* **Standardised features.** The features are shifted and scaled per dimension by the mean
  and standard deviation of the TRAINING features (test features use the same numbers). This
  is a fixed affine map, so the set of linear classifiers is unchanged; it only puts every
  backbone's features on the same scale, so that one learning rate works for a ViT's
  LayerNorm-ed CLS token, a ResNet's pooled activations and raw pixels alike. Official DINO
  needs no such step because it only probes ViT/ResNet features of known scale, and it uses
  no BatchNorm either (BatchNorm would make the prediction of one image depend on its batch
  during training). Pass ``standardize=False`` for the official behaviour.
* **Learning rate.** Official DINO uses ``0.001 * batch / 256`` for 100 epochs of ImageNet,
  about 500 000 iterations. The small data sets of the course give a few hundred iterations,
  so the default here is larger (0.1 at batch 256 on standardised features).

Examples:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(200, 5, generator=g)
    >>> y = (x[:, 0] > 0).long()
    >>> result = train_linear_probe(x[:150], y[:150], x[150:], y[150:], num_classes=2,
    ...                             epochs=20, progress=False)
    >>> result.accuracy > 0.9
    True
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from dinolab.eval.knn import ArrayLike, _as_tensor, _check_features, _check_labels
from dinolab.schedules import cosine_schedule

__all__ = ["LinearClassifier", "LinearProbeResult", "train_linear_probe"]



class LinearClassifier(nn.Module):
    """``logits = Linear((x - mean) / std)``: a linear layer with a frozen input standardisation.

    Args:
        dim: ``D``, the feature width.
        num_classes: ``C``.
        mean: ``[D]`` per-dimension shift (zeros when None).
        std: ``[D]`` per-dimension scale, all ``> 0`` (ones when None).

    Shapes:
        ``forward(features [B, D]) -> logits [B, C]``. The standardisation is stored as buffers,
        so a saved classifier applies to raw features directly.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        dim: int,
        num_classes: int,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim) if mean is None else mean.clone().float())
        self.register_buffer("std", torch.ones(dim) if std is None else std.clone().float())
        if self.mean.shape != (dim,) or self.std.shape != (dim,):
            raise ValueError(
                f"LinearClassifier: mean and std must have shape [{dim}], got "
                f"{tuple(self.mean.shape)} and {tuple(self.std.shape)}"
            )
        if not bool((self.std > 0).all()):
            raise ValueError("LinearClassifier: every std entry must be > 0")
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.std)


@dataclass
class LinearProbeResult:
    """What :func:`train_linear_probe` returns.

    Attributes:
        accuracy: top-1 accuracy on the test features after the last epoch, in ``[0, 1]``.
        classifier: the trained :class:`LinearClassifier` (eval mode), applicable to raw
            features.
        history: per-epoch lists ``"epoch"``, ``"lr"`` (the learning rate of the epoch's last
            iteration), ``"train_loss"`` (mean cross-entropy, nats) and ``"train_accuracy"``.
    """

    accuracy: float
    classifier: LinearClassifier
    history: dict[str, list[float]] = field(default_factory=dict)


def _positive_int(name: str, value: int) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"train_linear_probe: {name} must be an integer, got {value!r}") from None
    if v < 1:
        raise ValueError(f"train_linear_probe: {name} must be >= 1, got {value!r}")
    return v


def _non_negative(name: str, value: float, strict: bool) -> float:
    expected = "> 0" if strict else ">= 0"
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or v < 0 or (strict and v == 0):
        raise ValueError(
            f"train_linear_probe: {name} must be a finite number {expected}, got {value!r}"
        )
    return v


@torch.no_grad()
def _accuracy(classifier: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    predictions = classifier(features).argmax(dim=1)
    return float((predictions == labels).double().mean())


def train_linear_probe(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
    num_classes: int,
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    *,
    momentum: float = 0.9,
    standardize: bool = True,
) -> LinearProbeResult:
    """Train a linear classifier on frozen features and report its test accuracy.

    Args:
        train_features: ``[N, D]`` features of the training images (from
            :func:`dinolab.eval.extract_features`, normalised or not).
        train_labels: ``[N]`` integer labels in ``[0, num_classes)``.
        test_features: ``[M, D]``.
        test_labels: ``[M]``.
        num_classes: ``C``.
        epochs: passes over the training features (official DINO: 100).
        lr: peak learning rate of the cosine schedule, which decays to 0 per iteration.
        batch_size: features per SGD step; the last batch of an epoch may be smaller.
        weight_decay: L2 penalty of SGD (official DINO: 0).
        seed: seeds the weight initialisation and the shuffling (a private generator: the
            global random state is left untouched).
        progress: show a tqdm bar over epochs with the running loss.
        momentum: SGD momentum (official DINO: 0.9).
        standardize: standardise features with the training mean/std (see the module notes).

    Returns:
        :class:`LinearProbeResult` with the test accuracy, the classifier and the history.

    Raises:
        ValueError: shapes or labels are invalid, features are not finite, or a
            hyper-parameter is out of range.
    """
    owner = "train_linear_probe"
    num_classes = _positive_int("num_classes", num_classes)
    epochs = _positive_int("epochs", epochs)
    batch_size = _positive_int("batch_size", batch_size)
    lr = _non_negative("lr", lr, strict=True)
    weight_decay = _non_negative("weight_decay", weight_decay, strict=False)
    momentum = _non_negative("momentum", momentum, strict=False)
    if momentum >= 1:
        raise ValueError(f"{owner}: momentum must be in [0, 1), got {momentum!r}")

    owner = "train_linear_probe"
    x_train = _as_tensor("train_features", train_features, owner)
    y_train = _as_tensor("train_labels", train_labels, owner)
    x_test = _as_tensor("test_features", test_features, owner)
    y_test = _as_tensor("test_labels", test_labels, owner)
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        _check_features(f"{name}_features", x, owner)
        _check_labels(f"{name}_labels", y, x.shape[0], num_classes, owner)
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"{owner}: train_features have D={x_train.shape[1]} but test_features have "
            f"D={x_test.shape[1]}"
        )

    device = x_train.device
    x_train, y_train = x_train.float(), y_train.long()
    x_test, y_test = x_test.to(device).float(), y_test.to(device).long()
    dim, n_train = x_train.shape[1], x_train.shape[0]

    mean = std = None
    if standardize:
        mean = x_train.mean(dim=0)
        std = x_train.std(dim=0, correction=0)
        # A dimension that is constant on the training set carries no information; scaling it
        # by ~0 would blow up any test value that differs, so it is only centred.
        std = torch.where(std > 1e-6 * std.max().clamp_min(1e-12), std, torch.ones_like(std))
    # nn.Linear's own initialisation draws from the global generator; fork it so the caller's
    # random stream is unchanged (the weights are re-drawn from `generator` just below).
    with torch.random.fork_rng(devices=[]):
        classifier = LinearClassifier(dim, num_classes, mean, std).to(device)

    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        weight = torch.empty(classifier.linear.weight.shape)
        nn.init.normal_(weight, mean=0.0, std=0.01, generator=generator)
        classifier.linear.weight.copy_(weight)
        classifier.linear.bias.zero_()

    optimizer = torch.optim.SGD(
        classifier.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    niter_per_ep = math.ceil(n_train / batch_size)
    lr_schedule = cosine_schedule(lr, 0.0, epochs, niter_per_ep)

    history: dict[str, list[float]] = {
        "epoch": [], "lr": [], "train_loss": [], "train_accuracy": []
    }
    classifier.train()
    bar = tqdm(range(epochs), desc="linear probe", disable=not progress)
    it = 0
    for epoch in bar:
        order = torch.randperm(n_train, generator=generator).to(device)
        loss_sum, correct = 0.0, 0
        for start in range(0, n_train, batch_size):
            idx = order[start : start + batch_size]
            for group in optimizer.param_groups:
                group["lr"] = float(lr_schedule[it])
            logits = classifier(x_train[idx])
            loss = F.cross_entropy(logits, y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * idx.numel()
            correct += int((logits.detach().argmax(dim=1) == y_train[idx]).sum())
            it += 1
        history["epoch"].append(float(epoch))
        history["lr"].append(float(lr_schedule[it - 1]))
        history["train_loss"].append(loss_sum / n_train)
        history["train_accuracy"].append(correct / n_train)
        bar.set_postfix(loss=f"{loss_sum / n_train:.4f}", acc=f"{correct / n_train:.3f}")

    classifier.eval()
    accuracy = _accuracy(classifier, x_test, y_test)
    return LinearProbeResult(accuracy=accuracy, classifier=classifier, history=history)
