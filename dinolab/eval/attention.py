"""Does the attention find the object? The DINO paper's attention metric, and PCA colours.

DINO's best-known picture is the CLS token's attention in the last block: without labels, its
heads attend to the object. The paper measures it with a Jaccard similarity (IoU) between the
object's mask and the attention map thresholded to keep 60% of its mass, computed here as in
official DINO's ``visualize_attention.py``:

1. :func:`cls_attention`: the last block's attention from the CLS token to every patch,
   ``[B, heads, h, w]`` on the patch grid (register tokens, if any, left out);
2. :func:`threshold_attention`: per map, the smallest set of most-attended patches that holds
   ``mass`` (0.6) of the map's total;
3. :func:`upsample_patches`: each patch becomes its ``patch_size x patch_size`` pixels
   (nearest neighbour, as the official code);
4. :func:`jaccard`: intersection over union with the object's mask (``dinolab.data.Shapes``
   has them: ``Shapes.masks``).

:func:`attention_jaccard` runs the four steps for every head and for the map averaged over
the heads. A baseline needs no model: :func:`centre_prior` is a centred Gaussian map,
thresholded the same way (:func:`centre_prior_jaccard`); on objects near the centre it already
scores well, so attention is evidence only when it beats the prior and the random network.

DINOv2's other picture colours each patch by its features (:func:`pca_colors`): a PCA fitted
jointly over the patches of several images, whose first component separates foreground from
background, then a PCA of the foreground patches whose first three components become RGB.
:func:`patch_features` gives the ViT's patch tokens for it.

Examples:
    >>> import torch
    >>> attn = torch.tensor([[0.5, 0.2], [0.2, 0.1]])       # one 2x2 map
    >>> threshold_attention(attn, mass=0.6)                  # 0.5 < 0.6 <= 0.5 + 0.2 (+ 0.2)
    tensor([[ True,  True],
            [ True, False]])
    >>> mask = torch.zeros(4, 4, dtype=torch.bool)
    >>> mask[:2, :2] = True                                  # the object: the top-left patch
    >>> float(jaccard(upsample_patches(threshold_attention(attn), 2), mask))  # 4 px / 12 px
    0.3333333333333333
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from dinolab.ema import unwrap_model

__all__ = [
    "AttentionJaccard",
    "attention_jaccard",
    "centre_prior",
    "centre_prior_jaccard",
    "cls_attention",
    "cls_to_patch_attention",
    "jaccard",
    "map_jaccard",
    "map_object_mass",
    "patch_features",
    "pca_colors",
    "threshold_attention",
    "upsample_patches",
]

# Cumulative masses are compared with this slack, so that a set holding exactly ``mass`` on
# paper (0.5 + 0.1 = 0.6) counts as reaching it despite floating-point rounding.
_MASS_TOL = 1e-9


def _check_mass(mass: float, who: str) -> float:
    if isinstance(mass, bool) or not isinstance(mass, int | float) or not 0 < mass <= 1:
        raise ValueError(f"{who}: mass={mass!r} must be a number in (0, 1]")
    return float(mass)


def _check_patch_size(patch_size: Any, who: str) -> int:
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"{who}: patch_size={patch_size!r} must be an int >= 1 (pixels)")
    return patch_size


def _as_bool_masks(masks: Any, who: str, name: str = "masks") -> torch.Tensor:
    """A bool tensor from a bool tensor or NumPy array; anything else is refused."""
    if isinstance(masks, np.ndarray):
        if masks.dtype != np.bool_:
            raise ValueError(
                f"{who}: {name} must be bool (True on the object's pixels), got a NumPy array "
                f"of dtype {masks.dtype}"
            )
        return torch.from_numpy(np.ascontiguousarray(masks))
    if not isinstance(masks, torch.Tensor):
        raise ValueError(
            f"{who}: {name} must be a bool tensor or NumPy array, got {type(masks).__name__}"
        )
    if masks.dtype != torch.bool:
        raise ValueError(
            f"{who}: {name} must be bool (True on the object's pixels), got dtype {masks.dtype}"
        )
    return masks


def _model_patch_size(model: nn.Module, patch_size: int | None, who: str) -> int:
    if patch_size is not None:
        return _check_patch_size(patch_size, who)
    found = getattr(unwrap_model(model), "patch_size", None)
    if not isinstance(found, int):
        raise ValueError(
            f"{who}: the model has no integer patch_size attribute; pass patch_size= (pixels)"
        )
    return found


def _check_images(images: Any, who: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else None
        raise ValueError(
            f"{who}: images must be a tensor [B, C, H, W], got {type(images).__name__} of "
            f"shape {shape}"
        )
    return images


def _grid(images: torch.Tensor, patch_size: int, who: str) -> tuple[int, int]:
    height, width = images.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"{who}: images of {height}x{width} px do not split into patches of "
            f"{patch_size} px; expected sides that are multiples of patch_size={patch_size}"
        )
    return height // patch_size, width // patch_size


class _EvalNoGrad:
    """Eval mode and no gradients for a block of code; every submodule's flag restored."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes: list[tuple[nn.Module, bool]] = []
        self.no_grad = torch.no_grad()

    def __enter__(self) -> None:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.no_grad.__exit__(*exc)
        for module, was_training in self.modes:
            module.training = was_training


