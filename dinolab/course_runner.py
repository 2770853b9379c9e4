"""Execute the course's lesson notebooks headless, the way ``make course`` does.

Each lesson in ``course/`` runs top to bottom on a fresh kernel with nbclient. The executed
copy is written to ``<out>/<lesson>.ipynb`` and every PNG figure it displayed to
``<out>/figures/<lesson>/NN.png``; one line per lesson reports its wall-clock time. The
exit status is 1 when any lesson fails, so CI and ``make course`` stop on a broken lesson.

The kernel is the Jupyter kernel named ``python3`` (``make install`` registers the
virtual environment's interpreter under that name). Before running anything the runner
checks that this kernel starts the same Python as the runner itself, because a kernel that
points at another interpreter would import another ``dinolab`` (or none).

Examples:
    Run every lesson into ``build/course``::

        python -m dinolab.course_runner

    Run one lesson with a parameter changed (the value is a Python literal and is set in
    a cell inserted right after the lesson's cell tagged ``parameters``)::

        python -m dinolab.course_runner --only 02 -p IMG_SIZE=48
"""

from __future__ import annotations

import argparse
import ast
import base64
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "LessonResult",
    "check_kernel",
    "discover_lessons",
    "extract_figures",
    "inject_parameters",
    "main",
    "run_lesson",
]

PARAMETERS_TAG = "parameters"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
INJECTED_TAG = "injected-parameters"


@dataclass
class LessonResult:
    """Outcome of one executed lesson.

    Attributes:
        name: notebook file name, e.g. ``"00_welcome.ipynb"``.
        seconds: wall-clock time of the execution, kernel start-up included (s).
        ok: whether every cell ran without an error.
        error: the last line of the error when ``ok`` is False, else ``""``.
        executed: path of the executed copy (``None`` when nothing was written).
        figures: paths of the PNG figures extracted from the executed copy.
    """

    name: str
    seconds: float
    ok: bool
    error: str = ""
    executed: Path | None = None
    figures: list[Path] = field(default_factory=list)


def discover_lessons(course_dir: str | os.PathLike[str], only: Sequence[str] = ()) -> list[Path]:
    """Lesson notebooks in ``course_dir``, in the order of their names.

    Args:
        course_dir: the folder holding ``00_welcome.ipynb`` and the other lessons.
        only: keep only lessons whose file name contains one of these strings
            (e.g. ``["02", "03_2"]``); empty keeps all.

    Raises:
        FileNotFoundError: ``course_dir`` does not exist.
        ValueError: no notebook matches.
    """
    root = Path(course_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"course_runner: course folder {str(root)!r} does not exist")
    lessons = sorted(p for p in root.glob("*.ipynb") if not p.name.startswith("."))
    if only:
        lessons = [p for p in lessons if any(s in p.name for s in only)]
    if not lessons:
        raise ValueError(
            f"course_runner: no lesson notebook in {str(root)!r} matches {list(only) or '*'}"
        )
    return lessons


def _parse_assignment(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise ValueError(f"course_runner: parameter {text!r} is not of the form NAME=VALUE")
    try:
        parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError) as err:
        raise ValueError(
            f"course_runner: value of {name} ({value.strip()!r}) is not a Python literal; "
            "quote strings, e.g. DATASET='\"cifar10\"'"
        ) from err
    return name, parsed


def inject_parameters(nb, params: dict[str, object]):  # nbformat.NotebookNode in and out
    """Insert a cell setting ``params`` right after the cell tagged ``parameters``.

    The lesson's own parameters cell is kept, so its defaults stay visible in the executed
    copy; the injected cell (tagged ``injected-parameters``) overrides them.

    Raises:
        ValueError: ``params`` is not empty and the notebook has no ``parameters`` cell, or
            a name is not assigned in that cell.
    """
    import nbformat

    if not params:
        return nb
    index = next(
        (
            i
            for i, cell in enumerate(nb.cells)
            if PARAMETERS_TAG in cell.get("metadata", {}).get("tags", [])
        ),
        None,
    )
    if index is None:
        raise ValueError("course_runner: this notebook has no cell tagged 'parameters'")
    assigned = {
        target.id
        for node in ast.walk(ast.parse(nb.cells[index].source))
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }
    unknown = sorted(set(params) - assigned)
    if unknown:
        raise ValueError(
            f"course_runner: {unknown} are not parameters of this lesson; it has {sorted(assigned)}"
        )
    source = "# Parameters set by course_runner\n" + "\n".join(
        f"{k} = {v!r}" for k, v in params.items()
    )
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]})
    nb.cells.insert(index + 1, cell)
    return nb


def extract_figures(nb, folder: str | os.PathLike[str]) -> list[Path]:
    """Write every ``image/png`` output of an executed notebook to ``folder/NN.png``.

    Figures are numbered in the order they appear, from 01. Returns the written paths.
    """
    out = Path(folder)
    written: list[Path] = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                out.mkdir(parents=True, exist_ok=True)
                path = out / f"{len(written) + 1:02d}.png"
                path.write_bytes(base64.b64decode(data["image/png"]))
                written.append(path)
    return written


