"""dinolab.widgets and the lessons' explorers.

* the helper: knobs are checked, the figure is drawn at the defaults, moving a control redraws
  it, an error in a redraw is shown instead of lost, and without ipywidgets only the figure
  remains;
* on a real kernel (nbclient, as ``make course`` and CI run the lessons): the explorer leaves a
  static PNG in the cell's outputs, and a change replaces that same output (display id);
* every explorer in ``course/`` (code cells tagged ``explorer``): its lesson's code up to the
  explorer runs in this process, then each control is moved and the figure's data must change.
"""

from __future__ import annotations

import ast
import base64
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import dinolab.widgets as widgets
from dinolab.widgets import Choice, Explorer, Slider, explore

COURSE = Path(__file__).resolve().parents[1] / "course"
EXPLORER_TAG = "explorer"


def _line(fig: Figure, tau: float) -> None:
    ax = fig.subplots()
    ax.plot([0.0, 1.0], [0.0, tau], label="line")
    ax.set(title=f"tau = {tau}", xlabel="x", ylabel="y")


def _figure_data(fig: Figure) -> list[np.ndarray]:
    """What the figure shows, as arrays: lines, bars and patches, images, scatter offsets."""
    data: list[np.ndarray] = []
    for ax in fig.axes:
        data += [np.asarray(line.get_xydata(), dtype=float) for line in ax.lines]
        for patch in ax.patches:
            verts = patch.get_path().vertices
            data.append(np.asarray(patch.get_transform().transform(verts), dtype=float))
        data += [np.asarray(im.get_array(), dtype=float) for im in ax.images]
        data += [np.asarray(c.get_offsets(), dtype=float) for c in ax.collections]
    return data


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and np.allclose(x, y, equal_nan=True) for x, y in zip(a, b, strict=True)
    )


def _other_value(knob: Slider | Choice, current: object) -> object:
    """A value of the knob far from ``current``: the far end of a slider, another option."""
    if isinstance(knob, Choice):
        options = list(knob.options)
        return options[-1] if current != options[-1] else options[0]
    if abs(float(current) - knob.min) < abs(float(current) - knob.max):
        return knob.max
    return knob.min


# -- the helper --------------------------------------------------------------------------------


def test_explore_draws_the_defaults_and_a_slider_change_redraws() -> None:
    ex = explore(_line, tau=Slider(0.1, 1.0, 0.1, value=0.5))
    assert isinstance(ex, Explorer) and ex.values == {"tau": 0.5}
    assert ex.figure.axes[0].lines[0].get_ydata()[1] == pytest.approx(0.5)
    before = _figure_data(ex.figure)
    ex.controls["tau"].value = 0.9  # what a learner's drag does
    assert ex.values == {"tau": 0.9}
    assert ex.figure.axes[0].lines[0].get_ydata()[1] == pytest.approx(0.9)
    assert not _same(before, _figure_data(ex.figure))
    assert len(ex.figure.axes) == 1, "a redraw must clear the figure first"
    assert ex.png().startswith(b"\x89PNG")


def test_update_moves_the_control_and_refuses_unknown_names() -> None:
    ex = explore(_line, tau=Slider(0.1, 1.0, 0.1, value=0.5))
    ex.update(tau=0.2)
    assert ex.controls["tau"].value == pytest.approx(0.2)
    assert ex.figure.axes[0].lines[0].get_ydata()[1] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="not knobs"):
        ex.update(temperature=0.3)


