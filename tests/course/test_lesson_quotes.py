"""The numbers lessons 2 and 4.3 quote about the course teacher match their sources.

Both lessons describe the committed course teacher (``dinolab/assets/course_teacher.pth``) in
prose: its k-NN and attention Jaccard, its curves, its CPU time, its attention on a photo. When
the teacher is retrained those sentences go out of date silently; these checks read the figures
from the record (``course_teacher.json``) or recompute them from the file (one forward pass on a
bundled photo) and look for them, formatted as the lessons write them, in the markdown cell that
quotes them. A failure names the sentence to rewrite: execute the lesson, look at its figures,
and rewrite what it says, not only the number.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import torch

from dinolab.data import eval_transform, load_photo
from dinolab.eval import cls_attention
from dinolab.train.course_teacher import course_teacher_record, load_course_teacher

COURSE = Path(__file__).resolve().parents[2] / "course"
LESSON_2 = COURSE / "02_backbones.ipynb"
LESSON_4_3 = COURSE / "04_3_dino_loss_and_training_loop.ipynb"


def _markdown(path: Path, cell_id: str) -> str:
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.get("id") == cell_id:
            assert cell.cell_type == "markdown", f"{path.name}: cell {cell_id} is not markdown"
            return " ".join(cell.source.split())  # line breaks do not matter
    raise AssertionError(f"{path.name}: no cell with id {cell_id}")


def _quotes(record: dict) -> list[tuple[Path, str, str]]:
    """(lesson, cell id, text the cell must contain), from the record."""
    curve = record["knn_curve"]
    later = curve[18:]  # after epoch 18
    per_epoch = record["steps"] // record["epochs"]
    mean, prior = record["jaccard_mean_map"], record["centre_prior_jaccard"]
    heads = [f"{v:.2f}" for v in record["jaccard_per_head"]]
    cpu = f"about {round(record['cpu_minutes_training'])} CPU-minutes"
    return [
        (LESSON_2, "02-backbones-16", cpu),
        (LESSON_4_3, "b5a00001", cpu),
        (LESSON_4_3, "b5a00001", f"{record['steps']} iterations"),
        (LESSON_4_3, "b5a00003", f"{record['knn_top1']:.1f}% on the teacher's"),
        (LESSON_4_3, "b5a00003", f"{record['pixels_knn_top1']:.1f}% for raw pixels"),
        (LESSON_4_3, "b5a00003", f"{record['random_knn_top1']:.1f}% for the network"),
        (LESSON_4_3, "b5a00003", f"({curve[1]:.1f}% after {2 * per_epoch} iterations)"),
        (LESSON_4_3, "b5a00003", f"{curve[6]:.1f}% after epoch 7"),
        (LESSON_4_3, "b5a00003", f"{curve[17]:.1f}% after epoch 18"),
        (LESSON_4_3, "b5a00003", f"between {min(later):.1f}% and {max(later):.1f}%"),
        (LESSON_4_3, "b5a00006", f"Jaccard of {mean:.2f}"),
        (LESSON_4_3, "b5a00006", f"{record['random_jaccard_mean_map']:.2f} for the random"),
        (LESSON_4_3, "b5a00006", f"{prior:.2f} for the centred Gaussian"),
        (LESSON_4_3, "b5a00006", f"({', '.join(heads[:-1])} and {heads[-1]};"),
        (LESSON_4_3, "b5a00006", f"this teacher is {mean - prior:.2f} above it"),
        (LESSON_4_3, "b5a00008", f"k-NN of {record['knn_top1']:.1f}%"),
    ]


QUOTES = _quotes(course_teacher_record())


@pytest.mark.parametrize(
    ("lesson", "cell_id", "text"), QUOTES, ids=[f"{q[0].stem[:5]}-{q[2]}" for q in QUOTES]
)
def test_lessons_quote_the_course_teacher_record(lesson: Path, cell_id: str, text: str) -> None:
    assert text in _markdown(lesson, cell_id), (
        f"{lesson.name}, cell {cell_id}, no longer says {text!r} (from course_teacher.json)"
    )


def test_lesson_2_quotes_the_teachers_attention_peaks_on_the_cat() -> None:
    # Lesson 2, section 5: the same computation as its cell (the photo, 64 px, last block).
    photo = load_photo("chelsea", max_side=256)
    small = eval_transform(64, resize_size=64)(photo).unsqueeze(0)
    with torch.no_grad():
        maps = cls_attention(load_course_teacher(), small)[0]  # [heads, g, g]
    share = maps / maps.sum((-2, -1), keepdim=True)
    top = (share.flatten(1).max(1).values * share[0].numel()).tolist()
    best, others = max(top), [t for t in top if t != max(top)]
    head = top.index(best) + 1
    text = _markdown(LESSON_2, "3b29e85f")
    quoted = (
        f"gets {best:.0f} times its uniform share in head {head} and "
        f"{min(others):.0f} to {max(others):.0f} times in the others"
    )
    assert quoted in text, f"lesson 2 no longer says {quoted!r}"


def test_lesson_4_3_quotes_the_teachers_attention_share_on_the_object() -> None:
    # Lesson 4.3, section 5: the share of the head-averaged attention on the object's pixels
    # (no threshold) over its held-out images, as its cell prints it (500 images).
    from dinolab.train.course_teacher import COURSE_TEACHER_PATH, measure_attention_shares

    shares = measure_attention_shares(COURSE_TEACHER_PATH, attention_images=500)
    text = _markdown(LESSON_4_3, "b5a00006")
    quoted = (
        f"puts {shares['object_mass']:.0%} of its attention on objects that cover "
        f"{shares['uniform_object_mass']:.0%} of the image; the random network "
        f"{shares['random_object_mass']:.0%}"
    )
    assert quoted in text, f"lesson 4.3 no longer says {quoted!r}"
    prior = f"the centred Gaussian {shares['centre_prior_object_mass']:.0%}"
    assert prior in text, f"lesson 4.3 no longer says {prior!r}"
