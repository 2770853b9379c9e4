"""pytest plugin: every autograded test cell of a graded notebook becomes a test item.

Each exercise folder has a two-line ``conftest.py`` that imports :func:`pytest_collect_file`
from here, so ``pytest exercises/`` (or one folder) grades the notebooks in it:

* items are named ``<notebook>.ipynb::<exercise>::<test cell>`` and carry their points in
  ``user_properties`` (and so in ``--junitxml`` reports);
* the notebook runs once, in a fresh kernel, when its first item runs (see
  :mod:`dinolab.grading.runner`); the file is never modified;
* a failed item shows the grader's feedback: what was expected and what the code gave;
* at the end pytest prints the score table of every graded notebook.

The per-exercise time limit comes from the environment variable ``DINOLAB_TIME_LIMIT``
(seconds), else the notebook's metadata, else 60 s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dinolab.grading.notebook import is_graded_notebook, read_plan
from dinolab.grading.report import PASSED, NotebookResult, TestResult, format_table
from dinolab.grading.runner import grade_notebook

__all__ = ["pytest_collect_file", "NotebookFile", "CheckItem", "GradingSummary"]

_SUMMARY_PLUGIN = "dinolab-grading-summary"


class GradingFailure(Exception):
    """A check that did not pass; its message is the learner's feedback."""


class GradingSummary:
    """Collects notebook results and prints their score tables at the end of the session."""

    def __init__(self) -> None:
        self.results: list[NotebookResult] = []

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.results:
            return
        terminalreporter.section("dinolab grading")
        for result in self.results:
            terminalreporter.write_line(f"{result.path}")
            terminalreporter.write_line(format_table(result))
            terminalreporter.write_line("")


class NotebookFile(pytest.File):
    """A graded notebook; runs it once and hands each check its result."""

    _result: NotebookResult | None = None

    def collect(self) -> Any:
        plan = read_plan(self.path)
        for exercise in plan.exercises:
            for cell in exercise.tests:
                item = CheckItem.from_parent(
                    self, name=f"{exercise.name}::{cell.grade_id}",
                    exercise=exercise.name, grade_id=cell.grade_id, points=cell.points,
                )
                item.user_properties.append(("points", cell.points))
                yield item

    def result(self) -> NotebookResult:
        if self._result is None:
            self._result = grade_notebook(self.path)
            summary = self.config.pluginmanager.get_plugin(_SUMMARY_PLUGIN)
            if summary is not None:
                summary.results.append(self._result)
        return self._result


class CheckItem(pytest.Item):
    """One autograded test cell."""

    def __init__(self, *, exercise: str, grade_id: str, points: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.exercise = exercise
        self.grade_id = grade_id
        self.points = points

    def _find(self) -> TestResult:
        assert isinstance(self.parent, NotebookFile)
        for test in self.parent.result().tests:
            if test.exercise == self.exercise and test.grade_id == self.grade_id:
                return test
        raise GradingFailure(f"{self.grade_id}: no result (the notebook changed while grading?)")

    def runtest(self) -> None:
        test = self._find()
        self.user_properties.append(("earned", test.earned))
        if test.status != PASSED:
            raise GradingFailure(f"[{test.status}] {test.message}")

    def repr_failure(self, excinfo: Any, style: Any = None) -> str:
        if isinstance(excinfo.value, GradingFailure):
            return f"{self.exercise} / {self.grade_id} (0 of {self.points:g} points)\n" \
                   f"{excinfo.value}"
        return str(super().repr_failure(excinfo, style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.exercise}::{self.grade_id} ({self.points:g} pt)"


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> NotebookFile | None:
    """Collect graded ``.ipynb`` files (those with autograded test cells)."""
    if file_path.suffix != ".ipynb" or ".ipynb_checkpoints" in file_path.parts:
        return None
    if not is_graded_notebook(file_path):
        return None
    manager = parent.config.pluginmanager
    if manager.get_plugin(_SUMMARY_PLUGIN) is None:
        manager.register(GradingSummary(), _SUMMARY_PLUGIN)
    return NotebookFile.from_parent(parent, path=file_path)
