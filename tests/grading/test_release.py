"""solutions/ and exercises/: the release is generated, clean, and its checks are sound.

The first test regenerates the release with the real `nbgrader generate_assignment` and fails
when exercises/ differs from it, so the two cannot drift apart.
"""

from __future__ import annotations

import ast
import builtins
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from dinolab.grading import nbgrader_flow
from dinolab.grading.checks import answer_digest
from dinolab.grading.nbgrader_flow import assignments, release_differences

REPO = Path(__file__).resolve().parents[2]
ASSIGNMENTS = assignments(REPO)


def _cells(stage: str, assignment: str) -> list[nbformat.NotebookNode]:
    return nbformat.read(REPO / stage / assignment / f"{assignment}.ipynb", as_version=4).cells


def _meta(cell: nbformat.NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def _is_test(cell: nbformat.NotebookNode) -> bool:
    return bool(_meta(cell).get("grade")) and not _meta(cell).get("solution")


def test_exercises_are_the_release_of_solutions() -> None:
    problems = release_differences(REPO)
    assert problems == [], (
        "exercises/ is not the release of solutions/ (instructors: `make release` regenerates "
        "it, overwriting exercises/; a learner's filled-in exercises also differ):\n"
        + "\n".join(problems)
    )


def test_release_comparison_notices_edits(tmp_path: Path, monkeypatch) -> None:
    """The comparison itself, with nbgrader replaced by a copy of the committed release."""
    aid = "04_1_centering"
    shutil.copytree(REPO / "solutions" / aid, tmp_path / "solutions" / aid)
    shutil.copytree(REPO / "exercises" / aid, tmp_path / "exercises" / aid)

    def fake_release(course_root: Path, release_dir: str, use_db: bool) -> list[str]:
        shutil.copytree(REPO / "exercises" / aid, Path(release_dir) / aid)
        return [aid]

    monkeypatch.setattr(nbgrader_flow, "release", fake_release)
    assert nbgrader_flow.release_differences(tmp_path) == []
    released = tmp_path / "exercises" / aid / f"{aid}.ipynb"
    nb = nbformat.read(released, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if _is_test(c))
    nb.cells[index].source += "\nassert True  # edited by hand"
    nbformat.write(nb, released)
    (tmp_path / "exercises" / aid / "notes.txt").write_text("extra")
    (tmp_path / "exercises" / aid / "conftest.py").unlink()
    problems = nbgrader_flow.release_differences(tmp_path)
    assert problems == [
        f"missing from {tmp_path / 'exercises'}: {aid}/conftest.py",
        f"in {tmp_path / 'exercises'} but not generated from solutions/: {aid}/notes.txt",
        f"{aid}/{aid}.ipynb: cell {index} differs (source)",
    ]


@pytest.mark.parametrize("stage", ["solutions", "exercises"])
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_notebooks_are_committed_without_outputs(stage: str, assignment: str) -> None:
    for cell in _cells(stage, assignment):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, _meta(cell)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_source_has_solutions_points_and_hidden_tests(assignment: str) -> None:
    cells = _cells("solutions", assignment)
    solutions = [c for c in cells if _meta(c).get("solution")]
    tests = [c for c in cells if _is_test(c)]
    assert solutions and tests
    for cell in solutions:
        assert "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source
    assert all(_meta(c)["points"] > 0 for c in tests)
    assert any("### BEGIN HIDDEN TESTS" in c.source for c in tests)
    assert (REPO / "solutions" / assignment / "conftest.py").is_file()


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_has_stubs_and_no_answers(assignment: str) -> None:
    for cell in _cells("exercises", assignment):
        text = cell.source
        assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
        if _meta(cell).get("solution"):
            assert "raise NotImplementedError()" in text


def _names(tree: ast.AST, ctx: type) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ctx)}


def _bound(tree: ast.AST) -> set[str]:
    names = _names(tree, ast.Store)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        if isinstance(node, ast.FunctionDef | ast.Lambda):
            names |= {a.arg for a in node.args.args + node.args.kwonlyargs}
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {a.asname or a.name.split(".")[0] for a in node.names}
        if isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_each_check_stands_on_its_own(assignment: str) -> None:
    """A test cell uses only names from non-test cells or from itself.

    Otherwise a failing check would make the next one fail with a NameError that says nothing
    about the learner's code.
    """
    available = set(dir(builtins))
    for cell in _cells("solutions", assignment):
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        if _is_test(cell):
            missing = _names(tree, ast.Load) - available - _bound(tree)
            grade_id = _meta(cell)["grade_id"]
            assert not missing, f"{grade_id} uses {sorted(missing)} from another check"
        else:
            available |= _bound(tree)


def test_module_1_quiz_has_five_auto_graded_questions() -> None:
    cells = _cells("exercises", "01_3_contrastive_vs_distillation")
    quiz = [_meta(c)["grade_id"] for c in cells if _is_test(c) and "check_choice" in c.source]
    assert quiz == [f"quiz_q{i}" for i in range(1, 6)]


QUIZ_QUESTION = re.compile(r"^\*\*(q\d)\.\*\*", re.M)
QUIZ_OPTION = re.compile(r"^\* \(([a-d])\) (.+(?:\n  .+)*)", re.M)
QUIZ_KEY = re.compile(r'check_choice\(quiz_answers\(\), "(q\d)", "([0-9a-f]{16})"')
QUIZZES = [a for a in ASSIGNMENTS
           if any(_is_test(c) and QUIZ_KEY.search(c.source) for c in _cells("exercises", a))]


@pytest.mark.parametrize("assignment", QUIZZES)
def test_graded_quizzes_have_no_giveaway(assignment: str) -> None:
    """The checks of tests/course/test_lesson_content.py, on a released quiz (issue 17).

    The right letter of each question is the one whose ``answer_digest`` is the key in its
    ``check_choice`` cell; it is not usually the longest option, nor always in one place.
    """
    cells = _cells("exercises", assignment)
    keys = dict(QUIZ_KEY.findall("\n".join(c.source for c in cells if _is_test(c))))
    text = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    parts = QUIZ_QUESTION.split(text)[1:]
    options = {q: {k: " ".join(v.split()) for k, v in QUIZ_OPTION.findall(block)}
               for q, block in zip(parts[::2], parts[1::2], strict=True)}
    assert sorted(options) == sorted(keys), f"questions {sorted(options)}, keys {sorted(keys)}"
    answers = {}
    for q, digest in keys.items():
        assert sorted(options[q]) == ["a", "b", "c", "d"], f"{q}: options {options[q]}"
        right = [a for a in options[q] if answer_digest(q, a) == digest]
        assert len(right) == 1, f"{q}: the key {digest} matches {right or 'no letter'}"
        answers[q] = right[0]
    assert len(set(answers.values())) >= 3, f"right answers by question: {answers}"
    longest = [q for q, a in answers.items()
               if len(options[q][a]) > max(len(v) for k, v in options[q].items() if k != a)]
    assert len(longest) <= len(answers) // 2, (
        f"the right answer is the longest option in {longest}; make the wrong options as long "
        "and as plausible"
    )
