"""Pieces the self-supervised recipes share: data settings and sets, k-NN evaluation.

``dino`` and ``distill`` train on unlabelled images and are judged by a weighted k-NN
classifier on frozen features (official DINO's protocol), so both need the same three data
sets: the multi-crop training set, and a labelled "memory bank" and query set for the k-NN.
By default those come from the bundled synthetic :class:`~dinolab.data.Shapes` (no download);
``--data_path`` switches to an image folder (``root/<class>/<image>``, torchvision's
ImageFolder layout).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from dinolab.data.multicrop import multicrop_collate
from dinolab.data.shapes import SHAPES_STYLES
from dinolab.train.engine import SeededTransform, TrainConfig

__all__ = [
    "SSLConfig",
    "SSLData",
    "build_ssl_data",
    "knn_evaluate",
    "pixel_features",
]


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


#: The ``--shapes_style`` choices: the styles of :class:`dinolab.data.Shapes`.
SHAPES_STYLE_CHOICES: tuple[str, ...] = tuple(SHAPES_STYLES)


@dataclass
class SSLConfig(TrainConfig):
    """Data and multi-crop settings shared by the ``dino`` and ``distill`` recipes."""

    dataset: str = field(
        default="shapes",
        metadata=_help(
            "Training images: shapes (bundled synthetic shapes, offline), digits (bundled), "
            "cifar10 or stl10 (torchvision files under --data_path), or imagefolder (--data_path "
            "holds <class>/<image> folders, or train/ and val/ trees). With --data_path and the "
            "default shapes, imagefolder is used.",
            choices=("shapes", "digits", "cifar10", "stl10", "imagefolder"),
        ),
    )
    data_path: str | None = field(
        default=None,
        metadata=_help(
            "Image folder to train on, laid out as root/<class>/<image> (torchvision ImageFolder; "
            "class names are used only by the k-NN evaluation). Default: none, use --dataset."
        ),
    )
    val_data_path: str | None = field(
        default=None,
        metadata=_help(
            "Labelled image folder for the k-NN evaluation's queries. Default: with --data_path, "
            "every 5th image of the training folder; with shapes, a separate test split."
        ),
    )
    num_images: int = field(
        default=2000,
        metadata=_help(
            "Number of synthetic training images (shapes only). More images take longer per "
            "epoch but overfit less."
        ),
    )
    num_eval_images: int = field(
        default=1000,
        metadata=_help("Number of synthetic test images for the k-NN evaluation (shapes only)."),
    )
    num_classes: int = field(
        default=6,
        metadata=_help(
            "Shape classes (shapes only, 2..6); used only to score the k-NN evaluation."
        ),
    )
    shapes_style: str = field(
        default="grey",
        metadata=_help(
            "Which synthetic shapes (shapes only): grey (coloured shapes on noisy grey "
            "backgrounds), dark (bright grey shapes anywhere on dark backgrounds of a random "
            "level, with exact object masks) or dark_fixed (the same with one background level "
            "for every image, so that only the silhouette tells images apart).",
            choices=SHAPES_STYLE_CHOICES,
        ),
    )
    data_seed: int | None = field(
        default=None,
        metadata=_help(
            "Seed of the bundled data (the shapes' images, the digits' split). Default: "
            "--seed. Set it apart from --seed to report on data that took no part in choosing "
            "settings."
        ),
    )
    global_crops_scale: tuple[float, float] = field(
        default=(0.4, 1.0),
        metadata=_help(
            "Area range (fractions of the image) of the two global crops, as official DINO. "
            "Lower the minimum for stronger augmentation."
        ),
    )
    local_crops_scale: tuple[float, float] = field(
        default=(0.05, 0.4),
        metadata=_help(
            "Area range of each local crop. Its maximum should stay below the global minimum."
        ),
    )
    local_crops_number: int = field(
        default=6,
        metadata=_help(
            "Number of small local crops per image (official DINO: 8). 0 disables multi-crop; "
            "each local crop adds a student forward pass."
        ),
    )
    global_crops_size: int = field(
        default=32,
        metadata=_help(
            "Side of a global crop in pixels (official: 224). Must be a multiple of --patch_size; "
            "the ViT learns its position embeddings at this size."
        ),
    )
    local_crops_size: int = field(
        default=16,
        metadata=_help(
            "Side of a local crop in pixels (official: 96). A multiple of --patch_size."
        ),
    )
    color_jitter: tuple[float, float, float, float] = field(
        default=(0.4, 0.4, 0.2, 0.1),
        metadata=_help(
            "ColorJitter strengths (brightness, contrast, saturation, hue), applied to each crop "
            "with p 0.8 (official DINO: 0.4 0.4 0.2 0.1). Raise them when colour alone tells "
            "images apart: the network then learns colour, not shape."
        ),
    )
    grayscale_prob: float = field(
        default=0.2,
        metadata=_help("Probability of turning each crop grey (official DINO: 0.2)."),
    )
    blur_sigma: tuple[float, float] = field(
        default=(0.1, 2.0),
        metadata=_help(
            "Range of the Gaussian blur's sigma in pixels of the crop (official DINO: 0.1 2.0, "
            "on 224-pixel crops). On small crops scale it down with the crop side."
        ),
    )
    blur_prob: tuple[float, float, float] = field(
        default=(1.0, 0.1, 0.5),
        metadata=_help(
            "Gaussian-blur probabilities of the first global crop, the second, and each local "
            "crop (official DINO: 1.0 0.1 0.5). On tiny images blur can erase what the crops "
            "share; 0 0 0 turns it off."
        ),
    )
    solarization_prob: float = field(
        default=0.2,
        metadata=_help(
            "Solarisation probability of the second global crop (official DINO: 0.2). It "
            "inverts pixels above half brightness: on bright shapes over dark backgrounds it "
            "hides the shape, so the dark shapes want 0."
        ),
    )
    rotation_degrees: float = field(
        default=0.0,
        metadata=_help(
            "Rotate every crop by a random angle in [-N, N] degrees, corners filled from the "
            "nearest edge. 0 (official DINO) turns it off; use it for images whose content has "
            "no up (the bundled shapes, cells, aerial photos)."
        ),
    )
    batched_augmentation: bool = field(
        default=True,
        metadata=_help(
            "Draw each image's crop parameters in the data set but apply them to the whole "
            "batch at once (dinolab.data.BatchedMultiCrop, about 10x cheaper on small images). "
            "Not used with image folders, whose images differ in size; false runs torchvision's "
            "transforms crop by crop."
        ),
    )
    knn_k: int = field(
        default=20,
        metadata=_help(
            "Neighbours of the weighted k-NN evaluation (see --knn_every; official: 20)."
        ),
    )
    knn_every: int = field(
        default=1,
        metadata=_help(
            "Run the k-NN evaluation every N epochs and after the last; 0: never (evaluate "
            "the checkpoint with `dinolab eval knn`). On a large --data_path each evaluation is "
            "a pass over all its images, in one process while the others wait."
        ),
    )
    knn_temperature: float = field(
        default=0.07,
        metadata=_help(
            "Temperature of the k-NN vote weights exp(similarity / T) (official: 0.07)."
        ),
    )
    eval_batch_size: int = field(
        default=256,
        metadata=_help("Images per forward pass when extracting features for evaluation."),
    )


#: Augmentation settings a recipe may leave unset (None): the bundled dark shapes' values ...
DARK_SHAPES_AUGMENTATION: dict[str, Any] = {
    "color_jitter": (0.4, 0.4, 0.4, 0.0),
    "blur_prob": (0.0, 0.0, 0.0),
    "solarization_prob": 0.0,
    "rotation_degrees": 180.0,
}
#: ... and official DINO's, for every other data set (real images, digits, grey shapes).
OFFICIAL_AUGMENTATION: dict[str, Any] = {
    "color_jitter": (0.4, 0.4, 0.2, 0.1),
    "blur_prob": (1.0, 0.1, 0.5),
    "solarization_prob": 0.2,
    "rotation_degrees": 0.0,
}


def resolved_augmentation(cfg: SSLConfig) -> dict[str, Any]:
    """The augmentation settings ``cfg`` trains with: unset (None) ones filled in.

    On the bundled dark shapes (``--dataset shapes --shapes_style dark`` or ``dark_fixed``, no
    ``--data_path``)
    an unset setting takes :data:`DARK_SHAPES_AUGMENTATION`'s value, on any other data
    :data:`OFFICIAL_AUGMENTATION`'s; settings given explicitly are kept.
    """
    dark = (
        cfg.dataset == "shapes"
        and not cfg.data_path
        and getattr(cfg, "shapes_style", "") in ("dark", "dark_fixed")
    )
    fill = DARK_SHAPES_AUGMENTATION if dark else OFFICIAL_AUGMENTATION
    return {k: fill[k] if getattr(cfg, k) is None else getattr(cfg, k) for k in fill}


@dataclass
class SSLData:
    """The data of a self-supervised run."""

    train_set: SeededTransform  # multi-crop views of the training images
    knn_train: Dataset  # labelled memory bank, eval transform
    knn_test: Dataset  # labelled queries, eval transform
    num_classes: int
    collate_fn: Callable[[list[Any]], Any] = multicrop_collate  # batches train_set's samples


def _shapes_eval_transform() -> Any:
    from dinolab.data.multicrop import IMAGENET_MEAN, IMAGENET_STD, to_image_tensor

    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def transform(image: Any) -> torch.Tensor:
        x = to_image_tensor(image)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return (x - mean) / std

    return transform


class _WithTransform(Dataset):
    """A view of ``dataset`` whose images go through ``transform``."""

    def __init__(self, dataset: Dataset, transform: Any) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, label = self.dataset[index]
        return self.transform(image), label


def _labelled(dataset: Dataset) -> Dataset:
    """Guard that a data set yields (image, label) pairs with a ``classes`` list."""
    if not hasattr(dataset, "classes"):
        raise ValueError(f"{type(dataset).__name__} has no 'classes'; the k-NN needs labels")
    return dataset


def knn_due(every: int, epoch: int, epochs: int) -> bool:
    """Whether the k-NN evaluation runs after ``epoch`` (0-based) of ``epochs``: every
    ``every`` epochs and after the last one; never when ``every`` is 0."""
    if every < 0:
        raise ValueError(f"--knn_every must be >= 0, got {every}")
    return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == epochs)


def build_ssl_data(cfg: SSLConfig) -> SSLData:
    """Multi-crop training set and labelled k-NN sets, from :func:`dinolab.data.build_dataset`.

    The k-NN memory bank is the training split seen through the evaluation transform; the
    queries are the test split (``shapes``, ``digits``, ``cifar10``, ``stl10``, an
    ``imagefolder`` with ``train/`` and ``val/``), ``--val_data_path``, or else every 5th image
    of a plain class-folder tree (those images are then left out of the memory bank).

    Raises:
        ValueError: crop sizes that are not multiples of the patch size, bad scales.
        FileNotFoundError: the data are not where ``data_path`` says.
    """
    from dinolab.data import MultiCropAugmentation, build_dataset, eval_transform
    from dinolab.data.batched import BatchedMultiCrop

    if cfg.knn_every < 0:
        raise ValueError(f"--knn_every must be >= 0, got {cfg.knn_every}")
    patch = int(getattr(cfg, "patch_size", 1) or 1)
    for name in ("global_crops_size", "local_crops_size"):
        size = getattr(cfg, name)
        if size < patch or size % patch:
            raise ValueError(f"{name}={size} must be a positive multiple of --patch_size={patch}")
    name = cfg.dataset
    if cfg.data_path and name == "shapes":
        name = "imagefolder"
    if cfg.data_path:
        defaults = {f.name: f.default for f in fields(type(cfg))}
        unused = [f"--{k} {getattr(cfg, k)}" for k in ("num_images", "num_eval_images",
                  "num_classes", "shapes_style", "data_seed") if getattr(cfg, k) != defaults[k]]
        if unused:
            warnings.warn(
                f"{', '.join(unused)}: the synthetic shapes' settings, unused with --data_path "
                f"(the folder's images and class folders count)",
                stacklevel=2,
            )
    if cfg.data_path and name == "digits":
        raise ValueError(
            f"--dataset digits is bundled and reads no --data_path ({cfg.data_path!r}); drop one "
            "of the two (--dataset imagefolder for an image folder)"
        )
    aug = resolved_augmentation(cfg)
    aug_kwargs: dict[str, Any] = {
        "global_crops_scale": tuple(cfg.global_crops_scale),
        "local_crops_scale": tuple(cfg.local_crops_scale),
        "local_crops_number": cfg.local_crops_number,
        "global_crops_size": cfg.global_crops_size,
        "local_crops_size": cfg.local_crops_size,
        "color_jitter": tuple(aug["color_jitter"]),
        "grayscale_prob": cfg.grayscale_prob,
        "blur_sigma": tuple(cfg.blur_sigma),
        "rotation_degrees": aug["rotation_degrees"],
        "global1_blur_prob": aug["blur_prob"][0],
        "global2_blur_prob": aug["blur_prob"][1],
        "local_blur_prob": aug["blur_prob"][2],
        "global2_solarize_prob": aug["solarization_prob"],
    }
    augmentation: Any
    collate_fn: Callable[[list[Any]], Any] = multicrop_collate
    if cfg.batched_augmentation and name != "imagefolder":
        augmentation = BatchedMultiCrop(**aug_kwargs)
        collate_fn = augmentation.collate
    else:
        augmentation = MultiCropAugmentation(**aug_kwargs)
    if name in ("cifar10", "stl10", "imagefolder") and not cfg.data_path:
        raise ValueError(f"--dataset {name} needs --data_path (the folder that holds the data)")
    size = cfg.global_crops_size
    if name in ("shapes", "digits"):
        data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
        kw: dict[str, Any] = {"img_size": size, "seed": data_seed, "as_tensor": True}
        if name == "shapes":
            kw["num_classes"] = cfg.num_classes
            kw["style"] = cfg.shapes_style
        train_images = (
            build_dataset(name, train=True, n=cfg.num_images, **kw)
            if name == "shapes"
            else build_dataset(name, train=True, **kw)
        )
        test_images = (
            build_dataset(name, train=False, n=cfg.num_eval_images, **kw)
            if name == "shapes"
            else build_dataset(name, train=False, **kw)
        )
        to_eval = _shapes_eval_transform()
        knn_train: Dataset = _WithTransform(train_images, to_eval)
        knn_test: Dataset = _WithTransform(test_images, to_eval)
    else:
        root = Path(cfg.data_path or "")
        train_images = _labelled(build_dataset(name, root=root, train=True))
        to_eval = eval_transform(size)
        # Query folders are labelled by the training folder's class names, not their own.
        same_classes = {"classes": train_images.classes} if name == "imagefolder" else {}
        if cfg.val_data_path:
            knn_train = _WithTransform(train_images, to_eval)
            queries = build_dataset(
                "imagefolder", root=cfg.val_data_path, train=True, classes=train_images.classes
            )
            knn_test = _WithTransform(_labelled(queries), to_eval)
        elif name == "imagefolder" and not (root / "train").is_dir():
            n = len(train_images)
            knn_train = _WithTransform(
                Subset(train_images, [i for i in range(n) if i % 5]), to_eval
            )
            knn_test = _WithTransform(Subset(train_images, list(range(0, n, 5))), to_eval)
        else:
            knn_train = _WithTransform(train_images, to_eval)
            knn_test = _WithTransform(
                _labelled(build_dataset(name, root=root, train=False, **same_classes)), to_eval
            )
    num_classes = len(train_images.classes)  # type: ignore[attr-defined]
    if num_classes < 2:
        warnings.warn(
            f"the data have {num_classes} class: every k-NN vote is right, so the k-NN accuracy "
            "is 100% whatever the features; give class folders to measure it",
            stacklevel=2,
        )
    train_set = SeededTransform(train_images, augmentation, seed=cfg.seed)
    return SSLData(train_set, knn_train, knn_test, num_classes, collate_fn)


@torch.no_grad()
def _features(
    model: nn.Module | None, dataset: Dataset, device: torch.device, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    from dinolab.eval import extract_features

    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, pin_memory=device.type == "cuda"
    )
    if model is None:  # raw pixels
        return extract_features(nn.Flatten().to(device), loader, device=device, progress=False)
    return extract_features(model, loader, device=device, progress=False)


def pixel_features(dataset: Dataset, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened, L2-normalised pixels ``[N, 3*H*W]`` and labels ``[N]``: the raw-pixel baseline."""
    return _features(None, dataset, torch.device("cpu"), batch_size)