def _check_maps_and_masks(
    maps: Any, masks: Any, patch_size: Any, who: str
) -> tuple[torch.Tensor, int]:
    """Check ``[B, h, w]`` / ``[B, K, h, w]`` maps against bool ``[B, h * p, w * p]`` masks;
    return the masks as a bool tensor and the patch size ``p``."""
    p = _check_patch_size(patch_size, who)
    masks = _as_bool_masks(masks, who)
    if not isinstance(maps, torch.Tensor) or maps.ndim not in (3, 4):
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else None
        raise ValueError(f"{who}: maps must be [B, h, w] or [B, K, h, w], got shape {shape}")
    b, h, w = maps.shape[0], maps.shape[-2], maps.shape[-1]
    if tuple(masks.shape) != (b, h * p, w * p):
        raise ValueError(
            f"{who}: masks have shape {tuple(masks.shape)}, expected [B, H, W] = "
            f"[{b}, {h * p}, {w * p}] ({b} maps of {h}x{w} patches of {p} px)"
        )
    return masks, p


def _check_map_values(flat: torch.Tensor, who: str, name: str) -> torch.Tensor:
    """``flat`` (maps ``[..., h * w]``) unchanged, once every value is finite and >= 0 and every
    map has a positive sum."""
    if not bool(torch.isfinite(flat).all()) or bool((flat < 0).any()):
        raise ValueError(f"{who}: {name} must be finite and >= 0 (a softmax or a prior)")
    if bool((flat.sum(-1) <= 0).any()):
        raise ValueError(f"{who}: a map sums to 0; expected some attention on some patch")
    return flat


