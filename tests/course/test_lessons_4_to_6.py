"""Static checks of lessons 4.1 to 6 (the notebooks are executed by test_lessons_run.py).

These read the committed ``.ipynb`` files only (no kernel), so they take seconds:

* the five lessons exist under their names and point to graded exercises that exist;
* every value in a parameters cell is a Python literal, so ``course_runner -p NAME=VALUE``
  (which injects literals) can override each of them;
* lesson 6's default teacher is the very file lesson 4.3 writes, inside the ignored build/;
* lesson 4.3 shows the committed course teacher (``dinolab.train.course_teacher``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
COURSE = ROOT / "course"
LESSONS = {
    "04_1_centering.ipynb": "04_1_centering",
    "04_2_sharpening.ipynb": "04_2_sharpening",
    "04_3_dino_loss_and_training_loop.ipynb": "04_3_dino_loss_and_training_loop",
    "05_knowledge_distillation.ipynb": "05_knowledge_distillation",
    "06_distilling_a_frozen_teacher.ipynb": "06_distilling_a_frozen_teacher",
}


def _read(name: str) -> nbformat.NotebookNode:
    path = COURSE / name
    assert path.is_file(), f"course/{name} is missing"
    return nbformat.read(path, as_version=4)


def _parameters(nb: nbformat.NotebookNode) -> dict[str, ast.expr]:
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged 'parameters', found {len(cells)}"
    values: dict[str, ast.expr] = {}
    for node in ast.parse(cells[0].source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, (
            f"parameters cell: line {node.lineno} is not a plain NAME = VALUE assignment"
        )
        target = node.targets[0]
        assert isinstance(target, ast.Name), f"parameters cell: line {node.lineno} is not a name"
        values[target.id] = node.value
    return values


@pytest.mark.parametrize("name, exercise", LESSONS.items())
def test_lesson_exists_and_points_to_its_exercise(name: str, exercise: str) -> None:
    nb = _read(name)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert f"exercises/{exercise}/" in markdown, f"{name} does not point to exercises/{exercise}/"
    assert (ROOT / "exercises" / exercise).is_dir(), f"exercises/{exercise}/ does not exist"


@pytest.mark.parametrize("name", LESSONS)
def test_parameters_are_literals(name: str) -> None:
    for param, value in _parameters(_read(name)).items():
        try:
            ast.literal_eval(value)
        except ValueError:
            pytest.fail(f"{name}: parameter {param} = {ast.unparse(value)} is not a literal")


def test_lesson_6_reads_the_checkpoint_lesson_4_3_writes() -> None:
    writer = _parameters(_read("04_3_dino_loss_and_training_loop.ipynb"))
    reader = _parameters(_read("06_distilling_a_frozen_teacher.ipynb"))
    written = ast.literal_eval(writer["CHECKPOINT_OUT"])
    read = ast.literal_eval(reader["LESSON_4_3_TEACHER"])
    assert written == read, f"lesson 4.3 writes {written!r} but lesson 6 reads {read!r}"
    # Lessons run with course/ as the working directory: the file must land in the ignored build/.
    assert (COURSE / written).resolve().is_relative_to(ROOT / "build"), written


def test_lesson_6_distils_the_committed_course_teacher_by_default() -> None:
    # A fresh clone has no lesson-4.3 or `make experiments` checkpoint: the default teacher must be
    # the one that ships with the package.
    nb = _read("06_distilling_a_frozen_teacher.ipynb")
    assert ast.literal_eval(_parameters(nb)["TEACHER"]) == "course"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "COURSE_TEACHER_PATH" in code


def test_lesson_4_3_shows_the_committed_course_teacher() -> None:
    # Sections 5 and 6 load dinolab/assets/course_teacher.pth and its record, not a file that
    # only exists after `make experiments`.
    nb = _read("04_3_dino_loss_and_training_loop.ipynb")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "load_course_teacher()" in code and "course_teacher_record()" in code
