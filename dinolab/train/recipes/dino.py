"""The ``dino`` recipe: self-distillation with no labels, as official DINO's ``main_dino.py``.

A student (backbone + :class:`~dinolab.models.DINOHead`) sees all crops of an image; a
teacher with the same architecture sees the two global crops; the student learns to predict
the teacher's centred and sharpened distribution over ``out_dim`` prototypes
(:class:`~dinolab.losses.DINOLoss`). The teacher is never trained by gradients: after every
optimiser step it moves towards the student by an exponential moving average whose
momentum rises from ``momentum_teacher`` to 1 along a cosine.

What the engine adds (the same for every recipe): per-iteration cosine schedules for the
learning rate (warm-up, ``lr * batch / 256``) and weight decay (not on biases and norms),
per-parameter gradient clipping, the last layer frozen for ``freeze_last_layer`` epochs,
NaN stop, checkpoints, ``--resume``, DDP.

What this recipe adds: the teacher-temperature warm-up (inside the loss, per epoch), the
collapse monitors every step (teacher entropy, KL teacher-student, KL teacher-uniform;
:func:`dinolab.eval.collapse_metrics`) and a k-NN evaluation of the teacher's backbone
after every epoch.

Examples:
    >>> summary = train_dino(DINOConfig(epochs=2, output_dir="runs/dino"))  # doctest: +SKIP
    >>> summary["knn_top1"]                                                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Self

import numpy as np
import torch
import torch.nn as nn

from dinolab.ema import ema_update
from dinolab.models import BACKBONES
from dinolab.models.checkpoints import VIT_SIZES
from dinolab.schedules import cosine_schedule
from dinolab.train import distributed as du
from dinolab.train.engine import (
    Engine,
    StepContext,
    Task,
    convert_sync_batchnorm_in_place,
    fix_random_seeds,
    nonfinite_loss,
)
from dinolab.train.recipes.common import (
    SHAPES_STYLE_CHOICES,
    SSLConfig,
    SSLData,
    _help,
    build_ssl_data,
    knn_due,
    knn_evaluate,
)

__all__ = [
    "CLASSIC_SETTINGS",
    "DINOConfig",
    "DINOTask",
    "build_backbone_from",
    "build_student",
    "draw_ibot_masks",
    "ibot_centering",
    "train_dino",
]


@dataclass
class DINOConfig(SSLConfig):
    """Settings of the ``dino`` recipe (official DINO's flags, course-sized defaults).

    The defaults are the course teacher's recipe: ``vit_micro`` (4-px patches: an 8x8 grid on
    32-px images, with 4 register tokens and DINOv2's iBOT masked-patch loss beside the DINO
    loss) on 5000 dark shapes (``dark_fixed``: one background level) for 30 epochs, the
    settings under which DINO's teacher leaves uniform targets, learns shape and attends to
    the object on a CPU (``experiments/dino_research.md``).
    :meth:`classic` gives the earlier defaults: official DINO's augmentation and temperatures
    with the 16-token ``vit_course`` on the grey shapes, what the short collapse studies of
    lessons 3.3-4.2 run.
    """

    output_dir: str = field(
        default="runs/dino",
        metadata=_help("Directory for checkpoint.pth, the JSON-lines logs and the PNG plots."),
    )
    epochs: int = field(
        default=30,
        metadata=_help(
            "Training epochs (official: 100-800 on ImageNet). The default, 30 epochs of 5000 "
            "dark shapes (2340 steps), is the course teacher's run: about 24 CPU-minutes of "
            "training (26 in all) on a 2-core x86 laptop CPU (measured: "
            "benchmarks/EXPERIMENTS.md); its teacher passes raw pixels' k-NN in the second "
            "epoch and is within about a point of its best after 14 (about 11 CPU-minutes)."
        ),
    )
    lr: float = field(
        default=4e-3,
        metadata=_help(
            "Peak learning rate at the end of warm-up, for a global batch of 256: it is scaled "
            "by batch / 256, so the default trains at 1e-3 with batch 64 (official: 5e-4)."
        ),
    )
    warmup_epochs: int = field(
        default=1,
        metadata=_help(
            "Epochs of linear learning-rate warm-up (official: 10 of its 100 or more)."
        ),
    )
    weight_decay_end: float = field(
        default=0.04,
        metadata=_help(
            "Final weight decay of the cosine schedule (official: 0.4; the course teacher keeps "
            "0.04 throughout)."
        ),
    )
    freeze_last_layer: int = field(
        default=0,
        metadata=_help(
            "Epochs during which the head's last layer gets no update (official: 1). The course "
            "teacher's short run trains it from the start."
        ),
    )
    shapes_style: str = field(
        default="dark_fixed",
        metadata=_help(
            "Which synthetic shapes (shapes only): dark_fixed (bright grey shapes anywhere on "
            "one dark background level, with exact object masks: only the silhouette tells two "
            "images apart, so DINO learns it), dark (the same shapes on backgrounds of random "
            "levels: DINO also matches the background level and its attention drifts to the "
            "background; the course teacher's data before session 10) or grey (coloured shapes "
            "on grey backgrounds, where shared colour is an easier cue). See "
            "experiments/dino_research.md.",
            choices=SHAPES_STYLE_CHOICES,
        ),
    )
    num_images: int = field(
        default=5000,
        metadata=_help("Number of synthetic training images (shapes only)."),
    )
    global_crops_scale: tuple[float, float] = field(
        default=(0.35, 1.0),
        metadata=_help("Area range of the two global crops (official DINO: 0.4 1.0)."),
    )
    local_crops_scale: tuple[float, float] = field(
        default=(0.1, 0.35),
        metadata=_help(
            "Area range of each local crop (official DINO: 0.05 0.4). Its maximum should stay "
            "below the global minimum."
        ),
    )
    local_crops_number: int = field(
        default=4,
        metadata=_help(
            "Number of small local crops per image (official DINO: 8). 0 disables multi-crop; "
            "each local crop adds a student forward pass."
        ),
    )
    color_jitter: tuple[float, float, float, float] | None = field(
        default=None,
        metadata=_help(
            "ColorJitter strengths (brightness, contrast, saturation, hue), applied to each crop "
            "with p 0.8. Unset: 0.4 0.4 0.4 0 on the bundled dark shapes, official DINO's 0.4 "
            "0.4 0.2 0.1 on any other data (--data_path, digits, grey shapes)."
        ),
    )
    blur_prob: tuple[float, float, float] | None = field(
        default=None,
        metadata=_help(
            "Gaussian-blur probabilities of the first global crop, the second, and each local "
            "crop. Unset: 0 0 0 on the bundled dark shapes (32 px), official DINO's 1.0 0.1 0.5 "
            "on any other data."
        ),
    )
    solarization_prob: float | None = field(
        default=None,
        metadata=_help(
            "Solarisation probability of the second global crop. Unset: 0 on the bundled dark "
            "shapes (it would turn the bright shapes as dark as their backgrounds), official "
            "DINO's 0.2 on any other data."
        ),
    )
    rotation_degrees: float | None = field(
        default=None,
        metadata=_help(
            "Rotate every crop by a random angle in [-N, N] degrees. Unset: 180 on the bundled "
            "dark shapes (they have no up), official DINO's 0 on any other data."
        ),
    )
    arch: str = field(
        default="vit_micro",
        metadata=_help(
            "Backbone: vit_micro (4 blocks, width 96, the course teacher's), vit_course (4 "
            "blocks, width 128), vit_tiny, vit_small, vit_base, vit_large, or "
            "resnet18/34/50/101/152.",
            choices=BACKBONES,
        ),
    )
    patch_size: int = field(
        default=4,
        metadata=_help(
            "ViT patch side in pixels (official: 16 or 8). Smaller patches see finer detail but "
            "cost quadratically more; crop sizes must be multiples of it. 4 gives 8x8 attention "
            "maps on 32 px images."
        ),
    )
    drop_path_rate: float = field(
        default=0.0,
        metadata=_help(
            "Stochastic depth of the student's last block (official: 0.1; 0 for the 4-block "
            "course teacher); the teacher uses none."
        ),
    )
    embed_dim: int | None = field(
        default=None,
        metadata=_help(
            "Override the ViT's token width D (default: the --arch's own, 128 for vit_course)."
        ),
    )
    depth: int | None = field(
        default=None,
        metadata=_help("Override the ViT's number of blocks (default: the --arch's own)."),
    )
    num_heads: int | None = field(
        default=None,
        metadata=_help(
            "Override the ViT's attention heads; must divide the width (default: the --arch's)."
        ),
    )
    num_register_tokens: int | None = field(
        default=None,
        metadata=_help(
            "Register tokens of the ViT (DINOv2 with registers, Darcet et al. 2024: 4): extra "
            "learned tokens beside the CLS token that attention can use as scratch space "
            "instead of background patches. 0: none (official DINO). Unset: 4 for a ViT, 0 for "
            "a ResNet. With --ibot_loss_weight 1 they raised the CLS attention's Jaccard with "
            "the object on held-out dark shapes (experiments/dino_research.md, session 11)."
        ),
    )
    out_dim: int = field(
        default=256,
        metadata=_help(
            "Prototypes K of the DINO head (official: 65536). Larger K is slower; a few hundred "
            "suit 6 shape classes."
        ),
    )
    head_hidden_dim: int = field(
        default=256, metadata=_help("Hidden width of the head's MLP (official: 2048).")
    )
    head_bottleneck_dim: int = field(
        default=64,
        metadata=_help(
            "Width of the L2-normalised bottleneck before the last layer (official: 256)."
        ),
    )
    norm_last_layer: bool = field(
        default=True,
        metadata=_help(
            "Keep the last layer's weight norm fixed at 1 (official default True: more stable; "
            "False trains faster for small models but can diverge)."
        ),
    )
    use_bn_in_head: bool = field(
        default=False, metadata=_help("BatchNorm in the head's MLP (official: False for ViTs).")
    )
    momentum_teacher: float = field(
        default=0.99,
        metadata=_help(
            "Initial teacher EMA momentum, raised to 1 along a cosine (official: 0.996 for "
            "batch 1024). With few iterations, as here, a lower value lets the teacher follow."
        ),
    )
    teacher_temp: float = field(
        default=0.03,
        metadata=_help(
            "Teacher temperature after warm-up (official: 0.04; up to 0.07 if training is "
            "unstable). Lower is sharper."
        ),
    )
    warmup_teacher_temp: float = field(
        default=0.03,
        metadata=_help(
            "Teacher temperature at epoch 0 (official: 0.04). Lower it below --teacher_temp if the "
            "loss does not decrease early on."
        ),
    )
    warmup_teacher_temp_epochs: int = field(
        default=0,
        metadata=_help(
            "Epochs of linear teacher-temperature warm-up (official default 0; its long runs 30)."
        ),
    )
    student_temp: float = field(
        default=0.1,
        metadata=_help(
            "Student temperature (official: 0.1). Setting --teacher_temp to it removes sharpening."
        ),
    )
    center_momentum: float = field(
        default=0.9, metadata=_help("Momentum of the teacher-output center (official: 0.9).")
    )
    teacher_centering: str = field(
        default="centering",
        metadata=_help(
            "How the teacher's targets are balanced: centering (official DINO), sinkhorn_knopp "
            "(DINOv2), or none (no centering: collapses; for the collapse study).",
            choices=("centering", "sinkhorn_knopp", "none"),
        ),
    )
    koleo_loss_weight: float = field(
        default=0.1,
        metadata=_help(
            "Weight of the KoLeo regulariser on the student's backbone features of the two global "
            "crops (DINOv2: 0.1, the default here; official DINO: none, 0). It spreads the "
            "features of a batch apart, which keeps short runs from collapsing to a uniform "
            "teacher."
        ),
    )
    ibot_loss_weight: float | None = field(
        default=None,
        metadata=_help(
            "Weight of DINOv2's iBOT masked-patch loss (DINOv2: 1.0; official DINO: none, 0). "
            "Unset: 1.0 for a ViT, 0 for a ResNet. --mask_probability of the student's global "
            "crops have blocks of patches replaced by the mask token, and at those positions "
            "the student's patch tokens, through the same head, must predict the teacher's "
            "centred (unless --teacher_centering none), sharpened distribution for the "
            "unmasked patch. ViT backbones only. On the dark shapes, with "
            "--num_register_tokens 4, it raised the attention Jaccard on held-out data seeds "
            "from 0.32 to 0.43 at the 10-minute budget, and alone it did not "
            "(experiments/dino_research.md, session 11). Costs about 4% more time per step."
        ),
    )
    mask_ratio: tuple[float, float] = field(
        default=(0.1, 0.5),
        metadata=_help(
            "Range of the fraction of patches masked in a masked crop (DINOv2: 0.1 0.5)."
        ),
    )
    mask_probability: float = field(
        default=0.5,
        metadata=_help(
            "Fraction of global crops that get a mask, with --ibot_loss_weight (DINOv2: 0.5)."
        ),
    )
    monitor_every: int = field(
        default=1,
        metadata=_help(
            "Compute the collapse monitors every this many steps (1: every step, as the "
            "course's plots need; 0: never, for timing the bare step)."
        ),
    )

    def __post_init__(self) -> None:
        # Unset ViT-only settings: DINOv2's iBOT loss and 4 registers for a ViT (what moved
        # the attention onto the object in session 11), nothing for a ResNet.
        vit = self.arch in VIT_SIZES
        if self.num_register_tokens is None:
            self.num_register_tokens = 4 if vit else 0
        if self.ibot_loss_weight is None:
            self.ibot_loss_weight = 1.0 if vit else 0.0

    @classmethod
    def classic_settings(cls) -> dict[str, Any]:
        """The settings :meth:`classic` applies: :data:`CLASSIC_SETTINGS` for this recipe."""
        return dict(CLASSIC_SETTINGS)

    @classmethod
    def classic(cls, **overrides: Any) -> Self:
        """The earlier defaults (:meth:`classic_settings`), then ``overrides``."""
        return cls(**{**cls.classic_settings(), **overrides})

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Self:
        """The configuration a checkpoint's ``"args"`` (or ``config.json``) describes.

        Settings saved before the course-teacher recipe (no ``shapes_style`` key) had the
        earlier defaults: what they leave out is taken from :meth:`classic_settings`, not from
        today's defaults, so an old grey-shapes run is rebuilt as it ran.
        """
        if args and "shapes_style" not in args:
            names = {f.name for f in fields(cls)}
            saved = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()
                     if k in names}
            return cls(**{**cls.classic_settings(), **saved})
        if args:
            args = {**{k: v for k, v in cls.settings_added_later().items() if k not in args},
                    **args}
        return super().from_args(args)

    @classmethod
    def settings_added_later(cls) -> dict[str, Any]:
        """Values for settings a run saved by an earlier version lacks (:data:`_ADDED_LATER`):
        what that run trained with, not today's default."""
        return dict(_ADDED_LATER)


