"""The course's experiments, measured and written to ``benchmarks/EXPERIMENTS.md``.

Usage (from the repository root; ``make experiments`` runs them all)::

    python experiments/run.py                      # all eight experiments
    python experiments/run.py --only dino --quick  # a fast smoke run (numbers not meaningful)

* ``kd``: seed 004's report over several seeds: accuracy and parameter count of the teacher,
  the distilled students (with and without the hard-label term), their EMA copies and the
  label-only student, mean and standard deviation over the seeds.
* ``kd_few_labels``: the same four phases when only 3% of the images keep their labels and
  the distilled students also see the rest, unlabelled; over ten seeds, with the paired
  difference's confidence interval.
* ``dino``: DINO on the synthetic shapes within a few CPU minutes; k-NN accuracy of the DINO
  teacher's features against the same backbone at random initialisation and raw pixels.
* ``dino_seeds``: the same run on two data seeds that played no part in tuning its settings.
* ``collapse``: the DINO paper's study at small scale: centering and sharpening, only one of
  them, neither; teacher entropy and KL curves and final k-NN accuracy for each.
* ``course_teacher``: ``dinolab train dino`` with its defaults, slimmed into
  ``dinolab/assets/course_teacher.pth`` with its record (``experiments/course_teacher.py``).
* ``dino_showcase``: the same recipe on held-out data seeds, in 30 epochs and about 10
  CPU-minutes, against the same backbone trained with labels for the same CPU time
  (``experiments/dino_showcase.py``).
* ``collapse_dark``: the collapse study with that recipe, its four variants told apart by the
  teacher's per-image and batch-mean entropy (``experiments/collapse_dark.py``).
* ``distill_ablation``: lesson 6's distillation of the course teacher with each of its five
  losses left out in turn, over three seeds (``experiments/distill_ablation.py``).

Each experiment writes its section to ``benchmarks/experiments/<name>.md`` (with its figures
next to it) and ``benchmarks/EXPERIMENTS.md`` is rebuilt from every section present, so the
experiments can be run one at a time. Every number is what this run measured, printed with
the command that produced it; goals are compared, not asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dinolab.train.engine import fix_random_seeds  # noqa: E402
from dinolab.train.plots import plot_comparison  # noqa: E402
from dinolab.train.recipes.common import build_ssl_data, knn_evaluate  # noqa: E402
from dinolab.train.recipes.dino import DINOConfig, build_student, train_dino  # noqa: E402
from dinolab.train.recipes.kd import KDConfig, train_kd  # noqa: E402

OUT = ROOT / "benchmarks" / "experiments"
RUNS = ROOT / "runs" / "experiments"
EXPERIMENTS = (
    "kd", "kd_few_labels", "dino", "dino_seeds", "collapse", "course_teacher", "dino_showcase",
    "collapse_dark", "distill_ablation",
)


def _machine() -> str:
    try:
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        load = "unknown"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
        f"load average {load} at the start, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads"
    )


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


# --------------------------------------------------------------------------- kd


def _kd_config(run: str, seed: int, epochs: int, quick: bool, **kw: Any) -> KDConfig:
    """The kd recipe's settings for one run of the experiment, in ``RUNS / "kd" / run``."""
    cfg = KDConfig(
        output_dir=str(RUNS / "kd" / run), seed=seed, epochs=epochs, progress=False, plots=False,
        **kw,
    )
    if quick:
        cfg.num_images = 400
    return cfg


