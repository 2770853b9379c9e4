"""``python -m dinolab.grading [PATH ...]``: grade exercise notebooks and print score and feedback.

What ``make grade`` runs. PATH is a notebook or a folder (searched recursively for graded
notebooks); the default is ``exercises/``. Each notebook runs in a fresh kernel; the files
are never modified, so save your notebook in Jupyter before grading.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence

from dinolab.grading.notebook import find_notebooks
from dinolab.grading.report import NotebookResult, format_report, format_summary
from dinolab.grading.runner import DEFAULT_TIME_LIMIT, default_jobs, grade_notebooks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dinolab.grading",
        description="Grade the course's exercise notebooks: points per exercise and feedback "
                    "for every check that does not pass. Your files are never modified.",
    )
    parser.add_argument("paths", nargs="*", default=["exercises"],
                        help="notebooks or folders to grade (default: exercises/)")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds each exercise may run before it is stopped (default: the "
                             f"notebook's own limit, else {DEFAULT_TIME_LIMIT:g}; also settable "
                             "with DINOLAB_TIME_LIMIT)")
    parser.add_argument("--jobs", type=int, default=None,
                        help=f"notebooks graded at once (default here: {default_jobs()})")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 unless every check passes (for CI)")
    args = parser.parse_args(argv)
    try:
        notebooks = find_notebooks(args.paths)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not notebooks:
        print(f"no graded notebooks found under {', '.join(args.paths)}", file=sys.stderr)
        return 2
    print(f"grading {len(notebooks)} notebook(s); each runs in a fresh kernel ...", flush=True)

    lock = threading.Lock()  # reports arrive from the grading threads

    def show(result: NotebookResult) -> None:
        with lock:
            print(format_report(result) + "\n", flush=True)

    try:
        results = grade_notebooks(notebooks, time_limit=args.time_limit, jobs=args.jobs,
                                  on_result=show)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(results) > 1:
        print("Summary")
        print(format_summary(results))
    complete = all(r.earned == r.possible and not r.problem for r in results)
    return 1 if args.strict and not complete else 0


if __name__ == "__main__":
    sys.exit(main())