def _device_of(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _batches(n: int, batch_size: int | None) -> Iterator[slice]:
    step = n if not batch_size else max(int(batch_size), 1)
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def cls_to_patch_attention(
    attn: torch.Tensor, grid_size: tuple[int, int], num_register_tokens: int = 0
) -> torch.Tensor:
    """The CLS token's row of an attention matrix, laid out on the patch grid.

    Args:
        attn: ``[B, heads, T, T]`` softmax attention (rows sum to 1) with tokens in the ViT's
            order: CLS, ``R`` registers, then the ``h * w`` patches row by row, so
            ``T = 1 + R + h * w``.
        grid_size: ``(h, w)``, the patch grid of the images (rows, columns).
        num_register_tokens: ``R`` (DINOv2's ``_reg`` models: 4; otherwise 0).

    Returns:
        ``[B, heads, h, w]``: the attention the CLS token pays to each patch (the part it pays
        to itself and to the registers is left out, so a map sums to less than 1).

    Raises:
        ValueError: ``attn`` is not ``[B, heads, T, T]``, or ``T`` is not ``1 + R + h * w``.
    """
    h, w = int(grid_size[0]), int(grid_size[1])
    if not isinstance(attn, torch.Tensor) or attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
        shape = tuple(attn.shape) if isinstance(attn, torch.Tensor) else None
        raise ValueError(
            f"cls_to_patch_attention: attention must be [B, heads, T, T], got shape {shape}"
        )
    tokens = attn.shape[-1]
    expected = 1 + num_register_tokens + h * w
    if tokens != expected:
        raise ValueError(
            f"cls_to_patch_attention: the attention has T={tokens} tokens, but a {h}x{w} patch "
            f"grid needs T = 1 (CLS) + {num_register_tokens} (registers) + {h * w} (patches) = "
            f"{expected}; check patch_size and the images' size"
        )
    b, heads = attn.shape[:2]
    return attn[:, :, 0, 1 + num_register_tokens :].reshape(b, heads, h, w)


def cls_attention(
    model: nn.Module,
    images: torch.Tensor,
    patch_size: int | None = None,
    batch_size: int | None = 256,
) -> torch.Tensor:
    """The last block's CLS-to-patch attention of a ViT, per head: ``[B, heads, h, w]``.

    The model runs in eval mode without gradients (each submodule's train/eval flag is
    restored afterwards), on its own device, ``batch_size`` images at a time.

    Args:
        model: a ViT with ``get_last_selfattention(x) -> [B, heads, T, T]`` (any dinolab
            :class:`~dinolab.models.VisionTransformer`; a DDP wrapper is unwrapped).
        images: ``[B, 3, H, W]``, normalised as the model expects; ``H`` and ``W`` multiples
            of the patch size.
        patch_size: patch side in pixels; None reads ``model.patch_size``.
        batch_size: images per forward pass (None: all at once).

    Returns:
        float32 ``[B, heads, H / patch_size, W / patch_size]`` on the CPU.

    Raises:
        ValueError: images are not ``[B, C, H, W]`` or do not split into patches, or the
            model's attention has another number of tokens than the patch grid needs.
    """
    who = "cls_attention"
    images = _check_images(images, who)
    net = unwrap_model(model)
    p = _model_patch_size(net, patch_size, who)
    grid = _grid(images, p, who)
    registers = int(getattr(net, "num_register_tokens", 0) or 0)
    device = _device_of(net)
    maps = []
    with _EvalNoGrad(net):
        for part in _batches(images.shape[0], batch_size):
            attn = net.get_last_selfattention(images[part].to(device))
            maps.append(cls_to_patch_attention(attn, grid, registers).float().cpu())
    return torch.cat(maps)


def threshold_attention(attn: torch.Tensor, mass: float = 0.6) -> torch.Tensor:
    """Keep the most-attended patches that together hold ``mass`` of each map's attention.

    As official DINO's ``visualize_attention.py --threshold``: each map (the last two
    dimensions) is divided by its sum, and the patches are taken in decreasing order of
    attention until their share reaches ``mass``; the smallest such set is kept. Ties: every
    patch whose attention equals that of the last patch taken is kept as well, so the result
    does not depend on the order of the patches (the official code's unstable sort breaks such
    ties arbitrarily); with ties the kept share can exceed ``mass``. A share that reaches
    ``mass`` to within 1e-9 counts as reaching it (float rounding).

    Args:
        attn: non-negative maps ``[..., h, w]``: ``[B, heads, h, w]``, ``[B, h, w]`` or
            ``[h, w]``; each map must have a positive sum.
        mass: the share of each map's total to keep, in (0, 1] (DINO: 0.6).

    Returns:
        bool ``[..., h, w]``, True on the kept patches.

    Raises:
        ValueError: ``mass`` outside (0, 1]; ``attn`` has fewer than 2 dimensions, or a map
            with a negative, non-finite or all-zero value.

    Examples:
        >>> threshold_attention(torch.tensor([[4.0, 3.0], [2.0, 1.0]]), mass=0.7).tolist()
        [[True, True], [False, False]]
    """
    who = "threshold_attention"
    mass = _check_mass(mass, who)
    if not isinstance(attn, torch.Tensor) or attn.ndim < 2:
        shape = tuple(attn.shape) if isinstance(attn, torch.Tensor) else None
        raise ValueError(f"{who}: attention must be maps [..., h, w], got shape {shape}")
    flat = attn.detach().to(torch.float64).flatten(-2)  # [..., h*w]
    if flat.numel() == 0:
        return torch.zeros(attn.shape, dtype=torch.bool, device=attn.device)
    total = _check_map_values(flat, who, "attention").sum(-1, keepdim=True)
    ordered = flat.sort(dim=-1, descending=True).values
    reached = ordered.cumsum(-1) / total >= mass - _MASS_TOL
    reached[..., -1] = True  # the whole map always reaches any mass <= 1
    last = reached.to(torch.int64).argmax(-1, keepdim=True)  # first position that reaches it
    cut = ordered.gather(-1, last)  # the attention of the last patch kept, one of the values
    return (flat >= cut).reshape(attn.shape)


def upsample_patches(patch_map: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Patch-level maps to pixels: each patch becomes ``patch_size x patch_size`` copies.

    Nearest-neighbour upsampling by the patch size, as official DINO's
    ``nn.functional.interpolate(..., scale_factor=patch_size, mode="nearest")``.

    Args:
        patch_map: ``[..., h, w]`` (bool masks or float maps).
        patch_size: pixels per patch side.

    Returns:
        ``[..., h * patch_size, w * patch_size]``, same dtype.
    """
    p = _check_patch_size(patch_size, "upsample_patches")
    if not isinstance(patch_map, torch.Tensor) or patch_map.ndim < 2:
        shape = tuple(patch_map.shape) if isinstance(patch_map, torch.Tensor) else None
        raise ValueError(f"upsample_patches: expected maps [..., h, w], got shape {shape}")
    return patch_map.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)


def jaccard(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Jaccard similarity (intersection over union) of bool masks, per mask.

    Both masks empty (0 / 0) counts as a perfect match, 1.0, as the DAVIS J measure that
    official DINO's segmentation evaluation uses.

    Args:
        pred: bool ``[..., H, W]``.
        target: bool, the same shape.

    Returns:
        float64 ``[...]`` in [0, 1] (a 0-dimensional tensor for a single pair).

    Raises:
        ValueError: a mask is not bool, they have different shapes, or fewer than 2
            dimensions.
    """
    who = "jaccard"
    pred = _as_bool_masks(pred, who, "pred")
    target = _as_bool_masks(target, who, "target")
    if pred.shape != target.shape or pred.ndim < 2:
        raise ValueError(
            f"{who}: pred {tuple(pred.shape)} and target {tuple(target.shape)} must be bool "
            "masks [..., H, W] of the same shape"
        )
    target = target.to(pred.device)
    inter = (pred & target).sum((-2, -1)).to(torch.float64)
    union = (pred | target).sum((-2, -1)).to(torch.float64)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def map_jaccard(
    maps: torch.Tensor, masks: Any, patch_size: int, mass: float = 0.6
) -> torch.Tensor:
    """Jaccard of patch-level maps, thresholded and upsampled, with pixel masks.

    Args:
        maps: non-negative ``[B, h, w]`` (one map per image) or ``[B, K, h, w]`` (``K`` maps
            per image, e.g. heads).
        masks: bool ``[B, H, W]`` (tensor or NumPy array) with ``H = h * patch_size`` and
            ``W = w * patch_size``.
        patch_size: pixels per patch side.
        mass: share of each map's attention to keep (:func:`threshold_attention`).

    Returns:
        float64 ``[B]`` or ``[B, K]``.

    Raises:
        ValueError: masks not bool, or of a shape that does not match the maps' images.
    """
    masks, p = _check_maps_and_masks(maps, masks, patch_size, "map_jaccard")
    kept = upsample_patches(threshold_attention(maps, mass), p)
    if maps.ndim == 4:
        masks = masks[:, None].expand(-1, maps.shape[1], -1, -1)
    return jaccard(kept, masks.to(kept.device))


def map_object_mass(maps: torch.Tensor, masks: Any, patch_size: int) -> torch.Tensor:
    """Share of each map's attention that falls on the object: the metric with no threshold.

    Each patch's attention is spread evenly over its ``patch_size x patch_size`` pixels (the
    nearest-neighbour upsampling of :func:`upsample_patches`), so a patch half covered by the
    object gives it half of its attention: ``sum_patches a * f / sum_patches a`` with ``f`` the
    share of the patch's pixels in the mask. A uniform map scores the object's share of the
    image, a map entirely on the object 1. Unlike :func:`map_jaccard` it does not fall when a
    map becomes sharper than the object (a map on the object's two most telling patches
    scores 1 here but a low Jaccard, since its 60%-mass set covers little of the object).

    Args:
        maps: non-negative ``[B, h, w]`` or ``[B, K, h, w]``, each map with a positive sum.
        masks: bool ``[B, H, W]`` (tensor or NumPy array), ``H = h * patch_size``,
            ``W = w * patch_size``.
        patch_size: pixels per patch side.

    Returns:
        float64 ``[B]`` or ``[B, K]`` in [0, 1].

    Raises:
        ValueError: masks not bool or of a shape that does not match the maps' images; a map
            with a negative, non-finite or all-zero value.

    Examples:
        >>> attn = torch.tensor([[[0.5, 0.2], [0.2, 0.1]]])    # one 2x2 map
        >>> mask = torch.zeros(1, 4, 4, dtype=torch.bool)
        >>> mask[:, :2, :3] = True        # the top-left patch and half of the top-right one
        >>> map_object_mass(attn, mask, 2)                       # 0.5 + 0.2 / 2
        tensor([0.6000], dtype=torch.float64)
    """
    who = "map_object_mass"
    masks, p = _check_maps_and_masks(maps, masks, patch_size, who)
    b, h, w = maps.shape[0], maps.shape[-2], maps.shape[-1]
    a = maps.detach().to(torch.float64)
    total = _check_map_values(a.flatten(-2), who, "maps").sum(-1)
    # [B, h, w]: the share of each patch's pixels that lie on the object.
    covered = masks.to(device=a.device, dtype=torch.float64).reshape(b, h, p, w, p).mean((2, 4))
    if a.ndim == 4:
        covered = covered[:, None]
    return (a * covered).sum((-2, -1)) / total


@dataclass
class AttentionJaccard:
    """What :func:`attention_jaccard` measured.

    Attributes:
        per_head: float64 ``[heads]``, each head's Jaccard averaged over the images.
        mean_map: Jaccard of the head-averaged map (heads averaged first, then thresholded),
            averaged over the images.
        per_image_head: float64 ``[B, heads]``.
        per_image_mean_map: float64 ``[B]``.
        mass: the share of attention kept.
    """

    per_head: torch.Tensor
    mean_map: float
    per_image_head: torch.Tensor
    per_image_mean_map: torch.Tensor
    mass: float

    @property
    def best_head(self) -> int:
        """Index of the head with the highest mean Jaccard."""
        return int(self.per_head.argmax())

    def as_dict(self) -> dict[str, Any]:
        """Plain numbers for JSON: ``per_head``, ``mean_map``, ``best_head``, ``mass``."""
        return {
            "per_head": [float(v) for v in self.per_head],
            "mean_map": self.mean_map,
            "best_head": self.best_head,
            "best_head_jaccard": float(self.per_head.max()),
            "mass": self.mass,
            "images": int(self.per_image_mean_map.shape[0]),
        }


def attention_jaccard(
    model: nn.Module,
    images: torch.Tensor,
    masks: Any,
    patch_size: int | None = None,
    mass: float = 0.6,
    batch_size: int | None = 256,
) -> AttentionJaccard:
    """The DINO paper's attention metric: thresholded CLS attention vs object masks.

    For each image, the last block's CLS-to-patch attention (:func:`cls_attention`) of each
    head, and of the heads' average, is thresholded to keep ``mass`` of it
    (:func:`threshold_attention`), upsampled to pixels (:func:`upsample_patches`) and compared
    with the object's mask (:func:`jaccard`).

    Args:
        model: a ViT with ``get_last_selfattention`` (put it on the device you want; it is not
            moved, the images are).
        images: ``[B, 3, H, W]``, normalised as the model expects.
        masks: bool ``[B, H, W]`` (tensor or NumPy array, e.g. ``Shapes.masks``), True on the
            object's pixels.
        patch_size: patch side in pixels; None reads ``model.patch_size``.
        mass: share of attention kept, in (0, 1] (DINO: 0.6).
        batch_size: images per forward pass (None: all at once).

    Returns:
        An :class:`AttentionJaccard`.

    Raises:
        ValueError: masks not bool or not ``[B, H, W]`` for these images; ``mass`` outside
            (0, 1]; an attention whose token count does not match the images' patch grid.

    Examples:
        >>> import torch
        >>> from dinolab.models import vit_course
        >>> images, masks = torch.randn(2, 3, 32, 32), torch.zeros(2, 32, 32, dtype=torch.bool)
        >>> masks[:, 8:24, 8:24] = True
        >>> result = attention_jaccard(vit_course(), images, masks)
        >>> result.per_head.shape, result.per_image_mean_map.shape
        (torch.Size([4]), torch.Size([2]))
    """
    who = "attention_jaccard"
    mass = _check_mass(mass, who)
    images = _check_images(images, who)
    masks = _as_bool_masks(masks, who)
    b, _, height, width = images.shape
    if tuple(masks.shape) != (b, height, width):
        raise ValueError(
            f"{who}: masks have shape {tuple(masks.shape)}, expected [B, H, W] = "
            f"[{b}, {height}, {width}] for images of shape {tuple(images.shape)}"
        )
    p = _model_patch_size(model, patch_size, who)
    heads, averaged = [], []
    for part in _batches(b, batch_size):
        attn = cls_attention(model, images[part], patch_size=p, batch_size=None)
        heads.append(map_jaccard(attn, masks[part], p, mass))
        averaged.append(map_jaccard(attn.mean(1), masks[part], p, mass))
    per_image_head, per_image_mean = torch.cat(heads), torch.cat(averaged)
    return AttentionJaccard(
        per_head=per_image_head.mean(0),
        mean_map=float(per_image_mean.mean()),
        per_image_head=per_image_head,
        per_image_mean_map=per_image_mean,
        mass=mass,
    )


def centre_prior(h: int, w: int, sigma: float = 0.2) -> torch.Tensor:
    """A centred Gaussian map on an ``h x w`` patch grid: attention with no model at all.

    ``exp(-((x - xc)^2 / (sigma w)^2 + (y - yc)^2 / (sigma h)^2) / 2)`` at each patch centre,
    with ``(xc, yc)`` the grid's centre. Symmetric under left-right and up-down flips (and
    transposition when ``h == w``), so ties are exact and :func:`threshold_attention` keeps
    symmetric sets.

    Args:
        h, w: grid rows and columns (patches).
        sigma: standard deviation as a fraction of the grid side. The default 0.2 keeps, at
            ``mass=0.6``, about the central 23% of a fine grid (a disc of radius 0.27 of the
            side), the central 2x2 of a 4x4 grid. On the bundled Shapes (32 px, test split of
            seed 0) it scores Jaccard 0.43 with patches of 8 px and of 4 px; 0.15 and 0.25
            each tie it at one of the two patch sizes and fall behind at the other.

    Returns:
        float64 ``[h, w]``, maximal (1 at an exact centre) in the middle.
    """
    for name, value in (("h", h), ("w", w)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"centre_prior: {name}={value!r} must be an int >= 1 (patches)")
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not (
        math.isfinite(sigma) and sigma > 0
    ):
        raise ValueError(f"centre_prior: sigma={sigma!r} must be a number > 0 (grid fraction)")
    # Offsets from the centre, exactly symmetric: (2i - (h - 1)) / 2 for i = 0 .. h - 1.
    y = (2 * torch.arange(h, dtype=torch.float64) - (h - 1)) / (2 * sigma * h)
    x = (2 * torch.arange(w, dtype=torch.float64) - (w - 1)) / (2 * sigma * w)
    return torch.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))


