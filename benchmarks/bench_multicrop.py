"""Multi-crop forward: ``dinolab.models.MultiCropWrapper`` vs one backbone + head pass per crop.

DINO's student sees 2 global and several local crops of every image. Running them one crop at
a time costs a backbone and a head call per crop (8 + 8 here); the wrapper concatenates the
crops of equal resolution, so it makes one backbone call per resolution (2) and one head call
for everything. Both sides use the same modules (same weights) on the same crops.

Timed: the student's forward pass with autograd recording (as in training), in eval mode so
that nothing random (dropout, drop-path) differs between the two sides.

The forward is compute-bound, so it is also held to the machine's GEMM throughput measured in
the same rounds (``benchmarks/limits.py``): the wrapper's own matrix products replayed alone at
their shapes, and a large square GEMM; the wrapper's rate is its model FLOPs (counted by
``limits.count_flops``) per second.

Run alone: ``python benchmarks/bench_multicrop.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from limits import GemmReplay, count_flops, square_gemm  # noqa: E402
from run import BenchResult, Reference, Timing, print_result, time_interleaved  # noqa: E402

from dinolab.models import DINOHead, MultiCropWrapper, vit_course, vit_tiny  # noqa: E402

GOAL = 1.3
GEMM_GOAL = 0.6  # fraction of the GEMM throughput at the wrapper's own shapes
BATCH = 32
N_GLOBAL, GLOBAL_PX = 2, 32
N_LOCAL, LOCAL_PX = 6, 16
OUT_DIM = 1024


def per_crop_forward(backbone: nn.Module, head: nn.Module, crops: list[torch.Tensor]
                     ) -> torch.Tensor:
    """The naive loop: backbone and head once per crop, outputs stacked crop-major."""
    return torch.cat([head(backbone(crop)) for crop in crops])


def _bench_one(arch: str, quick: bool) -> tuple[Timing, float, int, dict[str, float]]:
    torch.manual_seed(0)
    backbone = vit_course() if arch == "vit_course" else vit_tiny(patch_size=8, img_size=32)
    head = DINOHead(backbone.embed_dim, OUT_DIM, hidden_dim=256, bottleneck_dim=64)
    wrapper = MultiCropWrapper(backbone, head).eval()
    g = torch.Generator().manual_seed(1)
    crops = [torch.randn(BATCH, 3, GLOBAL_PX, GLOBAL_PX, generator=g) for _ in range(N_GLOBAL)]
    crops += [torch.randn(BATCH, 3, LOCAL_PX, LOCAL_PX, generator=g) for _ in range(N_LOCAL)]

    with torch.no_grad():
        want = per_crop_forward(wrapper.backbone, wrapper.head, crops)
        got = wrapper(crops)
    # Same weights and inputs; batching crops changes only float32 summation order.
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    worst = float((got - want).abs().max())

    # vit_tiny is ~4x slower per call: fewer rounds keep the whole benchmark near a minute.
    repeats = (3 if quick else 11) if arch == "vit_course" else (2 if quick else 5)
    inner = 2 if arch == "vit_course" else 1
    fns = {
        "per_crop": lambda: per_crop_forward(wrapper.backbone, wrapper.head, crops),
        "wrapper": lambda: wrapper(crops),
    }
    flops: dict[str, float] = {}
    if arch == "vit_course":  # the headline row is held to the machine's GEMM throughput
        flops["model"], _ = count_flops(lambda: wrapper(crops))
        replay = GemmReplay(lambda: wrapper(crops))
        flops["gemm_own_shapes"] = replay.flops
        fns["gemm_own_shapes"] = replay
        fns["gemm_square"], flops["gemm_square"] = square_gemm(1024)
    timing = time_interleaved(fns, repeats=repeats, inner=inner, warmup=1)
    return timing, worst, repeats, flops


def run(quick: bool = False) -> BenchResult:
    # The course ViT is the model the lessons train; vit_tiny (12 blocks) is the smallest
    # official shape. The headline row is the course model; vit_tiny goes in the notes.
    results = {arch: _bench_one(arch, quick) for arch in ("vit_course", "vit_tiny")}
    timing, worst, repeats, flops = results["vit_course"]
    tiny, t_worst, t_repeats, _ = results["vit_tiny"]
    med = timing.median
    rate = flops["model"] / 1e9 / med["wrapper"]
    t_med = tiny.median
    tiny_ratio = t_med["per_crop"] / t_med["wrapper"]
    return BenchResult(
        name="multicrop",
        baseline="one backbone + head pass per crop",
        candidate="`dinolab.models.MultiCropWrapper`",
        goal=GOAL,
        **timing.fields("per_crop", "wrapper"),
        check=(
            "outputs of the two sides agree (assert_close rtol 1e-4, atol 1e-5; largest "
            f"difference {worst:.1e} for vit_course, {t_worst:.1e} for vit_tiny)"
        ),
        config=(
            f"vit_course (D=128, 4 blocks, patch 8) + DINOHead(128, {OUT_DIM}, hidden 256, "
            f"bottleneck 64); batch {BATCH}; {N_GLOBAL} x {GLOBAL_PX} px + {N_LOCAL} x "
            f"{LOCAL_PX} px crops; forward with autograd on, eval mode; {repeats} interleaved "
            "rounds of 2 calls, median per call"
        ),
        notes=(
            f"Same setting with vit_tiny (D=192, 12 blocks, patch 8, 32 px): per crop "
            f"{t_med['per_crop'] * 1e3:.1f} ms, wrapper {t_med['wrapper'] * 1e3:.1f} ms, "
            f"ratio {tiny_ratio:.2f}x ({'meets' if tiny_ratio >= GOAL else 'misses'} the "
            f"{GOAL}x goal; {t_repeats} rounds of 1 call). The gain comes from 2 backbone "
            f"calls and 1 head call instead of {N_GLOBAL + N_LOCAL} + {N_GLOBAL + N_LOCAL}: "
            "fewer, larger matrix products and fewer Python-level module calls. Model "
            f"FLOPs of one wrapper forward (vit_course): {flops['model'] / 1e9:.2f} GFLOP, "
            "counted by torch.utils.flop_counter.FlopCounterMode (2*M*N*K per matrix product, "
            "convolutions) plus attention's two matrix products; its matrix products alone "
            f"({flops['gemm_own_shapes'] / 1e9:.2f} GFLOP) take "
            f"{med['gemm_own_shapes'] * 1e3:.1f} ms when replayed; a 1024^3 square GEMM "
            f"{med['gemm_square'] * 1e3:.1f} ms."
        ),
        references=[
            Reference(
                what="GEMM throughput at the wrapper's own shapes (its matrix products "
                "replayed alone)",
                unit="GFLOP/s",
                rate=flops["gemm_own_shapes"] / 1e9 / med["gemm_own_shapes"],
                achieved=rate,
                goal=GEMM_GOAL,
            ),
            Reference(
                what="GEMM throughput of a large square product (1024^3 float32 `torch.mm`)",
                unit="GFLOP/s",
                rate=flops["gemm_square"] / 1e9 / med["gemm_square"],
                achieved=rate,
            ),
        ],
    )


if __name__ == "__main__":
    print_result(run(quick="--quick" in sys.argv))
