"""DINO's multi-crop augmentation: ``BatchedMultiCrop`` vs torchvision per crop vs kornia.

Three ways to turn a batch of ``B`` images into DINO's 2 global + ``n`` local crops, with the
same recipe (crop scales and sizes, flip 0.5, colour jitter (0.4, 0.4, 0.2, 0.1) with
probability 0.8, grey 0.2, Gaussian blur 1.0 / 0.1 / 0.5 with sigma in [0.1, 2], solarisation
0.2 on the second global crop, ImageNet normalisation):

* baseline, :class:`dinolab.data.MultiCropAugmentation`: torchvision's v2 transforms, once per
  crop of every image (what official DINO and lightly's ``DINOTransform`` do), then the crops
  stacked view by view (:func:`dinolab.data.multicrop_collate`);
* dinolab, :class:`dinolab.data.BatchedMultiCrop`: the random parameters drawn per image, then
  applied to the whole batch at once (one ``roi_align`` per crop size, batched colour
  arithmetic);
* kornia (0.9, in the ``bench`` extra), the peer a practitioner would pick for batched
  augmentation: ``kornia.augmentation`` modules on the batch tensor, one call for each global
  view (their blur and solarisation probabilities differ) and one for all local views.

Reported: images per second (``B`` / time per batch), the ratio over torchvision and the
fraction of kornia's rate (above 1: faster than kornia).

Same numbers, checked first. Random draws differ between the libraries, so the check is made
on the same factors: one drawn set of crop parameters (flip, jitter factors and order, grey,
blur sigma, solarisation) applied by ``BatchedMultiCrop.apply`` and, crop by crop, by
torchvision's functional operations, on a whole-pixel crop at its own size (the resampling
of the two differs on purpose: bilinear vs bicubic); atol 1e-5. kornia draws its own
parameters inside the modules; it is checked to return the same views (count, shapes, dtype)
and, with every random operation off and the crop covering the whole image at its own size,
the same normalised image as dinolab (atol 1e-5).

Run alone: ``python benchmarks/bench_augment.py [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from run import BenchResult, Reference, print_result, skipped_without, time_interleaved  # noqa: E402

from dinolab.data import BatchedMultiCrop, MultiCropAugmentation, multicrop_collate  # noqa: E402
from dinolab.data.multicrop import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

GOAL = 5.0  # vs torchvision per crop (the `--batched_aug` help promises "about 10x")
BATCH = 64
IMAGE_PX = 40
SETTINGS: dict[str, Any] = dict(global_crops_size=32, local_crops_size=16, local_crops_number=6)


def _images(b: int, px: int, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return list(torch.randint(0, 256, (b, 3, px, px), dtype=torch.uint8, generator=g))


def torchvision_batch(aug: MultiCropAugmentation, images: list[Tensor]) -> list[Tensor]:
    """Every crop of every image by torchvision, stacked view by view: ``V x [B, 3, h, w]``."""
    return multicrop_collate([(aug(img), 0) for img in images])[0]


def dinolab_batch(aug: BatchedMultiCrop, images: list[Tensor]) -> list[Tensor]:
    """Draw per image, apply per batch: ``V x [B, 3, h, w]``."""
    return aug.collate([(aug(img), 0) for img in images])[0]


class KorniaMultiCrop:
    """The same recipe with ``kornia.augmentation`` on batch tensors.

    Args:
        ref: the recipe's settings (a :class:`MultiCropAugmentation`); ``off=True`` switches
            every random operation off and crops the whole image (for the check).
    """

    def __init__(self, ref: MultiCropAugmentation, off: bool = False) -> None:
        import kornia.augmentation as K

        def pipeline(size: tuple[int, int], scale: tuple[float, float], blur: float,
                     solar: float) -> torch.nn.Module:
            kernel = min(ref.blur_kernel_size, 2 * min(size) - 1)
            p = 0.0 if off else 1.0
            steps = [
                K.RandomResizedCrop(size, scale=(1.0, 1.0) if off else scale,
                                    ratio=(1.0, 1.0) if off else (3 / 4, 4 / 3)),
                K.RandomHorizontalFlip(p=p * ref.probs["flip_prob"]),
                K.ColorJitter(*ref.color_jitter, p=p * ref.probs["color_jitter_prob"]),
                K.RandomGrayscale(p=p * ref.probs["grayscale_prob"]),
                K.RandomGaussianBlur((kernel, kernel), ref.blur_sigma, p=p * blur),
                K.RandomSolarize(thresholds=0.0, additions=0.0, p=p * solar),
                K.Normalize(mean=torch.tensor(ref.mean), std=torch.tensor(ref.std)),
            ]
            return torch.nn.Sequential(*steps)

        probs = ref.probs
        self.n_local = ref.local_crops_number
        self.global1 = pipeline(ref.global_crops_size, ref.global_crops_scale,
                                probs["global1_blur_prob"], 0.0)
        self.global2 = pipeline(ref.global_crops_size, ref.global_crops_scale,
                                probs["global2_blur_prob"], probs["global2_solarize_prob"])
        self.local = pipeline(ref.local_crops_size, ref.local_crops_scale,
                              probs["local_blur_prob"], 0.0)

    def __call__(self, images: list[Tensor]) -> list[Tensor]:
        x = torch.stack(images).float() / 255.0
        views = [self.global1(x), self.global2(x)]
        if self.n_local:
            local = self.local(x.repeat(self.n_local, 1, 1, 1))
            views += list(local.chunk(self.n_local))
        return views


def _check_same_factors(aug: BatchedMultiCrop) -> float:
    """dinolab's batched operations vs torchvision's per crop, on the same drawn factors."""
    from torchvision.transforms.v2 import functional as TF

    img = _images(1, 16, seed=3)[0]
    x = img.float() / 255.0
    params = aug(img).params.clone()  # [V, 19], drawn as in training
    size = 16  # whole-pixel box at its own size: no resampling on either side
    params[:, :4] = torch.tensor([0.0, 0.0, 16.0, 16.0], dtype=params.dtype)
    params[:, 15] = 1.0  # blur every crop, so the comparison covers it
    params[:, 17] = torch.tensor([1.0 if v % 2 else 0.0 for v in range(len(params))])
    rows = torch.cat((torch.zeros(len(params), 1, dtype=params.dtype), params), dim=1)
    got = aug.apply(x[None], rows, (size, size))
    funcs = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    mean = torch.tensor(IMAGENET_MEAN).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(-1, 1, 1)
    worst = 0.0
    kernel = min(aug.blur_kernel_size, 2 * size - 1)
    for v, p in enumerate(params.tolist()):
        y = x.flip(-1) if p[4] > 0.5 else x
        if p[5] > 0.5:
            for op in p[10:14]:
                y = funcs[int(op)](y, p[6 + int(op)])
        if p[14] > 0.5:
            y = TF.rgb_to_grayscale(y, num_output_channels=3)
        if p[15] > 0.5:
            y = TF.gaussian_blur(y, [kernel, kernel], [p[16], p[16]])
        if p[17] > 0.5:
            y = TF.solarize(y, aug.solarize_threshold)
        want = (y - mean) / std
        # float32 arithmetic in another order than torchvision's (as tests/data/test_batched.py)
        torch.testing.assert_close(got[v], want, atol=1e-5, rtol=0, msg=f"crop {v}")
        worst = max(worst, float((got[v] - want).abs().max()))
    return worst


def _check_kornia(ref: MultiCropAugmentation, aug: BatchedMultiCrop, images: list[Tensor]
                  ) -> float:
    """kornia returns the same views; with everything off, dinolab's image exactly."""
    views = KorniaMultiCrop(ref)(images)
    ours = dinolab_batch(aug, images)
    if [tuple(v.shape) for v in views] != [tuple(v.shape) for v in ours]:
        raise AssertionError("kornia and dinolab return views of different shapes")
    if any(v.dtype != torch.float32 for v in views):
        raise AssertionError("kornia returned views that are not float32")
    plain = MultiCropAugmentation(
        global_crops_size=IMAGE_PX, local_crops_size=IMAGE_PX, local_crops_number=0,
        global_crops_scale=(1.0, 1.0), flip_prob=0.0, color_jitter_prob=0.0, grayscale_prob=0.0,
        global1_blur_prob=0.0, global2_blur_prob=0.0, global2_solarize_prob=0.0,
    )
    got = KorniaMultiCrop(plain, off=True)(images[:4])[0]
    batched = BatchedMultiCrop(
        global_crops_size=IMAGE_PX, local_crops_size=IMAGE_PX, local_crops_number=0,
        global_crops_scale=(1.0, 1.0), flip_prob=0.0, color_jitter_prob=0.0, grayscale_prob=0.0,
        global1_blur_prob=0.0, global2_blur_prob=0.0, global2_solarize_prob=0.0,
    )
    want = dinolab_batch(batched, images[:4])[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    return float((got - want).abs().max())


def run(quick: bool = False) -> BenchResult:
    name = "augment"
    baseline = "torchvision per crop (`MultiCropAugmentation`)"
    candidate = "`dinolab.data.BatchedMultiCrop`"
    missing = skipped_without("kornia", name, baseline, candidate, GOAL)
    if missing is not None:
        return missing
    import kornia

    torch.manual_seed(0)
    ref = MultiCropAugmentation(**SETTINGS)
    aug = BatchedMultiCrop(**SETTINGS)
    kornia_aug = KorniaMultiCrop(ref)
    images = _images(BATCH, IMAGE_PX)
    worst = _check_same_factors(aug)
    k_worst = _check_kornia(ref, aug, images)

    repeats = 3 if quick else 9
    timing = time_interleaved(
        {
            "torchvision": lambda: torchvision_batch(ref, images),
            "dinolab": lambda: dinolab_batch(aug, images),
            "kornia": lambda: kornia_aug(images),
        },
        repeats=repeats,
        inner=1,
        warmup=1,
    )
    med = timing.median
    crops = f"2 x {SETTINGS['global_crops_size']} px + {SETTINGS['local_crops_number']} x " \
        f"{SETTINGS['local_crops_size']} px"
    return BenchResult(
        name=name,
        baseline=baseline,
        candidate=candidate,
        goal=GOAL,
        **timing.fields("torchvision", "dinolab"),
        check=(
            "same drawn factors (flip, jitter factors and order, grey, blur sigma, "
            "solarisation) through dinolab's batched operations and torchvision's functional "
            f"ones, crop by crop: assert_close atol 1e-5 (largest difference {worst:.1e}); "
            "kornia: the same view shapes and dtype, and with every random operation off the "
            f"same normalised images as dinolab (atol 1e-5; largest difference {k_worst:.1e})"
        ),
        config=(
            f"batch {BATCH} random uint8 images {IMAGE_PX} x {IMAGE_PX} px -> {crops} crops "
            f"(scales {ref.global_crops_scale} / {ref.local_crops_scale}), DINO's probabilities; "
            f"kornia {kornia.__version__}; times per batch including the per-image draws and "
            f"the stacking; {repeats} interleaved rounds, median"
        ),
        notes=(
            f"Images per second: torchvision per crop {BATCH / med['torchvision']:.0f}, "
            f"BatchedMultiCrop {BATCH / med['dinolab']:.0f}, kornia {BATCH / med['kornia']:.0f}. "
            "torchvision resamples bicubically, dinolab and kornia bilinearly."
        ),
        references=[
            Reference(
                what=f"kornia {kornia.__version__} batched augmentation, same recipe "
                "(a peer's rate, not a limit: above 1 is faster)",
                unit="images/s",
                rate=BATCH / med["kornia"],
                achieved=BATCH / med["dinolab"],
            )
        ],
    )


if __name__ == "__main__":
    print_result(run(quick="--quick" in sys.argv))
