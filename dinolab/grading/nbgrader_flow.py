"""The instructor's nbgrader flow, one command per stage, as the Makefile calls it.

Course layout (nbgrader's stages, one folder each; settings in ``solutions/nbgrader_config.py``):

==========================================  ===============================================
``solutions/<assignment>/``                 source: solutions and hidden tests (committed)
``exercises/<assignment>/``                 release: what learners get (committed, generated)
``instructor/submitted/<student>/<a>/``     collected submissions
``instructor/autograded/<student>/<a>/``    executed and scored copies
``instructor/feedback/<student>/<a>/``      HTML feedback to hand back
``instructor/gradebook.db``, ``grades.csv``  nbgrader's database and the exported grades
==========================================  ===============================================

Commands (``python -m dinolab.grading.nbgrader_flow COMMAND``):

* ``release [ASSIGNMENT ...]``: ``nbgrader generate_assignment`` into ``exercises/``;
* ``check-release``: regenerate the release in a temporary folder and compare it with
  ``exercises/`` (ignoring what nbgrader changes on every run); exit 1 when they differ;
* ``collect SUBMISSIONS [--assignment A]``: copy ``SUBMISSIONS/<student>/<A>/*.ipynb`` (or
  ``SUBMISSIONS/<student>/*.ipynb`` with ``--assignment``) into ``instructor/submitted/``;
* ``autograde [ASSIGNMENT ...]``: ``nbgrader autograde`` (hidden tests restored and run);
* ``feedback [ASSIGNMENT ...]``: ``nbgrader generate_feedback`` (HTML per student);
* ``export [--to FILE]``: ``nbgrader export`` to a CSV of grades.

Every command accepts ``--course-root DIR`` (default: the repository), so the same flow runs
in a temporary course. nbgrader runs in a subprocess of this Python with a ``python3``
kernelspec that points at this interpreter, so autograding uses the course's environment.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import nbformat

__all__ = [
    "REPO_ROOT",
    "CONFIG_FILE",
    "INSTRUCTOR_DIR",
    "assignments",
    "run_nbgrader",
    "release",
    "release_differences",
    "collect",
    "autograde",
    "feedback",
    "export",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_FILE = REPO_ROOT / "solutions" / "nbgrader_config.py"
INSTRUCTOR_DIR = "instructor"  # relative to the course root; matches nbgrader_config.py


def _root(course_root: str | os.PathLike[str] | None) -> Path:
    root = Path(course_root) if course_root is not None else REPO_ROOT
    return root.resolve()


def assignments(course_root: str | os.PathLike[str] | None = None) -> list[str]:
    """Assignment ids: the folders of ``solutions/`` that hold a notebook, sorted.

    Raises:
        FileNotFoundError: the course has no ``solutions/`` folder.
    """
    source = _root(course_root) / "solutions"
    if not source.is_dir():
        raise FileNotFoundError(f"no solutions/ folder in the course root {source.parent}")
    return sorted(d.name for d in source.iterdir() if d.is_dir() and any(d.glob("*.ipynb")))


@contextmanager
def _venv_kernel_path() -> Iterator[str]:
    """A JUPYTER_PATH entry whose ``python3`` kernelspec starts this interpreter."""
    with tempfile.TemporaryDirectory(prefix="dinolab-kernel-") as tmp:
        spec_dir = Path(tmp) / "kernels" / "python3"
        spec_dir.mkdir(parents=True)
        spec = {
            "argv": [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher",
                     "-f", "{connection_file}"],
            "display_name": "Python 3 (dinolab)",
            "language": "python",
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
        yield tmp


def run_nbgrader(
    args: Sequence[str],
    course_root: str | os.PathLike[str] | None = None,
    check: bool = True,
    needs_db: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``nbgrader ARGS`` for the course at ``course_root`` with the course's configuration.

    Args:
        args: the nbgrader sub-command and its arguments, e.g. ``["autograde", "04_1_centering"]``.
        course_root: the course folder (holding ``solutions/``); default the repository.
        check: raise ``RuntimeError`` (with nbgrader's output) when nbgrader fails.
        needs_db: create ``instructor/`` for the gradebook first (not needed with ``--no-db``).

    Returns:
        The finished process, with its combined output in ``stdout``.
    """
    root = _root(course_root)
    if needs_db:
        (root / INSTRUCTOR_DIR).mkdir(parents=True, exist_ok=True)
    db = root / INSTRUCTOR_DIR / "gradebook.db"
    cmd = [
        sys.executable, "-m", "nbgrader", *args,
        # traitlets adds the ".py" itself
        f"--NbGrader.config_file={CONFIG_FILE.with_suffix('')}",
        f"--CourseDirectory.root={root}",
        f"--CourseDirectory.db_url=sqlite:///{db}",
    ]
    with _venv_kernel_path() as kernel_path:
        env = dict(os.environ)
        env["JUPYTER_PATH"] = os.pathsep.join(p for p in (kernel_path, env.get("JUPYTER_PATH"))
                                              if p)
        # nbgrader runs the `alembic` command of this environment to set up its database.
        env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent),
                                                  env.get("PATH")) if p)
        env.setdefault("MPLBACKEND", "Agg")
        env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
        proc = subprocess.run(cmd, cwd=root, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"nbgrader {' '.join(args)} failed with exit code {proc.returncode}:\n{proc.stdout}"
        )
    return proc