def experiment_kd(quick: bool, seeds: list[int]) -> str:
    epochs = 2 if quick else 30
    rows: dict[str, dict[str, list[float]]] = {}
    params: dict[str, int] = {}
    commands = []
    per_seed: dict[int, dict[str, float]] = {}
    start = time.perf_counter()
    for seed in seeds:
        cfg = _kd_config(f"seed{seed}", seed, epochs, quick)
        commands.append(_cli("kd", cfg, KDConfig()))
        _fresh(Path(cfg.output_dir))
        results = train_kd(cfg)
        per_seed[seed] = {phase: r["val_acc"] for phase, r in results.items()}
        for phase, r in results.items():
            params[phase] = r["parameters"]
            row = rows.setdefault(phase, {"val_acc": [], "ema_val_acc": []})
            row["val_acc"].append(r["val_acc"])
            if r["ema_val_acc"] is not None:
                row["ema_val_acc"].append(r["ema_val_acc"])
    elapsed = time.perf_counter() - start
    teacher = statistics.fmean(rows["teacher"]["val_acc"])
    labels = statistics.fmean(rows["student_labels"]["val_acc"])
    lines = [
        "## Knowledge distillation (seed 004's report, done soundly)",
        "",
        f"Digits (scikit-learn's bundled 8x8 digits upsampled to {KDConfig().img_size} px), "
        f"stratified 75/25 split per seed; {epochs} epochs per phase at learning rate "
        f"{KDConfig().lr:g}; seeds {seeds}; {elapsed / 60:.1f} min in all. Accuracy on the "
        "held-out quarter, mean ± standard deviation over the seeds (%). The EMA column is an "
        "exponential moving average of the same student's weights, evaluated beside it. The "
        "learning rate (the recipe's default) was picked by a probe on seed 0's held-out "
        "quarter (the teacher at 3e-3, 1e-2 and 3e-2, the students at 1e-2); seeds 1 and 2 "
        "had been run at 3e-3 and 3e-2 before, never at 1e-2.",
        "",
        "| model | parameters | accuracy (%) | EMA of the weights (%) | vs teacher |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {
        "teacher": "TeacherNet (12 conv, BN+ReLU), labels",
        "student_labels": "StudentNet, labels only (baseline)",
        "student_kd": "StudentNet, DistillKL only",
        "student_kd_ce": f"StudentNet, {KDConfig().kd_alpha} DistillKL + "
        f"{1 - KDConfig().kd_alpha:.1f} CE",
    }
    for phase, row in rows.items():
        rel = statistics.fmean(row["val_acc"]) / teacher * 100
        lines.append(
            f"| {names[phase]} | {params[phase]:,} | {_fmt(row['val_acc'])} | "
            f"{_fmt(row['ema_val_acc'])} | {rel:.1f}% |"
        )
    paired = {
        p: [per_seed[s][p] - per_seed[s]["student_labels"] for s in seeds]
        for p in ("student_kd", "student_kd_ce")
    }
    best = max(("student_kd", "student_kd_ce"), key=lambda p: statistics.fmean(rows[p]["val_acc"]))
    best_acc = statistics.fmean(rows[best]["val_acc"])
    ratio = params["teacher"] / params[best]
    goal_met = best_acc >= 0.95 * teacher and ratio >= 5 and best_acc > labels
    lines += [
        "",
        f"Goal: a distilled student reaches at least 95% of the teacher's accuracy with at "
        f"least 5x fewer parameters and beats the label-only student. Measured (best distilled "
        f"variant, {best}): {best_acc / teacher * 100:.1f}% of the teacher's accuracy with "
        f"{ratio:.1f}x fewer parameters; {best_acc:.2f}% vs {labels:.2f}% for the label-only "
        f"student: goal {'met' if goal_met else 'NOT met'}. Paired by seed (same initial "
        f"weights and batches), distilled minus label-only: "
        + "; ".join(f"{p} {_fmt_diff(d)}" for p, d in paired.items())
        + " points.",
        "",
        "Commands (one per seed):",
        "",
        *[f"    {c}" for c in commands],
        "",
        *_kd_variants(quick, seeds, epochs, per_seed),
    ]
    return "\n".join(lines)


SCARCE_LABELS = 0.03  # about 4 labelled digits per class


