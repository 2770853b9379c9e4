"""Tests of dinolab.data.shapes: determinism, balance, items, raw-pixel difficulty, masks."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.neighbors import KNeighborsClassifier

from dinolab.data import shapes as shapes_module
from dinolab.data.shapes import (
    DARK_FIXED_BACKGROUND,
    SHAPE_CLASSES,
    Shapes,
    generate_shapes,
    generate_shapes_masks,
)


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


# sha256 of the images (and labels) the generator drew before it returned masks: adding the
# masks must not change a single pixel of any existing split.
_IMAGE_SHA256 = {
    (64, 16, 3, 6, True): (
        "530ec912e60da98218bc07e3b27a9840f1663dc34ed6afdeeafd484a442982b4",
        "cb50191aaa623e9e",
    ),
    (300, 32, 0, 6, False): (
        "7222397fdc3d31a54d224b0c66ab7d2f04f818ec794c51922ace6b040b30df83",
        "7e88745a14e94589",
    ),
    (40, 24, 5, 4, True): (
        "869e9e9dd7cb1caf281ffad8e5e539aa7ce978445bdcf23e916aa612791d5b02",
        "af8f2a6f9869d90c",
    ),
}


@pytest.mark.parametrize("args", list(_IMAGE_SHA256))
def test_images_are_unchanged_by_the_masks(args: tuple) -> None:
    images, labels = generate_shapes(*args)
    assert hashlib.sha256(images.tobytes()).hexdigest() == _IMAGE_SHA256[args][0]
    assert hashlib.sha256(labels.tobytes()).hexdigest()[:16] == _IMAGE_SHA256[args][1]
    with_masks = generate_shapes_masks(*args)
    assert with_masks[0] is images and with_masks[1] is labels  # one cached draw


def test_masks_are_bool_per_image_read_only_and_copied() -> None:
    images, labels, masks = generate_shapes_masks(n=20, img_size=24, seed=1)
    assert masks.dtype == np.bool_ and masks.shape == (20, 24, 24)
    assert images.shape[:3] == masks.shape and len(labels) == 20
    with pytest.raises(ValueError):
        masks[0, 0, 0] = True  # the cached array is read-only
    ds = Shapes(n=20, img_size=24, seed=1)
    assert ds.masks is not masks and np.array_equal(ds.masks, masks)
    ds.masks[0] = True  # this instance's own copy
    assert np.array_equal(Shapes(n=20, img_size=24, seed=1).masks, masks)
    # Every image has an object, and no object fills its image.
    fraction = masks.mean(axis=(1, 2))
    assert (fraction > 0.03).all() and (fraction < 0.5).all()


def _circle_fraction_analytic(size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """Share of each pixel's 2x2 sub-pixel centres within ``radius`` of (cx, cy), by hand."""
    out = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            for di in (0.25, 0.75):
                for dj in (0.25, 0.75):
                    y, x = (i + di) / size, (j + dj) / size
                    out[i, j] += math.hypot(x - cx, y - cy) <= radius
    return out / 4


def test_coverage_of_hand_placed_shapes() -> None:
    """A square and a circle placed by hand: the mask is the pixels they cover half of."""
    f32 = np.float32

    def coverage(label: int, cx: float, cy: float, radius: float, size: int) -> np.ndarray:
        return shapes_module._coverage(
            np.array([label]),
            np.full((1, 1, 1), cx, f32),
            np.full((1, 1, 1), cy, f32),
            np.array([radius], f32),
            np.zeros((1, 1, 1), f32),
            size,
        )[0]

    square = SHAPE_CLASSES.index("square")
    # Half-side 0.65 * radius = 0.25 of the image, centred: pixels 4..11 of 16, fully covered.
    cov = coverage(square, 0.5, 0.5, 0.25 / 0.65, 16)
    expected = np.zeros((16, 16))
    expected[4:12, 4:12] = 1.0
    assert np.array_equal(cov, expected)
    # Moved right by half a pixel: columns 4 and 12 are half covered, and in the mask. (The
    # edges then fall halfway between sub-pixel centres, clear of rounding.)
    cov = coverage(square, 0.5 + 1 / 32, 0.5, 0.25 / 0.65, 16)
    expected[4:12, 12] = 0.5
    expected[4:12, 4] = 0.5
    assert np.array_equal(cov, expected)
    mask = cov >= 0.5
    assert mask[4:12, 4:13].all() and mask.sum() == 8 * 9

    circle = SHAPE_CLASSES.index("circle")
    cx, cy, r = 0.47, 0.55, 0.3  # the circle's radius is 0.85 * radius
    cov = coverage(circle, cx, cy, r, 32)
    hand = _circle_fraction_analytic(32, cx, cy, 0.85 * r)
    np.testing.assert_array_equal(cov, hand)
    # Pixel centres well inside / outside the disc are in / out of the mask.
    yy, xx = (np.mgrid[:32, :32] + 0.5) / 32
    dist = np.hypot(xx - cx, yy - cy)
    half_diag = math.sqrt(2) / (4 * 32)
    assert (cov[dist <= 0.85 * r - half_diag] == 1).all()
    assert (cov[dist > 0.85 * r + half_diag] == 0).all()


