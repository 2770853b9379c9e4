"""One DINO training step: dinolab's engine vs lightly's DINO example and vs a plain loop.

Same backbone (the course ViT, patch 8), same head sizes, same batch of crops on every side.

Headline baseline: **lightly's own DINO example** (``examples/pytorch/dino.py`` of lightly
1.6) as it runs a step: ``update_momentum`` of backbone and head at the cosine momentum
(``lightly.utils.scheduler.cosine_schedule``), a forward per global view through the teacher
and per view through the student (``DINOProjectionHead``), ``lightly.loss.DINOLoss``,
backward, ``cancel_last_layer_gradients``, ``torch.optim.Adam`` and ``zero_grad``. dinolab's
side is :meth:`dinolab.train.engine.Engine.train_step` with the ``dino`` recipe's task set to
the same work: AdamW without weight decay (which is Adam), no gradient clipping, the last
layer trained. Before timing, both compute one step from the same weights and the same crops:
the same loss, the same updated student weights and the same center.

Second baseline: a plain reference loop written like official DINO's ``train_one_epoch`` (a
forward per crop, the loss as a double loop over crop pairs, per-parameter clipping and EMA,
PyTorch's default AdamW), against the engine with the same settings (clipping at 3, weight
decay); also checked to give the same loss and weights first.

The step is compute-bound, so it is also held to the machine's GEMM throughput, measured in
the same rounds (see ``benchmarks/limits.py``): every matrix product of dinolab's step
replayed alone at its own shapes, and one large square GEMM. dinolab's rate is its model
FLOPs (counted, see ``limits.count_flops``) per second of the whole step.

Run alone: ``python benchmarks/bench_step.py [--quick]``.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from limits import GemmReplay, count_flops, profile_breakdown, square_gemm  # noqa: E402
from run import BenchResult, Reference, print_result, skipped_without, time_interleaved  # noqa: E402

from dinolab.train.engine import Engine  # noqa: E402
from dinolab.train.recipes.dino import DINOConfig, DINOTask, build_student  # noqa: E402

GOAL = 1.5  # vs lightly's example
REFERENCE_GOAL = 1.3  # vs the plain loop (reported in the notes)
GEMM_GOAL = 0.6  # fraction of the GEMM throughput at the step's own shapes
BATCH = 64
LOCAL_CROPS = 6


class ReferenceStep:
    """A plain DINO step: per-crop forwards, looped loss, per-parameter clip and EMA."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        cfg: DINOConfig,
        lr: float,
        wd: float,
        momentum: float,
    ) -> None:
        self.student, self.teacher, self.cfg = student, teacher, cfg
        decay = [
            p
            for n, p in student.named_parameters()
            if p.requires_grad and not n.endswith(".bias") and p.ndim > 1
        ]
        no_decay = [
            p
            for n, p in student.named_parameters()
            if p.requires_grad and (n.endswith(".bias") or p.ndim <= 1)
        ]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr,
        )
        self.center = torch.zeros(1, cfg.out_dim)
        self.momentum = momentum

    def loss(
        self, student_out: list[torch.Tensor], teacher_out: list[torch.Tensor]
    ) -> torch.Tensor:
        total, n_terms = 0.0, 0
        targets = [
            F.softmax((t - self.center) / self.cfg.teacher_temp, dim=-1) for t in teacher_out
        ]
        for iq, q in enumerate(targets):
            for v, s in enumerate(student_out):
                if v == iq:
                    continue
                total = (
                    total
                    + torch.sum(
                        -q * F.log_softmax(s / self.cfg.student_temp, dim=-1), dim=-1
                    ).mean()
                )
                n_terms += 1
        with torch.no_grad():
            batch_center = torch.cat(teacher_out).mean(dim=0, keepdim=True)
            self.center = self.center * self.cfg.center_momentum + batch_center * (
                1 - self.cfg.center_momentum
            )
        return total / n_terms

    def __call__(self, crops: list[torch.Tensor]) -> float:
        with torch.no_grad():
            teacher_out = [self.teacher(c) for c in crops[:2]]
        student_out = [self.student(c) for c in crops]
        loss = self.loss(student_out, teacher_out)
        self.optimizer.zero_grad()
        loss.backward()
        for p in self.student.parameters():
            if p.grad is not None:
                norm = p.grad.data.norm(2)
                coef = self.cfg.clip_grad / (norm + 1e-6)
                if coef < 1:
                    p.grad.data.mul_(coef)
        self.optimizer.step()
        with torch.no_grad():
            for pt, ps in zip(self.teacher.parameters(), self.student.parameters(), strict=True):
                pt.mul_(self.momentum).add_((1 - self.momentum) * ps.detach())
        return float(loss.detach())


