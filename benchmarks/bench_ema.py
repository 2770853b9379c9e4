"""EMA teacher update on a ViT-S: ``dinolab.ema.ema_update`` vs official DINO's per-parameter loop.

The baseline is the loop of official DINO's ``main_dino.py``::

    for pt, ps in zip(teacher.parameters(), student.parameters()):
        pt.mul_(m).add_((1 - m) * ps)

It launches two or three operations per tensor and allocates a temporary ``(1 - m) * ps`` for
each of the ~150 tensors of a ViT-S. :func:`dinolab.ema.ema_update` keeps each model's
parameters as views into one flat buffer (:mod:`dinolab.flat_params`), so the update is ONE
``lerp_`` over 21.7 M values.

The update is bound by memory bandwidth: it reads the teacher and the student and writes the
teacher, ``3 * 4`` bytes per float32 value. The limit it is held to is measured in the same
rounds: ``a.lerp_(b, 1 - m)`` on two fresh 1-D tensors of the same number of floats, the
fastest a CPU can run this update. The earlier multi-tensor path (``_foreach_lerp_`` tensor by
tensor, ``ema_update(..., flatten=False)``) is timed beside it for reference.

Run alone: ``python benchmarks/bench_ema.py``.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from run import BenchResult, Reference, print_result, time_interleaved  # noqa: E402

from dinolab.ema import ema_update  # noqa: E402
from dinolab.flat_params import flat_view  # noqa: E402
from dinolab.models import vit_small  # noqa: E402

MOMENTUM = 0.996
GOAL = 2.0
BANDWIDTH_GOAL = 0.9  # fraction of the flat lerp_'s bytes per second


@torch.no_grad()
def loop_update(teacher: nn.Module, student: nn.Module, m: float) -> None:
    """Official DINO's teacher update, one parameter at a time."""
    for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
        pt.mul_(m).add_((1 - m) * ps.detach())


def run(quick: bool = False) -> BenchResult:
    torch.manual_seed(0)
    student = vit_small()  # 224 px, patch 16: DINO's default backbone
    with torch.no_grad():  # a student that has moved away from the teacher
        teacher_ema = copy.deepcopy(student)
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    teacher_loop = copy.deepcopy(teacher_ema)
    teacher_foreach = copy.deepcopy(teacher_ema)
    student_foreach = copy.deepcopy(student)  # stays tensor by tensor (flatten=False)
    n_tensors = sum(1 for _ in student.parameters())
    n_params = sum(p.numel() for p in student.parameters())

    # Correctness: from the same starting teacher, both updates give the same weights.
    ema_update(teacher_ema, student, MOMENTUM)  # the first call flattens both models
    loop_update(teacher_loop, student, MOMENTUM)
    ema_update(teacher_foreach, student_foreach, MOMENTUM, flatten=False)
    if flat_view(list(teacher_ema.parameters())) is None:
        raise AssertionError("ema_update did not lay the teacher out in one flat buffer")
    worst = 0.0
    for (name, a), (_, b), (_, c) in zip(teacher_ema.named_parameters(),
                                         teacher_loop.named_parameters(),
                                         teacher_foreach.named_parameters(), strict=True):
        # float32: the two evaluation orders of m*t + (1-m)*s differ by a few ulps at most
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=f"parameter {name}")
        # the flat lerp_ and the per-tensor _foreach_lerp_ compute the same formula
        torch.testing.assert_close(a, c, rtol=0, atol=0, msg=f"parameter {name} (foreach)")
        worst = max(worst, float((a - b).detach().abs().max()))

    # The limit: one lerp_ over two fresh flat tensors of the same size.
    flat_a = torch.randn(n_params)
    flat_b = torch.randn(n_params)

    # One call takes tens of ms on an idle 2-core machine: many rounds are cheap, and they
    # are what makes the median trustworthy on a busy one.
    repeats = 3 if quick else 25
    timing = time_interleaved(
        {
            "loop": lambda: loop_update(teacher_loop, student, MOMENTUM),
            "ema_update": lambda: ema_update(teacher_ema, student, MOMENTUM),
            "foreach": lambda: ema_update(teacher_foreach, student_foreach, MOMENTUM,
                                          flatten=False),
            "flat_lerp": lambda: flat_a.lerp_(flat_b, 1.0 - MOMENTUM),
        },
        repeats=repeats,
        inner=2,
        warmup=2,
    )
    gbytes = 3 * 4 * n_params / 1e9  # read teacher and student, write teacher (float32)
    med = timing.median
    return BenchResult(
        name="ema",
        baseline="per-parameter loop (official DINO)",
        candidate="`dinolab.ema.ema_update`",
        goal=GOAL,
        **timing.fields("loop", "ema_update"),
        check=(
            f"one update from the same teacher gives the same weights in all {n_tensors} "
            f"tensors (assert_close rtol 1e-6, atol 1e-7; largest difference {worst:.1e})"
        ),
        config=(
            f"vit_small (patch 16, 224 px): {n_tensors} parameter tensors, "
            f"{n_params / 1e6:.1f} M float32 values; momentum {MOMENTUM}; "
            f"{repeats} interleaved rounds of 2 calls, median per call"
        ),
        notes=(
            f"The update moves {gbytes * 1e3:.0f} MB (reads teacher and student, writes the "
            f"teacher: 12 bytes per value). Median per call: flat lerp_ (the limit) "
            f"{med['flat_lerp'] * 1e3:.2f} ms, ema_update {med['ema_update'] * 1e3:.2f} ms, "
            f"the per-tensor _foreach_lerp_ path (flatten=False) {med['foreach'] * 1e3:.2f} ms "
            f"({med['flat_lerp'] / med['foreach']:.2f} of the limit), official loop "
            f"{med['loop'] * 1e3:.2f} ms."
        ),
        references=[
            Reference(
                what="memory bandwidth: `a.lerp_(b, w)` on two fresh 1-D tensors of the same "
                f"{n_params / 1e6:.1f} M floats",
                unit="GB/s",
                rate=gbytes / med["flat_lerp"],
                achieved=gbytes / med["ema_update"],
                goal=BANDWIDTH_GOAL,
            )
        ],
    )


if __name__ == "__main__":
    print_result(run(quick="--quick" in sys.argv))
