"""The nbgrader feedback learners get back: scores and messages, not hidden tests or tracebacks.

nbgrader's ``generate_feedback`` renders the autograded notebook as it ran: hidden tests
restored in the test cells, and every failed check with its full traceback (twenty lines through
:mod:`dinolab.grading.checks` before the message, and the hidden tests' own code in it).
:class:`LearnerFeedback`, run after nbgrader's ``GetGrades`` (see ``solutions/nbgrader_config.py``),
rewrites what the learner sees:

* the hidden-test region of a test cell becomes one comment line (the points it gave stay);
* an error output keeps only its last line, ``AssertionError: <the check's message>``, which
  the checks write for learners (expected value, what the code gave, a hint);
* a stub that still raises ``NotImplementedError`` reads "not attempted yet".

Only the feedback HTML changes: the autograded notebooks and the gradebook keep everything.
"""

from __future__ import annotations

from typing import Any

from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Unicode

__all__ = ["LearnerFeedback", "NOT_ATTEMPTED_FEEDBACK", "HIDDEN_TESTS_NOTE"]

NOT_ATTEMPTED_FEEDBACK = (
    "not attempted yet: the stub still raises NotImplementedError; replace it with your code"
)
HIDDEN_TESTS_NOTE = "# (hidden tests ran here: they count in your score, their code is not shown)"


class LearnerFeedback(NbGraderPreprocessor):
    """Hide hidden tests and shorten error outputs in the feedback notebook (see module doc)."""

    begin_test_delimeter = Unicode("BEGIN HIDDEN TESTS").tag(config=True)
    end_test_delimeter = Unicode("END HIDDEN TESTS").tag(config=True)

    def _hide_hidden_tests(self, source: str) -> str:
        kept, inside = [], False
        for line in source.split("\n"):
            if self.begin_test_delimeter in line:
                inside = True
                indent = line[: len(line) - len(line.lstrip())]
                kept.append(indent + HIDDEN_TESTS_NOTE)
            elif self.end_test_delimeter in line:
                inside = False
            elif not inside:
                kept.append(line)
        return "\n".join(kept)

    @staticmethod
    def _shorten(output: NotebookNode) -> NotebookNode:
        name, value = output.get("ename", "Error"), str(output.get("evalue", ""))
        if name == "NotImplementedError":
            output["ename"], output["evalue"] = "NotAttempted", NOT_ATTEMPTED_FEEDBACK
            output["traceback"] = [NOT_ATTEMPTED_FEEDBACK]
        else:
            output["traceback"] = [f"{name}: {value}" if value else name]
        return output

    def preprocess_cell(
        self, cell: NotebookNode, resources: dict[str, Any], cell_index: int
    ) -> tuple[NotebookNode, dict[str, Any]]:
        if cell.cell_type != "code":
            return cell, resources
        if self.begin_test_delimeter in cell.source:
            cell.source = self._hide_hidden_tests(cell.source)
        cell.outputs = [
            self._shorten(o) if o.get("output_type") == "error" else o for o in cell.outputs
        ]
        return cell, resources