def _ids(ids: Sequence[str] | None, course_root: str | os.PathLike[str] | None) -> list[str]:
    known = assignments(course_root)
    if not ids:
        return known
    unknown = [a for a in ids if a not in known]
    if unknown:
        raise ValueError(f"unknown assignment(s) {unknown}; expected some of {known}")
    return list(ids)


def release(
    ids: Sequence[str] | None = None,
    course_root: str | os.PathLike[str] | None = None,
    release_dir: str | os.PathLike[str] | None = None,
    use_db: bool = True,
) -> list[str]:
    """``nbgrader generate_assignment`` for each assignment (all by default).

    Args:
        ids: assignment ids; default every folder of ``solutions/``.
        course_root: the course folder; default the repository.
        release_dir: where to write the release; default ``<course_root>/exercises``.
        use_db: record the assignments in the gradebook (needed before autograding);
            False for a throw-away comparison.

    Returns:
        The assignment ids released.
    """
    chosen = _ids(ids, course_root)
    options = ["--force"]
    if release_dir is not None:
        options.append(f"--CourseDirectory.release_directory={Path(release_dir).resolve()}")
    if not use_db:
        options.append("--no-db")
    # One nbgrader process for all assignments: each start costs seconds of imports.
    pattern = "*" if not ids else (chosen[0] if len(chosen) == 1 else None)
    for target in [pattern] if pattern is not None else chosen:
        run_nbgrader(["generate_assignment", target, *options], course_root, needs_db=use_db)
    return chosen


# -- comparing a regenerated release with the committed one ------------------------------------

_VOLATILE_NOTEBOOK_KEYS = ("widgets",)


def _normalised(path: Path) -> dict:
    """A notebook as a plain dict without what may change from one nbgrader run to the next."""
    nb = nbformat.read(path, as_version=4)
    data = json.loads(nbformat.writes(nb))
    for key in _VOLATILE_NOTEBOOK_KEYS:
        data.get("metadata", {}).pop(key, None)
    data.get("metadata", {}).get("language_info", {}).pop("version", None)
    for cell in data.get("cells", []):
        cell.pop("id", None)  # random when a cell has none; nbgrader keeps the source's otherwise
        cell.get("metadata", {}).pop("execution", None)
    return data


def _files(folder: Path) -> dict[str, Path]:
    ignore = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache"}
    return {
        str(p.relative_to(folder)): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not ignore.intersection(p.relative_to(folder).parts)
        and p.suffix != ".pyc"
    }


