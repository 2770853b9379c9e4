"""The course teacher: the DINO teacher that ships with dinolab, and how its figures are measured.

``make experiments`` trains it with ``dinolab train dino`` and its defaults (the dark shapes,
``vit_micro``; see ``experiments/dino_research.md`` for why those), keeps only what inference
needs (the teacher's backbone and head, the DINO centre, the settings) and writes it to
``dinolab/assets/course_teacher.pth`` beside ``course_teacher.json``: the command, the data seed,
the CPU time and the figures measured on the file itself. Lessons load it with
:func:`load_course_teacher`; a test recomputes its k-NN accuracy from the file and compares it
with the recorded one.

Examples:
    >>> backbone = load_course_teacher()          # doctest: +SKIP
    >>> backbone(torch.zeros(1, 3, 32, 32)).shape  # doctest: +SKIP
    torch.Size([1, 96])
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dinolab.train.checkpoint import load_checkpoint, save_checkpoint

__all__ = [
    "COURSE_TEACHER_PATH",
    "COURSE_TEACHER_RECORD",
    "course_teacher_record",
    "load_course_teacher",
    "measure_attention_shares",
    "measure_teacher",
    "slim_checkpoint",
]

_ASSETS = Path(__file__).resolve().parent.parent / "assets"
#: The committed course teacher (a dinolab checkpoint holding the teacher only).
COURSE_TEACHER_PATH = _ASSETS / "course_teacher.pth"
#: Its record: command, data seed, CPU time and measured figures (JSON).
COURSE_TEACHER_RECORD = _ASSETS / "course_teacher.json"

# What inference needs from a training checkpoint; the student and the optimiser state (two
# thirds of the file) are left out.
_KEEP = ("epoch", "step", "teacher", "dino_loss", "args")


def slim_checkpoint(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], **extra: Any
) -> Path:
    """Copy a ``dinolab train dino`` checkpoint keeping only the teacher and the settings.

    Args:
        src: a dinolab training checkpoint (``checkpoint.pth``).
        dst: where to write the slim copy (atomically).
        **extra: more entries to store (plain Python values), e.g. ``source="..."``.

    Returns:
        ``dst`` as a :class:`~pathlib.Path`. It loads with
        :func:`dinolab.models.load_backbone` (``which="teacher"``) like the original.

    Raises:
        ValueError: ``src`` has no teacher (not a ``dino`` checkpoint).
    """
    state = load_checkpoint(src)
    if "teacher" not in state:
        raise ValueError(
            f"{src}: no 'teacher' entry (keys: {sorted(state)}); expected a `dinolab train "
            "dino` checkpoint"
        )
    slim = {k: state[k] for k in _KEEP if k in state}
    slim.update(extra)
    return save_checkpoint(dst, slim)


def load_course_teacher(which: str = "backbone") -> nn.Module:
    """The committed course teacher, in eval mode on the CPU.

    Args:
        which: ``"backbone"`` (``[B, 3, 32, 32] -> [B, 96]`` CLS features; attention with
            ``get_last_selfattention``) or ``"student"``-style ``"model"``: backbone and DINO head
            in a :class:`~dinolab.models.MultiCropWrapper` (``[B, 3, H, W] -> [B, K]``).

    Raises:
        FileNotFoundError: the file is missing (a checkout without it: ``make experiments``
            makes it, about 30 CPU-minutes).
        ValueError: ``which`` is neither.
    """
    from dinolab.models import MultiCropWrapper, backbone_from_checkpoint, read_checkpoint

    if which not in ("backbone", "model"):
        raise ValueError(f"load_course_teacher: which={which!r}; expected 'backbone' or 'model'")
    if not COURSE_TEACHER_PATH.is_file():
        raise FileNotFoundError(
            f"{COURSE_TEACHER_PATH} is missing: `make experiments` (or `python experiments/run.py "
            "--only course_teacher`) trains it with `dinolab train dino`'s defaults"
        )
    loaded = backbone_from_checkpoint(
        read_checkpoint(COURSE_TEACHER_PATH), "teacher", with_head=which == "model",
        path=COURSE_TEACHER_PATH,
    )
    if which == "backbone":
        return loaded.backbone
    return MultiCropWrapper(loaded.backbone, loaded.head).eval()


def course_teacher_record() -> dict[str, Any]:
    """The committed record of the course teacher (``course_teacher.json``) as a dict."""
    if not COURSE_TEACHER_RECORD.is_file():
        raise FileNotFoundError(f"{COURSE_TEACHER_RECORD} is missing: `make experiments` writes it")
    return json.loads(COURSE_TEACHER_RECORD.read_text())


def measure_teacher(path: str | os.PathLike[str], attention_images: int = 500) -> dict[str, Any]:
    """Figures of a dino checkpoint's teacher on its own held-out split, from the file alone.

    The settings stored in the file rebuild the data (``build_ssl_data``): the k-NN bank is
    the training split, the queries the test split (images no training step saw). Also
    measured on the same images: raw pixels, the same network at the random initialisation
    the run started from (``fix_random_seeds(seed)`` then ``build_student``), the attention
    Jaccard of the teacher and of that random network (first ``attention_images`` test images,
    their exact masks), and the centre prior with no model.

    Returns:
        A dict of floats: ``knn_top1``, ``pixels_knn_top1``, ``random_knn_top1`` (percent);
        ``jaccard_mean_map``, ``jaccard_per_head``, ``jaccard_best_head``,
        ``random_jaccard_mean_map``, ``random_jaccard_best_head``, ``centre_prior_jaccard``.
    """
    from dinolab.eval import attention_jaccard, centre_prior_jaccard
    from dinolab.train.recipes.common import knn_evaluate

    cfg, data, teacher, random_net = _rebuild(path)
    knn = {
        name: knn_evaluate(
            net, data.knn_train, data.knn_test, data.num_classes, k=cfg.knn_k,
            temperature=cfg.knn_temperature,
        )
        for name, net in (("teacher", teacher), ("pixels", None), ("random", random_net))
    }
    out: dict[str, Any] = {
        "knn_top1": knn["teacher"],
        "pixels_knn_top1": knn["pixels"],
        "random_knn_top1": knn["random"],
    }
    held_out = _masked_test_images(data, attention_images)
    if held_out is not None:
        images, target = held_out
        result = attention_jaccard(teacher, images, target)
        random_result = attention_jaccard(random_net, images, target)
        out.update(
            jaccard_mean_map=float(result.mean_map),
            jaccard_per_head=[float(v) for v in result.per_head],
            jaccard_best_head=float(max(result.per_head)),
            random_jaccard_mean_map=float(random_result.mean_map),
            random_jaccard_best_head=float(max(random_result.per_head)),
            centre_prior_jaccard=float(
                centre_prior_jaccard(target, teacher.patch_size).mean()
            ),
        )
    return out


def _rebuild(path: str | os.PathLike[str]) -> tuple[Any, Any, nn.Module, nn.Module]:
    """``(cfg, data, teacher, random_net)`` of a dino checkpoint: its settings, the data they
    build (``build_ssl_data``), its teacher backbone and the network at the random
    initialisation the run started from, both in eval mode."""
    from dinolab.models import load_backbone
    from dinolab.train.engine import fix_random_seeds
    from dinolab.train.recipes.common import build_ssl_data
    from dinolab.train.recipes.dino import DINOConfig, build_student

    cfg = DINOConfig.from_args(load_checkpoint(path)["args"])
    data = build_ssl_data(cfg)
    teacher = load_backbone(path)
    fix_random_seeds(cfg.seed)
    return cfg, data, teacher, build_student(cfg).backbone.eval()


def _masked_test_images(data: Any, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first ``n`` test images ``[n, 3, H, W]`` and their object masks ``[n, H, W]``
    (None: the data have no masks, or ``n`` is 0)."""
    masks = getattr(data.knn_test, "masks", None)
    if masks is None and hasattr(data.knn_test, "dataset"):
        masks = getattr(data.knn_test.dataset, "masks", None)
    if masks is None or n <= 0:
        return None
    n = min(n, len(masks))
    return torch.stack([data.knn_test[i][0] for i in range(n)]), torch.from_numpy(masks[:n])


