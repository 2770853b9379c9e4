"""Run a graded notebook in a fresh Python kernel and score every autograded test cell.

The notebook file is only read: the grader builds its own in-memory copy, cell by cell, and
executes it with nbclient in an ipykernel started from *this* Python (``sys.executable``, the
course's virtual environment), whatever kernelspecs the machine has installed.

Order of work:

1. the set-up cells (imports, data), with a generous time limit;
2. each exercise in turn: its solution cell, then its test cells. All cells of one exercise
   share its time limit (``time_limit`` seconds, 60 by default). A cell still running when
   the limit is reached is interrupted and reported; if the kernel does not respond to the
   interrupt (or dies), it is restarted and the cells that had run fine before are replayed,
   so the next exercises are still graded. A solution cell that uses dinolab's own
   implementation of what it asks for (:mod:`dinolab.grading.references`, read from its
   source) still runs, but its checks do not: they are ``refused`` and score 0.

Examples:
    >>> result = grade_notebook("exercises/04_1_centering/04_1_centering.ipynb")  # doctest: +SKIP
    >>> print(format_report(result))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import zmq
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError
from nbclient.util import run_sync
from traitlets import default

from dinolab.grading.notebook import Cell, Exercise, NotebookPlan, read_plan
from dinolab.grading.references import EXTRA_REFERENCES, reference_problem
from dinolab.grading.report import (
    ERROR,
    FAILED,
    NOT_ATTEMPTED,
    NOT_ATTEMPTED_MESSAGE,
    NOT_RUN,
    PASSED,
    REFUSED,
    TIME_LIMIT,
    ExerciseResult,
    NotebookResult,
    TestResult,
)

__all__ = [
    "DEFAULT_TIME_LIMIT",
    "SETUP_TIME_LIMIT",
    "VenvKernelManager",
    "default_jobs",
    "grade_notebook",
    "grade_notebooks",
    "kernel_env",
]

DEFAULT_TIME_LIMIT = 60.0
"""Seconds each exercise may run (its solution cell and all its checks together)."""

SETUP_TIME_LIMIT = 300.0
"""Seconds the set-up cells of a notebook may take (the first ``import torch`` can be slow)."""

_PROBE_TIMEOUT = 10  # seconds a trivial cell may take after an interrupt before a restart
_TIMEOUT_ENAME = "DinolabTimeLimit"  # sentinel nbclient reports for a cell stopped at the limit
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CELL_FRAME = re.compile(r"Cell In\[(\d+)\], line (\d+)")


class VenvKernelManager(AsyncKernelManager):
    """An ipykernel started with this process's interpreter, not whatever ``python3`` resolves to.

    Grading must import the same ``dinolab`` and ``torch`` as the grader; a ``python3``
    kernelspec left in ``~/.local/share/jupyter`` by another install would not.
    """

    @default("transport_encryption")
    def _encrypt_when_possible(self) -> str:
        # CurveZMQ when this pyzmq has it; it also keeps the kernel from warning about
        # plain-text TCP on every start.
        return "auto" if zmq.has("curve") else "disabled"

    @property
    def kernel_spec(self) -> KernelSpec:  # type: ignore[override]
        if self._kernel_spec is None:
            self._kernel_spec = KernelSpec(
                argv=[
                    sys.executable,
                    "-Xfrozen_modules=off",
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    "{connection_file}",
                ],
                display_name=f"Python {sys.version_info.major}.{sys.version_info.minor} (grader)",
                language="python",
                # as the kernelspec that ipykernel installs declares
                metadata={"supported_encryption": ["curve"]},
            )
        return self._kernel_spec


def kernel_env() -> dict[str, str]:
    """Environment of the grading kernel: this dinolab first on the path, no GUI backend."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.setdefault("MPLBACKEND", "Agg")
    env["DINOLAB_GRADING"] = "1"
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    return env


@dataclass
class _Outcome:
    """What happened when one cell ran."""

    status: str  # "ok", "error", "timeout", "dead"
    ename: str = ""
    evalue: str = ""
    traceback: tuple[str, ...] = ()
    seconds: float = 0.0