#: The ``dino`` recipe's defaults before the course-teacher recipe: official DINO's
#: augmentation, temperatures and schedules (lr 5e-4, 2 warm-up epochs, weight decay 0.04 ->
#: 0.4, last layer frozen for 1 epoch) with the course ViT (patch 8: 16 tokens) on 2000 grey
#: shapes. Cheap per step, so the lessons' short collapse studies use them.
CLASSIC_SETTINGS: dict[str, Any] = {
    "arch": "vit_course",
    "patch_size": 8,
    "drop_path_rate": 0.1,
    "out_dim": 1024,
    "head_hidden_dim": 512,
    "head_bottleneck_dim": 128,
    "teacher_temp": 0.04,
    "warmup_teacher_temp": 0.04,
    "koleo_loss_weight": 0.0,
    "lr": 5e-4,
    "warmup_epochs": 2,
    "weight_decay_end": 0.4,
    "freeze_last_layer": 1,
    "shapes_style": "grey",
    "num_images": 2000,
    "global_crops_scale": (0.4, 1.0),
    "local_crops_scale": (0.05, 0.4),
    "local_crops_number": 6,
    "color_jitter": (0.4, 0.4, 0.2, 0.1),
    "blur_prob": (1.0, 0.1, 0.5),
    "solarization_prob": 0.2,
    "rotation_degrees": 0.0,
    "num_register_tokens": 0,
    "ibot_loss_weight": 0.0,
}

