"""The project's metadata agrees with itself: one list of dependencies, one set-up story."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _normalise(req: str) -> str:
    """'Scikit_Learn >= 1' -> 'scikit-learn>=1' (PEP 503 name, no spaces)."""
    req = req.strip().replace(" ", "")
    m = re.match(r"([A-Za-z0-9_.\-]+)(.*)", req)
    assert m, req
    return re.sub(r"[-_.]+", "-", m.group(1)).lower() + m.group(2)


def _pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in ("course", "dev"):
        reqs += project["optional-dependencies"][extra]
    return {_normalise(r) for r in reqs}


def _environment_requirements() -> set[str]:
    text = (ROOT / "environment.yml").read_text()
    pip_block = text.split("- pip:", 1)[1]
    reqs = []
    for line in pip_block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("- "):
            reqs.append(line[2:])
    return {_normalise(r) for r in reqs}


def test_environment_yml_and_pyproject_name_the_same_dependencies() -> None:
    py, env = _pyproject_requirements(), _environment_requirements()
    assert py == env, (
        f"only in pyproject.toml: {sorted(py - env)}; only in environment.yml: {sorted(env - py)}"
    )


def test_torch_pins_are_the_tested_ones() -> None:
    reqs = _pyproject_requirements()
    assert "torch==2.14.1" in reqs and "torchvision==0.29.1" in reqs


def test_ci_runs_exactly_the_readme_commands() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    ci_cmds = [ln.strip() for ln in ci.splitlines() if ln.strip().startswith("make ")]
    assert ci_cmds == ["make install", "make test"], ci_cmds
    for cmd in ci_cmds:
        assert cmd in readme, f"README.md does not show {cmd!r}"


def test_console_script_points_at_an_existing_function() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    module, func = project["scripts"]["dinolab"].split(":")
    path = ROOT / (module.replace(".", "/") + ".py")
    assert path.exists(), f"console script module {path} is missing"
    assert re.search(rf"^def {func}\(", path.read_text(), re.M), f"{func}() not in {path}"