class _NotebookGrader:
    def __init__(self, plan: NotebookPlan, time_limit: float, setup_time_limit: float) -> None:
        self.plan = plan
        self.time_limit = time_limit
        self.setup_time_limit = setup_time_limit
        self.nb = nbformat.v4.new_notebook()
        self.nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                          "language": "python"}
        self.client = NotebookClient(
            self.nb,
            kernel_name="python3",
            kernel_manager_class=VenvKernelManager,
            allow_errors=True,
            interrupt_on_timeout=True,
            error_on_timeout={"ename": _TIMEOUT_ENAME, "evalue": "", "traceback": []},
            raise_on_iopub_timeout=False,
            iopub_timeout=4,
            startup_timeout=120,
            record_timing=False,
            resources={"metadata": {"path": str(plan.path.resolve().parent)}},
        )
        self.client.on_cell_executed = self._on_cell_executed
        self._reply: dict[str, Any] | None = None
        self.replay: list[str] = []  # non-test cells that ran fine, replayed after a restart
        self.labels: dict[int, str] = {}  # execution count -> "your `name` cell" (for messages)
        # the assignment, to look up its exercises' references: the notebook's name, else its
        # folder's (a learner's renamed copy in an assignment folder still counts)
        self.assignment = plan.path.stem
        if self.assignment not in EXTRA_REFERENCES:
            self.assignment = plan.path.resolve().parent.name
        self.context: list[str] = [c.source for c in plan.setup]  # cells before the current one

    # -- kernel ------------------------------------------------------------------------------

    def _on_cell_executed(self, **kwargs: Any) -> None:
        self._reply = kwargs.get("execute_reply")

    async def _execute(self, source: str, timeout: float, label: str = "") -> _Outcome:
        cell = nbformat.v4.new_code_cell(source)
        self.nb.cells.append(cell)
        self.client.timeout = max(1, math.ceil(timeout))
        self._reply = None
        start = time.monotonic()
        try:
            await self.client.async_execute_cell(cell, len(self.nb.cells) - 1)
        except DeadKernelError:
            return _Outcome("dead", seconds=time.monotonic() - start)
        seconds = time.monotonic() - start
        if cell.get("execution_count") is not None and label:
            self.labels[int(cell["execution_count"])] = label
        content = (self._reply or {}).get("content", {})
        if content.get("status") != "error":
            return _Outcome("ok", seconds=seconds)
        if content.get("ename") == _TIMEOUT_ENAME:
            return _Outcome("timeout", seconds=seconds)
        errors = [o for o in cell.outputs if o.get("output_type") == "error"]
        err = errors[-1] if errors else content
        return _Outcome(
            "error",
            ename=str(err.get("ename", "")),
            evalue=str(err.get("evalue", "")),
            traceback=tuple(err.get("traceback", [])),
            seconds=seconds,
        )

    async def _restart(self) -> None:
        """Start a fresh kernel and replay every non-test cell that had run fine."""
        km = self.client.km
        assert km is not None
        if self.client.kc is not None:
            self.client.kc.stop_channels()
            self.client.kc = None
        await km.restart_kernel(now=True)
        await self.client.async_start_new_kernel_client()
        for source in self.replay:
            await self._execute(source, self.setup_time_limit)

    async def _recover(self, outcome: _Outcome) -> None:
        """After a timeout or a dead kernel, make sure the kernel answers again."""
        if outcome.status == "timeout":
            probe = await self._execute("pass", _PROBE_TIMEOUT)
            if probe.status == "ok":
                return
        await self._restart()

    # -- grading -----------------------------------------------------------------------------

    async def run(self) -> NotebookResult:
        result = NotebookResult(path=self.plan.path)
        start = time.monotonic()
        try:
            async with self.client.async_setup_kernel(env=kernel_env()):
                problem = await self._run_setup(self.plan.setup)
                for exercise in self.plan.exercises:
                    if problem:
                        result.exercises.append(_not_run(exercise, NOT_RUN, problem))
                    else:
                        result.exercises.append(await self._run_exercise(exercise))
                result.problem = problem
        except Exception as exc:  # the kernel could not start or broke down: report, not crash
            message = f"grading could not run this notebook: {type(exc).__name__}: {exc}"
            done = {e.name for e in result.exercises}
            result.exercises += [
                _not_run(e, NOT_RUN, message) for e in self.plan.exercises if e.name not in done
            ]
            result.problem = message
        result.seconds = time.monotonic() - start
        return result

    async def _run_setup(self, cells: list[Cell]) -> str:
        """Run the set-up cells; return "" or a message saying which one failed and why."""
        deadline = time.monotonic() + self.setup_time_limit
        for cell in cells:
            out = await self._execute(cell.source, deadline - time.monotonic(), "a set-up cell")
            if out.status == "ok":
                self.replay.append(cell.source)
                continue
            first_line = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
            if out.status == "timeout":
                why = f"ran past the set-up time limit of {self.setup_time_limit:g} s"
            elif out.status == "dead":
                why = "made the Python kernel die"
            else:
                why = f"raised {out.ename}: {_last_line(out.evalue)}"
            return (
                f"not run: the set-up cell starting with `{first_line}` {why}. "
                "Run the notebook's first cells in Jupyter to see the full error "
                "(is `make install` done?)."
            )
        return ""

    async def _run_exercise(self, exercise: Exercise) -> ExerciseResult:
        limit = self.time_limit
        result = ExerciseResult(name=exercise.name)
        deadline = time.monotonic() + limit
        blocked: tuple[str, str] | None = None  # (status, message) given to the remaining checks
        refused = ""
        for cell in exercise.cells:
            remaining = deadline - time.monotonic()
            if cell.role == "solution":
                # read before it runs: an answer that calls the reference earns nothing
                refused = reference_problem(self.assignment, exercise.name, cell.source,
                                            self.context)
            if cell.role != "test":
                self.context.append(cell.source)
                if blocked or remaining <= 0:
                    continue
                label = f"your `{exercise.name}` cell" if cell.role == "solution" else "a cell"
                out = await self._execute(cell.source, remaining, label)
                result.seconds += out.seconds
                if out.status == "ok":
                    self.replay.append(cell.source)
                elif cell.role == "solution":
                    blocked = self._solution_problem(exercise, out)
                if out.status in ("timeout", "dead"):
                    await self._recover(out)
                continue
            if refused:
                # refused whatever the cell did: the message says what to change
                result.tests.append(_test_result(cell, exercise, REFUSED, refused))
                continue
            if blocked:
                result.tests.append(_test_result(cell, exercise, *blocked))
                continue
            if remaining <= 0:
                msg = (f"not run: the exercise `{exercise.name}` used up its time limit of "
                       f"{limit:g} s before this check")
                result.tests.append(_test_result(cell, exercise, TIME_LIMIT, msg))
                continue
            out = await self._execute(cell.source, remaining, f"the check `{cell.grade_id}`")
            result.seconds += out.seconds
            status, message = self._classify(exercise, out)
            result.tests.append(_test_result(cell, exercise, status, message, out.seconds))
            if out.status in ("timeout", "dead"):
                await self._recover(out)
                if out.status == "timeout":
                    blocked = (TIME_LIMIT, f"not run: the exercise `{exercise.name}` was "
                                           "stopped at its time limit in an earlier check")
        return result

    def _solution_problem(self, exercise: Exercise, out: _Outcome) -> tuple[str, str]:
        if out.status == "error" and out.ename == "NotImplementedError":
            return NOT_ATTEMPTED, NOT_ATTEMPTED_MESSAGE
        if out.status == "timeout":
            return TIME_LIMIT, (
                f"not run: running your `{exercise.name}` cell took longer than the exercise's "
                f"time limit of {self.time_limit:g} s; does it start a loop that never ends?"
            )
        if out.status == "dead":
            return ERROR, f"not run: running your `{exercise.name}` cell made the kernel die"
        return ERROR, (
            f"not run: your `{exercise.name}` cell raised {out.ename}: {_last_line(out.evalue)}"
            f"{self._where(out)}\nFix that first: the checks need what the cell defines."
        )

    def _classify(self, exercise: Exercise, out: _Outcome) -> tuple[str, str]:
        if out.status == "ok":
            return PASSED, ""
        if out.status == "timeout":
            return TIME_LIMIT, (
                f"stopped: the exercise `{exercise.name}` ran past its time limit of "
                f"{self.time_limit:g} s in this check. Look for a loop that never ends, or "
                "work that grows much faster than it should: every check takes seconds."
            )
        if out.status == "dead":
            return ERROR, ("the Python kernel died during this check (a crash in native code, "
                           "or a call to exit?); the next exercises ran in a fresh kernel")
        if out.ename == "NotImplementedError":
            return NOT_ATTEMPTED, NOT_ATTEMPTED_MESSAGE
        if out.ename == "AssertionError":
            message = out.evalue.strip()
            if not message:
                message = f"a check failed{self._where(out)}"
            return FAILED, message
        return ERROR, f"your code raised {out.ename}: {_last_line(out.evalue)}{self._where(out)}"

    def _where(self, out: _Outcome) -> str:
        """``"\\n  in your `simclr_loss` cell, line 7: logits = ..."`` from the traceback."""
        for frame in reversed(out.traceback):
            text = _ANSI.sub("", frame)
            match = _CELL_FRAME.search(text)
            if not match:
                continue
            label = self.labels.get(int(match.group(1)), "a cell")
            code = ""
            for line in text.splitlines():
                # IPython's arrow shortens as the line number grows: "----> 3", "---> 12".
                marked = _MARKED_LINE.match(line)
                if marked:
                    code = marked.group(1).strip()
            located = f"\n  in {label}, line {match.group(2)}"
            return f"{located}: {code}" if code else located
        return ""


