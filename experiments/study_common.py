"""What the kd, dino and collapse experiments of ``experiments/run.py`` share: paths, formats.

``OUT`` holds each experiment's section and figures (``benchmarks/experiments``), ``RUNS`` its
checkpoints and logs (``runs/experiments``, not committed). The later experiments
(``course_teacher.py``, ``dino_showcase.py``, ``collapse_dark.py``, ``distill_ablation.py``)
name the same folders themselves.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "experiments"
RUNS = ROOT / "runs" / "experiments"


def _cli(recipe: str, cfg: Any, defaults: Any) -> str:
    """The ``dinolab train`` command equivalent to ``cfg`` (flags that differ from defaults)."""
    flags = []
    for name, value in vars(cfg).items():
        if value == getattr(defaults, name) or name in ("progress", "plots"):
            continue
        shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
        if name == "output_dir":
            shown = os.path.relpath(str(value), ROOT)
        flags.append(f"--{name} {shown}")
    return f"dinolab train {recipe} " + " ".join(flags)


def _fmt_diff(values: list[float]) -> str:
    """Signed mean ± standard deviation of paired differences (points)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):+.2f} ± {spread:.2f}"


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {spread:.2f}"


def _fresh(path: Path) -> None:
    """Remove a previous run's checkpoint and logs so the experiment starts from scratch."""
    if path.exists():
        import shutil

        shutil.rmtree(path)

