"""BatchedMultiCrop: each batched operation against torchvision's own, and the draw's laws."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from dinolab.data import IMAGENET_MEAN, IMAGENET_STD, BatchedMultiCrop, CropParams
from dinolab.data.batched import apply_color_jitter, gaussian_blur_batch, rgb_to_grayscale
from dinolab.data.multicrop import rotate_images

ATOL = 1e-5  # float32 arithmetic in a different order than torchvision's


def _images(b: int = 4, size: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g)


def test_grayscale_matches_torchvision() -> None:
    x = _images()
    torch.testing.assert_close(rgb_to_grayscale(x), TF.rgb_to_grayscale(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("op", "reference"),
    [
        (0, TF.adjust_brightness),
        (1, TF.adjust_contrast),
        (2, TF.adjust_saturation),
        (3, TF.adjust_hue),
    ],
)
def test_each_colour_operation_matches_torchvision(op, reference) -> None:
    x = _images(b=5)
    # One factor per image; hue shifts in [-0.5, 0.5], the others around 1.
    factors = torch.tensor([0.6, 1.0, 1.3, 0.9, 1.4]) if op < 3 else torch.tensor(
        [-0.5, -0.2, 0.0, 0.1, 0.45]
    )
    table = torch.ones(5, 4)
    table[:, 3] = 0.0
    table[:, op] = factors
    order = torch.tensor([[op] + [k for k in range(4) if k != op]] * 5)
    got = apply_color_jitter(x, table, order)
    for i in range(5):
        want = reference(x[i], float(factors[i]))
        torch.testing.assert_close(got[i], want, atol=ATOL, rtol=0, msg=f"op {op}, image {i}")


def test_colour_jitter_applies_each_image_in_its_own_order() -> None:
    x = _images(b=3)
    factors = torch.tensor([[1.3, 0.7, 1.5, 0.2], [0.8, 1.4, 0.5, -0.3], [1.1, 1.2, 0.9, 0.05]])
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]])
    funcs = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    got = apply_color_jitter(x, factors, order)
    for i in range(3):
        want = x[i]
        for op in order[i].tolist():
            want = funcs[op](want, float(factors[i, op]))
        torch.testing.assert_close(got[i], want, atol=ATOL, rtol=0, msg=f"image {i}")


def test_blur_matches_torchvision_per_image_sigma() -> None:
    x = _images(b=3, size=16)
    sigma = torch.tensor([0.3, 1.0, 2.0])
    got = gaussian_blur_batch(x, sigma, 9)
    for i in range(3):
        want = TF.gaussian_blur(x[i], [9, 9], [float(sigma[i])] * 2)
        torch.testing.assert_close(got[i], want, atol=ATOL, rtol=0, msg=f"sigma {sigma[i]}")


def _row(
    box, flip=0.0, jitter=0.0, gray=0.0, blur=0.0, sigma=1.0, solar=0.0, angle=0.0
) -> list[float]:
    # The 19 columns of one crop: box, flip, jitter, b c s h factors, order, grey, blur,
    # sigma, solarise, rotation angle.
    return [*box, flip, jitter, 1.0, 1.0, 1.0, 0.0, 0, 1, 2, 3, gray, blur, sigma, solar, angle]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(-1, 1, 1)
    return (x - mean) / std


def test_whole_pixel_crop_at_its_own_size_copies_the_pixels() -> None:
    aug = BatchedMultiCrop(global_crops_size=8, local_crops_size=4, local_crops_number=0)
    img = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8)
    x = img.float() / 255
    rows = torch.tensor([[0.0, *_row((2, 3, 10, 11))], [0.0, *_row((2, 3, 10, 11), flip=1.0)]])
    out = aug.apply(x[None], rows.double(), (8, 8))
    # One bilinear sample at each pixel centre: exact up to float rounding.
    torch.testing.assert_close(out[0], _normalise(x[:, 3:11, 2:10]), atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1], out[0].flip(-1), atol=0, rtol=0)


def test_grey_blur_and_solarise_follow_torchvision() -> None:
    aug = BatchedMultiCrop(global_crops_size=8, local_crops_size=4, local_crops_number=0)
    x = torch.rand(1, 3, 8, 8)
    full = (0, 0, 8, 8)
    rows = torch.tensor(
        [
            [0.0, *_row(full, gray=1.0)],
            [0.0, *_row(full, blur=1.0, sigma=1.5)],
            [0.0, *_row(full, solar=1.0)],
        ]
    ).double()
    out = aug.apply(x, rows, (8, 8))
    img = x[0]
    torch.testing.assert_close(
        out[0], _normalise(TF.rgb_to_grayscale(img, num_output_channels=3)), atol=ATOL, rtol=0
    )
    # The kernel is capped at 2 * 8 - 1 = 15 > 13 taps: the default 13 is used.
    torch.testing.assert_close(
        out[1], _normalise(TF.gaussian_blur(img, [13, 13], [1.5, 1.5])), atol=ATOL, rtol=0
    )
    torch.testing.assert_close(out[2], _normalise(TF.solarize(img, 0.5)), atol=ATOL, rtol=0)


def test_draws_follow_random_resized_crop_and_the_probabilities() -> None:
    aug = BatchedMultiCrop(global_crops_size=16, local_crops_size=8, local_crops_number=2)
    torch.manual_seed(0)
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    params = torch.stack([aug(img).params for _ in range(1500)])  # [1500, 4, 18]
    w = params[..., 2] - params[..., 0]
    h = params[..., 3] - params[..., 1]
    area = w * h / 32**2
    assert (params[..., 0] >= 0).all() and (params[..., 2] <= 32 + 1e-9).all()
    assert (params[..., 1] >= 0).all() and (params[..., 3] <= 32 + 1e-9).all()
    assert (area[:, :2] >= 0.4 - 1e-9).all() and (area[:, :2] <= 1.0 + 1e-9).all()
    assert (area[:, 2:] >= 0.05 - 1e-9).all() and (area[:, 2:] <= 0.4 + 1e-9).all()
    ratio = w / h
    assert (ratio >= 3 / 4 - 1e-9).all() and (ratio <= 4 / 3 + 1e-9).all()
    n = params.shape[0]

    def rate(col: int, crop: int) -> float:
        return float(params[:, crop, col].mean())

    # Binomial frequencies within 5 standard deviations of the configured probabilities.
    for col, crop, p in [
        (4, 0, 0.5),  # flip
        (5, 2, 0.8),  # colour jitter
        (14, 3, 0.2),  # grey
        (15, 0, 1.0),  # global 1 always blurred
        (15, 1, 0.1),
        (15, 2, 0.5),
        (17, 1, 0.2),  # global 2 solarised
        (17, 0, 0.0),
    ]:
        tol = 5 * math.sqrt(p * (1 - p) / n) + 1e-12
        assert abs(rate(col, crop) - p) <= tol, (col, crop, rate(col, crop), p)
    # Jitter factors inside ColorJitter(0.4, 0.4, 0.2, 0.1)'s ranges; orders are permutations.
    assert params[..., 6].min() >= 0.6 and params[..., 6].max() <= 1.4
    assert params[..., 8].min() >= 0.8 and params[..., 8].max() <= 1.2
    assert params[..., 9].abs().max() <= 0.1
    orders = params[..., 10:14].sort(dim=-1).values
    assert (orders == torch.arange(4.0)).all()


def test_a_sample_crops_the_same_whatever_its_batch() -> None:
    """What the 2-process DDP test relies on: crops depend on the image's own draw only."""
    aug = BatchedMultiCrop(global_crops_size=16, local_crops_size=8, local_crops_number=2)
    imgs = torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8)
    torch.manual_seed(1)
    samples = [(aug(imgs[i]), i) for i in range(4)]
    whole, labels = aug.collate(samples)
    half, _ = aug.collate(samples[2:])
    assert labels.tolist() == [0, 1, 2, 3]
    assert [tuple(v.shape) for v in whole] == [(4, 3, 16, 16)] * 2 + [(4, 3, 8, 8)] * 2
    for v in range(4):
        torch.testing.assert_close(whole[v][2:], half[v], atol=1e-6, rtol=0)