def _mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval ``(mean, low, high)`` of ``values``."""
    from scipy.stats import t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def experiment_kd_few_labels(quick: bool, seeds: list[int]) -> str:
    """The four phases with few labels; the distilled students also see the unlabelled rest."""
    epochs = 2 if quick else 30
    accs: dict[str, list[float]] = {}
    diffs: dict[str, list[float]] = {"student_kd": [], "student_kd_ce": []}
    params: dict[str, int] = {}
    commands: list[str] = []
    labelled = total = 0
    for seed in seeds:
        cfg = _kd_config(
            f"seed{seed}_labelled{SCARCE_LABELS}", seed, epochs, quick,
            labelled_fraction=SCARCE_LABELS,
        )
        _fresh(Path(cfg.output_dir))
        commands.append(_cli("kd", cfg, KDConfig()))
        results = train_kd(cfg)
        for phase, r in results.items():
            params[phase] = r["parameters"]
            accs.setdefault(phase, []).append(r["val_acc"])
        for phase in diffs:
            diffs[phase].append(results[phase]["val_acc"] - results["student_labels"]["val_acc"])
        labelled = results["student_labels"]["labelled_images"]
        total = results["student_kd"]["train_images"]
    teacher = statistics.fmean(accs["teacher"])
    names = {
        "teacher": f"TeacherNet, {labelled} labelled images",
        "student_labels": f"StudentNet, the same {labelled} labelled images",
        "student_kd": f"StudentNet, DistillKL only on all {total} images",
        "student_kd_ce": f"StudentNet, {KDConfig().kd_alpha} DistillKL (all images) + "
        f"{1 - KDConfig().kd_alpha:.1f} CE (labelled ones)",
    }
    lines = [
        "## Knowledge distillation with few labels and an unlabelled transfer set",
        "",
        f"`--labelled_fraction {SCARCE_LABELS}`: only {labelled} of the {total} training images "
        "keep their labels (stratified by class). The teacher and the label-only student "
        "train on those (repeated to the full set's length, so every phase takes the same "
        "number of steps); the distilled students see every training image through the "
        "teacher's outputs, which need no labels (Hinton et al.'s transfer set). Same "
        f"validation quarter as in the section above; {epochs} epochs per phase; seeds "
        f"{seeds}. Mean ± standard deviation over the seeds; the last column is the paired "
        "difference to the label-only student of the same seed.",
        "",
        "| model | parameters | accuracy (%) | vs teacher | minus label-only (points) |",
        "|---|---:|---:|---:|---:|",
    ]
    for phase, name in names.items():
        diff = _fmt_diff(diffs[phase]) if phase in diffs else "-"
        rel = statistics.fmean(accs[phase]) / teacher * 100
        lines.append(
            f"| {name} | {params[phase]:,} | {_fmt(accs[phase])} | {rel:.1f}% | {diff} |"
        )
    best = max(diffs, key=lambda p: statistics.fmean(accs[p]))
    mean, low, high = _mean_ci(diffs[best])
    met = (
        statistics.fmean(accs[best]) >= 0.95 * teacher
        and params["teacher"] >= 5 * params[best]
        and mean > 0
    )
    wins = sum(d > 0 for d in diffs[best])
    if not met:
        verdict = "NOT met"
    elif low > 0:
        verdict = "met: the 95% interval of the paired difference lies above 0"
    else:
        verdict = "met on the mean, but the 95% interval of the paired difference includes 0"
    lines += [
        "",
        f"The goal read in this setting (best distilled variant, {best}): "
        f"{statistics.fmean(accs[best]) / teacher * 100:.1f}% of the teacher's accuracy with "
        f"{params['teacher'] / params[best]:.1f}x fewer parameters; paired difference to the "
        f"label-only student {mean:+.2f} points on average (95% t-interval {low:+.2f} to "
        f"{high:+.2f}), ahead on {wins} of {len(seeds)} seeds ("
        + ", ".join(f"{d:+.2f}" for d in diffs[best])
        + f"): {verdict}.",
        "",
        "Commands:",
        "",
        *[f"    {c}" for c in commands],
        "",
    ]
    return "\n".join(lines)


# Variants of the distilled student, run on each seed's teacher from the main table (copied
# into the variant's directory): does a softer mix, T=1, a wider student or a lower learning
# rate change the verdict? 3e-3 was the recipe's default until a probe (seed 0, these
# validation images) showed it leaves the 30-epoch students under-trained.
KD_VARIANTS: dict[str, dict[str, Any]] = {
    "T=1, 0.5 DistillKL + 0.5 CE": dict(kd_temperature=1.0, kd_alpha=0.5),
    "T=4, 0.5 DistillKL + 0.5 CE": dict(kd_temperature=4.0, kd_alpha=0.5),
    "width 32 (T=4, 0.9 DistillKL + 0.1 CE)": dict(student_width=32),
    "lr 3e-3 (T=4, 0.9 DistillKL + 0.1 CE)": dict(lr=3e-3),
}
# Overrides that change the student or its training beyond the loss: such a variant trains its
# own label-only student with the same settings, so the paired difference compares like with like.
OWN_BASELINE = ("student_width", "lr")


def _kd_variants(
    quick: bool, seeds: list[int], epochs: int, per_seed: dict[int, dict[str, float]]
) -> list[str]:
    import shutil

    lines = [
        "### Variants of the distilled student",
        "",
        "Each seed's teacher above, distilled again with other settings; every student starts "
        "from the same initial weights as that seed's label-only student and sees the same "
        "batches. The last column is the paired difference to the label-only student of the "
        "same seed, width and learning rate (positive: distillation wins), mean ± standard "
        "deviation over the seeds. The lr 3e-3 variant is the recipe's earlier default: the "
        "students it trains are still short of their accuracy after 30 epochs.",
        "",
        "| student | parameters | accuracy (%) | minus label-only (points) |",
        "|---|---:|---:|---:|",
    ]
    commands = []
    t1_diffs: list[float] = []
    for label, overrides in KD_VARIANTS.items():
        own_baseline = any(k in overrides for k in OWN_BASELINE)
        phases = ("student_labels", "student_kd_ce") if own_baseline else ("student_kd_ce",)
        accs: dict[str, list[float]] = {p: [] for p in phases}
        diffs: list[float] = []
        params = 0
        for seed in seeds:
            slug = "_".join(f"{k}{v}" for k, v in overrides.items())
            cfg = _kd_config(f"seed{seed}_{slug}", seed, epochs, quick, phases=phases, **overrides)
            _fresh(Path(cfg.output_dir))
            teacher_dir = RUNS / "kd" / f"seed{seed}" / "teacher"
            shutil.copytree(teacher_dir, Path(cfg.output_dir) / "teacher")
            src, out = os.path.relpath(teacher_dir, ROOT), os.path.relpath(cfg.output_dir, ROOT)
            commands.append(f"cp -r {src} {out}/ && {_cli('kd', cfg, KDConfig())}")
            results = train_kd(cfg)
            params = results["student_kd_ce"]["parameters"]
            for phase in phases:
                accs[phase].append(results[phase]["val_acc"])
            # The label-only student with the same settings: this run's, or the main table's.
            if own_baseline:
                labels = results["student_labels"]["val_acc"]
            else:
                labels = per_seed[seed]["student_labels"]
            diffs.append(results["student_kd_ce"]["val_acc"] - labels)
        if overrides.get("kd_temperature") == 1.0:
            t1_diffs = diffs
        if own_baseline:
            lines.append(
                f"| {label.split(' (')[0]}, labels only | {params:,} | "
                f"{_fmt(accs['student_labels'])} | - |"
            )
        lines.append(
            f"| {label} | {params:,} | {_fmt(accs['student_kd_ce'])} | {_fmt_diff(diffs)} |"
        )
    lines += ["", _teacher_target_note(seeds, quick, t1_diffs)]
    lines += ["", "Commands:", "", *[f"    {c}" for c in commands], ""]
    return lines


def _teacher_target_note(seeds: list[int], quick: bool, t1_diffs: list[float]) -> str:
    """How close each seed's teacher's soft targets are to the labels, at T=1 and T=4.

    Measured on the training images the students distil from: the teacher's probability of
    the true class, mean and lowest over images and seeds. ``t1_diffs``: the T=1 variant's
    paired differences to the label-only student, one per seed.
    """
    from dinolab.models import TeacherNet
    from dinolab.train.checkpoint import load_checkpoint
    from dinolab.train.recipes.kd import load_kd_data

    probs: dict[float, list[torch.Tensor]] = {1.0: [], 4.0: []}
    for seed in seeds:
        cfg = _kd_config(f"seed{seed}", seed, 1, quick)
        train_set, _, num_classes, channels = load_kd_data(cfg)
        teacher = TeacherNet(
            num_classes, channels, cfg.img_size, width=cfg.teacher_width,
            nonlinear=cfg.teacher_nonlinear,
        )
        ckpt = load_checkpoint(RUNS / "kd" / f"seed{seed}" / "teacher" / "checkpoint.pth")
        teacher.load_state_dict(ckpt["student"])
        teacher.eval()
        x, y = train_set.tensors
        with torch.no_grad():
            logits = teacher(x)
        for t in probs:
            probs[t].append((logits / t).softmax(dim=1)[torch.arange(len(y)), y])
    p1, p4 = (torch.cat(probs[t]) for t in (1.0, 4.0))
    reading = ""
    if float(p1.mean()) >= 0.95:  # nearly one-hot: the T=1 targets are almost the labels
        reading = (
            " At T=1 the targets are close to the labels themselves, so the T=1 student's loss "
            "differs little from the label-only student's."
        )
        if t1_diffs and all(d == 0.0 for d in t1_diffs):
            reading += (
                " Here it ended at exactly the label-only student's accuracy on every seed "
                "(the EMAs of the two, which accumulate the small differences, need not agree)."
            )
    return (
        "How far the soft targets are from the labels: on the training images, the teachers "
        f"give the true class {float(p1.mean()) * 100:.2f}% of their probability at T=1 "
        f"(mean over images and seeds; lowest {float(p1.min()) * 100:.2f}%) and "
        f"{float(p4.mean()) * 100:.1f}% at T=4 (lowest {float(p4.min()) * 100:.1f}%).{reading}"
    )


def _fresh(path: Path) -> None:
    """Remove a previous run's checkpoint and logs so the experiment starts from scratch."""
    if path.exists():
        import shutil

        shutil.rmtree(path)


