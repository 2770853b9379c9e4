"""fp32 vs bf16 autocast on this CPU: when does ``--precision bf16`` pay?

bf16 halves the bytes of every operand, and on CPUs with native bf16 instructions
(``avx512_bf16``, AMX) a bf16 matrix product runs several times faster than a float32 one;
every other operation pays for the conversions. Whether a training step gains therefore
depends on how much of it is large matrix products.

Headline: ViT-S/16 at 224 px (DINO's default backbone), batch 8, forward and backward of the
backbone (the bulk of a DINO step at that size), fp32 vs ``torch.autocast("cpu",
torch.bfloat16)``. Beside it, whole DINO training steps (``Engine.train_step``, same crops) with
``--precision fp32`` and ``--precision bf16`` for the two course backbones: ``vit_course``
(width 128, the ``classic`` settings, batch 64) and the recipe's default ``vit_micro`` (width
96, batch 64). All timed in the same interleaved rounds.

Same numbers, checked first: bf16 keeps 8 bits of mantissa, so the losses agree to about 1e-2
relative, not to float32 rounding; the check allows rtol 2e-2 on the loss.

Run alone: ``python benchmarks/bench_precision.py [--quick]``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from run import BenchResult, cpu_flags, print_result, time_interleaved  # noqa: E402

from dinolab.models import vit_small  # noqa: E402
from dinolab.train.engine import Engine  # noqa: E402
from dinolab.train.recipes.dino import DINOConfig, DINOTask, build_student  # noqa: E402

GOAL = 1.0  # bf16 pays when the ratio fp32 time / bf16 time is above 1
BATCH_VITS = 8
BATCH_STEP = 64
LOSS_RTOL = 2e-2


def _vits_step(model: torch.nn.Module, x: torch.Tensor, proj: torch.Tensor, bf16: bool
               ) -> float:
    """Forward and backward of ViT-S on ``x`` [B, 3, 224, 224]; returns the loss.

    The loss is the mean square of the features [B, 384] times a fixed random ``proj``
    [384, 16], so that it depends on every feature (the features alone are layer-normed).
    """
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = (model(x).float() @ proj).pow(2).mean()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return float(loss.detach())


def _engine(classic: bool, precision: str) -> tuple[Engine, list[torch.Tensor]]:
    settings: dict[str, Any] = dict(
        output_dir=tempfile.mkdtemp(), epochs=1, batch_size_per_gpu=BATCH_STEP,
        warmup_epochs=0, freeze_last_layer=0, drop_path_rate=0.0, monitor_every=0,
        progress=False, plots=False, device="cpu", precision=precision,
    )
    cfg = DINOConfig.classic(**settings) if classic else DINOConfig(**settings)
    torch.manual_seed(0)
    engine = Engine(DINOTask(cfg, build_student(cfg), None), TensorDataset(torch.zeros(BATCH_STEP)),
                    cfg)
    g = torch.Generator().manual_seed(1)
    sizes = [cfg.global_crops_size] * 2 + [cfg.local_crops_size] * cfg.local_crops_number
    return engine, [torch.randn(BATCH_STEP, 3, px, px, generator=g) for px in sizes]


def run(quick: bool = False) -> BenchResult:
    torch.manual_seed(0)
    model = vit_small()  # patch 16, 224 px
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH_VITS, 3, 224, 224, generator=g)
    proj = torch.randn(model.embed_dim, 16, generator=g)
    losses = {bf16: _vits_step(model, x, proj, bf16) for bf16 in (False, True)}
    checks = [f"ViT-S {losses[False]:.5f} vs {losses[True]:.5f}"]
    if abs(losses[True] - losses[False]) > LOSS_RTOL * abs(losses[False]):
        raise AssertionError(f"ViT-S: bf16 loss {losses[True]} vs fp32 {losses[False]}")

    fns = {
        "vits_fp32": lambda: _vits_step(model, x, proj, False),
        "vits_bf16": lambda: _vits_step(model, x, proj, True),
    }
    for arch, classic in (("vit_course", True), ("vit_micro", False)):
        step_losses = []
        for precision in ("fp32", "bf16"):
            engine, crops = _engine(classic, precision)
            batch = (crops, torch.zeros(BATCH_STEP, dtype=torch.long))
            step_losses.append(engine.train_step(batch, 0, 0, 0)["loss"])
            fns[f"{arch}_{precision}"] = (
                lambda e=engine, b=batch: e.train_step(b, 0, 0, 0)
            )
        a, b = step_losses
        if abs(b - a) > LOSS_RTOL * abs(a):
            raise AssertionError(f"{arch}: bf16 loss {b} vs fp32 {a}")
        checks.append(f"{arch} step {a:.5f} vs {b:.5f}")

    repeats = 2 if quick else 5
    timing = time_interleaved(fns, repeats=repeats, inner=1, warmup=1)
    med = timing.median
    ratios = {arch: med[f"{arch}_fp32"] / med[f"{arch}_bf16"]
              for arch in ("vits", "vit_course", "vit_micro")}
    return BenchResult(
        name="precision",
        baseline="fp32",
        candidate="bf16 autocast (`--precision bf16`)",
        goal=GOAL,
        **timing.fields("vits_fp32", "vits_bf16"),
        check=(
            "the same weights and inputs give the same loss in both precisions to bf16's "
            f"accuracy (rtol {LOSS_RTOL:g}; fp32 vs bf16: " + ", ".join(checks) + ")"
        ),
        config=(
            f"headline: ViT-S/16 at 224 px, batch {BATCH_VITS}, forward + backward of the "
            f"backbone; CPU flags: {cpu_flags()}; {repeats} interleaved rounds, median"
        ),
        notes=(
            "Whole DINO steps (Engine.train_step, same crops), fp32 / bf16 median: vit_course "
            f"(classic settings, batch {BATCH_STEP}, 2 x 32 px + 6 x 16 px) "
            f"{med['vit_course_fp32'] * 1e3:.0f} / {med['vit_course_bf16'] * 1e3:.0f} ms = "
            f"{ratios['vit_course']:.2f}x; vit_micro (the recipe's defaults, batch "
            f"{BATCH_STEP}, 2 x 32 px + 4 x 16 px) {med['vit_micro_fp32'] * 1e3:.0f} / "
            f"{med['vit_micro_bf16'] * 1e3:.0f} ms = {ratios['vit_micro']:.2f}x. Above 1, bf16 "
            "is faster. bf16 pays where large matrix products dominate the step; on a CPU "
            "without native bf16 (no avx512_bf16 / amx_bf16 flag) it is emulated and slower."
        ),
    )


if __name__ == "__main__":
    print_result(run(quick="--quick" in sys.argv))