class _NoNoise:
    """A NumPy generator whose pixel noise is zero: images are pure blends of two colours."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def uniform(self, *args, **kwargs):
        return self.rng.uniform(*args, **kwargs)

    def standard_normal(self, shape, dtype=np.float64):
        return np.zeros(shape, dtype=dtype)


def test_masks_cover_exactly_the_drawn_silhouette_without_noise() -> None:
    """Without noise each pixel is background + coverage * (colour - background): the mask
    holds exactly the pixels that are at least half the object's colour."""
    size = 32
    labels = np.arange(60) % len(SHAPE_CLASSES)
    images, masks = shapes_module._draw_chunk(labels, size, _NoNoise(np.random.default_rng(7)))
    assert masks.dtype == np.bool_ and masks.shape == (60, size, size)
    for img, mask in zip(images.astype(np.float64), masks, strict=True):
        pixels = img.reshape(-1, 3)
        values, counts = np.unique(pixels, axis=0, return_counts=True)
        background = values[counts.argmax()]  # the object covers under half of the image
        assert background[0] == background[1] == background[2]  # a grey level
        object_pixels = ~(pixels == background).all(1)
        values, counts = np.unique(pixels[object_pixels], axis=0, return_counts=True)
        colour = values[counts.argmax()]  # the fully covered pixels
        d = colour - background
        assert np.linalg.norm(d) > 20
        t = ((pixels - background) @ d / (d @ d)).reshape(size, size)  # the coverage, rounded
        levels = np.round(t * 4) / 4
        assert np.abs(t - levels).max() < 0.05  # 0, 1/4, 1/2, 3/4 or 1 of the colour
        np.testing.assert_array_equal(mask, levels >= 0.5)
        assert (levels[~mask] <= 0.25).all() and (levels[mask] >= 0.5).all()
        assert mask.sum() > 0.9 * (levels == 1).sum() and (levels == 1).sum() > 0


def test_masks_match_the_noisy_images() -> None:
    """On the real images: inside the mask the object's colour, outside the grey background."""
    from scipy import ndimage

    ds = Shapes(n=200, img_size=32)
    checked = 0
    for img, mask in zip(ds.data.astype(np.float64), ds.masks, strict=True):
        inner, outer = ndimage.binary_erosion(mask), ndimage.binary_dilation(mask)
        colour, background = np.median(img[inner], 0), np.median(img[~outer], 0)
        d = colour - background
        if np.linalg.norm(d) < 100:  # low contrast: the pixel noise blurs the boundary
            continue
        checked += 1
        t = (img - background) @ d / (d @ d)  # 0 on the background, 1 on the object
        assert np.median(t[mask]) > 0.9 and abs(np.median(t[~mask])) < 0.05
        assert (t[mask] > 0.25).mean() > 0.97 and (t[~mask] < 0.5).mean() > 0.99
        assert t[inner].min() > 0.4 and t[~outer].max() < 0.6
    assert checked > 150


def test_mask_area_is_the_shape_area_times_the_mean_squared_radius() -> None:
    """Mean mask fraction per class = the silhouette's area at unit radius x E[radius^2]."""
    ds = Shapes(n=2000, img_size=32)
    labels = np.asarray(ds.targets)
    mean_r2 = (0.4**3 - 0.24**3) / (3 * (0.4 - 0.24))  # radius ~ U(0.24, 0.4) of the side
    phi = np.linspace(0, 2 * np.pi, 100_000, endpoint=False)
    star_r = 0.4 + 0.55 * (0.5 + 0.5 * np.cos(5 * phi)) ** 2
    area = {
        "circle": math.pi * 0.85**2,
        "square": 1.3**2,
        "triangle": 3 * math.sqrt(3) / 4 * 0.95**2,
        "cross": 2 * 0.5 * 1.8 - 0.5**2,
        "ring": math.pi * (0.9**2 - 0.5**2),
        "star": 0.5 * (star_r**2).mean() * 2 * math.pi,
    }
    for k, name in enumerate(SHAPE_CLASSES):
        measured = ds.masks[labels == k].mean()
        # Half-covered edge pixels count as object: masks run up to ~7% over the area.
        assert 0.97 < measured / (area[name] * mean_r2) < 1.1, (name, measured)


