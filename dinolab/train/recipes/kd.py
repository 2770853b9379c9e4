"""The ``kd`` recipe: seed 004's knowledge-distillation experiment, done soundly.

Four training runs on the same labelled data, each a phase of the same engine:

1. ``teacher``: the 12-conv :class:`~dinolab.models.TeacherNet` trained on the labels
   (with the BatchNorm + ReLU the draft forgot, unless ``--no-teacher_nonlinear``);
2. ``student_labels``: the small :class:`~dinolab.models.StudentNet` trained on the labels
   alone: the baseline distillation has to beat;
3. ``student_kd``: the same StudentNet trained only to match the teacher's softened outputs
   (:class:`~dinolab.losses.DistillKL`, ``T^2``-scaled);
4. ``student_kd_ce``: ``alpha * DistillKL + (1 - alpha) * cross-entropy`` (Hinton's mix).

The three students start from the same initial weights and see the same batches in the same
order, so their differences come from the loss alone.

With ``--labelled_fraction f < 1`` only a share ``f`` of the training labels may be used: the
teacher and the label-only student train on those images, while the distilled students see every
training image through the teacher's outputs (Hinton's transfer set needs no labels) and
``student_kd_ce``'s cross-entropy uses the labelled ones only.

The teacher's outputs are computed under ``torch.no_grad()`` with the teacher in eval mode
(the draft computed them with gradients and detached afterwards). Every student keeps an
exponential moving average of ITS OWN weights (:func:`dinolab.ema.ema_update` with
``buffers="copy"``: the average never runs in train mode, so it takes the student's BatchNorm
statistics), evaluated beside the raw student after every epoch. (The draft instead averaged
the teacher towards a student of another architecture wherever shapes happened to match,
which measures nothing.) Models go back to train mode after each evaluation.

The results table (``results.json`` and ``results.md`` in ``--output_dir``) lists each
model's parameter count and final validation accuracy, raw and EMA.

Examples:
    >>> results = train_kd(KDConfig(epochs=10, output_dir="runs/kd"))   # doctest: +SKIP
    >>> results["student_kd_ce"]["val_acc"], results["teacher"]["val_acc"]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from dinolab.ema import ema_update
from dinolab.train import distributed as du
from dinolab.train.engine import (
    Engine,
    StepContext,
    Task,
    TrainConfig,
    fix_random_seeds,
    nonfinite_loss,
)
from dinolab.train.recipes.common import _help

__all__ = [
    "KDConfig",
    "SupervisedTask",
    "KDTask",
    "load_kd_data",
    "random_shift",
    "split_labelled",
    "train_kd",
    "PHASES",
]

PHASES = ("teacher", "student_labels", "student_kd", "student_kd_ce")


@dataclass
class KDConfig(TrainConfig):
    """Settings of the ``kd`` recipe. Optimisation flags apply to all four phases."""

    output_dir: str = field(
        default="runs/kd",
        metadata=_help(
            "Directory with one sub-directory per phase (teacher, student_labels, student_kd, "
            "student_kd_ce) and the results table results.md / results.json."
        ),
    )
    epochs: int = field(default=30, metadata=_help("Epochs of each of the four phases."))
    batch_size_per_gpu: int = field(default=64, metadata=_help("Images per step and process."))
    lr: float = field(
        # 3e-3 until session 6 left the 30-epoch StudentNet under-trained (Digits, seed 0's
        # validation images: label-only student 96.7% at 3e-3, 99.1% at 1e-2; TeacherNet
        # 98.9 / 99.3 / 98.9% at 3e-3 / 1e-2 / 3e-2). See benchmarks/EXPERIMENTS.md.
        default=1e-2,
        metadata=_help(
            "Peak AdamW learning rate of every phase (not scaled with the batch in this recipe)."
        ),
    )
    min_lr: float = field(
        default=1e-5, metadata=_help("Learning rate the cosine schedule ends near.")
    )
    warmup_epochs: int = field(default=1, metadata=_help("Epochs of linear lr warm-up."))
    weight_decay: float = field(
        default=5e-4, metadata=_help("Weight decay (not on biases and BatchNorm parameters).")
    )
    weight_decay_end: float = field(
        default=5e-4, metadata=_help("Final weight decay (equal to --weight_decay: constant).")
    )
    clip_grad: float = field(
        default=0.0,
        metadata=_help("Per-parameter gradient-norm clipping; 0 disables it (the default here)."),
    )
    freeze_last_layer: int = field(
        default=0,
        metadata=_help(
            "Unused by this recipe's classifiers (kept for a uniform engine); leave at 0."
        ),
    )
    dataset: str = field(
        default="digits",
        metadata=_help(
            "Labelled data: digits (scikit-learn's bundled 8x8 digits, 1797 images, upsampled) or "
            "shapes (the bundled synthetic shapes).",
            choices=("digits", "shapes"),
        ),
    )
    img_size: int = field(
        default=16,
        metadata=_help(
            "Side in pixels the images are resized to; a multiple of 16 (TeacherNet's 4 pools). "
            "The digits are 8x8, so 16 loses nothing; larger sizes cost more."
        ),
    )
    val_fraction: float = field(
        default=0.25,
        metadata=_help(
            "Fraction of the images held out (stratified, from --seed) to measure accuracy."
        ),
    )
    num_images: int = field(
        default=3000,
        metadata=_help(
            "Images to use (train + validation): generated for shapes, the first N of the 1797 "
            "for digits. Lower it for a quick try."
        ),
    )
    teacher_width: int = field(
        default=32,
        metadata=_help("Channels of each of TeacherNet's 12 conv layers (the draft: 12)."),
    )
    teacher_nonlinear: bool = field(
        default=True,
        metadata=_help(
            "BatchNorm + ReLU after each teacher conv. False reproduces the draft's purely linear "
            "stack, whose 12 convs collapse into 4 affine maps."
        ),
    )
    student_width: int = field(
        default=16,
        metadata=_help("Channels of StudentNet's first conv (the second has twice as many)."),
    )
    kd_temperature: float = field(
        default=4.0,
        metadata=_help(
            "Distillation temperature T: higher values soften the teacher's distribution and "
            "reveal more of its 'dark knowledge' (Hinton et al.: 2-20)."
        ),
    )
    kd_alpha: float = field(
        default=0.9,
        metadata=_help(
            "Weight of the KD term in the student_kd_ce phase; the cross-entropy gets 1 - alpha."
        ),
    )
    augment_shift: int = field(
        default=0,
        metadata=_help(
            "Shift each training image by a random whole number of pixels in [-N, N] along each "
            "axis (edges repeated), drawn anew every step and used by every phase; in the KD "
            "phases the teacher labels the very view the student sees. 0: no augmentation."
        ),
    )
    labelled_fraction: float = field(
        default=1.0,
        metadata=_help(
            "Fraction of the training images whose labels may be used (stratified by class, "
            "drawn from --seed). The teacher and the label-only student train on those images; "
            "the distilled students train on every training image through the teacher's outputs "
            "(an unlabelled transfer set, as in Hinton et al.), and the cross-entropy of "
            "student_kd_ce uses only the labelled ones. The labelled images are repeated to the "
            "full set's length, so every phase takes the same number of steps. 1: all labels."
        ),
    )
    ema_momentum: float = field(
        default=0.99,
        metadata=_help(
            "Momentum of each student's EMA copy, updated every step (about 1/(1-m) steps of "
            "memory). Raise it for longer runs."
        ),
    )
    ema_buffers: str = field(
        default="copy",
        metadata=_help(
            "BatchNorm statistics of the EMA copy: copy (take the student's), ema (average them "
            "like the weights) or keep (never update them).",
            choices=("copy", "ema", "keep"),
        ),
    )
    phases: tuple[str, ...] = field(
        default=PHASES,
        metadata=_help(
            "Phases to run, in order; the KD phases need the teacher phase (run or resumed).",
            nargs="+",
            choices=PHASES,
        ),
    )


def load_kd_data(cfg: KDConfig) -> tuple[TensorDataset, TensorDataset, int, int]:
    """Train and validation tensors ``([N, C, S, S] float, [N] long)``, classes, channels.

    The images come from :func:`dinolab.data.build_dataset` (the same data the lessons use):
    ``digits`` is scikit-learn's bundled 8x8 digits, upsampled to ``img_size`` and split
    stratified from ``seed`` (kept as one grey channel); ``shapes`` draws separate train and
    test images. Pixels are standardised with the training mean and standard deviation.
    """
    from dinolab.data import build_dataset

    if cfg.img_size < 16 or cfg.img_size % 16:
        raise ValueError(
            f"img_size={cfg.img_size} must be a positive multiple of 16 "
            "(TeacherNet pools four times by 2)"
        )
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ValueError(f"val_fraction={cfg.val_fraction} must be in (0, 1)")
    n_val = max(1, round(cfg.num_images * cfg.val_fraction))
    n_train = max(1, cfg.num_images - n_val)
    if cfg.dataset == "digits":
        kw: dict[str, Any] = {
            "img_size": cfg.img_size,
            "seed": cfg.seed,
            "test_fraction": cfg.val_fraction,
        }
        splits = [build_dataset("digits", train=t, **kw) for t in (True, False)]
    elif cfg.dataset == "shapes":
        splits = [
            build_dataset("shapes", train=t, n=n, img_size=cfg.img_size, seed=cfg.seed)
            for t, n in ((True, n_train), (False, n_val))
        ]
    else:
        raise ValueError(f"dataset must be 'digits' or 'shapes', got {cfg.dataset!r}")
    tensors = []
    for ds, limit in zip(splits, (n_train, n_val), strict=True):
        x = torch.from_numpy(np.asarray(ds.data[:limit])).permute(0, 3, 1, 2).float() / 255.0
        if cfg.dataset == "digits":
            x = x[:, :1]  # the three channels are copies of one grey level
        tensors.append((x, torch.tensor(ds.targets[:limit], dtype=torch.long)))
    (x_train, y_train), (x_val, y_val) = tensors
    mean, std = x_train.mean(), x_train.std()
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    num_classes = len(splits[0].classes)
    return (
        TensorDataset(x_train, y_train),
        TensorDataset(x_val, y_val),
        num_classes,
        x_train.shape[1],
    )


def split_labelled(
    train_set: TensorDataset, fraction: float, seed: int
) -> tuple[TensorDataset, TensorDataset]:
    """Labelled subset and transfer set of ``train_set`` for ``--labelled_fraction``.

    Returns:
        ``(labelled, transfer)``. ``labelled``: the chosen images with their labels, a share
        ``fraction`` of each class (at least one image per class), repeated cyclically to
        ``len(train_set)`` rows so a phase on it takes as many steps as one on the full set.
        ``transfer``: every image of ``train_set`` in its order, labels of the others set to
        ``-1`` (unlabelled).

    Raises:
        ValueError: ``fraction`` outside ``(0, 1]``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"labelled_fraction={fraction} must be in (0, 1]")
    x, y = train_set.tensors
    if fraction == 1.0:
        return train_set, train_set
    g = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c in torch.unique(y).tolist():
        members = torch.nonzero(y == c).flatten()
        keep = max(1, round(fraction * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=g)[:keep]])
    idx = torch.cat(chosen).sort().values
    repeated = idx[torch.arange(len(y)) % len(idx)]
    masked = torch.full_like(y, -1)
    masked[idx] = y[idx]
    return TensorDataset(x[repeated], y[repeated]), TensorDataset(x, masked)


