"""dinolab.grading.references: an answer that calls dinolab's own implementation is refused.

The static reading is tested on its own (aliases, getattr tricks, what it leaves alone); then
the grader refuses such an answer in a real exercise (the course's 1.3 notebook with one
solution cell changed) while the honest answers of the other exercises keep their points.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from dinolab.grading.nbgrader_flow import assignments
from dinolab.grading.notebook import read_plan
from dinolab.grading.references import (
    EXTRA_REFERENCES,
    find_reference_uses,
    forbidden_names,
    reference_problem,
    refusal_message,
)
from dinolab.grading.report import PASSED, REFUSED, format_report
from dinolab.grading.runner import grade_notebook

REPO = Path(__file__).resolve().parents[2]
SETUP = "import torch\nimport torch.nn.functional as F\n\nimport dinolab.losses as reference"
HONEST = ("def byol_loss(p, z):\n"
          "    cos = F.cosine_similarity(p, z.detach(), dim=-1)\n"
          "    return (2 - 2 * cos).mean()\n")


def uses(solution: str, context: tuple[str, ...] = (SETUP,),
         forbidden: frozenset[str] = frozenset({"byol_loss"})) -> list[tuple[str, int]]:
    return [(u.name, u.line) for u in find_reference_uses(solution, context, forbidden)]


def test_an_honest_answer_uses_no_reference() -> None:
    assert uses(HONEST) == []
    # other dinolab objects are fine: only the reference of this exercise is refused
    assert uses("from dinolab.models import DINOHead\n"
                "def byol_loss(p, z):\n    return DINOHead(4, 8)(p).sum()\n") == []


@pytest.mark.parametrize(
    ("solution", "expected"),
    [
        # the example, and the set-up cell's own alias
        ("import dinolab\ndef byol_loss(p, z):\n    return dinolab.losses.byol_loss(p, z)\n",
         [("dinolab.losses.byol_loss", 3)]),
        ("def byol_loss(p, z):\n    return reference.byol_loss(p, z)\n",
         [("dinolab.losses.byol_loss", 2)]),
        # import aliases
        ("from dinolab.losses import byol_loss as f\ndef byol_loss(p, z):\n    return f(p, z)\n",
         [("dinolab.losses.byol_loss", 1), ("dinolab.losses.byol_loss", 3)]),
        ("import dinolab.losses as L\ndef byol_loss(p, z):\n    return L.byol_loss(p, z)\n",
         [("dinolab.losses.byol_loss", 3)]),
        ("def byol_loss(p, z):\n    from dinolab.losses.contrastive import byol_loss as b\n"
         "    return b(p, z)\n", [("dinolab.losses.contrastive.byol_loss", 2),
                                  ("dinolab.losses.contrastive.byol_loss", 3)]),
        ("from dinolab.losses import *\nf = byol_loss\ndef byol_loss(p, z):\n    return f(p, z)\n",
         [("dinolab.losses.byol_loss", 2), ("dinolab.losses.byol_loss", 4)]),
        # assignments, default arguments, the whole answer as an alias
        ("g = reference.byol_loss\ndef byol_loss(p, z):\n    return g(p, z)\n",
         [("dinolab.losses.byol_loss", 1), ("dinolab.losses.byol_loss", 3)]),
        ("def byol_loss(p, z, fn=reference.byol_loss):\n    return fn(p, z)\n",
         [("dinolab.losses.byol_loss", 1)]),
        ("byol_loss = reference.byol_loss\n", [("dinolab.losses.byol_loss", 1)]),
        # getattr and friends, with names built from constants
        ("def byol_loss(p, z):\n    return getattr(reference, 'byol' + '_loss')(p, z)\n",
         [("dinolab.losses.byol_loss", 2)]),
        ("name = 'byol_loss'\ndef byol_loss(p, z):\n"
         "    return getattr(reference, f'{name}')(p, z)\n",
         [("dinolab.losses.byol_loss", 3)]),
        ("def byol_loss(p, z):\n    return vars(reference)['byol_loss'](p, z)\n",
         [("dinolab.losses.byol_loss", 2)]),
        ("def byol_loss(p, z):\n    return reference.__dict__['byol_loss'](p, z)\n",
         [("dinolab.losses.byol_loss", 2)]),
        ("import importlib\ndef byol_loss(p, z):\n"
         "    return importlib.import_module('dinolab.losses').byol_loss(p, z)\n",
         [("dinolab.losses.byol_loss", 3)]),
        ("def byol_loss(p, z):\n"
         "    return __import__('dinolab.losses', fromlist=['x']).byol_loss(p, z)\n",
         [("dinolab.losses.byol_loss", 2)]),
        ("def byol_loss(p, z):\n    return __import__('dinolab').losses.byol_loss(p, z)\n",
         [("dinolab.losses.byol_loss", 2)]),
        ("import sys\ndef byol_loss(p, z):\n"
         "    return sys.modules['dinolab.losses'].byol_loss(p, z)\n",
         [("dinolab.losses.byol_loss", 3)]),
        # code strings and the global namespace
        ("def byol_loss(p, z):\n    return eval('reference.byol_loss')(p, z)\n",
         [("dinolab.losses.byol_loss", 2)]),
        ("def byol_loss(p, z):\n    return eval('reference.byol' + '_loss(p, z)')\n",
         [("dinolab.losses.byol_loss", 2)]),
        ("exec('f = reference.byol_loss')\ndef byol_loss(p, z):\n    return f(p, z)\n",
         [("dinolab.losses.byol_loss", 1), ("dinolab.losses.byol_loss", 3)]),
        ("def byol_loss(p, z):\n    return globals()['reference'].byol_loss(p, z)\n",
         [("dinolab.losses.byol_loss", 2)]),
        # IPython magics do not stop the reading
        ("%time x = 1\ndef byol_loss(p, z):\n    return reference.byol_loss(p, z)\n",
         [("dinolab.losses.byol_loss", 3)]),
    ],
)
def test_a_call_to_the_reference_is_found_through_aliases(
    solution: str, expected: list[tuple[str, int]]
) -> None:
    assert uses(solution) == expected


def test_a_helper_of_an_earlier_cell_that_wraps_the_reference_counts() -> None:
    helper = "def helper(p, z):\n    return reference.byol_loss(p, z)\n"
    assert uses("def byol_loss(p, z):\n    return helper(p, z)\n", (SETUP, helper)) == [
        ("dinolab.losses.byol_loss", 2)]
    # a helper that does not use the reference is fine
    assert uses("def byol_loss(p, z):\n    return helper(p, z)\n",
                (SETUP, "def helper(p, z):\n    return (p - z).sum()\n")) == []


def test_methods_and_subclasses_of_a_reference_class_count() -> None:
    forbidden = frozenset({"DINOLoss"})
    assert uses("def update_center(c, t, m):\n    return reference.DINOLoss.update_center(c, t)\n",
                forbidden=forbidden) == [("dinolab.losses.DINOLoss.update_center", 2)]
    assert uses("class MyLoss(reference.DINOLoss):\n    pass\n", forbidden=forbidden) == [
        ("dinolab.losses.DINOLoss", 1)]


def test_what_a_static_reading_cannot_catch() -> None:
    """Documented limits: names and code computed at run time."""
    assert uses("def byol_loss(p, z, name='byol_loss'):\n"
                "    return getattr(reference, name)(p, z)\n") == []   # a parameter, not a constant
    assert uses("def byol_loss(p, z):\n"
                "    return eval('reference.' + ''.join(['byol', '_loss']))(p, z)\n") == []


def test_shadowing_and_unrelated_names_are_left_alone() -> None:
    # the learner's own `reference` rebinding, and a same-named attribute of another object
    assert uses("reference = None\ndef byol_loss(p, z):\n    return reference.byol_loss(p, z)\n"
                ) == []
    assert uses("def byol_loss(p, z):\n    return torch.byol_loss(p, z)\n") == []
    assert uses("def byol_loss(p, z):\n    return 1 +\n") == []  # a syntax error is not refused


def test_forbidden_names_are_the_definitions_and_the_listed_extras() -> None:
    assert forbidden_names("01_3_contrastive_vs_distillation", "kd_loss",
                           "def kd_loss(s, t):\n    pass\n") == {"kd_loss", "DistillKL"}
    # a learner's function called like a dinolab module does not forbid the whole module
    assert forbidden_names("x", "y", "def train(x):\n    pass\ndef data():\n    pass\n") == set()


def test_the_set_up_reference_step_of_exercise_4_3_is_refused() -> None:
    plan = read_plan(REPO / "exercises/04_3_dino_loss_and_training_loop/"
                            "04_3_dino_loss_and_training_loop.ipynb")
    context = [c.source for c in plan.setup]
    answer = ("def train_step(student, teacher, loss_fn, optimizer, crops, epoch, momentum):\n"
              "    return reference_step(student, teacher, loss_fn, optimizer, crops, epoch, "
              "momentum)\n")
    message = reference_problem("04_3_dino_loss_and_training_loop", "train_step", answer, context)
    assert "reference_step, defined in an earlier cell" in message


def test_every_assignment_and_exercise_listed_exists() -> None:
    names = set(assignments(REPO))
    assert set(EXTRA_REFERENCES) <= names
    for aid, exercises in EXTRA_REFERENCES.items():
        plan = read_plan(REPO / "solutions" / aid / f"{aid}.ipynb")
        assert set(exercises) <= {e.name for e in plan.exercises}, aid


def test_the_message_says_where_and_why() -> None:
    found = find_reference_uses("import dinolab.losses as L\ndef byol_loss(p, z):\n"
                                "    return L.byol_loss(p, z)\n", (), {"byol_loss"})
    message = refusal_message("byol_loss", found)
    assert message.startswith("refused: your `byol_loss` cell uses dinolab's own implementation")
    assert "line 3: return L.byol_loss(p, z)   (uses dinolab.losses.byol_loss)" in message
    assert "compare your code with exactly that implementation" in message
    assert "scores 0" in message


ASSIGNMENT = "01_3_contrastive_vs_distillation"


def _with_answer(tmp_path: Path, grade_id: str, body: str) -> Path:
    """A copy of the 1.3 source assignment whose `grade_id` solution cell is `body`."""
    folder = tmp_path / ASSIGNMENT
    shutil.copytree(REPO / "solutions" / ASSIGNMENT, folder)
    path = folder / f"{ASSIGNMENT}.ipynb"
    nb = nbformat.read(path, as_version=4)
    (cell,) = [c for c in nb.cells
               if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == grade_id]
    cell.source = body
    nbformat.write(nb, path)
    return path


def test_the_grader_refuses_the_reference_and_keeps_honest_points(tmp_path: Path) -> None:
    path = _with_answer(tmp_path, "byol_loss",
                        "from dinolab.losses import byol_loss as f\n\n"
                        "def byol_loss(p, z):\n    return f(p, z)\n")
    result = grade_notebook(path)
    by_name = {e.name: e for e in result.exercises}
    refused = by_name["byol_loss"]
    assert refused.earned == 0 and refused.possible == 2
    assert {t.status for t in refused.tests} == {REFUSED}
    assert refused.status.startswith("refused")
    assert "uses dinolab's own implementation" in refused.tests[0].message
    # the other (honest) answers keep their full marks
    for name, exercise in by_name.items():
        if name != "byol_loss":
            assert {t.status for t in exercise.tests} == {PASSED}, name
    report = format_report(result)
    assert "byol_loss / byol_loss_values, byol_loss_stop_gradient (2 pt, refused)" in report
    assert "line 1: from dinolab.losses import byol_loss as f" in report


def _capstone_problem(exercise: str, answer: str) -> str:
    plan = read_plan(REPO / "exercises/07_capstone/07_capstone.ipynb")
    return reference_problem("07_capstone", exercise, answer, [c.source for c in plan.setup])


def test_the_capstone_refuses_the_librarys_parts_and_allows_its_building_blocks() -> None:
    assert "uses dinolab.eval.cls_attention" in _capstone_problem(
        "cls_attention_maps", "def cls_attention_maps(vit, images):\n"
                              "    return cls_attention(vit, images)\n")
    assert "dinolab.train.recipes.knn_evaluate" in _capstone_problem(
        "knn_predict", "from dinolab.train.recipes import knn_evaluate\n"
                       "def knn_predict(a, b, c, n, k=10, temperature=0.07):\n"
                       "    return knn_evaluate(None, a, c, n)\n")
    assert "dinolab.train.recipes.dino.train_dino" in _capstone_problem(
        "train_dino", "import dinolab.train.recipes.dino as recipe\n"
                      "def train_dino(images, steps=40, batch_size=16, seed=0):\n"
                      "    return recipe.train_dino(images)\n")
    # the building blocks the capstone names are fine
    assert _capstone_problem(
        "train_dino", "def train_dino(images, steps=40, batch_size=16, seed=0):\n"
                      "    loss_fn = DINOLoss(OUT_DIM, ncrops=4)\n"
                      "    dinolab.ema.ema_update(make_student(0), make_student(1), 0.99)\n"
                      "    return teacher_entropy(loss_fn.center.softmax(-1))\n") == ""
