"""``Shapes``: a synthetic, offline image-classification set built for self-supervised lessons.

Each image shows one filled shape (circle, square, triangle, cross, ring or star) at a random
position, size, rotation and colour, over a background of a random grey level with pixel
noise. The label is the shape. Colour, position, size and background brightness dominate the
pixel values while the label depends only on the silhouette, so nearest neighbours in raw
pixel space are a weak classifier (about 0.38 accuracy with six classes, chance 0.17; see
``tests/data/test_shapes.py``), and a representation has to become invariant to exactly the
nuisances that multi-crop augmentation varies.

The generator knows where it drew each shape, so every image comes with an exact object mask
(``Shapes.masks``, bool ``[n, H, W]``: the pixels the shape covers at least half of), the
ground truth of the attention metric in :mod:`dinolab.eval.attention`.

Everything is drawn from NumPy generators seeded by ``(seed, split)``: the same arguments
give the same images, and the train and test splits are independent draws. Generated arrays
are cached in memory, so building the same split twice costs nothing.

Examples:
    >>> ds = Shapes(n=60, img_size=32, seed=0)
    >>> img, label = ds[0]
    >>> img.size, ds.classes[label] in ds.classes, len(ds)
    ((32, 32), True, 60)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "SHAPE_CLASSES",
    "SHAPES_STYLES",
    "ArrayImageDataset",
    "Shapes",
    "generate_shapes",
    "generate_shapes_masks",
]

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star")

_SUPERSAMPLE = 2  # draw at 2x and average 2x2 blocks: anti-aliased edges at little cost
_CHUNK = 256  # images drawn at once; bounds the temporary arrays to a few MB


def _silhouette(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of one shape in its own frame, unit radius ~ 1: bool, same shape as ``u``."""
    rho = np.hypot(u, v)
    if name == "circle":
        return rho <= 0.85
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.65
    if name == "triangle":
        # Equilateral triangle of circumradius 0.95: inside all three edges, inradius 0.475.
        inside = np.ones_like(u, dtype=bool)
        for a in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6):
            inside &= u * np.cos(a) + v * np.sin(a) <= 0.475
        return inside
    if name == "cross":
        arm, reach = 0.25, 0.9
        return ((np.abs(u) <= arm) & (np.abs(v) <= reach)) | (
            (np.abs(v) <= arm) & (np.abs(u) <= reach)
        )
    if name == "ring":
        return (rho >= 0.5) & (rho <= 0.9)
    if name == "star":
        phi = np.arctan2(v, u)
        return rho <= 0.4 + 0.55 * (0.5 + 0.5 * np.cos(5 * phi)) ** 2
    raise ValueError(f"unknown shape {name!r}; expected one of {SHAPE_CLASSES}")


def _coverage(
    labels: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    radius: np.ndarray,
    theta: np.ndarray,
    img_size: int,
) -> np.ndarray:
    """Fraction of each pixel that the shape covers, estimated on a 2x finer grid.

    Args:
        labels: int ``[n]``, indices into :data:`SHAPE_CLASSES`.
        cx, cy: float32 ``[n, 1, 1]`` centres in units of the image side (0 left / top).
        radius: float32 ``[n]`` radii in units of the image side.
        theta: float32 ``[n, 1, 1]`` rotations in radians.
        img_size: image side ``S`` in pixels.

    Returns:
        float32 ``[n, S, S]`` coverage in ``{0, 1/4, 2/4, 3/4, 1}`` (the share of the pixel's
        2x2 sub-pixel centres inside the silhouette).
    """
    n, s, ss = len(labels), img_size, _SUPERSAMPLE
    # Sub-pixel centre coordinates in units of the image side, [1, s*ss, s*ss] each.
    c = ((np.arange(s * ss) + 0.5) / (s * ss)).astype(np.float32)
    yf, xf = np.meshgrid(c, c, indexing="ij")
    dx, dy = xf[None] - cx, yf[None] - cy
    r = radius[:, None, None]
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / r
    v = (dy * np.cos(theta) - dx * np.sin(theta)) / r
    inside = np.zeros(u.shape, dtype=bool)
    for k, name in enumerate(SHAPE_CLASSES):
        idx = np.flatnonzero(labels == k)
        if idx.size:
            inside[idx] = _silhouette(name, u[idx], v[idx])
    alpha = np.zeros((n, s, s), dtype=np.float32)
    for i in range(ss):
        for j in range(ss):
            alpha += inside[:, i::ss, j::ss]
    return alpha / ss**2


