"""``dinolab visualize attention|pca``: what a trained ViT looks at, as PNGs.

* ``attention``: official DINO's ``visualize_attention.py``. The last block's attention from
  the CLS token to every patch, per head (:func:`dinolab.eval.cls_attention`), and the smallest
  set of patches that holds ``--threshold`` (60%) of each head's attention
  (:func:`dinolab.eval.threshold_attention`), overlaid on the image.
* ``pca``: DINOv2's picture. A PCA fitted jointly on the patch features of all the images
  (:func:`dinolab.eval.pca_colors`): its first component splits foreground from background,
  a second PCA of the foreground patches gives their colours (background black).

Each image is resized so that its shorter side is ``--image_size`` pixels (default: the
resolution the model was trained at), its aspect ratio kept, then cropped at the right and
bottom to whole patches (as the official script does), and normalised with ImageNet's mean and
standard deviation. For every image ``<name>`` (a file, or each image of a folder, sub-folders
included), ``--output_dir/<name>/`` receives:

* ``img.png``: the image as the model saw it (``H x W`` pixels);
* attention: ``attn-head{j}.png`` (official name), head ``j``'s map upsampled to ``H x W`` by
  repeating each patch, and ``attention_figure.png``: the maps and the thresholded sets over
  the image, titled, with a colour bar;
* pca: ``pca.png``, the colours at ``H x W`` pixels, and ``pca_figure.png``: image,
  foreground and colours, titled.

Examples:
    >>> written = visualize_attention(AttentionConfig(image_path="photos/",
    ...                                               output_dir="attention"))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from dinolab.tools.loading import read_backbone

__all__ = [
    "AttentionConfig",
    "IMAGE_SUFFIXES",
    "PCAConfig",
    "VisualizeConfig",
    "list_images",
    "load_image",
    "visualize_attention",
    "visualize_pca",
]

#: File endings taken as images inside a folder (a file named directly is tried whatever its end).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
# Figures: inches per panel and dots per inch; a figure of c columns and r rows is saved at
# exactly (c * _PANEL_IN * _DPI) x (r * _PANEL_IN * _DPI) pixels.
_PANEL_IN = 2.4
_DPI = 100


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class VisualizeConfig:
    """Settings shared by ``dinolab visualize attention`` and ``dinolab visualize pca``."""

    pretrained_weights: str | None = field(
        default=None,
        metadata=_help(
            "Checkpoint to visualise: a dinolab training checkpoint or an official DINO / "
            "DINOv2 / DINOv3 file (a DINOv3 file's storage tokens are left out of the maps). "
            "Default: the course teacher that ships with dinolab (official DINO "
            "downloads its reference weights instead; nothing is downloaded here)."
        ),
    )
    checkpoint_key: str = field(
        default="teacher",
        metadata=_help("Which network of a training checkpoint to use: teacher or student."),
    )
    arch: str | None = field(
        default=None,
        metadata=_help(
            "ViT architecture; default: read from a dinolab checkpoint, or from an official "
            "file's width (384: vit_small...)."
        ),
    )
    patch_size: int | None = field(
        default=None,
        metadata=_help("ViT patch size; default: from the checkpoint (must agree when given)."),
    )
    image_path: str | None = field(
        default=None,
        metadata=_help(
            "An image file, or a folder whose images (and its sub-folders' images, by file "
            f"ending: {' '.join(IMAGE_SUFFIXES)}) are all visualised. Required."
        ),
    )
    image_size: int | None = field(
        default=None,
        metadata=_help(
            "Resize each image so that its shorter side has this many pixels (aspect kept), "
            "then crop to whole patches. Default: the resolution the model was trained at "
            "(a dinolab checkpoint's global crop size, an official file's 224). Official DINO "
            "uses 480; larger sizes give finer maps but take the model away from its training "
            "resolution."
        ),
    )
    output_dir: str = field(
        default=".",
        metadata=_help("Folder to write the PNGs into, one sub-folder per image; created."),
    )
    device: str = field(default="auto", metadata=_help("cpu, cuda or auto."))
    progress: bool = field(default=True, metadata=_help("Show a progress bar over the images."))


@dataclass
class AttentionConfig(VisualizeConfig):
    """Settings of ``dinolab visualize attention``."""

    threshold: float = field(
        default=0.6,
        metadata=_help(
            "Per head, keep the most-attended patches that together hold this share of the "
            "attention, in (0, 1] (official DINO's --threshold; the paper's masks use 0.6)."
        ),
    )


@dataclass
class PCAConfig(VisualizeConfig):
    """Settings of ``dinolab visualize pca``."""

    fg_threshold: float = field(
        default=0.0,
        metadata=_help(
            "Foreground cut on the standardised first-component score (0: above the mean). "
            "Raise it to keep only the patches the first component is surest of."
        ),
    )


# --------------------------------------------------------------------------- images


def list_images(path: str | Path) -> list[Path]:
    """The images to visualise: ``path`` itself, or a folder's images (sorted, recursive).

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: a folder with no file ending in one of :data:`IMAGE_SUFFIXES`.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"--image_path {str(p)!r} does not exist")
    found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise ValueError(
            f"--image_path {str(p)!r} is a folder with no images (files ending in "
            f"{', '.join(IMAGE_SUFFIXES)})"
        )
    return found


