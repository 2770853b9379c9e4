"""dinolab.grading.notebook: how a notebook's cells are grouped into set-up and exercises."""

from __future__ import annotations

from pathlib import Path

import pytest

from dinolab.grading.notebook import find_notebooks, is_graded_notebook, read_plan


def test_cells_are_grouped_into_setup_and_exercises(make_notebook) -> None:
    path = make_notebook([
        ("markdown", "# title"),
        ("setup", "import math"),
        ("code", "x = 1"),
        ("solution", "def f(): ...", "f"),
        ("test", "assert f() is None", "f_a", 2),
        ("markdown", "text between"),
        ("code", "y = 2"),
        ("test", "assert True", "f_b", 1.5),
        ("solution", "def g(): ...", "g"),
        ("test", "assert g() is None", "g_a", 3),
    ])
    plan = read_plan(path)
    assert [c.source for c in plan.setup] == ["import math", "x = 1"]
    assert [e.name for e in plan.exercises] == ["f", "g"]
    f, g = plan.exercises
    assert [c.role for c in f.cells] == ["solution", "test", "code", "test"]
    assert [(c.grade_id, c.points) for c in f.tests] == [("f_a", 2.0), ("f_b", 1.5)]
    assert f.possible_points == 3.5 and g.possible_points == 3.0
    assert plan.possible_points == 6.5
    assert plan.time_limit is None


def test_notebook_time_limit_is_read_from_metadata(make_notebook) -> None:
    path = make_notebook([("solution", "", "f"), ("test", "", "t", 1)], time_limit=12)
    assert read_plan(path).time_limit == 12.0


def test_test_cell_before_any_solution_is_refused(make_notebook) -> None:
    path = make_notebook([("test", "assert True", "orphan", 1)])
    with pytest.raises(ValueError, match="'orphan'.*comes before any solution"):
        read_plan(path)


def test_negative_points_are_refused(make_notebook) -> None:
    path = make_notebook([("solution", "", "f"), ("test", "", "t", -1)])
    with pytest.raises(ValueError, match="points=-1"):
        read_plan(path)


def test_duplicate_solution_ids_are_refused(make_notebook) -> None:
    path = make_notebook([("solution", "", "f"), ("solution", "", "f")])
    with pytest.raises(ValueError, match="two solution cells have grade_id 'f'"):
        read_plan(path)


def test_missing_notebook_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.ipynb"):
        read_plan(tmp_path / "nope.ipynb")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        find_notebooks([tmp_path / "nowhere"])


def test_find_notebooks_keeps_graded_ones_and_skips_checkpoints(make_notebook, tmp_path) -> None:
    graded = [("solution", "", "f"), ("test", "", "t", 1)]
    a = make_notebook(graded, name="a/ex.ipynb")
    make_notebook([("code", "print(1)")], name="a/lesson.ipynb")        # no test cell
    make_notebook(graded, name="a/.ipynb_checkpoints/ex-checkpoint.ipynb")
    b = make_notebook(graded, name="b/ex.ipynb")
    assert is_graded_notebook(a) and not is_graded_notebook(tmp_path / "a" / "lesson.ipynb")
    assert find_notebooks([tmp_path]) == [a, b]
    assert find_notebooks([b]) == [b]