def measure_attention_shares(
    path: str | os.PathLike[str], attention_images: int = 500
) -> dict[str, Any]:
    """Where a dino checkpoint's teacher puts its CLS attention, with no threshold.

    Beside :func:`measure_teacher`'s Jaccard, which thresholds each map to 60% of its mass:
    the share of the head-averaged map's mass on the object's pixels
    (:func:`dinolab.eval.map_object_mass`), for the teacher, its random initialisation, the
    centre prior and a uniform map (the object's share of the image), and the size of the
    teacher's 60%-mass set against the object's. A set smaller than the object (ratio below 1)
    lowers the Jaccard even when all of it lies on the object.

    Returns:
        Over the first ``attention_images`` test images: ``object_mass``,
        ``object_mass_best_head`` (the best head's mean), ``random_object_mass``,
        ``centre_prior_object_mass``, ``uniform_object_mass`` (means over the images, floats);
        ``kept_area_over_object``, the median over the images of the 60%-mass set's pixels
        over the object's (a median, since small objects make single ratios large); and
        ``images`` (int). Empty when the data have no masks or ``attention_images`` is 0.
    """
    from dinolab.eval import centre_prior, cls_attention, map_object_mass, threshold_attention

    _, data, teacher, random_net = _rebuild(path)
    held_out = _masked_test_images(data, attention_images)
    if held_out is None:
        return {}
    images, target = held_out
    p = teacher.patch_size
    attn = cls_attention(teacher, images)  # [B, heads, h, w]
    mean_map = attn.mean(1)
    b, h, w = mean_map.shape
    kept = threshold_attention(mean_map, 0.6).sum((-2, -1)).double() * p * p  # pixels
    return {
        "object_mass": float(map_object_mass(mean_map, target, p).mean()),
        "object_mass_best_head": float(map_object_mass(attn, target, p).mean(0).max()),
        "random_object_mass": float(
            map_object_mass(cls_attention(random_net, images).mean(1), target, p).mean()
        ),
        "centre_prior_object_mass": float(
            map_object_mass(centre_prior(h, w).expand(b, h, w), target, p).mean()
        ),
        "uniform_object_mass": float(target.double().mean()),
        "kept_area_over_object": float(torch.quantile(kept / target.sum((-2, -1)).double(), 0.5)),
        "images": b,
    }