def test_images_of_different_sizes_share_a_batch() -> None:
    aug = BatchedMultiCrop(global_crops_size=8, local_crops_size=4, local_crops_number=1)
    torch.manual_seed(2)
    small = aug(torch.full((3, 10, 10), 255, dtype=torch.uint8))
    large = aug(torch.zeros(3, 20, 16, dtype=torch.uint8))
    views, _ = aug.collate([(small, 0), (large, 1)])
    # The white image's crops stay inside it: no zero padding leaks in before jitter.
    for v, view in enumerate(views):
        assert view.shape[0] == 2, v
    assert (small.params[:, 2] <= 10).all() and (small.params[:, 3] <= 10).all()


def test_bad_input_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="interpolation"):
        BatchedMultiCrop(interpolation="bicubic")
    with pytest.raises(ValueError, match="global_crops_scale"):
        BatchedMultiCrop(global_crops_scale=(0.5, 0.2))
    aug = BatchedMultiCrop(global_crops_size=8, local_crops_size=4, local_crops_number=1)
    with pytest.raises(ValueError, match="empty"):
        aug.collate([])
    with pytest.raises(ValueError, match="sample 0 is not a \\(CropParams, label\\) pair"):
        aug.collate([([torch.zeros(3, 8, 8)], 0)])
    bad = CropParams(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(5, 19))
    with pytest.raises(ValueError, match=r"shape \(5, 19\), expected \(3, 19\)"):
        aug.collate([(bad, 0)])


