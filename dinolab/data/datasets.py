"""Data sets: bundled ones that work offline, and torchvision's real ones behind one builder.

* ``digits``: scikit-learn's 1,797 hand-written 8x8 digits (installed with scikit-learn),
  upscaled to RGB images, with a fixed stratified train/test split (:class:`Digits`);
* ``shapes``: the synthetic :class:`~dinolab.data.shapes.Shapes` set, generated from a seed;
* ``cifar10``, ``stl10``: torchvision's CIFAR-10 and STL-10 read from ``root``
  (:class:`CIFAR10`, :class:`STL10` add a ``check_integrity`` switch and clear errors);
* ``imagefolder``: any tree of class folders (Tiny ImageNet, ImageNet, your own photos).

Nothing is ever downloaded unless ``download=True`` is passed. When files are missing the
error says where they were looked for and how to get them.

Examples:
    >>> ds = build_dataset("digits", train=False)
    >>> img, label = ds[0]
    >>> img.size, num_classes("digits"), len(ds)
    ((32, 32), 10, 450)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset
from torchvision.datasets.utils import check_integrity as _md5_ok

from dinolab.data.shapes import SHAPE_CLASSES, ArrayImageDataset, Shapes

__all__ = [
    "CIFAR10",
    "DATASETS",
    "DATA_ROOT_ENV",
    "Digits",
    "ImageFolder",
    "STL10",
    "build_dataset",
    "default_data_root",
    "num_classes",
]

DATASETS: tuple[str, ...] = ("digits", "shapes", "cifar10", "stl10", "imagefolder")
DATA_ROOT_ENV = "DINOLAB_DATA"

STL10_CLASSES = (
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
)

Transform = Callable[[Any], Any] | None


def default_data_root() -> Path:
    """Where real data sets are looked for when no ``root`` is given.

    ``$DINOLAB_DATA`` if set, else ``./data`` (relative to the working directory).
    """
    return Path(os.environ.get(DATA_ROOT_ENV, "data")).expanduser()


def _resolve_root(root: str | os.PathLike[str] | None) -> Path:
    return default_data_root() if root is None else Path(root).expanduser()


def _missing_files_error(
    what: str, folder: Path, missing: list[str], how: str
) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} not found: looked in {folder.resolve()} and did not find "
        f"{', '.join(missing)}. {how}"
    )


class Digits(ArrayImageDataset):
    """scikit-learn's hand-written digits as RGB images, with a stratified split.

    The 1,797 grey 8x8 images (values 0..16) are scaled to 0..255, upscaled bilinearly to
    ``img_size`` and repeated over three channels. The split is
    ``sklearn.model_selection.train_test_split(stratify=labels, random_state=seed)``, so it is
    the same on every machine and every class keeps its share in both parts.

    Args:
        train: training part (``True``) or test part.
        img_size: side of the returned images, in pixels (>= 8).
        transform: applied to each image (a PIL image, or a uint8 tensor with ``as_tensor``).
        seed: seed of the split.
        test_fraction: share of the images in the test part; 0.25 gives 1,347 / 450.
        as_tensor: return uint8 tensors ``[3, H, W]`` instead of PIL images.

    Attributes:
        data: uint8 array ``[N, H, W, 3]``.
        targets: list of ``N`` labels 0..9.
        indices: positions of these images in ``sklearn.datasets.load_digits()``.
        classes: ``["0", ..., "9"]``.

    Examples:
        >>> tr, te = Digits(train=True), Digits(train=False)
        >>> len(tr) + len(te), tr.data.shape[1:]
        (1797, (32, 32, 3))
    """

    def __init__(
        self,
        train: bool = True,
        img_size: int = 32,
        transform: Transform = None,
        seed: int = 0,
        test_fraction: float = 0.25,
        as_tensor: bool = False,
    ) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 8:
            raise ValueError(f"Digits: img_size={img_size!r} must be an int >= 8 (pixels)")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"Digits: test_fraction={test_fraction!r} must be in (0, 1)")
        bunch = load_digits()
        images = torch.from_numpy(bunch.images.astype(np.float32) * (255.0 / 16.0))
        labels = bunch.target.astype(np.int64)
        train_idx, test_idx = train_test_split(
            np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
        )
        self.indices = np.sort(train_idx if train else test_idx)
        grey = images[torch.from_numpy(self.indices)].unsqueeze(1)  # [N, 1, 8, 8]
        if img_size != grey.shape[-1]:
            grey = torch.nn.functional.interpolate(
                grey, size=(img_size, img_size), mode="bilinear", align_corners=False
            )
        grey = grey.clamp(0, 255).round().to(torch.uint8)
        self.data = grey.squeeze(1)[..., None].expand(-1, -1, -1, 3).contiguous().numpy()
        self.targets: list[int] = labels[self.indices].tolist()
        self.classes = [str(d) for d in range(10)]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.train, self.img_size, self.seed = train, img_size, seed
        self.transform = transform
        self.as_tensor = as_tensor

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return f"Digits(split={split}, n={len(self)}, img_size={self.img_size}, seed={self.seed})"


class CIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR-10 with clear errors and an optional md5 check.

    Expects ``root/cifar-10-batches-py/`` with ``data_batch_1`` .. ``data_batch_5``,
    ``test_batch`` and ``batches.meta`` (the python pickle release).

    Args:
        root: folder holding ``cifar-10-batches-py``.
        train: the 50,000 training images or the 10,000 test images.
        transform: applied to each PIL image.
        target_transform: applied to each label.
        download: fetch and extract the archive into ``root`` if absent (needs a network).
        check_integrity: compare every file with its official md5 sum (torchvision's
            behaviour). ``False`` only checks that the files exist, for local copies or
            small test files.

    Raises:
        FileNotFoundError: files missing and ``download=False``; the message names the folder
            and how to get the data.
        RuntimeError: files present but an md5 sum does not match.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        train: bool = True,
        transform: Transform = None,
        target_transform: Transform = None,
        download: bool = False,
        check_integrity: bool = True,
    ) -> None:
        root = Path(root).expanduser()
        self.check_integrity = check_integrity
        if not check_integrity:
            # md5=None makes torchvision's check_integrity a plain existence test.
            self.train_list = [[name, None] for name, _ in type(self).train_list]
            self.test_list = [[name, None] for name, _ in type(self).test_list]
            self.meta = {**type(self).meta, "md5": None}
        folder = root / self.base_folder
        needed = [n for n, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        missing = [n for n in needed if not (folder / n).is_file()]
        if missing and not download:
            raise _missing_files_error(
                "CIFAR-10",
                folder,
                missing,
                f"In Python, pass download=True (with a network; the command line never "
                f"downloads) to fetch it into {root.resolve()}, or "
                f"download {self.url} and extract it there (it creates {self.base_folder}/).",
            )
        try:
            super().__init__(root, train, transform, target_transform, download)
        except RuntimeError as err:
            raise RuntimeError(
                f"CIFAR-10 in {folder}: {err}. The files exist but do not match the official "
                "md5 sums; download them again, or pass check_integrity=False for a local copy."
            ) from err


class STL10(torchvision.datasets.STL10):
    """torchvision's STL-10 that needs only the files of its split, with clear errors.

    Expects ``root/stl10_binary/`` with ``train_X.bin``/``train_y.bin`` (split ``"train"``),
    ``test_X.bin``/``test_y.bin`` (``"test"``), ``unlabeled_X.bin`` (``"unlabeled"``; both
    for ``"train+unlabeled"``), and optionally ``class_names.txt``. Images are 96x96 RGB.

    Args:
        root: folder holding ``stl10_binary``.
        split: ``"train"``, ``"test"``, ``"unlabeled"`` or ``"train+unlabeled"``.
        folds: one of torchvision's ten 1,000-image training folds, or ``None``.
        transform: applied to each PIL image.
        target_transform: applied to each label (-1 for unlabeled images).
        download: fetch the 2.5 GB archive into ``root`` if absent (needs a network).
        check_integrity: compare the needed files with their official md5 sums.

    Attributes:
        targets: list of labels (``labels`` as a list), like the other data sets.
        classes: class names (from ``class_names.txt``, else the official ten).

    Raises:
        FileNotFoundError: files missing and ``download=False``.
        RuntimeError: files present but an md5 sum does not match.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        folds: int | None = None,
        transform: Transform = None,
        target_transform: Transform = None,
        download: bool = False,
        check_integrity: bool = True,
    ) -> None:
        if split not in self.splits:
            raise ValueError(f"STL10: split={split!r}; expected one of {self.splits}")
        root = Path(root).expanduser()
        self.split = split
        self.check_integrity = check_integrity
        folder = root / self.base_folder
        missing = [n for n, _ in self._needed_files() if not (folder / n).is_file()]
        if missing and not download:
            raise _missing_files_error(
                "STL-10",
                folder,
                missing,
                f"In Python, pass download=True (with a network; the command line never "
                f"downloads) to fetch it into {root.resolve()}, or "
                f"download {self.url} and extract it there (it creates {self.base_folder}/).",
            )
        try:
            super().__init__(root, split, folds, transform, target_transform, download)
        except RuntimeError as err:
            raise RuntimeError(
                f"STL-10 in {folder}: {err}. The files exist but do not match the official "
                "md5 sums; download them again, or pass check_integrity=False for a local copy."
            ) from err
        if not hasattr(self, "classes"):
            self.classes = list(STL10_CLASSES)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def _needed_files(self) -> list[list[Any]]:
        by_name = {name: md5 for name, md5 in self.train_list + self.test_list}
        names = {
            "train": ["train_X.bin", "train_y.bin"],
            "test": ["test_X.bin", "test_y.bin"],
            "unlabeled": ["unlabeled_X.bin"],
            "train+unlabeled": ["train_X.bin", "train_y.bin", "unlabeled_X.bin"],
        }[self.split]
        return [[n, by_name[n]] for n in names]

    def _check_integrity(self) -> bool:
        # torchvision checks all five files whatever the split; check only this split's.
        folder = os.path.join(self.root, self.base_folder)
        return all(
            _md5_ok(os.path.join(folder, name), md5 if self.check_integrity else None)
            for name, md5 in self._needed_files()
        )

    @property
    def targets(self) -> list[int]:
        return [int(y) for y in self.labels] if self.labels is not None else []


