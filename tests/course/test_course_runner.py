"""dinolab.course_runner on tiny notebooks written by the tests (fast; the lessons are run by
test_lessons_run.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import nbformat
import pytest

from dinolab.course_runner import (
    check_kernel,
    discover_lessons,
    extract_figures,
    inject_parameters,
    main,
    run_lesson,
)

# The 1x1 PNG a test figure output carries.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
    )
).decode()


def _notebook(path: Path, *cells: tuple[str, str, list[str]]) -> Path:
    nb = nbformat.v4.new_notebook()
    for kind, source, tags in cells:
        make = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
        nb.cells.append(make(source, metadata={"tags": tags}))
    nbformat.write(nb, path)
    return path


def test_discover_sorts_filters_and_refuses_missing(tmp_path: Path) -> None:
    for name in ("02_b.ipynb", "00_a.ipynb", "01_c.ipynb"):
        _notebook(tmp_path / name, ("code", "x = 1", []))
    (tmp_path / "notes.txt").write_text("not a lesson")
    names = [p.name for p in discover_lessons(tmp_path)]
    assert names == ["00_a.ipynb", "01_c.ipynb", "02_b.ipynb"]
    names = [p.name for p in discover_lessons(tmp_path, ["01", "02"])]
    assert names == ["01_c.ipynb", "02_b.ipynb"]
    with pytest.raises(ValueError, match="matches"):
        discover_lessons(tmp_path, ["99"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_lessons(tmp_path / "absent")


def test_inject_parameters_adds_a_cell_after_the_parameters_cell(tmp_path: Path) -> None:
    path = _notebook(
        tmp_path / "l.ipynb",
        ("markdown", "# title", []),
        ("code", "SEED = 0\nDATASET: str = 'digits'", ["parameters"]),
        ("code", "print(SEED)", []),
    )
    nb = inject_parameters(nbformat.read(path, as_version=4), {"DATASET": "cifar10", "SEED": 3})
    assert len(nb.cells) == 4
    assert nb.cells[2].metadata["tags"] == ["injected-parameters"]
    namespace: dict[str, object] = {}
    exec(nb.cells[1].source + "\n" + nb.cells[2].source, namespace)  # noqa: S102
    assert namespace["DATASET"] == "cifar10" and namespace["SEED"] == 3
    with pytest.raises(ValueError, match=r"\['EPOCHS'\] are not parameters"):
        inject_parameters(nbformat.read(path, as_version=4), {"EPOCHS": 2})
    bare = _notebook(tmp_path / "bare.ipynb", ("code", "x = 1", []))
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"):
        inject_parameters(nbformat.read(bare, as_version=4), {"x": 2})


def test_extract_figures_writes_each_png_in_order(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("plot()")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "fig"}),
        nbformat.v4.new_output("stream", name="stdout", text="hello"),
        nbformat.v4.new_output("execute_result", data={"image/png": PNG}, execution_count=1),
    ]
    nb.cells.append(cell)
    written = extract_figures(nb, tmp_path / "figs")
    assert [p.name for p in written] == ["01.png", "02.png"]
    assert written[0].read_bytes() == base64.b64decode(PNG)


def test_run_lesson_executes_in_the_lesson_folder_and_saves_figures(tmp_path: Path) -> None:
    course = tmp_path / "course"
    course.mkdir()
    (course / "data.txt").write_text("41")
    _notebook(
        course / "00_demo.ipynb",
        ("code", "N = 1", ["parameters"]),
        ("code", "value = int(open('data.txt').read()) + N\nprint(value)", []),
        (
            "code",
            "import matplotlib\nmatplotlib.use('module://matplotlib_inline.backend_inline')\n"
            "import matplotlib.pyplot as plt\nplt.plot([0, value]); plt.show()",
            [],
        ),
    )
    out = tmp_path / "build"
    result = run_lesson(course / "00_demo.ipynb", out, timeout=120, params={"N": 2})
    assert result.ok, result.error
    executed = nbformat.read(out / "00_demo.ipynb", as_version=4)
    assert executed.cells[2].outputs[0]["text"].strip() == "43"  # 41 + injected N=2
    assert [p.name for p in result.figures] == ["01.png"]
    assert (out / "figures" / "00_demo" / "01.png").read_bytes().startswith(b"\x89PNG")
    # the source notebook is left as it was
    assert not nbformat.read(course / "00_demo.ipynb", as_version=4).cells[1].outputs


def test_main_reports_each_lesson_and_fails_on_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    course = tmp_path / "course"
    course.mkdir()
    _notebook(course / "00_good.ipynb", ("code", "x = 1", []))
    _notebook(course / "01_bad.ipynb", ("code", "raise ValueError('broken lesson')", []))
    status = main(["--course-dir", str(course), "--out", str(tmp_path / "out"), "--timeout", "120"])
    text = capsys.readouterr()
    assert status == 1
    lines = text.out.splitlines()
    assert any(line.startswith("00_good.ipynb") and line.endswith("ok") for line in lines)
    assert any(
        line.startswith("01_bad.ipynb") and "FAILED" in line and "broken lesson" in line
        for line in lines
    ), text.out
    assert "01_bad.ipynb" in text.err
    assert main(["--course-dir", str(tmp_path / "nowhere")]) == 2
    assert main(["--course-dir", str(course), "-p", "x=not a literal"]) == 2


def test_check_kernel_refuses_a_missing_kernel() -> None:
    with pytest.raises(ValueError, match="no Jupyter kernel named 'no-such-kernel-xyz'"):
        check_kernel("no-such-kernel-xyz")