#: Settings added with a default that later changed: a saved run (``config.json``, a
#: checkpoint's ``"args"``) that lacks the key ran with this value. ``num_register_tokens``
#: and ``ibot_loss_weight`` were added with default 0; iBOT and 4 registers became the
#: defaults later.
_ADDED_LATER: dict[str, Any] = {"ibot_loss_weight": 0.0, "num_register_tokens": 0}


# (embed_dim, depth, num_heads) of the named ViTs, to apply --embed_dim/--depth/--num_heads:
# the table load_backbone rebuilds checkpoints from.
_VIT_SIZES = VIT_SIZES
# MLP hidden width / D where it is not 4 (vit_micro: 2; see dinolab.models.vit_micro).
_VIT_MLP_RATIOS = {"vit_micro": 2.0}


def build_backbone_from(cfg: DINOConfig, drop_path_rate: float | None = None) -> nn.Module:
    """The backbone named by ``cfg.arch`` (ViT sizes optionally overridden), ``embed_dim`` set.

    ``mask_token`` (used only by iBOT masking) is frozen, so DDP does not wait for a
    gradient it never gets.
    """
    from dinolab.models import VisionTransformer, build_backbone

    dpr = cfg.drop_path_rate if drop_path_rate is None else drop_path_rate
    if cfg.arch in _VIT_SIZES:
        default = _VIT_SIZES[cfg.arch]
        dims = [
            v if v else d
            for v, d in zip((cfg.embed_dim, cfg.depth, cfg.num_heads), default, strict=True)
        ]
        if dims[0] % dims[2]:
            raise ValueError(f"embed_dim={dims[0]} must be divisible by num_heads={dims[2]}")
        backbone: nn.Module = VisionTransformer(
            img_size=cfg.global_crops_size,
            patch_size=cfg.patch_size,
            embed_dim=dims[0],
            depth=dims[1],
            num_heads=dims[2],
            mlp_ratio=_VIT_MLP_RATIOS.get(cfg.arch, 4.0),
            drop_path_rate=dpr,
            num_register_tokens=cfg.num_register_tokens,
        )
        backbone.mask_token.requires_grad_(False)
    else:
        if cfg.embed_dim or cfg.depth or cfg.num_heads or cfg.num_register_tokens:
            raise ValueError(
                "--embed_dim/--depth/--num_heads/--num_register_tokens apply to ViTs only, not "
                f"--arch {cfg.arch}"
            )
        backbone = build_backbone(cfg.arch, small_input=cfg.global_crops_size <= 64)
    return backbone


