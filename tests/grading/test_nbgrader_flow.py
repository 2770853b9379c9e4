"""dinolab.grading.nbgrader_flow: the instructor's flow with the real nbgrader, end to end.

In a temporary course holding module 1's source: release, four submissions (the untouched
release; the solutions filled in; the solutions with a kd_loss that passes the visible checks
but not the hidden one; the solutions with a kd_loss that calls dinolab's own), collect, autograde,
feedback, export. The CSV must give 0, full marks, full marks minus the cell whose hidden test
fails, and full marks minus the three checks of the refused kd_loss.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nbformat
import pytest

from dinolab.grading.nbgrader_flow import (
    assignments,
    autograde,
    collect,
    export,
    feedback,
    main,
    release,
)

REPO = Path(__file__).resolve().parents[2]
AID = "01_3_contrastive_vs_distillation"
NB = f"{AID}.ipynb"

# Visible checks only use alpha=0.9; the hidden one uses alpha=0.3 (cell kd_loss_teacher_frozen).
KD_LOSS_FIXED_ALPHA = '''def kd_loss(student_logits, teacher_logits, labels=None, T=4.0, alpha=0.9):
    log_p_student = F.log_softmax(student_logits / T, dim=1)
    p_teacher = F.softmax(teacher_logits.detach() / T, dim=1)
    distill = F.kl_div(log_p_student, p_teacher, reduction="batchmean") * T * T
    if labels is None:
        return distill
    return 0.9 * distill + 0.1 * F.cross_entropy(student_logits, labels)
'''

# Passes every kd_loss check by calling the library's own kd_loss: solutions/nbgrader_config.py's
# RefuseReferenceUse must score its three checks 0 and say why.
KD_LOSS_FROM_THE_LIBRARY = '''from dinolab.losses import kd_loss as _library_kd_loss


def kd_loss(student_logits, teacher_logits, labels=None, T=4.0, alpha=0.9):
    return _library_kd_loss(student_logits, teacher_logits, labels, T=T, alpha=alpha)
'''


def _fill_in(release_nb: Path, source_nb: Path, target: Path,
             override: dict[str, str] | None = None) -> None:
    """The released notebook with each solution cell replaced by the source's (or override)."""
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source
               for c in nbformat.read(source_nb, as_version=4).cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    answers.update(override or {})
    nb = nbformat.read(release_nb, as_version=4)
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            cell.source = answers[meta["grade_id"]]
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("course")
    shutil.copytree(REPO / "solutions" / AID, root / "solutions" / AID)
    assert release(course_root=root) == [AID]
    released = root / "exercises" / AID / NB
    source = root / "solutions" / AID / NB
    inbox = root / "inbox"
    (inbox / "alice").mkdir(parents=True)
    shutil.copy(released, inbox / "alice" / NB)
    _fill_in(released, source, inbox / "bob" / NB)
    _fill_in(released, source, inbox / "carol" / NB, {"kd_loss": KD_LOSS_FIXED_ALPHA})
    _fill_in(released, source, inbox / "dave" / NB, {"kd_loss": KD_LOSS_FROM_THE_LIBRARY})
    assert collect(inbox, assignment=AID, course_root=root) == [
        ("alice", AID), ("bob", AID), ("carol", AID), ("dave", AID)]
    assert autograde(course_root=root) == [AID]
    assert feedback(course_root=root) == [AID]
    export(course_root=root)
    return root


def test_release_writes_the_stubbed_notebook(course: Path) -> None:
    released = (course / "exercises" / AID / NB).read_text()
    assert "raise NotImplementedError()" in released and "BEGIN HIDDEN TESTS" not in released
    assert (course / "exercises" / AID / "conftest.py").is_file()
    assert (course / "instructor" / "gradebook.db").is_file()