def _image_folder_dir(root: Path, train: bool) -> Path:
    """The class-folder tree of one split (see :func:`build_dataset`)."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"imagefolder: {root.resolve()} is not a folder. Expected class folders "
            "(root/<class>/<image>.png ...), or root/train/<class>/... with root/val/<class>/... "
            "(ImageNet layout)."
        )
    if (root / "train").is_dir():
        if train:
            return root / "train"
        for name in ("val", "test"):
            if (root / name).is_dir():
                return root / name
        raise FileNotFoundError(
            f"imagefolder: {root.resolve()} has a train/ folder but no val/ or test/ folder "
            "for train=False; add one (same class folders) or pass the test folder as root."
        )
    if not train:
        warnings.warn(
            f"imagefolder: {root} has no train/ and val/ folders, so train=False reads the "
            "same images as train=True; pass a separate test folder to evaluate fairly.",
            stacklevel=3,
        )
    return root


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def load_image_rgb(path: str) -> Any:
    """Open an image file as an 8-bit RGB PIL image, or raise a ValueError naming the file.

    PIL's own ``convert("RGB")`` clips 16-bit grey values (microscopy, medical PNGs) at 255,
    which turns nearly every pixel white; they are scaled to 8 bits first (``v // 257`` for
    values above 255).
    """
    from PIL import Image

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()
    except OSError as err:  # truncated, not an image (UnidentifiedImageError), unreadable
        raise ValueError(
            f"imagefolder: cannot read {path!r} as an image ({type(err).__name__}: {err}); "
            "remove or replace that file"
        ) from None
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.int64)
        if values.size and values.max() > 255:
            values = values // 257
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def _is_visible_image(path: str) -> bool:
    """An image extension, and not a hidden file (macOS ``._x.jpg`` AppleDouble files)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return not Path(path).name.startswith(".") and path.lower().endswith(IMG_EXTENSIONS)


