"""Helpers of the grading tests: build small nbgrader notebooks without Jupyter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest


def nbgrader_cell(
    kind: str, source: str, grade_id: str = "", points: float = 0
) -> nbformat.NotebookNode:
    """A code cell with nbgrader metadata of ``kind`` "setup", "solution", "test" or "code"."""
    cell = nbformat.v4.new_code_cell(source)
    meta = {"schema_version": 3, "task": False, "grade_id": grade_id}
    if kind == "solution":
        meta.update(grade=False, solution=True, locked=False)
    elif kind == "test":
        meta.update(grade=True, solution=False, locked=True, points=points)
    elif kind == "setup":
        meta.update(grade=False, solution=False, locked=True, grade_id=grade_id or "setup")
    else:
        return cell
    cell.metadata["nbgrader"] = meta
    return cell


def write_notebook(
    path: Path, cells: list[tuple], time_limit: float | None = None
) -> Path:
    """Write a notebook of ``(kind, source[, grade_id[, points]])`` tuples to ``path``.

    ``kind`` is "markdown", "setup", "solution", "test" or "code".
    """
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    if time_limit is not None:
        nb.metadata["dinolab"] = {"time_limit": time_limit}
    for spec in cells:
        if spec[0] == "markdown":
            nb.cells.append(nbformat.v4.new_markdown_cell(spec[1]))
        else:
            nb.cells.append(nbgrader_cell(spec[0], spec[1], *spec[2:]))
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def make_notebook(tmp_path: Path) -> Callable[..., Path]:
    """``make_notebook(cells, name="exercise.ipynb", time_limit=None)`` -> path under tmp_path."""

    def make(cells: list[tuple], name: str = "exercise.ipynb",
             time_limit: float | None = None) -> Path:
        return write_notebook(tmp_path / name, cells, time_limit)

    return make


@pytest.fixture(scope="session")
def notebook_writer() -> Callable[..., Path]:
    """:func:`write_notebook`, for module-scoped fixtures."""
    return write_notebook
