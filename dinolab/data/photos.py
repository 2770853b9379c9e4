"""Real photographs that ship with scikit-image, for looking at augmentations offline.

Only images stored inside the scikit-image package are offered (``skimage.data``'s bundled
files), so nothing is fetched from the network: ``astronaut``, ``coffee``, ``chelsea`` (a cat),
``rocket``, ``motorcycle`` (left view of the stereo pair), ``immunohistochemistry``,
``hubble_deep_field``, and the grey ``camera``, ``coins``, ``moon``, ``brick``, ``grass``,
``gravel``, converted to RGB. (``skimage.data.eagle``, ``lily``, ``brain`` ... need the
optional ``pooch`` download and are left out.)

Examples:
    >>> photos = load_photos(["astronaut", "coins"])
    >>> [(name, img.mode) for name, img in photos]
    [('astronaut', 'RGB'), ('coins', 'RGB')]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["PHOTO_NAMES", "PhotoDataset", "load_photo", "load_photos"]

# name -> (skimage.data function, index into its result when it returns a tuple)
_SOURCES: dict[str, tuple[str, int | None]] = {
    "astronaut": ("astronaut", None),
    "coffee": ("coffee", None),
    "chelsea": ("chelsea", None),
    "rocket": ("rocket", None),
    "motorcycle": ("stereo_motorcycle", 0),
    "immunohistochemistry": ("immunohistochemistry", None),
    "hubble_deep_field": ("hubble_deep_field", None),
    "camera": ("camera", None),
    "coins": ("coins", None),
    "moon": ("moon", None),
    "brick": ("brick", None),
    "grass": ("grass", None),
    "gravel": ("gravel", None),
}
PHOTO_NAMES: tuple[str, ...] = tuple(_SOURCES)


@functools.cache
def _load_array(name: str) -> np.ndarray:
    import skimage.data

    func, index = _SOURCES[name]
    arr = getattr(skimage.data, func)()
    if index is not None:
        arr = arr[index]
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"photo {name!r} has dtype {arr.dtype}; expected uint8")
    arr.setflags(write=False)
    return arr


def load_photo(name: str, max_side: int | None = None) -> Image.Image:
    """One bundled photo as an RGB PIL image.

    Args:
        name: one of :data:`PHOTO_NAMES`.
        max_side: if given, shrink (never enlarge) so the longer side is at most this many
            pixels, keeping the aspect ratio.

    Returns:
        A new RGB ``PIL.Image`` (the caller may modify it).
    """
    if name not in _SOURCES:
        raise ValueError(f"load_photo: unknown photo {name!r}; expected one of {PHOTO_NAMES}")
    if max_side is not None and (not isinstance(max_side, int) or max_side < 1):
        raise ValueError(f"load_photo: max_side={max_side!r} must be a positive int or None")
    img = Image.fromarray(_load_array(name)).convert("RGB")
    if max_side is not None and max(img.size) > max_side:
        scale = max_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    return img


def load_photos(
    names: Sequence[str] | None = None, max_side: int | None = None
) -> list[tuple[str, Image.Image]]:
    """Bundled photos as ``(name, RGB PIL image)`` pairs, loaded offline.

    Args:
        names: which photos (default: all of :data:`PHOTO_NAMES`, in that order).
        max_side: optional bound on the longer side, in pixels (see :func:`load_photo`).
    """
    if names is None:
        names = PHOTO_NAMES
    if isinstance(names, str):
        raise ValueError(f"load_photos: names={names!r} must be a list of names, not a string")
    return [(n, load_photo(n, max_side)) for n in names]


class PhotoDataset(Dataset):
    """Random resized crops of the bundled photos: a small, real-image data set.

    Item ``i`` is a crop of photo ``i % P`` (``P`` photos) labelled with that photo's index.
    Its box covers a fraction ``U(scale)`` of the photo's area with an aspect ratio
    log-uniform in ``ratio`` (the RandomResizedCrop rule), drawn from a NumPy generator seeded
    by ``(seed, i)``, so the data set is the same on every pass; the crop is resized to
    ``crop_size`` pixels. Pass ``transform=MultiCropAugmentation(...)`` to feed DINO.

    Args:
        names: photos to use (default all of :data:`PHOTO_NAMES`).
        length: number of items (default ``16 * P``).
        crop_size: side of the square crops, in pixels.
        scale: ``(min, max)`` fraction of the photo's area covered by a crop, in (0, 1].
        ratio: ``(min, max)`` width/height ratio of the box before resizing.
        transform: applied to each PIL crop.
        seed: seed of the crop boxes.
        max_side: photos are first shrunk so their longer side is at most this (pixels),
            which keeps cropping fast.

    Examples:
        >>> ds = PhotoDataset(["astronaut", "coffee"], length=4, crop_size=32)
        >>> img, label = ds[1]
        >>> img.size, ds.classes[label]
        ((32, 32), 'coffee')
    """

    def __init__(
        self,
        names: Sequence[str] | None = None,
        length: int | None = None,
        crop_size: int = 96,
        scale: tuple[float, float] = (0.25, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        transform: Callable[[Image.Image], Any] | None = None,
        seed: int = 0,
        max_side: int | None = 256,
    ) -> None:
        self.photos = load_photos(names, max_side)
        self.classes = [n for n, _ in self.photos]
        if length is None:
            length = 16 * len(self.photos)
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"PhotoDataset: length={length!r} must be an int >= 1")
        if not isinstance(crop_size, int) or crop_size < 1:
            raise ValueError(f"PhotoDataset: crop_size={crop_size!r} must be a positive int")
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"PhotoDataset: scale={scale!r} must satisfy 0 < min <= max <= 1")
        if len(ratio) != 2 or not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"PhotoDataset: ratio={ratio!r} must satisfy 0 < min <= max")
        self.length, self.crop_size = length, crop_size
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.transform, self.seed = transform, seed
        self.targets = [i % len(self.photos) for i in range(length)]

    def __len__(self) -> int:
        return self.length

    def crop_box(self, index: int) -> tuple[int, int, int, int]:
        """``(left, top, width, height)`` in pixels of item ``index``'s crop."""
        w_img, h_img = self.photos[index % len(self.photos)][1].size
        rng = np.random.default_rng([self.seed, index])
        area = w_img * h_img
        log_ratio = (np.log(self.ratio[0]), np.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = float(np.exp(rng.uniform(*log_ratio)))
            w = int(round(np.sqrt(target * aspect)))
            h = int(round(np.sqrt(target / aspect)))
            if 0 < w <= w_img and 0 < h <= h_img:
                left = int(rng.integers(0, w_img - w + 1))
                top = int(rng.integers(0, h_img - h + 1))
                return left, top, w, h
        # Fall back to the largest central box whose aspect ratio lies within `ratio`.
        aspect = min(max(w_img / h_img, self.ratio[0]), self.ratio[1])
        w = min(w_img, round(h_img * aspect))
        h = min(h_img, round(w / aspect))
        return (w_img - w) // 2, (h_img - h) // 2, w, h

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not -self.length <= index < self.length:
            raise IndexError(f"PhotoDataset index {index} out of range for length {self.length}")
        index %= self.length
        left, top, w, h = self.crop_box(index)
        photo = self.photos[index % len(self.photos)][1]
        crop: Any = photo.resize(
            (self.crop_size, self.crop_size),
            Image.Resampling.BICUBIC,
            box=(left, top, left + w, top + h),
        )
        if self.transform is not None:
            crop = self.transform(crop)
        return crop, self.targets[index]