def load_image(
    path: str | Path, image_size: int, patch_size: int
) -> tuple[torch.Tensor, np.ndarray]:
    """Read, resize and crop one image as the model sees it.

    Args:
        path: an image file PIL can read (converted to RGB).
        image_size: the shorter side after resizing, in pixels (bicubic, aspect kept).
        patch_size: the result's sides are cut down to multiples of it (right and bottom).

    Returns:
        ``(x, rgb)``: ``x`` float32 ``[3, H, W]`` normalised with ImageNet's mean and standard
        deviation, ``rgb`` uint8 ``[H, W, 3]`` (the same pixels, for drawing).

    Raises:
        ValueError: the file is not an image PIL can read, or it is smaller than one patch
            after resizing.
    """
    from PIL import Image, UnidentifiedImageError

    from dinolab.data.multicrop import IMAGENET_MEAN, IMAGENET_STD

    p = Path(path)
    try:
        with Image.open(p) as img:
            img = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(
            f"--image_path: {str(p)!r} is not an image that PIL can read "
            f"({type(err).__name__}); expected a PNG, JPEG or other image file"
        ) from None
    w, h = img.size
    scale = image_size / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = img.resize(size, Image.Resampling.BICUBIC)
    cw, ch = size[0] // patch_size * patch_size, size[1] // patch_size * patch_size
    if cw == 0 or ch == 0:
        raise ValueError(
            f"--image_path: {str(p)!r} is {size[0]}x{size[1]} px after resizing to "
            f"--image_size {image_size}, smaller than one {patch_size}-px patch"
        )
    rgb = np.asarray(img, dtype=np.uint8)[:ch, :cw].copy()
    x = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std, rgb


def _names(paths: list[Path], root: Path) -> list[str]:
    """Each image's output sub-folder: its path under ``root`` without the ending, or with it
    (``cat_jpg``) where two images differ only by their ending."""
    if root.is_file():
        return [paths[0].stem]
    plain = [str(p.relative_to(root).with_suffix("")) for p in paths]
    shared = {n for n in plain if plain.count(n) > 1}
    return [
        f"{n}_{p.suffix.lstrip('.').lower()}" if n in shared else n
        for n, p in zip(plain, paths, strict=True)
    ]


# --------------------------------------------------------------------------- model


def _require_image_path(cfg: VisualizeConfig, command: str) -> None:
    if cfg.image_path is None:
        raise ValueError(
            f"dinolab visualize {command}: --image_path is required (an image file or a folder "
            "of images)"
        )


def _vit(cfg: VisualizeConfig) -> tuple[nn.Module, int, str]:
    """The ViT to visualise, the image size to use and a description for the titles.

    A dinolab :class:`~dinolab.models.VisionTransformer` (DINO, DINOv2 files and dinolab
    checkpoints) or a :class:`~dinolab.models.DINOv3ViT` (DINOv3 files in the official, timm or
    transformers layout). Both give the last block's attention (the DINOv3 one computed
    explicitly with RoPE) and ``x_norm_patchtokens``; their registers / storage tokens
    (``num_register_tokens``) are left out of the attention maps and of the PCA.
    """
    from dinolab.models.dinov3 import DINOv3ViT
    from dinolab.models.vit import VisionTransformer
    from dinolab.train.course_teacher import COURSE_TEACHER_PATH

    path = cfg.pretrained_weights or str(COURSE_TEACHER_PATH)
    loaded = read_backbone(path, cfg.checkpoint_key, arch=cfg.arch, patch_size=cfg.patch_size)
    backbone = loaded.backbone
    if not isinstance(backbone, VisionTransformer | DINOv3ViT):
        raise ValueError(
            f"dinolab visualize: --pretrained_weights {path!r} holds a "
            f"{getattr(backbone, 'arch', type(backbone).__name__)}; attention maps and patch "
            "features need a ViT (dinolab, DINO, DINOv2 or DINOv3)"
        )
    # A DINOv3 file records no training resolution: img_size is DINOv3ViT's nominal 224.
    size = cfg.image_size or int(backbone.img_size)
    kind = "DINOv3 ViT" if isinstance(backbone, DINOv3ViT) else "ViT"
    arch = loaded.args.get("arch") or f"{kind} D={backbone.embed_dim}"
    what = f"{Path(path).name}: {arch} {cfg.checkpoint_key}, {backbone.patch_size}-px patches"
    return backbone, size, what


