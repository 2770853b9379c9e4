"""PNG plots of a training run, drawn from its JSON-lines logs (matplotlib, Agg backend).

:func:`plot_run` reads ``log_steps.jsonl`` and ``log_epochs.jsonl`` in a run's output
directory and writes one figure per quantity that the run logged: the loss, the k-NN or
validation accuracy, the teacher's entropy, the KL divergences of the collapse monitors, the
teacher momentum and temperature, and the learning rate. :func:`plot_comparison` overlays
the same quantity from several runs (the collapse study).

Examples:
    >>> paths = plot_run("runs/dino")          # doctest: +SKIP
    >>> [p.name for p in paths]                # doctest: +SKIP
    ['loss.png', 'knn_accuracy.png', 'teacher_entropy.png', 'kl.png', 'momentum.png', 'lr.png']
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# A bare Figure (no pyplot) renders to files without touching the global backend, so
# plotting during training neither opens windows nor disables a notebook's inline figures.
from matplotlib.figure import Figure

__all__ = ["read_log", "plot_run", "plot_comparison", "PLOTS"]

# (file name, title, y label, [(log, key, legend label), ...]); log is "step" or "epoch".
PLOTS: list[tuple[str, str, str, list[tuple[str, str, str]]]] = [
    (
        "loss.png",
        "Training loss",
        "loss",
        [("step", "loss", "per step"), ("epoch", "train_loss", "epoch mean")],
    ),
    (
        "knn_accuracy.png",
        "k-NN accuracy of the teacher's features",
        "top-1 accuracy (%)",
        [
            ("epoch", "knn_top1", "teacher k-NN (k=20)"),
            ("epoch", "student_knn_top1", "student k-NN (k=20)"),
        ],
    ),
    (
        "accuracy.png",
        "Validation accuracy",
        "top-1 accuracy (%)",
        [("epoch", "val_acc", "model"), ("epoch", "ema_val_acc", "EMA of the weights")],
    ),
    (
        "teacher_entropy.png",
        "Entropy of the teacher's output distribution",
        "entropy (nats)",
        [
            ("step", "teacher_entropy", "h(P_t), batch mean"),
            ("step", "log_out_dim", "log K (uniform)"),
        ],
    ),
    (
        "kl.png",
        "Collapse monitors: KL divergences",
        "KL (nats)",
        [
            ("step", "kl_teacher_student", "KL(P_t || P_s)"),
            ("step", "kl_teacher_uniform", "KL(P_t || uniform)"),
        ],
    ),
    ("momentum.png", "Teacher EMA momentum", "momentum", [("step", "momentum", "momentum")]),
    (
        "teacher_temp.png",
        "Teacher temperature",
        "temperature",
        [("step", "teacher_temp", "teacher")],
    ),
    (
        "lr.png",
        "Learning rate and weight decay",
        "value",
        [("step", "lr", "learning rate"), ("step", "wd", "weight decay")],
    ),
]


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; missing file -> empty list, broken lines skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _series(
    records: Sequence[Mapping[str, Any]], key: str, x_key: str
) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, int | float) and math.isfinite(v):
            xs.append(float(r.get(x_key, len(xs))))
            ys.append(float(v))
    return xs, ys


def plot_run(output_dir: str | Path, title: str = "") -> list[Path]:
    """Write one PNG per logged quantity into ``output_dir``; return the paths written.

    The x axis is the training iteration; per-epoch values are drawn at the iteration
    where their epoch ended.
    """
    output_dir = Path(output_dir)
    logs = {
        "step": read_log(output_dir / "log_steps.jsonl"),
        "epoch": read_log(output_dir / "log_epochs.jsonl"),
    }
    written = []
    for filename, plot_title, ylabel, lines in PLOTS:
        drawn = [(log, key, label, *_series(logs[log], key, "it")) for log, key, label in lines]
        drawn = [d for d in drawn if d[3]]
        if not drawn:
            continue
        fig = Figure(figsize=(6.4, 4.0))
        ax = fig.subplots()
        for log, _key, label, xs, ys in drawn:
            if log == "epoch" or len(xs) == 1:
                ax.plot(xs, ys, marker="o", label=label)
            else:
                ax.plot(xs, ys, linewidth=1.0, label=label)
        ax.set_title(f"{title}: {plot_title}" if title else plot_title)
        ax.set_xlabel("training iteration")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = output_dir / filename
        fig.savefig(path, dpi=100)
        written.append(path)
    return written


def plot_comparison(
    runs: Mapping[str, str | Path],
    key: str,
    path: str | Path,
    title: str,
    ylabel: str,
    log: str = "step",
) -> Path:
    """Overlay ``key`` from several runs (legend = the mapping's keys) in one PNG.

    Args:
        runs: legend label -> run output directory.
        key: the metric to draw (e.g. ``"teacher_entropy"``).
        path: the PNG to write.
        title, ylabel: figure title and y-axis label.
        log: ``"step"`` or ``"epoch"`` records.

    Raises:
        ValueError: none of the runs logged ``key``.
    """
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    drawn = 0
    for label, run_dir in runs.items():
        records = read_log(
            Path(run_dir) / ("log_steps.jsonl" if log == "step" else "log_epochs.jsonl")
        )
        xs, ys = _series(records, key, "it")
        if xs:
            ax.plot(xs, ys, label=label, marker="o" if log == "epoch" else None, linewidth=1.0)
            drawn += 1
    if not drawn:
        raise ValueError(f"plot_comparison: no run among {list(runs)} logged {key!r}")
    ax.set_title(title)
    ax.set_xlabel("training iteration")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path
