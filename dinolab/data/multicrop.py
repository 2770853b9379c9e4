"""DINO's multi-crop augmentation, its collate function and the evaluation transform.

One image becomes ``V = 2 + local_crops_number`` views, always in the order
``[global_1, global_2, local_1, ..., local_n]``. The teacher sees only the two global crops;
the student sees all of them, so it must match a whole-image view from a small patch.

The per-crop recipe follows official DINO's ``DataAugmentationDINO`` (``main_dino.py``):

* global crop 1: RandomResizedCrop(``global_crops_size``, scale (0.4, 1), bicubic), blur p 1.0;
* global crop 2: the same crop, blur p 0.1, solarisation p 0.2;
* ``local_crops_number`` (8) local crops: RandomResizedCrop(``local_crops_size``,
  scale (0.05, 0.4), bicubic), blur p 0.5.

Between the crop and the blur, every crop is flipped with p 0.5, colour-jittered with
``ColorJitter(0.4, 0.4, 0.2, 0.1)`` with p 0.8 and turned grey with p 0.2; after the blur
(and solarisation) it is normalised. That is DINO's order.
The transforms are torchvision ``transforms.v2`` and draw from torch's global random number
generator, so ``torch.manual_seed`` makes a run repeatable.

Examples:
    >>> import torch
    >>> aug = MultiCropAugmentation(global_crops_size=32, local_crops_size=16,
    ...                             local_crops_number=4)
    >>> crops = aug(torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8))
    >>> len(crops), tuple(crops[0].shape), tuple(crops[2].shape)
    (6, (3, 32, 32), (3, 16, 16))
    >>> views, labels = multicrop_collate([(crops, 0), (crops, 1)])
    >>> tuple(views[0].shape), labels.tolist()
    ((2, 3, 32, 32), [0, 1])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MultiCropAugmentation",
    "Solarize",
    "ToImageTensor",
    "denormalize",
    "eval_transform",
    "multicrop_collate",
    "rotate_images",
    "to_image_tensor",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Largest blur sigma in DINO is 2 px. A kernel of 2 * ceil(3 * 2) + 1 = 13 taps covers +-3 sigma,
# so even the strongest blur is not visibly truncated, while staying cheap on small crops.
DEFAULT_BLUR_KERNEL_SIZE = 13

ImageLike = Image.Image | Tensor | np.ndarray


def to_image_tensor(img: ImageLike) -> Tensor:
    """Convert a PIL image, a NumPy array or a tensor to an RGB image tensor ``[3, H, W]``.

    Accepted inputs:

    * PIL images of any mode (grey ``"L"``, palette, ``"RGBA"`` ...): converted to RGB;
    * NumPy arrays ``[H, W]`` or ``[H, W, C]`` (the PIL layout), uint8 or float in ``[0, 1]``;
    * tensors ``[H, W]``, ``[1, H, W]`` or ``[3, H, W]``, uint8 (0..255) or float in ``[0, 1]``.

    A single grey channel is repeated three times, so every augmentation sees RGB.

    Returns:
        ``[3, H, W]`` tensor, uint8 for PIL and uint8 inputs, float32 in ``[0, 1]`` otherwise.

    Raises:
        TypeError: for any other input type.
        ValueError: for a wrong number of channels, an unsupported dtype, or floats outside
            ``[0, 1]``.
    """
    if isinstance(img, Image.Image):
        if img.mode != "RGB":
            img = img.convert("RGB")
        return TF.pil_to_tensor(img)
    if isinstance(img, np.ndarray):
        if img.ndim == 3:
            img = np.ascontiguousarray(img.transpose(2, 0, 1))
        img = torch.from_numpy(np.ascontiguousarray(img))
    if not isinstance(img, Tensor):
        raise TypeError(
            f"expected a PIL image, a NumPy array or a tensor, got {type(img).__name__}"
        )
    t = img.as_subclass(Tensor)
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(
            f"image tensor has shape {tuple(img.shape)}; expected [3, H, W], [1, H, W] or [H, W]"
        )
    if t.shape[-1] == 0 or t.shape[-2] == 0:
        raise ValueError(f"image tensor has shape {tuple(img.shape)}; height and width must be > 0")
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    if t.dtype == torch.uint8:
        return t.contiguous()
    if not t.is_floating_point():
        raise ValueError(f"image tensor has dtype {t.dtype}; expected torch.uint8 or a float dtype")
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"float image has values in [{lo:.3g}, {hi:.3g}]; expected [0, 1] "
            "(pass uint8 for 0..255 images, and do not normalise before augmenting)"
        )
    return t.to(torch.float32).clamp(0.0, 1.0).contiguous()


class Solarize(nn.Module):
    """Invert every pixel at or above ``threshold`` of the value range (PIL's solarize).

    ``threshold`` is a fraction of the range, so 0.5 means 128 for uint8 images (DINO's value)
    and 0.5 for float images in ``[0, 1]``. Apply it at random with ``v2.RandomApply``.

    Examples:
        >>> import torch
        >>> Solarize()(torch.tensor([[[10, 128, 200]]], dtype=torch.uint8)).tolist()
        [[[10, 127, 55]]]
    """

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"Solarize: threshold={threshold!r} must be a fraction in [0, 1]")
        self.threshold = float(threshold)

    def forward(self, img: Tensor) -> Tensor:
        scale = 255.0 if img.dtype == torch.uint8 else 1.0
        return TF.solarize(img, self.threshold * scale)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


class ToImageTensor(nn.Module):
    """:func:`to_image_tensor` as a transform step (PIL / array / tensor -> ``[3, H, W]``)."""

    def forward(self, img: ImageLike) -> Tensor:
        return to_image_tensor(img)


def rotate_images(x: Tensor, degrees: Tensor) -> Tensor:
    """Rotate each image about its centre by its own angle; corners repeat the nearest edge.

    Bilinear resampling, positive angles counter-clockwise (torchvision's ``rotate``
    convention). Where the rotated image leaves the frame, the nearest edge pixel is repeated
    (``grid_sample``'s ``padding_mode="border"``) instead of torchvision's constant fill, so a
    rotated crop has no black corners to give its rotation away.

    Args:
        x: float images ``[B, C, H, W]``.
        degrees: ``[B]`` angles in degrees.

    Returns:
        ``[B, C, H, W]``, same dtype as ``x``.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(
            f"rotate_images: x has shape {tuple(x.shape)} and dtype {x.dtype}; expected float "
            "[B, C, H, W]"
        )
    if degrees.shape != (x.shape[0],):
        raise ValueError(
            f"rotate_images: degrees has shape {tuple(degrees.shape)}; expected [{x.shape[0]}]"
        )
    b, _, h, w = x.shape
    a = torch.deg2rad(degrees.to(device=x.device, dtype=torch.float64))
    cos, sin = torch.cos(a), torch.sin(a)
    # Each output pixel p (pixel units about the centre, y pointing down) reads the input at
    # [[cos, -sin], [sin, cos]] p: a counter-clockwise turn on screen, as torchvision's.
    # affine_grid works in [-1, 1] units per axis, hence the aspect factors h / w and w / h.
    theta = torch.zeros(b, 2, 3, dtype=torch.float64, device=x.device)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * h / w
    theta[:, 1, 0] = sin * w / h
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta.to(x.dtype), [b, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class RandomRotation(nn.Module):
    """Rotate a crop by an angle drawn uniformly from ``[-degrees, degrees]``.

    Draws from torch's global generator. uint8 images are rotated in float and rounded back.
    See :func:`rotate_images` for the convention and the edge handling.
    """

    def __init__(self, degrees: float) -> None:
        super().__init__()
        self.degrees = float(degrees)

    def forward(self, img: Tensor) -> Tensor:
        angle = (2.0 * torch.rand(1, dtype=torch.float64) - 1.0) * self.degrees
        x = img.as_subclass(Tensor)
        if x.dtype == torch.uint8:
            out = rotate_images(x[None].float(), angle)[0]
            return out.round().clamp(0, 255).to(torch.uint8)
        return rotate_images(x[None], angle)[0]

    def extra_repr(self) -> str:
        return f"degrees={self.degrees}"


class _ClampUnit(nn.Module):
    """Clip float images back into ``[0, 1]``: bicubic resizing overshoots at sharp edges."""

    def forward(self, img: Tensor) -> Tensor:
        return img if img.dtype == torch.uint8 else img.clamp(0.0, 1.0)


def _check_prob(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"MultiCropAugmentation: {name}={p!r} is a probability, expected [0, 1]")
    return float(p)


def _check_scale(name: str, scale: Sequence[float]) -> tuple[float, float]:
    if len(scale) != 2:
        raise ValueError(f"MultiCropAugmentation: {name}={scale!r} must be a pair (min, max)")
    lo, hi = float(scale[0]), float(scale[1])
    if not (0.0 < lo <= hi <= 1.0):
        raise ValueError(
            f"MultiCropAugmentation: {name}={scale!r} must satisfy 0 < min <= max <= 1 "
            "(fractions of the image area)"
        )
    return lo, hi


def _check_size(name: str, size: int | Sequence[int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise ValueError(
            f"MultiCropAugmentation: {name}={size!r} must be a positive int or a pair (h, w)"
        )
    return pair[0], pair[1]


class MultiCropAugmentation:
    """DINO's multi-crop augmentation: 2 global and ``local_crops_number`` local views.

    Args:
        global_crops_scale: ``(min, max)`` fraction of the image area for the two global
            crops. DINO: ``(0.4, 1.0)``.
        local_crops_scale: ``(min, max)`` area fraction of each local crop. DINO:
            ``(0.05, 0.4)``.
        local_crops_number: number of local crops (0 allowed). DINO: 8.
        global_crops_size: output side (or ``(h, w)``) of a global crop, in pixels. DINO: 224.
        local_crops_size: output side (or ``(h, w)``) of a local crop, in pixels. DINO: 96.
        mean: per-channel mean used to normalise, for values in ``[0, 1]``.
        std: per-channel standard deviation used to normalise.
        flip_prob: probability of a horizontal flip, every crop.
        color_jitter: ``(brightness, contrast, saturation, hue)`` strengths of ColorJitter.
        color_jitter_prob: probability of applying the colour jitter, every crop.
        grayscale_prob: probability of turning a crop grey (kept as 3 channels).
        global1_blur_prob: Gaussian-blur probability of global crop 1. DINO: 1.0.
        global2_blur_prob: Gaussian-blur probability of global crop 2. DINO: 0.1.
        global2_solarize_prob: solarisation probability of global crop 2. DINO: 0.2.
        local_blur_prob: Gaussian-blur probability of each local crop. DINO: 0.5.
        blur_sigma: ``(min, max)`` of the blur's standard deviation in pixels, drawn
            uniformly. DINO's PIL radius, which Pillow treats as the standard deviation:
            ``(0.1, 2.0)``.
        blur_kernel_size: odd kernel side in pixels. The default 13 covers +-3 sigma at the
            largest sigma (2 px). On crops smaller than 7 px it is shrunk to the largest odd
            size the reflection padding allows (``2 * side - 1``).
        solarize_threshold: fraction of the value range at which solarisation inverts
            (0.5, i.e. 128 of 255, as in DINO).
        interpolation: resampling of RandomResizedCrop. DINO: bicubic.
        rotation_degrees: rotate every crop (after the flip) by an angle drawn uniformly from
            ``[-rotation_degrees, rotation_degrees]``, corners filled from the nearest edge
            (:func:`rotate_images`). 0 (DINO, the default) switches it off; 180 draws any
            angle. Not part of DINO: for data whose classes do not depend on orientation
            (the bundled Shapes, cells, aerial images), like lightly's ``rr_degrees``.

    Call it on a PIL image, an array ``[H, W(, C)]`` or a tensor ``[3, H, W]`` /
    ``[1, H, W]`` / ``[H, W]`` (uint8, or float in ``[0, 1]``). It returns a list of
    ``V = 2 + local_crops_number`` float32 tensors: two ``[3, *global_crops_size]`` then
    ``local_crops_number`` of ``[3, *local_crops_size]``, normalised with ``mean`` / ``std``.

    The three pipelines are kept as ``global_transfo1``, ``global_transfo2`` and
    ``local_transfo`` (official DINO's attribute names).

    Every random draw comes from torch's global generator (``torch_rng_only`` is True), so
    ``torch.manual_seed`` alone makes its crops repeatable.

    Examples:
        >>> from PIL import Image
        >>> aug = MultiCropAugmentation(global_crops_size=32, local_crops_size=16)
        >>> crops = aug(Image.new("RGB", (40, 40), "red"))
        >>> [tuple(c.shape) for c in crops[1:3]]
        [(3, 32, 32), (3, 16, 16)]
    """

    def __init__(
        self,
        global_crops_scale: Sequence[float] = (0.4, 1.0),
        local_crops_scale: Sequence[float] = (0.05, 0.4),
        local_crops_number: int = 8,
        global_crops_size: int | Sequence[int] = 224,
        local_crops_size: int | Sequence[int] = 96,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        flip_prob: float = 0.5,
        color_jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
        color_jitter_prob: float = 0.8,
        grayscale_prob: float = 0.2,
        global1_blur_prob: float = 1.0,
        global2_blur_prob: float = 0.1,
        global2_solarize_prob: float = 0.2,
        local_blur_prob: float = 0.5,
        blur_sigma: Sequence[float] = (0.1, 2.0),
        blur_kernel_size: int = DEFAULT_BLUR_KERNEL_SIZE,
        solarize_threshold: float = 0.5,
        interpolation: v2.InterpolationMode = v2.InterpolationMode.BICUBIC,
        rotation_degrees: float = 0.0,
    ) -> None:
        self.global_crops_scale = _check_scale("global_crops_scale", global_crops_scale)
        self.local_crops_scale = _check_scale("local_crops_scale", local_crops_scale)
        if isinstance(local_crops_number, bool) or not isinstance(local_crops_number, int) or (
            local_crops_number < 0
        ):
            raise ValueError(
                f"MultiCropAugmentation: local_crops_number={local_crops_number!r} "
                "must be an int >= 0"
            )
        self.local_crops_number = local_crops_number
        self.global_crops_size = _check_size("global_crops_size", global_crops_size)
        self.local_crops_size = _check_size("local_crops_size", local_crops_size)
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(
                f"MultiCropAugmentation: mean={tuple(mean)!r} and std={tuple(std)!r} must have "
                "3 values each, std > 0"
            )
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(color_jitter) != 4 or any(c < 0 for c in color_jitter) or color_jitter[3] > 0.5:
            raise ValueError(
                f"MultiCropAugmentation: color_jitter={tuple(color_jitter)!r} must be "
                "(brightness, contrast, saturation, hue), all >= 0 and hue <= 0.5"
            )
        if len(blur_sigma) != 2 or not 0.0 < blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(
                f"MultiCropAugmentation: blur_sigma={tuple(blur_sigma)!r} must be (min, max) "
                "with 0 < min <= max, in pixels"
            )
        if not isinstance(blur_kernel_size, int) or blur_kernel_size % 2 == 0 or (
            blur_kernel_size < 1
        ):
            raise ValueError(
                f"MultiCropAugmentation: blur_kernel_size={blur_kernel_size!r} must be a "
                "positive odd int"
            )
        self.probs = {
            name: _check_prob(name, p)
            for name, p in [
                ("flip_prob", flip_prob),
                ("color_jitter_prob", color_jitter_prob),
                ("grayscale_prob", grayscale_prob),
                ("global1_blur_prob", global1_blur_prob),
                ("global2_blur_prob", global2_blur_prob),
                ("global2_solarize_prob", global2_solarize_prob),
                ("local_blur_prob", local_blur_prob),
            ]
        }
        if isinstance(rotation_degrees, bool) or not isinstance(rotation_degrees, (int, float)) or (
            not 0.0 <= rotation_degrees <= 180.0
        ):
            raise ValueError(
                f"MultiCropAugmentation: rotation_degrees={rotation_degrees!r} must be a number "
                "in [0, 180] (degrees; 0 switches rotation off)"
            )
        self.rotation_degrees = float(rotation_degrees)
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.blur_kernel_size = blur_kernel_size
        self.solarize = Solarize(solarize_threshold)
        self.interpolation = interpolation
        self.color_jitter = tuple(float(c) for c in color_jitter)

        self.global_transfo1 = self._pipeline(
            self.global_crops_size, self.global_crops_scale, self.probs["global1_blur_prob"], 0.0
        )
        self.global_transfo2 = self._pipeline(
            self.global_crops_size,
            self.global_crops_scale,
            self.probs["global2_blur_prob"],
            self.probs["global2_solarize_prob"],
        )
        self.local_transfo = self._pipeline(
            self.local_crops_size, self.local_crops_scale, self.probs["local_blur_prob"], 0.0
        )

    @property
    def num_crops(self) -> int:
        """``V = 2 + local_crops_number``, the length of the returned list."""
        return 2 + self.local_crops_number

    torch_rng_only = True  # no draw from Python's random or NumPy (SeededTransform skips them)

    def _pipeline(
        self,
        size: tuple[int, int],
        scale: tuple[float, float],
        blur_prob: float,
        solarize_prob: float,
    ) -> v2.Compose:
        # Reflection padding needs padding < side, i.e. kernel <= 2 * side - 1.
        kernel = min(self.blur_kernel_size, 2 * min(size) - 1)
        steps: list[Callable[..., Any]] = [
            v2.RandomResizedCrop(
                size, scale=scale, interpolation=self.interpolation, antialias=True
            ),
            _ClampUnit(),
            v2.RandomHorizontalFlip(p=self.probs["flip_prob"]),
        ]
        if self.rotation_degrees > 0:
            steps.append(RandomRotation(self.rotation_degrees))
        steps += [
            v2.RandomApply([v2.ColorJitter(*self.color_jitter)], p=self.probs["color_jitter_prob"]),
            v2.RandomGrayscale(p=self.probs["grayscale_prob"]),
            v2.RandomApply([v2.GaussianBlur(kernel, sigma=self.blur_sigma)], p=blur_prob),
        ]
        if solarize_prob > 0:
            steps.append(v2.RandomApply([self.solarize], p=solarize_prob))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        return v2.Compose(steps)

    def __call__(self, image: ImageLike) -> list[Tensor]:
        """Return ``[g1, g2, l1, ..., ln]``, float32 tensors ``[3, h, w]`` (normalised)."""
        img = to_image_tensor(image)
        crops = [self.global_transfo1(img), self.global_transfo2(img)]
        crops += [self.local_transfo(img) for _ in range(self.local_crops_number)]
        return [c.as_subclass(Tensor) for c in crops]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(global {self.global_crops_size} x2 scale "
            f"{self.global_crops_scale}, local {self.local_crops_size} x{self.local_crops_number} "
            f"scale {self.local_crops_scale}, probs={self.probs})"
        )


def multicrop_collate(
    batch: Sequence[tuple[Sequence[Tensor], Any]],
) -> tuple[list[Tensor], Tensor]:
    """Stack a batch of multi-crop samples view by view.

    Args:
        batch: ``B`` samples ``(crops, label)``, ``crops`` a list of ``V`` tensors
            ``[3, h_v, w_v]`` as returned by :class:`MultiCropAugmentation`; ``label`` an int
            or a 0-d tensor.

    Returns:
        ``(views, labels)``: ``views`` is a list of ``V`` tensors ``[B, 3, h_v, w_v]`` (crop
        ``v`` of every sample, the layout :class:`~dinolab.models.MultiCropWrapper` takes),
        ``labels`` a long tensor ``[B]``.

    Raises:
        ValueError: on an empty batch, a sample that is not a ``(crops, label)`` pair, or
            samples whose crop counts or crop shapes differ.
    """
    if len(batch) == 0:
        raise ValueError("multicrop_collate: the batch is empty")
    for i, sample in enumerate(batch):
        if not isinstance(sample, (tuple, list)) or len(sample) != 2:
            raise ValueError(f"multicrop_collate: sample {i} is not a (crops, label) pair")
    first = batch[0][0]
    n_views = len(first)
    if n_views == 0:
        raise ValueError("multicrop_collate: sample 0 has no crops")
    for i, (crops, _) in enumerate(batch):
        if len(crops) != n_views:
            raise ValueError(
                f"multicrop_collate: sample {i} has {len(crops)} crops but sample 0 has {n_views}"
            )
        for v, (c, c0) in enumerate(zip(crops, first, strict=True)):
            if c.shape != c0.shape:
                raise ValueError(
                    f"multicrop_collate: crop {v} of sample {i} has shape {tuple(c.shape)} but "
                    f"crop {v} of sample 0 has {tuple(c0.shape)}"
                )
    views = [torch.stack([crops[v] for crops, _ in batch]) for v in range(n_views)]
    labels = torch.as_tensor([int(label) for _, label in batch], dtype=torch.long)
    return views, labels


def eval_transform(
    size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resize_size: int | None = None,
) -> v2.Compose:
    """Deterministic evaluation transform: resize, center crop, normalise.

    Official DINO's k-NN and linear evaluations use ``Resize(256)`` then
    ``CenterCrop(224)``; ``resize_size`` defaults to the same ratio, ``round(size * 256 / 224)``.

    Args:
        size: side of the square output, in pixels.
        mean: per-channel mean (values in ``[0, 1]``).
        std: per-channel standard deviation.
        resize_size: side the shorter image edge is resized to before the crop.

    Returns:
        A ``v2.Compose`` (picklable, so it works in DataLoader workers) mapping an image (as
        :func:`to_image_tensor` accepts) to a float32 tensor ``[3, size, size]``.

    Examples:
        >>> import torch
        >>> t = eval_transform(32)
        >>> tuple(t(torch.zeros(1, 50, 40)).shape)
        (3, 32, 32)
    """
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"eval_transform: size={size!r} must be a positive int")
    if resize_size is None:
        resize_size = round(size * 256 / 224)
    if not isinstance(resize_size, int) or resize_size < size:
        raise ValueError(
            f"eval_transform: resize_size={resize_size!r} must be an int >= size={size}"
        )
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"eval_transform: mean={mean!r}, std={std!r} need 3 values, std > 0")
    return v2.Compose(
        [
            ToImageTensor(),
            v2.Resize(resize_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            _ClampUnit(),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def denormalize(
    t: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """Undo :class:`~torchvision.transforms.v2.Normalize` for plotting.

    Args:
        t: ``[3, H, W]`` or ``[B, 3, H, W]`` normalised image(s).
        mean: the mean used to normalise.
        std: the standard deviation used to normalise.

    Returns:
        Same shape, float, values clipped to ``[0, 1]``. For ``plt.imshow`` use
        ``denormalize(t).permute(1, 2, 0)``.
    """
    if t.ndim not in (3, 4) or t.shape[-3] != 3:
        raise ValueError(
            f"denormalize: tensor has shape {tuple(t.shape)}; expected [3, H, W] or [B, 3, H, W]"
        )
    m = torch.as_tensor(mean, dtype=t.dtype, device=t.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=t.dtype, device=t.device).view(3, 1, 1)
    return (t.detach() * s + m).clamp(0.0, 1.0)
