"""The ``distill`` recipe: a small student learns from a frozen teacher with five losses (seed 002).

The teacher is a trained ViT that never changes (no EMA). By default it is the teacher of a
``dino`` run of this course (``runs/dino/checkpoint.pth``: backbone AND head, settings read
from the checkpoint); ``--teacher_pretrained_weights`` may instead name an official DINO /
DINOv2 file (read once by :func:`dinolab.models.backbone_from_checkpoint`, as
:func:`dinolab.models.load_backbone`; its width, patch size, LayerScale and registers are read
from its tensors, ``--teacher_arch`` and ``--teacher_patch_size`` fill in what they leave
open). An official training checkpoint (``*_full_checkpoint.pth``, DINOv2's
``teacher_checkpoint.pth``) brings its DINO head along, and the teacher uses it. Backbone-only
releases carry no head: the teacher's head is then a fixed random projection, which the DINO
and iBOT terms distil as it is (a warning says so); the CLS-token, SPD and KoLeo terms do not
depend on it.

The student (a narrower ViT by default) is trained on a weighted sum:

* ``dino_loss_weight`` x DINO loss between the student's head outputs on all crops and the
  teacher's (centred, sharpened) on the two global crops;
* ``ibot_loss_weight`` x iBOT loss: half of the student's global crops have blocks of
  patches replaced by the mask token; at those positions the student's patch outputs must
  match the teacher's, which saw the crop intact;
* ``koleo_loss_weight`` x KoLeo on the student's CLS features of each global crop (spreads
  the batch over the sphere; summed over the two crops as DINOv2);
* ``cls_loss_weight`` x cosine CLS-token loss between a learned projection of the student's
  CLS feature and the teacher's;
* ``spd_loss_weight`` x squared Log-Euclidean distance between the patch-token Gram matrices
  (made SPD) of student and teacher;
* optionally (``gram_loss_weight``, default 0) DINOv3's Gram anchoring
  (:class:`~dinolab.losses.GramLoss`) on the same patch tokens, the frozen teacher standing in
  for DINOv3's Gram teacher: an alternative to the SPD term that compares the cosine Gram
  matrices entry by entry instead of through their matrix logarithms.

After every epoch the student's backbone is scored by k-NN; at the end a linear probe is
trained on the frozen student and teacher features (``linear_probe.json``).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dinolab.train import distributed as du
from dinolab.train.engine import Engine, StepContext, Task, fix_random_seeds, nonfinite_loss
from dinolab.train.recipes.common import SSLData, _help, build_ssl_data, knn_due, knn_evaluate
from dinolab.train.recipes.dino import (
    DINOConfig,
    build_backbone_from,
    draw_ibot_masks,
    ibot_centering,
)

__all__ = [
    "DistillConfig",
    "DistillStudent",
    "DistillTask",
    "load_teacher",
    "resize_patch_tokens",
    "train_distill",
]


@dataclass
class DistillConfig(DINOConfig):
    """Settings of the ``distill`` recipe (seed 002's flags; DINO's for the shared parts)."""

    output_dir: str = field(
        default="runs/distill",
        metadata=_help("Directory for the checkpoint, logs, plots and linear_probe.json."),
    )
    epochs: int = field(default=20, metadata=_help("Training epochs of the student."))
    embed_dim: int | None = field(
        default=64,
        metadata=_help(
            "Student ViT width D (smaller than the teacher's: that is the point). None: the "
            "--arch's own."
        ),
    )
    num_heads: int | None = field(
        default=4, metadata=_help("Student attention heads (must divide --embed_dim).")
    )
    num_register_tokens: int = field(
        default=0,
        metadata=_help(
            "Register tokens of the student ViT (DINOv2 with registers: 4). Default 0: none, "
            "whatever the teacher has (the teacher's own registers are read from its file)."
        ),
    )
    freeze_last_layer: int = field(
        default=0,
        metadata=_help(
            "Epochs during which the student head's last layer is frozen (the teacher is "
            "already trained, so the default is 0)."
        ),
    )
    teacher_pretrained_weights: str = field(
        default="runs/dino/checkpoint.pth",
        metadata=_help(
            "Frozen teacher: a checkpoint of `dinolab train dino` (default: that recipe's default "
            "output) or an official DINO / DINOv2 / DINOv3 .pth file (its architecture is read "
            "from its tensors; DINOv3 also in timm's or transformers' key layout). A large "
            "teacher dominates the step time on a CPU: measured here (1 thread of a shared "
            "2-core EPYC, 224 px) DINOv3 ViT-S/16 0.17 s per image, ViT-B/16 0.57 s, ViT-L/16 "
            "2.1 s, and it runs on 2 global crops per image per step; see --teacher_crops_size."
        ),
    )
    teacher_checkpoint_key: str = field(
        default="teacher",
        metadata=_help(
            "Entry of a training checkpoint that holds the teacher's weights (official DINO: "
            "'teacher')."
        ),
    )
    teacher_arch: str | None = field(
        default=None,
        metadata=_help(
            "Teacher architecture for an official checkpoint; default: the ViT size its width "
            "says (384: vit_small; a DINOv3 file: read whole from its tensors, and if given it "
            "must be its size, e.g. dinov3_vitl16). Ignored for dinolab checkpoints, which "
            "record it."
        ),
    )
    teacher_patch_size: int | None = field(
        default=None,
        metadata=_help(
            "Teacher patch size for an official checkpoint; default: read from its patch "
            "embedding (16 for DINO ViT-S/16, 14 for DINOv2). Ignored for dinolab checkpoints."
        ),
    )
    teacher_crops_size: int | None = field(
        default=None,
        metadata=_help(
            "Side in pixels the teacher sees the global crops at (resized bicubically; a "
            "multiple of its patch size). Default: --global_crops_size, the student's. A "
            "DINOv3 teacher (RoPE) takes any size: its cost falls about 4x each time the side "
            "halves (ViT-L/16 measured at 2.1 / 0.55 / 0.23 s per image at 224 / 112 / 64 px, "
            "1 thread), and its patch features coarsen. A patch-16 teacher on the course's 32 "
            "px crops sees 2x2 patches: pass e.g. 64 (4x4) or 128. When its patch grid differs "
            "from the student's, its patch tokens are resized bicubically to the student's grid "
            "for the iBOT and SPD terms (as DINOv3 resizes its Gram teacher's)."
        ),
    )
    dino_loss_weight: float = field(
        default=1.0, metadata=_help("Weight of the DINO loss on the head outputs (seed 002: 1.0).")
    )
    ibot_loss_weight: float = field(
        default=1.0,
        metadata=_help("Weight of the iBOT masked-patch loss (seed 002: 1.0; 0 disables masking)."),
    )
    koleo_loss_weight: float = field(
        default=0.1,
        metadata=_help("Weight of the KoLeo uniformity regulariser (DINOv2 and seed 002: 0.1)."),
    )
    cls_loss_weight: float = field(
        default=1.0, metadata=_help("Weight of the CLS-token cosine loss (seed 002: 1.0).")
    )
    spd_loss_weight: float = field(
        default=0.1,
        metadata=_help(
            "Weight of the SPD Log-Euclidean loss between patch Gram matrices (seed 002: 1.0). "
            "Its scale grows with the number of patches, so it is lower here."
        ),
    )
    gram_loss_weight: float = field(
        default=0.0,
        metadata=_help(
            "Weight of DINOv3's Gram anchoring (dinolab.losses.GramLoss with its default "
            "options: per image, negative similarities set to 0 on both sides, remove_neg): the "
            "mean squared difference between the cosine Gram matrices [N, N] of the student's "
            "and the frozen teacher's patch tokens (the SPD term's tokens, registers / storage "
            "tokens excluded); the frozen teacher plays DINOv3's Gram teacher. An alternative "
            "to the SPD term, which compares the same matrices through their logarithms: to "
            "compare the two, pass e.g. --gram_loss_weight 1 --spd_loss_weight 0. Its value "
            "lies in [0, 1] whatever the number of patches. Default 0: off (logged as "
            "gram_loss when on)."
        ),
    )
    # mask_ratio and mask_probability: inherited from DINOConfig (same defaults, DINOv2's).
    linear_probe_epochs: int = field(
        default=50,
        metadata=_help(
            "Epochs of the final linear probe on frozen student (and teacher) features; 0 skips it."
        ),
    )

    #: Inherited DINO flags that mean nothing for a frozen teacher; the CLI hides them.
    cli_exclude = ("momentum_teacher",)

    @classmethod
    def classic_settings(cls) -> dict[str, Any]:
        """The earlier dino defaults, except the ones this recipe sets itself (its last layer
        is not frozen, KoLeo is one of its five losses): the earlier distill defaults."""
        own = ("freeze_last_layer", "koleo_loss_weight", "ibot_loss_weight",
               "num_register_tokens")
        return {k: v for k, v in super().classic_settings().items() if k not in own}

    @classmethod
    def settings_added_later(cls) -> dict[str, Any]:
        """None: the distill recipe's ``ibot_loss_weight`` (1) and student registers (0) kept
        their first defaults."""
        return {}


def load_teacher(cfg: DistillConfig) -> tuple[nn.Module, nn.Module, int]:
    """The frozen teacher as ``(backbone, head, out_dim)``, from a dinolab or official file.

    The file is read once and built by :func:`dinolab.models.backbone_from_checkpoint`: a
    ``dino`` checkpoint from the settings it saved, an official file from its tensors (its
    width, patch size, LayerScale, registers and DINO head; ``--teacher_arch`` and
    ``--teacher_patch_size`` fill in what they leave open).

    Raises:
        FileNotFoundError: no file at ``teacher_pretrained_weights``.
        ValueError: the file is neither a dinolab checkpoint nor loadable into the teacher.
    """
    from dinolab.models import (
        DINOHead,
        backbone_from_checkpoint,
        is_dinolab_checkpoint,
        read_checkpoint,
    )

    path = Path(cfg.teacher_pretrained_weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"--teacher_pretrained_weights {str(path)!r} does not exist: train a teacher first "
            "(`dinolab train dino`, which writes runs/dino/checkpoint.pth) or pass an official "
            "DINO / DINOv2 checkpoint"
        )
    ckpt = read_checkpoint(path, who="dinolab train distill")
    key = cfg.teacher_checkpoint_key
    if isinstance(ckpt, Mapping) and is_dinolab_checkpoint(ckpt):
        if ckpt.get("recipe") not in ("dino", None):
            raise ValueError(
                f"{str(path)!r} is a checkpoint of the {ckpt.get('recipe')!r} "
                "recipe; the distill teacher must come from a `dino` run"
            )
        if key not in ckpt:
            raise ValueError(
                f"{str(path)!r} has no {key!r} entry; expected 'teacher' or 'student' "
                "(--teacher_checkpoint_key)"
            )
        # The architecture the dino run recorded; the flags for official files do not apply.
        loaded = backbone_from_checkpoint(ckpt, key, with_head=True, path=path)
    else:
        loaded = backbone_from_checkpoint(
            ckpt,
            key,
            arch=cfg.teacher_arch,
            patch_size=cfg.teacher_patch_size,
            img_size=cfg.global_crops_size,
            with_head=True,
            path=path,
        )
    backbone = loaded.backbone
    if loaded.head is not None and loaded.out_dim is not None:
        head, out_dim = loaded.head, loaded.out_dim
    else:
        out_dim = cfg.out_dim
        head = DINOHead(
            backbone.embed_dim,
            out_dim,
            hidden_dim=cfg.head_hidden_dim,
            bottleneck_dim=cfg.head_bottleneck_dim,
        )
        warnings.warn(
            f"{str(path)!r} has no DINO head (a backbone-only release): the teacher's head "
            "is a fixed random projection, so the DINO and iBOT terms distil that "
            "projection; an official training checkpoint (*_full_checkpoint.pth) has its "
            "head",
            stacklevel=2,
        )
    for module in (backbone, head):
        for p in module.parameters():
            p.requires_grad_(False)
        module.eval()
    return backbone, head, out_dim


def resize_patch_tokens(
    tokens: torch.Tensor, grid: tuple[int, int], target: tuple[int, int]
) -> torch.Tensor:
    """Patch tokens of one grid on another: ``[B, h*w, D] -> [B, h'*w', D]``, bicubic.

    How DINOv3 brings its Gram teacher's patch features (seen at a higher resolution) onto the
    student's grid; here it lets a teacher run at its own resolution.
    """
    b, n, d = tokens.shape
    if n != grid[0] * grid[1]:
        raise ValueError(
            f"resize_patch_tokens: {n} tokens do not form the {grid[0]}x{grid[1]} grid"
        )
    maps = tokens.transpose(1, 2).reshape(b, d, *grid)
    maps = F.interpolate(maps, size=target, mode="bicubic", align_corners=False)
    return maps.flatten(2).transpose(1, 2)


class DistillStudent(nn.Module):
    """Student ViT + DINO head + CLS projection, one module so DDP sees every parameter.

    Without a ``head`` (no DINO or iBOT term: nothing would give its parameters a gradient,
    which DDP refuses) ``logits`` and ``patch_logits_masked`` are None.

    ``forward(crops, masks)`` returns a dict: ``logits`` [V*B, K] (all crops, crop-major),
    ``cls_global`` [2B, D_s], ``cls_proj`` [2B, D_t] (or None), ``patch_global`` [2B, N, D_s]
    and ``patch_logits_masked`` [M, K] (head outputs at the masked positions, or None).
    """

    def __init__(
        self, backbone: nn.Module, head: nn.Module | None, teacher_dim: int | None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.cls_proj = nn.Linear(backbone.embed_dim, teacher_dim) if teacher_dim else None

    def forward(
        self, crops: Sequence[torch.Tensor], masks: torch.Tensor | None
    ) -> dict[str, torch.Tensor | None]:
        globals_ = torch.cat(list(crops[:2]))
        feats = self.backbone.forward_features(globals_, masks=masks)
        cls_global = feats["x_norm_clstoken"]
        patch_global = feats["x_norm_patchtokens"]
        logits = patch_logits = None
        if self.head is not None:
            cls_all = [cls_global]
            if len(crops) > 2:
                cls_all.append(self.backbone(torch.cat(list(crops[2:]))))
            logits = self.head(torch.cat(cls_all))
            patch_logits = self.head(patch_global[masks]) if masks is not None else None
        return {
            "logits": logits,
            "cls_global": cls_global,
            "cls_proj": self.cls_proj(cls_global) if self.cls_proj is not None else None,
            "patch_global": patch_global,
            "patch_logits_masked": patch_logits,
        }


#: The loss terms, each weighted by ``--<name>_loss_weight`` and logged as ``<name>_loss``.
_TERMS = ("dino", "ibot", "koleo", "cls", "spd", "gram")


class DistillTask(Task):
    """Frozen teacher, student with five weighted losses (a sixth, Gram anchoring, optional),
    k-NN of the student each epoch."""

    name = "distill"

    def __init__(
        self,
        cfg: DistillConfig,
        teacher_backbone: nn.Module,
        teacher_head: nn.Module,
        out_dim: int,
        data: SSLData | None,
    ) -> None:
        from dinolab.losses import (
            CLSTokenLoss,
            DINOLoss,
            GramLoss,
            KoLeoLoss,
            SPDLogEuclideanLoss,
            iBOTPatchLoss,
        )
        from dinolab.models import DINOHead

        self.cfg = cfg
        self.data = data
        for name in _TERMS:
            w = getattr(cfg, f"{name}_loss_weight")
            if not np.isfinite(w) or w < 0:
                raise ValueError(f"--{name}_loss_weight must be a finite number >= 0, got {w!r}")
        if not any(getattr(cfg, f"{n}_loss_weight") for n in _TERMS):
            raise ValueError("every loss weight is 0: nothing to train")
        if not hasattr(teacher_backbone, "forward_features"):
            raise ValueError(
                "the distill recipe needs a ViT teacher (patch tokens for iBOT/SPD/Gram)"
            )
        self.teacher_backbone, self.teacher_head = teacher_backbone, teacher_head
        backbone = build_backbone_from(cfg)
        if not hasattr(backbone, "forward_features"):
            raise ValueError(f"the distill recipe needs a ViT student, got --arch {cfg.arch}")
        teacher_patch = int(teacher_backbone.patch_size)
        self.teacher_size = cfg.teacher_crops_size or cfg.global_crops_size
        if self.teacher_size < teacher_patch or self.teacher_size % teacher_patch:
            flag = ("--teacher_crops_size" if cfg.teacher_crops_size else "--global_crops_size "
                    "(which the teacher sees without --teacher_crops_size)")
            raise ValueError(
                f"{flag} {self.teacher_size} must be a positive multiple of the teacher's patch "
                f"size {teacher_patch}"
            )
        self.grid = (cfg.global_crops_size // backbone.patch_size,) * 2
        self.teacher_grid = (self.teacher_size // teacher_patch,) * 2
        # Without --teacher_crops_size the grids must match as they are; with it the teacher's
        # patch tokens are resized to the student's grid.
        hint = (
            f" (or pass --teacher_crops_size, e.g. {self.grid[0] * teacher_patch}, to run the "
            "teacher at its own resolution; its patch tokens are then resized to the student's "
            "grid)"
        )
        if cfg.ibot_loss_weight > 0:
            backbone.mask_token.requires_grad_(True)
            if backbone.patch_size != teacher_patch and cfg.teacher_crops_size is None:
                raise ValueError(
                    f"iBOT compares patches: the student's patch_size={backbone.patch_size} must "
                    f"equal the teacher's {teacher_patch}: pass --patch_size "
                    f"{teacher_patch} (or --ibot_loss_weight 0)" + hint
                )
        for name, term in (("spd", "SPD"), ("gram", "Gram")):
            if (getattr(cfg, f"{name}_loss_weight") > 0 and backbone.patch_size != teacher_patch
                    and cfg.teacher_crops_size is None):
                raise ValueError(
                    f"the {term} loss compares patch grids: the student's patch_size="
                    f"{backbone.patch_size} must equal the teacher's {teacher_patch} "
                    f"(or --{name}_loss_weight 0)" + hint
                )
        self.uses_head = cfg.dino_loss_weight > 0 or cfg.ibot_loss_weight > 0
        head = (
            DINOHead(
                backbone.embed_dim,
                out_dim,
                use_bn=cfg.use_bn_in_head,
                norm_last_layer=cfg.norm_last_layer,
                hidden_dim=cfg.head_hidden_dim,
                bottleneck_dim=cfg.head_bottleneck_dim,
            )
            if self.uses_head
            else None
        )
        teacher_dim = teacher_backbone.embed_dim if cfg.cls_loss_weight > 0 else None
        self.student = DistillStudent(backbone, head, teacher_dim)
        self.dino_loss = DINOLoss(
            out_dim,
            cfg.local_crops_number + 2,
            cfg.warmup_teacher_temp,
            cfg.teacher_temp,
            cfg.warmup_teacher_temp_epochs,
            cfg.epochs,
            student_temp=cfg.student_temp,
            center_momentum=cfg.center_momentum,
            teacher_centering=cfg.teacher_centering,
            check_finite=False,
        )
        self.ibot_loss = iBOTPatchLoss(
            out_dim,
            student_temp=cfg.student_temp,
            center_momentum=cfg.center_momentum,
            teacher_centering=ibot_centering(cfg.teacher_centering),
        )
        self.koleo_loss = KoLeoLoss()
        self.cls_loss = CLSTokenLoss("cosine")
        self.spd_loss = SPDLogEuclideanLoss(kind="gram")
        self.gram_loss = GramLoss()
        self.device = torch.device("cpu")

    def setup(self, epochs: int, niter_per_ep: int, device: torch.device) -> None:
        self.device = device

    def modules_to_device(self, device: torch.device) -> None:
        for m in (
            self.student,
            self.teacher_backbone,
            self.teacher_head,
            self.dino_loss,
            self.ibot_loss,
        ):
            m.to(device)

    def train_mode(self) -> None:
        self.student.train()
        self.teacher_backbone.eval()
        self.teacher_head.eval()

    def _masks(self, n_crops: int, ctx: StepContext) -> torch.Tensor | None:
        if self.cfg.ibot_loss_weight <= 0:
            return None
        return draw_ibot_masks(self.cfg, n_crops, self.grid, ctx)

    def training_step(self, batch: Any, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        crops, _ = batch
        crops = [c.to(ctx.device, non_blocking=True) for c in crops]
        batch_size = crops[0].shape[0]
        masks = self._masks(2 * batch_size, ctx)
        t_logits = t_patch_logits = None
        with torch.no_grad():
            t_in = torch.cat(crops[:2])
            if t_in.shape[-1] != self.teacher_size or t_in.shape[-2] != self.teacher_size:
                t_in = F.interpolate(t_in, size=(self.teacher_size,) * 2, mode="bicubic",
                                     align_corners=False, antialias=True)
            t = self.teacher_backbone.forward_features(t_in)
            t_cls, t_patch = t["x_norm_clstoken"], t["x_norm_patchtokens"]
            if self.teacher_grid != self.grid:
                t_patch = resize_patch_tokens(t_patch, self.teacher_grid, self.grid)
            if self.uses_head:
                t_logits = self.teacher_head(t_cls)
                t_patch_logits = self.teacher_head(t_patch[masks]) if masks is not None else None
        # The local crops feed only the DINO term.
        out = ctx.student(crops if cfg.dino_loss_weight > 0 else crops[:2], masks)
        checked = [t_cls, t_patch, t_logits, t_patch_logits, *out.values()]
        # Decided alike in every process, before the losses' collectives (center all-reduces).
        if not du.finite_on_every_rank(*checked):
            return nonfinite_loss(out["cls_global"]), {}

        terms: dict[str, torch.Tensor] = {}
        if cfg.dino_loss_weight > 0:
            terms["dino"] = self.dino_loss(out["logits"], t_logits, ctx.epoch)
        if cfg.ibot_loss_weight > 0 and masks is not None:
            terms["ibot"] = self.ibot_loss.forward_masked(
                out["patch_logits_masked"],
                t_patch_logits,
                masks,
                teacher_temp=self.dino_loss.teacher_temp_at(ctx.epoch),
            )
        if cfg.koleo_loss_weight > 0:
            terms["koleo"] = sum(self.koleo_loss(c) for c in out["cls_global"].chunk(2))
        if cfg.cls_loss_weight > 0:
            terms["cls"] = self.cls_loss(out["cls_proj"], t_cls)
        if cfg.spd_loss_weight > 0:
            terms["spd"] = self.spd_loss(out["patch_global"], t_patch)
        if cfg.gram_loss_weight > 0:
            terms["gram"] = self.gram_loss(out["patch_global"], t_patch)
        loss = sum(getattr(cfg, f"{k}_loss_weight") * v for k, v in terms.items())
        metrics = {f"{k}_loss": float(v.detach()) for k, v in terms.items()}
        return loss, metrics  # type: ignore[return-value]

    def evaluate(self, epoch: int) -> dict[str, float]:
        if self.data is None or not knn_due(self.cfg.knn_every, epoch, self.cfg.epochs):
            return {}
        return {
            "student_knn_top1": knn_evaluate(
                self.student.backbone,
                self.data.knn_train,
                self.data.knn_test,
                self.data.num_classes,
                self.device,
                k=self.cfg.knn_k,
                temperature=self.cfg.knn_temperature,
                batch_size=self.cfg.eval_batch_size,
            )
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "student": self.student.state_dict(),
            "teacher": {
                **{f"backbone.{k}": v for k, v in self.teacher_backbone.state_dict().items()},
                **{f"head.{k}": v for k, v in self.teacher_head.state_dict().items()},
            },
            "dino_loss": self.dino_loss.state_dict(),
            "ibot_loss": self.ibot_loss.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.dino_loss.load_state_dict(state["dino_loss"])
        self.ibot_loss.load_state_dict(state["ibot_loss"])


def _linear_probe(
    backbone: nn.Module, data: SSLData, cfg: DistillConfig, device: torch.device
) -> float:
    from torch.utils.data import DataLoader

    from dinolab.eval import extract_features, train_linear_probe

    def feats(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        loader = DataLoader(
            ds, batch_size=cfg.eval_batch_size, shuffle=False, pin_memory=device.type == "cuda"
        )
        return extract_features(backbone, loader, device=device, normalize=False, progress=False)

    (xtr, ytr), (xte, yte) = feats(data.knn_train), feats(data.knn_test)
    result = train_linear_probe(
        xtr,
        ytr,
        xte,
        yte,
        data.num_classes,
        epochs=cfg.linear_probe_epochs,
        seed=cfg.seed,
        progress=cfg.progress,
    )
    return 100.0 * result.accuracy


def train_distill(
    cfg: DistillConfig,
    data: SSLData | None = None,
    callbacks: Sequence[Callable[[Engine, dict[str, Any]], None]] = (),
) -> dict[str, Any]:
    """Run the ``distill`` recipe; return the last epoch's record plus the probe accuracies.

    The returned dict adds ``student_linear_top1`` and ``teacher_linear_top1`` (%, when
    ``linear_probe_epochs > 0``), ``teacher_knn_top1`` and the parameter counts.
    """
    from dinolab.models import count_parameters

    fix_random_seeds(cfg.seed)
    data = data if data is not None else build_ssl_data(cfg)
    t_backbone, t_head, out_dim = load_teacher(cfg)
    task = DistillTask(cfg, t_backbone, t_head, out_dim, data)
    engine = Engine(task, data.train_set, cfg, collate_fn=data.collate_fn, callbacks=callbacks)
    record = dict(engine.fit())
    record["student_parameters"] = count_parameters(task.student.backbone)
    record["teacher_parameters"] = count_parameters(t_backbone)
    if du.is_main_process():
        dev = engine.device
        record["teacher_knn_top1"] = knn_evaluate(
            t_backbone,
            data.knn_train,
            data.knn_test,
            data.num_classes,
            dev,
            k=cfg.knn_k,
            temperature=cfg.knn_temperature,
            batch_size=cfg.eval_batch_size,
        )
        if cfg.linear_probe_epochs > 0:
            record["student_linear_top1"] = _linear_probe(task.student.backbone, data, cfg, dev)
            record["teacher_linear_top1"] = _linear_probe(t_backbone, data, cfg, dev)
        Path(cfg.output_dir, "linear_probe.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
