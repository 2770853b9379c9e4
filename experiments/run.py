"""The course's experiments, measured and written to ``benchmarks/EXPERIMENTS.md``.

Usage (from the repository root; ``make experiments`` runs them all)::

    python experiments/run.py                      # all nine experiments
    python experiments/run.py --only dino --quick  # a fast smoke run (numbers not meaningful)

* ``kd``: seed 004's report over several seeds: accuracy and parameter count of the teacher,
  the distilled students (with and without the hard-label term), their EMA copies and the
  label-only student, mean and standard deviation over the seeds (``experiments/kd_study.py``).
* ``kd_few_labels``: the same four phases when only 3% of the images keep their labels and
  the distilled students also see the rest, unlabelled; over ten seeds, with the paired
  difference's confidence interval (``experiments/kd_study.py``).
* ``dino``: DINO on the synthetic shapes within a few CPU minutes; k-NN accuracy of the DINO
  teacher's features against the same backbone at random initialisation and raw pixels.
* ``dino_seeds``: the same run on two data seeds that played no part in tuning its settings
  (both in ``experiments/dino_budget.py``).
* ``collapse``: the DINO paper's study at small scale: centering and sharpening, only one of
  them, neither; teacher entropy and KL curves and final k-NN accuracy for each
  (``experiments/collapse_study.py``).
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
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from collapse_study import experiment_collapse  # noqa: E402
from dino_budget import HELD_OUT_DINO_SEEDS, experiment_dino, experiment_dino_seeds  # noqa: E402
from kd_study import experiment_kd, experiment_kd_few_labels  # noqa: E402
from study_common import OUT  # noqa: E402

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
