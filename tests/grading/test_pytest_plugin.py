"""dinolab.grading.pytest_plugin: `pytest exercises/...` as a learner runs it.

A folder with the exercises' own conftest.py and a small notebook is graded by pytest in a
subprocess: each check becomes a test item with its points, failures carry the grader's
feedback, the score table is printed, and the notebook file is left as it was.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CELLS = [
    ("setup", "import time"),
    ("solution", "def double(x):\n    return 2 * x", "double"),
    ("test", "assert double(2) == 4", "double_two", 2),
    ("solution", "def half(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()", "half"),
    ("test", "assert half(4) == 2", "half_four", 1),
    ("solution", "def slow(x):\n    while True:\n        time.sleep(0.01)", "slow"),
    ("test", "assert slow(1) == 1", "slow_one", 1),
]


def test_pytest_grades_an_exercise_folder(tmp_path: Path, notebook_writer) -> None:
    folder = tmp_path / "01_demo"
    folder.mkdir()
    shutil.copy(REPO / "solutions" / "01_3_contrastive_vs_distillation" / "conftest.py", folder)
    notebook = notebook_writer(folder / "01_demo.ipynb", CELLS)
    before = notebook.read_bytes()
    junit = tmp_path / "report.xml"
    env = dict(os.environ, DINOLAB_TIME_LIMIT="2", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(folder), "-p", "no:cacheprovider", "-rN",
         f"--junitxml={junit}"],
        cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        timeout=300, check=False,
    )
    out = proc.stdout
    assert proc.returncode == 1, out                      # some checks fail
    assert "1 failed" not in out and "2 failed, 1 passed" in out, out
    # Feedback of each failure, and the table.
    assert "half / half_four (0 of 1 points)" in out and "not attempted yet" in out
    assert "slow / slow_one (0 of 1 points)" in out and "time limit of 2 s" in out
    assert "dinolab grading" in out
    assert re.search(r"double\s+2 / 2\s+passed", out) and re.search(r"total\s+2 / 4", out), out
    # Points travel with the items (JUnit XML properties).
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert set(cases) == {"double_two", "half_four", "slow_one"}  # JUnit keeps the last part
    points = {name: {p.get("name"): p.get("value") for p in case.iter("property")}
              for name, case in cases.items()}
    assert points["double_two"] == {"points": "2.0", "earned": "2.0"}
    assert points["half_four"] == {"points": "1.0", "earned": "0.0"}
    # The learner's notebook is untouched, and nothing was written next to it.
    assert notebook.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir() if p.name != "__pycache__") == [
        "01_demo.ipynb", "conftest.py"]
