"""Static checks of lesson 6 (distilling a frozen teacher); test_lessons_run.py executes it.

These read the committed notebook only (no kernel) and check that:

* the "Check yourself" quiz is multiple choice as in lessons 0-5 (``test_lesson_content.py``):
  options (a) to (d), the answer's letter first; here also the right option is never the
  longest, and no letter is right in more than half of the questions;
* the predict-then-measure of section 6.4: a code cell sets ``my_guess``, the next cell prints
  each guess beside what it measured;
* every idea the lesson takes from a paper is cited with its arXiv number beside it and in the
  References table, and the course's contents page (``dinolab.book.REFERENCES``) cites nothing
  for lesson 6 that the lesson does not;
* section 6 (DINOv3) quotes no run figures in its prose (the cells print them), says that its
  DINOv3 figures use random weights, and names the Gram teacher it uses;
* ``GRAM_WEIGHT`` is a parameter that reaches the runs, and the value the text names is it;
* section 1's figures of the course teacher are those of its record (``course_teacher.json``);
* the multi-seed figures section 5 quotes are still those of ``benchmarks/EXPERIMENTS.md``,
  each attributed to its loss, and the seed-0 differences it quotes from the lesson's own run
  are that section's seed 0 (the same runs).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from dinolab.book import REFERENCES
from dinolab.train.course_teacher import course_teacher_record

ROOT = Path(__file__).resolve().parents[2]
LESSON = ROOT / "course" / "06_distilling_a_frozen_teacher.ipynb"
EXPERIMENTS_MD = ROOT / "benchmarks" / "EXPERIMENTS.md"
ABLATION_SECTION = "## Distilling the course teacher: which of the five losses matter (lesson 6)"
# idea -> (a word the citing cell uses, arXiv number)
CITED = {
    "knowledge distillation": ("Hinton", "1503.02531"),
    "DINO": ("Caron et al., 2021", "2104.14294"),
    "iBOT": ("iBOT", "2111.07832"),
    "block-wise masks": ("BEiT", "2106.08254"),
    "KoLeo": ("KoLeo", "1806.03198"),
    "Sinkhorn-Knopp": ("SwAV", "2006.09882"),
    "DINOv2": ("DINOv2", "2304.07193"),
    "registers": ("Registers", "2309.16588"),
    "RoPE": ("RoFormer", "2104.09864"),
    "DINOv3": ("DINOv3", "2508.10104"),
}
OPTION = re.compile(r"^\s+\* \(([a-d])\) (.+)$", re.M)
ANSWER = re.compile(r"<summary>Answer</summary>\(([a-d])\)")


def _notebook() -> nbformat.NotebookNode:
    return nbformat.read(LESSON, as_version=4)


def _markdown() -> list[str]:
    return [c.source for c in _notebook().cells if c.cell_type == "markdown"]


def _parameters() -> dict[str, object]:
    (cell,) = [c for c in _notebook().cells if "parameters" in c.metadata.get("tags", [])]
    return {
        node.targets[0].id: ast.literal_eval(node.value)  # type: ignore[attr-defined]
        for node in ast.parse(cell.source).body
    }


def _quiz() -> list[tuple[dict[str, str], str]]:
    """Each question's options (letter -> text, LaTeX and markup as written) and right letter."""
    (cell,) = [s for s in _markdown() if "## Check yourself" in s]
    quiz = cell.split("## Check yourself", 1)[1].split("\n## ", 1)[0]
    questions = re.split(r"\n(?=\d+\. )", quiz)[1:]
    parsed = []
    for q in questions:
        options = dict(OPTION.findall(q))
        answer = ANSWER.search(q)
        assert answer, f"no '(letter)' at the start of the answer of {q[:60]!r}"
        parsed.append((options, answer[1]))
    return parsed


def _section(nb_markdown: list[str], start: str, end: str) -> str:
    text = "\n".join(nb_markdown)
    assert start in text and end in text, f"lesson 6 lacks {start!r} or {end!r}"
    return text.split(start, 1)[1].split(end, 1)[0]


def test_quiz_is_multiple_choice_with_four_options() -> None:
    quiz = _quiz()
    assert len(quiz) >= 5, f"only {len(quiz)} questions"
    for i, (options, answer) in enumerate(quiz, 1):
        assert sorted(options) == ["a", "b", "c", "d"], f"question {i}: options {sorted(options)}"
        assert answer in options, f"question {i}: answer {answer} is not an option"