def _device(cfg: VisualizeConfig) -> torch.device:
    from dinolab.train.engine import resolve_device

    return resolve_device(cfg.device)


def _output_dir(cfg: VisualizeConfig) -> Path:
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {str(out)!r} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


# --------------------------------------------------------------------------- drawing


def _figure(rows: int, cols: int) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(cols * _PANEL_IN, rows * _PANEL_IN), dpi=_DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=_DPI)
    return path


def _attention_figure(
    rgb: np.ndarray,
    attn: torch.Tensor,
    masks: torch.Tensor,
    threshold: float,
    title: str,
) -> Any:
    """Row 1: the image and each head's attention over it; row 2: the mean of the heads and
    each head's thresholded set. ``attn`` float ``[heads, H, W]`` (pixels), ``masks`` bool
    ``[heads, H, W]``."""
    heads = attn.shape[0]
    fig, axes = _figure(2, heads + 1)
    vmax = float(attn.max())
    axes[0, 0].imshow(rgb)
    axes[0, 0].set_title("image")
    image = None
    for j in range(heads):
        ax = axes[0, j + 1]
        ax.imshow(rgb)
        image = ax.imshow(attn[j].numpy(), cmap="inferno", alpha=0.6, vmin=0.0, vmax=vmax)
        ax.set_title(f"head {j}: attention")
        ax = axes[1, j + 1]
        ax.imshow(rgb)
        mask = masks[j].numpy()
        overlay = np.zeros((*mask.shape, 4))
        overlay[mask] = (0.1, 0.9, 0.2, 0.45)
        ax.imshow(overlay)
        if mask.any() and not mask.all():
            ax.contour(mask.astype(float), levels=[0.5], colors="lime", linewidths=1.0)
        ax.set_title(f"head {j}: {threshold:.0%} of attention\non {mask.mean():.0%} of pixels",
                     fontsize=9)
    mean = attn.mean(0).numpy()
    axes[1, 0].imshow(rgb)
    axes[1, 0].imshow(mean, cmap="inferno", alpha=0.6, vmin=0.0, vmax=vmax)
    axes[1, 0].set_title("mean of the heads")
    if image is not None:
        bar = fig.colorbar(image, ax=axes[0, :].tolist(), shrink=0.8)
        bar.set_label("CLS attention per patch")
    fig.suptitle(title, fontsize=10)
    return fig


def _pca_figure(rgb: np.ndarray, colors: np.ndarray, foreground: np.ndarray, title: str) -> Any:
    """Image, foreground (first component) and PCA colours; arrays at pixel resolution."""
    fig, axes = _figure(1, 3)
    axes[0, 0].imshow(rgb)
    axes[0, 0].set_title("image")
    axes[0, 1].imshow(rgb)
    overlay = np.zeros((*foreground.shape, 4))
    overlay[~foreground] = (0.0, 0.0, 0.0, 0.7)
    axes[0, 1].imshow(overlay)
    axes[0, 1].set_title(f"foreground: {foreground.mean():.0%} of pixels", fontsize=9)
    axes[0, 2].imshow(colors)
    axes[0, 2].set_title("PCA of foreground patches\n(components 1-3 as RGB)", fontsize=9)
    fig.suptitle(title, fontsize=9)
    return fig


# --------------------------------------------------------------------------- commands


