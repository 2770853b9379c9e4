"""Data for DINO: multi-crop augmentation, iBOT masking, and the data sets of the course.

* :mod:`~dinolab.data.multicrop`: :class:`MultiCropAugmentation` (DINO's 2 global + N local
  views), :func:`multicrop_collate`, :func:`eval_transform`, :func:`denormalize`;
* :mod:`~dinolab.data.batched`: :class:`BatchedMultiCrop`, the same recipe drawn per image
  and applied per batch (about 10x cheaper on small images);
* :mod:`~dinolab.data.masking`: :class:`MaskingGenerator` (block-wise masks) and
  :func:`sample_ibot_masks` (DINOv2's per-batch masking);
* :mod:`~dinolab.data.shapes`: :class:`Shapes`, a synthetic set generated from a seed;
* :mod:`~dinolab.data.datasets`: :class:`Digits` and :func:`build_dataset` for ``digits``,
  ``shapes``, ``cifar10``, ``stl10`` and ``imagefolder``;
* :mod:`~dinolab.data.photos`: scikit-image's bundled photos, :class:`PhotoDataset`.

Examples:
    >>> from dinolab.data import MultiCropAugmentation, build_dataset, multicrop_collate
    >>> aug = MultiCropAugmentation(global_crops_size=32, local_crops_size=16,
    ...                             local_crops_number=2)
    >>> ds = build_dataset("shapes", n=4, transform=aug)
    >>> views, labels = multicrop_collate([ds[i] for i in range(4)])
    >>> [tuple(v.shape) for v in views]
    [(4, 3, 32, 32), (4, 3, 32, 32), (4, 3, 16, 16), (4, 3, 16, 16)]
"""

from __future__ import annotations

from dinolab.data.batched import BatchedMultiCrop, CropParams
from dinolab.data.datasets import (
    CIFAR10,
    DATA_ROOT_ENV,
    DATASETS,
    STL10,
    Digits,
    ImageFolder,
    build_dataset,
    default_data_root,
    num_classes,
)
from dinolab.data.masking import GeneratorLike, MaskingGenerator, sample_ibot_masks
from dinolab.data.multicrop import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropAugmentation,
    Solarize,
    ToImageTensor,
    denormalize,
    eval_transform,
    multicrop_collate,
    to_image_tensor,
)
from dinolab.data.photos import PHOTO_NAMES, PhotoDataset, load_photo, load_photos
from dinolab.data.shapes import (
    SHAPE_CLASSES,
    SHAPES_STYLES,
    Shapes,
    generate_shapes,
    generate_shapes_masks,
)

__all__ = [
    "BatchedMultiCrop",
    "CropParams",
    "CIFAR10",
    "DATASETS",
    "DATA_ROOT_ENV",
    "Digits",
    "ImageFolder",
    "GeneratorLike",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MaskingGenerator",
    "MultiCropAugmentation",
    "PHOTO_NAMES",
    "PhotoDataset",
    "SHAPE_CLASSES",
    "STL10",
    "Shapes",
    "Solarize",
    "ToImageTensor",
    "build_dataset",
    "default_data_root",
    "denormalize",
    "eval_transform",
    "generate_shapes",
    "generate_shapes_masks",
    "SHAPES_STYLES",
    "load_photo",
    "load_photos",
    "multicrop_collate",
    "num_classes",
    "sample_ibot_masks",
    "to_image_tensor",
]