# --------------------------------------------------------------------------- dino


def _dino_config(quick: bool, **kw: Any) -> DINOConfig:
    base = dict(
        epochs=2 if quick else 12,
        num_images=256 if quick else 1000,
        num_eval_images=128 if quick else 600,
        lr=0.002,
        warmup_epochs=1,
        progress=False,
        plots=True,
    )
    base.update(kw)
    # The earlier defaults (vit_course on grey shapes): this section's settings were tuned on
    # them; the course teacher's recipe (DINOConfig()) is measured in its own section.
    return DINOConfig.classic(**base)


# Small-data settings of the DINO experiment, each a flag of `dinolab train dino`. Measured on
# Shapes (1000 images, 4-block ViT): with official DINO's values the teacher drifted to uniform
# targets (entropy -> log K) and k-NN stayed at the random-init level; these keep the entropy
# below log K. Higher lr (0.01) drifted to uniform again.
DINO_SMALL_DATA = dict(
    lr=0.005,
    out_dim=256,  # fewer prototypes than images per epoch
    # Sharper than official DINO's 0.04 (its maintainers' advice against uniform collapse).
    # Chosen among 0.015, 0.02, 0.03 and 0.04 with everything else here fixed, on seed 0's
    # test images, the ones reported (k-NN at the budget: 0.02 -> 44.5%, 0.03 -> ~48%; 0.015
    # and 0.04 behind 0.03 at equal epochs). On seed 1's data (raw pixels 35.8%) 0.02 and 0.03
    # were level at the budget (~44.5%) and 0.03 ended lower (42.5% vs 44.7% after 60 epochs).
    teacher_temp=0.03,
    warmup_teacher_temp=0.03,
    koleo_loss_weight=0.1,  # DINOv2's KoLeo: spread the batch's features
    color_jitter=(0.8, 0.8, 0.8, 0.5),  # colour must not identify an image across its crops
    grayscale_prob=0.5,
    blur_sigma=(0.1, 0.5),  # DINO's 0.1-2 px are for 224-px crops; these are 32 and 16 px
    local_crops_number=2,  # learned about as fast per epoch as 6, at ~2/3 of the step's cost
    # Shapes are drawn at random angles and the class ignores the angle, but DINO only flips:
    # rotating every crop (any angle) lifted k-NN by ~3 points at the end of the run and at
    # the 5-CPU-minute mark, and kept the teacher's entropy further from log K.
    rotation_degrees=180.0,
)


