"""Tests of dinolab.data.shapes: determinism, balance, items, and raw-pixel difficulty."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.neighbors import KNeighborsClassifier

from dinolab.data import shapes as shapes_module
from dinolab.data.shapes import SHAPE_CLASSES, Shapes, generate_shapes


def test_same_seed_same_images_even_without_the_cache() -> None:
    first = generate_shapes(n=64, img_size=16, seed=3)
    shapes_module._cached_shapes.cache_clear()
    again = generate_shapes(n=64, img_size=16, seed=3)
    assert first[0] is not again[0]  # really regenerated
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])


def test_seeds_and_splits_differ() -> None:
    a = Shapes(n=64, img_size=16, seed=0)
    b = Shapes(n=64, img_size=16, seed=1)
    test = Shapes(n=64, img_size=16, seed=0, train=False)
    assert not np.array_equal(a.data, b.data)
    assert not np.array_equal(a.data, test.data)
    # No image of the test split appears in the train split.
    train_rows = {row.tobytes() for row in a.data}
    assert not any(row.tobytes() in train_rows for row in test.data)


def test_instances_do_not_share_writable_arrays() -> None:
    images, _ = generate_shapes(n=8, img_size=16)
    with pytest.raises(ValueError):
        images[0, 0, 0, 0] = 1  # the cached array is read-only
    ds = Shapes(n=8, img_size=16)
    ds.data[0] = 0
    assert np.array_equal(Shapes(n=8, img_size=16).data, images)


@pytest.mark.parametrize("n, k", [(2000, 6), (10, 4), (7, 2)])
def test_classes_are_balanced(n: int, k: int) -> None:
    ds = Shapes(n=n, img_size=8, num_classes=k)
    counts = np.bincount(ds.targets, minlength=k)
    assert len(counts) == k and counts.sum() == n
    assert counts.max() - counts.min() <= 1, counts
    assert ds.classes == list(SHAPE_CLASSES[:k])


def test_items_pil_tensor_and_transform() -> None:
    ds = Shapes(n=12, img_size=24)
    img, label = ds[5]
    assert isinstance(img, Image.Image) and img.size == (24, 24) and img.mode == "RGB"
    assert label == ds.targets[5] and 0 <= label < 6
    assert np.array_equal(np.asarray(img), ds.data[5])
    tensor_ds = Shapes(n=12, img_size=24, as_tensor=True)
    x, _ = tensor_ds[5]
    assert x.dtype == torch.uint8 and x.shape == (3, 24, 24)
    assert torch.equal(x.permute(1, 2, 0), torch.tensor(ds.data[5]))
    flipped, _ = Shapes(n=12, img_size=24, transform=lambda im: im.transpose(0))[5]
    assert np.array_equal(np.asarray(flipped), ds.data[5][:, ::-1])


def test_images_contain_a_shape_and_vary() -> None:
    data = Shapes(n=200, img_size=32).data.astype(np.float32)
    # Not flat: a shape of a contrasting colour sits on the noisy background.
    assert (data.reshape(200, -1).std(1) > 5).all()
    # Different images (no two identical).
    assert len({row.tobytes() for row in data.astype(np.uint8)}) == 200


def test_raw_pixel_knn_is_weak_but_above_chance() -> None:
    # Measured on this split: 0.38 accuracy with k = 5 (chance: 1/6 = 0.167). Shapes are at
    # random places, sizes, angles and colours over random grey levels, so pixel distance says
    # little about the class. The bounds leave a wide margin on both sides.
    train = Shapes(n=2000, img_size=32, seed=0, train=True)
    test = Shapes(n=500, img_size=32, seed=0, train=False)
    x_train = train.data.reshape(len(train), -1).astype(np.float32) / 255
    x_test = test.data.reshape(len(test), -1).astype(np.float32) / 255
    knn = KNeighborsClassifier(n_neighbors=5).fit(x_train, train.targets)
    accuracy = knn.score(x_test, test.targets)
    assert 1 / 6 + 0.04 < accuracy < 0.8, accuracy


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(n=0), "n=0"),
        (dict(img_size=4), "img_size=4"),
        (dict(num_classes=1), "num_classes=1"),
        (dict(num_classes=len(SHAPE_CLASSES) + 1), "num_classes"),
        (dict(seed=-1), "seed=-1"),
    ],
)
def test_bad_arguments(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        Shapes(**kwargs)