def centre_prior_jaccard(
    masks: Any, patch_size: int, sigma: float = 0.2, mass: float = 0.6
) -> torch.Tensor:
    """Jaccard of the thresholded :func:`centre_prior` with each mask: the no-model baseline.

    Args:
        masks: bool ``[B, H, W]`` (tensor or NumPy array); ``H`` and ``W`` multiples of
            ``patch_size``.
        patch_size: patch side in pixels of the network it is compared with.
        sigma: the prior's standard deviation, a fraction of the grid side.
        mass: share of the prior kept (as for the attention).

    Returns:
        float64 ``[B]``.
    """
    who = "centre_prior_jaccard"
    p = _check_patch_size(patch_size, who)
    masks = _as_bool_masks(masks, who)
    if masks.ndim != 3 or masks.shape[1] % p or masks.shape[2] % p:
        raise ValueError(
            f"{who}: masks must be [B, H, W] with H and W multiples of patch_size={p}, got "
            f"shape {tuple(masks.shape)}"
        )
    h, w = masks.shape[1] // p, masks.shape[2] // p
    prior = centre_prior(h, w, sigma).expand(masks.shape[0], h, w)
    return map_jaccard(prior, masks, p, mass)


def patch_features(
    model: nn.Module, images: torch.Tensor, batch_size: int | None = 256
) -> torch.Tensor:
    """A ViT's last-block patch tokens (after the final LayerNorm) on the patch grid.

    DINOv2's ``x_norm_patchtokens`` (registers left out), laid out ``[N, h, w, D]`` for
    :func:`pca_colors`. The model runs in eval mode without gradients, modes restored.

    Args:
        model: a ViT with ``forward_features`` (a dinolab VisionTransformer).
        images: ``[N, 3, H, W]`` with sides multiples of ``model.patch_size``.
        batch_size: images per forward pass (None: all at once).

    Returns:
        float32 ``[N, H / patch_size, W / patch_size, D]`` on the CPU.
    """
    who = "patch_features"
    images = _check_images(images, who)
    net = unwrap_model(model)
    if not hasattr(net, "forward_features"):
        raise ValueError(f"{who}: the model has no forward_features; expected a ViT")
    h, w = _grid(images, _model_patch_size(net, None, who), who)
    device = _device_of(net)
    out = []
    with _EvalNoGrad(net):
        for part in _batches(images.shape[0], batch_size):
            tokens = net.forward_features(images[part].to(device))["x_norm_patchtokens"]
            out.append(tokens.float().cpu().reshape(tokens.shape[0], h, w, tokens.shape[-1]))
    return torch.cat(out)