def ibot_centering(teacher_centering: str) -> str:
    """The iBOT loss's centering for ``--teacher_centering``: ``none`` removes the center from
    both losses (the collapse study); ``centering`` and ``sinkhorn_knopp`` keep iBOT's own EMA
    center (DINOv2 would run Sinkhorn-Knopp over the masked patches too; not implemented)."""
    return "none" if teacher_centering == "none" else "centering"


def draw_ibot_masks(
    cfg: DINOConfig, n_crops: int, grid: int | tuple[int, int], ctx: StepContext
) -> torch.Tensor:
    """iBOT masks ``[n_crops, N]`` for one step's global crops (DINOv2's block masks, with
    ``cfg.mask_ratio`` and ``cfg.mask_probability``), on ``ctx.device``.

    Drawn from a seed per (run, iteration, rank): repeatable, and the same after ``--resume``.
    The ``dino`` and ``distill`` recipes both draw their masks here.
    """
    from dinolab.data.masking import sample_ibot_masks

    seed = int(np.random.SeedSequence([cfg.seed, ctx.it, du.get_rank()]).generate_state(1)[0])
    masks = sample_ibot_masks(
        n_crops,
        grid,
        mask_ratio=tuple(cfg.mask_ratio),
        mask_probability=cfg.mask_probability,
        generator=seed,
    )
    return masks.to(ctx.device)


