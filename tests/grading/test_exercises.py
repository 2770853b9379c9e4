"""The course's exercises: solutions/ earns full marks, the untouched exercises/ earns 0.

Every assignment is graded twice with the learner grader, two kernels at a time: its source in
solutions/ (hidden tests included) and its release in exercises/ (stubs not attempted).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dinolab.grading.nbgrader_flow import assignments
from dinolab.grading.report import NOT_ATTEMPTED, NotebookResult
from dinolab.grading.runner import grade_notebooks

REPO = Path(__file__).resolve().parents[2]
ASSIGNMENTS = assignments(REPO)


def _notebook(stage: str, assignment: str) -> Path:
    return REPO / stage / assignment / f"{assignment}.ipynb"


@pytest.fixture(scope="module")
def graded() -> dict[tuple[str, str], tuple[NotebookResult, bool]]:
    """(stage, assignment) -> (result, whether the file was unchanged by grading)."""
    paths = [_notebook(stage, a) for a in ASSIGNMENTS for stage in ("solutions", "exercises")]
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    results = grade_notebooks(paths, jobs=2)
    after = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    return {(p.parts[-3], p.parts[-2]): (r, b == a)
            for p, r, b, a in zip(paths, results, before, after, strict=True)}


def test_every_lesson_of_modules_1_to_6_and_the_capstone_has_an_assignment() -> None:
    assert ASSIGNMENTS == [
        "01_3_contrastive_vs_distillation",
        "02_backbones",
        "03_1_student_teacher",
        "03_2_multicrop",
        "03_3_projection_heads",
        "04_1_centering",
        "04_2_sharpening",
        "04_3_dino_loss_and_training_loop",
        "05_knowledge_distillation",
        "06_distilling_a_frozen_teacher",
        "07_capstone",
    ]


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solutions_earn_full_marks(graded, assignment: str) -> None:
    result, unchanged = graded[("solutions", assignment)]
    assert result.problem == ""
    assert result.possible > 0
    for exercise in result.exercises:
        problems = [f"{t.grade_id}: {t.status}: {t.message}" for t in exercise.tests
                    if t.earned != t.points]
        assert exercise.earned == exercise.possible > 0, problems
    assert unchanged


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_untouched_exercises_earn_zero_as_not_attempted(graded, assignment: str) -> None:
    result, unchanged = graded[("exercises", assignment)]
    assert result.problem == ""
    solution = graded[("solutions", assignment)][0]
    # The release has the same exercises; hidden tests add no cells, only lines, so the
    # visible points equal the source's.
    assert [e.name for e in result.exercises] == [e.name for e in solution.exercises]
    assert result.possible == solution.possible
    for exercise in result.exercises:
        assert exercise.earned == 0
        assert {t.status for t in exercise.tests} == {NOT_ATTEMPTED}, exercise.name
        assert exercise.status == "not attempted yet"
    assert unchanged