def knn_evaluate(
    backbone: nn.Module | None,
    knn_train: Dataset,
    knn_test: Dataset,
    num_classes: int,
    device: torch.device | str = "cpu",
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 256,
) -> float:
    """Top-1 accuracy (%) of official DINO's weighted k-NN on ``backbone``'s features.

    Args:
        backbone: ``[B, 3, H, W] -> [B, D]``, already on ``device``; None scores raw pixels.
        knn_train: labelled memory bank; knn_test: labelled queries (eval transforms).
        num_classes: number of classes.
        k: neighbours (capped at the memory-bank size). temperature: vote temperature.

    Returns:
        Accuracy in percent, ``[0, 100]``.
    """
    from dinolab.eval import knn_accuracy

    device = torch.device(device)
    train_x, train_y = _features(backbone, knn_train, device, batch_size)
    test_x, test_y = _features(backbone, knn_test, device, batch_size)
    k = max(1, min(k, train_x.shape[0]))
    # The features come back on the CPU; the votes are computed where the queries are, so on
    # a GPU the [test, train] similarity products run there.
    test_x = test_x.to(device)
    acc = knn_accuracy(train_x, train_y, test_x, test_y, num_classes, k=k, T=temperature)
    return 100.0 * acc if math.isfinite(acc) else float("nan")