@torch.no_grad()
def accuracy(
    model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 512
) -> float:
    """Top-1 accuracy (%) of ``model`` on ``dataset``; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in DataLoader(dataset, batch_size=batch_size):
            pred = model(x.to(device)).argmax(dim=1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
    finally:
        model.train(was_training)
    return 100.0 * correct / max(total, 1)


def random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each image by its own random ``(dy, dx)`` in ``[-max_shift, max_shift]``.

    Pixels shifted in from outside repeat the nearest edge pixel. Draws from torch's global
    generator (on ``x``'s device).

    Args:
        x: images ``[B, C, H, W]``.
        max_shift: largest shift in pixels (>= 0).

    Returns:
        ``[B, C, H, W]``: ``out[b, :, i, j] = x[b, :, clamp(i + dy_b), clamp(j + dx_b)]``.
    """
    if max_shift < 0:
        raise ValueError(f"random_shift: max_shift={max_shift} must be >= 0")
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), mode="replicate")
    dy, dx = torch.randint(-s, s + 1, (2, b, 1), device=x.device)
    rows = torch.arange(h, device=x.device) + s + dy  # [B, H]
    cols = torch.arange(w, device=x.device) + s + dx  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


class SupervisedTask(Task):
    """Train ``model`` on labels with cross-entropy; optionally keep an EMA of its weights.

    Args:
        name: phase name (checkpoints refuse to resume another phase).
        model: the classifier ``[B, C, H, W] -> [B, classes]``.
        val_set: validation data for the accuracy after every epoch.
        ema_momentum: None for no EMA; else the momentum of the EMA copy.
    """

    scale_lr = False

    def __init__(
        self,
        name: str,
        model: nn.Module,
        val_set: Dataset,
        ema_momentum: float | None = None,
        ema_buffers: str = "copy",
    ) -> None:
        self.name = name
        self.ema_buffers = ema_buffers
        self.student = model
        self.val_set = val_set
        self.ema_momentum = ema_momentum
        self.ema: nn.Module | None = None
        if ema_momentum is not None:
            self.ema = copy.deepcopy(model)
            for p in self.ema.parameters():
                p.requires_grad_(False)
            self.ema.eval()
        self.device = torch.device("cpu")
        self.augment_shift = 0  # set by the recipe: random shifts of up to this many pixels

    def setup(self, epochs: int, niter_per_ep: int, device: torch.device) -> None:
        self.device = device

    def modules_to_device(self, device: torch.device) -> None:
        self.student.to(device)
        if self.ema is not None:
            self.ema.to(device)

    def loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with the labels (overridden by :class:`KDTask`)."""
        return F.cross_entropy(logits, y)

    def training_step(self, batch: Any, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = (t.to(ctx.device, non_blocking=True) for t in batch)
        if self.augment_shift:
            x = random_shift(x, self.augment_shift)
        logits = ctx.student(x)
        # Decided alike in every process: a process that raised or skipped the backward
        # alone would leave the others waiting in DDP's gradient all-reduce.
        if not du.finite_on_every_rank(x, logits):
            return nonfinite_loss(logits), {}
        loss = self.loss(logits, x, y)
        labelled = y >= 0  # -1: an image of the unlabelled transfer set (--labelled_fraction)
        if not bool(labelled.any()):
            return loss, {}
        hits = logits.detach().argmax(dim=1)[labelled] == y[labelled]
        return loss, {"train_batch_acc": float(hits.float().mean()) * 100.0}

    def after_optimizer_step(self, ctx: StepContext) -> dict[str, float]:
        if self.ema is None:
            return {}
        ema_update(
            self.ema, self.student, float(self.ema_momentum or 0.0), buffers=self.ema_buffers
        )  # type: ignore[arg-type]
        return {"momentum": float(self.ema_momentum or 0.0)}

    def evaluate(self, epoch: int) -> dict[str, float]:
        out = {"val_acc": accuracy(self.student, self.val_set, self.device)}
        if self.ema is not None:
            out["ema_val_acc"] = accuracy(self.ema, self.val_set, self.device)
        return out

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"student": self.student.state_dict()}
        if self.ema is not None:
            state["student_ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        if self.ema is not None:
            self.ema.load_state_dict(state["student_ema"])


class KDTask(SupervisedTask):
    """Distil a frozen ``teacher`` into the student: DistillKL, optionally mixed with CE.

    Args:
        teacher: trained classifier; frozen, kept in eval mode, run under ``no_grad``.
        temperature: KD temperature ``T``.
        alpha: None for the pure KD loss; else ``alpha * KD + (1 - alpha) * CE``.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        teacher: nn.Module,
        val_set: Dataset,
        temperature: float,
        alpha: float | None,
        ema_momentum: float | None,
        ema_buffers: str = "copy",
    ) -> None:
        from dinolab.losses import DistillKL

        super().__init__(name, model, val_set, ema_momentum, ema_buffers)
        self.teacher = teacher
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()
        self.distill = DistillKL(temperature)
        self.alpha = alpha

    def modules_to_device(self, device: torch.device) -> None:
        super().modules_to_device(device)
        self.teacher.to(device)

    def train_mode(self) -> None:
        self.student.train()
        self.teacher.eval()  # frozen BatchNorm statistics: the teacher is not being trained

    def loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        kd = self.distill(logits, teacher_logits)
        if self.alpha is None:
            return kd
        # Labels of -1 mark unlabelled images (--labelled_fraction): ignore_index averages the
        # cross-entropy over the labelled rows; a batch without any would give 0/0, so it
        # contributes 0 instead.
        if bool((y >= 0).any()):
            ce = F.cross_entropy(logits, y, ignore_index=-1)
        else:
            ce = logits.sum() * 0.0
        return self.alpha * kd + (1.0 - self.alpha) * ce


