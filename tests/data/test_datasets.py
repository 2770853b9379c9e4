"""Tests of dinolab.data.datasets on bundled digits and on tiny files in the official layouts."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from dinolab.data.datasets import (
    CIFAR10,
    DATASETS,
    STL10,
    Digits,
    build_dataset,
    default_data_root,
    num_classes,
)
from dinolab.data.shapes import Shapes

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------- digits


def test_digits_split_sizes_and_disjointness() -> None:
    train, test = Digits(train=True), Digits(train=False)
    n = 1797
    assert len(test) == math.ceil(0.25 * n) == 450  # sklearn rounds the test share up
    assert len(train) == n - 450
    assert set(train.indices).isdisjoint(test.indices)
    assert sorted([*train.indices, *test.indices]) == list(range(n))
    assert train.data.shape == (1347, 32, 32, 3) and train.data.dtype == np.uint8


def test_digits_split_is_stratified_and_seeded() -> None:
    labels = load_digits().target
    test = Digits(train=False)
    for c in range(10):
        share = sum(t == c for t in test.targets) / (labels == c).sum()
        assert abs(share - 0.25) < 0.02, (c, share)
    assert np.array_equal(Digits(train=False, seed=0).indices, test.indices)
    assert not np.array_equal(Digits(train=False, seed=1).indices, test.indices)


def test_digits_pixels_match_sklearn() -> None:
    bunch = load_digits()
    ds = Digits(train=True, img_size=8)  # no resampling at the native size
    expected = np.round(bunch.images[ds.indices] * 255 / 16).astype(np.uint8)
    assert np.array_equal(ds.data[..., 0], expected)
    assert np.array_equal(ds.data[..., 0], ds.data[..., 2])  # grey repeated over RGB
    assert ds.targets == bunch.target[ds.indices].tolist()
    big = Digits(train=True, img_size=16)
    assert big.data.shape == (1347, 16, 16, 3)
    # Bilinear upscaling keeps each image's mean brightness within a few grey levels.
    np.testing.assert_allclose(big.data[..., 0].mean((1, 2)), expected.mean((1, 2)), atol=6)


def test_digits_items() -> None:
    ds = Digits(train=False, transform=lambda im: im.convert("L"))
    img, label = ds[0]
    assert isinstance(img, Image.Image) and img.mode == "L" and img.size == (32, 32)
    assert label == ds.targets[0]
    x, _ = Digits(train=False, as_tensor=True)[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
    assert ds.classes == [str(d) for d in range(10)]
    with pytest.raises(ValueError, match="img_size=4"):
        Digits(img_size=4)
    with pytest.raises(ValueError, match="test_fraction=1.5"):
        Digits(test_fraction=1.5)


# ---------------------------------------------------------------- CIFAR-10


def write_tiny_cifar10(root: Path, per_batch: int = 2, n_test: int = 3) -> dict[str, list]:
    """The python-pickle layout torchvision reads: uint8 rows [N, 3 * 32 * 32] (R, G, B planes)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written: dict[str, list] = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f)
        written[name] = [data, labels]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_NAMES, "num_vis": 3072}, f)
    return written


@pytest.mark.parametrize("train", [True, False])
def test_cifar10_reads_tiny_files(tmp_path: Path, train: bool) -> None:
    written = write_tiny_cifar10(tmp_path)
    ds = build_dataset("cifar10", root=tmp_path, train=train, check_integrity=False)
    assert isinstance(ds, CIFAR10)
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    rows = np.concatenate([written[n][0] for n in names])
    labels = sum((written[n][1] for n in names), [])
    assert len(ds) == len(rows) == (10 if train else 3)
    assert ds.classes == CIFAR_NAMES
    for i in (0, len(ds) - 1):
        img, label = ds[i]
        assert img.size == (32, 32) and label == labels[i]
        expected_hwc = rows[i].reshape(3, 32, 32).transpose(1, 2, 0)
        assert np.array_equal(np.asarray(img), expected_hwc)


def test_cifar10_md5_check_rejects_tiny_files(tmp_path: Path) -> None:
    write_tiny_cifar10(tmp_path)
    with pytest.raises(RuntimeError, match="check_integrity=False"):
        build_dataset("cifar10", root=tmp_path)  # check_integrity defaults to True