def check_kernel(kernel_name: str = "python3") -> str:
    """Return the interpreter the kernel ``kernel_name`` starts; refuse another Python.

    jupyter_client replaces a bare ``python`` in a kernel spec by the running interpreter,
    so such a spec is accepted too.

    Raises:
        ValueError: no such kernel, or it points at a different interpreter than this one.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel as err:
        raise ValueError(
            f"course_runner: no Jupyter kernel named {kernel_name!r}; run `make install` "
            "(it registers .venv's python as 'python3')"
        ) from err
    exe = spec.argv[0]
    major, minor = sys.version_info[:2]
    if exe in {"python", f"python{major}", f"python{major}.{minor}"}:
        return sys.executable
    if Path(exe).absolute() != Path(sys.executable).absolute():
        raise ValueError(
            f"course_runner: kernel {kernel_name!r} starts {exe!r}, not this interpreter "
            f"{sys.executable!r}; run `make install` to register the virtual environment's "
            "kernel, or pass --kernel"
        )
    return exe


def run_lesson(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    timeout: int = 600,
    kernel_name: str = "python3",
    params: dict[str, object] | None = None,
) -> LessonResult:
    """Execute one lesson on a fresh kernel, working directory = the lesson's folder.

    Args:
        path: the lesson notebook.
        out_dir: where to write the executed copy and ``figures/<lesson>/``; ``None``
            writes nothing.
        timeout: seconds allowed to each cell before it is stopped.
        kernel_name: Jupyter kernel to start.
        params: parameter overrides, see :func:`inject_parameters`.

    Returns:
        A :class:`LessonResult`; a failing cell gives ``ok=False`` (the executed copy up to
        the error is still written), it does not raise.
    """
    import nbformat
    import zmq
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    from traitlets.config import Config

    lesson = Path(path)
    nb = nbformat.read(lesson, as_version=4)
    inject_parameters(nb, dict(params or {}))
    # Curve-encrypted sockets when both zmq and the kernel support them (ipykernel does): the
    # lesson's code and outputs then never cross the loopback interface in plain text.
    config = Config()
    if zmq.has("curve"):
        config.KernelManager.transport_encryption = "auto"
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(lesson.parent.resolve())}},
        config=config,
    )
    error = ""
    start = time.perf_counter()
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
        plain = _ANSI_ESCAPE.sub("", str(err))  # tracebacks carry terminal colour codes
        lines = [line for line in plain.strip().splitlines() if line.strip()]
        error = lines[-1] if lines else type(err).__name__
    seconds = time.perf_counter() - start
    result = LessonResult(lesson.name, seconds, ok=not error, error=error)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        result.executed = out / lesson.name
        nbformat.write(nb, result.executed)
        fig_dir = out / "figures" / lesson.stem
        if fig_dir.exists():
            shutil.rmtree(fig_dir)
        result.figures = extract_figures(nb, fig_dir)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dinolab.course_runner",
        description="Run every lesson notebook of the course headless (nbclient) and save the "
        "executed notebooks and their figures.",
    )
    parser.add_argument(
        "--course-dir", default="course", help="folder of the lesson notebooks (default: course)"
    )
    parser.add_argument(
        "--out",
        default="build/course",
        help="folder for executed notebooks and figures/<lesson>/NN.png (default: build/course)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="run only lessons whose file name contains TEXT; repeat for several "
        "(default: all lessons)",
    )
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a lesson parameter with a Python literal, e.g. -p BATCH_SIZE=16 "
        "(default: the values in each lesson's parameters cell)",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        default=600,
        help="seconds allowed per cell before it is stopped (default: 600)",
    )
    parser.add_argument(
        "--kernel", default="python3", help="Jupyter kernel to run the lessons (default: python3)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 when every lesson ran)."""
    args = _parser().parse_args(argv)
    try:
        lessons = discover_lessons(args.course_dir, args.only)
        params = dict(_parse_assignment(p) for p in args.param)
        python = check_kernel(args.kernel)
    except (ValueError, FileNotFoundError) as err:
        print(err, file=sys.stderr)
        return 2
    print(f"Running {len(lessons)} lesson(s), kernel {args.kernel!r} ({python}), into {args.out}")
    total = 0.0
    failed = []
    for lesson in lessons:
        try:
            result = run_lesson(
                lesson, args.out, timeout=args.timeout, kernel_name=args.kernel, params=params
            )
        except ValueError as err:  # a parameter this lesson does not have
            print(f"{lesson.name:<40} skipped: {err}")
            continue
        total += result.seconds
        status = "ok" if result.ok else f"FAILED: {result.error}"
        print(
            f"{result.name:<40} {result.seconds:7.1f} s  "
            f"{len(result.figures):2d} figures  {status}",
            flush=True,
        )
        if not result.ok:
            failed.append(result.name)
    print(f"{'total':<40} {total:7.1f} s  executed notebooks and figures in {args.out}")
    if failed:
        print(f"{len(failed)} lesson(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