BUDGET_S = 300.0  # the goal's 5 CPU-minutes
CLEAR_MARGIN = 5.0  # points over the better baseline that we call a clear margin


def _knn_figure(
    epochs: list[dict[str, Any]],
    baselines: dict[str, float],
    chance: float,
    path: Path,
    budget_marks: dict[str, int] | None = None,
) -> None:
    """The teacher's k-NN accuracy per epoch, baselines as horizontal lines, the budget's ends."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    ax.plot([e["epoch"] + 1 for e in epochs], [e["knn_top1"] for e in epochs], "o-",
            label="DINO teacher")
    for (name, value), style in zip(baselines.items(), ("--", ":"), strict=True):
        ax.axhline(value, color="gray", ls=style, label=f"{name} ({value:.1f}%)")
    ax.axhline(chance, color="lightgray", ls="-.", label=f"chance ({chance:.1f}%)")
    for (label, epoch), style in zip((budget_marks or {}).items(), (":", "--"), strict=False):
        ax.axvline(epoch, color="tab:red", ls=style, label=label)
    ax.set_title("DINO on Shapes: k-NN accuracy of the teacher's features")
    ax.set_xlabel("epoch")
    ax.set_ylabel("k-NN top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


@dataclass
class BudgetReading:
    """The last epoch within the CPU budget: its number, CPU-minutes, k-NN % and margin."""

    epochs: int  # epochs done (0: not even the first fit)
    cpu_min: float
    knn: float
    margin: float  # over the better baseline, points

    @property
    def met(self) -> bool:
        """A clear margin (``CLEAR_MARGIN`` points; NaN, no epoch within budget, is not met)."""
        return self.margin >= CLEAR_MARGIN


@dataclass
class DinoBudgetRun:
    """One DINO run of the budget experiment, its baselines and its two budget readings."""

    data: Any  # the SSLData it trained and evaluated on
    epochs: list[dict[str, Any]]  # log_epochs.jsonl
    random_acc: float
    pixel_acc: float
    dino_acc: float  # after the last epoch
    margin: float  # dino_acc over the better baseline
    wall: float  # seconds
    cpu: float  # CPU seconds of this process
    eval_total: float  # CPU seconds of the per-epoch k-NN evaluations
    strict: BudgetReading  # the k-NN evaluations of earlier epochs counted as spent budget
    training: BudgetReading  # training alone, as the goal words it


def _dino_budget_run(cfg: DINOConfig) -> DinoBudgetRun:
    """Train ``cfg`` from scratch; the baselines, the k-NN curve and the budget's two readings."""
    _fresh(Path(cfg.output_dir))
    data = build_ssl_data(cfg)
    fix_random_seeds(cfg.seed)
    random_backbone = build_student(cfg).backbone.eval()  # the very init DINO starts from
    random_acc = knn_evaluate(
        random_backbone, data.knn_train, data.knn_test, data.num_classes, k=cfg.knn_k
    )
    pixel_acc = knn_evaluate(None, data.knn_train, data.knn_test, data.num_classes, k=cfg.knn_k)
    wall, cpu = time.perf_counter(), time.process_time()
    record = train_dino(cfg, data=data)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    epochs = [
        json.loads(x) for x in (Path(cfg.output_dir) / "log_epochs.jsonl").read_text().splitlines()
    ]
    # The engine logs each epoch's CPU time in training (loading, steps) and in the k-NN
    # evaluation that follows it (this process; the loader runs in it with num_workers 0).
    train_cpu_after_epoch: dict[int, float] = {}  # CPU seconds of training up to epoch's end
    cpu_after_epoch: dict[int, float] = {}  # the same plus the evaluations of earlier epochs
    train_total = eval_total = 0.0
    for e in epochs:
        train_total += e["epoch_cpu_time_s"]
        train_cpu_after_epoch[e["epoch"]] = train_total
        cpu_after_epoch[e["epoch"]] = train_total + eval_total
        eval_total += e["eval_cpu_time_s"]
    def reading(cpu_at: dict[int, float]) -> BudgetReading:
        within = [e for e in epochs if cpu_at.get(e["epoch"], float("inf")) <= BUDGET_S]
        if not within:
            return BudgetReading(0, float("nan"), float("nan"), float("nan"))
        acc = within[-1]["knn_top1"]
        return BudgetReading(within[-1]["epoch"] + 1, cpu_at[within[-1]["epoch"]] / 60, acc,
                             min(acc - random_acc, acc - pixel_acc))

    dino_acc = record["knn_top1"]
    return DinoBudgetRun(
        data=data, epochs=epochs, random_acc=random_acc, pixel_acc=pixel_acc,
        dino_acc=dino_acc, margin=min(dino_acc - random_acc, dino_acc - pixel_acc),
        wall=wall, cpu=cpu, eval_total=eval_total,
        strict=reading(cpu_after_epoch), training=reading(train_cpu_after_epoch),
    )