def _write_table(output_dir: Path, results: dict[str, dict[str, Any]]) -> None:
    lines = [
        "| model | parameters | val. accuracy (%) | EMA val. accuracy (%) |",
        "|---|---:|---:|---:|",
    ]
    for name, r in results.items():
        ema = f"{r['ema_val_acc']:.2f}" if r.get("ema_val_acc") is not None else "-"
        lines.append(f"| {name} | {r['parameters']:,} | {r['val_acc']:.2f} | {ema} |")
    (output_dir / "results.md").write_text("\n".join(lines) + "\n")
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")


def train_kd(
    cfg: KDConfig,
    callbacks: Sequence[Callable[[Engine, dict[str, Any]], None]] = (),
) -> dict[str, dict[str, Any]]:
    """Run the phases of the ``kd`` recipe; return ``{phase: {val_acc, ema_val_acc, ...}}``.

    Each phase's entry also holds ``parameters`` (the model's), ``train_images`` (distinct
    training images the phase saw) and ``labelled_images`` (how many of them had a label).

    With ``resume``, each phase continues from its own checkpoint if it has one (a finished
    phase is only re-evaluated) and starts fresh otherwise.
    """
    from dinolab.models import StudentNet, TeacherNet, count_parameters

    unknown = [p for p in cfg.phases if p not in PHASES]
    if unknown:
        raise ValueError(f"phases {unknown} are not among {list(PHASES)}")
    if cfg.augment_shift < 0:
        raise ValueError(f"augment_shift={cfg.augment_shift} must be >= 0 (pixels)")
    fix_random_seeds(cfg.seed)
    train_set, val_set, num_classes, channels = load_kd_data(cfg)
    labelled_set, transfer_set = split_labelled(train_set, cfg.labelled_fraction, cfg.seed)
    n_labelled = int((transfer_set.tensors[1] >= 0).sum())
    output_dir = Path(cfg.output_dir)

    def new_student() -> nn.Module:
        return StudentNet(num_classes, channels, cfg.img_size, width=cfg.student_width)

    teacher = TeacherNet(
        num_classes,
        channels,
        cfg.img_size,
        width=cfg.teacher_width,
        nonlinear=cfg.teacher_nonlinear,
    )
    teacher_dir = output_dir / "teacher"
    results: dict[str, dict[str, Any]] = {}
    for phase in cfg.phases:
        # Every student phase starts from the same initial weights (seed + 1) and sees the
        # batches in the same order (the sampler follows --seed): a paired comparison, so the
        # students differ by their loss alone, not by the luck of their initialisation.
        fix_random_seeds(cfg.seed + (0 if phase == "teacher" else 1))
        phase_dir = output_dir / phase
        phase_cfg = replace(
            cfg,
            output_dir=str(phase_dir),
            resume=cfg.resume and (phase_dir / "checkpoint.pth").is_file(),
        )
        if phase == "teacher":
            task: SupervisedTask = SupervisedTask("teacher", teacher, val_set, None)
        else:
            if "teacher" not in cfg.phases and phase != "student_labels":
                from dinolab.train.checkpoint import load_checkpoint

                teacher.load_state_dict(load_checkpoint(teacher_dir / "checkpoint.pth")["student"])
            ema = cfg.ema_momentum
            if phase == "student_labels":
                task = SupervisedTask(phase, new_student(), val_set, ema, cfg.ema_buffers)
            else:
                alpha = None if phase == "student_kd" else cfg.kd_alpha
                task = KDTask(
                    phase,
                    new_student(),
                    teacher,
                    val_set,
                    cfg.kd_temperature,
                    alpha,
                    ema,
                    cfg.ema_buffers,
                )
        task.augment_shift = cfg.augment_shift
        labels_only = phase in ("teacher", "student_labels")
        data = labelled_set if labels_only else transfer_set
        record = Engine(task, data, phase_cfg, callbacks=callbacks).fit()
        results[phase] = {
            "parameters": count_parameters(task.student),
            "train_images": n_labelled if labels_only else len(transfer_set),
            "labelled_images": n_labelled,
            "val_acc": record.get("val_acc"),
            "ema_val_acc": record.get("ema_val_acc"),
        }
    if du.is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_table(output_dir, results)
    return results
