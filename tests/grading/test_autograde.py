"""dinolab.grading.autograde: nbgrader's autograder refuses what the learner grader refuses."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbgrader.utils import determine_grade, is_grade

from dinolab.grading.autograde import REFUSED_ENAME, RefuseReferenceUse, refuse_reference_use

REPO = Path(__file__).resolve().parents[2]
ASSIGNMENT = "01_3_contrastive_vs_distillation"


def _source(answer: str | None = None) -> nbformat.NotebookNode:
    nb = nbformat.read(REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    if answer is not None:
        (cell,) = [c for c in nb.cells
                   if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "byol_loss"]
        cell.source = answer
    return nb


def _grades(nb: nbformat.NotebookNode) -> dict[str, float]:
    return {c.metadata.nbgrader.grade_id: determine_grade(c)[0] for c in nb.cells
            if c.cell_type == "code" and is_grade(c)}


def test_honest_answers_are_left_alone() -> None:
    nb = _source()
    assert refuse_reference_use(nb, ASSIGNMENT) == []
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_a_refused_answer_scores_zero_in_nbgrader_with_its_message() -> None:
    nb = _source("import dinolab.losses as L\n\n"
                 "def byol_loss(p, z):\n    return L.byol_loss(p, z)\n")
    full = _grades(_source())
    nb, _ = RefuseReferenceUse().preprocess(nb, {"nbgrader": {"assignment": ASSIGNMENT}})
    grades = _grades(nb)
    assert grades["byol_loss_values"] == grades["byol_loss_stop_gradient"] == 0
    assert {k: v for k, v in grades.items() if not k.startswith("byol")} == {
        k: v for k, v in full.items() if not k.startswith("byol")}
    (cell,) = [c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id")
               == "byol_loss_values"]
    (error,) = cell.outputs
    assert error.ename == REFUSED_ENAME
    assert "line 4: return L.byol_loss(p, z)" in error.evalue