_MARKED_LINE = re.compile(r"^\s*-+>\s*\d+\s(.*)$")


def _last_line(text: str) -> str:
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= 500 else line[:497] + "..."


def _test_result(
    cell: Cell, exercise: Exercise, status: str, message: str, seconds: float = 0.0
) -> TestResult:
    return TestResult(
        exercise=exercise.name,
        grade_id=cell.grade_id,
        points=cell.points,
        status=status,
        message=message,
        seconds=seconds,
    )


def _not_run(exercise: Exercise, status: str, message: str) -> ExerciseResult:
    return ExerciseResult(
        name=exercise.name,
        tests=[_test_result(c, exercise, status, message) for c in exercise.tests],
    )


def grade_notebook(
    path: str | os.PathLike[str],
    time_limit: float | None = None,
    setup_time_limit: float = SETUP_TIME_LIMIT,
) -> NotebookResult:
    """Grade one notebook; the file is read, never written.

    Args:
        path: the ``.ipynb`` file.
        time_limit: seconds per exercise; ``None`` takes the notebook's
            environment variable ``DINOLAB_TIME_LIMIT``, else the notebook's
            ``metadata["dinolab"]["time_limit"]``, else :data:`DEFAULT_TIME_LIMIT`.
        setup_time_limit: seconds for all set-up cells together.

    Returns:
        A :class:`~dinolab.grading.report.NotebookResult`: points and feedback per check.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the notebook's nbgrader metadata is inconsistent, or a time limit is
            not a positive number.
    """
    plan = read_plan(path)
    env_limit = os.environ.get("DINOLAB_TIME_LIMIT", "").strip()
    if time_limit is not None:
        limit = float(time_limit)
    elif env_limit:
        try:
            limit = float(env_limit)
        except ValueError:
            raise ValueError(
                f"grade_notebook: DINOLAB_TIME_LIMIT={env_limit!r} is not a number of seconds"
            ) from None
    else:
        limit = plan.time_limit if plan.time_limit is not None else DEFAULT_TIME_LIMIT
    for name, value in (("time_limit", limit), ("setup_time_limit", setup_time_limit)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"grade_notebook: {name} must be a positive number of seconds, "
                             f"got {value!r}")
    grader = _NotebookGrader(plan, limit, float(setup_time_limit))
    return run_sync(grader.run)()


