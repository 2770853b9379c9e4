"""DINO's multi-crop augmentation drawn per image but applied to a whole batch at once.

:class:`~dinolab.data.MultiCropAugmentation` runs torchvision's transforms once per crop: with
8 crops of a 32-pixel image that is about 50 small tensor operations per image, and their
fixed cost (about 17 ms per image on one CPU core) outweighs a course ViT's training step.
:class:`BatchedMultiCrop` splits the same recipe in two:

1. per image (in the data set, where :class:`~dinolab.train.engine.SeededTransform` seeds it
   by ``(seed, epoch, index)``), it only *draws* the random parameters of every crop: box,
   flip, rotation angle (when asked for), colour-jitter factors and order, grey, blur sigma,
   solarisation, as RandomResizedCrop, ColorJitter, RandomGrayscale, GaussianBlur and DINO's
   solarisation draw them;
2. per batch (in :meth:`BatchedMultiCrop.collate`), it *applies* them to all images together:
   crops by ``torchvision.ops.roi_align`` (bilinear, averaging ``ceil(box / output)`` samples
   per output pixel, so shrinking is anti-aliased), then flips, rotations, colour operations,
   blur and solarisation as batched tensor arithmetic with per-crop factors.

Each operation computes torchvision's formula (``adjust_brightness``, ``adjust_contrast``,
``adjust_saturation``, ``adjust_hue``, ``rgb_to_grayscale``, ``gaussian_blur``, ``solarize``)
in float32; ``tests/data/test_batched.py`` checks each against torchvision on the same factors.
Two differences from the per-crop pipeline, on purpose: the crop is resampled bilinearly
rather than bicubically, and crop boxes are not rounded to whole pixels. Because the draws
depend only on the image's own seed, a batch augments the same whatever else is in it, and
2 processes with half the batch each see exactly the crops 1 process sees.

Examples:
    >>> import torch
    >>> aug = BatchedMultiCrop(global_crops_size=32, local_crops_size=16, local_crops_number=2)
    >>> image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    >>> views, labels = aug.collate([(aug(image), 0), (aug(image), 1)])
    >>> [tuple(v.shape) for v in views], labels.tolist()
    ([(2, 3, 32, 32), (2, 3, 32, 32), (2, 3, 16, 16), (2, 3, 16, 16)], [0, 1])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from dinolab.data.multicrop import (
    ImageLike,
    MultiCropAugmentation,
    rotate_images,
    to_image_tensor,
)

__all__ = [
    "BatchedMultiCrop",
    "CropParams",
    "apply_color_jitter",
    "gaussian_blur_batch",
    "rgb_to_grayscale",
]

# Columns of one crop's parameter row.
_X0, _Y0, _X1, _Y1, _FLIP, _JITTER, _BRIGHT, _CONTRAST, _SAT, _HUE = range(10)
_ORDER = slice(10, 14)  # the colour-jitter order: a permutation of 0..3 (b, c, s, h)
_GRAY, _BLUR, _SIGMA, _SOLAR, _ANGLE = 14, 15, 16, 17, 18
_NPARAMS = 19
_NUNIFORMS = 54  # uniforms drawn per crop: 40 for the box tries, 14 for the rest

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


class CropParams:
    """One image and the parameters of its ``V`` crops, as :class:`BatchedMultiCrop` draws them.

    Attributes:
        image: uint8 ``[3, H, W]`` (or float in ``[0, 1]``), the untouched image.
        params: float64 ``[V, 19]``, one row per crop (box, flip, jitter factors and order,
            grey, blur and its sigma, solarise, rotation angle in degrees).
    """

    __slots__ = ("image", "params")

    def __init__(self, image: Tensor, params: Tensor) -> None:
        self.image, self.params = image, params


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """Luma of RGB images ``[..., 3, H, W]`` -> ``[..., 1, H, W]`` (torchvision's weights)."""
    r, g, b = x.unbind(-3)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def _rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, b = x.unbind(-3)
    maxc, _ = x.max(dim=-3)
    minc, _ = x.min(dim=-3)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.remainder((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv_to_rgb(x: Tensor) -> Tensor:
    h, s, v = x.unbind(-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # Sector i picks (r, g, b) from (v, q, p, t) as in colorsys.
    table = torch.tensor(
        [[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]], device=x.device
    )
    choices = torch.stack((v, q, p, t), dim=-3)  # [..., 4, H, W]
    idx = table[i].movedim(-1, -3)  # [..., 3, H, W]
    return torch.gather(choices, -3, idx)


def _adjust(x: Tensor, op: int, factor: Tensor) -> Tensor:
    """torchvision's colour operation ``op`` (0 b, 1 c, 2 s, 3 h) with per-image ``factor``."""
    f = factor.view(-1, 1, 1, 1).to(x.dtype)
    if op == 0:  # adjust_brightness: blend with black
        return (x * f).clamp(0.0, 1.0)
    if op == 1:  # adjust_contrast: blend with the image's mean luma
        mean = rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
        return (f * x + (1.0 - f) * mean).clamp(0.0, 1.0)
    if op == 2:  # adjust_saturation: blend with the per-pixel luma
        return (f * x + (1.0 - f) * rgb_to_grayscale(x)).clamp(0.0, 1.0)
    hsv = _rgb_to_hsv(x)  # adjust_hue: rotate the hue channel
    h = torch.remainder(hsv[:, 0:1] + f, 1.0)
    return _hsv_to_rgb(torch.cat((h, hsv[:, 1:]), dim=1))


def apply_color_jitter(x: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """ColorJitter on a batch, each image with its own factors and its own order.

    Args:
        x: float images in ``[0, 1]``, ``[B, 3, H, W]``.
        factors: ``[B, 4]``: brightness, contrast, saturation factors and hue shift.
        order: ``[B, 4]`` integer permutations of ``0..3`` (the order the four are applied).

    Returns:
        ``[B, 3, H, W]`` in ``[0, 1]``.
    """
    order = order.long()
    for position in range(4):
        for op in range(4):
            rows = torch.nonzero(order[:, position] == op).flatten()
            if rows.numel():
                x = x.index_copy(0, rows, _adjust(x[rows], op, factors[rows, op]))
    return x


def gaussian_blur_batch(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """torchvision's ``gaussian_blur`` with a per-image sigma (reflect padding, separable).

    Args:
        x: ``[B, C, H, W]`` float. sigma: ``[B]`` standard deviations in pixels (> 0).
        kernel_size: odd taps per direction, at most ``2 * min(H, W) - 1``.

    Returns:
        ``[B, C, H, W]``.
    """
    b, c, h, w = x.shape
    half = (kernel_size - 1) * 0.5
    taps = torch.linspace(-half, half, kernel_size, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps[None] / sigma.to(x.dtype)[:, None]) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [B, k]
    kernel = kernel.repeat_interleave(c, dim=0)  # one kernel per (image, channel) group
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kernel.view(b * c, 1, 1, kernel_size), groups=b * c)
    y = F.conv2d(y, kernel.view(b * c, 1, kernel_size, 1), groups=b * c)
    return y.view(b, c, h, w)


class BatchedMultiCrop:
    """DINO's multi-crop recipe (as :class:`~dinolab.data.MultiCropAugmentation`), batched.

    Takes the same arguments as :class:`~dinolab.data.MultiCropAugmentation` except
    ``interpolation`` (always bilinear here). Use it in two places:

    * as the data set's transform: ``aug(image)`` returns a :class:`CropParams` (the image
      plus its crops' random parameters, drawn from torch's global generator);
    * as the loader's ``collate_fn``: ``aug.collate(batch)`` turns ``B`` samples
      ``(CropParams, label)`` into ``(views, labels)``, ``views`` a list of ``V`` float32
      tensors ``[B, 3, h_v, w_v]`` (two global, then the local crops; normalised), exactly the
      layout :func:`~dinolab.data.multicrop_collate` returns.

    Images in one batch may differ in size (they are zero-padded; crop boxes stay inside each
    image's own bounds).
    """

    def __init__(self, **kwargs: Any) -> None:
        if "interpolation" in kwargs:
            raise ValueError(
                "BatchedMultiCrop: interpolation is always bilinear; drop the argument"
            )
        # The per-crop class validates every argument and keeps the checked values.
        ref = MultiCropAugmentation(**kwargs)
        self.global_crops_scale = ref.global_crops_scale
        self.local_crops_scale = ref.local_crops_scale
        self.local_crops_number = ref.local_crops_number
        self.global_crops_size = ref.global_crops_size
        self.local_crops_size = ref.local_crops_size
        self.color_jitter = tuple(float(v) for v in ref.color_jitter)
        self.probs = dict(ref.probs)
        self.blur_sigma = ref.blur_sigma
        self.blur_kernel_size = ref.blur_kernel_size
        self.solarize_threshold = float(ref.solarize.threshold)
        self.rotation_degrees = ref.rotation_degrees
        self.mean = torch.tensor(ref.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(ref.std, dtype=torch.float32).view(1, 3, 1, 1)

    torch_rng_only = True  # draws from torch's generator alone (SeededTransform skips the rest)

    @property
    def num_crops(self) -> int:
        """``V = 2 + local_crops_number``."""
        return 2 + self.local_crops_number

    # ------------------------------------------------------------------ per image: draw

    @staticmethod
    def _draw_box(
        u: list[float], height: int, width: int, scale: tuple[float, float]
    ) -> list[float]:
        # RandomResizedCrop.``get_params`` without rounding: area fraction ~ U(scale), log aspect
        # ratio ~ U(log 3/4, log 4/3), 10 tries, then the largest centred box of legal ratio.
        # ``u`` holds 40 uniforms in [0, 1): four per try.
        area = height * width
        lo, hi = math.log(3 / 4), math.log(4 / 3)
        for t in range(10):
            a, r, px, py = u[4 * t : 4 * t + 4]
            target = area * (scale[0] + (scale[1] - scale[0]) * a)
            ratio = math.exp(lo + (hi - lo) * r)
            w = math.sqrt(target * ratio)
            h = math.sqrt(target / ratio)
            if 0 < w <= width and 0 < h <= height:
                x0, y0 = px * (width - w), py * (height - h)
                return [x0, y0, x0 + w, y0 + h]
        in_ratio = width / height
        if in_ratio < 3 / 4:
            w, h = float(width), width / (3 / 4)
        elif in_ratio > 4 / 3:
            h, w = float(height), height * (4 / 3)
        else:
            w, h = float(width), float(height)
        x0, y0 = (width - w) / 2, (height - h) / 2
        return [x0, y0, x0 + w, y0 + h]

    def _draw_crop(
        self,
        u: list[float],
        height: int,
        width: int,
        scale: tuple[float, float],
        blur_p: float,
        solar_p: float,
    ) -> list[float]:
        # ``u``: _NUNIFORMS uniforms in [0, 1), consumed in a fixed order.
        row = self._draw_box(u[:40], height, width, scale)
        u = u[40:]
        row.append(float(u[0] < self.probs["flip_prob"]))
        row.append(float(u[1] < self.probs["color_jitter_prob"]))
        b, c, s, hue = self.color_jitter
        for k, strength in enumerate((b, c, s)):
            low = max(0.0, 1.0 - strength)
            row.append(low + (1.0 + strength - low) * u[2 + k])
        row.append(-hue + 2 * hue * u[5])
        # The ranks of four uniforms: a uniformly random permutation of 0..3.
        keys = u[6:10]
        row.extend(float(i) for i in sorted(range(4), key=keys.__getitem__))
        row.append(float(u[10] < self.probs["grayscale_prob"]))
        row.append(float(u[11] < blur_p))
        row.append(self.blur_sigma[0] + (self.blur_sigma[1] - self.blur_sigma[0]) * u[12])
        row.append(float(u[13] < solar_p))
        row.append(0.0)  # rotation angle, drawn in __call__ when rotation is on
        return row

    def __call__(self, image: ImageLike) -> CropParams:
        """Draw the crops' parameters for one image; returns the image and ``[V, 19]`` rows."""
        img = to_image_tensor(image)
        _, height, width = img.shape
        p = self.probs
        # One draw from torch's global generator per image (cheap, and seeded per image by
        # SeededTransform); float64 so no two tries share a value by rounding.
        u = torch.rand(self.num_crops, _NUNIFORMS, dtype=torch.float64).tolist()
        rows = [
            self._draw_crop(
                u[0], height, width, self.global_crops_scale, p["global1_blur_prob"], 0.0
            ),
            self._draw_crop(
                u[1],
                height,
                width,
                self.global_crops_scale,
                p["global2_blur_prob"],
                p["global2_solarize_prob"],
            ),
        ]
        for k in range(self.local_crops_number):
            rows.append(
                self._draw_crop(
                    u[2 + k], height, width, self.local_crops_scale, p["local_blur_prob"], 0.0
                )
            )
        params = torch.tensor(rows, dtype=torch.float64)
        if self.rotation_degrees > 0:
            # A separate draw, so the other parameters are those of a run without rotation.
            angles = torch.rand(self.num_crops, dtype=torch.float64)
            params[:, _ANGLE] = (2.0 * angles - 1.0) * self.rotation_degrees
        return CropParams(img, params)

    # ------------------------------------------------------------------ per batch: apply

    def apply(self, images: Tensor, params: Tensor, size: tuple[int, int]) -> Tensor:
        """Crop, resize and augment ``N`` crops of the same output ``size``.

        Args:
            images: ``[B, 3, H, W]`` float in ``[0, 1]``.
            params: ``[N, 20]``: the image index (column 0) then a crop's 19 parameters.
            size: ``(h, w)`` of the output crops.

        Returns:
            ``[N, 3, h, w]`` float32, normalised with ``mean`` / ``std``.
        """
        boxes = params[:, :5].to(images.dtype)
        p = params[:, 1:]
        # aligned=True: box corners are continuous coordinates; sampling_ratio=0 averages
        # ceil(box side / output side) bilinear samples per output pixel (anti-aliased).
        x = roi_align(images, boxes, size, spatial_scale=1.0, sampling_ratio=0, aligned=True)
        x = x.clamp(0.0, 1.0)
        flip = p[:, _FLIP] > 0.5
        if flip.any():
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        rows = torch.nonzero(p[:, _ANGLE] != 0).flatten()
        if rows.numel():
            x = x.index_copy(0, rows, rotate_images(x[rows], p[rows, _ANGLE]))
        rows = torch.nonzero(p[:, _JITTER] > 0.5).flatten()
        if rows.numel():
            factors = p[rows][:, [_BRIGHT, _CONTRAST, _SAT, _HUE]]
            x = x.index_copy(0, rows, apply_color_jitter(x[rows], factors, p[rows][:, _ORDER]))
        gray = p[:, _GRAY] > 0.5
        if gray.any():
            x = torch.where(gray.view(-1, 1, 1, 1), rgb_to_grayscale(x).expand_as(x), x)
        rows = torch.nonzero(p[:, _BLUR] > 0.5).flatten()
        if rows.numel():
            kernel = min(self.blur_kernel_size, 2 * min(size) - 1)
            x = x.index_copy(0, rows, gaussian_blur_batch(x[rows], p[rows, _SIGMA], kernel))
        solar = p[:, _SOLAR] > 0.5
        if solar.any():
            inverted = torch.where(x >= self.solarize_threshold, 1.0 - x, x)
            x = torch.where(solar.view(-1, 1, 1, 1), inverted, x)
        return ((x - self.mean) / self.std).to(torch.float32)

    def collate(self, batch: Sequence[tuple[CropParams, Any]]) -> tuple[list[Tensor], Tensor]:
        """Batch ``B`` samples ``(CropParams, label)`` into ``(views, labels)``.

        Returns:
            ``views``: ``V`` float32 tensors ``[B, 3, h_v, w_v]`` (global 1, global 2, then the
            local crops), normalised; ``labels``: long ``[B]``.

        Raises:
            ValueError: an empty batch, a sample that is not ``(CropParams, label)``, or crop
                counts that differ from ``V``.
        """
        if len(batch) == 0:
            raise ValueError("BatchedMultiCrop.collate: the batch is empty")
        v = self.num_crops
        for i, sample in enumerate(batch):
            if not (isinstance(sample, (tuple, list)) and len(sample) == 2) or not isinstance(
                sample[0], CropParams
            ):
                raise ValueError(
                    f"BatchedMultiCrop.collate: sample {i} is not a (CropParams, label) pair; "
                    "use this object as the data set's transform too"
                )
            if sample[0].params.shape != (v, _NPARAMS):
                raise ValueError(
                    f"BatchedMultiCrop.collate: sample {i} has crop parameters of shape "
                    f"{tuple(sample[0].params.shape)}, expected ({v}, {_NPARAMS})"
                )
        images = [s[0].image for s in batch]
        height = max(int(im.shape[-2]) for im in images)
        width = max(int(im.shape[-1]) for im in images)
        stack = torch.zeros(len(batch), 3, height, width)
        for i, im in enumerate(images):
            im = im.float() / 255.0 if im.dtype == torch.uint8 else im.float()
            stack[i, :, : im.shape[-2], : im.shape[-1]] = im
        params = torch.stack([s[0].params for s in batch])  # [B, V, 19]
        index = torch.arange(len(batch), dtype=params.dtype).view(-1, 1, 1).expand(-1, v, 1)
        params = torch.cat((index, params), dim=2)  # [B, V, 20]
        b = len(batch)
        # Crop-major rows (all images' crop 0, then crop 1, ...): one roi_align per size.
        globals_ = self.apply(
            stack, params[:, :2].transpose(0, 1).reshape(2 * b, -1), self.global_crops_size
        )
        views = list(globals_.view(2, b, *globals_.shape[1:]).unbind(0))
        n = self.local_crops_number
        if n:
            local = self.apply(
                stack, params[:, 2:].transpose(0, 1).reshape(n * b, -1), self.local_crops_size
            )
            views += list(local.view(n, b, *local.shape[1:]).unbind(0))
        labels = torch.as_tensor([int(s[1]) for s in batch], dtype=torch.long)
        return views, labels

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(global {self.global_crops_size} x2 scale "
            f"{self.global_crops_scale}, local {self.local_crops_size} x{self.local_crops_number} "
            f"scale {self.local_crops_scale}, probs={self.probs})"
        )