# ------------------------------------------------------------------ the "dark" style


def test_dark_style_is_grey_bright_on_dark_and_its_masks_are_the_bright_pixels() -> None:
    images, labels, masks = generate_shapes_masks(n=300, img_size=32, seed=5, style="dark")
    x = images.astype(np.float64) / 255
    # Grey: the channels differ by pixel noise only (std <= 0.05 each).
    assert np.abs(x[..., 0] - x[..., 1]).mean() < 0.05
    grey = x.mean(-1)
    for img, mask in zip(grey, masks, strict=True):
        inside, outside = img[mask], img[~mask]
        assert inside.size and outside.size
        # Object level 0.65-1 over background 0-0.35: the mask is what is bright.
        assert inside.mean() - outside.mean() > 0.25
    # Thresholding halfway between object and background recovers the mask except at
    # anti-aliased edge pixels.
    mid = np.array([(g[m].mean() + g[~m].mean()) / 2 for g, m in zip(grey, masks, strict=True)])
    agree = ((grey > mid[:, None, None]) == masks).mean()
    assert agree > 0.97, agree
    assert np.bincount(labels).tolist() == [50] * 6


def test_dark_style_places_shapes_anywhere_and_differs_from_grey() -> None:
    _, _, masks = generate_shapes_masks(n=600, img_size=32, seed=0, style="dark")
    ys, xs = np.mgrid[0:32, 0:32]
    area = masks.sum((1, 2))
    cy = (masks * ys).sum((1, 2)) / area
    cx = (masks * xs).sum((1, 2)) / area
    # Centres spread over the frame, not clustered in the middle: a centre prior is no shortcut.
    assert cx.min() < 10 and cx.max() > 21 and cy.min() < 10 and cy.max() > 21
    assert 0.05 < masks.mean() < 0.2  # objects cover about a tenth of the image
    grey_images, _, _ = generate_shapes_masks(n=600, img_size=32, seed=0)
    dark_images = Shapes(n=600, seed=0, style="dark").data
    assert not np.array_equal(grey_images, dark_images)
    again = Shapes(n=600, seed=0, style="dark")
    assert np.array_equal(again.data, dark_images) and again.style == "dark"
    assert "style='dark'" in repr(again)


def test_dark_fixed_style_is_the_dark_images_with_one_background_level() -> None:
    dark = generate_shapes_masks(n=300, img_size=32, seed=5, style="dark")
    fixed = generate_shapes_masks(n=300, img_size=32, seed=5, style="dark_fixed")
    # Same random draws: same labels, masks and shapes; only the background differs.
    assert np.array_equal(fixed[1], dark[1]) and np.array_equal(fixed[2], dark[2])
    grey_fixed = fixed[0].astype(np.float64).mean(-1) / 255
    grey_dark = dark[0].astype(np.float64).mean(-1) / 255
    bg_fixed = np.array([g[~m].mean() for g, m in zip(grey_fixed, fixed[2], strict=True)])
    bg_dark = np.array([g[~m].mean() for g, m in zip(grey_dark, dark[2], strict=True)])
    # Every image's background mean is the fixed level up to pixel noise and edge pixels
    # (noise std <= 0.05 per pixel, averaged over hundreds of pixels), while "dark" spreads
    # its levels over [0, 0.35].
    assert np.abs(bg_fixed - DARK_FIXED_BACKGROUND).max() < 0.02, bg_fixed
    assert bg_dark.std() > 0.05 and bg_fixed.std() < 0.01
    # Object pixels away from the edge are unchanged (edge pixels, and the rare masked pixel
    # only partly covered at a corner, blend with the background).
    interior = fixed[2][:, 1:-1, 1:-1] & fixed[2][:, :-2, 1:-1] & fixed[2][:, 2:, 1:-1]
    interior &= fixed[2][:, 1:-1, :-2] & fixed[2][:, 1:-1, 2:]
    a = fixed[0][:, 1:-1, 1:-1][interior]
    b = dark[0][:, 1:-1, 1:-1][interior]
    assert (a == b).all(-1).mean() > 0.95
    data = Shapes(n=30, seed=5, style="dark_fixed")
    assert data.style == "dark_fixed" and "style='dark_fixed'" in repr(data)
    assert data.masks is not None and data.masks.shape == (30, 32, 32)


def test_unknown_style_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="style='neon'"):
        Shapes(n=4, style="neon")