class ImageFolder(torchvision.datasets.ImageFolder):
    """torchvision's ImageFolder (``root/<class>/<image>``) with the checks own data need.

    * Hidden folders and files (``.ipynb_checkpoints/``, ``._x.jpg``) are neither classes nor
      images.
    * ``classes``: the class list of another split (the training folder's). Labels are then
      indices into that list, matched by folder name, so a query folder that lacks a class
      still gets the right labels; a folder with a class the list lacks is refused.
    * Images are read by :func:`load_image_rgb`: 16-bit images scaled, and a file that cannot
      be decoded raises a ValueError naming it.

    Args:
        root: the class-folder tree.
        transform: applied to each PIL image.
        classes: the class names labels refer to (default: this folder's, sorted).
        **kw: passed to torchvision's ImageFolder (``target_transform``, ``loader``...).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Transform = None,
        classes: Sequence[str] | None = None,
        **kw: Any,
    ) -> None:
        self._given_classes = list(classes) if classes is not None else None
        kw.setdefault("loader", load_image_rgb)
        if "extensions" not in kw:
            kw.setdefault("is_valid_file", _is_visible_image)
        super().__init__(str(root), transform=transform, **kw)

    def find_classes(self, directory: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
        found = sorted(
            e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith(".")
        )
        if not found:
            raise FileNotFoundError(f"no class folders in {str(directory)!r}")
        if self._given_classes is None:
            return found, {c: i for i, c in enumerate(found)}
        extra = [c for c in found if c not in self._given_classes]
        if extra:
            raise ValueError(
                f"imagefolder: {str(directory)!r} has class folders {extra} that the training "
                f"folder does not have (its classes: {self._given_classes}); the labels could "
                "not be matched"
            )
        given = {c: i for i, c in enumerate(self._given_classes)}
        return list(self._given_classes), {c: given[c] for c in found}


def _count_class_dirs(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def build_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    train: bool = True,
    transform: Transform = None,
    download: bool = False,
    **kw: Any,
) -> Dataset:
    """Build a data set by name; every one yields ``(image, label)`` pairs.

    Args:
        name: one of :data:`DATASETS`: ``"digits"``, ``"shapes"``, ``"cifar10"``,
            ``"stl10"``, ``"imagefolder"``.
        root: data folder of the real data sets (``None``: :func:`default_data_root`);
            ignored by ``digits`` and ``shapes``. For ``imagefolder``: either a tree of class
            folders (used for both splits, with a warning for ``train=False``), or a folder
            with ``train/`` and ``val/`` (or ``test/``) class-folder trees.
        train: training split (``True``) or test split. STL-10 maps it to ``"train"`` /
            ``"test"`` unless ``split=`` is given.
        transform: applied to each image (PIL, or tensors for ``as_tensor=True``).
        download: allow torchvision to download CIFAR-10 / STL-10 into ``root``.
        **kw: passed on: ``img_size``, ``seed`` ... (digits, shapes), ``n``, ``num_classes``
            (shapes), ``check_integrity``, ``target_transform`` (cifar10, stl10), ``split``,
            ``folds`` (stl10), ``classes`` (the training split's, to match labels by name),
            ``loader`` ... (imagefolder: :class:`ImageFolder`).

    Returns:
        A ``torch.utils.data.Dataset`` with ``classes`` and ``targets``.

    Raises:
        ValueError: unknown name.
        FileNotFoundError: real data missing; the message says where they were looked for and
            how to get them.

    Examples:
        >>> ds = build_dataset("shapes", n=12, img_size=16)
        >>> len(ds), ds[0][0].size
        (12, (16, 16))
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key == "digits":
        return Digits(train=train, transform=transform, **kw)
    if key == "shapes":
        return Shapes(train=train, transform=transform, **kw)
    if key not in DATASETS:
        raise ValueError(f"build_dataset: unknown data set {name!r}; expected one of {DATASETS}")
    folder = _resolve_root(root)
    if key == "cifar10":
        return CIFAR10(folder, train=train, transform=transform, download=download, **kw)
    if key == "stl10":
        split = kw.pop("split", "train" if train else "test")
        return STL10(folder, split=split, transform=transform, download=download, **kw)
    split_dir = _image_folder_dir(folder, train)
    try:
        return ImageFolder(split_dir, transform=transform, **kw)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"imagefolder: no usable images under {split_dir.resolve()} ({err}). Expected "
            "<class>/<image> files with an image extension (.png, .jpg, ...)."
        ) from err


