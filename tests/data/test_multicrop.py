"""Tests of dinolab.data.multicrop: crop layout, per-crop probabilities, inputs, collate."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from dinolab.data.multicrop import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropAugmentation,
    Solarize,
    denormalize,
    eval_transform,
    multicrop_collate,
    to_image_tensor,
)

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)

# Every random effect switched off; tests switch on the one they look at.
NO_EFFECTS = dict(
    flip_prob=0.0,
    color_jitter_prob=0.0,
    grayscale_prob=0.0,
    global1_blur_prob=0.0,
    global2_blur_prob=0.0,
    global2_solarize_prob=0.0,
    local_blur_prob=0.0,
)


def normalise_uint8(x: torch.Tensor) -> torch.Tensor:
    """The expected output of a crop that changed nothing: ImageNet normalisation of x / 255."""
    return (x.float() / 255.0 - MEAN) / STD


def whole_image_aug(size: int, **kw: object) -> MultiCropAugmentation:
    """Crops that cover the whole (square, ``size``-pixel) image at its own size."""
    args: dict[str, object] = dict(
        global_crops_scale=(1.0, 1.0),
        local_crops_scale=(1.0, 1.0),
        global_crops_size=size,
        local_crops_size=size,
        local_crops_number=2,
    )
    args.update(NO_EFFECTS)
    args.update(kw)
    return MultiCropAugmentation(**args)  # type: ignore[arg-type]


def assert_grey(crop: torch.Tensor) -> None:
    """Equal channels once normalisation is undone (1e-5: float rounding of the inverse)."""
    rgb = denormalize(crop)
    torch.testing.assert_close(rgb[1], rgb[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(rgb[2], rgb[0], atol=1e-5, rtol=0)


def colourful(size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)


def test_defaults_are_dinos() -> None:
    aug = MultiCropAugmentation()
    assert aug.global_crops_scale == (0.4, 1.0) and aug.local_crops_scale == (0.05, 0.4)
    assert aug.local_crops_number == 8 and aug.num_crops == 10
    assert aug.global_crops_size == (224, 224) and aug.local_crops_size == (96, 96)
    assert aug.probs == {
        "flip_prob": 0.5,
        "color_jitter_prob": 0.8,
        "grayscale_prob": 0.2,
        "global1_blur_prob": 1.0,
        "global2_blur_prob": 0.1,
        "global2_solarize_prob": 0.2,
        "local_blur_prob": 0.5,
    }
    assert aug.color_jitter == (0.4, 0.4, 0.2, 0.1) and aug.blur_sigma == (0.1, 2.0)
    assert aug.solarize.threshold == 0.5
    assert aug.rotation_degrees == 0.0  # DINO does not rotate


def test_rotation_turns_each_crop_by_its_own_angle() -> None:
    # A white bar across a black 16-px image: flips leave it horizontal, a rotation does not.
    img = torch.zeros(3, 16, 16, dtype=torch.uint8)
    img[:, 7:9, :] = 255
    plain = dict(global_crops_size=16, local_crops_size=8, local_crops_number=2,
                 global_crops_scale=(1.0, 1.0), color_jitter_prob=0.0, grayscale_prob=0.0,
                 global1_blur_prob=0.0, global2_blur_prob=0.0, global2_solarize_prob=0.0,
                 local_blur_prob=0.0)
    torch.manual_seed(0)
    still = MultiCropAugmentation(**plain)(img)[0]
    rotating = MultiCropAugmentation(rotation_degrees=90.0, **plain)
    assert any("RandomRotation" in repr(t) for t in rotating.global_transfo1.transforms)
    torch.manual_seed(0)
    turned = [rotating(img)[0] for _ in range(4)]
    rows_lit = [(c[0] > 0).any(dim=1).sum().item() for c in turned]
    assert (still[0] > 0).any(dim=1).sum().item() == 2  # the bar covers 2 rows unrotated
    assert max(rows_lit) > 2  # a turned bar crosses more rows
    assert all(tuple(c.shape) == (3, 16, 16) and c.dtype == torch.float32 for c in turned)


def test_crop_count_order_sizes_and_dtype() -> None:
    aug = MultiCropAugmentation(global_crops_size=24, local_crops_size=12, local_crops_number=3)
    crops = aug(colourful(40))
    assert len(crops) == 5
    assert [tuple(c.shape) for c in crops] == [(3, 24, 24)] * 2 + [(3, 12, 12)] * 3
    assert all(c.dtype == torch.float32 and type(c) is torch.Tensor for c in crops)
    rect = MultiCropAugmentation(global_crops_size=(20, 28), local_crops_size=(8, 10),
                                 local_crops_number=0)
    assert [tuple(c.shape) for c in rect(colourful(40))] == [(3, 20, 28)] * 2


def test_order_is_g1_g2_then_locals() -> None:
    # Solarisation only exists in global crop 2: with p = 1 on a constant bright image, crop
    # index 1 (and only it) is inverted, which pins down the order.
    img = torch.full((3, 16, 16), 200, dtype=torch.uint8)
    crops = whole_image_aug(16, global2_solarize_prob=1.0)(img)
    values = [round(float(denormalize(c).mean() * 255)) for c in crops]
    assert values == [200, 55, 200, 200]


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (30, 20), (10, 200, 30)),
        Image.new("L", (30, 20), 90),
        Image.new("RGBA", (30, 20), (1, 2, 3, 4)),
        torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8),
        torch.rand(3, 20, 30),
        torch.rand(1, 20, 30),
        torch.randint(0, 256, (20, 30), dtype=torch.uint8),
        np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8),
    ],
    ids=["pil-rgb", "pil-l", "pil-rgba", "uint8", "float", "float-1ch", "uint8-2d", "numpy"],
)
def test_accepts_pil_uint8_float_and_grey(image: object) -> None:
    crops = MultiCropAugmentation(global_crops_size=16, local_crops_size=8,
                                  local_crops_number=2)(image)  # type: ignore[arg-type]
    assert [tuple(c.shape) for c in crops] == [(3, 16, 16)] * 2 + [(3, 8, 8)] * 2
    assert all(torch.isfinite(c).all() for c in crops)


def test_grey_input_stays_grey_through_every_augmentation() -> None:
    # Flip, jitter (brightness, contrast, saturation, hue), blur and solarisation all map a grey
    # image to a grey image, so the three channels must stay equal after denormalising.
    grey = Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 24), dtype=np.uint8))
    aug = MultiCropAugmentation(global_crops_size=16, local_crops_size=8, local_crops_number=4,
                                global2_solarize_prob=1.0, color_jitter_prob=1.0)
    for crop in aug(grey):
        assert_grey(crop)


def test_to_image_tensor_layouts() -> None:
    x = torch.randint(0, 256, (1, 5, 7), dtype=torch.uint8)
    out = to_image_tensor(x)
    assert out.shape == (3, 5, 7) and out.dtype == torch.uint8 and (out == x).all()
    arr = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    assert torch.equal(to_image_tensor(arr), torch.from_numpy(arr).permute(2, 0, 1))
    pil = Image.fromarray(arr)
    assert torch.equal(to_image_tensor(pil), torch.from_numpy(arr).permute(2, 0, 1))


def test_without_effects_a_whole_crop_is_just_normalised() -> None:
    x = colourful(16)
    crops = whole_image_aug(16)(x)
    for c in crops:
        torch.testing.assert_close(c, normalise_uint8(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("index, prob_name", [(0, "global1_blur_prob"),
                                              (1, "global2_blur_prob"),
                                              (2, "local_blur_prob")])
def test_blur_applied_with_p1_and_not_with_p0(index: int, prob_name: str) -> None:
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * 255).to(torch.uint8)
    x = checker.expand(3, 16, 16).contiguous()
    plain = whole_image_aug(16)(x)[index]
    # sigma >= 1 px: below ~0.3 px the neighbours' weights round away in uint8 (as with PIL).
    blurred = whole_image_aug(16, blur_sigma=(1.0, 2.0), **{prob_name: 1.0})(x)[index]
    torch.testing.assert_close(plain, normalise_uint8(x), atol=1e-5, rtol=0)

    def total_variation(t: torch.Tensor) -> float:
        return float((t[:, 1:] - t[:, :-1]).abs().sum() + (t[:, :, 1:] - t[:, :, :-1]).abs().sum())

    # A one-pixel checkerboard blurred with sigma >= 1 loses most of its variation.
    assert total_variation(blurred) < 0.5 * total_variation(plain)


def test_grayscale_probability_one_and_zero() -> None:
    x = colourful(16)
    grey_crops = whole_image_aug(16, grayscale_prob=1.0)(x)
    for c in grey_crops:
        assert_grey(c)
    for c in whole_image_aug(16, grayscale_prob=0.0)(x):
        rgb = denormalize(c)
        assert (rgb[0] - rgb[1]).abs().max() > 0.1


def test_flip_probability_one() -> None:
    x = colourful(16)
    for c in whole_image_aug(16, flip_prob=1.0)(x):
        torch.testing.assert_close(c, normalise_uint8(x).flip(-1), atol=1e-5, rtol=0)


def test_color_jitter_probability_one_changes_colours() -> None:
    x = colourful(16)
    for c in whole_image_aug(16, color_jitter_prob=1.0)(x):
        assert (c - normalise_uint8(x)).abs().max() > 1e-3


def test_solarize_of_global2_maps_bright_pixels_only() -> None:
    bright = torch.full((3, 8, 8), 200, dtype=torch.uint8)
    dark = torch.full((3, 8, 8), 50, dtype=torch.uint8)
    on = whole_image_aug(8, global2_solarize_prob=1.0)
    off = whole_image_aug(8, global2_solarize_prob=0.0)
    # 200 >= 128 is inverted to 255 - 200 = 55; 50 < 128 is left alone.
    torch.testing.assert_close(on(bright)[1], normalise_uint8(torch.full_like(bright, 55)),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(on(dark)[1], normalise_uint8(dark), atol=1e-5, rtol=0)
    torch.testing.assert_close(on(bright)[0], normalise_uint8(bright), atol=1e-5, rtol=0)
    torch.testing.assert_close(off(bright)[1], normalise_uint8(bright), atol=1e-5, rtol=0)


def test_solarize_transform_matches_pil_rule() -> None:
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 256)
    expected = torch.tensor([v if v < 128 else 255 - v for v in range(256)], dtype=torch.uint8)
    assert torch.equal(Solarize()(values).flatten(), expected)
    floats = torch.tensor([[[0.2, 0.49, 0.5, 0.9]]])
    torch.testing.assert_close(Solarize()(floats), torch.tensor([[[0.2, 0.49, 0.5, 0.1]]]))
    with pytest.raises(ValueError, match="threshold"):
        Solarize(1.5)


def test_default_probabilities_show_up_at_their_rates() -> None:
    # Solarisation of global 2 (p 0.2) and flips of local crops (p 0.5), counted over many
    # draws. Seeded by conftest, so the counts are fixed; the bounds are ~4 binomial standard
    # deviations wide (sd = sqrt(p(1-p)/n): 0.028 for n = 200, 0.016 for n = 1000).
    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    img[:, :, 4:] = 200  # dark left half, bright right half
    aug = MultiCropAugmentation(global_crops_scale=(1.0, 1.0), local_crops_scale=(1.0, 1.0),
                                global_crops_size=8, local_crops_size=8, local_crops_number=5,
                                color_jitter_prob=0.0, grayscale_prob=0.0,
                                global1_blur_prob=0.0, global2_blur_prob=0.0,
                                local_blur_prob=0.0)
    solarized = flipped = n_local = 0
    for _ in range(200):
        crops = [denormalize(c) * 255 for c in aug(img)]
        g2 = crops[1]
        # Solarised: the bright half turns to 55 (whatever the flip did).
        solarized += bool(g2.max() < 100)
        for c in crops[2:]:
            flipped += bool(c[0, 0, 0] > 100)  # the bright half moved to the left
            n_local += 1
    # Measured with conftest's seed: 39 / 200 solarised, 473 / 1000 flipped.
    assert abs(solarized / 200 - 0.2) < 0.115, solarized
    assert abs(flipped / n_local - 0.5) < 0.065, flipped


def test_determinism_under_manual_seed() -> None:
    aug = MultiCropAugmentation(global_crops_size=16, local_crops_size=8, local_crops_number=3)
    img = colourful(24)
    torch.manual_seed(123)
    first = aug(img)
    torch.manual_seed(123)
    second = aug(img)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(124)
    third = aug(img)
    assert any(not torch.equal(a, b) for a, b in zip(first, third, strict=True))


def test_transforms_pickle_for_dataloader_workers() -> None:
    aug = MultiCropAugmentation(global_crops_size=16, local_crops_size=8, local_crops_number=1)
    img = colourful(20)
    for transform in (aug, eval_transform(16)):
        clone = pickle.loads(pickle.dumps(transform))
        torch.manual_seed(3)
        a = transform(img)
        torch.manual_seed(3)
        b = clone(img)
        for x, y in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b],
                        strict=True):
            assert torch.equal(x, y)


def test_blur_kernel_shrinks_for_tiny_crops() -> None:
    # A 13-tap kernel needs reflection padding 6, which torch refuses on a 4-pixel crop.
    aug = MultiCropAugmentation(global_crops_size=16, local_crops_size=4, local_crops_number=2,
                                local_blur_prob=1.0)
    crops = aug(colourful(16))
    assert tuple(crops[-1].shape) == (3, 4, 4)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(global_crops_scale=(0.0, 1.0)), "global_crops_scale"),
        (dict(global_crops_scale=(0.6, 0.4)), "global_crops_scale"),
        (dict(local_crops_scale=(0.05, 1.2)), "local_crops_scale"),
        (dict(local_crops_scale=(0.1,)), "local_crops_scale"),
        (dict(global_crops_size=0), "global_crops_size"),
        (dict(local_crops_size=-3), "local_crops_size"),
        (dict(local_crops_size=(8, 0)), "local_crops_size"),
        (dict(local_crops_number=-1), "local_crops_number"),
        (dict(local_crops_number=2.5), "local_crops_number"),
        (dict(flip_prob=1.5), "flip_prob"),
        (dict(color_jitter_prob=-0.1), "color_jitter_prob"),
        (dict(grayscale_prob=2), "grayscale_prob"),
        (dict(global1_blur_prob=-1), "global1_blur_prob"),
        (dict(global2_solarize_prob=1.01), "global2_solarize_prob"),
        (dict(local_blur_prob=7), "local_blur_prob"),
        (dict(blur_sigma=(0.0, 2.0)), "blur_sigma"),
        (dict(blur_kernel_size=4), "blur_kernel_size"),
        (dict(color_jitter=(0.4, 0.4, 0.2)), "color_jitter"),
        (dict(std=(0.2, 0.0, 0.2)), "std"),
        (dict(solarize_threshold=3.0), "threshold"),
        (dict(rotation_degrees=-5), "rotation_degrees"),
        (dict(rotation_degrees=200.0), "rotation_degrees"),
        (dict(rotation_degrees=True), "rotation_degrees"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        MultiCropAugmentation(**kwargs)


@pytest.mark.parametrize(
    "image, pattern",
    [
        (torch.zeros(4, 8, 8), r"shape \(4, 8, 8\)"),
        (torch.zeros(2, 3, 8, 8), "shape"),
        (torch.full((3, 8, 8), 2.0), r"values in \[2, 2\]"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), "torch.int32"),
    ],
)
def test_bad_images_raise_value_error(image: torch.Tensor, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        MultiCropAugmentation(global_crops_size=8, local_crops_size=4)(image)


def test_wrong_input_type_raises_type_error() -> None:
    with pytest.raises(TypeError, match="list"):
        MultiCropAugmentation(global_crops_size=8, local_crops_size=4)([[0.0]])  # type: ignore[arg-type]


def test_collate_stacks_view_by_view() -> None:
    aug = MultiCropAugmentation(global_crops_size=16, local_crops_size=8, local_crops_number=3)
    samples = [(aug(colourful(20)), label) for label in (3, 1, 4)]
    views, labels = multicrop_collate(samples)
    assert [tuple(v.shape) for v in views] == [(3, 3, 16, 16)] * 2 + [(3, 3, 8, 8)] * 3
    assert labels.dtype == torch.long and labels.tolist() == [3, 1, 4]
    for v in range(5):
        for b in range(3):
            assert torch.equal(views[v][b], samples[b][0][v])
    _, tensor_labels = multicrop_collate([(samples[0][0], torch.tensor(7))])
    assert tensor_labels.tolist() == [7]


def test_collate_works_inside_a_dataloader() -> None:
    aug = MultiCropAugmentation(global_crops_size=16, local_crops_size=8, local_crops_number=2)
    data = [(aug(colourful(20)), i) for i in range(5)]
    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=multicrop_collate)
    shapes = [[tuple(v.shape) for v in views] for views, _ in loader]
    assert shapes[0] == [(2, 3, 16, 16)] * 2 + [(2, 3, 8, 8)] * 2
    assert shapes[-1][0] == (1, 3, 16, 16)


def test_collate_refuses_mismatched_samples() -> None:
    a = [torch.zeros(3, 16, 16)] * 2 + [torch.zeros(3, 8, 8)] * 2
    fewer = a[:3]
    other_size = a[:2] + [torch.zeros(3, 8, 8), torch.zeros(3, 6, 6)]
    with pytest.raises(ValueError, match="sample 1 has 3 crops but sample 0 has 4"):
        multicrop_collate([(a, 0), (fewer, 1)])
    with pytest.raises(ValueError, match=r"crop 3 of sample 1 has shape \(3, 6, 6\)"):
        multicrop_collate([(a, 0), (other_size, 1)])
    with pytest.raises(ValueError, match="empty"):
        multicrop_collate([])
    with pytest.raises(ValueError, match="not a \\(crops, label\\) pair"):
        multicrop_collate([a])  # type: ignore[list-item]


def test_eval_transform_resizes_center_crops_and_normalises() -> None:
    x = torch.randint(0, 256, (3, 36, 36), dtype=torch.uint8)
    # resize_size equal to the input side leaves the pixels alone; the 32-pixel centre crop
    # then starts at (36 - 32) / 2 = 2.
    out = eval_transform(32, resize_size=36)(x)
    torch.testing.assert_close(out, normalise_uint8(x[:, 2:34, 2:34]), atol=1e-5, rtol=0)
    # The default keeps DINO's 256 / 224 ratio: 32 -> resize to 37, crop 32.
    pil = Image.new("RGB", (50, 40), (255, 0, 0))
    out = eval_transform(32)(pil)
    assert out.shape == (3, 32, 32)
    torch.testing.assert_close(denormalize(out)[0], torch.ones(32, 32), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="size"):
        eval_transform(0)
    with pytest.raises(ValueError, match="resize_size"):
        eval_transform(32, resize_size=20)


def test_denormalize_inverts_normalisation() -> None:
    x = torch.rand(2, 3, 5, 5)
    torch.testing.assert_close(denormalize((x - MEAN) / STD), x, atol=1e-6, rtol=0)
    assert denormalize(torch.full((3, 2, 2), 100.0)).max() == 1.0  # clipped for imshow
    with pytest.raises(ValueError, match=r"shape \(4, 2, 2\)"):
        denormalize(torch.zeros(4, 2, 2))