def test_right_answer_is_never_the_longest_option() -> None:
    for i, (options, answer) in enumerate(_quiz(), 1):
        longest = max(len(o) for o in options.values())
        wrong = [len(o) for letter, o in options.items() if letter != answer]
        assert len(options[answer]) <= max(wrong), (
            f"question {i}: the right answer {answer} is the longest option "
            f"({len(options[answer])} characters, the others at most {max(wrong)}; {longest})"
        )


def test_right_answers_are_spread_over_the_letters() -> None:
    letters = [answer for _, answer in _quiz()]
    assert len(set(letters)) >= 3, f"right answers {letters}: use more positions"
    most = max(letters.count(x) for x in set(letters))
    assert most <= len(letters) // 2, f"right answers {letters}: one letter too often"


@pytest.mark.parametrize("idea", CITED)
def test_each_idea_is_cited_with_its_arxiv_number(idea: str) -> None:
    word, arxiv = CITED[idea]
    markdown = _markdown()
    (refs,) = [s for s in markdown if s.startswith("## References")]
    rows = [r for r in refs.splitlines() if arxiv in r]
    assert rows, f"{idea}: arXiv {arxiv} is not in the References table"
    assert f"arxiv.org/abs/{arxiv}" in rows[0], f"{idea}: the References row does not link {arxiv}"
    in_text = [s for s in markdown if arxiv in s and not s.startswith("## References")]
    assert in_text, f"{idea}: arXiv {arxiv} is cited only in the References, not where it is used"
    assert any(word in s for s in markdown if arxiv in s), f"{idea}: no cell names {word!r}"


def test_contents_page_references_for_lesson_6_are_in_the_lesson() -> None:
    text = "\n".join(_markdown())
    for short, _title, _year, arxiv, where in REFERENCES:
        if "lesson" in where and re.search(r"(?<![\d.-])6(?![\d.])", where):
            assert arxiv in text, f"dinolab.book cites {short} ({arxiv}) for lesson 6; it does not"


def test_section_6_quotes_no_run_figures() -> None:
    # The runs' numbers are printed by the cells; prose figures would go stale on another machine.
    section = _section(_markdown(), "## 6. What DINOv3 changed", "## 7. Several processes")
    quoted = re.findall(r"\d+(?:\.\d+)?\s*(?:%|points|CPU-s)", section)
    assert not quoted, f"section 6 quotes run figures in its text: {quoted}"


def test_section_6_says_its_dinov3_weights_are_random_and_names_the_gram_teacher() -> None:
    section = _section(_markdown(), "## 6. What DINOv3 changed", "## 7. Several processes")
    assert "random weights" in section and "mechanics" in section
    assert "earlier" in section and "checkpoint" in section, "DINOv3's Gram teacher"
    assert "frozen course teacher" in section, "the Gram teacher this lesson uses"
    code = "\n".join(c.source for c in _notebook().cells if c.cell_type == "code")
    assert "DINOv3ViT(" in code and "load_pretrained(" in code
    # No DINOv3 file is read: the figures' model is built here.
    assert not re.search(r"load_backbone\([^)]*dinov3", code)


def test_section_6_4_is_a_predict_then_measure() -> None:
    code = [c.source for c in _notebook().cells if c.cell_type == "code"]
    (i,) = [i for i, s in enumerate(code) if re.search(r"^my_guess = ", s, re.M)]
    guessed = set(re.findall(r'^\s+"([^"]+)": None', code[i], re.M))
    assert len(guessed) >= 2, f"my_guess has keys {guessed}"
    reader = code[i + 1]
    assert "train_distill" in reader or "distil(" in reader, "the next cell runs the comparison"
    assert "my_guess" in reader and "measured" in reader and "print(" in reader
    for key in guessed:
        assert f'"{key}":' in reader, f"the measuring cell does not measure {key!r}"
    (prompt,) = [s for s in _markdown() if "**Predict, then measure.**" in s]
    assert "`my_guess`" in prompt


def test_gram_weight_is_a_parameter_that_reaches_the_runs() -> None:
    params = _parameters()
    weight = params["GRAM_WEIGHT"]
    assert isinstance(weight, float) and weight > 0
    assert isinstance(params["GRAM_COMPARISON"], bool)
    code = "\n".join(c.source for c in _notebook().cells if c.cell_type == "code")
    assert '"spd": 0.0, "gram": GRAM_WEIGHT' in code
    named = re.findall(r"`GRAM_WEIGHT = ([\d.]+)`", "\n".join(_markdown()))
    assert named and all(float(v) == weight for v in named), (named, weight)