def visualize_attention(cfg: AttentionConfig) -> dict[str, Any]:
    """Write the attention PNGs of every image (see the module docstring).

    Returns:
        ``{"images": N, "heads": heads, "image_size": ..., "output_dir": ..., "files": [...]}``.

    Raises:
        FileNotFoundError: no checkpoint or no ``--image_path``.
        ValueError: a file that is not an image, a checkpoint without a ViT under
            ``--checkpoint_key``, a threshold outside (0, 1].
    """
    from matplotlib.image import imsave

    from dinolab.eval.attention import cls_attention, threshold_attention, upsample_patches

    if not 0 < cfg.threshold <= 1:
        raise ValueError(f"--threshold {cfg.threshold!r} must be in (0, 1] (a share of the mass)")
    _require_image_path(cfg, "attention")
    paths = list_images(cfg.image_path or "")
    backbone, size, what = _vit(cfg)
    out = _output_dir(cfg)
    backbone.to(_device(cfg))
    p = int(backbone.patch_size)
    files: list[str] = []
    names = _names(paths, Path(cfg.image_path or ""))
    for path, name in tqdm(list(zip(paths, names, strict=True)), desc="attention",
                           disable=not cfg.progress):
        x, rgb = load_image(path, size, p)
        attn = cls_attention(backbone, x[None])[0]  # [heads, h, w]
        masks = threshold_attention(attn, cfg.threshold)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        imsave(folder / "img.png", rgb)
        files.append(str(folder / "img.png"))
        pixels = upsample_patches(attn, p)  # [heads, H, W]
        for j in range(attn.shape[0]):
            target = folder / f"attn-head{j}.png"
            imsave(target, pixels[j].numpy(), format="png")
            files.append(str(target))
        title = (f"{path.name} ({rgb.shape[1]}x{rgb.shape[0]} px): last-block CLS attention\n"
                 f"{what}")
        fig = _attention_figure(rgb, pixels, upsample_patches(masks, p), cfg.threshold, title)
        files.append(str(_save(fig, folder / "attention_figure.png")))
    return {"images": len(paths), "heads": int(backbone.num_heads), "image_size": size,
            "output_dir": str(out), "files": files}


def visualize_pca(cfg: PCAConfig) -> dict[str, Any]:
    """Write the PCA-colour PNGs of every image, one PCA fitted over all of them.

    Returns:
        ``{"images": N, "image_size": ..., "output_dir": ..., "files": [...]}``.

    Raises:
        FileNotFoundError: no checkpoint or no ``--image_path``.
        ValueError: a file that is not an image, a checkpoint without a ViT under
            ``--checkpoint_key``, patches that are all the same.
    """
    from matplotlib.image import imsave

    from dinolab.eval.attention import patch_features, pca_colors, upsample_patches

    _require_image_path(cfg, "pca")
    paths = list_images(cfg.image_path or "")
    backbone, size, what = _vit(cfg)
    out = _output_dir(cfg)
    backbone.to(_device(cfg))
    p = int(backbone.patch_size)
    names = _names(paths, Path(cfg.image_path or ""))
    images, rows = [], []
    for path in tqdm(paths, desc="patch features", disable=not cfg.progress):
        x, rgb = load_image(path, size, p)
        feats = patch_features(backbone, x[None])[0]  # [h, w, D]
        images.append((rgb, feats.shape[:2]))
        rows.append(feats.reshape(-1, feats.shape[-1]))
    # One joint PCA over every patch of every image (images may have different grids).
    joint = torch.cat(rows)[None, None]  # [1, 1, M, D]
    colors, fg = pca_colors(joint, fg_threshold=cfg.fg_threshold)
    colors, fg = colors[0, 0], fg[0, 0]
    files: list[str] = []
    start = 0
    for (rgb, (h, w)), path, name in zip(images, paths, names, strict=True):
        n = h * w
        c = colors[start : start + n].reshape(h, w, -1).permute(2, 0, 1)  # [3, h, w]
        f = fg[start : start + n].reshape(h, w)
        start += n
        c_px = upsample_patches(c, p).permute(1, 2, 0).numpy()  # [H, W, 3]
        f_px = upsample_patches(f, p).numpy()
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        imsave(folder / "img.png", rgb)
        imsave(folder / "pca.png", c_px)
        files += [str(folder / "img.png"), str(folder / "pca.png")]
        title = (f"{path.name} ({rgb.shape[1]}x{rgb.shape[0]} px): patch features, one PCA "
                 f"over {len(paths)} image(s)\n{what}")
        fig = _pca_figure(rgb, c_px, f_px, title)
        files.append(str(_save(fig, folder / "pca_figure.png")))
    return {"images": len(paths), "image_size": size, "output_dir": str(out), "files": files}
