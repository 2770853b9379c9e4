"""Static checks of lesson 5 (knowledge distillation); test_lessons_run.py executes it.

The lesson runs the few-labels setting by default and shows, beside its own one-seed run, the
multi-seed figures of ``make experiments`` copied into its ``EXPERIMENTS`` dict. These tests read
the committed notebook only (no kernel) and check that:

* ``LABELLED_FRACTION`` is a parameter, reaches the recipe's ``KDConfig``, and defaults to the
  fraction of the few-labels experiment, so the figures shown beside the run are comparable;
* every figure in ``EXPERIMENTS`` (and each one the prose quotes) is still what
  ``benchmarks/EXPERIMENTS.md`` says, and the settings the lesson names are those the
  experiment's commands ran with (the recipe's defaults).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from dinolab.train.recipes import KDConfig

ROOT = Path(__file__).resolve().parents[2]
LESSON = ROOT / "course" / "05_knowledge_distillation.ipynb"
EXPERIMENTS_MD = ROOT / "benchmarks" / "EXPERIMENTS.md"
# Heading of the benchmarks/EXPERIMENTS.md section each LABELLED_FRACTION's figures come from.
SECTIONS = {
    0.03: "## Knowledge distillation with few labels and an unlabelled transfer set",
    1.0: "## Knowledge distillation (seed 004's report, done soundly)",
}
# Words that pick a model's row out of a section's results table.
ROWS = {
    "teacher": lambda row: row.startswith("| TeacherNet"),
    "student_labels": lambda row: row.startswith("| StudentNet") and "DistillKL" not in row,
    "student_kd": lambda row: "DistillKL only" in row,
    "student_kd_ce": lambda row: "0.9 DistillKL" in row,
}


def _notebook() -> nbformat.NotebookNode:
    return nbformat.read(LESSON, as_version=4)


def _parameters() -> dict[str, object]:
    (cell,) = [c for c in _notebook().cells if "parameters" in c.metadata.get("tags", [])]
    return {
        node.targets[0].id: ast.literal_eval(node.value)  # type: ignore[attr-defined]
        for node in ast.parse(cell.source).body
    }


def _experiments_dict() -> dict[float, dict[str, object]]:
    for cell in _notebook().cells:
        if cell.cell_type != "code" or "EXPERIMENTS = {" not in cell.source:
            continue
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "EXPERIMENTS":
                return ast.literal_eval(node.value)
    pytest.fail("course/05_knowledge_distillation.ipynb has no EXPERIMENTS = {...} literal")


def _section(heading: str) -> str:
    text = EXPERIMENTS_MD.read_text()
    assert heading in text, f"benchmarks/EXPERIMENTS.md has no section {heading!r}"
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


def test_labelled_fraction_is_a_parameter_that_reaches_the_recipe() -> None:
    params = _parameters()
    assert "LABELLED_FRACTION" in params, "lesson 5 has no LABELLED_FRACTION parameter"
    assert 0.0 < params["LABELLED_FRACTION"] < 1.0, "lesson 5 should run with few labels by default"
    code = "\n".join(c.source for c in _notebook().cells if c.cell_type == "code")
    assert "labelled_fraction=LABELLED_FRACTION" in code, "LABELLED_FRACTION never reaches KDConfig"


def test_default_fraction_is_the_few_labels_experiment() -> None:
    fraction = _parameters()["LABELLED_FRACTION"]
    assert fraction in _experiments_dict(), f"no experiment figures for the default {fraction}"
    assert f"--labelled_fraction {fraction}" in _section(SECTIONS[fraction])


@pytest.mark.parametrize("fraction", sorted(SECTIONS))
def test_experiment_figures_match_experiments_md(fraction: float) -> None:
    ref = _experiments_dict()[fraction]
    section = _section(SECTIONS[fraction])
    assert f"`{ref['command']}`" in section or f"`{ref['command']} " in section, ref["command"]
    assert f"seeds [{', '.join(str(s) for s in range(ref['seeds']))}]" in section
    main_table = section.split("\n### ", 1)[0]  # the variants' sub-section has its own table
    rows = [line for line in main_table.splitlines() if line.startswith("| ")]
    for model, is_row in ROWS.items():
        (row,) = [r for r in rows if is_row(r)]
        mean, sd = ref[model]
        accuracy = row.split("|")[3].strip()
        assert accuracy == f"{mean:.2f} ± {sd:.2f}", f"{fraction} {model}: {accuracy} in the file"
    mean, sd = ref["kd_minus_labels"]
    assert f"{mean:+.2f} ± {sd:.2f}" in section, f"paired difference {mean} ± {sd}"
    if ref["kd_ahead"]:
        assert f"ahead on {ref['kd_ahead']} seeds" in section


def test_named_settings_are_the_experiments() -> None:
    # The experiments ran `dinolab train kd` with the recipe's defaults (plus the fraction).
    defaults = KDConfig()
    expected = (
        f"{defaults.epochs} epochs, width-{defaults.teacher_width} teacher, "
        f"T = {defaults.kd_temperature:g}, alpha = {defaults.kd_alpha:g}"
    )
    for fraction, ref in _experiments_dict().items():
        assert ref["settings"] == expected, f"{fraction}: {ref['settings']!r} vs {expected!r}"
        assert f"{defaults.epochs} epochs per phase" in _section(SECTIONS[fraction])
        assert ref["mix"] == f"{defaults.kd_alpha:g} KD + {1 - defaults.kd_alpha:.1f} CE"


def test_quoted_full_label_figures_match_experiments_md() -> None:
    markdown = "\n".join(c.source for c in _notebook().cells if c.cell_type == "markdown")
    full = _section(SECTIONS[1.0])
    for quoted in re.findall(r"-\d+\.\d\d ± \d+\.\d\d", markdown):
        assert quoted in full, f"lesson 5 quotes {quoted}, not in benchmarks/EXPERIMENTS.md"
    assert "3.26 points behind" in markdown and "-3.26 ±" in full
