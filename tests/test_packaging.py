"""The project's metadata agrees with itself: one list of dependencies, one set-up story."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

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


def _name(req: str) -> str:
    """'scikit-learn>=1' -> 'scikit-learn' (a normalised requirement's project name)."""
    return re.match(r"[a-z0-9\-]+", req).group(0)


def _environment_pip_lines() -> list[str]:
    """The entries of environment.yml's pip list, comments dropped, in order."""
    text = (ROOT / "environment.yml").read_text()
    pip_block = text.split("- pip:", 1)[1]
    lines = []
    for line in pip_block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("- "):
            lines.append(line[2:].strip())
    return lines


def _environment_requirements() -> set[str]:
    """environment.yml's pip requirements, without its options such as ``-e .``."""
    return {_normalise(r) for r in _environment_pip_lines() if not r.startswith("-")}


def _constraints() -> dict[str, str]:
    """constraints.txt as {project name: exact version}; every entry must be an ``==`` pin."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([a-z0-9\-]+)==([0-9][0-9A-Za-z.+]*)", _normalise(line))
        assert m, f"constraints.txt: {line!r} is not an exact pin 'name==version'"
        pins[m.group(1)] = m.group(2)
    return pins


def test_environment_yml_is_pyproject_with_the_constraints_pins() -> None:
    pins = _constraints()
    expected = {
        f"{_name(r)}=={pins[_name(r)]}" if _name(r) in pins else r
        for r in _pyproject_requirements()
    }
    env = _environment_requirements()
    assert env == expected, (
        f"only in pyproject.toml (pins from constraints.txt): {sorted(expected - env)}; "
        f"only in environment.yml: {sorted(env - expected)}"
    )


def test_environment_yml_installs_dinolab_itself() -> None:
    local = [r for r in _environment_pip_lines() if r.startswith("-")]
    assert local == ["-e ."], f"environment.yml's pip list should end in '-e .', has {local}"


def test_pyproject_lower_bounds_are_the_pinned_releases() -> None:
    # The library asks for the tested release or newer, never exactly it: an exact pin makes
    # the wheel uninstallable next to any other torch.
    pins = _constraints()
    reqs = {_name(r): r for r in _pyproject_requirements()}
    for name, version in pins.items():
        assert reqs.get(name) == f"{name}>={version}", (
            f"pyproject.toml asks for {reqs.get(name)!r}; expected {name}>={version} "
            "(constraints.txt pins the release tested)"
        )


def test_constraints_pin_the_tested_torch() -> None:
    pins = _constraints()
    assert pins.get("torch") == "2.14.1" and pins.get("torchvision") == "0.29.1", pins


@pytest.mark.skipif(
    Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
    reason="checks the repository's .venv (what `make install` built); this is another Python",
)
def test_make_install_installed_the_pinned_releases() -> None:
    for name, version in _constraints().items():
        installed = importlib.metadata.version(name).split("+", 1)[0]  # 2.14.1+cpu is 2.14.1
        assert installed == version, f"{name} {installed} in .venv, constraints.txt pins {version}"


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


def test_the_version_is_written_once() -> None:
    # pyproject.toml reads dinolab.__version__; a static `version = ...` there would be a second
    # copy to keep in step (tests/test_install_wheel.py checks the built wheel carries it).
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"], "pyproject.toml writes the version itself"
    assert "version" in pyproject["project"].get("dynamic", []), pyproject["project"]
    dynamic = pyproject["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "dinolab.__version__"}, dynamic
