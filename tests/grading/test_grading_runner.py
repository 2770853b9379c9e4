"""dinolab.grading.runner: running a notebook in a kernel and scoring each check.

One notebook holds every kind of learner code the grader must survive: correct, a stub not
attempted, code that raises, a wrong answer, a hang that an interrupt stops, a hang that
ignores interrupts (the kernel is restarted), and a call that kills the kernel. It is graded
once per module; each test reads one aspect of the result.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from dinolab.grading import runner
from dinolab.grading.report import (
    ERROR,
    FAILED,
    NOT_ATTEMPTED,
    NOT_RUN,
    PASSED,
    TIME_LIMIT,
    NotebookResult,
)
from dinolab.grading.runner import grade_notebook

TIME_LIMIT_S = 2.0  # per exercise; every check below takes milliseconds unless it hangs

CELLS = [
    ("markdown", "# A notebook with every kind of answer"),
    ("setup", "import os\nimport sys"),
    ("solution", "def good(x):\n    return x + 1", "good"),
    ("test", "assert good(1) == 2", "good_value", 2),
    ("test", "assert good(-1) == 0", "good_zero", 1),
    ("solution", "def stub(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()", "stub"),
    ("test", "assert stub(1) == 2", "stub_value", 1),
    ("solution", "def raising(x):\n    y = x\n    return y / 0", "raising"),
    ("test", "assert raising(1) == 2", "raising_value", 1),
    # Past line 9 IPython marks the line with a shorter arrow ("---> 12" instead of "----> 3").
    ("solution", "def raising_far(x):\n" + "    # a comment\n" * 10 + "    return x[0]",
     "raising_far"),
    ("test", "assert raising_far(1) == 2", "raising_far_value", 1),
    ("solution", "def wrong(x):\n    return x", "wrong"),
    ("test", "assert wrong(1) == 2, f'wrong(1): expected 2, your code gave {wrong(1)}'",
     "wrong_message", 1),
    ("test", "assert wrong(1) == 2", "wrong_bare", 1),
    ("solution", "def hang():\n    while True:\n        pass", "hang"),
    ("test", "hang()", "hang_first", 1),
    ("test", "assert True", "hang_second", 1),
    ("solution", "def after_hang():\n    return good(2)", "after_hang"),
    ("test", "assert after_hang() == 3", "after_hang_value", 1),
    ("solution",
     "import signal\nimport time\n\ndef deaf_hang():\n"
     "    signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupts cannot stop it\n"
     "    while True:\n        time.sleep(0.05)", "deaf_hang"),
    ("test", "deaf_hang()", "deaf_hang_call", 1),
    ("solution", "def after_restart():\n    return good(3)", "after_restart"),
    ("test", "assert after_restart() == 4", "after_restart_value", 1),
    ("solution", "def dies():\n    os._exit(3)", "dies"),
    ("test", "dies()", "dies_call", 1),
    ("solution", "def broken(:\n    pass", "broken"),
    ("test", "assert broken() is None", "broken_call", 1),
    ("solution", "EXE = sys.executable\nCWD = os.getcwd()", "environment"),
    ("test", f"assert EXE == {sys.executable!r}, EXE", "environment_python", 1),
    ("test", "assert os.path.isfile('exercise.ipynb'), CWD", "environment_cwd", 1),
]


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory, notebook_writer) -> tuple[Path, bytes,
                                                                                NotebookResult]:
    path = notebook_writer(tmp_path_factory.mktemp("runner") / "exercise.ipynb", CELLS)
    before = path.read_bytes()
    patch = pytest.MonkeyPatch()
    patch.setattr(runner, "_PROBE_TIMEOUT", 2)  # the deaf hang need not wait the default 10 s
    try:
        result = grade_notebook(path, time_limit=TIME_LIMIT_S)
    finally:
        patch.undo()
    return path, before, result


def _tests(result: NotebookResult) -> dict[str, tuple[str, str]]:
    return {t.grade_id: (t.status, t.message) for t in result.tests}


def test_the_learners_file_is_unchanged(graded) -> None:
    path, before, _ = graded
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(before).digest()
    assert sorted(p.name for p in path.parent.iterdir()) == ["exercise.ipynb"]


def test_correct_code_earns_its_points(graded) -> None:
    result = graded[2]
    tests = _tests(result)
    assert tests["good_value"] == (PASSED, "") and tests["good_zero"] == (PASSED, "")
    good = result.exercises[0]
    assert (good.name, good.earned, good.possible) == ("good", 3.0, 3.0)


def test_stub_scores_zero_as_not_attempted(graded) -> None:
    status, message = _tests(graded[2])["stub_value"]
    assert status == NOT_ATTEMPTED and message.startswith("not attempted yet")


def test_raising_code_reports_the_errors_last_line_and_where(graded) -> None:
    status, message = _tests(graded[2])["raising_value"]
    assert status == ERROR
    assert "your code raised ZeroDivisionError: division by zero" in message
    assert "in your `raising` cell, line 3: return y / 0" in message
    status, message = _tests(graded[2])["raising_far_value"]
    assert status == ERROR and "in your `raising_far` cell, line 12: return x[0]" in message


def test_failed_check_shows_its_message_or_the_failing_line(graded) -> None:
    tests = _tests(graded[2])
    assert tests["wrong_message"] == (FAILED, "wrong(1): expected 2, your code gave 1")
    status, message = tests["wrong_bare"]
    assert status == FAILED and "in the check `wrong_bare`, line 1: assert wrong(1) == 2" in message


def test_hang_is_stopped_at_the_time_limit_and_grading_goes_on(graded) -> None:
    tests = _tests(graded[2])
    status, message = tests["hang_first"]
    assert status == TIME_LIMIT and f"time limit of {TIME_LIMIT_S:g} s" in message
    assert tests["hang_second"][0] == TIME_LIMIT          # the exercise's time is used up
    assert tests["after_hang_value"] == (PASSED, "")      # the same kernel still works


def test_hang_that_ignores_interrupts_restarts_the_kernel(graded) -> None:
    tests = _tests(graded[2])
    assert tests["deaf_hang_call"][0] == TIME_LIMIT
    # A fresh kernel replayed the earlier cells: `good` is defined again.
    assert tests["after_restart_value"] == (PASSED, "")


def test_kernel_death_is_reported_and_grading_goes_on(graded) -> None:
    tests = _tests(graded[2])
    status, message = tests["dies_call"]
    assert status == ERROR and "kernel died" in message
    assert tests["environment_python"] == (PASSED, "")


def test_solution_cell_that_does_not_run_blocks_its_checks(graded) -> None:
    status, message = _tests(graded[2])["broken_call"]
    assert status == ERROR and message.startswith("not run: your `broken` cell raised SyntaxError")


def test_kernel_is_this_python_in_the_notebooks_folder(graded) -> None:
    tests = _tests(graded[2])
    assert tests["environment_python"] == (PASSED, "")
    assert tests["environment_cwd"] == (PASSED, "")


def test_total(graded) -> None:
    result = graded[2]
    # good 3 + after_hang 1 + after_restart 1 + environment 2; every other check scores 0.
    assert (result.earned, result.possible) == (7.0, 17.0)
    assert result.problem == ""


def test_failing_setup_cell_marks_every_check_not_run(make_notebook) -> None:
    path = make_notebook([
        ("setup", "import dinolab_no_such_module"),
        ("solution", "def f():\n    return 1", "f"),
        ("test", "assert f() == 1", "f_one", 1),
        ("test", "assert f() != 2", "f_two", 1),
    ])
    result = grade_notebook(path, time_limit=5)
    assert [t.status for t in result.tests] == [NOT_RUN, NOT_RUN]
    assert result.earned == 0 and result.possible == 2
    assert "ModuleNotFoundError: No module named 'dinolab_no_such_module'" in result.problem
    assert result.tests[0].message == result.problem


def test_bad_time_limits_are_refused(make_notebook, monkeypatch) -> None:
    path = make_notebook([("solution", "", "f"), ("test", "", "t", 1)])
    with pytest.raises(ValueError, match="time_limit must be a positive number of seconds"):
        grade_notebook(path, time_limit=0)
    monkeypatch.setenv("DINOLAB_TIME_LIMIT", "soon")
    with pytest.raises(ValueError, match="DINOLAB_TIME_LIMIT='soon' is not a number"):
        grade_notebook(path)


def test_grade_notebooks_refuses_zero_jobs() -> None:
    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        runner.grade_notebooks([], jobs=0)
    assert runner.grade_notebooks([]) == []
    assert 1 <= runner.default_jobs() <= 4
