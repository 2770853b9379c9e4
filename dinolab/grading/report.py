"""Grading results and how they read: statuses, feedback messages, the score table.

Every autograded test cell ends in one :class:`TestResult` with a status:

========================  ====================================================================
``passed``                the cell ran without an error: its points are earned
``failed``                a check did not hold (``AssertionError``): the check's own message
                          says what was expected and what the learner's code gave
``not attempted``         the learner's code still raises ``NotImplementedError`` (the stub)
``error``                 the learner's code (or the check) raised another exception; the
                          message is the error's last line and where it happened
``time limit``            the exercise ran past its time limit and was stopped
``refused``               the solution cell uses dinolab's own implementation of what the
                          exercise asks for (see :mod:`dinolab.grading.references`); its checks
                          do not run and score 0
``not run``               an earlier problem (a set-up cell, the solution cell itself) meant the
                          check could not run; the message says which
========================  ====================================================================
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PASSED",
    "FAILED",
    "NOT_ATTEMPTED",
    "ERROR",
    "TIME_LIMIT",
    "NOT_RUN",
    "REFUSED",
    "TestResult",
    "ExerciseResult",
    "NotebookResult",
    "format_table",
    "format_feedback",
    "format_report",
    "format_summary",
]

PASSED = "passed"
FAILED = "failed"
NOT_ATTEMPTED = "not attempted"
ERROR = "error"
TIME_LIMIT = "time limit"
NOT_RUN = "not run"
REFUSED = "refused"

NOT_ATTEMPTED_MESSAGE = (
    "not attempted yet: the stub still raises NotImplementedError; replace that line "
    "with your code"
)


def _fmt_points(x: float) -> str:
    return f"{x:g}"


@dataclass
class TestResult:
    """Outcome of one autograded test cell.

    Attributes:
        exercise: name of the exercise (the solution cell's ``grade_id``).
        grade_id: the test cell's ``grade_id``.
        points: points the cell is worth.
        status: one of the module's status constants.
        message: feedback for the learner ("" when passed).
        seconds: wall-clock time the cell ran (0 when it did not run).
    """

    __test__ = False  # not a pytest test class, despite its name

    exercise: str
    grade_id: str
    points: float
    status: str
    message: str = ""
    seconds: float = 0.0

    @property
    def earned(self) -> float:
        return self.points if self.status == PASSED else 0.0


@dataclass
class ExerciseResult:
    """Outcome of one exercise: its test results in notebook order."""

    name: str
    tests: list[TestResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def earned(self) -> float:
        return float(sum(t.earned for t in self.tests))

    @property
    def possible(self) -> float:
        return float(sum(t.points for t in self.tests))

    @property
    def status(self) -> str:
        """One word for the table: the exercise's worst problem, or ``passed``."""
        statuses = {t.status for t in self.tests}
        if not statuses:
            return "no checks"
        if statuses == {PASSED}:
            return PASSED
        if statuses == {NOT_ATTEMPTED}:
            return "not attempted yet"
        for s in (REFUSED, TIME_LIMIT, ERROR, NOT_RUN, FAILED, NOT_ATTEMPTED):
            if s in statuses:
                passed = sum(t.status == PASSED for t in self.tests)
                return f"{s} ({passed}/{len(self.tests)} checks pass)"
        return FAILED


@dataclass
class NotebookResult:
    """Outcome of grading one notebook (the file itself is never modified)."""

    path: Path
    exercises: list[ExerciseResult] = field(default_factory=list)
    problem: str = ""  # a notebook-wide problem: kernel failed to start, a set-up cell failed
    seconds: float = 0.0

    @property
    def earned(self) -> float:
        return float(sum(e.earned for e in self.exercises))

    @property
    def possible(self) -> float:
        return float(sum(e.possible for e in self.exercises))

    @property
    def tests(self) -> list[TestResult]:
        return [t for e in self.exercises for t in e.tests]


def format_table(result: NotebookResult) -> str:
    """The score table of one notebook: exercise, points earned / possible, result."""
    rows = [(e.name, f"{_fmt_points(e.earned)} / {_fmt_points(e.possible)}", e.status)
            for e in result.exercises]
    total = ("total", f"{_fmt_points(result.earned)} / {_fmt_points(result.possible)}", "")
    header = ("exercise", "points", "result")
    widths = [max(len(r[i]) for r in [header, total, *rows]) for i in range(3)]

    def line(r: tuple[str, str, str]) -> str:
        return f"  {r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]}".rstrip()

    rule = "  " + "-" * (widths[0] + widths[1] + max(widths[2], 6) + 4)
    return "\n".join([line(header), rule, *map(line, rows), rule, line(total)])


def format_feedback(result: NotebookResult) -> str:
    """One paragraph per check that did not pass; "" when everything passed."""
    parts: list[str] = []
    if result.problem:
        parts.append(textwrap.indent(result.problem, "  "))
    for exercise in result.exercises:
        failing = [t for t in exercise.tests if t.status != PASSED]
        # Checks of one exercise that fail for the same reason (a stub not attempted yet, a
        # solution cell that raised) are reported once.
        groups: list[list[TestResult]] = []
        for t in failing:
            if groups and (groups[-1][0].status, groups[-1][0].message) == (t.status, t.message):
                groups[-1].append(t)
            else:
                groups.append([t])
        for group in groups:
            ids = ", ".join(t.grade_id for t in group)
            points = _fmt_points(sum(t.points for t in group))
            head = f"  {exercise.name} / {ids} ({points} pt, {group[0].status}):"
            body = textwrap.indent(group[0].message.strip() or "(no message)", "      ")
            parts.append(f"{head}\n{body}")
    return "\n".join(parts)


HIDDEN_CHECKS_NOTE = (
    "These are the checks in your notebook. When your instructor grades it, nbgrader adds hidden "
    "checks to some cells (other inputs), which can find a case these miss."
)


def format_report(result: NotebookResult) -> str:
    """Title, table and feedback of one notebook, as ``make grade`` prints them."""
    title = f"{result.path}  ({result.seconds:.1f} s)"
    out = [title, format_table(result)]
    feedback = format_feedback(result)
    if feedback:
        out += ["", "  What to fix:", feedback]
    elif result.possible > 0:
        out += ["", "  All checks pass. Well done!"]
    if result.possible > 0:
        out += ["", f"  {HIDDEN_CHECKS_NOTE}"]
    return "\n".join(out)


def format_summary(results: list[NotebookResult]) -> str:
    """One line per notebook and the grand total (only useful for several notebooks)."""
    rows = [(str(r.path), f"{_fmt_points(r.earned)} / {_fmt_points(r.possible)}")
            for r in results]
    earned = sum(r.earned for r in results)
    possible = sum(r.possible for r in results)
    rows.append(("total", f"{_fmt_points(earned)} / {_fmt_points(possible)}"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"  {a:<{w0}}  {b:>{w1}}" for a, b in rows)
