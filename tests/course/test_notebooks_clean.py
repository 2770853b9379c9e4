"""The lesson notebooks as committed: outputs stripped, dinolab imported and never copied.

These tests read the ``.ipynb`` files; they do not execute them (see test_lessons_run.py).
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import nbformat
import pytest

import dinolab

COURSE = Path(__file__).resolve().parents[2] / "course"
LESSONS = sorted(COURSE.glob("*.ipynb"))
# The lessons this part of the course must contain (COURSE.md, modules 0 to 3).
REQUIRED = [
    "00_welcome.ipynb",
    "01_contrastive_vs_distillation.ipynb",
    "02_backbones.ipynb",
    "03_1_student_teacher.ipynb",
    "03_2_multicrop.ipynb",
    "03_3_projection_heads.ipynb",
]


def _code_without_magics(source: str) -> str:
    """IPython lines (``%matplotlib``, ``!pip``) are not Python: blank them before parsing."""
    return "\n".join("" if re.match(r"\s*[%!]", line) else line for line in source.splitlines())


@functools.lru_cache(maxsize=1)
def _public_names() -> dict[str, str]:
    """Every public class and function defined inside the dinolab package -> its module."""
    names: dict[str, str] = {}
    for info in pkgutil.walk_packages(dinolab.__path__, prefix="dinolab."):
        module = importlib.import_module(info.name)
        exported = getattr(module, "__all__", None)
        candidates = exported if exported is not None else dir(module)
        for name in candidates:
            if name.startswith("_"):
                continue
            obj = getattr(module, name, None)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(
                obj, "__module__", ""
            ).startswith("dinolab"):
                names.setdefault(name, obj.__module__)
    return names


def test_every_lesson_of_this_part_is_present() -> None:
    names = [p.name for p in LESSONS]
    missing = [n for n in REQUIRED if n not in names]
    assert not missing, f"course/ lacks {missing}; it has {names}"


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_committed_without_outputs(lesson: Path) -> None:
    nb = nbformat.read(lesson, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, (
        f"{lesson.name}: code cells {dirty} have outputs or an execution count; "
        "strip them before committing (e.g. jupyter nbconvert --clear-output --inplace)"
    )


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_imports_dinolab_and_redefines_none_of_its_names(lesson: Path) -> None:
    public = _public_names()
    assert {"DINOHead", "simclr_loss", "cosine_schedule"} <= public.keys(), (
        "the public-name scan found too few dinolab names; is the package importable?"
    )
    nb = nbformat.read(lesson, as_version=4)
    imports_dinolab = False
    redefined: list[tuple[int, str, str]] = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        tree = ast.parse(_code_without_magics(cell.source), filename=f"{lesson.name}[{i}]")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "dinolab":
                imports_dinolab = True
            elif isinstance(node, ast.Import) and any(
                a.name.split(".")[0] == "dinolab" for a in node.names
            ):
                imports_dinolab = True
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if node.name in public:
                    redefined.append((i, node.name, public[node.name]))
            elif isinstance(node, ast.Assign):
                # `simclr_loss = lambda ...` is a redefinition too
                for target in node.targets:
                    if (
                        isinstance(target, ast.Name)
                        and target.id in public
                        and isinstance(node.value, ast.Lambda)
                    ):
                        redefined.append((i, target.id, public[target.id]))
    assert imports_dinolab, f"{lesson.name} never imports dinolab"
    assert not redefined, (
        f"{lesson.name} defines dinolab public names again (cell, name, dinolab module): "
        f"{redefined}; "
        "import them from dinolab instead"
    )


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_lesson_has_the_parts_every_lesson_needs(lesson: Path) -> None:
    nb = nbformat.read(lesson, as_version=4)
    tagged = [
        i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])
    ]
    assert len(tagged) == 1, f"{lesson.name}: {len(tagged)} cells tagged 'parameters', expected 1"
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    assert tagged[0] in code_cells[:2], (
        f"{lesson.name}: the parameters cell is cell {tagged[0]}, expected among the first two "
        f"code cells {code_cells[:2]}"
    )
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    lowered = markdown.lower()
    for needle in ("learning objectives", "check yourself", "<details>"):
        assert needle in lowered, f"{lesson.name}: no {needle!r} in its text"
    if lesson.name != "00_welcome.ipynb":
        assert "pitfalls" in lowered, f"{lesson.name}: no 'Pitfalls' part"
        assert "exercises/" in markdown, f"{lesson.name}: no pointer to its graded exercise"
        assert "$" in markdown, f"{lesson.name}: no LaTeX math"