def test_grades_csv_has_zero_full_and_hidden_test_failure(course: Path) -> None:
    with (course / "instructor" / "grades.csv").open() as fh:
        rows = {r["student_id"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"alice", "bob", "carol", "dave"}
    assert {r["assignment"] for r in rows.values()} == {AID}
    assert all(float(r["max_score"]) == 17.0 for r in rows.values())
    assert float(rows["alice"]["score"]) == 0.0        # the untouched release
    assert float(rows["bob"]["score"]) == 17.0         # the solutions
    assert float(rows["carol"]["score"]) == 16.0       # hidden alpha=0.3 check fails: -1 point
    assert float(rows["dave"]["score"]) == 14.0        # kd_loss's 3 checks refused


def test_autograde_refuses_an_answer_that_calls_the_library(course: Path) -> None:
    graded = nbformat.read(course / "instructor" / "autograded" / "dave" / AID / NB, 4)
    checks = [c for c in graded.cells
              if c.metadata.get("nbgrader", {}).get("grade_id", "").startswith("kd_loss_")]
    assert len(checks) == 3
    for cell in checks:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert errors, cell.metadata["nbgrader"]["grade_id"]
        assert "kd_loss" in "\n".join(errors[0].get("traceback", []) + [errors[0].evalue])


def test_autograde_restores_hidden_tests(course: Path) -> None:
    graded = nbformat.read(course / "instructor" / "autograded" / "carol" / AID / NB, 4)
    cell = next(c for c in graded.cells
                if c.metadata.get("nbgrader", {}).get("grade_id") == "kd_loss_teacher_frozen")
    assert "alpha=0.3" in cell.source                  # hidden lines are back for grading
    assert any(o.get("output_type") == "error" for o in cell.outputs)


def test_scores_read_back_from_the_gradebook(course: Path) -> None:
    from dinolab.grading.nbgrader_flow import scores

    assert scores(AID, course) == [("alice", 0.0, 17.0), ("bob", 17.0, 17.0),
                                   ("carol", 16.0, 17.0), ("dave", 14.0, 17.0)]
    assert scores("no_such_assignment", course) == []


def test_feedback_is_written_per_student(course: Path) -> None:
    for student in ("alice", "bob", "carol", "dave"):
        html = course / "instructor" / "feedback" / student / AID / f"{AID}.html"
        assert html.is_file() and html.stat().st_size > 1000
    # The refused answer's feedback says why its checks scored 0.
    dave = (course / "instructor" / "feedback" / "dave" / AID / f"{AID}.html").read_text()
    assert "own implementation of what this" in dave.replace("&#39;", "'")


def test_feedback_hides_hidden_tests_and_tracebacks(course: Path) -> None:
    from dinolab.grading.feedback import HIDDEN_TESTS_NOTE, NOT_ATTEMPTED_FEEDBACK

    def page(student: str) -> str:
        return (course / "instructor" / "feedback" / student / AID / f"{AID}.html").read_text()

    carol = page("carol")  # fails the hidden alpha=0.3 check
    # Its code is gone (the reference call); its message, written for learners, stays.
    assert "reference.kd_loss" not in carol and "BEGIN HIDDEN TESTS" not in carol
    assert HIDDEN_TESTS_NOTE.lstrip("# ")[:40] in carol
    assert "alpha=0.3): expected 1.38401" in carol
    assert "checks.py" not in carol  # without the traceback through the checks
    assert NOT_ATTEMPTED_FEEDBACK[:40] in page("alice")  # the untouched release
    # The autograded notebook keeps everything for the instructor.
    graded = (course / "instructor" / "autograded" / "carol" / AID / NB).read_text()
    assert "reference.kd_loss(s, t, labels=y, T=2.0, alpha=0.3)" in graded
    assert "checks.py" in graded


def test_collect_validates_its_input(tmp_path: Path) -> None:
    shutil.copytree(REPO / "solutions" / AID, tmp_path / "solutions" / AID)
    assert assignments(tmp_path) == [AID]
    with pytest.raises(FileNotFoundError, match="submissions folder not found"):
        collect(tmp_path / "missing", course_root=tmp_path)
    (tmp_path / "inbox" / "dave" / "99_unknown").mkdir(parents=True)
    (tmp_path / "inbox" / "dave" / "99_unknown" / "x.ipynb").write_text("{}")
    with pytest.raises(ValueError, match="'99_unknown' is not an assignment of this course"):
        collect(tmp_path / "inbox", course_root=tmp_path)
    with pytest.raises(ValueError, match="unknown assignment 'nope'"):
        collect(tmp_path / "inbox", assignment="nope", course_root=tmp_path)
    with pytest.raises(ValueError, match="no notebooks found"):
        collect(tmp_path / "inbox", assignment=AID, course_root=tmp_path)
    with pytest.raises(FileNotFoundError, match="no solutions/ folder"):
        assignments(tmp_path / "inbox")


def test_main_reports_errors_without_a_traceback(tmp_path: Path, capsys) -> None:
    assert main(["--course-root", str(tmp_path), "release"]) == 1
    assert "no solutions/ folder" in capsys.readouterr().err


def test_collect_renames_a_single_misnamed_notebook(tmp_path: Path, capsys) -> None:
    """A Jupyter copy (``...-Copy1.ipynb``) would be skipped by nbgrader: the learner scores 0."""
    shutil.copytree(REPO / "solutions" / AID, tmp_path / "solutions" / AID)
    (tmp_path / "inbox" / "dave").mkdir(parents=True)
    shutil.copy(REPO / "exercises" / AID / NB, tmp_path / "inbox" / "dave" / f"{AID}-Copy1.ipynb")
    assert collect(tmp_path / "inbox", assignment=AID, course_root=tmp_path) == [("dave", AID)]
    got = tmp_path / "instructor" / "submitted" / "dave" / AID
    assert sorted(p.name for p in got.glob("*.ipynb")) == [NB]
    assert f"{AID}-Copy1.ipynb collected as {NB}" in capsys.readouterr().err
    # Two notebooks, one stray: both kept, the stray named in a warning.
    shutil.copy(REPO / "exercises" / AID / NB, tmp_path / "inbox" / "dave" / NB)
    collect(tmp_path / "inbox", assignment=AID, course_root=tmp_path)
    assert f"{AID}-Copy1.ipynb is not a notebook of the assignment" in capsys.readouterr().err


def test_autograde_grades_the_other_assignments_when_one_fails(monkeypatch) -> None:
    from dinolab.grading import nbgrader_flow

    ran = []

    def fake(args, course_root=None, check=True, needs_db=True):
        ran.append(args[1])
        if args[1] == "b":
            raise RuntimeError("nbgrader autograde b failed with exit code 1:\n[INFO] noise\n"
                               "[ERROR] There was an error processing assignment: b")
    monkeypatch.setattr(nbgrader_flow, "run_nbgrader", fake)
    with pytest.raises(RuntimeError, match=r"failed for 1 of 3 assignment\(s\); graded: a, c"):
        autograde(["a", "b", "c"])
    assert ran == ["a", "b", "c"]