def _principal_axes(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and the top ``k`` principal axes ``[D, k]`` of rows ``x`` [M, D].

    Signs are fixed: each axis's largest-magnitude loading is positive (the first such
    loading on ties), so the same data always gives the same axes.
    """
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / max(x.shape[0] - 1, 1)
    _, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
    axes = vectors[:, -k:].flip(-1)  # [D, k], largest variance first
    pivot = axes.abs().argmax(0)
    signs = torch.sign(axes[pivot, torch.arange(k)])
    return mean, axes * torch.where(signs == 0, torch.ones_like(signs), signs)


def pca_colors(
    patch_features: torch.Tensor, n_components: int = 3, fg_threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """DINOv2-style PCA colours: foreground from the first component, RGB from the next PCA.

    1. A PCA is fitted jointly on the patches of all ``N`` images. Each patch's score on the
       first component is standardised (zero mean, unit standard deviation over all patches);
       the foreground is the patches scoring above ``fg_threshold``. The component's sign is
       chosen so that the foreground is the smaller side (an object covers less of an image
       than its background; with exactly equal sides, the largest loading is positive).
    2. A second PCA is fitted on the foreground patches only; their scores on its first
       ``n_components`` components (each component's largest loading made positive) are
       min-max scaled to [0, 1] per component over all foreground patches (a component with
       no spread gives 0.5). Background patches are black (0).

    Everything runs in float64 and is deterministic: the same features give the same
    foreground and colours, call after call (the signs of the components are fixed, not left
    to the eigensolver).

    Args:
        patch_features: ``[N, h, w, D]`` patch tokens (:func:`patch_features`).
        n_components: colour channels, ``1 <= n_components <= D`` (3: RGB).
        fg_threshold: cut on the standardised first-component score (0: above the mean).

    Returns:
        ``(colors, foreground)``: float32 ``[N, h, w, n_components]`` in [0, 1] and bool
        ``[N, h, w]``.

    Raises:
        ValueError: features not ``[N, h, w, D]`` or not finite, all patches equal,
            ``n_components`` outside ``[1, D]``.

    Examples:
        >>> feats = torch.randn(2, 4, 4, 8)
        >>> feats[:, 1:3, 1:3] += 5.0                # a 2x2 "object" in each image
        >>> colors, fg = pca_colors(feats)
        >>> colors.shape, fg[0].int().tolist()
        (torch.Size([2, 4, 4, 3]), [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    """
    who = "pca_colors"
    if not isinstance(patch_features, torch.Tensor) or patch_features.ndim != 4:
        shape = tuple(patch_features.shape) if isinstance(patch_features, torch.Tensor) else None
        raise ValueError(f"{who}: patch features must be [N, h, w, D], got shape {shape}")
    n, h, w, d = patch_features.shape
    if (
        isinstance(n_components, bool)
        or not isinstance(n_components, int)
        or not 1 <= n_components <= d
    ):
        raise ValueError(f"{who}: n_components={n_components!r} must be an int in [1, D={d}]")
    x = patch_features.detach().to(torch.float64).reshape(-1, d).cpu()
    if x.shape[0] < 2 or not bool(torch.isfinite(x).all()):
        raise ValueError(f"{who}: expected finite features of at least 2 patches")

    mean, axis = _principal_axes(x, 1)
    score = ((x - mean) @ axis)[:, 0]
    spread = score.std()
    if not spread > 0:
        raise ValueError(
            f"{who}: all {x.shape[0]} patches have the same features; nothing to split"
        )
    z = (score - score.mean()) / spread
    above, below = z > fg_threshold, -z > fg_threshold
    foreground = below if int(below.sum()) < int(above.sum()) else above

    colors = torch.zeros(x.shape[0], n_components, dtype=torch.float64)
    fg_rows = x[foreground]
    if fg_rows.shape[0] > 0:
        fg_mean, fg_axes = _principal_axes(fg_rows, n_components)
        proj = (fg_rows - fg_mean) @ fg_axes  # [M, n_components]
        low, high = proj.min(0).values, proj.max(0).values
        width = high - low
        scaled = torch.where(
            width > 1e-12 * (1 + high.abs()),
            (proj - low) / width.clamp(min=torch.finfo(torch.float64).tiny),
            torch.full_like(proj, 0.5),
        )
        colors[foreground] = scaled.clamp(0, 1)
    return (
        colors.reshape(n, h, w, n_components).to(torch.float32),
        foreground.reshape(n, h, w),
    )
