"""dinolab.models.resnet: torchvision ResNets as headless feature extractors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

from dinolab.models.resnet import ResNetBackbone


@pytest.mark.parametrize("arch, dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_embed_dim_and_torchvision_keys(arch, dim):
    with torch.device("meta"):  # shapes only: no memory, no download (weights=None)
        model = ResNetBackbone(arch)
        reference = getattr(torchvision.models, arch)(weights=None)
    assert model.embed_dim == dim and isinstance(model.fc, nn.Identity)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()
              if not k.startswith("fc.")}
    assert ours == theirs  # official DINO / torchvision checkpoints fit without renaming


@pytest.fixture(scope="module")
def imagenet_stem() -> ResNetBackbone:
    return ResNetBackbone("resnet18").eval()


@pytest.fixture(scope="module")
def cifar_stem() -> ResNetBackbone:
    return ResNetBackbone("resnet18", small_input=True).eval()


def test_any_input_size_gives_pooled_features(imagenet_stem):
    with torch.no_grad():
        for size in ((32, 32), (48, 40), (40, 24)):
            assert imagenet_stem(torch.randn(1, 3, *size)).shape == (1, 512)


def test_small_input_stem_keeps_resolution(cifar_stem, imagenet_stem):
    small, imagenet = cifar_stem, imagenet_stem
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    grids = {}
    for name, model in (("small", small), ("imagenet", imagenet)):
        hook = model.layer4.register_forward_hook(
            lambda m, i, o, n=name: grids.__setitem__(n, o.shape))
        with torch.no_grad():
            assert model(torch.randn(1, 3, 32, 32)).shape == (1, 512)
        hook.remove()
    # 32 px: stride 8 over the stages -> 4x4 with the CIFAR stem, 1x1 with the ImageNet one.
    assert grids["small"][-2:] == (4, 4) and grids["imagenet"][-2:] == (1, 1)


def test_grey_input_channels():
    model = ResNetBackbone("resnet18", small_input=True, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 16, 16)).shape == (1, 512)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown arch 'resnet19'"):
        ResNetBackbone("resnet19")
    with pytest.raises(ValueError, match=r"expected images \[B, C, H, W\]"):
        ResNetBackbone("resnet18")(torch.randn(3, 32, 32))
