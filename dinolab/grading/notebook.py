"""Read an nbgrader notebook (never write it) and lay out what grading will run.

An nbgrader notebook marks its cells in ``cell.metadata["nbgrader"]``:

* a *solution* cell (``solution: true``) holds the learner's code;
* an *autograded test* cell (``grade: true``, ``solution: false``) holds checks worth
  ``points``.

The grader groups cells into *exercises*: an exercise starts at a solution cell (its name is
that cell's ``grade_id``) and owns every following cell up to the next solution cell, in
particular its test cells. Code cells before the first solution cell are the notebook's
set-up (imports, data). A notebook-level ``metadata["dinolab"]["time_limit"]`` (seconds)
overrides the grader's per-exercise time limit.

Examples:
    >>> plan = read_plan("exercises/04_1_centering/04_1_centering.ipynb")  # doctest: +SKIP
    >>> [(e.name, e.possible_points) for e in plan.exercises]  # doctest: +SKIP
    [('update_center', 4.0)]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

__all__ = ["Cell", "Exercise", "NotebookPlan", "read_plan", "is_graded_notebook", "find_notebooks"]


@dataclass(frozen=True)
class Cell:
    """One code cell of the notebook, in notebook order.

    Attributes:
        index: position among ALL cells of the notebook (markdown included).
        source: the code.
        role: ``"setup"``, ``"solution"``, ``"test"`` or ``"code"`` (any other code cell).
        grade_id: nbgrader's id of the cell ("" for cells nbgrader does not track).
        points: points of a test cell (0 for the others).
    """

    index: int
    source: str
    role: str
    grade_id: str = ""
    points: float = 0.0


@dataclass
class Exercise:
    """A solution cell and the cells after it, up to the next solution cell."""

    name: str
    cells: list[Cell] = field(default_factory=list)

    @property
    def tests(self) -> list[Cell]:
        """The autograded test cells, in order."""
        return [c for c in self.cells if c.role == "test"]

    @property
    def possible_points(self) -> float:
        """Sum of the points of the test cells."""
        return float(sum(c.points for c in self.tests))


@dataclass
class NotebookPlan:
    """What grading one notebook runs: set-up cells, then exercise after exercise."""

    path: Path
    setup: list[Cell]
    exercises: list[Exercise]
    time_limit: float | None = None

    @property
    def possible_points(self) -> float:
        return float(sum(e.possible_points for e in self.exercises))


def _nbgrader_meta(cell: nbformat.NotebookNode) -> dict:
    return dict(cell.get("metadata", {}).get("nbgrader", {}))


def _is_test(meta: dict) -> bool:
    return bool(meta.get("grade")) and not bool(meta.get("solution"))


def _read(path: Path) -> nbformat.NotebookNode:
    if not path.is_file():
        raise FileNotFoundError(f"notebook not found: {path}")
    with path.open(encoding="utf-8") as fh:
        # as_version=4 keeps cells as they are; nothing is ever written back.
        return nbformat.read(fh, as_version=4)


def read_plan(path: str | os.PathLike[str]) -> NotebookPlan:
    """Parse a notebook into its set-up cells and exercises, reading the file only.

    Args:
        path: an ``.ipynb`` file with nbgrader cell metadata.

    Returns:
        A :class:`NotebookPlan`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a test cell comes before any solution cell, a test cell has negative or
            missing points, or two solution cells share a ``grade_id``.
    """
    path = Path(path)
    nb = _read(path)
    setup: list[Cell] = []
    exercises: list[Exercise] = []
    seen: set[str] = set()
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        meta = _nbgrader_meta(cell)
        grade_id = str(meta.get("grade_id", ""))
        if meta.get("solution"):
            if grade_id in seen:
                raise ValueError(f"{path}: two solution cells have grade_id {grade_id!r}")
            seen.add(grade_id)
            exercises.append(Exercise(name=grade_id or f"cell {index}"))
            exercises[-1].cells.append(Cell(index, cell.source, "solution", grade_id))
        elif _is_test(meta):
            if not exercises:
                raise ValueError(
                    f"{path}: test cell {grade_id!r} (cell {index}) comes before any solution "
                    "cell; expected every test cell to follow the solution it checks"
                )
            points = meta.get("points")
            if not isinstance(points, int | float) or points < 0:
                raise ValueError(
                    f"{path}: test cell {grade_id!r} has points={points!r}, expected a number >= 0"
                )
            exercises[-1].cells.append(Cell(index, cell.source, "test", grade_id, float(points)))
        elif exercises:
            exercises[-1].cells.append(Cell(index, cell.source, "code", grade_id))
        else:
            setup.append(Cell(index, cell.source, "setup", grade_id))
    limit = nb.metadata.get("dinolab", {}).get("time_limit")
    return NotebookPlan(
        path=path,
        setup=setup,
        exercises=exercises,
        time_limit=float(limit) if limit is not None else None,
    )


def is_graded_notebook(path: str | os.PathLike[str]) -> bool:
    """True when the notebook has at least one autograded test cell."""
    nb = _read(Path(path))
    return any(c.cell_type == "code" and _is_test(_nbgrader_meta(c)) for c in nb.cells)


def find_notebooks(paths: list[str | os.PathLike[str]]) -> list[Path]:
    """Graded notebooks under ``paths`` (files or folders), sorted, checkpoints skipped.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"no such file or folder: {p}")
        candidates = [p] if p.is_file() else sorted(p.rglob("*.ipynb"))
        for nb_path in candidates:
            if any(part.startswith(".") for part in nb_path.parts if part not in (".", "..")):
                continue  # .ipynb_checkpoints and other hidden folders
            if nb_path.suffix == ".ipynb" and is_graded_notebook(nb_path):
                found.append(nb_path)
    return found
