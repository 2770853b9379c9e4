"""Knowledge distillation on Digits: the ``kd`` and ``kd_few_labels`` experiments.

* ``kd``: seed 004's report over several seeds: the teacher, the distilled students (with and
  without the hard-label term), their EMA copies and the label-only student.
* ``kd_few_labels``: the same when only 3% of the images keep their labels and the distilled
  students also see the rest, unlabelled; over ten seeds, with the paired difference's
  confidence interval.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from study_common import ROOT, RUNS, _cli, _fmt, _fmt_diff, _fresh

from dinolab.train.recipes.kd import KDConfig, train_kd


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