def test_rotation_matches_torchvision_inside_the_frame() -> None:
    x = _images(3, size=16, seed=3)
    angles = torch.tensor([90.0, -30.0, 137.5])
    got = rotate_images(x, angles)
    # A quarter turn maps pixel centres onto pixel centres: torchvision's own rot90.
    torch.testing.assert_close(got[0], torch.rot90(x[0], 1, dims=(-2, -1)), atol=ATOL, rtol=0)
    # Any angle: torchvision's bilinear rotate wherever the source point lies inside the image
    # (outside, torchvision fills a constant and we repeat the edge). The disk of radius 6.5 px
    # about the centre of a 16-px image rotates onto itself.
    c = (torch.arange(16) + 0.5 - 8).abs()
    inside = (c[:, None] ** 2 + c[None, :] ** 2) <= 6.5**2
    for i, a in enumerate(angles.tolist()):
        want = TF.rotate(x[i], a, interpolation=TF.InterpolationMode.BILINEAR)
        torch.testing.assert_close(got[i][:, inside], want[:, inside], atol=ATOL, rtol=0)
    # Outside the frame the nearest edge pixel is repeated: a constant image stays constant.
    flat = torch.full((1, 3, 8, 8), 0.3)
    torch.testing.assert_close(rotate_images(flat, torch.tensor([45.0])), flat, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"degrees has shape \(2,\); expected \[3\]"):
        rotate_images(x, torch.zeros(2))


def test_rotation_is_drawn_apart_and_applied_after_the_flip() -> None:
    kw = dict(global_crops_size=8, local_crops_size=4, local_crops_number=2)
    img = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8)
    torch.manual_seed(4)
    plain = torch.stack([BatchedMultiCrop(**kw)(img).params for _ in range(200)])
    torch.manual_seed(4)
    aug = BatchedMultiCrop(rotation_degrees=30.0, **kw)
    rotated = [aug(img).params for _ in range(1)]
    # Off by default: the angle column is 0 and no uniform is spent on it.
    assert (plain[..., 18] == 0).all()
    torch.testing.assert_close(rotated[0][:, :18], plain[0, :, :18], atol=0, rtol=0)
    angles = torch.stack([aug(img).params[:, 18] for _ in range(2000)])  # [2000, 4]
    assert angles.abs().max() <= 30.0 and angles.abs().max() > 29.0
    # Uniform on [-30, 30]: mean 0 and standard deviation 30 / sqrt(3), within 5 standard errors.
    assert abs(float(angles.mean())) <= 5 * (30 / math.sqrt(3)) / math.sqrt(angles.numel())
    assert abs(float(angles.std()) - 30 / math.sqrt(3)) < 0.5
    x = img.float() / 255
    rows = torch.tensor([[0.0, *_row((2, 3, 10, 11), flip=1.0, angle=-40.0)]]).double()
    out = aug.apply(x[None], rows, (8, 8))
    flipped = x[:, 3:11, 2:10].flip(-1)
    want = _normalise(rotate_images(flipped[None], torch.tensor([-40.0]))[0])
    torch.testing.assert_close(out[0], want, atol=ATOL, rtol=0)
