"""Make the course teacher with exactly ``dinolab train dino`` and its defaults, and record it.

Called by ``experiments/run.py --only course_teacher`` (part of ``make experiments``). Writes

* ``dinolab/assets/course_teacher.pth``: the run's checkpoint without the student and the
  optimiser (:func:`dinolab.train.course_teacher.slim_checkpoint`);
* ``dinolab/assets/course_teacher.json``: the command, the data seed, the CPU time and the
  figures measured on that file (:func:`dinolab.train.course_teacher.measure_teacher`);
* the report section (returned as Markdown) with the k-NN and teacher-entropy curves.

``--quick`` trains 2 epochs on 256 images into ``runs/`` only and never touches the committed
files (its numbers are not meaningful).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "experiments"
OUT = ROOT / "benchmarks" / "experiments"


def _child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _plot(epochs: list[dict], figures: dict, log_k: float, path: Path) -> None:
    """k-NN and teacher entropy against training CPU time, with the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cpu, total = [], 0.0
    for e in epochs:
        total += e["epoch_cpu_time_s"]
        cpu.append(total / 60)
    knn = [(c, e["knn_top1"]) for c, e in zip(cpu, epochs, strict=True) if "knn_top1" in e]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    left.plot(*zip(*knn, strict=True), marker="o", ms=3, label="DINO teacher")
    left.axhline(figures["pixels_knn_top1"], color="grey", ls="--", label="raw pixels")
    left.axhline(figures["random_knn_top1"], color="black", ls=":", label="random init")
    left.axhline(100 / 6, color="lightgrey", ls="-", lw=1, label="chance (6 classes)")
    left.set(xlabel="training CPU time (minutes)", ylabel="k-NN top-1 on held-out images (%)",
             title="Teacher features: k-NN accuracy", ylim=(0, 100))
    left.legend(loc="lower right")
    right.plot(cpu, [e["train_teacher_entropy"] for e in epochs], marker="o", ms=3,
               label="teacher entropy (mean per image)")
    right.axhline(log_k, color="black", ls=":", label=f"uniform targets: ln K = {log_k:.2f}")
    right.set(xlabel="training CPU time (minutes)", ylabel="entropy (nats)",
              title="Teacher targets leave uniform", ylim=(0, log_k * 1.1))
    right.legend(loc="upper right")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def experiment_course_teacher(quick: bool) -> str:
    from dinolab.train.course_teacher import (
        COURSE_TEACHER_PATH,
        COURSE_TEACHER_RECORD,
        measure_teacher,
        slim_checkpoint,
    )
    from dinolab.train.recipes.dino import DINOConfig

    out_dir = RUNS / ("course_teacher_quick" if quick else "course_teacher")
    flags = ["--output_dir", os.path.relpath(out_dir, ROOT), "--no-progress"]
    if quick:
        flags += ["--epochs", "2", "--num_images", "256", "--num_eval_images", "128"]
    command = [sys.executable, "-m", "dinolab", "train", "dino", *flags]
    shown = "dinolab train dino " + " ".join(flags)
    print(f"running: {shown}", flush=True)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    shutil.rmtree(out_dir, ignore_errors=True)  # a fresh run each time (no --resume)
    wall, cpu = time.perf_counter(), _child_cpu_s()
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    wall, cpu = time.perf_counter() - wall, _child_cpu_s() - cpu

    target = (out_dir / "course_teacher.pth") if quick else COURSE_TEACHER_PATH
    cfg = DINOConfig.from_args(json.loads((out_dir / "config.json").read_text()))
    data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    slim_checkpoint(out_dir / "checkpoint.pth", target)
    figures = measure_teacher(target)
    epochs = [json.loads(x) for x in (out_dir / "log_epochs.jsonl").read_text().splitlines()]
    train_cpu = sum(e["epoch_cpu_time_s"] for e in epochs)
    record = {
        "command": shown,
        "data_seed": data_seed,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "out_dim": cfg.out_dim,
        "steps": epochs[-1]["it"],
        "cpu_minutes_total": round(cpu / 60, 2),
        "cpu_minutes_training": round(train_cpu / 60, 2),
        "wall_minutes": round(wall / 60, 2),
        "knn_curve": [e.get("knn_top1") for e in epochs],
        "teacher_entropy_curve": [e["train_teacher_entropy"] for e in epochs],
        "log_out_dim": epochs[-1]["train_log_out_dim"],
        **figures,
    }
    record_path = (out_dir / "course_teacher.json") if quick else COURSE_TEACHER_RECORD
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    size_mb = target.stat().st_size / 2**20

    figure = OUT / ("course_teacher_quick.png" if quick else "course_teacher.png")
    _plot(epochs, figures, record["log_out_dim"], figure)
    curve = ", ".join("-" if v is None else f"{v:.1f}" for v in record["knn_curve"])
    jac = (
        f"| attention Jaccard, heads averaged (best head) | {figures['jaccard_mean_map']:.3f} "
        f"({figures['jaccard_best_head']:.3f}) | random init "
        f"{figures['random_jaccard_mean_map']:.3f} "
        f"({figures['random_jaccard_best_head']:.3f}); centre prior "
        f"{figures['centre_prior_jaccard']:.3f} |"
        if "jaccard_mean_map" in figures
        else "| attention Jaccard | - | no masks |"
    )
    return "\n".join([
        "## The course teacher (`dinolab train dino`, defaults)",
        "",
        f"Trained with exactly `{shown}` (data seed {data_seed}: its training split "
        f"of {cfg.num_images} dark shapes; the figures are on its test split of "
        f"{cfg.num_eval_images} images, which no step saw) in {record['cpu_minutes_total']:.1f} "
        f"CPU-minutes ({record['cpu_minutes_training']:.1f} of them training, the rest the "
        f"per-epoch k-NN evaluations, start-up and data generation; "
        f"{record['wall_minutes']:.1f} minutes wall-clock). "
        f"Committed as `dinolab/assets/course_teacher.pth` ({size_mb:.1f} MB, teacher only) with "
        "its record `course_teacher.json`; `tests/train/test_course_teacher.py` recomputes the "
        "k-NN figure from the file.",
        "",
        "| measure | course teacher | baselines |",
        "|---|---:|---|",
        f"| k-NN top-1 (%) | {figures['knn_top1']:.1f} | raw pixels "
        f"{figures['pixels_knn_top1']:.1f}; random init {figures['random_knn_top1']:.1f} |",
        jac,
        "",
        f"![course teacher curves](experiments/{figure.name})",
        "",
        f"k-NN after each epoch: {curve}. Teacher entropy (per image, mean over each epoch's "
        f"steps; ln K = {record['log_out_dim']:.2f}): "
        + ", ".join(f"{v:.2f}" for v in record["teacher_entropy_curve"])
        + ".",
        "",
    ])