def test_widget_kinds_follow_the_knobs() -> None:
    def draw(fig: Figure, a: int, b: float, c: float, d: str, e: float) -> None:
        fig.subplots().plot([a, b, c, e])

    ex = explore(
        draw,
        a=Slider(1, 10, 1, value=3),
        b=Slider(0.0, 1.0),
        c=Slider(0.01, 1.0, 0.1, value=0.04, log=True),
        d=Choice(["x", "y"]),
        e=Choice([0.9, 0.99, 0.999], 0.99, slider=True),
    )
    kinds = {name: type(w).__name__ for name, w in ex.controls.items()}
    assert kinds == {
        "a": "IntSlider",
        "b": "FloatSlider",
        "c": "FloatLogSlider",
        "d": "Dropdown",
        "e": "SelectionSlider",
    }
    assert ex.values == {"a": 3, "b": 0.0, "c": 0.04, "d": "x", "e": 0.99}
    assert ex.controls["c"].value == pytest.approx(0.04)
    assert all(not w.continuous_update for n, w in ex.controls.items() if n != "d")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Slider(1.0, 0.5), "smaller than max"),
        (lambda: Slider(0.0, 1.0, value=2.0), "outside"),
        (lambda: Slider(0.0, 1.0, log=True), "min > 0"),
        (lambda: Slider(0.0, 1.0, step=0), "step"),
        (lambda: Slider("a", 1.0), "number"),
        (lambda: Choice([]), "non-empty"),
        (lambda: Choice(["a"], "b"), "not one of"),
    ],
)
def test_bad_knobs_are_refused_with_their_value(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_explore_refuses_a_draw_function_without_the_knob() -> None:
    with pytest.raises(TypeError, match=r"does not take the knobs \['temperature'\]"):
        explore(_line, temperature=Slider(0.1, 1.0))
    with pytest.raises(ValueError, match="at least one knob"):
        explore(_line)
    with pytest.raises(TypeError, match="expected Slider"):
        explore(_line, tau=(0.1, 1.0))


def test_an_error_while_redrawing_is_shown_beside_the_sliders() -> None:
    def draw(fig: Figure, tau: float) -> None:
        if tau > 0.8:
            raise RuntimeError("tau too large for this drawing")
        _line(fig, tau)

    ex = explore(draw, tau=Slider(0.1, 1.0, 0.1, value=0.5))
    ex.controls["tau"].value = 0.9  # a slider callback must not raise into the front-end
    assert "tau too large" in ex._status.value
    ex.controls["tau"].value = 0.3
    assert ex._status.value == ""
    with pytest.raises(RuntimeError, match="tau too large"):
        ex.update(tau=1.0)  # called directly, the error is raised


def test_without_ipywidgets_only_the_static_figure_remains(monkeypatch) -> None:
    monkeypatch.setattr(widgets, "_ipywidgets_available", lambda: False)
    ex = explore(_line, tau=Slider(0.1, 1.0, 0.1, value=0.5))
    assert ex.controls == {} and ex.widget is None
    before = _figure_data(ex.figure)
    ex.update(tau=0.7)
    assert not _same(before, _figure_data(ex.figure))


def test_the_figure_is_not_registered_with_pyplot() -> None:
    import matplotlib.pyplot as plt

    plt.close("all")
    ex = explore(_line, tau=Slider(0.1, 1.0, 0.1, value=0.5))
    ex.update(tau=0.8)
    assert plt.get_fignums() == [], "the inline backend would show it a second time"


# -- on a real kernel, as the lessons run headless -------------------------------------------


def test_on_a_kernel_the_static_figure_is_an_output_and_a_change_replaces_it(
    tmp_path: Path,
) -> None:
    from nbclient import NotebookClient

    cells = [
        "from dinolab.widgets import Slider, explore\n\n"
        "def draw(fig, tau):\n"
        "    ax = fig.subplots()\n"
        "    ax.plot([0, 1], [0, tau])\n"
        "    ax.set_ylim(0, 1)\n\n"
        "ex = explore(draw, tau=Slider(0.1, 1.0, 0.1, value=0.5))\n"
        "ex",
        "first = ex.png()\n"
        "ex.controls['tau'].value = 0.9\n"
        "from IPython.display import Image, display\n"
        "print('changed:', first != ex.png())\n"
        "display(Image(ex.png()))",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    shown, controls = nb.cells[0].outputs
    assert "image/png" in shown.data, "the static figure is a PNG output of the cell"
    assert "application/vnd.jupyter.widget-view+json" in controls.data
    assert "tau = 0.5" in controls.data["text/plain"], "a page without widgets names the value"
    printed = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert "changed: True" in printed
    after = next(o for o in nb.cells[1].outputs if "image/png" in o.get("data", {}))
    # The slider's change replaced cell 1's figure in place (update_display_data).
    assert shown.data["image/png"] == after.data["image/png"]
    assert base64.b64decode(shown.data["image/png"]).startswith(b"\x89PNG")


# -- the lessons' explorers --------------------------------------------------------------------


def _explorer_cells() -> list[tuple[Path, int]]:
    found = []
    for lesson in sorted(COURSE.glob("*.ipynb")):
        nb = nbformat.read(lesson, as_version=4)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code" and EXPLORER_TAG in cell.metadata.get("tags", []):
                found.append((lesson, i))
    return found


EXPLORERS = _explorer_cells()


def _python(source: str) -> str:
    """A cell's code without IPython's ``%`` / ``!`` lines."""
    return "\n".join("" if re.match(r"\s*[%!]", ln) else ln for ln in source.splitlines())


def _run_to_explorer(lesson: Path, index: int) -> Explorer:
    """Run the lesson's code cells up to ``index`` here; return the explorer cell's value."""
    nb = nbformat.read(lesson, as_version=4)
    namespace: dict[str, object] = {"__name__": "__lesson__"}
    for cell in nb.cells[:index]:
        if cell.cell_type == "code":
            exec(compile(_python(cell.source), f"{lesson.name}[{index}]", "exec"), namespace)
    tree = ast.parse(_python(nb.cells[index].source))
    last = tree.body[-1]
    assert isinstance(last, ast.Expr), f"{lesson.name}: the explorer cell must end in explore(...)"
    assign = ast.Assign(targets=[ast.Name("_explorer", ast.Store())], value=last.value)
    tree.body[-1] = ast.copy_location(assign, last)
    exec(compile(ast.fix_missing_locations(tree), lesson.name, "exec"), namespace)
    return namespace["_explorer"]


def test_the_course_has_an_explorer_per_module() -> None:
    # COURSE.md's modules: 1 (lesson 1.3), 3 (3.1, 3.2), 4 (4.1, 4.2), 5, 6.
    names = sorted({lesson.name for lesson, _ in EXPLORERS})
    for prefix in ("01_", "03_1_", "03_2_", "04_1_", "04_2_", "05_", "06_"):
        assert any(n.startswith(prefix) for n in names), f"no explorer in {prefix}*; found {names}"


@pytest.mark.notebooks
@pytest.mark.parametrize("lesson, index", EXPLORERS, ids=[f"{p.stem}[{i}]" for p, i in EXPLORERS])
def test_each_explorer_redraws_when_its_controls_move(
    lesson: Path, index: int, monkeypatch
) -> None:
    import matplotlib.pyplot as plt

    nb = nbformat.read(lesson, as_version=4)
    previous = nb.cells[index - 1]
    assert previous.cell_type == "markdown" and "guess" in previous.source.lower(), (
        f"{lesson.name}: the explorer needs a markdown cell before it saying what to predict"
    )
    monkeypatch.chdir(lesson.parent)  # lessons run from course/, as course_runner runs them
    threads = torch.get_num_threads()
    try:
        ex = _run_to_explorer(lesson, index)
        assert isinstance(ex, Explorer)
        assert ex.controls, "ipywidgets is part of the course extra: the sliders must exist"
        for ax in ex.figure.axes:
            if ax.axison:
                assert ax.get_title() or ex.figure.get_suptitle(), f"{lesson.name}: untitled plot"
                assert ax.get_xlabel() and ax.get_ylabel(), f"{lesson.name}: unlabelled axes"
        for name, knob in ex.knobs.items():
            before = _figure_data(ex.figure)
            ex.controls[name].value = _other_value(knob, ex.values[name])
            assert ex._status.value == "", f"{lesson.name}: redraw failed: {ex._status.value}"
            assert not _same(before, _figure_data(ex.figure)), (
                f"{lesson.name}: moving {name!r} to {ex.values[name]!r} left the figure unchanged"
            )
    finally:
        torch.set_num_threads(threads)
        plt.close("all")
