"""Tests of dinolab.data.photos: bundled photos load with no network; the crop data set."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from PIL import Image

from dinolab.data import photos as photos_module
from dinolab.data.multicrop import MultiCropAugmentation
from dinolab.data.photos import PHOTO_NAMES, PhotoDataset, load_photo, load_photos


def test_every_photo_loads_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a photo tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    photos_module._load_array.cache_clear()  # really read the files, not an earlier cache
    photos = load_photos()
    assert [name for name, _ in photos] == list(PHOTO_NAMES)
    for name, img in photos:
        assert isinstance(img, Image.Image) and img.mode == "RGB", name
        assert min(img.size) >= 100, (name, img.size)


def test_photos_match_scikit_image() -> None:
    import skimage.data

    assert np.array_equal(np.asarray(load_photo("astronaut")), skimage.data.astronaut())
    camera = np.asarray(load_photo("camera"))  # grey source -> three equal channels
    assert camera.shape == (512, 512, 3)
    assert np.array_equal(camera[..., 0], skimage.data.camera())
    assert np.array_equal(camera[..., 0], camera[..., 2])


def test_max_side_shrinks_keeping_aspect() -> None:
    big = load_photo("coffee")  # 600 x 400
    small = load_photo("coffee", max_side=60)
    assert max(small.size) == 60
    assert abs(small.size[1] - 60 * big.size[1] / big.size[0]) <= 1
    assert load_photo("coffee", max_side=10_000).size == big.size  # never enlarged


def test_bad_names() -> None:
    with pytest.raises(ValueError, match="unknown photo 'eagle'"):
        load_photo("eagle")
    with pytest.raises(ValueError, match="not a string"):
        load_photos("astronaut")
    with pytest.raises(ValueError, match="max_side=0"):
        load_photo("coins", max_side=0)


def test_photo_dataset_crops() -> None:
    ds = PhotoDataset(["astronaut", "coins", "rocket"], length=12, crop_size=24,
                      scale=(0.2, 0.6))
    assert len(ds) == 12 and ds.classes == ["astronaut", "coins", "rocket"]
    for i in range(12):
        img, label = ds[i]
        assert img.size == (24, 24) and img.mode == "RGB" and label == i % 3
        left, top, w, h = ds.crop_box(i)
        width, height = ds.photos[label][1].size
        assert 0 <= left and left + w <= width and 0 <= top and top + h <= height
        # Area share within the scale range, up to the rounding of w and h (2% slack).
        assert 0.2 - 0.02 <= w * h / (width * height) <= 0.6 + 0.02
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    # Deterministic: the same item twice, and the same data set rebuilt.
    again = PhotoDataset(["astronaut", "coins", "rocket"], length=12, crop_size=24,
                         scale=(0.2, 0.6))
    assert np.array_equal(np.asarray(ds[5][0]), np.asarray(again[5][0]))
    other_seed = PhotoDataset(["astronaut"], length=2, crop_size=24, seed=1)
    assert ds.crop_box(0) != other_seed.crop_box(0)
    with pytest.raises(IndexError):
        ds[12]


def test_photo_dataset_feeds_multicrop() -> None:
    aug = MultiCropAugmentation(global_crops_size=32, local_crops_size=16, local_crops_number=2)
    ds = PhotoDataset(["chelsea"], length=2, crop_size=48, transform=aug)
    crops, label = ds[0]
    assert label == 0 and [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 2
    assert all(c.dtype == torch.float32 for c in crops)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(length=0), "length=0"),
        (dict(crop_size=0), "crop_size=0"),
        (dict(scale=(0.0, 1.0)), "scale"),
        (dict(ratio=(2.0, 1.0)), "ratio"),
    ],
)
def test_photo_dataset_bad_arguments(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        PhotoDataset(["coins"], **kwargs)