def _draw_chunk(
    labels: np.ndarray, img_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``len(labels)`` images and their object masks.

    Returns:
        ``(images, masks)``: uint8 ``[n, S, S, 3]`` and bool ``[n, S, S]``, True where the
        shape covers at least half of the pixel (coverage >= 0.5, see :func:`_coverage`).
    """
    n, s = len(labels), img_size
    f32 = np.float32

    def draw(*shape: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
        return rng.uniform(low, high, shape).astype(f32)

    # Background: one random grey level per image (pixel noise is added at the end). An
    # earlier version drew coloured gradients and sine stripes; on those, a 4-block ViT with
    # 8-px patches stayed at chance after 300 supervised steps (k-NN 27%) and DINO drifted to a
    # uniform teacher, because the texture, shared by every crop of an image, was an easier
    # invariant than the silhouette. On grey backgrounds the same ViT reaches k-NN 47% in 300
    # supervised steps, and DINO learns (benchmarks/EXPERIMENTS.md).
    grey = draw(n, 1, 1, 1)
    bg = np.broadcast_to(grey, (n, s, s, 3)).copy()

    # Shape: random centre, radius and rotation; the silhouette is tested in its own frame on
    # a finer grid, and its coverage of each pixel becomes the blending weight.
    radius = draw(n, low=0.24, high=0.4)
    cx = rng.uniform(radius + 0.02, 0.98 - radius).astype(f32)[:, None, None]
    cy = rng.uniform(radius + 0.02, 0.98 - radius).astype(f32)[:, None, None]
    theta = draw(n, 1, 1, high=2 * np.pi)
    coverage = _coverage(labels, cx, cy, radius, theta, s)
    alpha = coverage[..., None]

    # Colour far enough from the mean background to stay visible.
    colour = draw(n, 3)
    mean_bg = bg.reshape(n, -1, 3).mean(1)
    too_close = np.linalg.norm(colour - mean_bg, axis=1) < 0.6
    colour[too_close] = np.where(mean_bg[too_close] > 0.5, 0.1, 0.9) * draw(
        int(too_close.sum()), 3, low=0.6
    )
    img = bg + (colour[:, None, None] - bg) * alpha
    noise_std = draw(n, 1, 1, 1, low=0.01, high=0.08)  # per-image pixel noise, [0, 1] units
    img += noise_std * rng.standard_normal(img.shape, dtype=f32)
    images = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return images, coverage >= 0.5


def _draw_dark_chunk(
    labels: np.ndarray,
    img_size: int,
    rng: np.random.Generator,
    background_level: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``len(labels)`` images of the ``"dark"`` style and their object masks.

    A bright grey shape (level 0.65-1) anywhere on a dark grey background (level 0-0.35), radius
    0.18-0.32 of the side, any rotation, light pixel noise. Why grey and bright-on-dark: DINO
    matches whatever two crops of one image share most reliably. Tried on this kind of data
    (experiments/dino_research.md): with random colours, shared colour was matched instead of
    shape under mild colour jitter, and under strong per-crop colour randomisation the teacher
    stayed at uniform targets (k-NN at chance after 1200 steps); with one polarity and grey
    levels, the silhouette is what the crops share, and the teacher left uniform targets within
    150 steps.

    Args:
        labels: int ``[n]`` shape classes.
        img_size: side ``S`` in pixels.
        rng: the split's generator.
        background_level: ``None`` draws each image's background level from [0, 0.35]
            (``"dark"``); a number gives every image that level (``"dark_fixed"``: 0.15). The
            random draws are the same either way, so both styles have the same shapes, places,
            shape levels and noise for the same seed.

    Returns:
        ``(images, masks)``: uint8 ``[n, S, S, 3]`` (grey: the three channels differ only by
        noise) and bool ``[n, S, S]`` (coverage >= 0.5).
    """
    n, s, f32 = len(labels), img_size, np.float32
    radius = rng.uniform(0.18, 0.32, n).astype(f32)
    # Anywhere in the frame (2% margin): a centre prior cannot pass for attention.
    cx = rng.uniform(radius + 0.02, 0.98 - radius).astype(f32)[:, None, None]
    cy = rng.uniform(radius + 0.02, 0.98 - radius).astype(f32)[:, None, None]
    theta = rng.uniform(0.0, 2 * np.pi, (n, 1, 1)).astype(f32)
    coverage = _coverage(labels, cx, cy, radius, theta, s)
    background = rng.uniform(0.0, 0.35, (n, 1, 1, 1)).astype(f32)
    if background_level is not None:
        background[:] = background_level
    level = rng.uniform(0.65, 1.0, (n, 1, 1, 1)).astype(f32)
    img = background + (level - background) * coverage[..., None]
    noise_std = rng.uniform(0.01, 0.05, (n, 1, 1, 1)).astype(f32)
    img = img + noise_std * rng.standard_normal((n, s, s, 3), dtype=f32)
    images = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return images, coverage >= 0.5


#: The background level (0-1) of every ``"dark_fixed"`` image.
DARK_FIXED_BACKGROUND = 0.15

#: Generators of :class:`Shapes`, by ``style``.
SHAPES_STYLES: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "grey": _draw_chunk,
    "dark": _draw_dark_chunk,
    # One background level for every image: the background then tells two crops of one image
    # nothing, so DINO matches the silhouette (experiments/dino_research.md, session 10).
    "dark_fixed": functools.partial(_draw_dark_chunk, background_level=DARK_FIXED_BACKGROUND),
}