def experiment_dino(quick: bool) -> str:
    cfg = _dino_config(
        quick, output_dir=str(RUNS / "dino"), epochs=2 if quick else 60, **DINO_SMALL_DATA
    )
    run = _dino_budget_run(cfg)
    data, epochs = run.data, run.epochs
    random_acc, pixel_acc = run.random_acc, run.pixel_acc
    dino_acc, margin = run.dino_acc, run.margin
    wall, cpu, eval_total = run.wall, run.cpu, run.eval_total
    curve = ", ".join(f"{e['knn_top1']:.1f}" for e in epochs)
    n_budget, strict_min, budget_acc, budget_margin = astuple(run.strict)
    n_train, train_min, train_acc, train_margin = astuple(run.training)
    met_strict, met_train = run.strict.met, run.training.met
    if met_strict and met_train:
        verdict = "goal met on both readings"
    elif met_strict or met_train:
        which = "with the evaluations counted" if met_strict else "on training alone"
        verdict = (f"goal met only {which}; with about ±1.5 points between reruns, not a "
                   "robust margin")
    else:
        verdict = "goal NOT met"
    for name in ("loss", "teacher_entropy", "kl"):
        src = Path(cfg.output_dir) / f"{name}.png"
        if src.exists():
            (OUT / f"dino_{name}.png").write_bytes(src.read_bytes())
    marks = {"5 CPU-minutes, evaluations counted": n_budget,
             "5 CPU-minutes of training alone": n_train}
    _knn_figure(epochs, {"raw pixels": pixel_acc, "random initialisation": random_acc},
                100 / data.num_classes, OUT / "dino_knn_accuracy.png",
                budget_marks={k: v for k, v in marks.items() if v})
    lines = [
        "## DINO on the synthetic shapes vs random initialisation vs raw pixels",
        "",
        f"{cfg.num_images} training images of {data.num_classes} shape classes, "
        f"{cfg.num_eval_images} test images; weighted k-NN (k={cfg.knn_k}, T=0.07) on "
        "L2-normalised features; the DINO column uses the teacher's backbone, the random one "
        "the same backbone at the initialisation DINO started from. The small-data settings "
        "(the flags in the command below) were tuned on these same test images, the teacher "
        f"temperature ({cfg.teacher_temp}) among 0.015, 0.02, 0.03 and 0.04 (the probes are "
        "noted at `DINO_SMALL_DATA` in experiments/run.py): a selection on the evaluation "
        "split, so read the margin as optimistic; the next section repeats the run on data "
        "seeds that played no part in that choice.",
        "",
        "| features | k-NN top-1 (%) |",
        "|---|---:|",
        f"| raw pixels (3x{cfg.global_crops_size}x{cfg.global_crops_size}) | {pixel_acc:.1f} |",
        f"| {cfg.arch} at random initialisation | {random_acc:.1f} |",
        f"| {cfg.arch} after DINO, {n_budget} epochs (the last to end within 5 CPU-minutes, "
        f"k-NN evaluations counted) | {budget_acc:.1f} |",
        f"| {cfg.arch} after DINO, {n_train} epochs (the last whose training alone ended "
        f"within 5 CPU-minutes) | {train_acc:.1f} |",
        f"| {cfg.arch} after DINO, all {cfg.epochs} epochs | {dino_acc:.1f} |",
        "",
        f"Training took {wall / 60:.1f} min wall-clock and {cpu / 60:.1f} CPU-minutes of this "
        f"process (evaluation included). k-NN accuracy after each epoch: {curve}.",
        f"Goal: DINO beats both baselines by a clear margin (taken here as at least "
        f"{CLEAR_MARGIN:.0f} points) within 5 CPU-minutes of training. Measured, over the "
        f"better baseline: after {n_budget} epochs ({strict_min:.1f} CPU-minutes with the "
        f"evaluations) {budget_margin:+.1f} points; after {n_train} epochs ({train_min:.1f} "
        f"CPU-minutes of training alone; the per-epoch k-NN evaluations took "
        f"{eval_total:.0f} CPU-seconds in all) {train_margin:+.1f} points; after all "
        f"{cfg.epochs} epochs ({cpu / 60:.1f} CPU-minutes) {margin:+.1f} points: {verdict}.",
        "",
        "![k-NN accuracy](experiments/dino_knn_accuracy.png)",
        "![teacher entropy](experiments/dino_teacher_entropy.png)",
        "",
        "Command:",
        "",
        f"    {_cli('dino', cfg, DINOConfig())}",
        "",
    ]
    return "\n".join(lines)


