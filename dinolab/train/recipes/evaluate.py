"""``dinolab eval knn|linear``: score a trained backbone's frozen features.

The backbone comes from a checkpoint, read once by :func:`dinolab.models.backbone_from_checkpoint`:
a dinolab ``dino`` or ``distill`` checkpoint (its architecture is read from the settings saved
inside it) or an official DINO / DINOv2 / DINOv3 file (its architecture read from its tensors;
``--arch`` and ``--patch_size`` fill in what they leave open). The k-NN is official DINO's
weighted vote (several ``k`` at once, ``--nb_knn``); the linear probe trains one linear
layer on the frozen features (:func:`dinolab.eval.train_linear_probe`), on the CLS tokens of
the last ``--n_last_blocks`` blocks concatenated, as official DINO's ``eval_linear.py``.
``--dump_features DIR`` saves the k-NN's features and labels as official ``eval_knn.py`` does
(:func:`dump_features`).

Examples:
    >>> r = eval_knn(EvalConfig(pretrained_weights="runs/dino/checkpoint.pth"))  # doctest: +SKIP
    >>> r["knn_top1"]                                                            # doctest: +SKIP
    {'10': 71.2, '20': 72.0, '100': 66.3, '200': 61.8}
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from dinolab.train.engine import fix_random_seeds, resolve_device
from dinolab.train.recipes.common import (
    SHAPES_STYLE_CHOICES,
    SSLConfig,
    SSLData,
    _help,
    build_ssl_data,
)

__all__ = ["EvalConfig", "load_backbone", "eval_knn", "eval_linear", "dump_features"]


@dataclass
class EvalConfig:
    """Settings of ``dinolab eval knn`` and ``dinolab eval linear``."""

    pretrained_weights: str = field(
        default="runs/dino/checkpoint.pth",
        metadata=_help(
            "Checkpoint to evaluate: a dinolab training checkpoint or an official DINO / DINOv2 "
            "/ DINOv3 file (timm's and transformers' DINOv3 layouts too)."
        ),
    )
    checkpoint_key: str = field(
        default="teacher",
        metadata=_help(
            "Which network of a training checkpoint to evaluate: teacher (official DINO's "
            "choice) or student."
        ),
    )
    arch: str | None = field(
        default=None,
        metadata=_help(
            "Backbone architecture; default: read from a dinolab checkpoint; for an official "
            "file, the ViT size its width says (384: vit_small...), resnet50 if it has no patch "
            "embedding."
        ),
    )
    patch_size: int | None = field(
        default=None,
        metadata=_help(
            "ViT patch size; default: from a dinolab checkpoint, or from an official file's "
            "patch embedding (16 for DINO, 14 for DINOv2)."
        ),
    )
    image_size: int | None = field(
        default=None,
        metadata=_help(
            "Side of the evaluation images in pixels; default: the checkpoint's global crop "
            "size; for an official file 224, or 32 (28 for 14-px patches) on the bundled "
            "shapes and digits."
        ),
    )
    dataset: str = field(
        default="shapes",
        metadata=_help(
            "Evaluation data: shapes or digits (bundled), cifar10 or stl10 (under --data_path), "
            "imagefolder (--data_path; chosen automatically when --data_path is set).",
            choices=("shapes", "digits", "cifar10", "stl10", "imagefolder"),
        ),
    )
    data_path: str | None = field(
        default=None,
        metadata=_help(
            "Labelled image folder (root/<class>/<image>) whose images form the k-NN memory bank "
            "or the probe's training set."
        ),
    )
    val_data_path: str | None = field(
        default=None,
        metadata=_help(
            "Labelled image folder of queries; default: every 5th image of --data_path."
        ),
    )
    num_images: int | None = field(
        default=None,
        metadata=_help(
            "Synthetic training images (shapes only). Default: the checkpoint's own when it is a "
            "dinolab checkpoint of the bundled data, else 2000."
        ),
    )
    num_eval_images: int | None = field(
        default=None,
        metadata=_help(
            "Synthetic test images (shapes only). Default: the checkpoint's own, else 1000."
        ),
    )
    num_classes: int | None = field(
        default=None,
        metadata=_help("Shape classes (shapes only, 2..6). Default: the checkpoint's own, else 6."),
    )
    shapes_style: str | None = field(
        default=None,
        metadata=_help(
            "Which synthetic shapes: grey, dark or dark_fixed. Default: the ones the checkpoint "
            "was trained on (a dinolab checkpoint records them; earlier ones trained on grey), "
            "else grey.",
            choices=SHAPES_STYLE_CHOICES,
        ),
    )
    seed: int | None = field(
        default=None,
        metadata=_help(
            "Seed of the synthetic data and of the probe's initialisation. Default: the data "
            "seed the checkpoint was trained on (its held-out split is then the queries), "
            "else 0."
        ),
    )
    nb_knn: tuple[int, ...] = field(
        default=(10, 20, 100, 200),
        metadata=_help(
            "Numbers of neighbours to report (official DINO: 10 20 100 200; 20 is usually best).",
            nargs="+",
        ),
    )
    temperature: float = field(
        default=0.07, metadata=_help("Temperature of the k-NN vote weights (official: 0.07).")
    )
    n_last_blocks: int = field(
        default=4,
        metadata=_help(
            "Linear probe: concatenate the CLS tokens of this many last blocks (official: 4 for "
            "ViT-S, 1 for ViT-B). Ignored by ResNets and by k-NN."
        ),
    )
    epochs: int = field(default=100, metadata=_help("Linear probe epochs (official: 100)."))
    lr: float = field(
        default=0.1, metadata=_help("Linear probe peak learning rate on standardised features.")
    )
    batch_size_per_gpu: int = field(
        default=256,
        metadata=_help("Images per forward pass when extracting features, and the probe's batch."),
    )
    device: str = field(default="auto", metadata=_help("cpu, cuda or auto."))
    output_dir: str | None = field(
        default=None,
        metadata=_help("If set, write the result as eval_knn.json / eval_linear.json there."),
    )
    dump_features: str | None = field(
        default=None,
        metadata=_help(
            "k-NN only: folder to save the computed features in, as official DINO's "
            "eval_knn.py: trainfeat.pth and testfeat.pth (L2-normalised float32 [N, D]), "
            "trainlabels.pth and testlabels.pth (int64 [N]); torch.load(..., "
            "weights_only=True) reads them. Default: not saved."
        ),
    )
    progress: bool = field(default=True, metadata=_help("Show progress bars."))


def _default_image_size(cfg: EvalConfig, patch: int) -> int:
    """Official files: 224 px (DINO's evaluation crop) on outside data; on the bundled 32-px
    data sets their size, rounded down to whole patches (28 for DINOv2's 14-px patches)."""
    if cfg.dataset in ("shapes", "digits") and not cfg.data_path:
        return max(patch, 32 // patch * patch)
    return 224


# What the bundled-data settings are when neither the flags nor a checkpoint set them.
_DATA_DEFAULTS = {"num_images": 2000, "num_eval_images": 1000, "num_classes": 6,
                  "shapes_style": "grey", "seed": 0}


def with_checkpoint_data(cfg: EvalConfig, args: Mapping[str, Any]) -> EvalConfig:
    """``cfg`` with its unset bundled-data settings taken from a checkpoint's saved ``args``.

    A dinolab checkpoint trained on the bundled data (no ``data_path``, the same ``dataset``)
    gives its number of images and classes, its shapes style (``grey`` for checkpoints saved
    before styles existed) and its data seed (``data_seed``, else ``seed``), so that the
    evaluation scores the held-out split of the very data the run trained on. Flags given
    explicitly win; what is still unset takes :data:`_DATA_DEFAULTS`.
    """
    from dataclasses import replace

    saved: dict[str, Any] = {}
    if args and not args.get("data_path") and args.get("dataset", "shapes") == cfg.dataset:
        data_seed = args.get("data_seed")
        saved = {
            "num_images": args.get("num_images"),
            "num_eval_images": args.get("num_eval_images"),
            "num_classes": args.get("num_classes"),
            "shapes_style": args.get("shapes_style", "grey"),
            "seed": data_seed if data_seed is not None else args.get("seed"),
        }
    values = {}
    for name, default in _DATA_DEFAULTS.items():
        value = getattr(cfg, name)
        if value is None:
            value = saved.get(name)
        values[name] = default if value is None else value
    return replace(cfg, **values)


def load_backbone(cfg: EvalConfig) -> tuple[nn.Module, int]:
    """The backbone to evaluate (eval mode) and the image size to evaluate it at.

    The file is read once and built by :func:`dinolab.models.backbone_from_checkpoint`: a
    dinolab checkpoint from the settings it saved, any other file from its tensors, with
    ``--arch`` / ``--patch_size`` filling in what those leave open.
    """
    backbone, image_size, _ = _load(cfg)
    return backbone, image_size


def _load(cfg: EvalConfig) -> tuple[nn.Module, int, dict[str, Any]]:
    """:func:`load_backbone` plus the checkpoint's saved settings (``{}`` for other files)."""
    from dinolab.models import backbone_from_checkpoint, is_dinolab_checkpoint, read_checkpoint

    path = Path(cfg.pretrained_weights)
    if path.is_dir():
        raise ValueError(
            f"--pretrained_weights {str(path)!r} is a folder; give the checkpoint file in it "
            "(e.g. checkpoint.pth)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"--pretrained_weights {str(path)!r} does not exist")
    ckpt = read_checkpoint(path, who="dinolab eval")
    if not (isinstance(ckpt, Mapping) and is_dinolab_checkpoint(ckpt)):
        loaded = backbone_from_checkpoint(
            ckpt, cfg.checkpoint_key, arch=cfg.arch, patch_size=cfg.patch_size, path=path
        )
        patch = getattr(loaded.backbone, "patch_size", 1)
        return loaded.backbone, cfg.image_size or _default_image_size(cfg, patch), {}

    args = ckpt.get("args") or {}
    if ckpt.get("recipe") == "distill" and cfg.checkpoint_key == "teacher":
        raise ValueError(
            f"{str(path)!r} is a distill checkpoint: its teacher is the frozen input "
            "model; evaluate the student with --checkpoint_key student, or the teacher's "
            "own checkpoint"
        )
    if cfg.checkpoint_key not in ckpt:
        raise ValueError(
            f"{str(path)!r} has no {cfg.checkpoint_key!r} entry; expected teacher or student"
        )
    trained_on = args.get("data_path")
    if trained_on and not cfg.data_path:
        warnings.warn(
            f"{str(path)!r} was trained on --data_path {trained_on}, but this evaluation "
            f"uses the bundled {cfg.dataset}; pass --data_path {trained_on} to evaluate on "
            "those images",
            stacklevel=2,
        )
    recorded = {"arch": args.get("arch"), "patch_size": args.get("patch_size")}
    given = {"arch": cfg.arch, "patch_size": cfg.patch_size}
    contradicted = [f"--{k} {v}" for k, v in given.items() if v and v != recorded[k]]
    if contradicted:
        raise ValueError(
            f"{str(path)!r}: its {cfg.checkpoint_key} is a {recorded['arch']} with patch size "
            f"{recorded['patch_size']}, not {' / '.join(contradicted)} (drop --arch / "
            "--patch_size: a dinolab checkpoint records them)"
        )
    backbone = backbone_from_checkpoint(ckpt, cfg.checkpoint_key, path=path).backbone
    image_size = cfg.image_size or args.get("global_crops_size") or getattr(
        backbone, "img_size", 224
    )
    return backbone, int(image_size), dict(args)


def _data(cfg: EvalConfig, image_size: int, patch_size: int) -> SSLData:
    ssl = SSLConfig(
        dataset=cfg.dataset,
        data_path=cfg.data_path,
        val_data_path=cfg.val_data_path,
        num_images=cfg.num_images,
        num_eval_images=cfg.num_eval_images,
        num_classes=cfg.num_classes,
        shapes_style=cfg.shapes_style,
        seed=cfg.seed,
        global_crops_size=image_size,
        local_crops_size=max(patch_size, image_size // 2 // patch_size * patch_size),
    )
    return build_ssl_data(ssl)


def _data_description(cfg: EvalConfig) -> str:
    """What the evaluation ran on, for its result."""
    if cfg.data_path:
        queries = f", queries {cfg.val_data_path}" if cfg.val_data_path else ""
        name = "imagefolder" if cfg.dataset == "shapes" else cfg.dataset
        return f"{name} {cfg.data_path}{queries}"
    if cfg.dataset == "shapes":
        return (f"shapes ({cfg.shapes_style}, seed {cfg.seed}, {cfg.num_images} + "
                f"{cfg.num_eval_images} images, {cfg.num_classes} classes)")
    return cfg.dataset


def _folder(path: str | None, flag: str) -> Path | None:
    """Create the folder a flag names up front: a path that cannot hold the result fails before
    the evaluation, not after it. None when the flag is unset."""
    if not path:
        return None
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {str(out)!r} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _output_dir(cfg: EvalConfig) -> Path | None:
    """``--output_dir``, created up front (:func:`_folder`)."""
    return _folder(cfg.output_dir, "--output_dir")


def _dump_dir(cfg: EvalConfig) -> Path | None:
    """``--dump_features``, created up front (:func:`_folder`)."""
    return _folder(cfg.dump_features, "--dump_features")


def dump_features(
    folder: str | os.PathLike[str],
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
) -> list[Path]:
    """Save k-NN features as official DINO's ``eval_knn.py --dump_features`` does.

    Args:
        folder: an existing folder.
        train: ``(features [N, D], labels [N])`` of the memory bank.
        test: ``(features [M, D], labels [M])`` of the queries.

    Returns:
        The four files: ``trainfeat.pth``, ``testfeat.pth``, ``trainlabels.pth``,
        ``testlabels.pth`` (CPU tensors, one per file).
    """
    out = Path(folder)
    written = []
    for name, tensor in (("trainfeat", train[0]), ("testfeat", test[0]),
                         ("trainlabels", train[1]), ("testlabels", test[1])):
        path = out / f"{name}.pth"
        torch.save(tensor.detach().cpu(), path)
        written.append(path)
    return written


def _write(cfg: EvalConfig, name: str, result: dict[str, Any]) -> None:
    out = _output_dir(cfg)
    if out is not None:
        (out / name).write_text(json.dumps(result, indent=2) + "\n")


def _refuse_several_processes(command: str) -> None:
    """The evaluations run in one process: under torchrun every rank would repeat all of it."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world.strip() not in ("", "1"):
        raise ValueError(
            f"dinolab eval {command} runs in one process, but WORLD_SIZE={world} (torchrun): "
            f"run `python -m dinolab eval {command} ...` without torchrun"
        )


def eval_knn(cfg: EvalConfig) -> dict[str, Any]:
    """Weighted k-NN top-1 accuracy (%) for every ``k`` in ``nb_knn``.

    With ``cfg.dump_features``, the memory bank's and the queries' features (L2-normalised
    ``[N, D]``, ``[M, D]``) and labels are also saved there (:func:`dump_features`).
    """
    from dinolab.eval import extract_features, knn_accuracy

    _refuse_several_processes("knn")
    _output_dir(cfg)
    dump_dir = _dump_dir(cfg)
    device = resolve_device(cfg.device)
    backbone, image_size, saved = _load(cfg)
    cfg = with_checkpoint_data(cfg, saved)
    fix_random_seeds(cfg.seed)
    backbone.to(device)
    data = _data(cfg, image_size, getattr(backbone, "patch_size", 1))
    loader = {
        name: DataLoader(ds, batch_size=cfg.batch_size_per_gpu, pin_memory=device.type == "cuda")
        for name, ds in (("train", data.knn_train), ("test", data.knn_test))
    }
    xtr, ytr = extract_features(backbone, loader["train"], device=device, progress=cfg.progress)
    xte, yte = extract_features(backbone, loader["test"], device=device, progress=cfg.progress)
    if dump_dir is not None:
        dump_features(dump_dir, (xtr, ytr), (xte, yte))
    xte = xte.to(device)  # the votes are computed on the queries' device (a GPU if used)
    n_bank = int(xtr.shape[0])
    if any(k > n_bank for k in cfg.nb_knn):
        warnings.warn(
            f"--nb_knn {list(cfg.nb_knn)}: the memory bank has only {n_bank} images, so larger k "
            f"are reported as k={n_bank}",
            stacklevel=2,
        )
    accs = {
        str(min(k, n_bank)): 100.0
        * knn_accuracy(
            xtr, ytr, xte, yte, data.num_classes, k=min(k, n_bank), T=cfg.temperature
        )
        for k in cfg.nb_knn
    }
    result = {
        "pretrained_weights": cfg.pretrained_weights,
        "checkpoint_key": cfg.checkpoint_key,
        "data": _data_description(cfg),
        "knn_top1": accs,
        "train_images": int(xtr.shape[0]),
        "test_images": int(xte.shape[0]),
    }
    if dump_dir is not None:
        result["dump_features"] = str(dump_dir)
    _write(cfg, "eval_knn.json", result)
    return result


class _LastBlocksCLS(nn.Module):
    """CLS tokens of the last ``n`` blocks, concatenated: ``[B, n * D]`` (official linear eval).

    Each block's tokens go through the final LayerNorm first, as in official DINO's
    ``eval_linear.py`` and DINOv2 / DINOv3's linear evaluations. A dinolab
    :class:`~dinolab.models.VisionTransformer` returns whole token sequences (DINO v1's
    ``get_intermediate_layers(x, n)``, CLS first); a :class:`~dinolab.models.DINOv3ViT` returns
    patch tokens unless asked, so it is called as the official DINOv3 evaluation calls it,
    ``get_intermediate_layers(x, n=n, return_class_token=True)``, and its CLS tokens are taken
    from the ``(patches, cls)`` pairs (its storage tokens never enter the features).
    """

    def __init__(self, vit: nn.Module, n: int) -> None:
        super().__init__()
        self.vit, self.n = vit, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` -> features ``[B, n * D]``, shallowest block first."""
        from dinolab.models import DINOv3ViT

        if isinstance(self.vit, DINOv3ViT):
            pairs = self.vit.get_intermediate_layers(x, n=self.n, return_class_token=True)
            return torch.cat([cls for _, cls in pairs], dim=-1)
        return torch.cat([t[:, 0] for t in self.vit.get_intermediate_layers(x, self.n)], dim=-1)


def eval_linear(cfg: EvalConfig) -> dict[str, Any]:
    """Linear-probe top-1 accuracy (%) on frozen features."""
    from dinolab.eval import extract_features, train_linear_probe

    _refuse_several_processes("linear")
    _output_dir(cfg)
    device = resolve_device(cfg.device)
    backbone, image_size, saved = _load(cfg)
    cfg = with_checkpoint_data(cfg, saved)
    fix_random_seeds(cfg.seed)
    data = _data(cfg, image_size, getattr(backbone, "patch_size", 1))
    model: nn.Module = backbone
    if hasattr(backbone, "get_intermediate_layers") and cfg.n_last_blocks > 1:
        model = _LastBlocksCLS(backbone, min(cfg.n_last_blocks, len(backbone.blocks)))
    model.to(device)
    feats = [
        extract_features(
            model,
            DataLoader(ds, batch_size=cfg.batch_size_per_gpu, pin_memory=device.type == "cuda"),
            device=device,
            normalize=False,
            progress=cfg.progress,
        )
        for ds in (data.knn_train, data.knn_test)
    ]
    result_probe = train_linear_probe(
        feats[0][0],
        feats[0][1],
        feats[1][0],
        feats[1][1],
        data.num_classes,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size_per_gpu,
        seed=cfg.seed,
        progress=cfg.progress,
    )
    result = {
        "pretrained_weights": cfg.pretrained_weights,
        "checkpoint_key": cfg.checkpoint_key,
        "data": _data_description(cfg),
        "linear_top1": 100.0 * result_probe.accuracy,
        "feature_dim": int(feats[0][0].shape[1]),
        "epochs": cfg.epochs,
    }
    _write(cfg, "eval_linear.json", result)
    return result