def build_student(cfg: DINOConfig) -> nn.Module:
    """Backbone + DINO head in a :class:`~dinolab.models.MultiCropWrapper`."""
    from dinolab.models import DINOHead, MultiCropWrapper

    backbone = build_backbone_from(cfg)
    head = DINOHead(
        backbone.embed_dim,
        cfg.out_dim,
        use_bn=cfg.use_bn_in_head,
        norm_last_layer=cfg.norm_last_layer,
        hidden_dim=cfg.head_hidden_dim,
        bottleneck_dim=cfg.head_bottleneck_dim,
    )
    return MultiCropWrapper(backbone, head)


class DINOTask(Task):
    """DINO self-distillation: student and EMA teacher, DINO loss, monitors, k-NN eval.

    Args:
        cfg: the recipe's settings.
        student: backbone + head (see :func:`build_student`).
        data: k-NN sets for the evaluation (None: no evaluation).
    """

    name = "dino"

    def __init__(self, cfg: DINOConfig, student: nn.Module, data: SSLData | None) -> None:
        from dinolab.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss
        from dinolab.models import StudentTeacherWrapper

        self.cfg = cfg
        if cfg.ibot_loss_weight < 0:
            raise ValueError(f"ibot_loss_weight={cfg.ibot_loss_weight} must be >= 0")
        self.ibot_loss: iBOTPatchLoss | None = None
        if cfg.ibot_loss_weight > 0:
            backbone = getattr(student, "backbone", None)
            if not hasattr(backbone, "mask_token"):
                raise ValueError(
                    f"--ibot_loss_weight {cfg.ibot_loss_weight} masks patches: it needs a ViT "
                    f"backbone, not --arch {cfg.arch} (or pass --ibot_loss_weight 0)"
                )
            backbone.mask_token.requires_grad_(True)
            self.ibot_loss = iBOTPatchLoss(
                cfg.out_dim,
                student_temp=cfg.student_temp,
                center_momentum=cfg.center_momentum,
                teacher_centering=ibot_centering(cfg.teacher_centering),
            )
            self.grid = cfg.global_crops_size // cfg.patch_size
        self.pair = StudentTeacherWrapper(student)
        self.student = self.pair.student
        self.teacher = self.pair.teacher
        self.data = data
        self.dino_loss = DINOLoss(
            cfg.out_dim,
            cfg.local_crops_number + 2,
            cfg.warmup_teacher_temp,
            cfg.teacher_temp,
            cfg.warmup_teacher_temp_epochs,
            cfg.epochs,
            student_temp=cfg.student_temp,
            center_momentum=cfg.center_momentum,
            teacher_centering=cfg.teacher_centering,
            check_finite=False,  # the engine checks the loss itself and names the step
        )
        self.momentum_schedule = np.array([cfg.momentum_teacher])
        if cfg.koleo_loss_weight < 0:
            raise ValueError(f"koleo_loss_weight={cfg.koleo_loss_weight} must be >= 0")
        self.koleo = KoLeoLoss() if cfg.koleo_loss_weight > 0 else None
        self.device = torch.device("cpu")

    def setup(self, epochs: int, niter_per_ep: int, device: torch.device) -> None:
        self.momentum_schedule = cosine_schedule(
            self.cfg.momentum_teacher, 1.0, epochs, niter_per_ep
        )
        self.device = device

    def modules_to_device(self, device: torch.device) -> None:
        self.pair.to(device)
        self.dino_loss.to(device)
        if self.ibot_loss is not None:
            self.ibot_loss.to(device)

    def convert_sync_batchnorm(self) -> None:
        # The teacher runs in train mode too (below), so its BatchNorm layers (a ResNet's)
        # normalise with batch statistics: official DINO syncs student and teacher alike.
        convert_sync_batchnorm_in_place(self.pair)

    def train_mode(self) -> None:
        # Official DINO v1 leaves the teacher in train mode too (its forward has no dropout
        # or drop-path, and a ViT has no BatchNorm); the wrapper follows that.
        self.pair.train()

    def training_step(self, batch: Any, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        from dinolab.eval import collapse_metrics

        crops, _ = batch
        crops = [c.to(ctx.device, non_blocking=True) for c in crops]
        koleo: torch.Tensor | None = None
        global_features: torch.Tensor | None = None
        masks = student_patches = teacher_patches = None
        if self.ibot_loss is not None:
            masks = draw_ibot_masks(self.cfg, 2 * crops[0].shape[0], self.grid, ctx)
            teacher_output, teacher_patches = self._teacher_with_patches(crops[:2], masks)
            out = ctx.student(crops, masks=masks)
            student_output, student_patches = out["logits"], out["patch_logits_masked"]
            if self.koleo is not None:
                global_features = out["features"][: 2 * crops[0].shape[0]]
        else:
            teacher_output = self.pair.forward_teacher(crops[:2])  # only the 2 global views
            if self.koleo is not None:
                student_output, features = ctx.student(crops, return_features=True)
                global_features = features[: 2 * crops[0].shape[0]]
            else:
                student_output = ctx.student(crops)
        # Decided alike in every process, before the loss's collectives (center all-reduce).
        if not du.finite_on_every_rank(
            student_output, teacher_output, global_features, student_patches, teacher_patches
        ):
            return nonfinite_loss(student_output), {}
        if global_features is not None:
            # DINOv2: KoLeo on each global crop's batch of backbone features, summed.
            koleo = sum(self.koleo(f) for f in global_features.chunk(2))
        metrics: dict[str, float] = {}
        if self.cfg.monitor_every and ctx.it % self.cfg.monitor_every == 0:
            # Before the loss: the loss moves the center, the monitors must see the targets
            # this very loss uses.
            metrics = collapse_metrics(
                teacher_output.float(), student_output.detach().float(), self.dino_loss, ctx.epoch
            )
            metrics["log_out_dim"] = float(np.log(self.cfg.out_dim))
        loss = self.dino_loss(student_output, teacher_output, ctx.epoch)
        metrics["teacher_temp"] = self.dino_loss.teacher_temp_at(ctx.epoch)
        if koleo is not None or self.ibot_loss is not None:
            metrics["dino_loss"] = float(loss.detach())
        if koleo is not None:
            metrics["koleo_loss"] = float(koleo.detach())
            loss = loss + self.cfg.koleo_loss_weight * koleo
        if self.ibot_loss is not None and masks is not None:
            ibot = self.ibot_loss.forward_masked(
                student_patches, teacher_patches, masks, metrics["teacher_temp"]
            )
            metrics["ibot_loss"] = float(ibot.detach())
            loss = loss + self.cfg.ibot_loss_weight * ibot
        return loss, metrics

    @torch.no_grad()
    def _teacher_with_patches(
        self, global_crops: Sequence[torch.Tensor], masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher head outputs of the unmasked global crops: CLS ``[2B, K]`` and the patches
        the student saw masked ``[M, K]`` (one head call, as DINOv2)."""
        teacher = self.teacher
        feats = teacher.backbone.forward_features(torch.cat(list(global_crops)))
        cls = feats["x_norm_clstoken"]
        out = teacher.head(torch.cat([cls, feats["x_norm_patchtokens"][masks]]))
        return out[: cls.shape[0]], out[cls.shape[0] :]

    def after_optimizer_step(self, ctx: StepContext) -> dict[str, float]:
        m = float(self.momentum_schedule[ctx.it])
        ema_update(self.teacher, self.student, m)
        return {"momentum": m}

    def evaluate(self, epoch: int) -> dict[str, float]:
        from dinolab.eval import parameter_divergence

        out = {"teacher_student_divergence": parameter_divergence(self.student, self.teacher)}
        if self.data is not None and knn_due(self.cfg.knn_every, epoch, self.cfg.epochs):
            out["knn_top1"] = knn_evaluate(
                self.teacher.backbone,
                self.data.knn_train,
                self.data.knn_test,
                self.data.num_classes,
                self.device,
                k=self.cfg.knn_k,
                temperature=self.cfg.knn_temperature,
                batch_size=self.cfg.eval_batch_size,
            )
        return out

    def state_dict(self) -> dict[str, Any]:
        state = {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "dino_loss": self.dino_loss.state_dict(),
        }
        if self.ibot_loss is not None:
            state["ibot_loss"] = self.ibot_loss.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.dino_loss.load_state_dict(state["dino_loss"])
        if self.ibot_loss is not None:
            if "ibot_loss" not in state:
                raise ValueError(
                    "the checkpoint has no iBOT center (it was trained with "
                    "--ibot_loss_weight 0); resume it with --ibot_loss_weight 0"
                )
            self.ibot_loss.load_state_dict(state["ibot_loss"])


def train_dino(
    cfg: DINOConfig,
    data: SSLData | None = None,
    callbacks: Sequence[Callable[[Engine, dict[str, Any]], None]] = (),
) -> dict[str, Any]:
    """Run the ``dino`` recipe; return the last epoch's record (``knn_top1`` in %, losses).

    Args:
        cfg: settings (see :class:`DINOConfig`; every field is a command-line flag).
        data: prebuilt data (tests pass tiny sets); default :func:`build_ssl_data`.
        callbacks: per-step callbacks handed to the :class:`~dinolab.train.engine.Engine`.
    """
    fix_random_seeds(cfg.seed)
    data = data if data is not None else build_ssl_data(cfg)
    task = DINOTask(cfg, build_student(cfg), data)
    engine = Engine(task, data.train_set, cfg, collate_fn=data.collate_fn, callbacks=callbacks)
    return engine.fit()