def num_classes(
    name_or_dataset: str | Dataset,
    root: str | os.PathLike[str] | None = None,
    train: bool = True,
    **kw: Any,
) -> int:
    """Number of classes of a data set, by name (without loading it) or from an instance.

    Args:
        name_or_dataset: a name from :data:`DATASETS`, or a data set with a ``classes``
            attribute.
        root: for ``imagefolder`` by name, the folder whose class folders are counted.
        train: for ``imagefolder`` by name, which split's folder to count.
        **kw: ``num_classes`` for ``shapes``.

    Examples:
        >>> num_classes("cifar10"), num_classes("shapes", num_classes=4)
        (10, 4)
    """
    if not isinstance(name_or_dataset, str):
        classes = getattr(name_or_dataset, "classes", None)
        if classes is None:
            raise ValueError(
                f"num_classes: {type(name_or_dataset).__name__} has no `classes` attribute"
            )
        return len(classes)
    key = name_or_dataset.lower().replace("-", "").replace("_", "")
    if key in ("digits", "cifar10", "stl10"):
        return 10
    if key == "shapes":
        return int(kw.get("num_classes", len(SHAPE_CLASSES)))
    if key == "imagefolder":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _count_class_dirs(_image_folder_dir(_resolve_root(root), train))
    raise ValueError(f"num_classes: unknown data set {name_or_dataset!r}; expected {DATASETS}")