def _normalise(text: str) -> str:
    return text.replace("−", "-").replace("±", "+-")


# The names section 5's reading gives the losses -> the ablation table's row names.
LOSS_NAMES = {"DINO": "dino", "iBOT": "ibot", "KoLeo": "koleo", "CLS": "cls", "SPD": "spd"}
ROW = re.compile(
    r"^\| without (\w+) \| [^|]+ \| ([+-]?\d+\.\d \+- \d+\.\d) "
    r"\(([+-]\d+\.\d), ([+-]\d+\.\d), ([+-]\d+\.\d)\) \|$",
    re.M,
)


def test_quoted_ablation_figures_match_experiments_md() -> None:
    text = EXPERIMENTS_MD.read_text()
    assert ABLATION_SECTION in text, f"benchmarks/EXPERIMENTS.md has no {ABLATION_SECTION!r}"
    section = text.split(ABLATION_SECTION, 1)[1].split("\n## ", 1)[0]
    (reading,) = [s for s in _markdown() if "`make experiments` repeats the ablation" in s]
    reading = _normalise(reading)
    quoted = re.findall(r"[+-]?\d+\.\d \+- \d+\.\d", reading)
    assert len(quoted) >= 6, f"expected the six figures of the table, found {quoted}"
    for figure in quoted:
        assert figure in section, f"lesson 6 quotes {figure}; benchmarks/EXPERIMENTS.md does not"
    found = re.search(r"teacher (\d+\.\d)%, random init (\d+\.\d)%", reading)
    assert found, "the teacher's and the random initialisation's figures"
    teacher, random_init = found.groups()
    assert f"Frozen teacher: {teacher} +-" in section
    assert f"random initialisation: {random_init} +-" in section
    rows = {name: (diff, seeds) for name, diff, *seeds in ROW.findall(_normalise(section))}
    assert sorted(rows) == sorted(LOSS_NAMES.values()), f"ablation rows {sorted(rows)}"
    # Each loss's mean difference is quoted beside that loss's name.
    named = re.findall(
        r"(DINO|iBOT|KoLeo|CLS|SPD)(?: term| loss)?\s+\(([+-]\d+\.\d \+- \d+\.\d)", reading
    )
    assert len({n for n, _ in named}) == 5, f"each loss's difference, found {named}"
    for name, figure in named:
        assert rows[LOSS_NAMES[name]][0] == figure, (name, figure, rows[LOSS_NAMES[name]][0])
    # The per-seed differences quoted for one loss are its row's.
    per_seed = re.findall(
        r"(DINO|iBOT|KoLeo|CLS|SPD)(?: term| loss)?\s+\([^)]*?([+-]\d+\.\d) on seed 0, this "
        r"lesson's, then ([+-]\d+\.\d) and ([+-]\d+\.\d) on seeds 1 and 2",
        reading,
    )
    assert per_seed, "the per-seed differences of one loss"
    for name, *seeds in per_seed:
        assert rows[LOSS_NAMES[name]][1] == seeds, (name, seeds, rows[LOSS_NAMES[name]][1])
    # "Its seed 0 is this lesson's seed-0 runs": the differences the reading quotes from the
    # lesson's own run are the ablation's seed 0.
    ours = re.findall(
        r"without (?:the )?(DINO|iBOT|KoLeo|CLS|SPD)(?: term| loss)? "
        r"\(([+-]\d+\.\d)(?: points)?\)",
        reading,
    )
    assert ours, "the lesson's own run's differences"
    for name, delta in ours:
        assert rows[LOSS_NAMES[name]][1][0] == delta, (name, delta, rows[LOSS_NAMES[name]][1])


def test_section_1_quotes_the_course_teachers_record() -> None:
    record = course_teacher_record()
    (cell,) = [s for s in _markdown() if s.startswith("## 1. The teacher")]
    cell = " ".join(cell.split())
    assert f"about {round(record['cpu_minutes_training'])} CPU-minutes of training" in cell
    assert f"{record['knn_top1']:.1f}% k-NN on its own 1000 held-out images" in cell
