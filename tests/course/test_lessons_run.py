"""Execute every lesson notebook top to bottom on a fresh kernel, as ``make course`` does.

Select or skip these with ``-m notebooks`` / ``-m "not notebooks"``. Each lesson's time is
printed (not asserted: the machine's load decides it); course/README.md lists measured times.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest

from dinolab.course_runner import check_kernel, discover_lessons, run_lesson

COURSE = Path(__file__).resolve().parents[2] / "course"
LESSONS = discover_lessons(COURSE)


def test_kernel_is_this_interpreter() -> None:
    assert Path(check_kernel("python3")).absolute() == Path(sys.executable).absolute()


@pytest.mark.notebooks
@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_lesson_runs_top_to_bottom(
    lesson: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_lesson(lesson, tmp_path, timeout=600)
    with capsys.disabled():
        print(f"\n[course] {lesson.name}: {result.seconds:.1f} s, {len(result.figures)} figures")
    assert result.ok, f"{lesson.name} failed: {result.error}"
    executed = nbformat.read(result.executed, as_version=4)
    errors = [
        o
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert not errors, f"{lesson.name}: error outputs {[e.ename for e in errors]}"
    assert result.figures, f"{lesson.name} showed no figure"
    # The committed copy stays stripped: running it must not have written back to course/.
    committed = nbformat.read(lesson, as_version=4)
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code")