def release_differences(
    course_root: str | os.PathLike[str] | None = None,
    released: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Regenerate the release in a temporary folder and list how ``released`` differs from it.

    Args:
        course_root: the course folder; default the repository.
        released: the committed release; default ``<course_root>/exercises``.

    Returns:
        One line per difference (a missing, extra or changed file; for notebooks, the first
        differing cell); empty when the release is up to date.
    """
    root = _root(course_root)
    released = Path(released) if released is not None else root / "exercises"
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dinolab-release-") as tmp:
        release(course_root=root, release_dir=tmp, use_db=False)
        fresh, committed = _files(Path(tmp)), _files(released) if released.is_dir() else {}
        for name in sorted(set(fresh) - set(committed)):
            problems.append(f"missing from {released}: {name}")
        for name in sorted(set(committed) - set(fresh)):
            problems.append(f"in {released} but not generated from solutions/: {name}")
        for name in sorted(set(fresh) & set(committed)):
            a, b = fresh[name], committed[name]
            if name.endswith(".ipynb"):
                diff = _notebook_difference(_normalised(a), _normalised(b))
                if diff:
                    problems.append(f"{name}: {diff}")
            elif a.read_bytes() != b.read_bytes():
                problems.append(f"{name}: content differs")
    return problems


def _notebook_difference(fresh: dict, committed: dict) -> str:
    if fresh.get("metadata") != committed.get("metadata"):
        return "notebook metadata differs"
    cells_a, cells_b = fresh.get("cells", []), committed.get("cells", [])
    for i, (a, b) in enumerate(zip(cells_a, cells_b, strict=False)):
        if a != b:
            what = "source" if a.get("source") != b.get("source") else "metadata or outputs"
            return f"cell {i} differs ({what})"
    if len(cells_a) != len(cells_b):
        return f"{len(cells_b)} cells instead of {len(cells_a)}"
    return ""


# -- submissions, autograding, feedback, grades ------------------------------------------------


def collect(
    submissions: str | os.PathLike[str],
    assignment: str | None = None,
    course_root: str | os.PathLike[str] | None = None,
) -> list[tuple[str, str]]:
    """Copy learners' notebooks into nbgrader's ``submitted/<student>/<assignment>/`` layout.

    ``submissions`` holds one folder per student (the folder name is the student id). Inside,
    either one folder per assignment (``alice/04_1_centering/04_1_centering.ipynb``), or, with
    ``assignment`` given, the notebooks directly (``alice/04_1_centering.ipynb``). A
    ``timestamp.txt`` with the newest notebook's modification time (UTC) is written next to
    them, as ``nbgrader collect`` does. For zip files downloaded from an LMS use nbgrader's
    own ``nbgrader zip_collect``.

    Returns:
        ``(student, assignment)`` pairs collected.

    Raises:
        FileNotFoundError: ``submissions`` is not a folder.
        ValueError: an assignment folder is not one of the course's, or nothing was found.
    """
    src = Path(submissions)
    if not src.is_dir():
        raise FileNotFoundError(f"submissions folder not found: {src}")
    known = assignments(course_root)
    if assignment is not None and assignment not in known:
        raise ValueError(f"unknown assignment {assignment!r}; expected one of {known}")
    target_root = _root(course_root) / INSTRUCTOR_DIR / "submitted"
    collected: list[tuple[str, str]] = []
    for student_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        student = student_dir.name
        if assignment is not None:
            folders = [(assignment, student_dir)]
        else:
            folders = [(d.name, d) for d in sorted(student_dir.iterdir()) if d.is_dir()]
        for aid, folder in folders:
            notebooks = sorted(folder.glob("*.ipynb"))
            if not notebooks:
                continue
            if aid not in known:
                raise ValueError(f"{folder}: {aid!r} is not an assignment of this course; "
                                 f"expected one of {known}")
            dest = target_root / student / aid
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir(parents=True)
            for nb, name in _submission_names(notebooks, aid, course_root, f"{student}/{aid}"):
                shutil.copy2(nb, dest / name)
            newest = max(nb.stat().st_mtime for nb in notebooks)
            stamp = dt.datetime.fromtimestamp(newest, tz=dt.UTC)
            (dest / "timestamp.txt").write_text(stamp.strftime("%Y-%m-%d %H:%M:%S.%f UTC"))
            collected.append((student, aid))
    if not collected:
        raise ValueError(f"no notebooks found under {src}; expected <student>/<assignment>/*.ipynb"
                         " (or <student>/*.ipynb with --assignment)")
    return collected


def _submission_names(
    notebooks: Sequence[Path], aid: str, course_root: str | os.PathLike[str] | None, who: str
) -> list[tuple[Path, str]]:
    """The name each submitted notebook is collected under, with a warning for strays.

    nbgrader grades only notebooks named as in the assignment; it skips any other
    (``04_1_centering-Copy1.ipynb``) and the learner scores 0. A single notebook of another
    name, for an assignment of a single notebook, is collected under the expected name;
    other strays are collected as they are, with a warning that nbgrader will skip them.
    """
    expected = sorted(p.name for p in (_root(course_root) / "solutions" / aid).glob("*.ipynb"))
    names = [nb.name for nb in notebooks]
    if len(expected) == 1 and len(notebooks) == 1 and names != expected:
        print(f"warning: {who}: {names[0]} collected as {expected[0]} (the assignment's name)",
              file=sys.stderr)
        return [(notebooks[0], expected[0])]
    for name in sorted(set(names) - set(expected)):
        print(f"warning: {who}: {name} is not a notebook of the assignment {expected}; "
              "nbgrader will skip it", file=sys.stderr)
    return [(nb, nb.name) for nb in notebooks]


def _submitted_ids(course_root: str | os.PathLike[str] | None) -> list[str]:
    submitted = _root(course_root) / INSTRUCTOR_DIR / "submitted"
    return sorted({d.name for s in submitted.glob("*") if s.is_dir() for d in s.iterdir()
                   if d.is_dir()}) if submitted.is_dir() else []


def autograde(
    ids: Sequence[str] | None = None, course_root: str | os.PathLike[str] | None = None
) -> list[str]:
    """``nbgrader autograde`` every collected submission of the given assignments.

    The test cells are restored from the gradebook (hidden tests included) before running, so
    a learner cannot change what is checked. Default: every assignment with submissions.
    """
    chosen = list(ids) if ids else _submitted_ids(course_root)
    graded, failed = [], []
    for aid in chosen:  # one failing assignment must not leave the others ungraded
        try:
            run_nbgrader(["autograde", aid, "--force", "--create"], course_root)
            graded.append(aid)
        except RuntimeError as err:
            failed.append(f"{aid}: {_nbgrader_errors(str(err))}")
    if failed:
        raise RuntimeError(
            f"autograde failed for {len(failed)} of {len(chosen)} assignment(s); graded: "
            f"{', '.join(graded) or 'none'}.\n  " + "\n  ".join(failed)
        )
    return chosen


def _nbgrader_errors(output: str) -> str:
    """nbgrader's error lines (and the notebooks it skipped) out of its whole log."""
    keep = [ln.strip() for ln in output.splitlines()
            if "[ERROR]" in ln or "Skipping unknown notebook" in ln or "failed with exit" in ln]
    return "\n    ".join(keep[:8]) if keep else output.strip()[-1000:]


def scores(
    aid: str, course_root: str | os.PathLike[str] | None = None
) -> list[tuple[str, float, float]]:
    """``(student, score, max_score)`` of every autograded submission of ``aid``, by student."""
    from nbgrader.api import Gradebook, MissingEntry

    db = _root(course_root) / INSTRUCTOR_DIR / "gradebook.db"
    if not db.is_file():
        return []
    with Gradebook(f"sqlite:///{db}") as gb:
        try:
            subs = gb.assignment_submissions(aid)
        except MissingEntry:
            return []
        return sorted((s.student_id, float(s.score), float(s.max_score)) for s in subs)


def feedback(
    ids: Sequence[str] | None = None, course_root: str | os.PathLike[str] | None = None
) -> list[str]:
    """``nbgrader generate_feedback``: one HTML file per graded notebook.

    nbgrader's feedback template loads MathJax from a CDN, so offline its math stays raw
    ``$...$``: each page is pointed at a copy of MathJax in its own folder instead
    (:func:`dinolab.book.localize_mathjax`), which travels with the folder handed back.
    """
    from dinolab.book import localize_mathjax

    chosen = list(ids) if ids else _submitted_ids(course_root)
    for aid in chosen:
        run_nbgrader(["generate_feedback", aid, "--force"], course_root)
        for page in sorted((_root(course_root) / INSTRUCTOR_DIR / "feedback").glob(
                f"*/{aid}/*.html")):
            localize_mathjax(page)
    return chosen


def export(
    to: str | os.PathLike[str] | None = None, course_root: str | os.PathLike[str] | None = None
) -> Path:
    """``nbgrader export`` of every grade to a CSV (default ``instructor/grades.csv``)."""
    path = Path(to) if to is not None else _root(course_root) / INSTRUCTOR_DIR / "grades.csv"
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    run_nbgrader(["export", f"--to={path}"], course_root)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dinolab.grading.nbgrader_flow",
        description="The instructor's nbgrader flow for the dinolab course.",
    )
    parser.add_argument("--course-root", default=None,
                        help="course folder holding solutions/ (default: the repository)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("release", help="generate exercises/ from solutions/")
    p.add_argument("assignments", nargs="*", help="assignment ids (default: all)")
    sub.add_parser("check-release", help="fail if exercises/ is not what solutions/ generates")
    p = sub.add_parser("collect", help="copy submissions into instructor/submitted/")
    p.add_argument("submissions", help="folder with one sub-folder per student")
    p.add_argument("--assignment", default=None,
                   help="the assignment, when student folders hold notebooks directly")
    for name, text in (("autograde", "nbgrader autograde (hidden tests included)"),
                       ("feedback", "nbgrader generate_feedback (HTML per student)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("assignments", nargs="*", help="assignment ids (default: all submitted)")
    p = sub.add_parser("export", help="grades of every student to a CSV")
    p.add_argument("--to", default=None, help="CSV path (default: instructor/grades.csv)")
    args = parser.parse_args(argv)
    root = args.course_root
    try:
        if args.command == "release":
            done = release(args.assignments, root)
            print(f"released {len(done)} assignment(s) into exercises/: {', '.join(done)}")
        elif args.command == "check-release":
            problems = release_differences(root)
            if problems:
                print("exercises/ differs from what solutions/ generates "
                      "(run `make release`):\n  " + "\n  ".join(problems))
                return 1
            print("exercises/ matches solutions/")
        elif args.command == "collect":
            done = collect(args.submissions, args.assignment, root)
            print(f"collected {len(done)} submission(s): "
                  + ", ".join(f"{s}/{a}" for s, a in done))
        elif args.command == "autograde":
            done = autograde(args.assignments, root)
            print(f"autograded: {', '.join(done) or 'nothing submitted'}")
            for aid in done:
                for student, got, out_of in scores(aid, root):
                    print(f"  {aid}  {student}: {got:g} / {out_of:g}")
        elif args.command == "feedback":
            done = feedback(args.assignments, root)
            print(f"feedback written to {INSTRUCTOR_DIR}/feedback/ for: {', '.join(done)}")
        elif args.command == "export":
            print(f"grades written to {export(args.to, root)}")
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