#: Styles that draw from another style's random numbers (same images, one thing changed).
_SEED_FAMILY = {"dark_fixed": "dark"}


@functools.lru_cache(maxsize=16)
def _cached_shapes(
    n: int, img_size: int, seed: int, num_classes: int, split: int, style: str = "grey"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    draw_chunk = SHAPES_STYLES[style]
    # The grey style keeps its original seeds (its images are pinned by tests); other styles
    # derive theirs from the style's name as well; "dark_fixed" from "dark"'s, so the two are
    # the same images but for the background.
    family = _SEED_FAMILY.get(style, style)
    entropy = [seed, split] if style == "grey" else [seed, split, *family.encode()]
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    # Exactly balanced classes (counts differ by at most one), in random order.
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    images = np.empty((n, img_size, img_size, 3), dtype=np.uint8)
    masks = np.empty((n, img_size, img_size), dtype=bool)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        images[start:stop], masks[start:stop] = draw_chunk(labels[start:stop], img_size, rng)
    for array in (images, labels, masks):
        array.setflags(write=False)
    return images, labels, masks


def _check_arguments(
    n: int, img_size: int, seed: int, num_classes: int, style: str = "grey"
) -> None:
    if style not in SHAPES_STYLES:
        raise ValueError(f"Shapes: style={style!r} is not one of {tuple(SHAPES_STYLES)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"Shapes: n={n!r} must be an int >= 1")
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 8:
        raise ValueError(f"Shapes: img_size={img_size!r} must be an int >= 8 (pixels)")
    if not isinstance(num_classes, int) or not 2 <= num_classes <= len(SHAPE_CLASSES):
        raise ValueError(
            f"Shapes: num_classes={num_classes!r} must be an int in [2, {len(SHAPE_CLASSES)}]"
        )
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"Shapes: seed={seed!r} must be an int >= 0")


def generate_shapes(
    n: int = 2000,
    img_size: int = 32,
    seed: int = 0,
    num_classes: int = 6,
    train: bool = True,
    style: str = "grey",
) -> tuple[np.ndarray, np.ndarray]:
    """Generate (or fetch from the in-memory cache) one split of the Shapes data.

    Args:
        n: number of images.
        img_size: side in pixels (>= 8).
        seed: base seed; the split uses the derived seed ``(seed, 0)`` (train) or
            ``(seed, 1)`` (test).
        num_classes: use the first ``num_classes`` entries of :data:`SHAPE_CLASSES` (2..6).
        train: which split.
        style: ``"grey"`` (coloured shapes on noisy grey backgrounds, the original set),
            ``"dark"`` (bright grey shapes anywhere on dark backgrounds of a random level; see
            :func:`_draw_dark_chunk`) or ``"dark_fixed"`` (the same images with one background
            level for all: the background no longer tells images apart, so DINO learns the
            silhouette; see experiments/dino_research.md).

    Returns:
        ``(images, labels)``: read-only uint8 ``[n, img_size, img_size, 3]`` and int64 ``[n]``.
        :func:`generate_shapes_masks` adds the object masks.
    """
    images, labels, _ = generate_shapes_masks(n, img_size, seed, num_classes, train, style)
    return images, labels


def generate_shapes_masks(
    n: int = 2000,
    img_size: int = 32,
    seed: int = 0,
    num_classes: int = 6,
    train: bool = True,
    style: str = "grey",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`generate_shapes` plus the object mask of every image (same arguments).

    A pixel belongs to the object when the shape covers at least half of it: the images are
    antialiased by drawing each pixel as 2x2 sub-pixels, and the mask keeps the pixels where
    at least 2 of the 4 sub-pixel centres fall inside the silhouette.

    Returns:
        ``(images, labels, masks)``: read-only uint8 ``[n, img_size, img_size, 3]``, int64
        ``[n]`` and bool ``[n, img_size, img_size]``, in the same order. The images and labels
        are exactly those of :func:`generate_shapes`.

    Examples:
        >>> images, labels, masks = generate_shapes_masks(n=4, img_size=16)
        >>> masks.shape, masks.dtype, bool(masks.any(axis=(1, 2)).all())
        ((4, 16, 16), dtype('bool'), True)
    """
    _check_arguments(n, img_size, seed, num_classes, style)
    return _cached_shapes(n, img_size, seed, num_classes, 0 if train else 1, style)


class ArrayImageDataset(Dataset):
    """An image data set held in memory as a uint8 array, laid out like torchvision's CIFAR10.

    Subclasses fill ``data`` (``[n, H, W, 3]`` uint8), ``targets`` (``n`` int labels),
    ``transform`` and ``as_tensor``, and ``masks`` (bool ``[n, H, W]``, True on the object's
    pixels, in the order of ``data``) when the generator knows where its objects are; it stays
    None otherwise. Items are ``(image, label)``: a PIL image, or a uint8 tensor ``[3, H, W]``
    with ``as_tensor``, passed through ``transform`` when set (masks are never transformed:
    they describe ``data`` as stored).
    """

    data: np.ndarray
    targets: list[int]
    masks: np.ndarray | None = None
    transform: Callable[[Any], Any] | None
    as_tensor: bool

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        pixels = self.data[index]
        img: Any
        if self.as_tensor:
            img = torch.from_numpy(pixels.transpose(2, 0, 1).copy())
        else:
            img = Image.fromarray(pixels)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


class Shapes(ArrayImageDataset):
    """Synthetic shapes generated from a seed: the label is the silhouette.

    Three styles: ``"grey"`` (the default; coloured shapes on noisy grey backgrounds),
    ``"dark"`` (bright grey shapes anywhere on dark backgrounds of a random level, smaller, any
    position) and ``"dark_fixed"`` (the same images with one background level for all).

    Args:
        n: number of images in this split.
        img_size: image side in pixels.
        seed: base seed (train and test draw from different derived seeds).
        num_classes: number of shape classes, 2..6 (the first entries of
            :data:`SHAPE_CLASSES`).
        train: ``True`` for the training split, ``False`` for the test split.
        transform: applied to each image (a PIL image, or a uint8 tensor with ``as_tensor``).
        as_tensor: return uint8 tensors ``[3, H, W]`` instead of PIL images.
        style: ``"grey"``, ``"dark"`` or ``"dark_fixed"`` (see :func:`generate_shapes`).

    Attributes:
        data: uint8 array ``[n, H, W, 3]`` (the layout of torchvision's CIFAR10), this
            instance's own copy.
        masks: bool array ``[n, H, W]``, True on the pixels the shape covers at least half of
            (see :func:`generate_shapes_masks`), in the order of ``data``; this instance's own
            copy. Ground truth for attention maps (:func:`dinolab.eval.attention_jaccard`).
        targets: list of ``n`` int labels.
        classes: class names, ``classes[label]``.

    Items are ``(image, label)``.

    Examples:
        >>> train, test = Shapes(n=30, train=True), Shapes(n=30, train=False)
        >>> bool((train.data == test.data).all())
        False
        >>> x, y = Shapes(n=10, as_tensor=True)[3]
        >>> x.shape, x.dtype
        (torch.Size([3, 32, 32]), torch.uint8)
        >>> Shapes(n=10).masks.shape
        (10, 32, 32)
    """

    def __init__(
        self,
        n: int = 2000,
        img_size: int = 32,
        seed: int = 0,
        num_classes: int = len(SHAPE_CLASSES),
        train: bool = True,
        transform: Callable[[Any], Any] | None = None,
        as_tensor: bool = False,
        style: str = "grey",
    ) -> None:
        images, labels, masks = generate_shapes_masks(
            n, img_size, seed, num_classes, train, style
        )
        # Private, writable copies: the cached arrays stay pristine for the next instance.
        self.data: np.ndarray = images.copy()
        self.masks: np.ndarray | None = masks.copy()
        self.targets: list[int] = labels.tolist()
        self.classes: list[str] = list(SHAPE_CLASSES[:num_classes])
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.img_size, self.seed, self.train, self.style = img_size, seed, train, style
        self.transform = transform
        self.as_tensor = as_tensor

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return (
            f"Shapes(n={len(self)}, img_size={self.img_size}, seed={self.seed}, split={split}, "
            f"style={self.style!r}, classes={self.classes})"
        )
