"""The DINO paper's collapse study re-run with the course teacher's recipe on the dark shapes.

Called by ``experiments/run.py --only collapse_dark``. Four variants of ``dinolab train dino``
(its defaults, shortened to 6 epochs of 2000 images): centering and sharpening, only one,
neither. Each is told apart by two entropies of the teacher's targets (logged every step by
:func:`dinolab.eval.collapse_metrics`): the mean entropy per image, and the entropy of the
batch-mean distribution. Uniform collapse: both near ln K. One-prototype collapse: both near 0.
Sharp targets spread over the prototypes (what DINO wants): low per image, high for the batch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "experiments" / "collapse_dark"
OUT = ROOT / "benchmarks" / "experiments"

VARIANTS: dict[str, dict[str, Any]] = {
    "centering + sharpening": {},
    "sharpening only (no centering)": {"teacher_centering": "none"},
    "centering only (no sharpening)": {"teacher_temp": 0.1, "warmup_teacher_temp": 0.1},
    "neither": {"teacher_centering": "none", "teacher_temp": 0.1, "warmup_teacher_temp": 0.1},
}


def _plot(logs: dict[str, list[dict[str, Any]]], log_k: float, epochs: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), layout="constrained", sharey=True)
    for label, steps in logs.items():
        it = [s["it"] + 1 for s in steps]
        axes[0].plot(it, [s["teacher_entropy"] for s in steps], label=label)
        axes[1].plot(it, [s["teacher_batch_entropy"] for s in steps], label=label)
    for ax, title in zip(
        axes,
        ("Per image: mean entropy of the targets", "Batch mean: entropy of the average target"),
        strict=True,
    ):
        ax.axhline(log_k, color="black", ls=":", lw=1, label=f"ln K = {log_k:.2f} (uniform)")
        ax.set(xlabel="training step", title=title, ylim=(0, log_k * 1.08))
    axes[0].set_ylabel("teacher entropy (nats)")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.suptitle(f"Collapse study on the dark shapes (dinolab train dino, {epochs} epochs)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def experiment_collapse_dark(quick: bool) -> str:
    from dinolab.train.recipes.dino import DINOConfig, train_dino

    epochs, images = (2, 256) if quick else (6, 2000)
    rows, logs, commands = [], {}, []
    for i, (label, change) in enumerate(VARIANTS.items()):
        out = RUNS / (f"quick_v{i}" if quick else f"v{i}")
        shutil.rmtree(out, ignore_errors=True)
        cfg = DINOConfig(output_dir=str(out), epochs=epochs, num_images=images,
                         num_eval_images=500, progress=False, plots=False, **change)
        flags = " ".join(f"--{k} {v}" for k, v in change.items())
        commands.append(f"{label}: dinolab train dino --output_dir "
                        f"{os.path.relpath(out, ROOT)} --epochs {epochs} --num_images {images} "
                        f"--num_eval_images 500 {flags}".rstrip())
        record = train_dino(cfg)
        steps = [json.loads(x) for x in (out / "log_steps.jsonl").read_text().splitlines()]
        last = steps[-max(1, len(steps) // 10):]  # the last tenth of the run
        rows.append((
            label,
            statistics.fmean(s["teacher_entropy"] for s in last),
            statistics.fmean(s["teacher_batch_entropy"] for s in last),
            statistics.fmean(s["kl_teacher_student"] for s in last),
            record["knn_top1"],
        ))
        logs[label] = steps
    log_k = math.log(DINOConfig().out_dim)
    figure = OUT / ("collapse_dark_quick.png" if quick else "collapse_dark.png")
    _plot(logs, log_k, epochs, figure)
    return "\n".join([
        "## Collapse study with the course teacher's recipe (dark shapes)",
        "",
        f"`dinolab train dino`'s defaults (iBOT and 4 registers included) for {epochs} epochs "
        f"of {images} dark shapes (K = {DINOConfig().out_dim}, ln K = {log_k:.2f} nats); 'no "
        "sharpening' sets the teacher temperature to the student's 0.1 (for the DINO and the "
        "iBOT term), 'no centering' drops the centre of both terms. Entropies and KL: the DINO "
        "term's (CLS token), mean over the last tenth of the steps; k-NN after the last epoch "
        "(500 held-out images).",
        "",
        "| variant | entropy per image (nats) | entropy of the batch mean (nats) | "
        "KL(P_t ‖ P_s) (nats) | k-NN (%) |",
        "|---|---:|---:|---:|---:|",
        *[f"| {label} | {h:.3f} | {hb:.3f} | {kl:.3f} | {acc:.1f} |"
          for label, h, hb, kl, acc in rows],
        "",
        f"![collapse study on the dark shapes](experiments/{figure.name})",
        "",
        "Commands:",
        "",
        *[f"    {c}" for c in commands],
        "",
    ])
