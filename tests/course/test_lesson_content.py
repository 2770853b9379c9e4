"""Static checks of what lessons 0 to 5 teach with (issue 17): quizzes, predictions, citations.

They read the committed notebooks only (no kernel), so they take a second:

* every "Check yourself" question is multiple choice, (a) to (d), with its answer's letter first
  in a ``<details>`` block; the right answer is not always in the same place, and not usually
  the longest option (a learner should not be able to answer by the options' shape);
* modules 1 to 5 each have one predict-then-measure: a code cell that sets ``my_guess``, and a
  later code cell that reads it and prints it beside a value it computes;
* every arXiv id a lesson cites is in ``dinolab.book.REFERENCES``, the contents page's list;
* lesson 4.3 draws DINO and writes Algorithm 1 with pointers into dinolab.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from dinolab.book import REFERENCES

COURSE = Path(__file__).resolve().parents[2] / "course"
# Lessons 0 to 5 (lesson 6 has its own owner and tests).
LESSONS = sorted(p for p in COURSE.glob("0[0-5]_*.ipynb"))
MODULES = {"1": ["01_"], "2": ["02_"], "3": ["03_"], "4": ["04_"], "5": ["05_"]}
QUESTION = re.compile(r"^\d+\. ", re.M)
OPTION = re.compile(r"^\s+\* \(([a-d])\) (.+)$", re.M)
ANSWER = re.compile(r"<summary>Answer</summary>\(([a-d])\)")
ARXIV = re.compile(r"arxiv\.org/abs/(\d{4}\.\d{4,5})")


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _quiz(nb: nbformat.NotebookNode) -> list[tuple[dict[str, str], str]]:
    """[(options by letter, right letter)] of the lesson's "Check yourself" section."""
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    section = text.split("## Check yourself", 1)[1].split("\n## ", 1)[0]
    questions = []
    for block in QUESTION.split(section)[1:]:
        options = dict(OPTION.findall(block))
        answer = ANSWER.search(block)
        questions.append((options, answer.group(1) if answer else ""))
    return questions


def test_the_lessons_are_there() -> None:
    assert [p.name[:3] for p in LESSONS][:2] == ["00_", "01_"] and len(LESSONS) >= 10


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_check_yourself_is_multiple_choice_with_no_giveaway(lesson: Path) -> None:
    quiz = _quiz(_read(lesson))
    assert len(quiz) >= 3, f"{lesson.name}: {len(quiz)} check questions"
    for n, (options, answer) in enumerate(quiz, start=1):
        assert sorted(options) == ["a", "b", "c", "d"], f"{lesson.name} Q{n}: options {options}"
        assert answer in options, f"{lesson.name} Q{n}: no '(letter)' at the start of its answer"
    letters = [answer for _, answer in quiz]
    assert len(set(letters)) >= 2, f"{lesson.name}: every right answer is ({letters[0]})"
    longest = sum(
        len(options[answer]) > max(len(v) for k, v in options.items() if k != answer)
        for options, answer in quiz
    )
    assert longest <= len(quiz) // 2, (
        f"{lesson.name}: the right answer is the longest option in {longest} of {len(quiz)} "
        "questions; make the wrong options as long and as plausible"
    )


def test_the_right_answers_move_around_the_course() -> None:
    letters = [answer for lesson in LESSONS for _, answer in _quiz(_read(lesson))]
    counts = {letter: letters.count(letter) for letter in "abcd"}
    assert min(counts.values()) >= len(letters) // 8, f"right answers by position: {counts}"


@pytest.mark.parametrize("module, prefixes", MODULES.items())
def test_each_module_has_one_predict_then_measure(module: str, prefixes: list[str]) -> None:
    found = []
    for lesson in LESSONS:
        if not lesson.name.startswith(tuple(prefixes)):
            continue
        code = [c.source for c in _read(lesson).cells if c.cell_type == "code"]
        guesses = [i for i, s in enumerate(code) if re.search(r"^my_guess = ", s, re.M)]
        for i in guesses:
            readers = [s for s in code[i + 1 :] if "my_guess" in s and "print(" in s]
            assert readers, f"{lesson.name}: my_guess is set but no later cell prints it"
            measured = readers[0]
            assert "measured" in measured, f"{lesson.name}: the cell prints no measured value"
            found.append(lesson.name)
    assert len(found) == 1, f"module {module}: predict-then-measure cells in {found or 'none'}"


@pytest.mark.parametrize("lesson", sorted(COURSE.glob("0*.ipynb")), ids=lambda p: p.stem)
def test_cited_arxiv_ids_are_in_the_references(lesson: Path) -> None:
    listed = {ref[3] for ref in REFERENCES}
    text = "\n".join(c.source for c in _read(lesson).cells if c.cell_type == "markdown")
    cited = set(ARXIV.findall(text))
    if lesson.name != "00_welcome.ipynb" or cited:
        assert cited, f"{lesson.name} cites no paper"
    missing = sorted(cited - listed)
    assert not missing, f"{lesson.name} cites {missing}: add them to dinolab.book.REFERENCES"


def test_lesson_4_3_has_the_diagram_and_algorithm_1() -> None:
    nb = _read(COURSE / "04_3_dino_loss_and_training_loop.ipynb")
    text = "\n".join(c.source for c in nb.cells)
    for needle in ("FancyBboxPatch", "stop-gradient", "Algorithm 1", "def H(t, s):",
                   "m_c * c + (1 - m_c)", "inspect.getsourcelines"):
        assert needle in text, f"lesson 4.3 lacks {needle!r}"
