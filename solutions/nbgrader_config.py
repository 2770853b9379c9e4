# nbgrader configuration of the dinolab course.
#
# `python -m dinolab.grading.nbgrader_flow ...` (the Makefile's release / collect / autograde /
# feedback / export targets) loads this file and passes the course root and the gradebook on
# the command line, so the same settings serve the repository and temporary test courses.
# To call nbgrader yourself from the repository root (traitlets adds the ".py"):
#     nbgrader autograde 04_1_centering --NbGrader.config_file=solutions/nbgrader_config
import os

c = get_config()  # noqa: F821  (provided by traitlets when it loads this file)

_repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

c.CourseDirectory.course_id = "dinolab"
c.CourseDirectory.root = _repo
# The instructor's sources are solutions/<assignment>/, the learners' copies exercises/<...>.
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
# Everything about students stays under instructor/ (not part of the repository).
c.CourseDirectory.submitted_directory = os.path.join("instructor", "submitted")
c.CourseDirectory.autograded_directory = os.path.join("instructor", "autograded")
c.CourseDirectory.feedback_directory = os.path.join("instructor", "feedback")
c.CourseDirectory.solution_directory = os.path.join("instructor", "solution")
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(_repo, "instructor", "gradebook.db")
# Do not copy caches into the release.
c.CourseDirectory.ignore = [
    ".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", ".pytest_cache",
]

# Stubs learners see in place of the `### BEGIN SOLUTION` regions.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Autograding: every cell gets at most this many seconds; a cell still running is interrupted
# and scores 0 (the learner grader's per-exercise limit is in dinolab.grading.runner).
c.Execute.timeout = 120
c.Execute.interrupt_on_timeout = True

# Feedback for learners: hidden tests' code and long tracebacks left out of the HTML (the
# autograded notebooks keep them); see dinolab.grading.feedback.
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import GetGrades  # noqa: E402

from dinolab.grading.feedback import LearnerFeedback  # noqa: E402

c.GenerateFeedback.preprocessors = [GetGrades, LearnerFeedback, CSSHTMLHeaderPreprocessor]

# Autograding refuses an answer that calls dinolab's own implementation of what its exercise
# asks for (dinolab.grading.references): after Execute, RefuseReferenceUse gives every check of
# such a cell an error output naming the line, so it scores 0 and the feedback says why, as
# `make grade` does. The rest is nbgrader's default list.
from nbconvert.preprocessors import ClearMetadataPreprocessor  # noqa: E402
from nbgrader.preprocessors import (  # noqa: E402
    AssignLatePenalties,
    CheckCellMetadata,
    Execute,
    IgnorePattern,
    LimitOutput,
    SaveAutoGrades,
)

from dinolab.grading.autograde import RefuseReferenceUse  # noqa: E402

c.Autograde.autograde_preprocessors = [
    Execute,
    RefuseReferenceUse,
    IgnorePattern,
    ClearMetadataPreprocessor,
    LimitOutput,
    SaveAutoGrades,
    AssignLatePenalties,
    CheckCellMetadata,
]
