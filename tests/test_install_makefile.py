"""The Makefile on any set-up: a venv (the default), the active interpreter (``VENV=``, conda),
a CPU-only torch index; and the README's make-free command for every target.

``make -n`` prints the commands a target would run without running them, so these take
milliseconds; ``make install VENV=`` itself was run by hand in an activated environment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _targets() -> list[str]:
    """The documented targets: those with a ``## help`` text, as ``make help`` lists them."""
    text = (ROOT / "Makefile").read_text()
    return re.findall(r"^([a-z-]+):.*##", text, re.M)


def _dry_run(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "VENV")}
    proc = subprocess.run(
        ["make", "-n", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"make -n {' '.join(args)}: {proc.stderr}"
    return proc.stdout


@needs_make
def test_install_uses_the_constraints_file(tmp_path: Path) -> None:
    venv = tmp_path / "v"  # absent: the dry run shows the venv being created too
    out = _dry_run("install", f"VENV={venv}")
    assert f"-m venv {venv}" in out, out
    assert f'{venv}/bin/python -m pip install --quiet -c constraints.txt -e ".[course,dev]"' in out


@needs_make
def test_empty_venv_uses_the_active_python_for_every_target() -> None:
    install = _dry_run("install", "VENV=")
    assert "-m venv" not in install and "--upgrade pip" not in install, install
    assert 'python -m pip install --quiet -c constraints.txt -e ".[course,dev]"' in install
    assert "python -m ipykernel install --sys-prefix" in install
    for target in _targets():
        out = _dry_run(target, "VENV=", "SUBMISSIONS=inbox")
        assert ".venv/bin" not in out, f"make {target} VENV= still runs .venv's tools:\n{out}"


@needs_make
def test_torch_index_installs_torch_from_it_first() -> None:
    url = "https://download.pytorch.org/whl/cpu"
    lines = _dry_run("install", f"TORCH_INDEX={url}").splitlines()
    torch_line = next(i for i, ln in enumerate(lines) if f"--index-url {url}" in ln)
    dinolab_line = next(i for i, ln in enumerate(lines) if '-e ".[course,dev]"' in ln)
    assert torch_line < dinolab_line, lines
    assert "-c constraints.txt torch torchvision" in lines[torch_line], lines[torch_line]
    assert "--index-url" not in "\n".join(_dry_run("install").splitlines())


def test_readme_shows_every_target_without_make() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `make ([a-z-]+)` \| (.+) \|$", readme, re.M)
    }
    targets = _targets()
    assert targets, "no documented targets found in the Makefile"
    missing = [t for t in targets if t not in rows]
    assert not missing, f"README.md's make-free table has no row for make {missing}"
    no_python = [t for t in targets if "`python " not in rows[t]]
    assert not no_python, f"README.md gives no python command for make {no_python}"
