"""Grading of the course's exercises, for learners (pytest, ``make grade``) and instructors.

* :mod:`~dinolab.grading.runner`: :func:`grade_notebook` runs a graded notebook in a fresh
  kernel and scores each autograded test cell, with a per-exercise time limit; the file is
  never modified; :func:`grade_notebooks` grades several, a few kernels at a time;
* :mod:`~dinolab.grading.report`: results, feedback messages and the score table;
* :mod:`~dinolab.grading.checks`: the checks the exercises' test cells call;
* :mod:`~dinolab.grading.references`: an answer that uses dinolab's own implementation of
  what its exercise asks for is ``refused`` (its checks score 0, the message says where);
  :mod:`~dinolab.grading.autograde` applies the same rule in nbgrader's autograder;
* :mod:`~dinolab.grading.pytest_plugin`: ``pytest exercises/`` (each check is a test item);
* :mod:`~dinolab.grading.nbgrader_flow`: the instructor's nbgrader release / collect /
  autograde / feedback / export commands;
* ``python -m dinolab.grading [PATH ...]``: what ``make grade`` runs.

Examples:
    >>> from dinolab.grading import grade_notebook, format_report
    >>> result = grade_notebook("exercises/04_1_centering/04_1_centering.ipynb")  # doctest: +SKIP
    >>> print(format_report(result))  # doctest: +SKIP
"""

from __future__ import annotations

from dinolab.grading.notebook import find_notebooks, read_plan
from dinolab.grading.report import (
    ExerciseResult,
    NotebookResult,
    TestResult,
    format_feedback,
    format_report,
    format_summary,
    format_table,
)
from dinolab.grading.runner import DEFAULT_TIME_LIMIT, grade_notebook, grade_notebooks

__all__ = [
    "DEFAULT_TIME_LIMIT",
    "ExerciseResult",
    "NotebookResult",
    "TestResult",
    "find_notebooks",
    "format_feedback",
    "format_report",
    "format_summary",
    "format_table",
    "grade_notebook",
    "grade_notebooks",
    "read_plan",
]
