"""The refusal of :mod:`dinolab.grading.references` for nbgrader's autograder (instructors).

The learner grader (``make grade``) refuses an answer that uses dinolab's own implementation of
what it asks for before running its checks. nbgrader's ``autograde`` runs the notebook itself;
:class:`RefuseReferenceUse`, placed after nbgrader's ``Execute`` among the autograde
preprocessors, gives it the same rule: every test cell of a refused exercise gets an error
output carrying the refusal message, so that nbgrader scores it 0 and the feedback shows why.

Enabled by one line of ``solutions/nbgrader_config.py``::

    from nbconvert.preprocessors import ClearMetadataPreprocessor
    from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, Execute,
        IgnorePattern, LimitOutput, SaveAutoGrades)
    from dinolab.grading.autograde import RefuseReferenceUse
    c.Autograde.autograde_preprocessors = [
        Execute, RefuseReferenceUse, IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
        SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
"""

from __future__ import annotations

from typing import Any

from nbconvert.preprocessors import Preprocessor
from nbformat import NotebookNode
from nbformat.v4 import new_output
from traitlets import Bool

from dinolab.grading.references import reference_problem

__all__ = ["REFUSED_ENAME", "RefuseReferenceUse", "refuse_reference_use"]

REFUSED_ENAME = "RefusedAnswer"


def _nbgrader(cell: NotebookNode) -> dict:
    return dict(cell.get("metadata", {}).get("nbgrader", {}))


def refuse_reference_use(nb: NotebookNode, assignment: str) -> list[str]:
    """Mark the test cells of every refused exercise of ``nb`` with an error output, in place.

    Exercises are grouped as the learner grader groups them (a solution cell and the cells
    after it, up to the next one); the cells before a solution are its context.

    Returns:
        The refused exercises' names (solution cells' ``grade_id``), in order.
    """
    context: list[str] = []
    refused: list[str] = []
    message = ""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        meta = _nbgrader(cell)
        if meta.get("solution"):
            name = str(meta.get("grade_id", ""))
            message = reference_problem(assignment, name, cell.source, context)
            if message:
                refused.append(name)
        is_test = bool(meta.get("grade")) and not meta.get("solution")
        if not is_test:
            context.append(cell.source)
        elif message:
            cell.outputs = [*cell.get("outputs", []), new_output(
                "error", ename=REFUSED_ENAME, evalue=message, traceback=message.splitlines())]
    return refused


class RefuseReferenceUse(Preprocessor):
    """nbgrader autograde preprocessor: refused answers' checks get an error (0 points)."""

    # nbconvert's preprocessors are off unless enabled: __call__ would hand the notebook back
    # untouched, and the refusal would never reach nbgrader's scores.
    enabled = Bool(True).tag(config=True)

    def preprocess(self, nb: NotebookNode, resources: dict[str, Any]
                   ) -> tuple[NotebookNode, dict[str, Any]]:
        assignment = str(resources.get("nbgrader", {}).get("assignment", ""))
        refused = refuse_reference_use(nb, assignment)
        if refused:
            self.log.warning("refused (uses dinolab's own implementation): %s",
                             ", ".join(refused))
        return nb, resources
