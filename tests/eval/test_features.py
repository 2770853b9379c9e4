"""dinolab.eval.features: no-grad eval-mode extraction that leaves the model as it found it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from dinolab.eval import extract_features


def _net() -> nn.Module:
    # BatchNorm and Dropout make train and eval forwards differ, so the mode is observable.
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4, 6),
    )


def _loader(n: int = 10, batch_size: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 3)
    return DataLoader(data, batch_size=batch_size, shuffle=False)


@pytest.mark.parametrize("normalize", [True, False])
def test_matches_a_manual_eval_forward(normalize):
    model = _net()
    loader = _loader()
    features, labels = extract_features(model, loader, normalize=normalize, progress=False)
    images = torch.cat([x for x, _ in loader])
    model.eval()
    with torch.no_grad():
        want = model(images)
    if normalize:
        want = F.normalize(want, dim=1)
    torch.testing.assert_close(features, want, rtol=1e-5, atol=1e-6)  # float32 batch split
    assert labels.tolist() == (torch.arange(10) % 3).tolist()
    assert features.shape == (10, 6) and labels.dtype == torch.int64
    assert not features.requires_grad
    if normalize:
        torch.testing.assert_close(features.norm(dim=1), torch.ones(10))


def test_restores_train_mode_and_bn_statistics():
    model = _net()
    model.train()
    running_mean = model[1].running_mean.clone()
    extract_features(model, _loader(), progress=False)
    assert model.training and all(m.training for m in model.modules())
    # eval mode: the BatchNorm running statistics were not updated by the extraction
    torch.testing.assert_close(model[1].running_mean, running_mean, rtol=0, atol=0)


def test_restores_mixed_modes_exactly():
    model = _net()
    model.train()
    model[1].eval()  # e.g. a frozen BatchNorm inside a model that is training
    before = [m.training for m in model.modules()]
    extract_features(model, _loader(), progress=False)
    assert [m.training for m in model.modules()] == before


def test_keeps_eval_mode_and_restores_mode_after_an_error():
    model = _net().eval()
    extract_features(model, _loader(), progress=False)
    assert not model.training

    model.train()
    bad = [(torch.randn(2, 3, 8, 8), torch.tensor([0, 1])), (torch.randn(2, 3, 8, 8),)]
    with pytest.raises(ValueError, match=r"batch 1 must be a pair \(images, labels\)"):
        extract_features(model, bad, progress=False)
    assert model.training and all(m.training for m in model.modules())


def test_accepts_plain_lists_of_batches_with_list_labels():
    model = nn.Flatten()
    batches = [(torch.ones(2, 1, 2, 2), [0, 1]), (2 * torch.ones(1, 1, 2, 2), [1])]
    features, labels = extract_features(model, batches, normalize=False, progress=False)
    torch.testing.assert_close(features, torch.tensor([[1.0] * 4, [1.0] * 4, [2.0] * 4]))
    assert labels.tolist() == [0, 1, 1]


def test_bad_input():
    with pytest.raises(ValueError, match="loader yielded no batches"):
        extract_features(_net(), [], progress=False)
    with pytest.raises(ValueError, match=r"must return \[B, D\] features"):
        extract_features(nn.Identity(), _loader(), progress=False)
    with pytest.raises(ValueError, match=r"has 4 images but labels of shape \(3,\)"):
        extract_features(_net(), [(torch.randn(4, 3, 8, 8), torch.zeros(3))], progress=False)
    with pytest.raises(ValueError, match="parameters are on cpu but device=meta"):
        extract_features(_net(), _loader(), device="meta", progress=False)
