"""dinolab.grading.report: the score table and the feedback text."""

from __future__ import annotations

from pathlib import Path

from dinolab.grading.report import (
    ERROR,
    FAILED,
    NOT_ATTEMPTED,
    NOT_ATTEMPTED_MESSAGE,
    PASSED,
    ExerciseResult,
    NotebookResult,
    TestResult,
    format_feedback,
    format_report,
    format_summary,
    format_table,
)


def _stub(grade_id: str, points: float) -> TestResult:
    return TestResult("stub", grade_id, points, NOT_ATTEMPTED, NOT_ATTEMPTED_MESSAGE)


def _result() -> NotebookResult:
    return NotebookResult(
        path=Path("ex.ipynb"),
        exercises=[
            ExerciseResult("good", [TestResult("good", "g1", 2, PASSED),
                                    TestResult("good", "g2", 1, PASSED)]),
            ExerciseResult("stub", [_stub("s1", 1), _stub("s2", 2)]),
            ExerciseResult("mixed", [TestResult("mixed", "m1", 1, PASSED),
                                     TestResult("mixed", "m2", 1.5, FAILED, "expected 1, got 2"),
                                     TestResult("mixed", "m3", 1, ERROR, "your code raised X")]),
        ],
    )


def test_points_add_up() -> None:
    result = _result()
    assert [(e.earned, e.possible) for e in result.exercises] == [(3, 3), (0, 3), (1, 3.5)]
    assert (result.earned, result.possible) == (4, 9.5)


def test_table_rows() -> None:
    lines = format_table(_result()).splitlines()
    rows = {line.split()[0]: line for line in lines if line.strip() and line.split()[0] != "-" * 3}
    assert "3 / 3" in rows["good"] and rows["good"].endswith("passed")
    assert "0 / 3" in rows["stub"] and rows["stub"].endswith("not attempted yet")
    assert "1 / 3.5" in rows["mixed"] and rows["mixed"].endswith("error (1/3 checks pass)")
    assert "4 / 9.5" in rows["total"]


def test_feedback_lists_each_problem_once() -> None:
    text = format_feedback(_result())
    assert "good" not in text
    assert text.count("not attempted yet") == 1                  # s1 and s2 share one paragraph
    assert "stub / s1, s2 (3 pt, not attempted):" in text
    assert "mixed / m2 (1.5 pt, failed):\n      expected 1, got 2" in text
    assert "mixed / m3 (1 pt, error):" in text


def test_report_and_summary() -> None:
    result = _result()
    report = format_report(result)
    assert report.startswith("ex.ipynb") and "What to fix:" in report
    perfect = NotebookResult(Path("p.ipynb"),
                             [ExerciseResult("a", [TestResult("a", "t", 1, PASSED)])])
    assert "All checks pass" in format_report(perfect)
    assert "nbgrader adds hidden checks" in format_report(perfect)  # why autograding may differ
    summary = format_summary([result, perfect]).splitlines()
    assert summary[-1].split()[-3:] == ["5", "/", "10.5"]
