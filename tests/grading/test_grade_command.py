"""``python -m dinolab.grading``: what ``make grade`` prints and returns."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dinolab.grading.__main__ import main


def test_grade_prints_table_and_feedback(make_notebook, capsys) -> None:
    path = make_notebook([
        ("solution", "def inc(x):\n    return x + 1", "inc"),
        ("test", "assert inc(1) == 2", "inc_one", 1),
        ("solution", "def dec(x):\n    return x", "dec"),
        ("test", "assert dec(1) == 0, f'dec(1): expected 0, your code gave {dec(1)}'",
         "dec_one", 2),
    ])
    before = path.read_bytes()
    assert main([str(path.parent)]) == 0              # a learner's partial work is no error
    out = capsys.readouterr().out
    assert "grading 1 notebook(s)" in out and f"{path}  (" in out
    assert re.search(r"inc\s+1 / 1\s+passed", out)
    assert re.search(r"dec\s+0 / 2\s+failed \(0/1 checks pass\)", out)
    assert re.search(r"total\s+1 / 3", out)
    assert "dec / dec_one (2 pt, failed):\n      dec(1): expected 0, your code gave 1" in out
    assert main([str(path), "--strict", "--time-limit", "30"]) == 1
    assert path.read_bytes() == before


def test_grade_reports_bad_paths(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "no graded notebooks found" in capsys.readouterr().err


def test_grade_help_mentions_the_time_limit(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--time-limit" in capsys.readouterr().out