HELD_OUT_DINO_SEEDS = [1, 2]  # data and initialisation seeds never used to tune DINO_SMALL_DATA


def experiment_dino_seeds(quick: bool, seeds: list[int]) -> str:
    """The DINO experiment again on data seeds that played no part in choosing its settings."""
    rows, margins, met = [], [], True
    commands = []
    for seed in seeds:
        cfg = _dino_config(
            quick,
            output_dir=str(RUNS / f"dino_seed{seed}"),
            epochs=2 if quick else 60,
            seed=seed,
            plots=False,
            **DINO_SMALL_DATA,
        )
        commands.append(_cli("dino", cfg, DINOConfig()))
        run = _dino_budget_run(cfg)
        s_, t_ = run.strict, run.training
        margins.append(min(s_.margin, t_.margin))
        met = met and s_.met and t_.met
        rows.append(
            f"| {seed} | {run.pixel_acc:.1f} | {run.random_acc:.1f} | "
            f"{s_.knn:.1f} ({s_.epochs} ep., {s_.margin:+.1f}) | {t_.knn:.1f} ({t_.epochs} ep., "
            f"{t_.margin:+.1f}) | {run.dino_acc:.1f} ({run.margin:+.1f}) | {run.cpu / 60:.1f} |"
        )
    lines = [
        "## DINO on held-out data seeds",
        "",
        "The experiment above on Shapes drawn from other seeds (other images, other "
        "initialisation, same settings), which played no part in choosing those settings. "
        "k-NN top-1 (%); in brackets the epochs and the margin over the better baseline.",
        "",
        "| seed | raw pixels | random init | within 5 CPU-min, evaluations counted | within 5 "
        "CPU-min of training alone | all epochs | CPU-min |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Goal (a margin of at least {CLEAR_MARGIN:.0f} points within 5 CPU-minutes) on these "
        f"seeds: {'met on every seed and both readings' if met else 'NOT met on every seed'} "
        f"(smallest margin {min(margins):+.1f} points).",
        "",
        "Commands:",
        "",
        *[f"    {c}" for c in commands],
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- collapse


def experiment_collapse(quick: bool) -> str:
    variants = {
        "centering + sharpening": dict(),
        "sharpening only (no centering)": dict(teacher_centering="none"),
        "centering only (no sharpening)": dict(teacher_temp=0.1, warmup_teacher_temp=0.1),
        "neither": dict(teacher_centering="none", teacher_temp=0.1, warmup_teacher_temp=0.1),
    }
    runs: dict[str, Path] = {}
    rows = []
    commands = []
    epochs = 2 if quick else 6
    for i, (label, kw) in enumerate(variants.items()):
        cfg = _dino_config(quick, output_dir=str(RUNS / "collapse" / f"v{i}"), epochs=epochs, **kw)
        _fresh(Path(cfg.output_dir))
        commands.append(f"{label}: {_cli('dino', cfg, DINOConfig())}")
        record = train_dino(cfg)
        steps = [
            json.loads(x)
            for x in (Path(cfg.output_dir) / "log_steps.jsonl").read_text().splitlines()
        ]
        last = steps[-max(1, len(steps) // 10) :]  # the last tenth of the run
        rows.append(
            (
                label,
                statistics.fmean(s["teacher_entropy"] for s in last),
                statistics.fmean(s["kl_teacher_student"] for s in last),
                record["knn_top1"],
            )
        )
        runs[label] = Path(cfg.output_dir)
    log_k = math.log(_dino_config(quick).out_dim)
    plot_comparison(
        runs,
        "teacher_entropy",
        OUT / "collapse_entropy.png",
        f"Teacher entropy h(P_t) (log K = {log_k:.2f})",
        "entropy (nats)",
    )
    plot_comparison(
        runs,
        "kl_teacher_student",
        OUT / "collapse_kl.png",
        "KL(P_t || P_s) between teacher and student",
        "KL (nats)",
    )
    lines = [
        "## Collapse study (DINO paper §5.3 at small scale)",
        "",
        f"{epochs} epochs each on {_dino_config(quick).num_images} shapes; K = "
        f"{_dino_config(quick).out_dim} prototypes (log K = {log_k:.2f} nats). 'No sharpening' "
        "sets the teacher temperature to the student's (0.1); 'no centering' drops the center "
        "(`--teacher_centering none`). Entropy and KL: mean over the last tenth of the steps.",
        "",
        "| variant | teacher entropy h(P_t) (nats) | KL(P_t ‖ P_s) (nats) | final k-NN (%) |",
        "|---|---:|---:|---:|",
        *[f"| {label} | {h:.3f} | {kl:.3f} | {acc:.1f} |" for label, h, kl, acc in rows],
        "",
        "Expected (paper): without centering the entropy falls to 0 (one prototype dominates), "
        "without sharpening it rises to log K (uniform); in both cases the KL goes to 0, so "
        "the student learns nothing; with both, the KL stays positive.",
        "",
        "![teacher entropy](experiments/collapse_entropy.png)",
        "![KL](experiments/collapse_kl.png)",
        "",
        "Commands:",
        "",
        *[f"    {c}" for c in commands],
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- report


def write_report() -> Path:
    sections = [OUT / f"{name}.md" for name in EXPERIMENTS if (OUT / f"{name}.md").exists()]
    text = [
        "# Experiments",
        "",
        "Written by `experiments/run.py` (`make experiments`); do not edit by hand. Each "
        "section states the command that produced it and when; the numbers are whatever "
        "that run measured.",
        "",
        *[s.read_text() for s in sections],
    ]
    path = ROOT / "benchmarks" / "EXPERIMENTS.md"
    path.write_text("\n".join(text))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        default=",".join(EXPERIMENTS),
        help=f"comma-separated subset of {', '.join(EXPERIMENTS)} (default: all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny settings to check that the scripts run (numbers meaningless)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="seeds of the kd experiment (default: 0 1 2)",
    )
    parser.add_argument(
        "--few_label_seeds",
        type=int,
        nargs="+",
        default=list(range(10)),
        help="seeds of the kd_few_labels experiment, whose students vary more (default: 0-9)",
    )
    parser.add_argument(
        "--showcase_seeds",
        type=int,
        nargs="+",
        default=[1, 2, 3],
        help="held-out data seeds of the dino_showcase experiment (default: 1 2 3)",
    )
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="dino_showcase: report the finished runs, train nothing",
    )
    parser.add_argument(
        "--showcase_budgets",
        nargs="+",
        default=["full", "10min"],
        choices=["full", "10min"],
        help="dino_showcase budgets to run and report: the default 30 epochs (full) and/or "
        "about 10 CPU-minutes (10min) (default: both)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default: 1: on a shared or loaded machine more threads "
        "slow every step down; use 2 or more on an idle one)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    selected = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(selected) - set(EXPERIMENTS))
    if unknown:
        parser.error(f"unknown experiment(s) {unknown}; choose from {list(EXPERIMENTS)}")
    OUT.mkdir(parents=True, exist_ok=True)
    command = " ".join(
        ["python", "experiments/run.py", *(argv if argv is not None else sys.argv[1:])]
    )
    for name in selected:
        print(f"== {name} ==", flush=True)
        start, machine = time.perf_counter(), _machine()
        if name == "kd":
            body = experiment_kd(args.quick, args.seeds)
        elif name == "kd_few_labels":
            body = experiment_kd_few_labels(args.quick, args.few_label_seeds)
        elif name == "dino":
            body = experiment_dino(args.quick)
        elif name == "dino_seeds":
            body = experiment_dino_seeds(args.quick, HELD_OUT_DINO_SEEDS)
        elif name == "course_teacher":
            from course_teacher import experiment_course_teacher

            body = experiment_course_teacher(args.quick)
        elif name == "collapse_dark":
            from collapse_dark import experiment_collapse_dark

            body = experiment_collapse_dark(args.quick)
        elif name == "distill_ablation":
            from distill_ablation import experiment_distill_ablation

            body = experiment_distill_ablation(args.quick)
        elif name == "dino_showcase":
            from dino_showcase import experiment_dino_showcase

            body = experiment_dino_showcase(
                args.quick, args.showcase_seeds, args.report_only, tuple(args.showcase_budgets)
            )
        else:
            body = experiment_collapse(args.quick)
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        stamp = (
            f"_Produced by `{command}` on {now} in {time.perf_counter() - start:.0f} s; "
            f"machine: {machine}._\n\n"
        )
        if args.quick:
            stamp += "_`--quick` run: tiny settings, the numbers are not meaningful._\n\n"
        heading, _, rest = body.partition("\n")
        (OUT / f"{name}.md").write_text(f"{heading}\n\n{stamp}{rest.lstrip()}")
        print(body, flush=True)
    print(f"wrote {write_report()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