def default_jobs() -> int:
    """Notebooks graded at once by default: half the CPU cores, between 1 and 4.

    Each notebook runs in its own kernel process, so two kernels use two cores; half the
    cores leaves room for PyTorch's own threads inside each kernel.
    """
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def grade_notebooks(
    paths: Sequence[str | os.PathLike[str]],
    time_limit: float | None = None,
    jobs: int | None = None,
    on_result: Callable[[NotebookResult], None] | None = None,
) -> list[NotebookResult]:
    """Grade several notebooks, ``jobs`` kernels at a time; results in the order of ``paths``.

    Args:
        paths: notebook files.
        time_limit: seconds per exercise (see :func:`grade_notebook`).
        jobs: notebooks graded at once; default :func:`default_jobs`.
        on_result: called with each result as soon as it is ready (in completion order),
            e.g. to print a report while the others still run.

    Raises:
        ValueError: ``jobs`` < 1.
    """
    jobs = default_jobs() if jobs is None else int(jobs)
    if jobs < 1:
        raise ValueError(f"grade_notebooks: jobs must be >= 1, got {jobs}")

    def one(path: str | os.PathLike[str]) -> NotebookResult:
        result = grade_notebook(path, time_limit=time_limit)
        if on_result is not None:
            on_result(result)
        return result

    if jobs == 1 or len(paths) <= 1:
        return [one(p) for p in paths]
    # Threads are enough: each notebook's work happens in its own kernel process, and each
    # thread drives its kernel with its own event loop.
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="dinolab-grader") as pool:
        return list(pool.map(one, paths))