def test_cifar10_missing_root_says_where_and_how(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        build_dataset("cifar10", root=root)
    message = str(info.value)
    assert str(root / "cifar-10-batches-py") in message
    assert "download=True" in message and "cifar-10-python.tar.gz" in message
    assert not root.exists()  # nothing was created, let alone downloaded


def test_cifar10_missing_file_is_named(tmp_path: Path) -> None:
    write_tiny_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="did not find data_batch_3"):
        CIFAR10(tmp_path, check_integrity=False)


# ---------------------------------------------------------------- STL-10


def write_tiny_stl10(root: Path, n_train: int = 3, n_test: int = 2,
                     class_names: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """STL-10's binary layout: uint8 images stored [N, 3, W, H] (column-major planes), labels
    1..10 as uint8."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)  # HWC, what we expect back
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images.transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")  # -> [N, 3, W, H]
        (labels + 1).tofile(folder / f"{split}_y.bin")
        written[split] = (images, labels)
    if class_names:
        (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    return written


@pytest.mark.parametrize("train", [True, False])
def test_stl10_reads_tiny_files(tmp_path: Path, train: bool) -> None:
    written = write_tiny_stl10(tmp_path)
    ds = build_dataset("stl10", root=tmp_path, train=train, check_integrity=False)
    assert isinstance(ds, STL10)
    images, labels = written["train" if train else "test"]
    assert len(ds) == len(images)
    assert ds.classes == [f"c{i}" for i in range(10)]
    assert ds.targets == labels.tolist()
    for i in range(len(ds)):
        img, label = ds[i]
        assert img.size == (96, 96) and label == int(labels[i])
        assert np.array_equal(np.asarray(img), images[i])


def test_stl10_default_class_names_and_split_argument(tmp_path: Path) -> None:
    write_tiny_stl10(tmp_path, class_names=False)
    ds = build_dataset("stl10", root=tmp_path, split="test", check_integrity=False)
    assert len(ds) == 2 and ds.classes[0] == "airplane" and len(ds.classes) == 10
    with pytest.raises(FileNotFoundError, match="unlabeled_X.bin"):
        build_dataset("stl10", root=tmp_path, split="unlabeled", check_integrity=False)
    with pytest.raises(ValueError, match="split='val'"):
        STL10(tmp_path, split="val")


def test_stl10_md5_and_missing_root(tmp_path: Path) -> None:
    write_tiny_stl10(tmp_path)
    with pytest.raises(RuntimeError, match="check_integrity=False"):
        build_dataset("stl10", root=tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        build_dataset("stl10", root=tmp_path / "absent", train=False)
    message = str(info.value)
    assert str(tmp_path / "absent" / "stl10_binary") in message
    assert "test_X.bin" in message and "download=True" in message


# ---------------------------------------------------------------- image folders


def write_png(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 5), colour).save(path)


def test_imagefolder_tree(tmp_path: Path) -> None:
    write_png(tmp_path / "cats" / "a.png", (255, 0, 0))
    write_png(tmp_path / "cats" / "b.png", (250, 0, 0))
    write_png(tmp_path / "dogs" / "c.png", (0, 0, 255))
    ds = build_dataset("imagefolder", root=tmp_path)
    assert ds.classes == ["cats", "dogs"] and len(ds) == 3
    img, label = ds[2]
    assert label == 1 and img.size == (6, 5) and img.getpixel((0, 0)) == (0, 0, 255)
    assert num_classes("imagefolder", root=tmp_path) == 2
    with pytest.warns(UserWarning, match="same images"):
        test = build_dataset("imagefolder", root=tmp_path, train=False)
    assert len(test) == 3


def test_imagefolder_train_val_layout(tmp_path: Path) -> None:
    for split, n in (("train", 2), ("val", 1)):
        for cls in ("a", "b", "c"):
            for i in range(n):
                write_png(tmp_path / split / cls / f"{i}.png", (i, 0, 0))
    train = build_dataset("imagefolder", root=tmp_path, train=True)
    val = build_dataset("imagefolder", root=tmp_path, train=False)
    assert (len(train), len(val)) == (6, 3) and train.classes == val.classes == ["a", "b", "c"]
    assert num_classes("imagefolder", root=tmp_path, train=False) == 3


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        build_dataset("imagefolder", root=tmp_path / "missing")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match="no usable images"):
        build_dataset("imagefolder", root=tmp_path)
    write_png(tmp_path / "only_train" / "train" / "x" / "0.png", (0, 0, 0))
    with pytest.raises(FileNotFoundError, match="no val/ or test/"):
        build_dataset("imagefolder", root=tmp_path / "only_train", train=False)


def test_imagefolder_skips_hidden_folders_and_files(tmp_path: Path) -> None:
    """Jupyter's .ipynb_checkpoints/ is no class, macOS's ._a.png is no image."""
    write_png(tmp_path / "cats" / "a.png", (255, 0, 0))
    write_png(tmp_path / "dogs" / "b.png", (0, 0, 255))
    write_png(tmp_path / ".ipynb_checkpoints" / "c.png", (0, 255, 0))
    (tmp_path / "cats" / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    ds = build_dataset("imagefolder", root=tmp_path)
    assert ds.classes == ["cats", "dogs"] and len(ds) == 2
    assert num_classes(ds) == num_classes("imagefolder", root=tmp_path) == 2


def test_imagefolder_queries_are_labelled_by_the_training_class_names(tmp_path: Path) -> None:
    for cls in ("cat", "dog"):
        write_png(tmp_path / "train" / cls / "0.png", (0, 0, 0))
    write_png(tmp_path / "val" / "dog" / "0.png", (0, 0, 0))  # no cat queries
    train = build_dataset("imagefolder", root=tmp_path)
    val = build_dataset("imagefolder", root=tmp_path, train=False, classes=train.classes)
    # On its own the folder would call "dog" class 0; by the training names it is class 1.
    assert build_dataset("imagefolder", root=tmp_path, train=False)[0][1] == 0
    assert val.classes == ["cat", "dog"] and val[0][1] == 1
    write_png(tmp_path / "val" / "zebra" / "0.png", (0, 0, 0))
    with pytest.raises(ValueError, match=r"class folders \['zebra'\] that the training folder"):
        build_dataset("imagefolder", root=tmp_path, train=False, classes=train.classes)


def test_imagefolder_reads_16_bit_images_and_names_a_broken_file(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    ramp = np.linspace(0, 65535, 12, dtype=np.uint16).reshape(3, 4)
    Image.fromarray(ramp).save(tmp_path / "a" / "deep.png")  # a 16-bit greyscale PNG
    ds = build_dataset("imagefolder", root=tmp_path)
    got = np.asarray(ds[0][0])[..., 0]
    # 65535 -> 255, 0 -> 0: the ramp survives (PIL's own convert("RGB") clips it at 255).
    assert got.min() == 0 and got.max() == 255 and len(np.unique(got)) == 12
    write_png(tmp_path / "a" / "good.png", (1, 2, 3))
    data = (tmp_path / "a" / "good.png").read_bytes()
    (tmp_path / "a" / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "a" / "text.jpg").write_text("not an image")
    ds = build_dataset("imagefolder", root=tmp_path)
    for i, (path, _) in enumerate(ds.samples):
        if path.endswith(("cut.png", "text.jpg")):
            with pytest.raises(ValueError, match=rf"cannot read '{path}' as an image"):
                ds[i]


# ---------------------------------------------------------------- the builder


def test_default_root_comes_from_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DINOLAB_DATA", str(tmp_path / "store"))
    assert default_data_root() == tmp_path / "store"
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "store")):
        build_dataset("cifar10")


def test_builder_names_and_bundled_sets() -> None:
    assert DATASETS == ("digits", "shapes", "cifar10", "stl10", "imagefolder")
    digits = build_dataset("digits", train=False, img_size=16)
    assert isinstance(digits, Digits) and digits.data.shape[1:] == (16, 16, 3)
    shapes = build_dataset("Shapes", n=10, img_size=16, num_classes=3)
    assert isinstance(shapes, Shapes) and len(shapes) == 10 and len(shapes.classes) == 3
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        build_dataset("mnist")


def test_num_classes() -> None:
    assert [num_classes(n) for n in ("digits", "cifar10", "stl10", "shapes")] == [10, 10, 10, 6]
    assert num_classes("shapes", num_classes=4) == 4
    assert num_classes(Shapes(n=4, img_size=8, num_classes=3)) == 3
    with pytest.raises(ValueError, match="unknown data set"):
        num_classes("mnist")
    with pytest.raises(ValueError, match="no `classes` attribute"):
        num_classes(torch.utils.data.TensorDataset(torch.zeros(2)))