def _config(**overrides: Any) -> DINOConfig:
    # The benchmark's shapes are those of the earlier defaults (vit_course, 16 tokens), the
    # ones RESULTS.md reports; the course teacher's vit_micro is a different workload.
    settings: dict[str, Any] = dict(
        output_dir=tempfile.mkdtemp(),
        epochs=1,
        batch_size_per_gpu=BATCH,
        local_crops_number=LOCAL_CROPS,
        warmup_epochs=0,
        freeze_last_layer=0,
        drop_path_rate=0.0,
        monitor_every=0,
        progress=False,
        plots=False,
        device="cpu",
    )
    return DINOConfig.classic(**{**settings, **overrides})


def _engine(cfg: DINOConfig) -> Engine:
    torch.manual_seed(0)
    task = DINOTask(cfg, build_student(cfg), None)
    return Engine(task, TensorDataset(torch.zeros(BATCH)), cfg)


def _crops(cfg: DINOConfig) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    sizes = [cfg.global_crops_size] * 2 + [cfg.local_crops_size] * LOCAL_CROPS
    return [torch.randn(BATCH, 3, px, px, generator=g) for px in sizes]


class LightlyDINO(nn.Module):
    """The model of lightly's DINO example, holding ``student``'s backbone and head weights.

    The example builds the teacher head anew; here it is a copy of the student's, so that
    both sides start from the same weights (as dinolab's teacher does).
    """

    def __init__(self, student: nn.Module, cfg: DINOConfig) -> None:
        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.student_backbone = copy.deepcopy(student.backbone)
        def head() -> nn.Module:
            with warnings.catch_warnings():
                # lightly 1.6 builds its last layer with the deprecated torch weight_norm
                warnings.simplefilter("ignore", FutureWarning)
                out = DINOProjectionHead(
                    student.backbone.embed_dim,
                    cfg.head_hidden_dim,
                    cfg.head_bottleneck_dim,
                    cfg.out_dim,
                    batch_norm=cfg.use_bn_in_head,
                    freeze_last_layer=cfg.freeze_last_layer,
                    norm_last_layer=cfg.norm_last_layer,
                )
            state = {k.replace("mlp.", "layers.", 1): v
                     for k, v in student.head.state_dict().items()}
            out.load_state_dict(state, strict=True)
            return out

        # As in the example, two heads are built (deepcopy fails on torch's old weight_norm).
        self.student_head = head()
        self.teacher_backbone = copy.deepcopy(self.student_backbone)
        self.teacher_head = head()
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student_head(self.student_backbone(x).flatten(start_dim=1))

    def forward_teacher(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher_head(self.teacher_backbone(x).flatten(start_dim=1))


class LightlyStep:
    """One iteration of lightly's DINO example loop (lightly 1.6, ``examples/pytorch/dino.py``).

    Args:
        student: dinolab's student (backbone + head) whose weights both sides start from.
        cfg: temperatures, momentum and head sizes, shared with dinolab's side.
        lr: the learning rate (the example's Adam; dinolab's first scheduled value).
        epochs: the run length the momentum schedule spans (the example's 10; with 1,
            lightly's ``cosine_schedule`` returns the final momentum 1 at once).
    """

    def __init__(self, student: nn.Module, cfg: DINOConfig, lr: float, epochs: int = 10) -> None:
        from lightly.loss import DINOLoss

        self.cfg, self.epochs = cfg, epochs
        self.model = LightlyDINO(student, cfg)
        self.criterion = DINOLoss(
            output_dim=cfg.out_dim,
            warmup_teacher_temp=cfg.warmup_teacher_temp,
            teacher_temp=cfg.teacher_temp,
            warmup_teacher_temp_epochs=cfg.warmup_teacher_temp_epochs,
            student_temp=cfg.student_temp,
            center_momentum=cfg.center_momentum,
        )
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def __call__(self, views: list[torch.Tensor], epoch: int = 0) -> float:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        model = self.model
        momentum_val = cosine_schedule(epoch, self.epochs, self.cfg.momentum_teacher, 1)
        update_momentum(model.student_backbone, model.teacher_backbone, m=momentum_val)
        update_momentum(model.student_head, model.teacher_head, m=momentum_val)
        global_views = views[:2]
        teacher_out = [model.forward_teacher(view) for view in global_views]
        student_out = [model.forward(view) for view in views]
        loss = self.criterion(teacher_out, student_out, epoch=epoch)
        loss.backward()
        model.student_head.cancel_last_layer_gradients(current_epoch=epoch)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return float(loss.detach())


def _check_same_step(
    engine: Engine, other_loss: float, other_student: dict[str, torch.Tensor], what: str
) -> tuple[float, float]:
    """One step of ``engine`` from the same weights must give ``other``'s loss and weights.

    Returns:
        ``(dinolab's loss, the largest weight difference)``.
    """
    crops = _crops(engine.config)  # type: ignore[arg-type]
    loss = engine.train_step((crops, torch.zeros(BATCH, dtype=torch.long)), 0, 0, 0)["loss"]
    # float32; the two sum the loss terms in different orders.
    if abs(loss - other_loss) > 1e-5 * abs(other_loss):
        raise AssertionError(f"{what}: losses differ, dinolab {loss!r} vs {other_loss!r}")
    # Adam's first step moves a weight by lr * g / (|g| + eps), about lr. Where a gradient
    # is tiny (a difference of large terms) float32 rounding in the two summation orders
    # changes it relatively a lot, and the step by a few percent of lr (~0.08 lr measured on
    # the development machine). A wrong gradient or a missing update shows as about lr or
    # more; the tolerance lr / 4 separates the two.
    atol = 0.25 * float(engine.lr_schedule[0])
    worst = 0.0
    for name, mine in engine.task.student.state_dict().items():
        theirs = other_student[name]
        torch.testing.assert_close(mine, theirs, rtol=0, atol=atol, msg=f"{what}: student.{name}")
        worst = max(worst, float((mine - theirs).abs().max()))
    return loss, worst


def _lightly_student_state(model: LightlyDINO) -> dict[str, torch.Tensor]:
    """lightly's student weights under dinolab's names (``backbone.*``, ``head.mlp.*``)."""
    out = {f"backbone.{k}": v for k, v in model.student_backbone.state_dict().items()}
    out.update({f"head.{k.replace('layers.', 'mlp.', 1)}": v
                for k, v in model.student_head.state_dict().items()})
    return out


def run(quick: bool = False) -> BenchResult:
    name = "step"
    baseline = "lightly 1.6's DINO example step (a forward per view, `DINOLoss`, Adam)"
    candidate = "`Engine.train_step` with the `dino` recipe"
    missing = skipped_without("lightly", name, baseline, candidate, GOAL)
    if missing is not None:
        return missing
    # dinolab set to lightly's example: Adam (AdamW without weight decay), no clipping.
    light_cfg = _config(weight_decay=0.0, weight_decay_end=0.0, clip_grad=0.0)
    engine = _engine(light_cfg)
    # The check runs lightly's schedule over 1 epoch: momentum 1, so its EMA-before-the-step
    # leaves the teacher exactly equal to the student, as dinolab's is at step 0. (At 0.996,
    # 0.996 * t + 0.004 * t differs from t by an ulp here and there, and Adam's first step,
    # about lr * sign(gradient), turns such noise into 2 * lr differences where a gradient is
    # near 0.) The timed rounds use the example's 10 epochs: the same operations.
    lightly_step = LightlyStep(engine.task.student, light_cfg, float(engine.lr_schedule[0]),
                               epochs=1)
    crops = _crops(light_cfg)
    lightly_loss = lightly_step(crops)
    lightly_step.epochs = 10
    loss, worst = _check_same_step(engine, lightly_loss, _lightly_student_state(lightly_step.model),
                                   "lightly")
    center = lightly_step.criterion.center.reshape(1, -1)
    torch.testing.assert_close(engine.task.dino_loss.center, center, rtol=1e-5, atol=1e-7)

    # The plain loop with official DINO's settings, against the engine with the same ones.
    ref_cfg = _config()
    ref_engine = _engine(ref_cfg)
    reference = ReferenceStep(
        copy.deepcopy(ref_engine.task.student),
        copy.deepcopy(ref_engine.task.teacher),
        ref_cfg,
        lr=float(ref_engine.lr_schedule[0]),
        wd=float(ref_engine.wd_schedule[0]),
        momentum=float(ref_engine.task.momentum_schedule[0]),
    )
    ref_loss = reference(crops)
    ref_dinolab_loss, ref_worst = _check_same_step(
        ref_engine, ref_loss, reference.student.state_dict(), "reference loop"
    )
    for (key, a), (_, b) in zip(ref_engine.task.teacher.named_parameters(),
                                reference.teacher.named_parameters(), strict=True):
        # The teacher moves by (1 - m) times the student's step, a few 1e-7 on the first
        # step; its update formula itself is checked in bench_ema.py and tests/test_ema.py.
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=f"reference loop: teacher.{key}")

    batch = (crops, torch.zeros(BATCH, dtype=torch.long))
    # For the notes only: dinolab with --precision bf16 against the same fp32 lightly step
    # (what a user of this CPU can choose); its loss agrees to bf16's accuracy, not float32's.
    bf16_engine = _engine(_config(weight_decay=0.0, weight_decay_end=0.0, clip_grad=0.0,
                                  precision="bf16"))
    bf16_loss = bf16_engine.train_step(batch, 0, 0, 0)["loss"]
    if abs(bf16_loss - lightly_loss) > 2e-2 * abs(lightly_loss):
        raise AssertionError(f"bf16: loss {bf16_loss!r} vs lightly's {lightly_loss!r}")

    def dinolab_step() -> None:
        engine.train_step(batch, 0, 0, 0)

    flops, by_op = count_flops(dinolab_step)
    replay = GemmReplay(dinolab_step)
    profile = profile_breakdown(dinolab_step)
    square, square_flops = square_gemm(2048)
    repeats = 3 if quick else 9
    timing = time_interleaved(
        {
            "lightly": lambda: lightly_step(crops),
            "dinolab": dinolab_step,
            "dinolab_bf16": lambda: bf16_engine.train_step(batch, 0, 0, 0),
            "reference": lambda: reference(crops),
            "dinolab_ref": lambda: ref_engine.train_step(batch, 0, 0, 0),
            "gemm_own_shapes": replay,
            "gemm_square": square,
        },
        repeats=repeats,
        inner=1,
        warmup=1,
    )
    med = timing.median
    ref_ratio = med["reference"] / med["dinolab_ref"]
    gflops = flops / 1e9
    n_params = sum(p.numel() for p in engine.task.student.parameters())
    return BenchResult(
        name=name,
        baseline=baseline,
        candidate=candidate,
        goal=GOAL,
        **timing.fields("lightly", "dinolab"),
        check=(
            f"one step from the same weights and crops: vs lightly, losses {loss:.6f} vs "
            f"{lightly_loss:.6f} (rtol 1e-5), updated student weights assert_close (atol "
            f"lr/4 = {0.25 * float(engine.lr_schedule[0]):.1e}, Adam's first step being ~lr; "
            f"largest difference {worst:.1e}), centers (rtol 1e-5); vs the plain loop, losses "
            f"{ref_dinolab_loss:.6f} vs {ref_loss:.6f}, student weights (atol lr/4) and teacher "
            "weights (atol 1e-5; "
            f"largest student difference {ref_worst:.1e})"
        ),
        config=(
            f"vit_course (patch 8) + DINO head (out_dim {light_cfg.out_dim}, hidden "
            f"{light_cfg.head_hidden_dim}, bottleneck {light_cfg.head_bottleneck_dim}), "
            f"{n_params / 1e6:.2f} M student parameters; batch {BATCH} x (2 x "
            f"{light_cfg.global_crops_size} px + {LOCAL_CROPS} x {light_cfg.local_crops_size} px "
            f"crops); fp32; vs lightly: Adam (dinolab: fused AdamW, weight decay 0), no "
            f"clipping; {repeats} interleaved rounds, median"
        ),
        notes=(
            f"With --precision bf16 (autocast; loss {bf16_loss:.5f} vs lightly's fp32 "
            f"{lightly_loss:.5f}, rtol 2e-2) dinolab's step takes "
            f"{med['dinolab_bf16'] * 1e3:.0f} ms, {med['lightly'] / med['dinolab_bf16']:.2f}x "
            "lightly's fp32 step: not the headline, which compares the same float32 "
            "arithmetic. "
            f"Plain reference loop (official DINO's order; per-parameter clipping at "
            f"{ref_cfg.clip_grad:g}, AdamW with weight decay, per-parameter EMA): "
            f"{med['reference'] * 1e3:.0f} ms vs the engine with the same settings "
            f"{med['dinolab_ref'] * 1e3:.0f} ms, ratio {ref_ratio:.2f}x (goal "
            f"{REFERENCE_GOAL:g}x: {'met' if ref_ratio >= REFERENCE_GOAL else 'NOT met'}). "
            f"Model FLOPs of one dinolab step: {gflops:.2f} GFLOP, counted by "
            "torch.utils.flop_counter.FlopCounterMode (2*M*N*K per matrix product, forward "
            "and backward, convolutions) plus attention's two matrix products (the CPU "
            "flash-attention kernel, which that counter does not know): "
            + ", ".join(f"{op} {v / 1e9:.2f}" for op, v in sorted(by_op.items()))
            + f" GFLOP; element-wise work, norms, softmax, loss and optimiser not counted. "
            f"GEMM replay: the step's {replay.calls} matrix products ({replay.layouts} "
            f"layouts, {replay.flops / 1e9:.2f} GFLOP) alone take "
            f"{med['gemm_own_shapes'] * 1e3:.0f} ms; the largest: "
            + "; ".join(replay.largest(3))
            + f". Square GEMM 2048^3: {med['gemm_square'] * 1e3:.0f} ms. The lightly and "
            "dinolab steps compute the same FLOPs; dinolab batches the crops of one size into "
            "one backbone pass and all crops into one head pass, so its matrix products are "
            "fewer and taller. A step that did nothing but its matrix products would be "
            f"{med['lightly'] / med['gemm_own_shapes']:.2f}x lightly's step in float32: the "
            "bound on any fp32 speed-up at the same work. Where dinolab's step time goes "
            "(torch.profiler, self CPU time of 2 steps): "
            + ", ".join(f"{group} {share:.0%}" for group, share in profile)
            + "."
        ),
        references=[
            Reference(
                what="GEMM throughput at the step's own shapes (its matrix products replayed "
                "alone)",
                unit="GFLOP/s",
                rate=replay.flops / 1e9 / med["gemm_own_shapes"],
                achieved=gflops / med["dinolab"],
                goal=GEMM_GOAL,
            ),
            Reference(
                what="GEMM throughput of a large square product (2048^3 float32 `torch.mm`)",
                unit="GFLOP/s",
                rate=square_flops / 1e9 / med["gemm_square"],
                achieved=gflops / med["dinolab"],
            ),
        ],
    )


if __name__ == "__main__":
    print_result(run(quick="--quick" in sys.argv))
